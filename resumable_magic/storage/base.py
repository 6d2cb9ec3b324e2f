"""The one seam between the store and where bytes live: the :class:`Backend` protocol and
:func:`open_backend`, which picks the implementation for a location.

The store knows the checkpoint format (manifests, blobs, records) and asks a backend for bytes;
the lease asks it for a register (a lock between processes, or a compare-and-swap object). Names
are relative to the backend's folder (``manifest.00000003.json``, ``objects/<digest>``, ``DONE``).
Nothing above this package asks whether a location is local or remote: what differs is said by the
backend's capabilities (:attr:`Backend.checks_permissions`, :attr:`Backend.forks`, ...).

* :class:`~resumable_magic.storage.local.LocalBackend`: crash-safe files (tmp -> fsync -> rename).
* :class:`~resumable_magic.storage.fsspec.FsspecBackend` (``s3://``, ``memory://``, anything fsspec
  reaches): one PUT per file, which an object store makes atomic.
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import Protocol, Union

from resumable_magic.storage.blobs import Alongside, BlobKind, ReadBlob
from resumable_magic.storage.fsspec import FsspecBackend, WriteConflict, check_protocol
from resumable_magic.storage.local import LocalBackend
from resumable_magic.storage.paths import URL_RE, RemotePath, Where

__all__ = ["Backend", "Buffer", "ProcessLock", "WriteConflict", "location", "open_backend"]

Buffer = Union[bytes, bytearray, memoryview]  # noqa: UP007 (a runtime alias for Python 3.10)


class ProcessLock(Protocol):
    """A mutex between processes, held for microseconds (the lease's), or a no-op where the backend
    has compare-and-swap instead. ``acquire`` raises :class:`TimeoutError` after the timeout."""

    def acquire(self) -> None: ...

    def release(self) -> None: ...


class Backend(Protocol):
    """A run folder's bytes (see the module doc)."""

    @property
    def path(self) -> Where:
        """The folder this backend reads and writes."""
        ...

    @property
    def local(self) -> bool:
        """True on a local file system; for messages and tests, never for decisions."""
        ...

    @property
    def checks_permissions(self) -> bool:
        """Readers check each file's owner and mode besides its signature (POSIX files)."""
        ...

    @property
    def forks(self) -> bool:
        """A forked child can write here (not ``memory://``, which lives in this process)."""
        ...

    @property
    def cheap_listing(self) -> bool:
        """Listing costs no request: readers may list again rather than reuse a listing."""
        ...

    @property
    def compare_and_swap(self) -> bool:
        """The lease register is a compare-and-swap object (no lock between processes)."""
        ...

    def in_child(self) -> Backend:
        """This backend for a forked child (its own connections where it has any)."""
        ...

    def where(self, name: str = "") -> Where: ...

    def ensure(self, top: Where) -> None:
        """Create the folder (and those from ``top`` down to it) and ``objects/``, private."""
        ...

    def is_folder(self) -> bool:
        """True when the folder can hold runs (a local folder that exists; any URL prefix)."""
        ...

    def check_folders(self, top: Where) -> None:
        """Refuse (``UntrustedCheckpointError``) folders from ``top`` down to ``objects/`` that are not
        the user's own and private; a no-op where there are no owners."""
        ...

    # -- blobs
    def has_blob(self, name: str, data: Buffer) -> bool: ...

    def put_blob(self, name: str, data: Buffer, alongside: Alongside | None = None) -> None: ...

    def put_new_blob(self, data: Buffer, hashes: Alongside) -> str:
        """Store ``data`` under the name ``hashes`` computes while it is written; return the name."""
        ...

    def mark_verified(self, name: str) -> None: ...

    def read_blob(self, name: str, *, private: bool = False, into: BlobKind = "any") -> ReadBlob:
        """The blob read whole and hashed while read; ``private``: refuse one that is not the user's
        own private file (checked on the open file); ``into``: what to read it into (a ``bytes`` or a
        ``bytearray`` of the state is read into one, without a copy, where the medium allows)."""
        ...

    def blob_hashes(self, name: str) -> tuple[str, str]:
        """(xxh3, BLAKE3) of a stored blob."""
        ...

    # -- records
    def put_record(
        self, name: str, data: bytes, steps: tuple[str, str] | None = None, exclusive: bool = False
    ) -> None: ...

    def read_record(self, name: str, verify: bool) -> bytes: ...

    def read_plain(self, name: str) -> bytes | None: ...

    def sync(self, folder: str = "") -> None: ...

    # -- listing and deleting
    def exists(self, name: str = "") -> bool: ...

    def list(self, folder: str = "") -> builtins.list[str]: ...

    def size(self, name: str) -> int: ...

    def delete(self, name: str) -> None: ...

    def remove_folder(self, folder: str = "") -> None:
        """Remove ``folder`` if it is empty (object stores have no folders: a no-op)."""
        ...

    def move_here(self, source: Where, top: Where) -> bool:
        """Move the folder ``source`` (under ``top``) to this backend's folder in one atomic rename,
        creating the folders from ``top`` down to it; False, with nothing changed, where that cannot
        be done in one step (an object store; this folder exists and is not empty; another device)."""
        ...

    def temporaries(self) -> builtins.list[str]:
        """Names of files left mid-write (``objects/`` ones with their folder), any writer's."""
        ...

    def folders(self) -> builtins.list[tuple[str, builtins.list[str]]]:
        """Every folder at or below this one but ``objects/`` ones: (path relative to this one, the
        names in it)."""
        ...

    def bytes_in(self, folder: str = "") -> int:
        """Bytes of the files in ``folder`` and its ``objects/`` (not in folders below)."""
        ...

    def free_space(self) -> int | None: ...

    # -- the lease's register
    def process_lock(self, name: str, timeout: float) -> ProcessLock: ...

    def read_tagged(self, name: str) -> tuple[bytes, str | None] | None:
        """(bytes, tag) of ``name`` read at once; None when it does not exist (or is no file)."""
        ...

    def write_tagged(self, name: str, data: bytes, expected: str | None) -> str | None:
        """Write ``name``; where the backend has compare-and-swap, only if its tag is still
        ``expected`` (None: only if absent), else :class:`WriteConflict`. Returns the new tag."""
        ...


def location(directory: str | os.PathLike[str] | RemotePath) -> Where:
    """``directory`` as a local :class:`~pathlib.Path` or a :class:`RemotePath`.

    A local path has ``~`` expanded and is made absolute, so that an ``os.chdir`` in a loop's body
    (or a worker started in another folder) still finds it. A ``file://`` URL is a local path. For any
    other URL, fsspec and the protocol's package must be importable: otherwise a
    :class:`~resumable_magic.errors.ResumableError` names the URL and the extra to install (raised
    here, before any loop starts).
    """
    if isinstance(directory, RemotePath):
        return directory
    if isinstance(directory, str):
        match = URL_RE.match(directory)
        if match:
            protocol, rest = match.group(1).lower(), match.group(2)
            if protocol in ("file", "local"):
                return _local(rest or "/")
            return RemotePath(check_protocol(directory, protocol), rest)
    return _local(directory)


def _local(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


def open_backend(where: Where) -> Backend:
    """The backend of the folder ``where``."""
    if isinstance(where, RemotePath):
        return FsspecBackend(where)
    return LocalBackend(where)


def _check_types(local: LocalBackend, remote: FsspecBackend) -> tuple[Backend, Backend]:
    """Never called: the type checker proves here that both backends implement :class:`Backend`."""
    return local, remote
