"""An inner loop's iterable, reproduced at a position rather than trusted: what makes a torch
``DataLoader`` (or any iterable) yield on resume the items the interrupted run was yielding.

A ``DataLoader`` draws its order when it is iterated: ``iter(loader)`` draws a base seed from the
loader's ``generator=`` (or the global torch RNG), and a shuffling ``RandomSampler`` draws its seed the
same way at the first batch. So the inner loop captures those generators' states just before
``iter()``, and a resume restores them, creates the iterator, and advances its *batch sampler* by the
batches already consumed, without loading their data (as torchdata's ``StatefulDataLoader`` does);
only the last consumed batch is loaded, to check it is the item the checkpoint saw. Any other iterable
is advanced item by item (:func:`~resumable_magic.core.resume.skip_completed`). torch is never imported
here: a ``DataLoader`` means torch is loaded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from resumable_magic.core.iteration import MISSING

__all__ = [
    "generator_states",
    "generators_of",
    "is_dataloader",
    "is_stateful",
    "set_generator_states",
    "skip_batches",
    "worker_count",
]


def is_dataloader(iterable: Any) -> bool:
    """A ``torch.utils.data.DataLoader`` (or a subclass, such as torchdata's ``StatefulDataLoader``)."""
    return any(
        t.__name__ == "DataLoader" and t.__module__.startswith("torch.utils.data")
        for t in type(iterable).__mro__
    )


def is_stateful(iterable: Any) -> bool:
    """An iterable that saves and restores its own position (torchdata's ``StatefulDataLoader``)."""
    return callable(getattr(iterable, "state_dict", None)) and callable(
        getattr(iterable, "load_state_dict", None)
    )


def worker_count(iterable: Any) -> int:
    """How many data-loading worker processes a ``DataLoader`` starts (0 for anything else)."""
    return int(getattr(iterable, "num_workers", 0) or 0) if is_dataloader(iterable) else 0


def generators_of(iterable: Any) -> list[Any]:
    """The ``torch.Generator`` objects that decide a ``DataLoader``'s order: its ``generator=``, its
    sampler's, its batch sampler's sampler's (each once)."""
    if not is_dataloader(iterable):
        return []
    import torch  # a DataLoader: torch is loaded

    found: dict[int, Any] = {}
    sampler = getattr(iterable, "sampler", None)
    inner = getattr(getattr(iterable, "batch_sampler", None), "sampler", None)
    for holder in (iterable, sampler, inner):
        generator = getattr(holder, "generator", None)
        if isinstance(generator, torch.Generator):
            found.setdefault(id(generator), generator)
    return list(found.values())


def generator_states(generators: list[Any]) -> list[bytes]:
    return [bytes(g.get_state().numpy()) for g in generators]


def set_generator_states(generators: list[Any], states: list[bytes]) -> bool:
    """Put ``states`` back into ``generators``; False (nothing changed) when they do not correspond."""
    if len(generators) != len(states):
        return False
    if not generators:
        return True  # (and torch is not imported: it may not be loaded)
    import torch

    for generator, state in zip(generators, states, strict=True):
        generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
    return True


def skip_batches(iterable: Iterable[Any], iterator: Iterator[Any], done: int) -> Any:
    """Advance ``iterator`` (just created from ``iterable``) past ``done`` items and return the last of
    them (:data:`~.iteration.MISSING` if there were fewer). A single-process ``DataLoader`` over a
    map-style dataset skips the first ``done - 1`` batches in its sampler only, loading no data."""
    if done <= 0:
        return MISSING
    sampled = (
        is_dataloader(iterable)
        and worker_count(iterable) == 0
        and getattr(iterable, "_dataset_kind", None) == 0  # _DatasetKind.Map
        and callable(getattr(iterator, "_next_index", None))
        and isinstance(getattr(iterator, "_num_yielded", None), int)
    )
    if sampled:
        try:
            for _ in range(done - 1):
                iterator._next_index()  # type: ignore[attr-defined]
        except StopIteration:
            return MISSING
        iterator._num_yielded += done - 1  # type: ignore[attr-defined]
    else:
        deque(islice(iterator, done - 1), maxlen=0)
    return next(iterator, MISSING)
