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

Large contiguous buffers (numpy arrays, ``bytes``, ``bytearray``, ``memoryview``, ``array.array``,
``PickleBuffer``) can go out of band: :func:`encode_state` returns the stream and memoryviews of the
buffers, without copying them, for the store to write straight to disk (``bytes`` and ``bytearray``
need a trick, see :mod:`.buffers`). On failure the error names the variable and the path to the
offending object; an object that is a view of something outside the process (a file open for
writing, a writable memory map, a socket, ...: :mod:`.resources`) is refused by name.
"""

from __future__ import annotations

import _thread
import array
import contextvars
import copyreg
import functools
import io
import pickle
import sys
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import cloudpickle
import dill
import xxhash
from cloudpickle import cloudpickle as _cp

from resumable_magic.errors import ExternalResourceError, NotSerializableError
from resumable_magic.state import buffers as _buffers
from resumable_magic.state import tensors as _tensors
from resumable_magic.state.byvalue import (
    _create_type_or_live,
    _make_function,
    _set_function_state,
    module_of_namespace,
    reduce_class,
)
from resumable_magic.state.byvalue import _make_class as _make_class  # named by checkpoints written before
from resumable_magic.state.byvalue import _set_class_state as _set_class_state  # byvalue.py existed
from resumable_magic.state.culprit import find_culprit
from resumable_magic.state.files import reduce_file
from resumable_magic.state.resources import ExternalResource, Scan, check_for, reduce_memmap

__all__ = [
    "OUT_OF_BAND_MIN",
    "PROTOCOL",
    "EncodedState",
    "buffer_digest",
    "buffer_kinds",
    "check_state",
    "decode_state",
    "dumps_state",
    "encode_state",
    "loads_state",
]

PROTOCOL = 5
OUT_OF_BAND_MIN = 64 * 1024
"""Contiguous buffers at least this large go out of band; smaller ones stay in the stream."""

# Types that neither the C pickler nor cloudpickle handle and dill does (an open file: dill reopens it,
# where cloudpickle would turn a readable text file into a StringIO of its content). Dead weakrefs too.
_FILES = (io.TextIOWrapper, io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.FileIO)
_DILL_ONLY = (
    _thread.LockType,
    *_FILES,
    functools._lru_cache_wrapper,
    super,
    type(dict.__dict__["fromkeys"]),  # classmethod_descriptor
    contextvars.Context,
)
_PLAIN = object()  # _classify's answer for a type the C pickler reduces by itself


class _DillPickler(dill.Pickler):
    """dill, refusing what :mod:`.resources` refuses in the objects it pickles too."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, PROTOCOL)
        self._scan = Scan()

    def reducer_override(self, obj: Any) -> Any:
        check = check_for(type(obj))
        if check is not None:
            check(obj, self._scan)
        return NotImplemented


def _reduce_by_dill(obj: Any) -> Any:
    file = io.BytesIO()
    _DillPickler(file).dump(obj)
    return _from_dill, (file.getvalue(),)


def _reduce_file(handle: Any) -> Any:
    # A file open for writing was refused before (resources.py); one open for reading is reopened at
    # its position (files.py); the rest (closed, standard streams, no path) as dill does.
    reduced = reduce_file(handle)
    return reduced if reduced is not None else _reduce_by_dill(handle)


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
    **dict.fromkeys(_FILES, _reduce_file),
    _thread.RLock: _reduce_rlock,
    weakref.ReferenceType: _reduce_weakref,
    memoryview: _buffers.reduce_memoryview,  # cloudpickle's turns a memoryview into bytes
    array.array: _buffers.reduce_array,
}


@dataclass(frozen=True)
class EncodedState:
    """The pickle stream and, in order, the out-of-band buffers it refers to.

    ``buffers`` are read-only views of the live objects' memory (no copy): write them out before the
    objects change.
    """

    stream: bytes
    buffers: list[memoryview] = field(default_factory=list)
    devices: tuple[str, ...] = ()  # where its PyTorch tensors live, besides the CPU ("cuda:0", ...)

    @property
    def nbytes(self) -> int:
        return len(self.stream) + sum(buffer.nbytes for buffer in self.buffers)


