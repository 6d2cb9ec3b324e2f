"""Objects that are views of something outside the process, found while the state is pickled.

A checkpoint saves values. A file open for writing, a writable memory map, a socket, a database
connection, a pool of processes or threads, a running thread or process, shared memory: what they
stand for lives outside the process, so no checkpoint can capture it, and after a crash the restored
object would not match it (a log file keeps the lines written after the checkpoint; an array restored
from a ``numpy.memmap`` is an anonymous array whose writes never reach the file). The pickler asks
:func:`check_for` about each type it meets (once per type) and runs the check it gets on each object
of that type; a check raises :class:`ExternalResource`, which the serializer turns into an
:class:`~resumable_magic.errors.ExternalResourceError` naming the variable and the path to the object.
The first checkpoint is written before the loop runs, so the loop never starts with such a state.

What is decided here, and why:

- a file open for writing, appending or updating (mode with ``w``, ``a``, ``x`` or ``+``) on a regular
  file: refused. A file open for reading is reopened at its position (:mod:`.files`). Closed files,
  the standard streams, devices and pipes are left as they were (nothing of theirs can disagree with
  a checkpoint);
- ``numpy.memmap``: mode ``r+`` or ``w+`` refused (saving the file's content would mean writing it
  back on restore: changing a file outside the process); mode ``r`` is reopened on restore (the map is
  a live, read-only view of the file, as the reopened one is); mode ``c`` (copy-on-write: its writes
  never reach the file) is saved by value and restored as an array in memory; a plain array or a
  memoryview that views a writable memmap, or a shared writable ``mmap`` of a file (``/dev/shm``
  included), is refused;
- sockets, sqlite3 connections and cursors, ``multiprocessing`` pools, queues, pipes, processes and
  shared memory, ``concurrent.futures`` executors, ``subprocess.Popen``, and threads that were started:
  refused (an unstarted ``Thread`` is a plain object).
"""

from __future__ import annotations

import bisect
import mmap
import os
import stat
import sys
from collections.abc import Callable
from typing import Any

from resumable_magic.state.files import is_standard_stream

__all__ = ["ExternalResource", "Scan", "check_for", "reduce_memmap"]


class ExternalResource(Exception):  # a signal inside the pickler, not an error users see
    """Raised inside the pickler by a check: ``resource`` is what the object is, ``consequence`` why
    a checkpoint cannot hold it, ``remedy`` what to do (the start of a sentence)."""

    def __init__(self, resource: str, consequence: str = "", remedy: str = "", obj: Any = None) -> None:
        super().__init__(resource)
        self.resource, self.consequence, self.remedy = resource, consequence, remedy
        self.obj = obj  # the resource itself: the culprit search stops there, not in its insides


Check = Callable[[Any, "Scan"], None]

_CONNECTION = "a connection cannot be saved: after a crash it is gone, and the restored object would not work"
_WORKERS = "its workers cannot be saved: after a crash they are gone, and the restored object would not work"
_WRITTEN_FILE = (
    "after a crash the file would keep what the loop wrote after the checkpoint, so it would not match "
    "the restored state"
)
_MEMMAP_FILE = (
    "restored, it would be an array in memory whose writes never reach the file, and after a crash the "
    "file would keep what the loop wrote after the checkpoint"
)
_MEMMAP_REMEDY = (
    "Open the map inside the loop, name a copy (np.array(m)), or open it with mode 'r' (reopened on "
    "resume) or 'c' (saved as an array)"
)


class Scan:
    """What one pickling pass has learnt about the process: its memory mappings (Linux), read once
    and only when an object is backed by an ``mmap``."""

    def __init__(self) -> None:
        self._maps: tuple[list[int], list[tuple[int, str, str]]] | None = None

    def shared_file(self, address: int) -> str | None:
        """The file mapped shared and writable at ``address`` ('' when its name is unknown), or None
        (private or anonymous memory, a read-only map). Linux: ``/proc/self/maps``."""
        if self._maps is None:
            self._maps = _read_maps()
        starts, entries = self._maps
        index = bisect.bisect_right(starts, address) - 1
        if index < 0:
            return None
        end, perms, path = entries[index]
        if address >= end or perms[1:2] != "w" or perms[3:4] != "s":
            return None
        if not path or path.startswith(("[", "/dev/zero", "/SYSV")):  # anonymous shared memory
            return None
        return path.removesuffix(" (deleted)")


