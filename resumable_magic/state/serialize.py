"""Named state <-> a pickle stream plus out-of-band buffers.

All named variables are pickled as ONE object graph by ONE C pickler (protocol 5), so objects shared
between variables stay shared after a restore, and containers of many small objects run at the C
pickler's speed. Its ``reducer_override`` sends by value what must go by value:

- functions, lambdas and closures that cannot be imported by name (defined in ``__main__``, in a
  function, in no importable module), with cloudpickle's reducers. As dill does, their globals are the
  defining module's namespace *by reference*: a restored notebook function sees the notebook's live
  globals, and no global is copied into the checkpoint;
- classes defined in ``__main__`` (or in no importable module), also with cloudpickle's reducers. On
  load, where ``__main__`` now has a class of the same qualified name (the notebook re-ran its
  defining cell), that live class is used, so ``isinstance`` holds and its methods are the new ones;
- what only dill can pickle (locks, open files, weakrefs, ``super``, ``lru_cache`` wrappers, ...):
  that one object is pickled by dill and embedded. If the fast pass still fails, a second pass asks
  every object's own reduction and hands what fails to dill.

Large contiguous buffers (numpy arrays, ``PickleBuffer``) can go out of band: :func:`encode_state`
returns the stream and memoryviews of the buffers, without copying them, for the store to write
straight to disk. On failure the error names the variable and the path to the offending object.
"""

from __future__ import annotations

import _thread
import contextlib
import contextvars
import copyreg
import functools
import importlib
import io
import pickle
import sys
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import dill
import dill._dill as _dill_internals
import xxhash
from cloudpickle import cloudpickle as _cp

from resumable_magic.errors import NotSerializableError

__all__ = [
    "OUT_OF_BAND_MIN",
    "PROTOCOL",
    "EncodedState",
    "buffer_digest",
    "decode_state",
    "dumps_state",
    "encode_state",
    "loads_state",
]

PROTOCOL = 5
OUT_OF_BAND_MIN = 64 * 1024
"""Contiguous buffers at least this large go out of band; smaller ones stay in the stream."""
_MAX_PATH_DEPTH = 12

# Types that neither the C pickler nor cloudpickle handle and dill does (an open file: dill reopens it,
# where cloudpickle would turn a readable text file into a StringIO of its content). Dead weakrefs too.
_DILL_ONLY = (
    _thread.LockType,
    io.TextIOWrapper,
    io.BufferedReader,
    io.BufferedWriter,
    io.BufferedRandom,
    io.FileIO,
    functools._lru_cache_wrapper,
    super,
    type(dict.__dict__["fromkeys"]),  # classmethod_descriptor
    contextvars.Context,
)
_PLAIN = object()  # _classify's answer for a type the C pickler reduces by itself


def _reduce_by_dill(obj: Any) -> Any:
    return _from_dill, (dill.dumps(obj, protocol=PROTOCOL),)


def _reduce_rlock(lock: Any) -> Any:
    # A new, unlocked RLock: its owner thread does not exist after a restore (and dill's copy of an
    # unlocked RLock cannot be acquired: it restores thread 0 as its owner).
    return _thread.RLock, ()


def _reduce_weakref(ref: weakref.ref) -> Any:
    referent = ref()
    if referent is None:
        return _reduce_by_dill(ref)
    return weakref.ref, (referent,)  # the referent in this graph: shared, and alive if the state holds it


def _reduce_ndarray(array: Any) -> Any:
    """numpy keeps datetime64/timedelta64 arrays in band (their dtype has metadata): send them as int64
    views, so that a DataFrame's time columns go out of band too."""
    if array.dtype.kind not in "mM" or array.nbytes < OUT_OF_BAND_MIN:
        return NotImplemented
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        return NotImplemented
    return _view_as, (array.view(array.dtype.str[0] + "i8"), array.dtype)


# Per-type reducers, consulted in reducer_override rather than through a ``dispatch_table`` attribute:
# the C pickler would look every non-builtin object up in cloudpickle's ChainMap at Python speed.
# cloudpickle's: code, cells, modules, bound methods, properties, mappingproxy, dict views, ...
_REDUCERS: dict[type, Callable[[Any], Any]] = {
    **cloudpickle.Pickler._dispatch_table,
    **dict.fromkeys(_DILL_ONLY, _reduce_by_dill),
    _thread.RLock: _reduce_rlock,
    weakref.ReferenceType: _reduce_weakref,
}


