"""One resumable run of a loop, from opening to closing: :class:`Resumable`.

Plain Python, no IPython: the ``%%resumable`` magic is a thin layer over :class:`Resumable`, and
scripts use it directly::

    state = {"todo": list(range(1000)), "done": []}
    with Resumable("drain", state, dir="ckpt", every="5s") as run:
        while run.tick() and state["todo"]:
            state["done"].append(work(state["todo"].pop()))

``Resumable(key, namespace, names)`` checkpoints ``namespace[name]`` for each name (all keys of the
namespace when ``names`` is omitted) together with the global RNG states.

The run opens (:func:`~.resume.find_start` decides where it starts), restores, hands its loop to a
driver (:mod:`.iteration`), and at each boundary the driver stops at asks its policy whether a
checkpoint is due (:meth:`Resumable.boundary`); its :class:`~.checkpoint.Checkpointer`
(``run.checkpoints``) takes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, MutableMapping, Sequence
from inspect import GEN_SUSPENDED, getgeneratorstate
from itertools import chain
from typing import Any

from resumable_magic.core import history, iteration, messages
from resumable_magic.core.checkpoint import WRITER_WAIT, Checkpointer
from resumable_magic.core.nested import INNER_KEY, Nest
from resumable_magic.core.policy import CheckpointPolicy, Every, parse_every, parse_size
from resumable_magic.core.resume import (
    Start,
    check_rng,
    default_directory,
    find_start,
    load_payload,
    put_back,
    resume_info,
    skip_completed,
)
from resumable_magic.core.unnamed import UnnamedWatch
from resumable_magic.core.wakeup import TICK_SECONDS, Wakeup
from resumable_magic.errors import CheckpointWriteError, ResumableError, RunInterrupted
from resumable_magic.progress.model import ProgressModel
from resumable_magic.progress.snapshots import ResumeInfo, StartInfo
from resumable_magic.progress.textview import TextProgress
from resumable_magic.state.fingerprint import fingerprint_inputs
from resumable_magic.state.serialize import check_state
from resumable_magic.store.autoresume import jupyterlab_resume
from resumable_magic.store.runstore import RunStore

__all__ = ["Resumable"]

_MISSING = iteration.MISSING  # "no item": a checkpoint not taken at a for-loop boundary


class Resumable:
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
        map_location: ``"cpu"``: restore PyTorch tensors into the CPU's memory, whatever device they
            were saved from (default: their own device; a checkpoint from a GPU this machine lacks is
            refused).
        nested: the loop holds an inner loop, iterated with :meth:`iterate` inside the outer one:
            checkpoints fall between inner iterations too, and ``every="Nit"`` counts those
            (:mod:`.nested`).
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
        params: Mapping[str, Any] | None = None,
        max_size: str | int | None = None,
        map_location: str | None = None,
        nested: bool = False,
    ) -> None:
        self.key = key
        self.map_location = map_location
        self.namespace = namespace
        self.names = tuple(names) if names is not None else tuple(namespace)
        self.store = RunStore(dir if dir is not None else default_directory(), key)
        self.lease = self.store.new_lease()
        self.policy = CheckpointPolicy(parse_every(every))  # decides, at each boundary, if one is due
        max_bytes = parse_size(max_size if max_size is not None else os.environ.get("RESUMABLE_MAX_SIZE"))
        self.fresh, self.accept_changes = fresh, accept_changes
        self.input_values = dict(inputs or {})  # compared with a checkpoint's by inputs_changed
        self.inputs = fingerprint_inputs(self.input_values)  # what a checkpoint records
        self.code = code
        self.progress = progress if progress is not None else TextProgress()
        self.header = header
        self.final_names = tuple(n for n in final_names if n not in self.names)
        self.params = dict(params or {})
        self.history: list[dict[str, Any]] = []  # started / resumed / finished events, kept in the metadata
        self.checkpoints = Checkpointer(
            self.store,
            self.lease,
            self.policy,
            self.progress,
            key=key,
            namespace=namespace,
            names=self.names,
            final_names=self.final_names,
            inputs=self.inputs,
            params=self.params,
            code=code,
            header=header,
            max_size=max_bytes,
        )

        # What the loop drivers see (iteration.LoopRun): the position, the wake flag, next_at.
        self.position = 0  # completed iterations
        # transient: replaced by the summary once the loop has stopped
        self._wakeup = Wakeup(lambda: self.progress.message("transient", messages.INTERRUPT_TEXT))
        self.wake = self._wakeup.flag  # raised by the timer thread and signals; tested at every boundary
        self.next_at = -1  # where the iteration policy is next due (-1: none): policy.next_due_at
        self.total: int | None = None
        self.replayed = False  # a finished run was restored; the loop must not run
        self._start = Start()  # where open() found the run starts
        self._unnamed: UnnamedWatch | None = None  # unnamed objects the loop reads (watch_unnamed)
        self._loaded: dict[str, Any] | None = None  # its checkpoint, unpickled once (restored_values)
        self._next_report = 0.0
        self._started = False  # restore() ran: this attempt counts (an outcome is recorded at close)
        self._first_tick = True
        self._iterator: Generator[Any, None, None] | None = None  # the driver: closed at the end
        self._prepared = False
        self._sequence: list[Any] | tuple[Any, ...] | range | None = None  # a fast for loop's iterable
        self._ended = False
        # Why the loop cannot be checkpointed inside an iteration, said if one outlasts the interval.
        self.nesting_note = "Iterate over the inner loop with run.iterate(...) and nested=True."
        self.nest = Nest(self, self._info) if nested else None

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
        if self._iterator is not None and getgeneratorstate(self._iterator) == GEN_SUSPENDED:  # in the loop
            return Nest.needed(self.nest).inner_loop(iterable)
        iterator = iterable if self._prepared else self.prepare(iterable)
        self._iterator, loop = iteration.drive(self, iterator, self._sequence)  # type: ignore[arg-type]
        return loop if self.nest is None else self.nest.outer(loop)

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
        if self.wake[0] or self.position == self.next_at:
            self.boundary(_MISSING)
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
            gone = "its process is gone" in took_over
            (self._info if gone else self._warn)(messages.takeover_text(self.lease.previous or {}, gone))
        try:
            self.store.clean_temporaries()
            self._start = start = find_start(
                self.store,
                self.key,
                self.progress,
                names=self.names,
                inputs=self.input_values,
                code=self.code,
                fresh=self.fresh,
                accept_changes=self.accept_changes,
                map_location=self.map_location,
            )
        except BaseException:
            self.lease.release(undo=True)
            raise
        self.checkpoints.last_generation = start.generation  # kept while the next commit lands
        if start.checkpoint is not None:
            self.history, self.replayed = start.history, start.replayed
            self.position = self.checkpoints.last_position = start.checkpoint.position
            self.checkpoints.last_steps = int(start.checkpoint.manifest.get("steps") or 0)

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
        checkpoint = self._start.checkpoint
        if checkpoint is None or self.position == 0 or self.replayed:
            return iterator
        expected = checkpoint.manifest.get("item")
        return skip_completed(iterable, iterator, self.position, expected, self.header)

    def watch_unnamed(self, values: Mapping[str, Any]) -> None:
        """Digest ``values`` (unnamed objects the loop reads) now, as the loop starts; after the first
        checkpoint (or the loop's end) a changed one is warned about: a crash would lose the change."""
        self._unnamed = UnnamedWatch(values) if values else None

    def _check_unnamed(self) -> None:
        watch, self._unnamed = self._unnamed, None
        changed = watch.changed(self.namespace) if watch is not None else []
        if changed:
            self._warn(messages.unnamed_change_text(changed))

    def restored_values(self) -> dict[str, Any]:
        """The named variables the run will restore (``{}`` when it starts afresh), loaded but not yet
        put in place: the very objects :meth:`restore` binds. A ``for`` loop's iterable that reads
        named state is evaluated over them, before the restore, so that the loop walks the list the
        body then changes; the RNG states are still those setup left."""
        if self._start.checkpoint is None or self.replayed:
            return {}
        payload = self._payload()
        return {n: payload[n] for n in self.names if n in payload}

    def _payload(self) -> dict[str, Any]:
        if self._loaded is None:
            assert self._start.checkpoint is not None
            self._loaded = load_payload(self._start.checkpoint, self.key, self.map_location)
        return self._loaded

    def restore(self) -> None:
        """Put the checkpoint's variables and RNG states in place (or write the first checkpoint)."""
        checkpoint = self._start.checkpoint
        if not self.replayed:
            self._started = True
            self.store.clear_outcome()  # a new attempt: how the previous one ended no longer holds
        if checkpoint is None:
            for name in self.names:
                if name not in self.namespace:
                    raise messages.undefined_name_error(name, self.namespace)
            self.history = [history.event("started")]
            self._start_threads()
            self.progress.run_started(self._start_info(None))
            self._take_checkpoint(_MISSING, first=True)
            self.next_at = self.policy.next_due_at(self._count()[1])
            return
        payload = self._payload()
        if not self.replayed:
            # Variables named since the checkpoint was written keep setup's values: checked now as
            # the first checkpoint checks them, before the loop resumes (a file open for writing...).
            check_state(
                {n: self.namespace[n] for n in self.names if n not in payload and n in self.namespace}
            )
        check_rng(
            checkpoint.manifest, self.progress, accept_changes=self.accept_changes, finished=self.replayed
        )
        names = self.names + (self.final_names if self.replayed else ())
        restore_state = lambda: put_back(payload, self.namespace, names)  # noqa: E731
        # A checkpoint inside an inner loop: the state goes back once that loop is reproduced.
        nest = self.nest if not self.replayed else None
        if nest is None and not self.replayed:
            Nest.refuse_flat(checkpoint.manifest)
        if nest is None or not nest.resume_from(checkpoint.manifest, payload.get(INNER_KEY), restore_state):
            restore_state()
        if self.replayed:
            if self._start.done is None:  # killed between the final checkpoint and its DONE record
                self.store.mark_finished(
                    checkpoint.generation, {"finished": checkpoint.created, "position": checkpoint.position}
                )
            self.lease.release(undo=True)  # a replay only reads
            finished_at = (self._start.done or {}).get("finished", checkpoint.created)
            restored = [n for n in self.names + self.final_names if n in self.namespace]
            self.progress.run_started(self._start_info(None))
            self._info(messages.replay_text(self.key, finished_at, checkpoint.position, restored))
            self.progress.run_ended("replayed")
            return
        # The lease of the attempt that ended says how far it got, and when: the work redone now.
        resumed = resume_info(checkpoint, self.lease.previous)
        resumed = dataclasses.replace(
            resumed, by_jupyterlab=jupyterlab_resume(self.store, self.history, checkpoint.created)
        )
        self.history.append(history.resumed_event(checkpoint, resumed, self._start.previous_end))
        self.next_at = self.policy.next_due_at(self._count()[1])
        self._start_threads()
        self.checkpoints.last_time = time.monotonic()  # a time policy counts from the resume
        self.progress.run_started(self._start_info(resumed))
        self._info(history.resumed_text(self.names, checkpoint, self.total, resumed))

    def finish(self) -> None:
        """The loop ended normally (also by ``break``): write the final checkpoint and the DONE record."""
        if self.replayed or self._ended:
            return
        self._wakeup.stop_timer()
        if self._iterator is not None:
            self._iterator.close()  # syncs self.position after a `break`
        if self.nest is not None:
            self.nest.check_resumed()
        self._check_unnamed()  # a loop shorter than a checkpoint interval: asked at its end
        generation = self._take_checkpoint(_MISSING, final=True)
        self.store.mark_finished(generation, {"finished": time.time(), "position": self.position})
        self._ended = True
        self.progress.run_ended("finished")

    def close(self, exc: BaseException | None = None) -> None:
        """Report how the run ended, stop the timer thread, give the signals back. Always call it."""
        if self._iterator is not None:
            self._iterator.close()  # syncs self.position when the loop raised between boundaries
        if self.checkpoints.writer is not None:  # a background writer in flight: its checkpoint counts
            hurry = isinstance(exc, KeyboardInterrupt) and not isinstance(exc, RunInterrupted)
            try:
                self.checkpoints.collect(wait=True, timeout=5.0 if hurry else WRITER_WAIT)
            except ResumableError as problem:
                self._warn(str(problem))
        if not self._ended and not self.replayed and self._started and self.lease.lost is None:
            self._ended = True
            outcome, detail, error = None, "", None
            if isinstance(exc, RunInterrupted):  # the summary names the checkpoint saved
                outcome = "interrupted"
            elif isinstance(exc, KeyboardInterrupt):  # a second interrupt: stopped mid-iteration
                outcome, detail = "interrupted", f"stopped at once; {self.checkpoints.kept()}"
            elif exc is not None:
                error = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
                outcome, detail = "failed", f"{error}; {self.checkpoints.kept()}"
            if outcome is not None:
                record = {"state": outcome, "time": time.time(), "position": self.position}
                self.store.write_outcome({**record, "error": error} if error else record)
                self.progress.run_ended(outcome, detail)
        self.lease.release(self._count()[0], undo=not self._started)  # what the heartbeat counts
        self._wakeup.stop()  # signals back; a SIGTERM that arrived now terminates the process

    # -- boundaries and checkpoints --------------------------------------------------------------------
    def boundary(self, item: Any) -> None:
        """An iteration boundary where a checkpoint may be due, after the iteration that yielded
        ``item`` (:data:`~.iteration.MISSING`: a ``while`` loop's). The loop drivers call it when
        :attr:`wake` is up or the position reached :attr:`next_at`; the policy decides."""
        self.wake[0] = False
        now = time.monotonic()
        checkpoints = self.checkpoints
        if checkpoints.writer is not None:
            checkpoints.collect(wait=False)
        if self.lease.lost is not None:
            raise self.lease.lost_error()
        if self._wakeup.stop_signal is not None:
            self._take_checkpoint(item, sync=True)
            name = signal.Signals(self._wakeup.stop_signal).name
            raise RunInterrupted(messages.stopped_text(name, self.position), self.position, name)
        count, last = self._count()
        if self.policy.due(now, count, checkpoints.last_time, last):
            if self.policy.one_iteration_too_long(now - checkpoints.last_time, count - last):
                self._warn(
                    messages.long_iteration_text(self.header, now - checkpoints.last_time, self._finer())
                )
            self._take_checkpoint(item)
            self._check_unnamed()
        elif now >= self._next_report:
            self._next_report = now + TICK_SECONDS
            self.progress.advanced(self.position)
        # A checkpoint committed here (or by a background writer just collected) moves the next one.
        # While a background writer is in flight its checkpoint is not committed yet, so the position
        # an iteration policy names may already be behind: look again at the next iteration (the
        # drivers stop only where the position equals next_at, never past it).
        count, last = self._count()
        next_at = self.policy.next_due_at(last)
        self.next_at = next_at if next_at < 0 or next_at > count else count + 1

    def _take_checkpoint(
        self, item: Any = _MISSING, *, first: bool = False, final: bool = False, sync: bool = False
    ) -> int:
        """Checkpoint now (:meth:`.Checkpointer.take`); returns the newest committed generation."""
        item, nested = self.nest.record(item) if self.nest is not None else (item, None)
        events = self.history + ([history.event("finished", position=self.position)] if final else [])
        return self.checkpoints.take(
            item,
            self.position,
            self.total,
            history.trimmed(events),
            first=first,
            final=final,
            sync=sync,
            nested=nested,
        )

    def _count(self) -> tuple[int, int]:
        """What an iteration policy counts, now and at the newest checkpoint: a nested loop's inner
        iterations, else the loop's."""
        if self.nest is not None:
            return self.nest.steps, self.checkpoints.last_steps
        return self.position, self.checkpoints.last_position

    def _finer(self) -> str:
        """Why the loop cannot be checkpointed inside the iteration that just outlasted the interval."""
        inner = self.nest is not None and self.nest.inner is not None
        return "It is an inner iteration, which is not split further." if inner else self.nesting_note

    def _start_threads(self) -> None:
        self._wakeup.start()
        self.lease.start_heartbeat(lambda: self._count()[0], on_lost=lambda: self.wake.__setitem__(0, True))

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
            directory=str(self.store.path),
        )