def _read_maps() -> tuple[list[int], list[tuple[int, str, str]]]:
    starts: list[int] = []
    entries: list[tuple[int, str, str]] = []
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return starts, entries
    for line in lines:
        fields = line.split(None, 5)
        if len(fields) < 5:
            continue
        start, _, end = fields[0].partition("-")
        starts.append(int(start, 16))
        entries.append((int(end, 16), fields[1], fields[5] if len(fields) > 5 else ""))
    return starts, entries


# -- the checks, one per kind of resource ----------------------------------------------------------


def _check_file(handle: Any, scan: Scan) -> None:
    try:
        if handle.closed or not handle.writable():
            return
        if is_standard_stream(handle) or not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return  # the standard streams, a terminal, a pipe, /dev/null: as dill does
    except (ValueError, OSError):  # detached, or no file descriptor (io.UnsupportedOperation)
        return
    name, mode = getattr(handle, "name", "?"), getattr(handle, "mode", "?")
    raise ExternalResource(
        f"a file open for writing ({name!r}, mode {mode!r})",
        _WRITTEN_FILE,
        "Open it inside the loop (or close it before the loop and reopen it in the loop)",
    )


def _check_socket(sock: Any, scan: Scan) -> None:
    try:
        peer = f", connected to {sock.getpeername()}"
    except (OSError, ValueError):
        peer = ""
    kind = "" if type(sock).__name__ == "socket" else f" ({_qualified(type(sock))})"
    raise ExternalResource(f"a socket{kind}{peer}", _CONNECTION, "Connect inside the loop")


def _refuse(resource: str, consequence: str, remedy: str) -> Check:
    def check(obj: Any, scan: Scan) -> None:
        raise ExternalResource(resource.format(obj=obj, cls=_qualified(type(obj))), consequence, remedy)

    return check


def _check_thread(thread: Any, scan: Scan) -> None:
    # Started, not alive: in a forked writer every thread but the writer's own looks finished.
    started = getattr(thread, "_started", None)
    if started is not None and started.is_set():
        raise ExternalResource(
            f"a thread ({thread.name!r}) that was started",
            "a thread cannot be saved: restored, it would be an object that no thread runs",
            "Start it inside the loop (and join it there)",
        )


def _check_popen(process: Any, scan: Scan) -> None:
    raise ExternalResource(
        f"a subprocess (pid {process.pid}, {process.args!r})",
        "a process cannot be saved: after a crash it is gone, and the restored object would wait on "
        "a process id that is not its own",
        "Start and wait for it inside the loop",
    )


def _check_process(process: Any, scan: Scan) -> None:
    pid = getattr(process, "_popen", None) and process.pid
    raise ExternalResource(
        f"a process ({_qualified(type(process))}{f', pid {pid}' if pid else ''})",
        _WORKERS,
        "Start and join it inside the loop",
    )


def _check_memmap(array: Any, scan: Scan) -> None:
    if getattr(array, "_mmap", None) is not None and array.mode in ("r+", "w+"):
        raise ExternalResource(
            f"a numpy.memmap of {array.filename!r} open for writing (mode {array.mode!r})",
            _MEMMAP_FILE,
            _MEMMAP_REMEDY,
        )
    check_view(array, scan)


def _check_array(array: Any, scan: Scan) -> None:
    if array.base is not None:  # memory the array owns (the usual case) is nobody else's
        check_view(array, scan)


