"""State the loop changes without naming it: objects the loop reads, digested as it starts and again
after its first checkpoint, so that a change made through a method call (``optimizer.step()``,
``cache.update(...)``) is warned about, not silently lost at the next crash.

The cell's code shows assignments to unnamed variables (``core/cellsplit.unnamed_changes``); what a
method does to its object the code does not show, so the objects themselves are compared: a canonical
digest of each (``state/canonical``), taken twice. Objects without a content identity (open files,
locks) and objects whose digest would take long are passed over.
"""

from __future__ import annotations

import time
import types
from collections.abc import Mapping
from typing import Any

from resumable_magic.errors import ResumableError
from resumable_magic.state.canonical import canonical_digest

__all__ = ["UnnamedWatch", "watchable"]

DIGEST_BUDGET = 0.5  # seconds spent digesting at the loop's start, at most; the rest is passed over
MAX_ITEMS = 100_000  # a container of more Python objects than this is passed over (digesting is slow)


def watchable(value: Any) -> bool:
    """Values whose content may change: not modules, functions, classes or other code."""
    return not isinstance(
        value,
        (
            types.ModuleType,
            types.FunctionType,
            types.BuiltinFunctionType,
            types.MethodType,
            type,
            int,
            float,
            complex,
            str,
            bytes,
            bool,
            type(None),
        ),
    )


class UnnamedWatch:
    """The digests of the unnamed objects a loop reads, taken as it starts (see the module doc)."""

    def __init__(self, values: Mapping[str, Any], budget: float = DIGEST_BUDGET) -> None:
        self._watched: dict[str, tuple[Any, str]] = {}
        deadline = time.monotonic() + budget
        for name in sorted(values):
            if time.monotonic() > deadline:
                break
            digest = _digest(values[name], name)
            if digest is not None:
                self._watched[name] = (values[name], digest)

    def changed(self, namespace: Mapping[str, Any]) -> list[str]:
        """Names still bound to the object seen at the start whose content changed since; the watch
        ends here (it is asked once)."""
        found = []
        for name, (value, before) in self._watched.items():
            if namespace.get(name) is value and _digest(value, name) != before:
                found.append(name)
        self._watched.clear()
        return found


def _digest(value: Any, name: str) -> str | None:
    if isinstance(value, (list, tuple, dict, set, frozenset)) and len(value) > MAX_ITEMS:
        return None
    try:
        return canonical_digest(value, name)
    except (ResumableError, RecursionError, TypeError, ValueError):
        return None  # no content identity (a file, a lock): nothing to compare
