"""What a Dask worker runs: one shard's (or sweep member's) resumable run, from where it was left.

:func:`run_task` is the task. It opens the run through a patient :class:`~resumable_magic.core.run.Resumable`
that waits while another live process executes the same run (and takes over when that one dies),
iterates over the run's items, and returns a report (values, replayed or resumed, calls, pid) that the
client reads. The library's own errors travel back as
:class:`~resumable_magic.errors.ShardFailedError`, which pickles by its words.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from resumable_magic.distributed.plan import RunSpec
from resumable_magic.errors import OptionError, ResumableError, RunOwnedError, ShardFailedError

__all__ = ["OWNER_POLL_SECONDS", "run_task"]

OWNER_POLL_SECONDS = 0.5  # a second task on a run owned by a live process waits for it this often

_active_lock = threading.Lock()
_active: set[tuple[str, str]] = set()  # runs executing in this process (a lease admits its own pid)


@contextlib.contextmanager
def _exclusive_in_process(directory: str, run_key: str) -> Iterator[None]:
    """Two threads of one worker never execute one run: the lease admits its own process."""
    ident = (directory, run_key)
    while True:
        with _active_lock:
            if ident not in _active:
                _active.add(ident)
                break
        time.sleep(OWNER_POLL_SECONDS)
    try:
        yield
    finally:
        with _active_lock:
            _active.discard(ident)


def _patient_resumable(spec: RunSpec, state: dict[str, Any], names: Sequence[str] | None, every: Any) -> Any:
    """A :class:`Resumable` for ``spec`` whose ``open`` waits while another live process executes the
    run (a zombie worker the scheduler gave up on, a second map on the same key): when that owner
    finishes, this one replays its result; when it dies, this one takes over and resumes."""
    from resumable_magic.core.run import Resumable
    from resumable_magic.lease.lease import owner_state
    from resumable_magic.progress.model import ProgressModel

    class _Patient(Resumable):
        def open(self) -> None:
            while True:
                try:
                    super().open()
                    return
                except RunOwnedError:
                    while (record := self.store.owner()) is not None and owner_state(record) == "live":
                        time.sleep(OWNER_POLL_SECONDS)

    return _Patient(
        spec.run_key,
        state,
        names,
        dir=spec.directory,
        every=every,
        inputs=spec.inputs,
        params=spec.params,
        progress=ProgressModel(),  # silent: the client shows the whole map
        header=spec.header,
    )


def _report(run: Any, values: list[Any], calls: int) -> dict[str, Any]:
    resumed = None
    for event in reversed(run.history):
        if event.get("event") == "resumed" and event.get("pid") == os.getpid():
            resumed = {k: event.get(k) for k in ("from", "redone", "redone_seconds", "after")}
            break
    return {
        "values": values,
        "replayed": bool(run.replayed),
        "resumed": resumed,
        "calls": calls,
        "pid": os.getpid(),
    }


def run_task(func: Callable[..., Any], spec: RunSpec) -> dict[str, Any]:
    """One Dask task: one shard's (or sweep member's) resumable run, from where it was left."""
    try:
        with _exclusive_in_process(spec.directory, spec.run_key):
            if spec.kind == "member-loop":
                return _run_member_loop(func, spec)
            # A shard's results by global item index (its sharding is fixed by its inputs); a sweep
            # member's one result under 0 (the order of the parameter sets may change between calls).
            order = spec.indices if spec.kind == "shard" else [0]
            lookup = dict(zip(order, spec.items, strict=True))
            state: dict[str, Any] = {"results": {}}
            calls = 0
            with _patient_resumable(spec, state, ["results"], spec.every) as run:
                results = state["results"]
                for index in run.iterate(order):
                    calls += 1
                    results[index] = func(lookup[index]) if spec.kind == "shard" else func(**lookup[index])
            return _report(run, [state["results"][i] for i in order], calls)
    except ResumableError as exc:
        # Not the user's error: its class may not travel back through pickle; its words do.
        raise ShardFailedError(spec.run_key, exc) from None


def _run_member_loop(func: Callable[..., Any], spec: RunSpec) -> dict[str, Any]:
    opened: list[Any] = []

    def checkpoint(
        state: dict[str, Any], names: Sequence[str] | None = None, *, every: str | int | None = None
    ) -> Any:
        if opened:
            raise OptionError("checkpoint", "called twice", "one sweep member is one resumable run: one loop")
        run = _patient_resumable(spec, state, names, every if every is not None else spec.every)
        opened.append(run)
        return run

    value = func(**spec.items[0], checkpoint=checkpoint)
    if not opened:
        report: dict[str, Any] = {"values": [value], "replayed": False, "resumed": None, "calls": 1}
        return {**report, "pid": os.getpid()}
    run = opened[0]
    return _report(run, [value], 0 if run.replayed else 1)
