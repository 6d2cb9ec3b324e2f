"""A canonical digest of a value's content: the same for the same content in every process.

``repr`` and ``pickle`` are not canonical: a large array's or a DataFrame's repr elides the middle (two
different values, one text), a function's repr holds its memory address (another text in each kernel),
and a set pickles in hash order (another stream with each ``PYTHONHASHSEED``). The digest here is taken
over an encoding of the content instead, built for that:

* numbers by value: ``3`` and ``np.int64(3)``, ``0.1`` and ``np.float64(0.1)`` digest the same (a
  ``np.float32`` by the exact value it holds); an int and a float equal in value do not (``3`` vs
  ``3.0``), nor does ``True`` and ``1``. ``-0.0`` and ``0.0`` differ (they behave differently:
  ``1 / x``); every NaN is one value, whatever its sign or payload bits;
* ``str``, ``bytes``, ``bytearray``, ``None``; lists and tuples in order (a list is not a tuple);
  sets, frozensets and dicts in a canonical order: their elements (a dict's keys) sorted by the digest
  of their own encoding, recursively, so neither insertion order nor the hash seed matters
  (an ``OrderedDict`` keeps its order, which its equality compares);
* numpy arrays by dtype, shape and data (C order, native byte order); arrays of objects element by
  element; pandas objects (only when the value is one: pandas is not imported otherwise) by their
  values, dtypes, index and columns;
* functions by their compiled code (bytecode, constants, names, argument names, flags), their defaults
  and the values their closures hold (by this same digest); not by their name, module or line, so the
  same code defined in another kernel digests the same, and a changed body or closure value does not.
  Classes, builtin functions and modules by their qualified name;
* any other object by what pickle would save of it (``__reduce_ex__``: its class by name, and its
  ``__dict__``, ``__slots__`` or ``__getstate__`` state, all encoded as above), so the sets inside an
  object's state are ordered too. Dataclasses, namedtuples, enums, datetimes, paths are objects so.

Refused (:class:`~resumable_magic.errors.NoContentIdentityError`, naming where the value sits): what
pickle cannot save either, which is what has no content besides its identity: generators, open files,
sockets, locks, weak references. Cycles are encoded by their shape (a back reference), so a
self-referencing structure has a digest too.
"""

from __future__ import annotations

import io
import math
import struct
import sys
import types
from collections import OrderedDict
from typing import Any

import xxhash

from resumable_magic.errors import NoContentIdentityError

__all__ = ["CANONICAL_VERSION", "canonical_digest"]

CANONICAL_VERSION = 1  # bump when the encoding changes: fingerprints record it ("c1:...")

_NAN = struct.pack("<d", math.nan)
_REFUSED_TYPES = (
    (types.GeneratorType, "a generator (it yields its values once)"),
    (types.CoroutineType, "a coroutine"),
    (types.AsyncGeneratorType, "an async generator"),
)


