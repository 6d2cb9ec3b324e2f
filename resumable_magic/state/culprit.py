"""Naming what cannot be checkpointed: the variable, and the path down to the object that fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from resumable_magic.state.resources import ExternalResource

__all__ = ["find_culprit"]

_MAX_PATH_DEPTH = 12


def _children(path: str, obj: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        for key, value in list(obj.items())[:10_000]:
            yield f"{path}[{key!r}]", value
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for index, value in enumerate(list(obj)[:10_000]):
            yield (
                (f"{path}[{index}]" if not isinstance(obj, (set, frozenset)) else f"{path}{{{value!r}}}"),
                value,
            )
    else:
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            for key, value in attrs.items():
                yield f"{path}.{key}", value
        for slot in getattr(type(obj), "__slots__", ()) or ():
            if isinstance(slot, str) and hasattr(obj, slot):
                yield f"{path}.{slot}", getattr(obj, slot)


def find_culprit(
    state: Mapping[str, Any], exc: BaseException, pickles: Callable[[Any], BaseException | None]
) -> tuple[str, str, Any, BaseException]:
    """Walk down from the first variable that ``pickles`` (its error, or None) refuses to the deepest
    object that fails by itself, or to the external resource (:mod:`.resources`) it holds:
    (variable, path, object, its error)."""
    for name, value in state.items():
        error = pickles(value)
        if error is None:
            continue
        path, obj = name, value
        for _ in range(_MAX_PATH_DEPTH):
            if isinstance(error, ExternalResource) and error.obj is obj:
                break  # the resource itself: what is inside it is its own business
            for child_path, child in _children(path, obj):
                child_error = pickles(child)
                if child_error is not None:
                    path, obj, error = child_path, child, child_error
                    break
            else:
                break
        return name, path, obj, error
    # Each variable pickles alone but not together (rare: e.g. recursion limits on the joint graph).
    return ", ".join(state), ", ".join(state), None, exc
