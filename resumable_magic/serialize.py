"""Named state <-> bytes, with dill's coverage: notebook-defined functions, classes and lambdas by value.

All named variables are pickled as ONE object graph, so objects shared between variables stay shared
after a restore. On failure the error names the variable and the path to the offending object.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import dill
import dill._dill as _dill_internals

from .errors import NotSerializableError

PROTOCOL = 5
_MAX_PATH_DEPTH = 12


def dumps_state(state: Mapping[str, Any]) -> bytes:
    """Pickle ``state`` (name -> value) as one object graph; raise NotSerializableError naming the culprit."""
    try:
        return dill.dumps(dict(state), protocol=PROTOCOL)
    except Exception as exc:
        name, path, reason = _find_culprit(state, exc)
        raise NotSerializableError(name, path, reason) from None


def loads_state(data: bytes) -> dict[str, Any]:
    """Unpickle what :func:`dumps_state` wrote.

    Classes that were defined in ``__main__`` are stored by value; where ``__main__`` has a class of the
    same name now (the notebook re-ran its defining cell), restored instances use that live class, so
    ``isinstance`` holds.
    """
    return _LiveClassUnpickler(io.BytesIO(data)).load()


class _LiveClassUnpickler(dill.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if module == "dill._dill" and name == "_create_type":
            return _create_type_or_live
        return found


def _create_type_or_live(*args: Any) -> type:
    cls = _dill_internals._create_type(*args)
    if cls.__module__ == "__main__":
        live = getattr(sys.modules.get("__main__"), cls.__qualname__, None)
        if isinstance(live, type) and live.__module__ == "__main__":
            return live
    return cls


# -- naming the culprit --------------------------------------------------------------------------


def _pickles(obj: Any) -> BaseException | None:
    try:
        dill.dumps(obj, protocol=PROTOCOL)
    except Exception as exc:
        return exc
    return None


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


def _find_culprit(state: Mapping[str, Any], exc: BaseException) -> tuple[str, str, str]:
    """Walk down from the first unpicklable variable to the deepest object that fails by itself."""
    for name, value in state.items():
        error = _pickles(value)
        if error is None:
            continue
        path, obj = name, value
        for _ in range(_MAX_PATH_DEPTH):
            for child_path, child in _children(path, obj):
                child_error = _pickles(child)
                if child_error is not None:
                    path, obj, error = child_path, child, child_error
                    break
            else:
                break
        return name, path, f"a {type(obj).__name__}: {type(error).__name__}: {error}"
    # Each variable pickles alone but not together (rare: e.g. recursion limits on the joint graph).
    return ", ".join(state), ", ".join(state), f"{type(exc).__name__}: {exc}"
