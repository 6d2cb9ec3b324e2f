"""Nested loops (epoch x batch) that checkpoint between inner iterations and resume at the exact
(outer, inner) position: :class:`Nest`, composed into a run as ``run.nest``.

The outer loop's items pass through :meth:`Nest.outer`, which notes the global RNG states as each
outer iteration starts; the inner loop iterates :meth:`Nest.inner`, which notes them again (with the
states of a ``DataLoader``'s generators) just before ``iter()``, and counts its items. A checkpoint
taken between inner iterations records both, the count and the inner item (:meth:`Nest.record`).

Resuming from one, the run restores nothing before the loop (:attr:`Nest.pending` holds the
checkpoint): the outer iteration in progress runs again from its first statement, with the RNG as it
was when it started, so the statements before the inner loop rebuild what they built (the
``DataLoader``, ``epoch_loss = 0``); then the inner iterable is reproduced (RNG and generators as at
``iter()``, the consumed items skipped, the last one checked) and only then are the named variables
and the checkpoint's RNG states put back over them. A ``DataLoader`` with worker processes is not
entered (their random streams cannot be reproduced by skipping): its run checkpoints between outer
iterations, and says so once.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from itertools import count
from typing import Any, Protocol

from resumable_magic.core import loaders
from resumable_magic.core.iteration import MISSING
from resumable_magic.errors import IterationMismatchError, ResumableError
from resumable_magic.state import rng
from resumable_magic.state.fingerprint import fingerprint_item, item_matches

__all__ = ["INNER_KEY", "Nest"]

INNER_KEY = "__resumable_inner__"  # the nested loop's record, in a checkpoint's state
_NOT_REPLAYED = (
    "A resume creates the inner iterable again, with the random state it was created with, and skips "
    "the items done; a generator that draws random numbers while the loop body draws from the same "
    "generator, or items read from changing data, cannot be replayed that way: build the items before "
    "the inner loop (a list), or give the generator a random.Random of its own,"
)


class NestedRun(Protocol):
    """What the nest sees of its run (:class:`~resumable_magic.core.run.Resumable`)."""

    wake: list[bool]
    next_at: int
    position: int
    header: str  # the outer loop's first line

    def boundary(self, item: Any) -> None: ...


class Nest:
    """The inner loop of a run whose outer loop holds one (see the module doc).

    Args:
        run: the run; its ``next_at`` counts inner iterations (:attr:`steps`).
        say: shows an info message (each is said once).
        header: the inner loop's first line, for messages.
        persistent: the inner iterable outlives an outer iteration (built before the loop): on a
            resume between outer iterations its generators are put back as the checkpoint found them.
    """

    def __init__(
        self,
        run: NestedRun,
        say: Callable[[str], None],
        header: str = "the inner loop",
        persistent: bool = True,
    ) -> None:
        self.run, self.say, self.header, self.persistent = run, say, header, persistent
        self.steps = 0  # inner iterations completed over the whole run: what --every Nit counts
        self.inner: int | None = None  # items completed by the inner loop in progress (None: none runs)
        self.pending: dict[str, Any] | None = None  # a mid-epoch checkpoint's record, until resumed
        self._put_back: Callable[[], None] | None = None  # restores the named state over the rerun
        self._resumed_generators: list[bytes] | None = None  # an outer-boundary checkpoint's
        self._outer_item: Any = MISSING  # the outer item in progress, and the one before it
        self._previous_outer: Any = MISSING
        self._outer_rng: dict[str, Any] = {}
        self._iter_rng: dict[str, Any] = {}
        self._iterable: Any = None  # the inner iterable in progress (or last run)
        self._generator_states: list[bytes] = []  # its generators' states just before iter()
        self._said_workers = False

    # -- resuming -----------------------------------------------------------------------------------
    def resume_from(
        self, manifest: dict[str, Any], record: dict[str, Any] | None, put_back: Callable[[], None]
    ) -> bool:
        """Take a checkpoint's nested record; True when it was taken inside the inner loop, in which
        case ``put_back`` (the named state and RNG) is called once the inner iterable is reproduced."""
        self.steps = int(manifest.get("steps") or 0)
        record = record or {}
        if manifest.get("inner") is None:
            self._resumed_generators = record.get("generators_now")
            return False
        self.pending, self._put_back = record, put_back
        return True

    @staticmethod
    def needed(nest: Nest | None) -> Nest:
        """The nest of a run whose loop iterates a second level; refused when it was not opened nested."""
        if nest is None:
            raise ResumableError(
                "run.iterate() was called inside the loop it drives: to checkpoint inside an inner "
                "loop, open the run with Resumable(..., nested=True)."
            )
        return nest

    @staticmethod
    def refuse_flat(manifest: dict[str, Any]) -> None:
        """Refuse a checkpoint written inside an inner loop in a run that has none: resuming its outer
        iteration from the start over the state of its middle would do those inner iterations twice."""
        inner = manifest.get("inner")
        if inner is not None:
            raise ResumableError(
                f"The checkpoint was written inside the inner loop `{inner.get('header')}`, after "
                f"{inner.get('position')} of its items, but this run has no inner loop it can enter (the "
                f"cell changed, or Resumable was opened without nested=True): resuming would redo those "
                f"items over state that already holds them. The loop was not run. Restore the inner loop, or "
                f"start over with --fresh."
            )

    def check_resumed(self) -> None:
        """Refuse to go on when a mid-epoch checkpoint's inner loop was not reached: the named state
        would otherwise never be restored."""
        if self.pending is not None:
            raise ResumableError(
                f"The checkpoint was written inside the inner loop `{self.header}`, but the outer iteration "
                f"it was in ended without reaching that loop, so its state was not restored and the run "
                f"cannot go on as it would have. Nothing was saved. Make the code reach the inner loop as "
                f"it did, or start over with --fresh."
            )

    # -- the loops ------------------------------------------------------------------------------------
    def outer(self, items: Iterator[Any]) -> Generator[Any, None, None]:
        """The outer loop's items, noting where each outer iteration starts."""
        for item in items:
            self._outer_item = item
            pending = self.pending
            if pending is not None:
                if not item_matches(pending.get("outer_item"), item):
                    raise IterationMismatchError(self.run.position + 1, self.run.header)
                rng.restore(pending["outer_rng"])  # the statements before the inner loop draw as then
            self._outer_rng = rng.capture()
            yield item
            self.check_resumed()
            self.inner = None
            self._previous_outer = item

    def inner_loop(self, iterable: Iterable[Any], start: int | None = None) -> Iterator[Any]:
        """The inner loop's items (what ``for x in <inner iterable>`` iterates in a nested run); with
        ``start``, ``(start + index, item)`` pairs, as ``enumerate(iterable, start)`` yields."""
        self._iterable = iterable
        generators = loaders.generators_of(iterable)
        # A StatefulDataLoader saves its workers' state itself; other loaders' workers cannot be replayed.
        workers = 0 if loaders.is_stateful(iterable) else loaders.worker_count(iterable)
        if workers and not self._said_workers:
            self._said_workers = True
            self.say(
                f"`{self.header}` loads data in {workers} worker processes, whose own random streams a "
                f"resume cannot reproduce by skipping batches: checkpoints are taken between outer "
                f"iterations only."
            )
        pending, self.pending = self.pending, None
        if pending is not None:
            rng.restore(pending["iter_rng"])
            loaders.set_generator_states(generators, pending["generators"])
        elif self._resumed_generators is not None and self.persistent:
            loaders.set_generator_states(generators, self._resumed_generators)
        self._resumed_generators = None
        self._iter_rng = rng.capture()
        self._generator_states = loaders.generator_states(generators)
        if pending is not None and loaders.is_stateful(iterable) and pending.get("loader") is not None:
            iterable.load_state_dict(pending["loader"])  # type: ignore[attr-defined]
            iterator = iter(iterable)
        else:
            iterator = iter(iterable)
            if pending is not None:
                done = int(pending["done"])
                last = loaders.skip_batches(iterable, iterator, done)
                if last is MISSING or not item_matches(pending.get("item"), last):
                    raise IterationMismatchError(done, self.header, _NOT_REPLAYED)
        self.inner = 0
        if pending is not None:
            self.inner = int(pending["done"])
            assert self._put_back is not None
            self._put_back()  # the named state and the checkpoint's RNG, over what the rerun built
            self._put_back = None
            self.say(
                f"Resumed inside `{self.header}`: the statements before it ran again, its first "
                f"{self.inner} items were skipped, and the named state was restored over them."
            )
        driven = self._drive(iterator, checkpoints=not workers)
        return driven if start is None else zip(count(start + self.inner), driven)

    def _drive(self, iterator: Iterator[Any], checkpoints: bool) -> Generator[Any, None, None]:
        """Yield every item, counting the completed ones in locals (the hot path), written back to
        :attr:`inner` and :attr:`steps` where the run looks: at a boundary, and when the loop ends."""
        run, wake = self.run, self.run.wake
        done, steps = self.inner or 0, self.steps
        try:
            for item in iterator:
                yield item
                done += 1
                steps += 1
                if wake[0] or steps == run.next_at:
                    self.inner, self.steps = done, steps
                    if checkpoints:
                        run.boundary(item)
                    else:
                        wake[0] = True  # the outer boundary at the end of this iteration decides
        finally:
            self.steps = steps
            self.inner = None

    # -- checkpoints ------------------------------------------------------------------------------------
    def record(self, item: Any) -> tuple[Any, tuple[dict[str, Any], dict[str, Any]]]:
        """For a checkpoint taken now after ``item``: the outer item the manifest fingerprints (the last
        completed one), and the record: the manifest's part, the state's part (RNG states are not JSON)."""
        generators_now = loaders.generator_states(loaders.generators_of(self._iterable))
        if self.inner is None:
            return item, ({"steps": self.steps}, {"generators_now": generators_now})
        state: dict[str, Any] = {
            "done": self.inner,
            "item": fingerprint_item(item),
            "outer_item": fingerprint_item(self._outer_item),
            "outer_rng": self._outer_rng,
            "iter_rng": self._iter_rng,
            "generators": self._generator_states,
            "generators_now": generators_now,
        }
        if loaders.is_stateful(self._iterable):
            state["loader"] = self._iterable.state_dict()
        manifest = {"steps": self.steps, "inner": {"position": self.inner, "header": self.header}}
        return self._previous_outer, (manifest, state)
