"""One resumable run of a loop: open, check, restore, iterate with checkpoints, finish.

Plain Python, no IPython: the ``%%resumable`` magic is a thin layer over :class:`Resumable`, and
scripts use it directly::

    state = {"todo": list(range(1000)), "done": []}
    with Resumable("drain", state, dir="ckpt", every="5s") as run:
        while run.tick() and state["todo"]:
            state["done"].append(work(state["todo"].pop()))

``Resumable(key, namespace, names)`` checkpoints ``namespace[name]`` for each name (all keys of the
namespace when ``names`` is omitted) together with the global RNG states.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from itertools import chain, islice
from pathlib import Path
from typing import Any

from resumable_magic.core import iteration, messages
from resumable_magic.core.checkpoint import RNG_KEY as _RNG_KEY
from resumable_magic.core.checkpoint import SNAPSHOT_WAIT, Checkpointing
from resumable_magic.core.forked_writer import Snapshot
from resumable_magic.core.policy import CheckpointPolicy, Every, parse_every, parse_size
from resumable_magic.core.wakeup import TICK_SECONDS, Wakeup
from resumable_magic.errors import (
    CheckpointFormatError,
    CheckpointWriteError,
    InputsChangedError,
    IterationMismatchError,
    NoCheckpointError,
    OwnershipLostError,
    ResumableError,
    RunInterrupted,
    UntrustedCheckpointError,
    ValuesDroppedError,
)
from resumable_magic.progress.model import (
    ProgressModel,
    ResumeInfo,
    StartInfo,
    TextProgress,
)
from resumable_magic.state import rng
from resumable_magic.state.fingerprint import fingerprint_inputs, fingerprint_item
from resumable_magic.state.serialize import decode_state
from resumable_magic.store.runstore import Checkpoint, ReadResult, RunStore

__all__ = ["Resumable", "default_directory", "load", "variables_of"]

_HISTORY_LIMIT = 200  # events kept in the metadata: the first one and the newest ones
_MISSING = iteration.MISSING  # "no item": a checkpoint not taken at a for-loop boundary


def default_directory() -> Path | str:
    """``$RESUMABLE_DIR``, else ``.resumable`` in the current working directory. A URL
    (``s3://bucket/prefix``) is returned as it is: ``Path`` would fold its ``//``."""
    from resumable_magic.storage.paths import is_url

    value = os.environ.get("RESUMABLE_DIR") or ".resumable"
    return value if is_url(value) else Path(value)


class Resumable(Checkpointing):
    """A resumable loop over checkpointed state.

    Args:
        key: the run's name; its checkpoints live in ``directory/key`` (``/`` makes sub-folders).
        namespace: where the state variables live (a notebook's globals, or a plain dict).
        names: the state variables to checkpoint (default: every key of ``namespace``).
        dir: the checkpoint folder (default :func:`default_directory`): a local folder, or an fsspec
            URL (``s3://bucket/prefix``, ``memory://``; ``pip install 'resumable_magic[s3]'``).
        every: ``"30s"``, ``"5m"``, ``"2h"`` or ``"500it"``; None for the adaptive policy.
        fresh: ignore existing checkpoints and start over.
        accept_changes: resume (or continue a finished run) even if ``inputs`` changed.
        inputs: values the loop depends on (parameters); a resume refuses if they changed.
        code: the loop's source, to warn when it changed since the checkpoint.
        progress: the progress model/view to report to (default: text on stdout).
        header: how to name the loop in messages (e.g. its first line).
        final_names: extra names saved with the final checkpoint only (a ``for`` loop's target).
        params: parameter values (as text) that the key was built from; recorded in the metadata.
        max_size: warn (once) when a checkpoint's state is larger: ``"2GiB"``, ``"500MB"`` or bytes
            (default ``$RESUMABLE_MAX_SIZE``, else no limit). A checkpoint that would leave less than
            twice its size free on the disk always warns.
    """

    def __init__(
        self,
        key: str,
        namespace: MutableMapping[str, Any],
        names: Sequence[str] | None = None,
        *,
        dir: str | os.PathLike[str] | None = None,
        every: str | int | Every | None = None,
        fresh: bool = False,
        accept_changes: bool = False,
        inputs: Mapping[str, Any] | None = None,
        code: str | None = None,
        progress: ProgressModel | None = None,
        header: str = "loop",
        final_names: Sequence[str] = (),
        params: Mapping[str, str] | None = None,
        max_size: str | int | None = None,
    ) -> None:
        self.key = key
        self.namespace = namespace
        self.names = tuple(names) if names is not None else tuple(namespace)
        self.store = RunStore(dir if dir is not None else default_directory(), key)
        self.lease = self.store.new_lease()
        self.policy = CheckpointPolicy(parse_every(every))
        self.max_size = parse_size(max_size if max_size is not None else os.environ.get("RESUMABLE_MAX_SIZE"))
        self._size_warned: set[str] = set()
        self._snapshot: Snapshot | None = None  # a background checkpoint writer in flight
        # Each background write: the loop's stall, the writer's time, the memory it ended up copying.
        self.background_writes: list[dict[str, Any]] = []
        self._last_size = 0  # bytes of the newest committed state: decides whether to fork
        self._said_mode = False
        self.fresh, self.accept_changes = fresh, accept_changes
        self.inputs = fingerprint_inputs(inputs or {})
        self.code = code
        self.progress = progress if progress is not None else TextProgress()
        self.header = header
        self.final_names = tuple(n for n in final_names if n not in self.names)
        self.params = dict(params or {})
        self.history: list[dict[str, Any]] = []  # started / resumed / finished events, kept in the metadata

        self.position = 0  # completed iterations
        self.total: int | None = None
        self.replayed = False  # a finished run was restored; the loop must not run
        self._checkpoint: Checkpoint | None = None  # what open() found to resume from
        self._done_record: dict[str, Any] | None = None
        self._last_generation: int | None = None
        self._last_position = 0
        self._last_time = time.monotonic()
        self._next_at = -1  # position of the next iteration-policy checkpoint (-1: none)
        self._wakeup = Wakeup(
            lambda: self._info(
                "Interrupt received: finishing this iteration, then saving a checkpoint (interrupt again to stop now)."
            )
        )
        self._wake = self._wakeup.flag  # raised by the timer thread and signals; tested at every boundary
        self._next_report = 0.0
        self._previous_end: str | None = None  # how the attempt before this one ended (from outcome.json)
        self._started = False  # restore() ran: this attempt counts (an outcome is recorded at close)
        self._first_tick = True
        self._iterator: Iterator[Any] | None = (
            None  # the generator that sees the boundaries; closed at the end
        )
        self._prepared = False
        self._sequence: list[Any] | tuple[Any, ...] | range | None = None  # a fast for loop's iterable
        self._ended = False

    # -- the script API ---------------------------------------------------------------------------
    def __enter__(self) -> Resumable:
        self.open()
        try:
            self.restore()
        except BaseException as exc:
            self.close(exc)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.finish()
        self.close(exc)

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Iterate over ``iterable``, skipping what was done before the crash, checkpointing as due."""
        if self.replayed:
            return iter(())
        iterator = iterable if self._prepared else self.prepare(iterable)
        if self._sequence is not None and iteration.iterator_index(iterator) is not None:
            # A list, tuple or range: run it in chunks of C-level iteration (chain over islice), the
            # iterator's own index giving the exact position whenever the loop stops.
            self._iterator = iteration.chunks(self, iterator, self._sequence)  # type: ignore[arg-type]
            return chain.from_iterable(self._iterator)
        self._iterator = iteration.per_item(self, iterator)  # type: ignore[arg-type]
        return self._iterator

    def count(self, namespace: Mapping[str, Any], counter: str) -> Iterator[int]:
        """Iteration numbers for a rewritten ``while`` loop: ``for <counter> in run.count(...)``.

        The loop stores each number in ``namespace[counter]``, which gives the exact position when it
        stops between boundaries (its condition turned false, ``break``, an exception).
        """
        if self.replayed:
            return iter(())
        self._iterator = iteration.counted(self, namespace, counter)
        return chain.from_iterable(self._iterator)

    def tick(self) -> bool:
        """Call once per ``while`` iteration, before the condition: ``while run.tick() and cond:``."""
        if self._first_tick:
            self._first_tick = False
            return not self.replayed
        self.position += 1
        if self._wake[0] or self.position == self._next_at:
            self._boundary(_MISSING)
        return True

    # -- steps, in order ----------------------------------------------------------------------------
    def open(self) -> None:
        """Find the newest good checkpoint and decide resume / replay / fresh; change nothing yet.

        Raises before anything runs when resuming would be wrong (inputs changed) or impossible.
        """
        try:
            self.store.ensure()
            took_over = self.lease.acquire()
        except OSError as exc:
            raise CheckpointWriteError(self.store.path, "checkpoint folder", exc, "nothing was run") from None
        self.store.fence = self.lease.fenced
        if took_over:  # a crashed kernel's lease is the usual case; a stopped or silent owner is news
            say = self._info if "its process is gone" in took_over else self._warn
            say(f"Took over run {self.key!r} from its previous owner: {took_over}.")
        try:
            self._open()
        except BaseException:
            self.lease.release(undo=True)
            raise

    def _open(self) -> None:
        self.store.clean_temporaries()
        try:
            result = self.store.read_latest()
        except CheckpointFormatError:
            if not self.fresh:
                raise
            result = ReadResult(None, [])  # --fresh: another version's checkpoint is not read at all
        untrusted = [p for p in result.problems if isinstance(p, UntrustedCheckpointError)]
        if untrusted and result.checkpoint is None and not self.fresh:
            # Not "start over": that would delete what a lost key makes unreadable. Name the newest
            # manifest (the checkpoint), else what there is (DONE, a folder).
            raise next((p for p in untrusted if p.path.name.startswith("manifest.")), untrusted[0])
        for problem in result.problems:
            self._warn(f"{problem} It is ignored; an older checkpoint is used if there is one.")
        checkpoint = result.checkpoint
        if result.problems and checkpoint is None:
            self._warn("No readable checkpoint is left for this run, so it starts from the beginning.")
        self._last_generation = checkpoint.generation if checkpoint else None
        if checkpoint is None and not self.fresh:
            dropped = self.store.dropped_values()
            if dropped is not None:
                raise ValuesDroppedError(self.key, messages.when(float(dropped.get("finished") or 0)))
        if checkpoint is None or self.fresh:
            return
        done = self.store.finished(checkpoint.generation)
        self._check_inputs(checkpoint, finished=done is not None)
        self._check_code(checkpoint, finished=done is not None)
        self._checkpoint, self._done_record = checkpoint, done
        self.history = list(checkpoint.manifest.get("history") or [])
        outcome = self.store.read_outcome() or {}
        if outcome.get("state") in ("interrupted", "failed"):
            error = outcome.get("error")
            self._previous_end = f"{outcome['state']}: {error}" if error else str(outcome["state"])
        self.replayed = done is not None and not self.accept_changes
        self.position = self._last_position = checkpoint.position
        missing = [n for n in self.names if n not in checkpoint.manifest.get("names", [])]
        if missing:
            self._warn(
                f"{_quote(missing)} {'is' if len(missing) == 1 else 'are'} not in the checkpoint (named "
                f"since it was written) and keep{'s' if len(missing) == 1 else ''} the value setup gave."
            )

    def prepare(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """An iterator over ``iterable`` advanced past the completed iterations, with the item at the
        checkpoint's position checked against the one the checkpoint saw. Runs before :meth:`restore`,
        so a refusal leaves the namespace untouched and a generator that draws random numbers draws
        them from the same RNG state as the uninterrupted run did."""
        self._prepared = True
        with contextlib.suppress(TypeError, OverflowError):
            self.total = len(iterable)  # type: ignore[arg-type]
        if isinstance(iterable, (list, tuple, range)):
            self._sequence = iterable
        iterator = iter(iterable)
        skip = self.position if self._checkpoint is not None else 0
        if skip == 0 or self.replayed:
            return iterator
        last: Any = _MISSING
        if isinstance(iterable, (list, tuple, range)) and hasattr(iterator, "__setstate__"):
            if len(iterable) >= skip:
                last = iterable[skip - 1]
                iterator.__setstate__(skip)
        else:
            deque(islice(iterator, skip - 1), maxlen=0)
            last = next(iterator, _MISSING)
        expected = self._checkpoint.manifest.get("item") if self._checkpoint else None
        if last is _MISSING or (expected is not None and fingerprint_item(last) != expected):
            raise IterationMismatchError(skip, self.header)
        return iterator

    def restore(self) -> None:
        """Put the checkpoint's variables and RNG states in place (or write the first checkpoint)."""
        checkpoint = self._checkpoint
        if not self.replayed:
            self._started = True
            self.store.clear_outcome()  # a new attempt: how the previous one ended no longer holds
        if checkpoint is None:
            self._require_names()
            self.history = [self._event("started")]
            self._start_threads()
            self.progress.run_started(self._start_info(None))
            self._take_checkpoint(_MISSING, first=True)
            return
        try:
            payload = decode_state(checkpoint.state, checkpoint.buffers)
        except Exception as exc:
            raise ResumableError(
                f"The checkpoint of {self.key!r} (generation {checkpoint.generation}, iteration "
                f"{checkpoint.position:,}) verified but could not be loaded: {type(exc).__name__}: {exc}. "
                f"Nothing was changed. Make what it needs importable, or start over with --fresh."
            ) from None
        rng_states = payload.pop(_RNG_KEY, {})
        names = self.names + (self.final_names if self.replayed else ())
        self.namespace.update({n: payload[n] for n in names if n in payload})
        rng.restore(rng_states)
        if self.replayed:
            self.lease.release(undo=True)  # a replay only reads
            self._report_replay(checkpoint)
            return
        resumed = self._resume_info(checkpoint)
        self.history.append(
            self._event(
                "resumed",
                **{"from": checkpoint.position},
                redone=resumed.redone_iterations,
                redone_seconds=resumed.redone_seconds,
                after=self._previous_end or "crashed",
            )
        )
        if self.policy.iterations:
            self._next_at = self.position + self.policy.iterations
        self._start_threads()
        self._last_time = time.monotonic()
        self.progress.run_started(self._start_info(resumed))
        self._report_resume(checkpoint, resumed)

    def finish(self) -> None:
        """The loop ended normally (also by ``break``): write the final checkpoint and the DONE record."""
        if self.replayed or self._ended:
            return
        self._wakeup.stop_timer()
        if self._iterator is not None:
            self._iterator.close()  # syncs self.position after a `break`
        generation = self._take_checkpoint(_MISSING, final=True)
        self.store.mark_finished(generation, {"finished": time.time(), "position": self.position})
        self._ended = True
        self.progress.run_ended("finished")

    def close(self, exc: BaseException | None = None) -> None:
        """Report how the run ended, stop the timer thread, give the signals back. Always call it."""
        if self._iterator is not None:
            self._iterator.close()  # syncs self.position when the loop raised between boundaries
        if self._snapshot is not None:  # a background writer in flight: its checkpoint counts
            hurry = isinstance(exc, KeyboardInterrupt) and not isinstance(exc, RunInterrupted)
            try:
                self._collect_snapshot(wait=True, timeout=5.0 if hurry else SNAPSHOT_WAIT)
            except ResumableError as error:
                self._warn(str(error))
        if not self._ended and not self.replayed and self._started and self.lease.lost is None:
            self._ended = True
            outcome, detail, error = None, "", None
            if isinstance(exc, RunInterrupted):
                outcome, detail = "interrupted", str(exc)
            elif isinstance(exc, KeyboardInterrupt):  # a second interrupt: stopped mid-iteration
                outcome, detail = "interrupted", f"stopped at once; {self._kept()}"
            elif exc is not None:
                error = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
                outcome, detail = "failed", f"{error}; {self._kept()}"
            if outcome is not None:
                record = {"state": outcome, "time": time.time(), "position": self.position}
                self.store.write_outcome({**record, "error": error} if error else record)
                self.progress.run_ended(outcome, detail)
        self.lease.release(self.position, undo=not self._started)
        self._wakeup.stop()  # signals back; a SIGTERM that arrived now terminates the process

    def _kept(self) -> str:
        if self._last_generation is None:
            return "no checkpoint was written"
        return f"the checkpoint at iteration {self._last_position:,} is kept: run again to resume from it"

    # -- boundaries and checkpoints --------------------------------------------------------------------
    def _boundary(self, item: Any) -> None:
        self._wake[0] = False
        now = time.monotonic()
        if self._snapshot is not None:
            self._collect_snapshot(wait=False)
        if self.lease.lost is not None:
            raise OwnershipLostError(self.key, self.lease.lost)
        if self._wakeup.stop_signal is not None:
            self._take_checkpoint(item, sync=True)
            name = signal.Signals(self._wakeup.stop_signal).name
            raise RunInterrupted(
                f"Stopped by {name} after iteration {self.position:,}; checkpoint saved. "
                f"Run the cell again to resume.",
                self.position,
                name,
            )
        interval, iterations = self.policy.interval, self.policy.iterations
        if (interval is not None and now - self._last_time >= interval) or (
            iterations is not None and self.position - self._last_position >= iterations
        ):
            self._take_checkpoint(item)
        elif now >= self._next_report:
            self._next_report = now + TICK_SECONDS
            self.progress.advanced(self.position)

    def _start_threads(self) -> None:
        self._wakeup.start()
        self.lease.start_heartbeat(lambda: self.position, on_lost=lambda: self._wake.__setitem__(0, True))

    def _event(self, event: str, **details: Any) -> dict[str, Any]:
        record = {"event": event, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
        record.update((k, v) for k, v in details.items() if v is not None)
        return record

    def _history(self, final: bool) -> list[dict[str, Any]]:
        events = self.history + ([self._event("finished", position=self.position)] if final else [])
        if len(events) > _HISTORY_LIMIT:
            events = events[:1] + events[-(_HISTORY_LIMIT - 1) :]
        return events

    # -- checks ---------------------------------------------------------------------------------------
    def _require_names(self) -> None:
        for name in self.names:
            if name not in self.namespace:
                raise messages.undefined_name_error(name, self.namespace)

    def _check_inputs(self, checkpoint: Checkpoint, *, finished: bool) -> None:
        changes = messages.input_changes(checkpoint.manifest.get("inputs") or {}, self.inputs)
        if changes and not self.accept_changes:
            raise InputsChangedError(changes, finished)
        if changes:
            self._info(messages.accepted_changes_text(changes))

    def _check_code(self, checkpoint: Checkpoint, *, finished: bool) -> None:
        old = checkpoint.manifest.get("code")
        if self.code is not None and old is not None and old != self.code:
            self._warn(messages.code_change_text(old, self.code, checkpoint.created, finished))

    # -- reporting ----------------------------------------------------------------------------------------
    def _info(self, text: str) -> None:
        self.progress.message("info", text)

    def _warn(self, text: str) -> None:
        self.progress.message("warning", text)

    def _start_info(self, resumed: ResumeInfo | None) -> StartInfo:
        return StartInfo(
            key=self.key,
            names=self.names,
            total=self.total,
            start_position=self.position,
            policy=self.policy.describe(),
            resumed=resumed,
            replayed=self.replayed,
        )

    def _resume_info(self, checkpoint: Checkpoint) -> ResumeInfo:
        beat = self.lease.previous or {}  # the lease of the attempt that ended: how far it got, when
        reached, seen = beat.get("position"), beat.get("heartbeat")
        redone = redone_seconds = None
        if isinstance(reached, int) and isinstance(seen, (int, float)) and reached > checkpoint.position:
            redone, redone_seconds = reached - checkpoint.position, max(0.0, seen - checkpoint.created)
        return ResumeInfo(
            checkpoint.position, checkpoint.created, checkpoint.generation, redone, redone_seconds
        )

    def _report_resume(self, checkpoint: Checkpoint, resumed: ResumeInfo) -> None:
        self._info(
            messages.resume_text(
                self.names,
                checkpoint.position,
                self.total,
                checkpoint.created,
                resumed.redone_iterations,
                resumed.redone_seconds,
            )
        )

    def _report_replay(self, checkpoint: Checkpoint) -> None:
        finished_at = (self._done_record or {}).get("finished", checkpoint.created)
        restored = [n for n in self.names + self.final_names if n in self.namespace]
        self.progress.run_started(self._start_info(None))
        self._info(messages.replay_text(self.key, finished_at, checkpoint.position, restored))
        self.progress.run_ended("replayed")


def _quote(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def variables_of(checkpoint: Checkpoint) -> dict[str, Any]:
    """The named variables a verified checkpoint holds (its RNG states left out)."""
    payload = decode_state(checkpoint.state, checkpoint.buffers)
    payload.pop(_RNG_KEY, None)
    return payload


def load(key: str, dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The variables saved by the newest good checkpoint of run ``key``, as a dict.

    For scripts and other notebooks: ``load("train", dir=".resumable")["model"]``.
    """
    store = RunStore(dir if dir is not None else default_directory(), key)
    result = store.read_latest()
    if result.checkpoint is None:
        detail = " ".join(str(p) for p in result.problems)
        if store.dropped_values() is not None:
            detail = "The run finished, but `resumable gc --final-values` deleted its final values."
        raise NoCheckpointError(key, store.directory, detail)
    return variables_of(result.checkpoint)
