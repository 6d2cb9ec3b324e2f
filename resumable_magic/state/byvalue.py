"""Notebook functions and classes by value, as cloudpickle pickles them, with two differences.

As dill does, a function's globals are its module's namespace *by reference*: a restored notebook
function sees the notebook's live globals, and no global is copied into the checkpoint. A class defined
in ``__main__`` restores as the class ``__main__`` now defines under that name, where there is one
(the notebook re-ran its defining cell): ``isinstance`` holds and its methods are the new ones.

The reconstructors here are named by streams: keep their names (``serialize`` re-exports them for the
checkpoints that name them there).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

import dill._dill as _dill_internals
from cloudpickle import cloudpickle as _cp

__all__ = ["main_namespace", "module_of_namespace", "reduce_class"]


def module_of_namespace(namespace: dict[str, Any]) -> str | None:
    """The name of the importable module (``__main__`` included) whose ``__dict__`` is ``namespace``."""
    name = namespace.get("__name__")
    if name == "__main__":  # also IPython's user namespace where it is not sys.modules["__main__"]
        return name
    module = sys.modules.get(name) if isinstance(name, str) else None
    if module is None or getattr(module, "__dict__", None) is not namespace:
        return None
    return name if getattr(module, "__spec__", None) is not None else None


def main_namespace() -> dict[str, Any]:
    """The notebook's namespace: IPython's user namespace when a shell runs (an in-process or embedded
    shell's is not ``sys.modules["__main__"]``), else ``__main__``'s. IPython is never imported here."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    namespace = getattr(shell, "user_ns", None)
    return namespace if isinstance(namespace, dict) else sys.modules["__main__"].__dict__


def reduce_class(cls: type) -> Any:
    reduced = _cp._class_reduce(cls)
    if reduced is NotImplemented or len(reduced) != 6:
        return reduced  # by reference, or one of the builtin singletons' types
    make, args, state, _, _, _ = reduced
    return (_make_class, (cls.__module__, cls.__qualname__, make, args), state, None, None, _set_class_state)


def _make_function(code: types.CodeType, module: str, closure: tuple[Any, ...] | None) -> types.FunctionType:
    if module == "__main__":
        namespace = main_namespace()
    else:
        namespace = (sys.modules.get(module) or importlib.import_module(module)).__dict__
    return types.FunctionType(code, namespace, None, None, closure)


def _set_function_state(func: types.FunctionType, state: tuple[dict[str, Any], dict[str, Any]]) -> None:
    attributes, slotstate = state
    func.__dict__.update(attributes)
    closure = slotstate.pop("__closure__")
    slotstate.pop("_cloudpickle_submodules", None)  # imported while loading; only held for that
    if closure is not None:
        for cell, restored in zip(func.__closure__ or (), closure, strict=True):
            with contextlib.suppress(ValueError):  # an empty cell stays empty
                cell.cell_contents = restored.cell_contents
    for name, value in slotstate.items():
        setattr(func, name, value)


def _live_class(module: str, qualname: str) -> type | None:
    """The class ``__main__`` now defines under ``qualname``, if any."""
    if module != "__main__" or "<locals>" in qualname:
        return None
    first, *rest = qualname.split(".")
    found: Any = main_namespace().get(first)
    for part in rest:
        found = getattr(found, part, None)
    if isinstance(found, type) and found.__module__ == "__main__" and found.__qualname__ == qualname:
        return found
    return None


def _make_class(module: str, qualname: str, make: Callable[..., type], args: tuple[Any, ...]) -> type:
    live = _live_class(module, qualname)
    if live is not None:
        return live
    cls = make(*args)
    if cls.__qualname__ != qualname:
        cls.__qualname__ = qualname
    return cls


def _set_class_state(cls: type, state: Any) -> type:
    if _live_class(cls.__module__, cls.__qualname__) is cls:
        return cls  # the live class stays as the notebook defines it now
    return _cp._class_setstate(cls, state)


def _create_type_or_live(*args: Any) -> type:
    cls = _dill_internals._create_type(*args)
    live = _live_class(cls.__module__, cls.__qualname__)
    return live if live is not None else cls
