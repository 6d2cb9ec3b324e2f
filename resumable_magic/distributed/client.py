"""Resumable shards on Dask: map a function over many items in N shards, each a resumable run.

Dask schedules, retries lost tasks and scales; what it loses when a worker dies is the progress
inside a long task. Here each task is a *shard*: a :class:`~resumable_magic.core.run.Resumable` loop over
its items that checkpoints its partial results (``{index: value}``) to a folder every worker can
reach. When a worker dies, the scheduler reruns its shard elsewhere; the rerun opens the same run,
takes over the dead worker's lease (its pid is gone, or its heartbeat stopped) and resumes from the
shard's last checkpoint. A finished shard is replayed from its completion record, never rerun::

    from resumable_magic import resumable_map

    squares = resumable_map(slow_square, range(10_000), key="squares", shards=8, every="30s")

On disk, one run per shard: ``<dir>/<key>/shard-0003-of-0008/`` (``resumable status`` lists them).
A sweep (:func:`resumable_sweep`) runs one task per parameter set, each its own run
``<dir>/<key>/lr=0.01,seed=3/``.

Dask is optional: it is imported only when a map runs (``pip install resumable_magic[dask]``). The
client-side progress view lives in :mod:`resumable_magic.distributed.progress`.
"""

from __future__ import annotations

import contextlib
import inspect
import numbers
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resumable_magic.errors import (
    DaskMissingError,
    OptionError,
    ResumableError,
    ResumeRefusedError,
    RunOwnedError,
    ShardFailedError,
    ShardingChangedError,
)

__all__ = [
    "resumable_map",
    "resumable_sweep",
    "shard_indices",
]

SPLITS = ("mod", "blocks")
SHARD_RE = re.compile(r"^shard-(\d{4,})-of-(\d{4,})$")
OWNER_POLL_SECONDS = 0.5  # a second task on a run owned by a live process waits for it this often
POLL_SECONDS = 0.5  # the client refreshes the progress view this often while it waits


# -- planning: everything checked before a cluster starts or any work runs -----------------------------


