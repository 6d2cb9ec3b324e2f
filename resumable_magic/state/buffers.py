"""``bytes``, ``bytearray``, ``memoryview`` and ``array.array`` out of band, as numpy arrays go.

The C pickler writes ``bytes`` and ``bytearray`` itself, in band, without asking ``reducer_override``:
a 2 GiB bytearray would be copied into the stream (2 GiB more memory while checkpointing, 2 GiB more
while restoring, and rewritten at every checkpoint because the stream changes). So the serializer
pickles in two passes when it must:

1. The pickler writes to a :class:`Sink`. For a large payload (>= 64 KiB) the C pickler flushes the
   opcode and its length, then hands the object itself to ``write``: a ``bytes`` after ``BINBYTES``,
   a ``bytearray`` after ``BYTEARRAY8``. The sink sets such objects aside instead of copying them.
   If it set none aside (the usual case), what it holds is the stream: one pass, as before.
2. Otherwise the objects that belong to the state (:meth:`Sink.state_objects`: referenced from
   somewhere other than the sink, unlike a reducer's temporary) are put in a second pickler's memo
   before it runs, so it writes each as a memo reference, and the stream begins with a prefix that
   fills those memo slots from the first out-of-band buffers: ``NEXT_BUFFER [READONLY_BUFFER]
   MEMOIZE POP`` per object (``READONLY_BUFFER``: a ``bytes``). The stream stays a pickle.

The buffers are memoryviews of the objects themselves: written from their memory, no copy. On restore
the store reads those blobs straight into a ``bytes`` or a ``bytearray`` (:func:`buffer_kinds` says
which), so neither is copied; objects shared between variables stay shared (one memo slot each).

A ``memoryview`` is restored as a view of its restored exporter (``bytes``, ``bytearray``,
``array.array``, a numpy array) where it views one that the state holds, so that writes through it
still reach that object; of anything else, as a view of a copy of its content.
"""

from __future__ import annotations

import array
import ctypes
import io
import pickle
import sys
from typing import Any

__all__ = ["Sink", "buffer_address", "buffer_kinds", "reduce_array", "reduce_memoryview", "seeded_prefix"]

_FRAME_SIZE_TARGET = 64 * 1024  # the C pickler writes payloads from this size straight to the file
_PROTO_5 = b"\x80\x05"
_SEEDED = {b"\x97\x94\x30": "bytearray", b"\x97\x98\x94\x30": "bytes"}  # NEXT_BUFFER [READONLY] MEMOIZE POP


class Sink:
    """The first pass's file: a BytesIO that sets large ``bytes``/``bytearray`` payloads aside."""

    def __init__(self, minimum: int) -> None:
        self.file = io.BytesIO()
        self.minimum = max(minimum, _FRAME_SIZE_TARGET)
        self.set_aside: list[Any] = []
        self._tail = b""  # the end of the last write: the payload's opcode and length

    def write(self, data: Any) -> int:
        kind = type(data)
        if kind is bytes or kind is bytearray:
            if len(data) >= self.minimum and self._announces(data):
                self.set_aside.append(data)
                self._tail = b""
                return len(data)
            self._tail = bytes(data[-9:])
        else:  # a PickleBuffer written in band: never announced by the opcodes checked
            self._tail = b""
        return self.file.write(data)

    def _announces(self, data: bytes | bytearray) -> bool:
        """True when the opcode just written says ``data`` is the object itself: BYTEARRAY8 for a
        bytearray, BINBYTES or BINBYTES8 for bytes (not BINUNICODE: a str's UTF-8, a temporary)."""
        size = len(data)
        if type(data) is bytearray:
            return self._tail == b"\x96" + size.to_bytes(8, "little")
        if size < 1 << 32 and self._tail[-5:] == b"B" + size.to_bytes(4, "little"):
            return True
        return self._tail == b"\x8e" + size.to_bytes(8, "little")

    def getvalue(self) -> bytes:
        return self.file.getvalue()

    def state_objects(self) -> list[Any]:
        """The objects set aside that something besides this sink holds: the state's own, not a
        reducer's temporary (``tobytes()`` of a non-contiguous array, dill's bytes). Call it once the
        pickler's memo is cleared."""
        self.set_aside.append(object())  # the count of an object only this list holds
        counts = [sys.getrefcount(obj) for obj in self.set_aside]
        alone = counts.pop()
        self.set_aside.pop()
        found: dict[int, Any] = {}
        for obj, count in zip(self.set_aside, counts, strict=True):
            if count > alone:
                found.setdefault(id(obj), obj)
        self.set_aside.clear()
        return list(found.values())


def seeded_prefix(objects: list[Any]) -> bytes:
    """The stream's beginning that puts ``objects`` (bytes, bytearray) in memo slots 0, 1, ..."""
    codes = {kind: code for code, kind in _SEEDED.items()}
    return _PROTO_5 + b"".join(codes["bytes" if type(obj) is bytes else "bytearray"] for obj in objects)


def buffer_kinds(stream: Any) -> list[str]:
    """What the first out-of-band buffers of ``stream`` must be restored as (``"bytes"`` or
    ``"bytearray"``), in order, read from its prefix; the buffers after them can be any writable
    buffer. Empty for a stream without the prefix (every stream of earlier versions)."""
    kinds: list[str] = []
    with memoryview(stream) as view:
        if bytes(view[:2]) != _PROTO_5:
            return kinds
        at = 2
        while True:
            head = bytes(view[at : at + 4])
            kind = _SEEDED.get(head[:3]) or _SEEDED.get(head)
            if kind is None:
                return kinds
            kinds.append(kind)
            at += 3 if kind == "bytearray" else 4


