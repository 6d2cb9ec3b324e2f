"""A blob's bytes and its two hashes, computed while the bytes move.

Every blob has two hashes: its name, an xxh3-128 digest (~28 GiB/s here) that detects damage, and a
BLAKE3 hash (~4 GiB/s on one core, ~8 on two) that the signed manifest records, so that the signature
covers the content: xxh3 collisions are easy to construct, BLAKE3's are not. A cryptographic hash
over all the data is slower than the disk when done apart, so it is done alongside: a thread hashes a
blob while it is written (both release the GIL), and a read hashes each chunk in a thread while the
next chunk is read. Neither a checkpoint nor a restore then waits for the hash (benchmarks/bench_store.py).

Large blobs are read into an anonymous ``mmap`` populated up front (``MAP_POPULATE``): writable, so
restored arrays need no copy, and the kernel faults the pages in bulk, ~4x cheaper here than the
first touch of a ``bytearray`` or of a numpy array asking for transparent huge pages. A blob that
becomes a ``bytes`` or a ``bytearray`` of the state (``into``) is read straight into one, since
neither can adopt memory it did not allocate: a copy would double the restore's peak memory.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import xxhash
from blake3 import blake3

__all__ = ["BlobKind", "ReadBlob", "digest", "file_hashes", "read_blob_file", "strong_hash"]

BlobKind = Literal["any", "bytes", "bytearray"]
"""What a blob is read into: any writable buffer (an mmap or a bytearray), a ``bytes``, a ``bytearray``."""

STRONG_HASH = "blake3"
CHUNK = 8 << 20  # read and hashed at a time: small enough to stay in cache between the two
MMAP_MIN = 1 << 20  # smaller blobs go to a bytearray (an mmap costs a system call and a page minimum)
_CACHE_LIMIT = 4096


def digest(data: bytes | memoryview | Any) -> str:
    """The blob name and record checksum: xxh3-128, hex. Reads ``data`` in place (no copy)."""
    return xxhash.xxh3_128_hexdigest(data)


def strong_hash(data: bytes | memoryview | Any) -> str:
    """BLAKE3 of ``data``, hex, on every core (the GIL is released); on one in a forked child."""
    return blake3(data, max_threads=_threads).hexdigest()


# BLAKE3's threads are a Rust (Rayon) pool made in the parent: a forked child (a background writer)
# has none of them and would wait for them forever, so it hashes on its own thread.
_threads = blake3.AUTO


def _in_forked_child() -> None:
    global _threads
    _threads = 1


os.register_at_fork(after_in_child=_in_forked_child)


class Alongside:
    """Both hashes of ``data`` (its name, its BLAKE3) in a thread, while the caller writes ``data``;
    ``name``: the name when the caller knows it already (then only the BLAKE3 is computed)."""

    def __init__(self, data: Any, name: str | None = None) -> None:
        self.result: tuple[str, str] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(data, name), name="resumable-hash", daemon=True
        )
        self._thread.start()

    def _run(self, data: Any, name: str | None) -> None:
        try:
            self.result = name or digest(data), strong_hash(data)
        except BaseException as exc:  # re-raised in the caller's thread by join()
            self._error = exc

    def join(self) -> tuple[str, str]:
        """(name, BLAKE3), once both are computed."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self.result is not None
        return self.result


class ReadBlob:
    """A blob's content (read from a local file: writable, a ``bytearray`` or an anonymous ``mmap``;
    downloaded: ``bytes``) and its two hashes."""

    __slots__ = ("data", "name", "strong")

    def __init__(self, data: bytes | bytearray | mmap.mmap, name: str, strong: str) -> None:
        self.data, self.name, self.strong = data, name, strong


def _allocate(size: int, into: BlobKind = "any") -> bytearray | mmap.mmap:
    if into == "bytearray" or size < MMAP_MIN or not hasattr(mmap, "MAP_POPULATE"):
        return bytearray(size)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
    return mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def read_blob_file(
    path: Path,
    check: Callable[[os.stat_result], None] | None = None,
    *,
    strong: bool = True,
    into: BlobKind = "any",
) -> ReadBlob:
    """Read ``path`` whole, hashing as it goes; ``check(fstat)`` runs on the open file first (so no rename
    can slip between the check and the read). ``into``: see :data:`BlobKind`. Raises ``OSError``; a
    file that shrinks while read comes back short, and its hash then says so."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(0, "it is not a regular file")
        if check is not None:
            check(st)
        if into == "bytes":
            return _read_bytes(fd, strong)
        buffer: bytes | bytearray | mmap.mmap = _allocate(st.st_size, into)
        view = memoryview(buffer)
        fast, slow = xxhash.xxh3_128(), blake3(max_threads=_threads)  # all cores: reading is the quick part

        def update(chunk: memoryview) -> None:
            fast.update(chunk)
            if strong:
                slow.update(chunk)

        filled = 0
        with ThreadPoolExecutor(1, thread_name_prefix="resumable-hash") as hasher:
            pending = None
            while filled < st.st_size:
                count = os.readv(fd, [view[filled : filled + CHUNK]])
                if count == 0:
                    break
                if pending is not None:
                    pending.result()
                pending = hasher.submit(update, view[filled : filled + count])
                filled += count
            if pending is not None:
                pending.result()
        view.release()
        if filled < st.st_size:
            buffer = buffer[:filled]  # shrank while read: the digest will not match
        return ReadBlob(buffer, fast.hexdigest(), slow.hexdigest() if strong else "")
    finally:
        os.close(fd)


def _read_bytes(fd: int, strong: bool) -> ReadBlob:
    """The file as one ``bytes``, read into it (FileIO.readall sizes it from fstat: no copy), then
    hashed: the hashes cannot run alongside, as a ``bytes`` cannot be read into in chunks."""
    with open(fd, "rb", buffering=0, closefd=False) as f:
        data = f.readall()
    return ReadBlob(data, digest(data), strong_hash(data) if strong else "")


def _hash_file(path: Path) -> tuple[str, str]:
    """(xxh3, BLAKE3) of a file, read in chunks into two buffers that take turns (one is read into
    while the other is hashed): memory stays at two chunks whatever the file's size."""
    fast, slow = xxhash.xxh3_128(), blake3(max_threads=_threads)

    def update(chunk: memoryview) -> None:
        fast.update(chunk)
        slow.update(chunk)

    buffers = [memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK))]
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(0, "it is not a regular file")
        with ThreadPoolExecutor(1, thread_name_prefix="resumable-hash") as hasher:
            pending = None
            turn = 0
            while True:
                count = os.readv(fd, [buffers[turn]])
                if pending is not None:
                    pending.result()
                if count == 0:
                    break
                pending = hasher.submit(update, buffers[turn][:count])
                turn = 1 - turn
    finally:
        os.close(fd)
    return fast.hexdigest(), slow.hexdigest()


_file_cache: dict[tuple[str, int, int, int, int], tuple[str, str]] = {}


def file_hashes(path: Path) -> tuple[str, str]:
    """(xxh3, BLAKE3) of the file ``path``, read in chunks (a blob already stored is checked without
    holding it in memory); remembered by file identity, so an unchanged blob is read once per process."""
    st = os.stat(path)
    ident = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    found = _file_cache.get(ident)
    if found is None:
        found = _hash_file(path)
        if len(_file_cache) > _CACHE_LIMIT:
            _file_cache.clear()
        _file_cache[ident] = found
    return found