def encode_state(state: Mapping[str, Any], *, out_of_band_min: int = OUT_OF_BAND_MIN) -> EncodedState:
    """Pickle ``state`` (name -> value) as one object graph, large buffers out of band.

    Contiguous buffers of at least ``out_of_band_min`` bytes that their objects offer to pickle
    protocol 5 (numpy arrays of non-object dtype, ``memoryview``, ``array.array``, ``PickleBuffer``),
    and ``bytes`` and ``bytearray`` objects of at least ``max(out_of_band_min, 64 KiB)``, are returned
    as memoryviews in ``buffers`` and are not copied; the rest stays in ``stream``. Raises
    NotSerializableError naming the culprit, ExternalResourceError (a subclass) for a file open for
    writing, a writable memory map, a socket, ... (see :mod:`.resources`).
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

    if "torch" not in sys.modules:
        return EncodedState(_encode(state, take, buffers, out_of_band_min), buffers)
    _tensors.begin_pass()
    stream = _encode(state, take, buffers, out_of_band_min)
    return EncodedState(stream, buffers, _tensors.end_pass())


def decode_state(
    stream: bytes | bytearray | memoryview, buffers: Iterable[Any] = (), map_location: str | None = None
) -> dict[str, Any]:
    """Unpickle what :func:`encode_state` wrote, given its buffers in order.

    Pass writable buffers (a ``bytearray``, an anonymous ``mmap`` filled with ``readinto``) so that the
    restored arrays are writable without a copy; a read-only buffer (``bytes``) is copied once. The
    first buffers, which :func:`buffer_kinds` names, become ``bytes`` and ``bytearray`` objects of the
    state: pass those objects (the store reads them as such) and they are used as they are.

    Classes that were defined in ``__main__`` are stored by value; where ``__main__`` has a class of the
    same name now (the notebook re-ran its defining cell), restored instances use that live class, so
    ``isinstance`` holds. PyTorch tensors go back to the device they were on, or all to
    ``map_location`` (``"cpu"``) when given.
    """
    kinds = buffer_kinds(stream)
    ready = [_buffers.as_kind(b, kinds[i] if i < len(kinds) else None) for i, b in enumerate(buffers)]
    with _tensors.mapped_to(map_location):
        return _LiveClassUnpickler(io.BytesIO(stream), buffers=ready).load()


def check_state(state: Mapping[str, Any]) -> None:
    """Raise what :func:`encode_state` would raise for ``state`` (ExternalResourceError,
    NotSerializableError), keeping nothing: large buffers are neither copied nor kept. For variables
    a run did not restore from its checkpoint (named since it was written), before its loop resumes."""
    state = dict(state)
    error = _pickles(state, robust=False)
    if error is not None and _pickles(state, robust=True) is not None:
        _raise_culprit(state, error)


def dumps_state(state: Mapping[str, Any]) -> bytes:
    """Pickle ``state`` (name -> value) as one object graph, all in band; raise NotSerializableError."""
    return _encode(state, None, None, None)


def loads_state(data: bytes) -> dict[str, Any]:
    """Unpickle what :func:`dumps_state` wrote (also the dill streams of earlier versions)."""
    return decode_state(data)


buffer_kinds = _buffers.buffer_kinds


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
        self.scan = Scan()
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
        check = check_for(cls)  # a file open for writing, a socket, ...: raises ExternalResource
        if check is not None:
            check(obj, self.scan)
        reducer = _REDUCERS.get(cls)
        if reducer is None and cls.__module__ == "numpy" and cls.__name__ in ("ndarray", "memmap"):
            # numpy is not imported here until it is in use
            reducer = _REDUCERS[cls] = _reduce_ndarray if cls.__name__ == "ndarray" else reduce_memmap
        elif reducer is None and cls.__module__.startswith("torch"):  # a storage: see tensors.py
            reducer = _tensors.reducer_for(cls)
            if reducer is not None:
                _REDUCERS[cls] = reducer
        if reducer is not None:
            return reducer(obj)
        if cls is types.FunctionType:
            return self._reduce_function(obj)
        if issubclass(cls, type):
            return reduce_class(obj)
        if self.robust:
            return _reduce_or_dill(obj)
        return _PLAIN if check is None else NotImplemented  # checked per object, never cached as plain

    def _reduce_function(self, func: types.FunctionType) -> Any:
        if _cp._should_pickle_by_reference(func):
            return NotImplemented
        module = module_of_namespace(func.__globals__)
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
    out_of_band_min: int | None,
) -> bytes:
    state = dict(state)
    error: BaseException | None = None
    for robust in (False, True):
        try:
            return _dump(state, buffer_callback, buffers, robust, out_of_band_min)
        except Exception as exc:
            error = exc
    assert error is not None
    _raise_culprit(state, error)


def _raise_culprit(state: dict[str, Any], error: BaseException) -> NoReturn:
    name, path, culprit, culprit_error = find_culprit(state, error, _pickles)
    if isinstance(culprit_error, ExternalResource):
        found = culprit_error
        raise ExternalResourceError(name, path, found.resource, found.consequence, found.remedy) from None
    reason = f"{type(culprit_error).__name__}: {culprit_error}"
    raise NotSerializableError(
        name, path, f"a {type(culprit).__name__}: {reason}" if culprit is not None else reason
    ) from None


def _dump(
    state: dict[str, Any],
    buffer_callback: Callable[[pickle.PickleBuffer], Any] | None,
    buffers: list[memoryview] | None,
    robust: bool,
    out_of_band_min: int | None,
) -> bytes:
    """One pickling of ``state``; two where large bytes/bytearray objects go out of band (see
    :mod:`.buffers`): the first pass sets them aside, the second writes memo references to them."""
    if buffers is None or out_of_band_min is None:
        file = io.BytesIO()
        _run(file, state, buffer_callback, buffers, robust)
        return file.getvalue()
    sink = _buffers.Sink(out_of_band_min)
    _run(sink, state, buffer_callback, buffers, robust)
    if not sink.set_aside:
        return sink.getvalue()
    seeded = sink.state_objects()
    file = io.BytesIO()
    _run(file, state, buffer_callback, buffers, robust, seeded)
    buffers[:0] = [memoryview(obj).toreadonly() for obj in seeded]  # the prefix's buffers come first
    main = file.getbuffer()
    assert bytes(main[:2]) == b"\x80\x05"
    return _buffers.seeded_prefix(seeded) + main[2:]


def _run(
    file: Any,
    state: dict[str, Any],
    buffer_callback: Callable[[pickle.PickleBuffer], Any] | None,
    buffers: list[memoryview] | None,
    robust: bool,
    seeded: list[Any] = (),  # type: ignore[assignment]
) -> None:
    if buffers:
        buffers.clear()
    pickler = _StatePickler(file, buffer_callback, robust)
    if seeded:  # written as references to memo slots 0, 1, ... (the stream's prefix fills them)
        pickler.memo = {id(obj): (index, obj) for index, obj in enumerate(seeded)}
    try:
        pickler.dump(state)
    finally:
        # The memo holds every object and temporary it saw; the pickler lives in a reference cycle
        # (its reducer_override closure), so free them now rather than at the next collection.
        pickler.clear_memo()


def _reduce_or_dill(obj: Any) -> Any:
    """The second pass: the object's own reduction if it works, else dill's pickle of it."""
    reducer = copyreg.dispatch_table.get(type(obj))
    try:
        return reducer(obj) if reducer is not None else obj.__reduce_ex__(PROTOCOL)
    except Exception:
        return _reduce_by_dill(obj)


# -- reconstructors (referenced by name from the stream: keep their names) -----------------------------


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


# -- naming the culprit --------------------------------------------------------------------------


class _NullFile:
    def write(self, data: Any) -> int:
        return len(data)


def _pickles(obj: Any, robust: bool = True) -> BaseException | None:
    pickler = _StatePickler(_NullFile(), lambda buffer: False, robust=robust)
    try:  # buffers out of band and discarded: no copy of large arrays while searching
        pickler.dump(obj)
    except Exception as exc:
        return exc
    finally:
        pickler.clear_memo()
    return None