@dataclass(frozen=True)
class EncodedState:
    """The pickle stream and, in order, the out-of-band buffers it refers to.

    ``buffers`` are read-only views of the live objects' memory (no copy): write them out before the
    objects change.
    """

    stream: bytes
    buffers: list[memoryview] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return len(self.stream) + sum(buffer.nbytes for buffer in self.buffers)


def encode_state(state: Mapping[str, Any], *, out_of_band_min: int = OUT_OF_BAND_MIN) -> EncodedState:
    """Pickle ``state`` (name -> value) as one object graph, large buffers out of band.

    Contiguous buffers of at least ``out_of_band_min`` bytes that their objects offer to pickle
    protocol 5 (numpy arrays of non-object dtype, ``PickleBuffer``) are returned as memoryviews in
    ``buffers`` and are not copied; the rest stays in ``stream``. Raises NotSerializableError naming
    the culprit.
    """
    buffers: list[memoryview] = []

    def take(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: in band
            return True
        if raw.nbytes < out_of_band_min:
            return True
        buffers.append(raw.toreadonly())
        return False  # out of band

    stream = _encode(state, take, buffers)
    return EncodedState(stream, buffers)


def decode_state(stream: bytes | bytearray | memoryview, buffers: Iterable[Any] = ()) -> dict[str, Any]:
    """Unpickle what :func:`encode_state` wrote, given its buffers in order.

    Pass writable buffers (a ``bytearray``, an anonymous ``mmap`` filled with ``readinto``) so that the
    restored arrays are writable without a copy; a read-only buffer (``bytes``) is copied once.

    Classes that were defined in ``__main__`` are stored by value; where ``__main__`` has a class of the
    same name now (the notebook re-ran its defining cell), restored instances use that live class, so
    ``isinstance`` holds.
    """
    writable = [buffer if not memoryview(buffer).readonly else bytearray(buffer) for buffer in buffers]
    return _LiveClassUnpickler(io.BytesIO(stream), buffers=writable).load()


def dumps_state(state: Mapping[str, Any]) -> bytes:
    """Pickle ``state`` (name -> value) as one object graph, all in band; raise NotSerializableError."""
    return _encode(state, None, None)


def loads_state(data: bytes) -> dict[str, Any]:
    """Unpickle what :func:`dumps_state` wrote (also the dill streams of earlier versions)."""
    return decode_state(data)


def buffer_digest(buffer: Any) -> str:
    """The store's digest (xxh3-128, hex) of a buffer, read in place: no copy (~28 GiB/s here)."""
    return xxhash.xxh3_128_hexdigest(buffer)


# -- the pickler -----------------------------------------------------------------------------------


class _StatePickler(pickle.Pickler):
    # cloudpickle's function reducers read ``self.globals_ref``; borrowed, not inherited, so that this
    # class has no ``dispatch_table`` attribute (see _REDUCERS).
    _function_getnewargs = cloudpickle.Pickler._function_getnewargs
    _dynamic_function_reduce = cloudpickle.Pickler._dynamic_function_reduce

    def __init__(
        self, file: Any, buffer_callback: Callable[[pickle.PickleBuffer], Any] | None, robust: bool
    ) -> None:
        self.globals_ref: dict[int, dict[str, Any]] = {}
        self.proto = PROTOCOL
        self.robust = robust
        plain: set[type] = set()  # types left to the C pickler's own reduction
        classify = self._classify

        # Called for every object but None, bool, int, float, str, bytes and exact dict, list, tuple,
        # set, frozenset: the common case (a type already seen to need nothing) is one set lookup, in a
        # closure rather than a method (no attribute lookups: ~5% on lists of small instances).
        def reducer_override(obj: Any) -> Any:
            cls = type(obj)
            if cls in plain:
                return NotImplemented
            reduced = classify(obj, cls)
            if reduced is _PLAIN:
                plain.add(cls)
                return NotImplemented
            return reduced

        # Before __init__, which looks it up once; an instance attribute, so that it closes over the caches.
        self.reducer_override = reducer_override  # type: ignore[method-assign]
        super().__init__(file, protocol=PROTOCOL, buffer_callback=buffer_callback)

    def _classify(self, obj: Any, cls: type) -> Any:
        reducer = _REDUCERS.get(cls)
        if reducer is None and cls.__name__ == "ndarray" and cls.__module__ == "numpy":
            reducer = _REDUCERS[cls] = _reduce_ndarray  # numpy is not imported here until it is in use
        if reducer is not None:
            return reducer(obj)
        if cls is types.FunctionType:
            return self._reduce_function(obj)
        if issubclass(cls, type):
            return _reduce_class(obj)
        if self.robust:
            return _reduce_or_dill(obj)
        return _PLAIN

    def _reduce_function(self, func: types.FunctionType) -> Any:
        if _cp._should_pickle_by_reference(func):
            return NotImplemented
        module = _module_of_namespace(func.__globals__)
        if module is None:  # globals of no importable module: the ones it uses, by value
            return self._dynamic_function_reduce(func)
        code, _, _, _, closure = self._function_getnewargs(func)
        state, slotstate = _cp._function_getstate(func)
        del slotstate["__globals__"]
        return (_make_function, (code, module, closure), (state, slotstate), None, None, _set_function_state)


def _encode(
    state: Mapping[str, Any],
    buffer_callback: Callable[[pickle.PickleBuffer], Any] | None,
    buffers: list[memoryview] | None,
) -> bytes:
    state = dict(state)
    error: BaseException | None = None
    for robust in (False, True):
        if buffers:
            buffers.clear()
        file = io.BytesIO()
        pickler = _StatePickler(file, buffer_callback, robust)
        try:
            pickler.dump(state)
        except Exception as exc:
            error = exc
            continue
        finally:
            # The memo holds every object and temporary it saw; the pickler lives in a reference cycle
            # (its reducer_override closure), so free them now rather than at the next collection.
            pickler.clear_memo()
        return file.getvalue()
    assert error is not None
    name, path, reason = _find_culprit(state, error)
    raise NotSerializableError(name, path, reason) from None


def _module_of_namespace(namespace: dict[str, Any]) -> str | None:
    """The name of the importable module (``__main__`` included) whose ``__dict__`` is ``namespace``."""
    name = namespace.get("__name__")
    if name == "__main__":  # also IPython's user namespace where it is not sys.modules["__main__"]
        return name
    module = sys.modules.get(name) if isinstance(name, str) else None
    if module is None or getattr(module, "__dict__", None) is not namespace:
        return None
    return name if getattr(module, "__spec__", None) is not None else None


def _main_namespace() -> dict[str, Any]:
    """The notebook's namespace: IPython's user namespace when a shell runs (an in-process or embedded
    shell's is not ``sys.modules["__main__"]``), else ``__main__``'s. IPython is never imported here."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    namespace = getattr(shell, "user_ns", None)
    return namespace if isinstance(namespace, dict) else sys.modules["__main__"].__dict__


def _reduce_class(cls: type) -> Any:
    reduced = _cp._class_reduce(cls)
    if reduced is NotImplemented or len(reduced) != 6:
        return reduced  # by reference, or one of the builtin singletons' types
    make, args, state, _, _, _ = reduced
    return (_make_class, (cls.__module__, cls.__qualname__, make, args), state, None, None, _set_class_state)


def _reduce_or_dill(obj: Any) -> Any:
    """The second pass: the object's own reduction if it works, else dill's pickle of it."""
    reducer = copyreg.dispatch_table.get(type(obj))
    try:
        return reducer(obj) if reducer is not None else obj.__reduce_ex__(PROTOCOL)
    except Exception:
        return _reduce_by_dill(obj)


# -- reconstructors (referenced by name from the stream: keep their names) -----------------------------


def _make_function(code: types.CodeType, module: str, closure: tuple[Any, ...] | None) -> types.FunctionType:
    if module == "__main__":
        namespace = _main_namespace()
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
    found: Any = _main_namespace().get(first)
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


def _view_as(array: Any, dtype: Any) -> Any:
    return array.view(dtype)


def _from_dill(data: bytes) -> Any:
    return _LiveClassUnpickler(io.BytesIO(data)).load()


# Checkpoints name this module's helpers (``_from_dill``, ``_view_as``, ``_make_class``, ...) by module
# path; before the package had sub-packages this module was ``resumable_magic.serialize``, and the
# checkpoints written then must still load.
_MOVED_MODULES = {"resumable_magic.serialize": __name__}


class _LiveClassUnpickler(dill.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(_MOVED_MODULES.get(module, module), name)
        if module == "dill._dill" and name == "_create_type":
            return _create_type_or_live
        return found


def _create_type_or_live(*args: Any) -> type:
    cls = _dill_internals._create_type(*args)
    live = _live_class(cls.__module__, cls.__qualname__)
    return live if live is not None else cls


# -- naming the culprit --------------------------------------------------------------------------


class _NullFile:
    def write(self, data: Any) -> int:
        return len(data)


def _pickles(obj: Any) -> BaseException | None:
    pickler = _StatePickler(_NullFile(), lambda buffer: False, robust=True)
    try:  # buffers out of band and discarded: no copy of large arrays while searching
        pickler.dump(obj)
    except Exception as exc:
        return exc
    finally:
        pickler.clear_memo()
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
