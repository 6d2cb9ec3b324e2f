"""Comparable fingerprints of what a loop depends on: the values a cell reads, and loop items.

A resume (or a replay) is refused when a value the cell reads from outside changed since the
checkpoint was written, so that a result is never silently one of other inputs. Fingerprinted:
numbers, strings, bytes, ``None``; lists, tuples, sets and dicts of those (nested, up to
:data:`MAX_ITEMS` items in all, sets in sorted order, since their order varies between processes);
numpy arrays (by shape, dtype and a digest of their bytes). Other objects (models, open files,
modules) are not: their identity says nothing and their state is theirs.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

import xxhash

__all__ = ["MAX_ITEMS", "fingerprint_inputs", "fingerprint_item"]

MAX_ITEMS = 100_000  # elements of a container input, all levels together
_SHOWN = 200  # longest text shown as is in messages; longer values are summarised with a digest
_SIMPLE = (bool, int, float, complex, str, bytes, type(None))
_CONTAINERS = (list, tuple, set, frozenset, dict)


class _TooBig(Exception):
    pass


def _canonical(value: Any, budget: list[int], depth: int = 0) -> str | None:
    """Text that is equal exactly when the values are (sets sorted); None for what is not plain data."""
    if isinstance(value, _SIMPLE):
        return repr(value)
    if not isinstance(value, _CONTAINERS) or depth > 8:
        return None
    budget[0] -= len(value)
    if budget[0] < 0:
        raise _TooBig
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            k, v = _canonical(key, budget, depth + 1), _canonical(item, budget, depth + 1)
            if k is None or v is None:
                return None
            parts.append(f"{k}: {v}")
        return "{" + ", ".join(parts) + "}"
    texts = []
    for item in value:
        text = _canonical(item, budget, depth + 1)
        if text is None:
            return None
        texts.append(text)
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}({{{', '.join(sorted(texts))}}})"
    if isinstance(value, tuple):
        return "(" + ", ".join(texts) + ("," if len(texts) == 1 else "") + ")"
    return "[" + ", ".join(texts) + "]"


def _array(value: Any) -> str | None:
    if type(value).__module__ != "numpy" or type(value).__name__ != "ndarray" or value.dtype.hasobject:
        return None
    data = value if value.flags.c_contiguous else value.copy(order="C")
    return f"array{tuple(value.shape)} {value.dtype}, digest {xxhash.xxh3_128_hexdigest(data.data)[:16]}"


def _fingerprint(value: Any) -> str | None:
    try:
        text = _canonical(value, [MAX_ITEMS])
    except (_TooBig, RecursionError):
        return None
    if text is None:
        return _array(value)
    if len(text) <= _SHOWN:
        return text
    size = f"{len(value)} items, " if isinstance(value, _CONTAINERS) else ""
    return f"{type(value).__name__} of {size}digest {xxhash.xxh3_128_hexdigest(text.encode())[:16]}"


def fingerprint_inputs(values: Mapping[str, Any]) -> dict[str, str]:
    """Comparable text for each value among ``values`` that is plain data (see the module doc)."""
    found = {}
    for name, value in values.items():
        text = _fingerprint(value)
        if text is not None:
            found[name] = text
    return found


def fingerprint_item(item: Any) -> str:
    """A digest of a loop item, to check that a resumed loop yields the same item at the checkpoint."""
    text = _fingerprint(item)
    if text is not None:
        return xxhash.xxh3_128_hexdigest(text.encode())
    try:
        return xxhash.xxh3_128_hexdigest(pickle.dumps(item, protocol=5))
    except Exception:
        return f"type:{type(item).__module__}.{type(item).__qualname__}"