def check_view(obj: Any, scan: Scan) -> None:
    """Refuse an array or memoryview whose memory is a writable map of a file: through a numpy.memmap
    opened for writing, or a shared writable ``mmap`` (``np.frombuffer(mmap.mmap(fd, ...))``,
    ``/dev/shm``)."""
    numpy = sys.modules.get("numpy")
    ndarray = numpy.ndarray if numpy is not None else ()
    memmap = numpy.memmap if numpy is not None else ()
    current = obj
    for _ in range(64):  # a chain of views; numpy collapses it, memoryviews name their exporter
        if isinstance(current, memmap) and getattr(current, "_mmap", None) is not None:
            if current.mode in ("r+", "w+"):
                what = "a view of " if current is not obj else ""
                raise ExternalResource(
                    f"{what}a numpy.memmap of {current.filename!r} open for writing (mode {current.mode!r})",
                    _MEMMAP_FILE,
                    _MEMMAP_REMEDY,
                )
            return  # 'r' and 'c' maps: see reduce_memmap
        if isinstance(current, ndarray):
            following = current.base
        elif isinstance(current, memoryview):
            following = current.obj
        else:
            break
        if following is None:
            return
        current = following
    if isinstance(current, mmap.mmap):
        _check_mapping(obj, current, scan)


def _check_mapping(obj: Any, mapping: mmap.mmap, scan: Scan) -> None:
    from resumable_magic.state.buffers import buffer_address

    try:
        if memoryview(mapping).readonly:
            return
        address = buffer_address(obj)
    except (ValueError, TypeError, BufferError):  # a closed map, an empty view
        return
    if sys.platform.startswith("linux"):
        path = scan.shared_file(address)
        if path is None:
            return
    else:  # no /proc: a writable map of a file is taken as shared (mmap's default)
        try:
            mapping.size()
        except OSError:
            return  # anonymous
        path = ""
    kind = "an array" if type(obj).__name__ != "memoryview" else "a memoryview"
    raise ExternalResource(
        f"{kind} over a writable shared memory map of {path or 'a file'!r}",
        "its memory is the file's: restored, it would be an array in memory whose writes never reach "
        "the file, and after a crash the file would keep what the loop wrote after the checkpoint",
        "Map the file inside the loop, or name a copy",
    )


def _check_raw_mmap(mapping: mmap.mmap, scan: Scan) -> None:
    _check_mapping(mapping, mapping, scan)


# (module, qualified name, check): looked up only in modules already imported, since an object of a
# type from a module nobody imported cannot exist. Subclasses count (ssl.SSLSocket, ThreadPool, Timer).
_KINDS: list[tuple[str, str, Check]] = [
    ("io", "TextIOWrapper", _check_file),
    ("io", "BufferedWriter", _check_file),
    ("io", "BufferedRandom", _check_file),
    ("io", "BufferedReader", _check_file),
    ("io", "FileIO", _check_file),
    ("socket", "socket", _check_socket),
    ("mmap", "mmap", _check_raw_mmap),
    ("numpy", "memmap", _check_memmap),
    ("numpy", "ndarray", _check_array),
    ("builtins", "memoryview", check_view),
    ("threading", "Thread", _check_thread),
    ("subprocess", "Popen", _check_popen),
    ("multiprocessing.process", "BaseProcess", _check_process),
    (
        "sqlite3",
        "Connection",
        _refuse(
            "a sqlite3 database connection",
            "a connection cannot be saved, and the database is not in the checkpoint: after a crash it "
            "would keep what the loop wrote after the checkpoint",
            "Connect inside the loop",
        ),
    ),
    ("sqlite3", "Cursor", _refuse("a sqlite3 cursor", _CONNECTION, "Connect inside the loop")),
    ("sqlite3", "Blob", _refuse("a sqlite3 blob", _CONNECTION, "Connect inside the loop")),
    ("multiprocessing.pool", "Pool", _refuse("a pool ({cls})", _WORKERS, "Create the pool inside the loop")),
    (
        "concurrent.futures._base",
        "Executor",
        _refuse("an executor ({cls})", _WORKERS, "Create the executor inside the loop"),
    ),
    (
        "multiprocessing.shared_memory",
        "SharedMemory",
        _refuse(
            "shared memory ({obj.name!r})",
            "its content lives outside the process and is not in the checkpoint",
            "Attach it inside the loop, or name a copy of its content",
        ),
    ),
    ("multiprocessing.queues", "Queue", _refuse("a queue ({cls})", _CONNECTION, "Create it inside the loop")),
    (
        "multiprocessing.queues",
        "SimpleQueue",
        _refuse("a queue ({cls})", _CONNECTION, "Create it inside the loop"),
    ),
    (
        "multiprocessing.connection",
        "Connection",
        _refuse("a pipe ({cls})", _CONNECTION, "Create it inside the loop"),
    ),
]
_CHECKS: dict[type, Check | None] = {}


