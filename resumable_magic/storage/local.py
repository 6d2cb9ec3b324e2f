"""A run folder on a local (POSIX) disk: crash-safe files, and the checks that they are the user's own.

Each file is written to a temporary name, fsynced, renamed into place, and the folder fsynced, so a
crash at any point leaves the previous file whole; the test-only crash points of every step are
here. A reader refuses a file (or a folder above it) that is not the user's own and private
(:func:`check_private`, ssh-style), since unpickling a checkpoint runs code from it.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import shlex
import shutil
import stat
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as LockTimeout

from resumable_magic.errors import CheckpointCorruptError, UntrustedCheckpointError
from resumable_magic.storage.blobs import Alongside, BlobKind, ReadBlob, file_hashes, read_blob_file
from resumable_magic.storage.crashpoints import crash_point
from resumable_magic.storage.paths import TMP_PREFIX, Where, folders_down, run_folder

__all__ = ["LocalBackend", "check_private", "fsync_dir", "read_record_file", "user_name", "write_atomic"]


_BLOB_STEPS = ("blob-written", "blob-synced")


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (renames into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path,
    data: bytes | bytearray | memoryview,
    steps: tuple[str, str] | None = None,
    alongside: Alongside | None = None,
    name_after: Callable[[], str] | None = None,
) -> Path:
    """tmp -> write -> fsync -> rename over ``path``. The caller fsyncs the directory.

    ``steps`` names the crash points after the write and after the fsync (tests only). ``alongside``:
    hashes computed while the data is written, awaited before the rename (their failure stops it).
    ``name_after``: the file's name, known once the data is written (a blob named by the hash
    computed alongside); ``path`` is then its folder. Returns the path written.
    """
    folder = path if name_after is not None else path.parent
    tmp = folder / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
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
        if name_after is not None:
            path = folder / name_after()
        os.replace(tmp, path)
        return path
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
            check_private(path, st)
        try:
            return f.read()
        except OSError as exc:
            raise CheckpointCorruptError(path, f"cannot be read ({exc.strerror})") from None


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


class _FileLock:
    """The lease's mutex between processes: a lock file, taken without a ``threading.local``.

    A thread-local FileLock holds a ``threading.local``, and a run's objects end in reference cycles;
    on Python 3.11 the cyclic GC freeing a ``threading.local`` inside ``sys._current_frames()`` (which
    Dask's profiler calls every 10 ms) deadlocks the process (CPython gh-106883). The lease's own
    RLock gives the exclusion between threads instead.
    """

    def __init__(self, path: Path, timeout: float) -> None:
        self._lock = FileLock(path, timeout=timeout, mode=0o600, thread_local=False)

    def acquire(self) -> None:
        try:
            self._lock.acquire()
        except LockTimeout:
            raise TimeoutError(str(self._lock.lock_file)) from None

    def release(self) -> None:
        self._lock.release()


class LocalBackend:
    """A run folder on a local (POSIX) file system: atomic, durable files; see the module doc."""

    local = True
    checks_permissions = True  # readers check each file's owner and mode besides the signature
    forks = True  # a forked background writer can write here
    cheap_listing = True
    compare_and_swap = False  # the lease's register is guarded by a lock file instead

    def __init__(self, path: Path) -> None:
        self.path = path

    def in_child(self) -> LocalBackend:
        """This backend for a forked writer: plain files need nothing new."""
        return self

    def where(self, name: str = "") -> Path:
        return self.path / name if name else self.path

    def ensure(self, top: Where) -> None:
        """Create the run folder and ``objects/`` (and the folders from ``top`` down), private."""
        for folder in (top, *folders_down(top, self.path), self.path / "objects"):
            Path(str(folder)).mkdir(mode=0o700, parents=True, exist_ok=True)

    def is_folder(self) -> bool:
        return self.path.is_dir()

    def check_folders(self, top: Where) -> None:
        """The checkpoint folder, a nested key's folders, the run folder and ``objects/``: the user's
        own and writable by nobody else, or nothing in them is loaded."""
        for folder in dict.fromkeys([top, *folders_down(top, self.path), self.path / "objects"]):
            _check_link(Path(str(folder)), self.path)
            check_private(str(folder), run=self.path, what="checkpoint folder")

    # -- blobs ------------------------------------------------------------------------------------------
    def has_blob(self, name: str, data: bytes | bytearray | memoryview) -> bool:
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
        """The blob's file was just read and its content matched its name (a restore): remember the
        file, so that the next checkpoint of an unchanged buffer does not read it again."""
        _remember_file(_file_identity(self.path / "objects" / name))

    def put_blob(
        self, name: str, data: bytes | bytearray | memoryview, alongside: Alongside | None = None
    ) -> None:
        target = self.path / "objects" / name
        write_atomic(target, data, steps=_BLOB_STEPS, alongside=alongside)
        _remember_file(_file_identity(target))

    def put_new_blob(self, data: bytes | bytearray | memoryview, hashes: Alongside) -> str:
        target = write_atomic(
            self.path / "objects", data, _BLOB_STEPS, hashes, name_after=lambda: hashes.join()[0]
        )
        _remember_file(_file_identity(target))
        return target.name

    def read_blob(self, name: str, *, private: bool = False, into: BlobKind = "any") -> ReadBlob:
        """The blob read whole and hashed as it is read; ``private``: the open file's owner and mode
        are checked first (no window for a rename between the check and the read); ``into``: see
        :data:`~resumable_magic.storage.blobs.BlobKind`."""
        path = self.path / "objects" / name
        run = self.path

        def check(st: os.stat_result) -> None:
            check_private(path, st, run=run)

        try:
            return read_blob_file(path, check if private else None, into=into)
        except FileNotFoundError:
            raise CheckpointCorruptError(path, "it is missing") from None
        except OSError as exc:
            raise CheckpointCorruptError(path, f"cannot be read ({exc.strerror})") from None

    def blob_hashes(self, name: str) -> tuple[str, str]:
        return file_hashes(self.path / "objects" / name)

    # -- records ----------------------------------------------------------------------------------------
    def put_record(
        self, name: str, data: bytes, steps: tuple[str, str] | None = None, exclusive: bool = False
    ) -> None:
        # ``exclusive`` is for stores without a mutex; here the lease's lock file serialises commits.
        write_atomic(self.path / name, data, steps)

    def sync(self, folder: str = "") -> None:
        fsync_dir(self.where(folder))

    def read_record(self, name: str, verify: bool) -> bytes:
        return read_record_file(self.path / name, verify)

    def read_plain(self, name: str) -> bytes | None:
        """A file's bytes, or None when it cannot be read (an unsigned record such as outcome.json):
        like the lease's record, never blocking on a FIFO planted in its place."""
        found = self.read_tagged(name)
        return found[0] if found else None

    # -- listing and deleting ---------------------------------------------------------------------------
    def exists(self, name: str = "") -> bool:
        return self.where(name).exists()

    def list(self, folder: str = "") -> builtins.list[str]:
        try:
            return os.listdir(self.where(folder))
        except OSError:
            return []

    def size(self, name: str) -> int:
        """The file's size; OSError when it is missing."""
        return (self.path / name).stat().st_size

    def delete(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path / name)

    def remove_folder(self, folder: str = "") -> None:
        with contextlib.suppress(OSError):
            self.where(folder).rmdir()  # only an empty one

    def move_here(self, source: Where, top: Where) -> bool:
        """One ``rename(2)`` of the whole folder: atomic, so a crash leaves it at one name or the
        other, whole; both parents are then fsynced."""
        src = Path(str(source))
        for folder in (top, *folders_down(top, self.path)[:-1]):
            Path(str(folder)).mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            # Not os.replace: never over a file; over an existing folder only where POSIX allows it,
            # an empty one.
            os.rename(src, self.path)
        except OSError:
            return False
        for parent in dict.fromkeys((self.path.parent, src.parent)):
            with contextlib.suppress(OSError):
                fsync_dir(parent)
        return True

    def temporaries(self) -> builtins.list[str]:
        return [
            f"{folder}/{name}" if folder else name
            for folder in ("", "objects")
            for name in self.list(folder)
            if name.startswith(TMP_PREFIX)
        ]

    def folders(self) -> builtins.list[tuple[str, builtins.list[str]]]:
        found: builtins.list[tuple[str, builtins.list[str]]] = []
        stack = [self.path]
        while stack:
            folder = stack.pop()
            entries = _scandir(folder)
            found.append(
                (
                    folder.relative_to(self.path).as_posix() if folder != self.path else "",
                    [e.name for e in entries],
                )
            )
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.name != "objects" and entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
        return found

    def bytes_in(self, folder: str = "") -> int:
        total = 0
        for inside in (self.where(folder), self.where(folder) / "objects"):
            for entry in _scandir(inside):
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        return total

    def free_space(self) -> int | None:
        try:
            return shutil.disk_usage(self.path).free
        except OSError:
            return None

    # -- the lease's register ---------------------------------------------------------------------------
    def process_lock(self, name: str, timeout: float) -> _FileLock:
        return _FileLock(self.path / name, timeout)

    def read_tagged(self, name: str) -> tuple[bytes, str | None] | None:
        """The file's bytes (no tag: the lock file guards it). O_NONBLOCK: a FIFO planted in its place
        must not hang a listing."""
        try:
            fd = os.open(self.path / name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    return None
                return f.read(), None
        except OSError:
            return None

    def write_tagged(self, name: str, data: bytes, expected: str | None) -> str | None:
        # Not fsynced: a lease only has to outlive its process, not the machine.
        tmp = self.path / f"{TMP_PREFIX}{os.getpid()}-lease-{threading.get_ident()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, self.path / name)
        return None


def _scandir(path: Path) -> builtins.list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except OSError:
        return []


# -- ownership and modes --------------------------------------------------------------------------------


def user_name(uid: int) -> str:
    """``alice (uid 1000)``, or ``uid 1000`` where the name is unknown."""
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def check_private(
    path: str | os.PathLike[str],
    st: os.stat_result | None = None,
    *,
    run: Where | None = None,
    what: str = "checkpoint file",
) -> None:
    """Refuse ``path`` unless the current user owns it and neither group nor others can write it.

    ``st``: its stat, when the caller has the file open (``os.fstat``: no race with a rename).
    ``run``: the run folder, for the message (files in it are fixed by ``resumable trust``; a folder
    above it by ``chmod``). A no-op where there are no POSIX owners. A path that cannot be stat'ed is
    left to the reader, which reports it as missing or unreadable.
    """
    if os.name != "posix":
        return
    path = Path(path)
    if st is None:
        try:
            st = os.stat(path)
        except OSError:
            return
    run = run if run is not None else run_folder(path)
    me = os.geteuid()
    if st.st_uid != me:
        raise UntrustedCheckpointError(
            path,
            f"it is owned by {user_name(st.st_uid)} and you are {user_name(me)}",
            f"If you trust it, copy the run folder so that the copy is yours (`cp -r "
            f"{shlex.quote(str(run))} COPY`) and run `resumable trust COPY`; otherwise delete it, or "
            f"start over with --fresh.",
            what,
        )
    mode = stat.S_IMODE(st.st_mode)
    inside = path == run or run in path.parents
    if not inside and stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX:
        return  # a sticky folder above the run (/tmp, a scratch space): others cannot move our entries
    if mode & 0o022:
        who = {0o020: "its group", 0o002: "others"}.get(mode & 0o022, "its group and others")
        remedy = (
            f"If you trust it, run `resumable trust {shlex.quote(str(run))}`, which also makes the "
            f"run's files private (folders 700, files 600); otherwise delete it."
            if inside
            else f"If you trust everyone who could write to it, make it private: chmod go-w "
            f"{shlex.quote(str(path))}."
        )
        raise UntrustedCheckpointError(
            path,
            f"it is writable by {who} (mode {mode:04o}), so someone else could have put it there",
            remedy,
            what,
        )


def _check_link(path: Path, run: Path) -> None:
    """A folder reached through a symbolic link is the link owner's to redirect: refuse one that is
    not the user's own (the link itself, whatever it points at)."""
    if os.name != "posix":
        return
    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode) and st.st_uid != os.geteuid():
        raise UntrustedCheckpointError(
            path,
            f"it is a symbolic link owned by {user_name(st.st_uid)}, who can point it anywhere",
            f"Use the folder it points at ({shlex.quote(os.path.realpath(path))}) if you trust it, or "
            f"a folder of your own.",
            "checkpoint folder",
        )