class _Refused(Exception):
    """Raised inside the encoder; the path where it happened is added on the way out."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.segments: list[str] = []


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


def _put(h: Any, tag: bytes, data: bytes) -> None:
    h.update(tag + _u64(len(data)))
    h.update(data)


def _int(value: int, h: Any) -> None:
    _put(h, b"i", value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True))


def _float(value: float, h: Any) -> None:
    h.update(b"f" + (_NAN if value != value else struct.pack("<d", value)))


def _complex(value: complex, h: Any) -> None:
    h.update(b"c")
    _float(value.real, h)
    _float(value.imag, h)


def _str(value: str, h: Any) -> None:
    _put(h, b"s", value.encode("utf-8", "surrogatepass"))


_SIMPLE: dict[type, Any] = {
    type(None): lambda value, h: h.update(b"N"),
    bool: lambda value, h: h.update(b"T" if value else b"F"),
    int: _int,
    float: _float,
    complex: _complex,
    str: _str,
    bytes: lambda value, h: _put(h, b"b", value),
    bytearray: lambda value, h: _put(h, b"B", bytes(value)),
}


def _name(h: Any, module: object, qualname: object) -> None:
    _put(h, b"n", f"{module}:{qualname}".encode("utf-8", "surrogatepass"))


def _type_name(t: type) -> str:
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _describe(value: Any) -> str:
    for kind, text in _REFUSED_TYPES:
        if isinstance(value, kind):
            return text
    what = f"a {_type_name(type(value))} object"
    return f"{what} (an open file or stream)" if isinstance(value, io.IOBase) else what


def _short(key: Any) -> str:
    try:
        text = repr(key)
    except Exception:
        text = f"<{_type_name(type(key))}>"
    return text if len(text) <= 40 else text[:37] + "..."


class _Encoder:
    def __init__(self) -> None:
        # Objects being encoded, by id, with their depth: a cycle is encoded as a back reference.
        # They are all alive (referenced by the frames encoding them), so no id is reused meanwhile.
        self.active: dict[int, int] = {}

    def sub(self, value: Any) -> bytes:
        """The digest of one value's encoding (set elements and dict entries are sorted by these)."""
        h = xxhash.xxh3_128()
        self.encode(value, h)
        return h.digest()

    def encode(self, value: Any, h: Any) -> None:
        t = type(value)
        simple = _SIMPLE.get(t)
        if simple is not None:
            simple(value, h)
            return
        np = sys.modules.get("numpy")  # a numpy value means numpy is imported: never import it here
        if np is not None and isinstance(value, np.generic):
            self._numpy_scalar(value, h, np)
            return
        key = id(value)
        if key in self.active:
            h.update(b"@" + _u64(len(self.active) - self.active[key]))
            return
        self.active[key] = len(self.active)
        try:
            self._compound(value, t, h, np)
        finally:
            del self.active[key]

    def _numpy_scalar(self, value: Any, h: Any, np: Any) -> None:
        # Numbers by value, like the Python numbers they equal; other scalars (datetime64, void, long
        # double) as the 0-d arrays they are.
        if isinstance(value, np.bool_):
            h.update(b"T" if value else b"F")
        elif isinstance(value, np.integer):
            _int(int(value), h)
        elif isinstance(value, np.floating) and value.dtype.itemsize <= 8:
            _float(float(value), h)
        elif isinstance(value, np.complexfloating) and value.dtype.itemsize <= 16:
            _complex(complex(value), h)
        elif isinstance(value, np.str_):
            _str(str(value), h)
        elif isinstance(value, np.bytes_):
            _put(h, b"b", bytes(value))
        else:
            self._array(np.asarray(value), h, np)

    def _compound(self, value: Any, t: type, h: Any, np: Any) -> None:
        if isinstance(value, (list, tuple)):
            h.update(b"l" if isinstance(value, list) else b"t")
            self._subclass(t, (list, tuple), h)
            h.update(_u64(len(value)))
            self._each(value, h, "[{}]")
            self._instance_dict(value, t, (list, tuple), h)
        elif isinstance(value, dict):
            h.update(b"d")
            self._subclass(t, (dict,), h)
            self._entries(value, h, ordered=isinstance(value, OrderedDict))
            self._instance_dict(value, t, (dict,), h)
        elif isinstance(value, (set, frozenset)):
            h.update(b"S" if isinstance(value, set) else b"Z")
            self._subclass(t, (set, frozenset), h)
            try:
                elements = sorted(self.sub(item) for item in value)
            except _Refused as exc:
                exc.segments.append(" (an element)")
                raise
            h.update(_u64(len(elements)) + b"".join(elements))
            self._instance_dict(value, t, (set, frozenset), h)
        elif np is not None and t is np.ndarray:
            self._array(value, h, np)
        elif t.__module__.startswith("pandas") and self._pandas(value, h):
            pass
        elif isinstance(value, type):
            h.update(b"C")
            _name(h, value.__module__, value.__qualname__)
        elif t is types.FunctionType:
            self._function(value, h)
        elif t is types.CodeType:
            self._code(value, h)
        elif t is types.BuiltinFunctionType:
            owner = value.__self__
            if owner is None or isinstance(owner, types.ModuleType):
                h.update(b"C")
                _name(h, value.__module__ or getattr(owner, "__name__", ""), value.__qualname__)
            else:  # a builtin method: its object, and which method
                h.update(b"m")
                self.encode(owner, h)
                _str(value.__name__, h)
        elif t is types.ModuleType:
            h.update(b"M")
            _str(value.__name__, h)
        elif np is not None and t is np.ufunc:
            h.update(b"U")
            _str(value.__name__, h)
        else:
            self._reduced(value, t, h)

    def _each(self, items: Any, h: Any, where: str) -> None:
        """Encode ``items`` in order; a refusal names the element's index (``where`` formats it)."""
        index = -1
        try:
            for item in items:
                index += 1
                self.encode(item, h)
        except _Refused as exc:
            exc.segments.append(where.format(index))
            raise

    def _subclass(self, t: type, bases: tuple[type, ...], h: Any) -> None:
        if t in bases:
            h.update(b"\x00")
        else:  # a namedtuple, a Counter, a set subclass: its class, by name
            h.update(b"\x01")
            _name(h, t.__module__, t.__qualname__)

    def _instance_dict(self, value: Any, t: type, bases: tuple[type, ...], h: Any) -> None:
        if t not in bases:
            self._attributes(getattr(value, "__dict__", None) or {}, h)

    def _entries(self, mapping: Any, h: Any, ordered: bool, attributes: bool = False) -> None:
        entries = []
        k: Any = None
        try:
            for k, v in mapping.items():
                entries.append(self.sub(k) + self.sub(v))
        except _Refused as exc:
            exc.segments.append(f".{k}" if attributes and isinstance(k, str) else f"[{_short(k)}]")
            raise
        if not ordered:
            entries.sort()  # by the key's digest (keys are distinct), then the value's
        h.update(_u64(len(entries)) + b"".join(entries))

    def _attributes(self, state: Any, h: Any) -> None:
        """An object's ``__dict__`` (or a dict state): a dict whose refusals name ``.attribute``."""
        if type(state) is dict:
            h.update(b"d\x00")
            self._entries(state, h, ordered=False, attributes=True)
        else:
            self.encode(state, h)

    def _array(self, value: Any, h: Any, np: Any) -> None:
        dtype = value.dtype
        if dtype.fields is None and dtype.subdtype is None:
            if not dtype.isnative:  # the same numbers in the other byte order are the same values
                value = value.astype(dtype.newbyteorder("="))
                dtype = value.dtype
            descr = dtype.str
        else:
            descr = repr(dtype.descr)
        h.update(b"A")
        _str(descr, h)
        h.update(_u64(value.ndim) + b"".join(_u64(n) for n in value.shape))
        if dtype.hasobject:
            self._each(value.reshape(-1), h, "[flat index {}]")
        else:
            h.update(np.ascontiguousarray(value).reshape(-1).view(np.uint8))

    def _pandas(self, value: Any, h: Any) -> bool:
        pd = sys.modules.get("pandas")
        if pd is None or not isinstance(value, (pd.DataFrame, pd.Series, pd.Index)):
            return False  # another pandas object (a Timestamp, a Categorical): pickle's state
        if isinstance(value, pd.DataFrame):
            h.update(b"PD")
            self._index(value.index, h)
            self._index(value.columns, h)
            h.update(_u64(value.shape[1]))
            for j in range(value.shape[1]):
                self._pandas_values(value.iloc[:, j], h)
        elif isinstance(value, pd.Series):
            h.update(b"PS")
            self.encode(value.name, h)
            self._index(value.index, h)
            self._pandas_values(value, h)
        else:
            h.update(b"PI")
            self._index(value, h)
        return True

    def _index(self, index: Any, h: Any) -> None:
        # By its names, levels and values: a RangeIndex digests as the int64 Index it equals.
        self.encode(list(index.names), h)
        h.update(_u64(index.nlevels))
        self._pandas_values(index, h)

    def _pandas_values(self, column: Any, h: Any) -> None:
        np = sys.modules["numpy"]
        dtype = column.dtype
        _str(str(dtype), h)
        categories = getattr(dtype, "categories", None)
        if categories is not None:  # a categorical's categories and their order are part of its dtype
            self._index(categories, h)
            self.encode(bool(dtype.ordered), h)
        self._array(np.asarray(column.to_numpy()), h, np)

    def _function(self, value: types.FunctionType, h: Any) -> None:
        h.update(b"F")
        try:
            self._code(value.__code__, h)
            self.encode(value.__defaults__, h)
            self.encode(value.__kwdefaults__, h)
        except _Refused as exc:
            exc.segments.append(" (a default value)")
            raise
        cells = value.__closure__ or ()
        h.update(_u64(len(cells)))
        for name, cell in zip(value.__code__.co_freevars, cells, strict=True):
            try:
                contents = cell.cell_contents
            except ValueError:  # a closure variable not assigned yet
                h.update(b"E")
                continue
            try:
                self.encode(contents, h)
            except _Refused as exc:
                exc.segments.append(f" (closure variable {name!r})")
                raise
        self._attributes(value.__dict__, h)

    def _code(self, code: types.CodeType, h: Any) -> None:
        # What the code does, not where it was compiled: no file name, line numbers or name.
        h.update(b"K")
        for number in (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags):
            _int(number, h)
        _put(h, b"b", code.co_code)
        for part in (code.co_consts, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
            self.encode(part, h)

    def _reduced(self, value: Any, t: type, h: Any) -> None:
        if isinstance(value, tuple(kind for kind, _ in _REFUSED_TYPES)):
            raise _Refused(_describe(value))
        try:
            reduced = value.__reduce_ex__(4)
        except Exception:
            raise _Refused(_describe(value)) from None
        if isinstance(reduced, str):  # a global, pickled by name (None-like singletons, pd.NA)
            h.update(b"C")
            _name(h, getattr(value, "__module__", None) or t.__module__, reduced)
            return
        h.update(b"R")
        maker, args = reduced[0], reduced[1]
        if hasattr(maker, "__qualname__") and hasattr(maker, "__module__"):
            _name(h, maker.__module__, maker.__qualname__)
        else:
            self.encode(maker, h)
        try:
            self.encode(args, h)
            state = reduced[2] if len(reduced) > 2 else None
            if type(state) is tuple and len(state) == 2 and all(s is None or type(s) is dict for s in state):
                h.update(b"t\x00" + _u64(2))  # (__dict__, __slots__ values): both as attributes
                for part in state:
                    self._attributes(part, h)
            else:
                self._attributes(state, h)
            for items in reduced[3:5]:
                self.encode(None if items is None else list(items), h)
        except _Refused as exc:
            if not exc.segments or not exc.segments[-1].startswith("."):
                exc.segments.append(f" (in the state of a {_type_name(t)})")
            raise


def canonical_digest(value: Any, name: str = "the value") -> str:
    """The digest (32 hex digits) of ``value``'s content, the same in every process whatever its hash
    seed: see the module's doc for what is encoded and how. Raises
    :class:`~resumable_magic.errors.NoContentIdentityError` for a value that has no content to digest
    (a generator, an open file, a lock, ... anywhere inside it), naming where it sits under ``name``."""
    try:
        return _Encoder().sub(value).hex()
    except _Refused as exc:
        raise NoContentIdentityError(name + "".join(reversed(exc.segments)), exc.what) from None
    except RecursionError:
        raise NoContentIdentityError(name, "nested too deeply to digest") from None