def _naming(check: Check) -> Check:
    def named(obj: Any, scan: Scan) -> None:
        try:
            check(obj, scan)
        except ExternalResource as found:
            if found.obj is None:
                found.obj = obj
            raise

    return named


def check_for(cls: type) -> Check | None:
    """The check for objects of type ``cls`` (None for the great majority of types); cached."""
    try:
        return _CHECKS[cls]
    except KeyError:
        pass
    found: Check | None = None
    if cls is not type(None):
        for module_name, qualname, check in _KINDS:
            module = sys.modules.get(module_name)
            base = getattr(module, qualname, None) if module is not None else None
            if isinstance(base, type) and issubclass(cls, base):
                found = _naming(check)
                break
    if len(_CHECKS) > 100_000:  # classes made on the fly, again and again
        _CHECKS.clear()
    _CHECKS[cls] = found
    return found


def _qualified(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


# -- numpy.memmap: reopened ('r') or saved by value ('c', no file) ---------------------------------


def reduce_memmap(array: Any) -> Any:
    """A memmap's reduction (mode ``r+``/``w+`` was refused before): mode ``r`` reopens the same part
    of the same file on restore; mode ``c``, and a memmap without a file, are saved by value (out of
    band) and restored as a memmap-typed array in memory."""
    numpy = sys.modules["numpy"]
    plain = array.view(numpy.ndarray)
    if array.mode != "r" or array.filename is None or getattr(array, "_mmap", None) is None or not array.size:
        return _as_memmap, (plain,)
    position = _file_position(array, numpy)
    if position is None:
        return _as_memmap, (plain,)
    return _reopen_memmap, (array.filename, position, array.dtype, array.shape, array.strides)


def _file_position(array: Any, numpy: Any) -> int | None:
    """Where the array's first element lies in its file; None when the file is no longer there whole."""
    try:
        start = array.offset - array.offset % mmap.ALLOCATIONGRANULARITY  # where numpy's map begins
        mapped = numpy.frombuffer(array._mmap, dtype=numpy.uint8).__array_interface__["data"][0]
        position = int(start + array.__array_interface__["data"][0] - mapped)
        high = _extent(array.shape, array.strides, array.itemsize)[1]
        if os.stat(array.filename).st_size < position + high:
            return None
    except (OSError, ValueError, TypeError):
        return None
    return position


def _extent(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    low = sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s < 0)
    high = sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s > 0) + itemsize
    return low, high


def _reopen_memmap(filename: str, position: int, dtype: Any, shape: Any, strides: Any) -> Any:
    import numpy

    low, high = _extent(shape, strides, dtype.itemsize)
    region = numpy.memmap(filename, dtype=numpy.uint8, mode="r", offset=position + low, shape=(high - low,))
    array: Any = numpy.ndarray(shape, dtype=dtype, buffer=region, offset=-low, strides=strides)
    array = array.view(numpy.memmap)
    mapped: Any = region  # Any: numpy's stubs do not know memmap._mmap
    array._mmap, array.filename, array.offset, array.mode = mapped._mmap, region.filename, region.offset, "r"
    return array


def _as_memmap(array: Any) -> Any:
    import numpy

    return array.view(numpy.memmap)