def shard_indices(n_items: int, shards: int, split: str = "mod") -> list[range]:
    """The item indices of each shard: ``"mod"`` gives shard ``i`` the items ``i, i+n, i+2n, ...``
    (Batchelder's ``id mod N``: shards stay balanced when items grow harder along the list);
    ``"blocks"`` gives it a contiguous block (neighbouring items together, e.g. for locality)."""
    if split == "mod":
        return [range(i, n_items, shards) for i in range(shards)]
    if split == "blocks":
        bounds = [i * n_items // shards for i in range(shards + 1)]
        return [range(bounds[i], bounds[i + 1]) for i in range(shards)]
    raise OptionError("split", split, "use 'mod' (item i goes to shard i mod N) or 'blocks' (contiguous)")


@dataclass
class _RunSpec:
    """What one Dask task needs: a run key, its items (by global index) and how to check them."""

    name: str  # the run's name under the map's key: "shard-0003-of-0008", "lr=0.01,seed=3"
    run_key: str
    indices: list[int]
    items: list[Any]
    inputs: dict[str, Any]
    params: dict[str, str]
    header: str
    directory: str
    every: str | int | None
    kind: str = (
        "shard"  # "shard": func(item) per item; "member": func(**params); "member-loop": with checkpoint=
    )


@dataclass
class _Plan:
    key: str
    directory: Any  # a local Path, or a storage.RemotePath
    what: str  # "shard" or "member"
    specs: list[_RunSpec] = field(default_factory=list)
    n_items: int = 0


def _check_items(items: Any) -> None:
    if isinstance(items, (str, bytes, bytearray, Mapping)) or not (
        hasattr(items, "__len__") and hasattr(items, "__getitem__")
    ):
        kind = type(items).__name__
        raise OptionError(
            "items",
            f"a {kind}",
            "pass a sequence (a list, tuple, range, or an array): a resumed shard must find the same "
            "items by index; make a generator a list, a set sorted(...), a dict list(d.items())",
        )


def _check_common(func: Callable[..., Any], key: str, every: Any, reduce: Any) -> None:
    from resumable_magic.core.policy import parse_every
    from resumable_magic.store.runstore import key_to_relpath

    if not callable(func):
        raise OptionError("func", f"a {type(func).__name__}", "pass a function (or any callable)")
    if not isinstance(key, str):
        raise OptionError("key", key, "a key is a name like 'squares' or 'maps/squares'")
    try:
        key_to_relpath(key)
    except OptionError:
        raise OptionError(
            "key", key, "a key is one or more '/'-separated names, none of them '.' or '..'"
        ) from None
    parse_every(every)  # OptionError for '5x'
    if reduce is not None and not callable(reduce):
        raise OptionError("reduce", f"a {type(reduce).__name__}", "pass a function of the results list")


def _directory(dir: str | os.PathLike[str] | None) -> Any:
    """Absolute, so that workers in other folders (or on other machines, on a shared file system
    mounted at the same path) find it; an fsspec URL (``s3://bucket/prefix``) as it is, which every
    worker reaches the same way."""
    from resumable_magic.core.run import default_directory
    from resumable_magic.storage.local import location

    where = location(dir if dir is not None else default_directory())
    return where if not isinstance(where, Path) else Path(os.path.abspath(where))


def _existing_shard_counts(map_dir: Any) -> list[int]:
    counts: set[int] = set()
    if not isinstance(map_dir, Path):  # on object storage: the shards' folders are prefixes
        from resumable_magic.storage.local import backend_for

        with contextlib.suppress(OSError):
            for name in backend_for(map_dir).list(""):
                match = SHARD_RE.match(name)
                if match:
                    counts.add(int(match.group(2)))
        return sorted(counts)
    with contextlib.suppress(OSError), os.scandir(map_dir) as entries:
        for entry in entries:
            match = SHARD_RE.match(entry.name)
            if match and entry.is_dir(follow_symlinks=False):
                counts.add(int(match.group(2)))
    return sorted(counts)


def _items_digest(items: list[Any]) -> str:
    from resumable_magic.state.fingerprint import fingerprint_item

    return fingerprint_item(items)[:16]


def _plan_map(
    items: Sequence[Any], key: str, directory: Path, shards: int | None, split: str
) -> tuple[_Plan, int | None]:
    """Checks the arguments and the folder. Returns the plan (its specs not filled yet) and the shard
    count when it is known without a cluster (given, or found on disk)."""
    from resumable_magic.store.runstore import key_to_relpath

    _check_items(items)
    if split not in SPLITS:
        raise OptionError("split", split, "use 'mod' (item i goes to shard i mod N) or 'blocks' (contiguous)")
    if shards is not None:
        if not isinstance(shards, numbers.Integral) or isinstance(shards, bool) or shards < 1:
            raise OptionError(
                "shards", shards, "use a whole number of shards, 1 or more (or None: 4 per worker thread)"
            )
        shards = int(shards)
    found = _existing_shard_counts(directory / key_to_relpath(key))
    if len(found) > 1 or (found and shards is not None and found != [shards]):
        raise ShardingChangedError(key, directory, found, shards)
    plan = _Plan(key, directory, "shard", n_items=len(items))
    return plan, shards if shards is not None else (found[0] if found else None)


def _fill_map(plan: _Plan, items: Sequence[Any], shards: int, split: str, every: Any) -> None:
    width = max(4, len(str(shards)))
    for i, indices in enumerate(shard_indices(plan.n_items, shards, split)):
        chunk = [items[j] for j in indices]
        name = f"shard-{i:0{width}d}-of-{shards:0{width}d}"
        plan.specs.append(
            _RunSpec(
                name=name,
                run_key=f"{plan.key}/{name}",
                indices=list(indices),
                items=chunk,
                # The sharding and the items: a different one is refused, never mixed in.
                inputs={
                    "shards": shards,
                    "split": split,
                    "n_items": plan.n_items,
                    "items": _items_digest(chunk),
                },
                params={"shard": f"{i}/{shards}", "split": split},
                header=f"shard {i} of {shards} of map {plan.key!r}",
                directory=str(plan.directory),
                every=every,
            )
        )


def _plan_sweep(
    func: Callable[..., Any], param_sets: Sequence[Mapping[str, Any]], key: str, directory: Path, every: Any
) -> _Plan:
    from resumable_magic.core.cellrun import params_key

    _check_items(param_sets)
    try:
        wants_checkpoint = "checkpoint" in inspect.signature(func).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        wants_checkpoint = False
    plan = _Plan(key, directory, "member", n_items=len(param_sets))
    seen: dict[str, int] = {}
    for i in range(len(param_sets)):
        params = param_sets[i]
        if not isinstance(params, Mapping) or not params or not all(isinstance(n, str) for n in params):
            raise OptionError(
                f"param_sets[{i}]",
                f"a {type(params).__name__}",
                "each parameter set is a non-empty dict of name: value",
            )
        name = params_key(list(params), dict(params))
        if name in seen:
            raise OptionError(
                f"param_sets[{i}]",
                dict(params),
                f"it makes the same run key {name!r} as param_sets[{seen[name]}]: give each set its own values",
            )
        seen[name] = i
        plan.specs.append(
            _RunSpec(
                name=name,
                run_key=f"{key}/{name}",
                indices=[i],
                items=[dict(params)],
                inputs=dict(params),
                params={n: repr(v) for n, v in params.items()},
                header=f"sweep member {name} of {key!r}",
                directory=str(directory),
                every=every,
                kind="member-loop" if wants_checkpoint else "member",
            )
        )
    return plan


def _check_existing_inputs(plan: _Plan) -> None:
    """Refuse before any work when a run already on disk was made from other inputs (items, sharding,
    parameter values): the worker would refuse it too, but only after other shards started."""
    from resumable_magic.core.messages import input_changes
    from resumable_magic.errors import InputsChangedError
    from resumable_magic.state.fingerprint import fingerprint_inputs
    from resumable_magic.store.runstore import RunStore

    for spec in plan.specs:
        store = RunStore(plan.directory, spec.run_key)
        if not store.folder_exists():
            continue
        try:
            result = store.read_latest(load_state=False)
        except ResumableError:
            continue  # the worker reports it, with its own message
        checkpoint = result.checkpoint
        if checkpoint is None:
            continue
        changes = input_changes(checkpoint.manifest.get("inputs") or {}, fingerprint_inputs(spec.inputs))
        if changes:
            error = InputsChangedError(changes, store.finished(checkpoint.generation) is not None)
            raise ShardFailedError(
                spec.run_key,
                ResumeRefusedError(
                    f"{error} (For a map: the items or the sharding changed since this run was written; "
                    f"use another key for other items.)"
                ),
            ) from None


# -- on the worker -------------------------------------------------------------------------------------

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


def _patient_resumable(spec: _RunSpec, state: dict[str, Any], names: Sequence[str] | None, every: Any) -> Any:
    """A :class:`Resumable` for ``spec`` whose ``open`` waits while another live process executes the
    run (a zombie worker the scheduler gave up on, a second map on the same key): when that owner
    finishes, this one replays its result; when it dies, this one takes over and resumes."""
    from resumable_magic.core.run import Resumable
    from resumable_magic.lease.lease import owner_state, read_lease
    from resumable_magic.progress.model import ProgressModel

    class _Patient(Resumable):
        def open(self) -> None:
            while True:
                try:
                    super().open()
                    return
                except RunOwnedError:
                    while (record := read_lease(self.store.path)) is not None and owner_state(
                        record
                    ) == "live":
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


def _run_task(func: Callable[..., Any], spec: _RunSpec) -> dict[str, Any]:
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


def _run_member_loop(func: Callable[..., Any], spec: _RunSpec) -> dict[str, Any]:
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


# -- on the client -------------------------------------------------------------------------------------


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise DaskMissingError(exc) from None
    return distributed


@contextlib.contextmanager
def _dask_client(client: Any) -> Iterator[Any]:
    """The given client; a client of the scheduler at an address; the current default client; else a
    ``LocalCluster`` for this call (one single-threaded worker process per core), closed after it."""
    distributed = _import_distributed()
    if isinstance(client, str):
        with distributed.Client(client, set_as_default=False) as connected:
            yield connected
        return
    if client is not None:
        yield client
        return
    try:
        current = distributed.default_client()
    except ValueError:  # no client in this process
        current = None
    if current is not None:
        yield current
        return
    cluster = distributed.LocalCluster(
        n_workers=os.cpu_count() or 1, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    try:
        with distributed.Client(cluster, set_as_default=False) as local:
            yield local
    finally:
        cluster.close()


def _worker_threads(client: Any) -> int:
    with contextlib.suppress(Exception):
        return max(1, sum(client.nthreads().values()))
    return 1


def _execute(
    client: Any, func: Callable[..., Any], plan: _Plan, progress: bool | Any
) -> list[dict[str, Any]]:
    """Submit one task per run, wait for all while the progress view follows the folder, and return
    each run's report in the order of the specs. A failure cancels what has not started."""
    from resumable_magic.distributed.progress import MapProgress, make_view

    model = MapProgress(
        plan.key, plan.directory, [(s.name, s.run_key, _size(s)) for s in plan.specs], plan.what
    )
    view = make_view(model, progress)
    token = uuid.uuid4().hex[:8]
    futures = [
        client.submit(_run_task, func, spec, key=f"resumable-{plan.what}-{token}-{n}", pure=False)
        for n, spec in enumerate(plan.specs)
    ]
    changed = threading.Event()
    for future in futures:
        future.add_done_callback(lambda _f: changed.set())
    reports: list[dict[str, Any] | None] = [None] * len(futures)
    pending = dict(enumerate(futures))
    outcome = "failed"
    try:
        view.start()
        next_poll = time.monotonic()
        while pending:
            changed.wait(max(0.0, next_poll - time.monotonic()))
            changed.clear()
            for n, future in list(pending.items()):
                if future.done():
                    reports[n] = future.result()  # raises the shard's error
                    model.run_done(plan.specs[n].name, reports[n])
                    del pending[n]
                    future.release()
            started = time.monotonic()
            if started >= next_poll:
                # Reading the folder costs ~0.2 ms a run not yet done (local disk): with many shards,
                # or on a slow shared file system, poll less often, at most ~10% of the client's time.
                model.poll()
                next_poll = started + max(POLL_SECONDS, 10 * (time.monotonic() - started))
                view.update()
        outcome = "finished"
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    finally:
        if pending:
            with contextlib.suppress(Exception):
                client.cancel(list(pending.values()))
        model.end(outcome)
        view.close()
    return [r for r in reports if r is not None]


def _size(spec: _RunSpec) -> int | None:
    return len(spec.indices) if spec.kind == "shard" else 1 if spec.kind == "member" else None


def resumable_map(
    func: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    key: str,
    dir: str | os.PathLike[str] | None = None,
    shards: int | None = None,
    split: str = "mod",
    client: Any = None,
    every: str | int | None = "30s",
    reduce: Callable[[list[Any]], Any] | None = None,
    progress: bool = True,
) -> Any:
    """``[func(x) for x in items]`` on Dask, in ``shards`` resumable runs; results in item order.

    Each shard is a Dask task running a resumable loop over its items, checkpointing its partial
    results to ``<dir>/<key>/shard-<i>-of-<n>/`` as ``every`` says. A shard rerun after its worker
    died resumes from its last checkpoint (redoing at most one checkpoint interval); a finished shard
    is replayed from its completion record without calling ``func``; calling again after a crash of
    the caller resumes the whole map.

    Args:
        func: called once per item, on a worker (Dask pickles it with cloudpickle).
        items: a sequence (list, tuple, range, array): shards address items by index.
        key: the map's name; its shards are the runs ``<key>/shard-<i>-of-<n>``.
        dir: the checkpoint folder, which every worker must reach at the same path (a local folder for
            a ``LocalCluster``, a shared file system for a real cluster); default as for the magic.
        shards: how many shards (default: as many as the map already has on disk, else 4 per worker
            thread, at most one per item). Another count than the one on disk is refused.
        split: ``"mod"`` (item ``i`` in shard ``i mod n``) or ``"blocks"`` (contiguous blocks).
        client: a ``distributed.Client``, or a scheduler address; default the current Dask client,
            else a ``LocalCluster`` started for this call and closed after it.
        every: checkpoint interval of each shard: ``"30s"``, ``"5m"``, ``"500it"``; None: adaptive.
        reduce: combines the results list (in item order) into the return value; default: the list.
        progress: show one progress view for the whole map (a widget in a notebook, text otherwise).

    Raises:
        OptionError: bad arguments, before anything runs. ShardingChangedError /
        ShardFailedError: the folder holds runs of another sharding or of other items. Whatever
        ``func`` raises, after the other shards were cancelled; their checkpoints stay.
    """
    _check_common(func, key, every, reduce)
    directory = _directory(dir)
    plan, count = _plan_map(items, key, directory, shards, split)
    if plan.n_items == 0:
        return reduce([]) if reduce is not None else []
    if count is not None:  # known without a cluster: check the folder before any start
        _fill_map(plan, items, count, split, every)
        _check_existing_inputs(plan)
    with _dask_client(client) as dask_client:
        if count is None:
            _fill_map(plan, items, min(plan.n_items, 4 * _worker_threads(dask_client)), split, every)
            _check_existing_inputs(plan)
        reports = _execute(dask_client, func, plan, progress)
    results: list[Any] = [None] * plan.n_items
    for spec, report in zip(plan.specs, reports, strict=True):
        for index, value in zip(spec.indices, report["values"], strict=True):
            results[index] = value
    return reduce(results) if reduce is not None else results


def resumable_sweep(
    func: Callable[..., Any],
    param_sets: Sequence[Mapping[str, Any]],
    *,
    key: str,
    dir: str | os.PathLike[str] | None = None,
    client: Any = None,
    every: str | int | None = "30s",
    reduce: Callable[[list[Any]], Any] | None = None,
    progress: bool = True,
) -> Any:
    """``[func(**p) for p in param_sets]`` on Dask, one resumable run per parameter set.

    Each set is its own run, ``<key>/<name>=<value>,...`` (``sweep/lr=0.01,seed=3``, as
    ``--params`` makes them), one Dask task each: finished members are replayed, never rerun.
    When ``func`` has a ``checkpoint`` parameter, it is given ``checkpoint(state, names=None,
    every=None)``, which returns the member's :class:`~resumable_magic.Resumable` over ``state`` (a
    dict) for the member's own loop: a member rerun after its worker died resumes inside that loop::

        def train(lr, seed, checkpoint):
            state = {"w": 0.0}
            with checkpoint(state) as run:
                for step in run.iterate(range(1000)):
                    state["w"] -= lr * grad(state["w"], seed, step)
            return state["w"]

    Without it, a member is one call, checkpointed when it returns. The parameter values are the
    member's inputs: a set whose key text is the same but whose values differ is refused.
    Arguments as for :func:`resumable_map`; the results are in the order of ``param_sets``.
    """
    _check_common(func, key, every, reduce)
    directory = _directory(dir)
    plan = _plan_sweep(func, param_sets, key, directory, every)
    if not plan.specs:
        return reduce([]) if reduce is not None else []
    _check_existing_inputs(plan)
    with _dask_client(client) as dask_client:
        reports = _execute(dask_client, func, plan, progress)
    results = [report["values"][0] for report in reports]
    return reduce(results) if reduce is not None else results
