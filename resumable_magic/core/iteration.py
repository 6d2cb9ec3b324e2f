"""How a resumable loop's iterations are driven: the hot path, and where its boundaries fall.

Three drivers, all generators that keep a run's ``position`` (completed iterations) exact wherever
the loop stops, and call ``run.boundary(item)`` only when a checkpoint may be due: the run's ``wake``
flag is up (raised by its timer thread or a signal), or the position reached ``next_at`` (where the
iteration policy is due). Whether one *is* due, the boundary asks the policy. They see the run only
through :class:`LoopRun`.

- :func:`chunks`: a ``list``, ``tuple`` or ``range``, consumed through ``islice`` chunks of its own
  iterator, or a range's sub-ranges (:func:`drive` chains them with ``itertools.chain.from_iterable``):
  no Python code runs per item; the iterator's index gives the position. Chunks are sized to ~2 ms
  of iterations.
- :func:`counted`: iteration numbers for a rewritten ``while`` loop, in ``range`` chunks; the loop
  stores the current number in its namespace, which gives the position where it stops.
- :func:`per_item`: any other iterable, one generator step per item (~50 ns).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from itertools import chain, islice
from typing import Any, Protocol

__all__ = ["CHUNK_SECONDS", "MISSING", "LoopRun", "chunks", "counted", "drive", "iterator_index", "per_item"]

CHUNK_SECONDS = 0.002  # boundaries fall between chunks of about this much work
MAX_CHUNK = 1 << 16
MISSING = object()  # "no item": a boundary of a while loop


class LoopRun(Protocol):
    """What a driver sees of a run (:class:`~resumable_magic.core.run.Resumable`)."""

    position: int  # completed iterations: read at the start, written back wherever the loop stops
    wake: list[bool]  # wake[0]: raised by the run's timer thread and signals; tested per item
    next_at: int  # the position where the iteration policy is due (-1: none); compared per item

    def boundary(self, item: Any) -> None:
        """A checkpoint may be due after the iteration that yielded ``item`` (:data:`MISSING`: none)."""
        ...


def drive(
    run: LoopRun, iterator: Iterator[Any], sequence: Sequence[Any] | None
) -> tuple[Generator[Any, None, None], Iterator[Any]]:
    """The driver for a ``for`` loop over ``iterator`` (from ``sequence`` when that is a list, tuple or
    range), and what the loop iterates: :func:`chunks`, chained, when the iterator's own index gives
    the position, else :func:`per_item`. The run closes the driver when the loop ends."""
    if sequence is not None and iterator_index(iterator) is not None:
        driver: Generator[Any, None, None] = chunks(run, iterator, sequence)
        return driver, chain.from_iterable(driver)
    driver = per_item(run, iterator)
    return driver, driver


def per_item(run: LoopRun, iterator: Iterator[Any]) -> Generator[Any, None, None]:
    """Yield every item; one local increment and one flag test per iteration."""
    position = run.position
    wake = run.wake
    try:
        for item in iterator:
            yield item
            position += 1
            if wake[0] or position == run.next_at:
                run.position = position
                run.boundary(item)
    finally:
        # Also on close() after a `break`: the count of iterations whose boundary was reached.
        run.position = position


def chunks(
    run: LoopRun, iterator: Iterator[Any], sequence: Sequence[Any]
) -> Generator[Iterator[Any], None, None]:
    """Chunks of a list/tuple/range, with boundaries between them: ``islice`` chunks of a list's or
    tuple's own iterator (which sees the list change, as a plain loop does), and a range's sub-ranges
    (immutable, so equivalent; C code only, ~8% faster than ``islice`` per trivial iteration)."""
    position, size = run.position, 1
    ranged = isinstance(sequence, range)
    offset = 0  # the index in ``sequence`` of the first item of ``iterator``
    try:
        while True:
            length = _chunk_length(run, position, size)
            if ranged:
                iterator, offset = iter(sequence[position : position + length]), position
            started = time.perf_counter()
            yield iterator if ranged else islice(iterator, length)
            elapsed = time.perf_counter() - started
            index = _sequence_index(iterator, offset)
            if index is None or index == position:  # exhausted
                position = len(sequence) if index is None else index
                return
            run.position = position = index
            if run.wake[0] or position == run.next_at:
                run.boundary(sequence[position - 1])
            size = _next_chunk_size(size, length, elapsed)
    except GeneratorExit:
        # Stopped inside a chunk (break, an exception): the item in progress did not complete.
        index = _sequence_index(iterator, offset)
        position = (len(sequence) if index is None else index) - 1
        raise
    finally:
        run.position = position


def _sequence_index(iterator: Iterator[Any], offset: int) -> int | None:
    index = iterator_index(iterator)
    return None if index is None else offset + index


def counted(run: LoopRun, namespace: Mapping[str, Any], counter: str) -> Generator[range, None, None]:
    """``range`` chunks of iteration numbers for a rewritten ``while`` loop."""
    position, size = run.position, 1
    try:
        while True:
            length = _chunk_length(run, position, size)
            started = time.perf_counter()
            yield range(position, position + length)
            elapsed = time.perf_counter() - started
            run.position = position = position + length
            if run.wake[0] or position == run.next_at:
                run.boundary(MISSING)
            size = _next_chunk_size(size, length, elapsed)
    except GeneratorExit:
        current = namespace.get(counter)  # the iteration in progress when the loop stopped
        if isinstance(current, int) and position <= current:
            position = current
        raise
    finally:
        run.position = position


def iterator_index(iterator: Any) -> int | None:
    """How many items a list/tuple/range iterator has yielded; None once it is exhausted (or unknown)."""
    try:
        state = iterator.__reduce__()
    except (AttributeError, TypeError):
        return None
    return state[2] if len(state) > 2 and isinstance(state[2], int) else None


def _chunk_length(run: LoopRun, position: int, size: int) -> int:
    next_at = run.next_at
    if next_at > position:  # an iteration-policy checkpoint falls exactly on a boundary
        return min(size, next_at - position)
    return size


def _next_chunk_size(size: int, length: int, elapsed: float) -> int:
    if length < size:
        return size  # a chunk cut short by the iteration policy says little about speed
    if elapsed < CHUNK_SECONDS / 2:
        return min(size * 2, MAX_CHUNK)
    if elapsed > CHUNK_SECONDS * 4:
        return max(1, int(size * CHUNK_SECONDS / elapsed))
    return size
