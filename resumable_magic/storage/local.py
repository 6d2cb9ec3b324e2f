"""Where a run's files live, behind one small interface: a local folder, or an object store via fsspec.

:class:`RunStore <resumable_magic.store.runstore.RunStore>` knows the format (manifests, blobs, records) and
asks a *backend* for bytes: ``put_blob``, ``put_record``, ``read_record``, ``read_blob``, ``list``,
``size``, ``delete``, ``sync``. Names are relative to the run folder (``manifest.00000003.json``,
``objects/<digest>``, ``DONE``).

* :class:`LocalBackend`: today's crash-safe files. Each file is written to a temporary name, fsynced,
  renamed into place, and the folder fsynced; the test-only crash points of every step are here.
* :class:`~resumable_magic.storage.fsspec.FsspecBackend` (``s3://``, ``memory://``, anything fsspec
  reaches): one PUT per file, which an object store makes atomic; no temporaries, no renames.

:func:`location` turns what the user gave as ``dir`` into a :class:`~pathlib.Path` (local paths and
``file://`` URLs: the fast local code path, unchanged) or a :class:`RemotePath`. fsspec is imported
only for such a URL, and a missing package is a one-paragraph error naming the URL and the extra.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from resumable_magic.errors import CheckpointCorruptError
from resumable_magic.storage.blobs import Alongside, ReadBlob, file_hashes, read_blob_file
from resumable_magic.trust import keys as trust

TMP_PREFIX = ".tmp-"
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)

# -- test-only crash points ------------------------------------------------------------------------
# RESUMABLE_CRASH_AT="<step>:<n>" SIGKILLs this process the n-th time it reaches <step>, so that
# tests can crash a real kernel at an exact point of a commit.
_crash_spec = os.environ.get("RESUMABLE_CRASH_AT", "")
_crash_counts: dict[str, int] = {}
CRASH_STEPS = (
    "serialized",  # state pickled, nothing written
    "blob-written",  # blob's temporary file written, not fsynced
    "blob-synced",  # ... fsynced, not renamed
    "manifest-written",  # manifest's temporary file written, not fsynced
    "manifest-synced",  # ... fsynced, not renamed
    "manifest-renamed",  # renamed into place, directory not fsynced
    "committed",  # directory fsynced, old generations not yet collected
    "collecting",  # old manifests deleted, unreferenced blobs not yet
)
# Also "background": a forked background writer (snapshot.py) has started, nothing written yet.


def crash_point(step: str) -> None:
    """A test hook: SIGKILL this process at ``step`` when ``$RESUMABLE_CRASH_AT`` asks; else a no-op."""
    if not _crash_spec:
        return
    target, _, nth = _crash_spec.partition(":")
    if target != step:
        return
    _crash_counts[step] = _crash_counts.get(step, 0) + 1
    if _crash_counts[step] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# -- where -----------------------------------------------------------------------------------------


class RemotePath:
    """A location on an fsspec file system: a protocol and a ``/``-separated path.

    ``str()`` is the URL (``s3://bucket/prefix/key``); ``/``, ``name``, ``parent`` and ``relative_to``
    work as on a :class:`~pathlib.PurePosixPath`, which is enough for the store, the lease and the
    messages. Not a ``PathLike``: nothing can open it as a local file by mistake.
    """

    __slots__ = ("path", "protocol")

    def __init__(self, protocol: str, path: str | PurePosixPath) -> None:
        self.protocol = protocol
        self.path = PurePosixPath(str(path).strip("/") or ".")

    def __truediv__(self, other: str | os.PathLike[str]) -> RemotePath:
        return RemotePath(self.protocol, self.path / PurePosixPath(os.fspath(other)).as_posix())

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.protocol, self.path.parent)

    @property
    def parents(self) -> list[RemotePath]:
        return [RemotePath(self.protocol, p) for p in self.path.parents]

    def relative_to(self, other: RemotePath) -> PurePosixPath:
        if not isinstance(other, RemotePath) or other.protocol != self.protocol:
            raise ValueError(f"{self} is not under {other}")
        return self.path.relative_to(other.path)

    def as_posix(self) -> str:
        return str(self)

    @property
    def fs_path(self) -> str:
        """The path as the file system names it (``bucket/prefix/key``, or ``/key`` in memory)."""
        text = "" if str(self.path) == "." else str(self.path)
        return f"/{text}" if self.protocol == "memory" else text

    def __str__(self) -> str:
        return f"{self.protocol}://{'' if str(self.path) == '.' else self.path}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and (self.protocol, self.path) == (other.protocol, other.path)

    def __hash__(self) -> int:
        return hash((self.protocol, self.path))


Where = Path | RemotePath


def is_url(value: object) -> bool:
    """True for ``proto://...`` (``file://`` included); local paths are not URLs."""
    return isinstance(value, str) and _URL_RE.match(value) is not None


def location(directory: str | os.PathLike[str] | RemotePath) -> Where:
    """``directory`` as a local :class:`~pathlib.Path` or a :class:`RemotePath`.

    A ``file://`` URL is a local path (the fast local code path). For any other URL, fsspec and the
    protocol's package must be importable: otherwise a :class:`~resumable_magic.errors.ResumableError`
    names the URL and the extra to install (raised here, before any loop starts).
    """
    if isinstance(directory, RemotePath):
        return directory
    if isinstance(directory, str):
        match = _URL_RE.match(directory)
        if match:
            protocol, rest = match.group(1).lower(), match.group(2)
            if protocol in ("file", "local"):
                return Path(rest or "/")
            from resumable_magic.storage.fsspec import check_protocol  # fsspec only now, for a URL

            protocol = check_protocol(directory, protocol)
            return RemotePath(protocol, rest)
    return Path(directory)


def backend_for(run: Where) -> Any:
    """The backend of the run folder ``run``: :class:`LocalBackend` or an fsspec one."""
    if isinstance(run, RemotePath):
        from resumable_magic.storage.fsspec import FsspecBackend

        return FsspecBackend(run)
    return LocalBackend(run)


# -- local files -----------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (renames into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path,
    data: bytes | memoryview,
    steps: tuple[str, str] | None = None,
    alongside: Alongside | None = None,
) -> None:
    """tmp -> write -> fsync -> rename over ``path``. The caller fsyncs the directory.

    ``steps`` names the crash points after the write and after the fsync (tests only). ``alongside``:
    a hash computed while the data is written, awaited before the rename (its failure stops it).
    """
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if steps:
                crash_point(steps[0])
            os.fsync(fd)
        finally:
            os.close(fd)
            if alongside is not None:
                alongside.join()
        if steps:
            crash_point(steps[1])
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_record_file(path: Path, verify: bool) -> bytes:
    """A record's bytes, read from the file whose owner and mode were checked (``verify``): no window
    for a rename between the check and the read. Never blocks on a planted FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise CheckpointCorruptError(path, f"cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointCorruptError(path, "it is not a regular file")
        if verify:
            trust.check_private(path, st)
        try:
            return f.read()
        except OSError as exc:
            raise CheckpointCorruptError(path, f"cannot be read ({exc.strerror})") from None


def listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


_VERIFIED_FILES: set[tuple[str, int, int, int, int]] = set()  # blob files whose content matched their name


def _file_identity(path: Path) -> tuple[str, int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _remember_file(ident: tuple[str, int, int, int, int] | None) -> None:
    if len(_VERIFIED_FILES) > 4096:
        _VERIFIED_FILES.clear()
    if ident is not None:
        _VERIFIED_FILES.add(ident)


class LocalBackend:
    """A run folder on a local (POSIX) file system: atomic, durable files; see the module doc."""

    local = True
    # Readers check each file's owner and mode (trust.check_private) besides the signature.
    checks_permissions = True
    forks = True  # a forked background writer (snapshot.py) can write here

    def __init__(self, path: Path) -> None:
        self.path = path

    def in_child(self) -> LocalBackend:
        """This backend for a forked writer: plain files need nothing new."""
        return self

    def where(self, name: str = "") -> Path:
        return self.path / name if name else self.path

    def ensure(self, top: Path) -> None:
        """Create the run folder and ``objects/`` (and the folders from ``top`` down), private."""
        from resumable_magic.store.runstore import folders_down

        for folder in (top, *folders_down(top, self.path), self.path / "objects"):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def has_blob(self, name: str, data: bytes | memoryview) -> bool:
        """True when blob ``name`` is stored whole: its content hashes to its name. Checked once per
        process (a read), then known by the file's identity (device, inode, size, mtime)."""
        ident = _file_identity(self.path / "objects" / name)
        if ident is None or ident[3] != memoryview(data).nbytes:
            return False
        if ident not in _VERIFIED_FILES:
            with contextlib.suppress(OSError):
                if file_hashes(self.path / "objects" / name)[0] == name:
                    _remember_file(ident)
        return ident in _VERIFIED_FILES

    def mark_verified(self, name: str) -> None:
        """Nothing to remember: :meth:`has_blob` checks the file itself."""

    def put_blob(self, name: str, data: bytes | memoryview, alongside: Alongside | None = None) -> None:
        target = self.path / "objects" / name
        write_atomic(target, data, steps=("blob-written", "blob-synced"), alongside=alongside)
        _remember_file(_file_identity(target))

    def put_record(
        self, name: str, data: bytes, steps: tuple[str, str] | None = None, exclusive: bool = False
    ) -> None:
        # ``exclusive`` is for stores without a mutex; here the lease's filelock serialises commits.
        write_atomic(self.path / name, data, steps)

    def sync(self, folder: str = "") -> None:
        fsync_dir(self.where(folder))

    def read_record(self, name: str, verify: bool) -> bytes:
        return read_record_file(self.path / name, verify)

    def read_plain(self, name: str) -> bytes | None:
        """A file's bytes, or None when it cannot be read (an unsigned record such as outcome.json)."""
        try:
            return (self.path / name).read_bytes()
        except OSError:
            return None

    def read_blob(self, name: str, check: Callable[[os.stat_result], None] | None = None) -> ReadBlob:
        """The blob read whole and hashed as it is read; ``check`` runs on the open file's stat."""
        path = self.path / "objects" / name
        try:
            return read_blob_file(path, check)
        except FileNotFoundError:
            raise CheckpointCorruptError(path, "it is missing") from None
        except OSError as exc:
            raise CheckpointCorruptError(path, f"cannot be read ({exc.strerror})") from None

    def exists(self, name: str = "") -> bool:
        return self.where(name).exists()

    def list(self, folder: str = "") -> list[str]:
        return listdir(self.where(folder))

    def size(self, name: str) -> int:
        """The file's size; OSError when it is missing."""
        return (self.path / name).stat().st_size

    def delete(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path / name)

    def free_space(self) -> int | None:
        import shutil

        try:
            return shutil.disk_usage(self.path).free
        except OSError:
            return None