def as_kind(buffer: Any, kind: str | None) -> Any:
    """``buffer`` as the object a seeded slot needs (a copy only where it is not that already)."""
    if kind == "bytes":
        return buffer if type(buffer) is bytes else bytes(buffer)
    if kind == "bytearray":
        return buffer if type(buffer) is bytearray else bytearray(buffer)
    return buffer if not memoryview(buffer).readonly else bytearray(buffer)


# -- the address of a buffer ------------------------------------------------------------------------


class _PyBuffer(ctypes.Structure):
    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


_PyBUF_RECORDS_RO = 0x1C  # strides and format, read-only allowed
_api: list[Any] = []


def buffer_address(obj: Any) -> int:
    """The address of the first element of ``obj``'s buffer (read-only buffers too: ctypes'
    ``from_buffer`` wants a writable one). CPython's buffer API, through ``ctypes.pythonapi``."""
    if not _api:
        get, release = ctypes.pythonapi.PyObject_GetBuffer, ctypes.pythonapi.PyBuffer_Release
        get.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
        release.argtypes = (ctypes.POINTER(_PyBuffer),)
        _api[:] = [get, release]
    get, release = _api
    view = _PyBuffer()
    get(obj, ctypes.byref(view), _PyBUF_RECORDS_RO)  # raises what the exporter raises
    try:
        return int(view.buf or 0)
    finally:
        release(ctypes.byref(view))


# -- memoryview and array.array -------------------------------------------------------------------


def _is_exporter_in_state(obj: Any) -> bool:
    if type(obj) in (bytes, bytearray, array.array):
        return True
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(obj, numpy.ndarray)


def reduce_memoryview(view: memoryview) -> Any:
    """A view of its exporter where the pickle holds the exporter (writes through the restored view
    reach the restored exporter, as they did), else a view of a copy of its content."""
    exporter = view.obj  # ValueError for a released view: named by the culprit search
    readonly = view.readonly
    if _is_exporter_in_state(exporter):
        layout = _layout_within(view, memoryview(exporter))
        if layout is not False:
            return _memoryview_of, (exporter, layout, readonly)
        if not (readonly and memoryview(exporter).readonly):
            raise TypeError(
                f"a memoryview of part of a {type(exporter).__name__} with format {view.format!r}, shape "
                f"{view.shape} and strides {view.strides} cannot be restored as a view of it"
            )
    data = pickle.PickleBuffer(view) if view.contiguous else view.tobytes()
    return _memoryview_copy, (data, view.format, view.shape, readonly)


Layout = tuple[int, int, str, tuple[int, ...], int]  # offset, length, format, shape, step


def _layout_within(view: memoryview, whole: memoryview) -> Layout | bool | None:
    """How to cut ``view`` out of ``whole`` again: None (it is all of it), (offset, length, format,
    shape, step), or False (it cannot be: not contiguous in a way memoryview slicing can redo)."""
    try:
        offset = buffer_address(view) - buffer_address(whole) if view.nbytes else 0
    except (BufferError, TypeError, ValueError):
        return False
    same = (view.format, view.shape, view.strides) == (whole.format, whole.shape, whole.strides)
    if offset == 0 and same and view.nbytes == whole.nbytes:
        return None
    if not whole.c_contiguous or offset < 0:
        return False
    shape, strides = tuple(view.shape or ()), tuple(view.strides or ())
    if view.c_contiguous:
        layout: Layout = (offset, view.nbytes, view.format, shape, 1)
    elif view.ndim == 1 and strides[0] > 0 and strides[0] % view.itemsize == 0:
        span = (shape[0] - 1) * strides[0] + view.itemsize
        layout = (offset, span, view.format, shape, strides[0] // view.itemsize)
    else:
        return False
    try:  # what the restore will do, done now: a format memoryview cannot cast to is found here
        _cut(whole, layout)
    except (TypeError, ValueError):
        return False
    return layout


def _cut(whole: memoryview, layout: Layout) -> memoryview:
    offset, length, fmt, shape, step = layout
    part: Any = whole.cast("B")[offset : offset + length]  # Any: cast() takes any format at run time
    if step == 1:
        return part.cast(fmt, shape) if (fmt, shape) != ("B", (length,)) else part
    return part.cast(fmt)[::step]


def _memoryview_of(exporter: Any, layout: Any, readonly: bool) -> memoryview:
    view = memoryview(exporter)
    if layout is not None:
        offset, length, fmt, shape, step = layout
        view = _cut(view, (offset, length, fmt, tuple(shape), step))
    return view.toreadonly() if readonly and not view.readonly else view


def _memoryview_copy(data: Any, fmt: str, shape: tuple[int, ...], readonly: bool) -> Any:
    if not readonly and memoryview(data).readonly:
        data = bytearray(data)
    view: Any = memoryview(data)  # Any: cast() takes any format at run time
    if (view.format, view.shape) != (fmt, tuple(shape)):
        view = view.cast("B").cast(fmt, shape)
    return view.toreadonly() if readonly and not view.readonly else view


def reduce_array(values: array.array[Any]) -> Any:
    """An ``array.array`` of 64 KiB or more: its memory out of band (copied once on restore: an
    array.array cannot adopt a buffer)."""
    if values.itemsize * len(values) < _FRAME_SIZE_TARGET:
        return NotImplemented
    return _array_from, (values.typecode, pickle.PickleBuffer(values))


def _array_from(typecode: str, data: Any) -> array.array[Any]:
    values = array.array(typecode)
    values.frombytes(data)
    return values
