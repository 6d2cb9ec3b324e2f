"""Checkpoints on object storage, through fsspec: one PUT per file, and a lease by conditional writes.

An object store has no rename, no fsync and no file lock, but a single PUT is atomic: readers see the
whole object or none of it. So a checkpoint is committed the way git and restic do on such stores:

* every blob is stored under its content's digest (``objects/<xxh3>``), in one PUT;
* the manifest is written last, in one PUT, and create-only (``If-None-Match: *`` on S3): two
  writers can never both write generation N;
* readers take the newest manifest whose blobs are all there and verify, else an older one.

The lease (``owner.json``) is a compare-and-swap register where the store has one: on S3 each write
carries ``If-Match: <the ETag this process last read>`` (``If-None-Match: *`` for the first), so a
heartbeat or a takeover that raced another writer fails instead of overwriting it. ``memory://`` is
in this process, where a lock makes the same guarantee. Other file systems get a write followed by a
read-back of the token: two processes that take a dead owner's lease within the same round trip can
both believe they hold it until the next heartbeat, when one of them finds the other's token.

What a commit is fenced by, and what it is not: right before the manifest's PUT the lease is read
again and the commit is refused unless it still holds this process's token. A writer stalled between
that read and its PUT for longer than the lease timeout (a laptop put to sleep there) can still land
one manifest after a takeover; it is a complete checkpoint (its blobs were written before), the
create-only PUT means it cannot replace the new owner's, and the new owner's next commit sees a
generation it did not write and stops with :class:`~resumable_magic.errors.OwnershipLostError`.
There are no file permissions on an object store: readers trust a checkpoint by its HMAC signature
only (:mod:`resumable_magic.trust.keys`), so machines sharing a bucket share the signing key.
"""

from __future__ import annotations

import builtins
import contextlib
import re
import threading
from typing import Any

from resumable_magic.errors import CheckpointCorruptError, ResumableError
from resumable_magic.storage.blobs import Alongside, BlobKind, ReadBlob, digest, strong_hash
from resumable_magic.storage.paths import RemotePath, Where

__all__ = ["FsspecBackend", "WriteConflict", "check_protocol", "filesystem"]

# The extra that installs a protocol's fsspec implementation (pip install 'resumable_magic[EXTRA]').
_EXTRAS = {"s3": ("s3", "s3fs"), "s3a": ("s3", "s3fs")}
_MANIFEST_RE = re.compile(r"^manifest\.(\d+)\.json$")
_VERIFIED: set[tuple[str, str]] = set()  # blobs this process wrote or read and verified: (protocol, path)
_MEMORY_LOCK = threading.Lock()  # memory:// lives in this process: a lock is its compare-and-swap


class _NoLock:
    """The lease's mutex where there is none between processes (compare-and-swap instead)."""

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass


class WriteConflict(Exception):
    """A conditional write found the object changed since it was read (the lease lost a race)."""


def check_protocol(url: str, protocol: str) -> str:
    """Make sure fsspec and ``protocol``'s package import; else a one-paragraph ResumableError."""
    extra, package = _EXTRAS.get(protocol, ("fsspec", None))
    install = f"pip install 'resumable_magic[{extra}]'"
    try:
        import fsspec
    except ImportError:
        what = f"fsspec and {package}" if package else "fsspec and the package for this protocol"
        raise ResumableError(
            f"The checkpoint folder {url!r} is a URL, and URLs are reached through fsspec, which is "
            f"not installed. Install the extra: {install} ({what}), or give a local folder."
        ) from None
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise ResumableError(
            f"The checkpoint folder {url!r} names the protocol {protocol!r}, which fsspec does not "
            f"know. Use a local folder, s3://bucket/prefix, memory:// or another fsspec protocol."
        ) from None
    except ImportError as exc:
        hint = f"{install} ({package})" if package else f"the package fsspec names: {exc}"
        raise ResumableError(
            f"The checkpoint folder {url!r} needs fsspec's {protocol!r} implementation, which is not "
            f"installed. Install it: {hint}."
        ) from None
    return protocol


def filesystem(protocol: str) -> Any:
    """fsspec's file system for ``protocol``, configured the fsspec way (``$FSSPEC_S3_ENDPOINT_URL``,
    ``$AWS_*``, fsspec's config files). fsspec caches instances per process and makes a fresh one in
    a forked child (aiobotocore's sessions do not survive a fork)."""
    import fsspec

    return fsspec.filesystem(protocol)


class FsspecBackend:
    """A run folder on an fsspec file system: one PUT per file (see the module doc)."""

    local = False
    checks_permissions = False  # an object store has no owner bits: the signature is the check
    cheap_listing = False  # each listing is a request: a commit's collection reuses its listing
    compare_and_swap = True  # the lease's register: conditional writes (see get_tagged/put_tagged)

    def __init__(self, path: RemotePath) -> None:
        self.path = path
        self.fs = filesystem(path.protocol)
        self.root = self.fs._strip_protocol(str(path)).rstrip("/")
        # Compare-and-swap: S3 has conditional PUTs; memory:// is in this process.
        self.conditional = path.protocol in ("s3", "s3a") or path.protocol == "memory"
        # A forked background writer reaches S3 with its own connections (in_child); memory:// lives
        # in this process's memory, where a child's writes would never reach the parent.
        self.forks = path.protocol != "memory"
        # Manifests are written create-only and never changed: the ones this object wrote or read are
        # kept (a commit's collection reads the kept generations' blob lists without a request).
        self._manifests: dict[str, bytes] = {}
        self._sizes: dict[str, int] | None = None  # from the last folders() listing

    def in_child(self) -> FsspecBackend:
        """This backend for a forked writer: a fresh file system instance. fsspec makes one in a new
        process by itself (its instance cache and IO loop are reset after a fork); aiobotocore's
        sessions and connections must not be shared across a fork."""
        return FsspecBackend(self.path)

    def where(self, name: str = "") -> RemotePath:
        return self.path / name if name else self.path

    def _p(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def ensure(self, top: Where) -> None:
        """Nothing to create: an object store has no folders."""

    def is_folder(self) -> bool:
        """Any prefix can hold runs (an empty one simply holds none)."""
        return True

    def check_folders(self, top: Where) -> None:
        """No owners or modes on an object store: the signature is the check."""

    # -- blobs ------------------------------------------------------------------------------------------
    def has_blob(self, name: str, data: bytes | bytearray | memoryview) -> bool:
        """True for a blob this process wrote or verified and that is still there whole. Others are
        written again: one PUT of the same bytes is atomic and harmless, and cheaper than a read."""
        path = self._p(f"objects/{name}")
        if (self.path.protocol, path) not in _VERIFIED:
            return False
        try:
            return int(self.fs.info(path)["size"]) == memoryview(data).nbytes
        except (OSError, KeyError, ValueError):
            return False

    def put_blob(
        self, name: str, data: bytes | bytearray | memoryview, alongside: Alongside | None = None
    ) -> None:
        # ``alongside`` (a hash computed meanwhile) is awaited by the caller: nothing is renamed here.
        path = self._p(f"objects/{name}")
        view = memoryview(data)
        self.fs.pipe_file(path, view.tobytes() if not isinstance(data, bytes) else data)
        _VERIFIED.add((self.path.protocol, path))

    def put_new_blob(self, data: bytes | bytearray | memoryview, hashes: Alongside) -> str:
        # an object's name is part of its upload: the hashes first
        name = hashes.join()[0]
        self.put_blob(name, data)
        return name

    def mark_verified(self, name: str) -> None:
        _VERIFIED.add((self.path.protocol, self._p(f"objects/{name}")))

    def read_blob(self, name: str, *, private: bool = False, into: BlobKind = "any") -> ReadBlob:
        """The blob and its hashes (``private``: no owners here, the signature is the check). Always
        the downloaded ``bytes`` (``into`` is met as far as a download allows: a ``bytearray`` of the
        state is one copy of it)."""
        data = self._read(f"objects/{name}")
        return ReadBlob(data, digest(data), strong_hash(data))

    def blob_hashes(self, name: str) -> tuple[str, str]:
        blob = self.read_blob(name)
        return blob.name, blob.strong

    # -- records ----------------------------------------------------------------------------------------
    def put_record(
        self, name: str, data: bytes, steps: tuple[str, str] | None = None, exclusive: bool = False
    ) -> None:
        """One PUT. ``exclusive``: create-only (FileExistsError when the object exists)."""
        path = self._p(name)
        if _MANIFEST_RE.match(name):
            self._manifests.pop(name, None)
        if not exclusive:
            self.fs.pipe_file(path, data)
        elif self.path.protocol == "memory":
            with _MEMORY_LOCK:
                if self.fs.exists(path):
                    raise FileExistsError(str(self.where(name)))
                self.fs.pipe_file(path, data)
        elif self.conditional:
            self.fs.pipe_file(path, data, mode="create")  # If-None-Match: *
        else:  # no create-only PUT: the generation check under the lease fence is all there is
            if self.fs.exists(path):
                raise FileExistsError(str(self.where(name)))
            self.fs.pipe_file(path, data)
        if exclusive and _MANIFEST_RE.match(name):
            self._manifests[name] = data

    def sync(self, folder: str = "") -> None:
        """Nothing to do: a PUT is durable when it returns."""

    def read_record(self, name: str, verify: bool) -> bytes:
        cached = self._manifests.get(name)
        if cached is not None:
            return cached
        data = self._read(name)
        if _MANIFEST_RE.match(name) and len(self._manifests) < 64:
            self._manifests[name] = data
        return data

    def read_plain(self, name: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(self._p(name)))
        except OSError:
            return None

    def _read(self, name: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._p(name)))
        except FileNotFoundError:
            raise CheckpointCorruptError(self.where(name), "it is missing") from None
        except OSError as exc:
            raise CheckpointCorruptError(self.where(name), f"cannot be read ({exc})") from None

    # -- listing and deleting -------------------------------------------------------------------------
    def exists(self, name: str = "") -> bool:
        if not name:
            return bool(self.list(""))
        try:
            return bool(self.fs.exists(self._p(name)))
        except OSError:
            return False

    def list(self, folder: str = "") -> builtins.list[str]:
        """Names in ``folder`` (listing bypasses fsspec's listing cache: a new manifest must show)."""
        path = self._p(folder)
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = [str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries]
        return [n for n in names if n and self._p(f"{folder}/{n}" if folder else n) != path]

    def size(self, name: str) -> int:
        return int(self.fs.info(self._p(name))["size"])

    def delete(self, name: str) -> None:
        path = self._p(name)
        self._manifests.pop(name, None)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)
        _VERIFIED.discard((self.path.protocol, path))

    def remove_folder(self, folder: str = "") -> None:
        """Nothing to remove: an object store has no folders, only the objects' names."""

    def move_here(self, source: Where, top: Where) -> bool:
        """Never: an object store moves a folder one object at a time, which a crash can cut short."""
        return False

    def temporaries(self) -> builtins.list[str]:
        return []  # one PUT per object: nothing is left half-written

    def folders(self) -> builtins.list[tuple[str, builtins.list[str]]]:
        """From one recursive listing, which also gives every file's size (kept for :meth:`bytes_in`)."""
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self.root)
        try:
            found = self.fs.find(self.root, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = self.root.strip("/")
        self._sizes = {}
        names: dict[str, list[str]] = {}
        for path, info in found.items():
            relative = path.strip("/")[len(base) :].strip("/") if path.strip("/").startswith(base) else path
            folder, _, name = relative.rpartition("/")
            self._sizes[relative] = int(info.get("size") or 0)
            if folder.endswith("objects") and folder.rpartition("/")[2] == "objects":
                continue
            names.setdefault(folder, []).append(name)
            while folder:  # the prefixes between hold no object but are folders all the same
                folder = folder.rpartition("/")[0]
                names.setdefault(folder, [])
        return sorted(names.items())

    def bytes_in(self, folder: str = "") -> int:
        sizes = self._sizes if self._sizes is not None else self._sizes_below(folder)
        prefix = f"{folder}/" if folder else ""
        total = 0
        for name, size in sizes.items():
            rest = name[len(prefix) :] if name.startswith(prefix) else None
            if rest is not None and (
                "/" not in rest or (rest.startswith("objects/") and rest.count("/") == 1)
            ):
                total += size
        return total

    def _sizes_below(self, folder: str) -> dict[str, int]:
        try:
            found = self.fs.find(self._p(folder), detail=True)
        except (FileNotFoundError, NotADirectoryError, OSError):
            return {}
        base = self.root.strip("/")
        return {
            path.strip("/")[len(base) :].strip("/"): int(info.get("size") or 0)
            for path, info in found.items()
        }

    def free_space(self) -> int | None:
        return None  # an object store does not fill up the way a disk does

    # -- the lease's register ---------------------------------------------------------------------------
    def process_lock(self, name: str, timeout: float) -> _NoLock:
        return _NoLock()  # no lock between processes: conditional writes instead

    def read_tagged(self, name: str) -> tuple[bytes, str | None] | None:
        try:
            return self.get_tagged(name)
        except OSError:
            return None

    def write_tagged(self, name: str, data: bytes, expected: str | None) -> str | None:
        return self.put_tagged(name, data, expected)

    # -- the lease's register ---------------------------------------------------------------------------
    def get_tagged(self, name: str) -> tuple[bytes, str] | None:
        """(bytes, ETag) of object ``name``, read in one request; None when there is none."""
        path = self._p(name)
        if self.path.protocol in ("s3", "s3a"):
            from fsspec.asyn import sync

            try:
                found: tuple[bytes, str] = sync(self.fs.loop, _s3_get_tagged, self.fs, path)
                return found
            except FileNotFoundError:
                return None
        with _MEMORY_LOCK if self.path.protocol == "memory" else contextlib.nullcontext():
            try:
                data = bytes(self.fs.cat_file(path))
            except FileNotFoundError:
                return None
        return data, _content_tag(data)

    def put_tagged(self, name: str, data: bytes, expected: str | None) -> str:
        """Write ``name`` only if it still has the ETag ``expected`` (None: only if it does not exist).
        Returns the new ETag; raises :class:`WriteConflict` when the object changed meanwhile."""
        path = self._p(name)
        if self.path.protocol in ("s3", "s3a"):
            condition = {"IfMatch": expected} if expected is not None else {"mode": "create"}
            try:
                out = self.fs.pipe_file(path, data, **condition)
            except FileNotFoundError:  # If-Match on an object deleted meanwhile
                raise WriteConflict() from None
            except OSError as exc:  # 412 Precondition Failed (s3fs: FileExistsError or EINVAL)
                if isinstance(exc, FileExistsError) or _precondition_failed(exc):
                    raise WriteConflict() from None
                raise
            tag = (out or {}).get("ETag") if isinstance(out, dict) else None
            if tag:
                return str(tag)
            found = self.get_tagged(name)
            if found is None:  # deleted right after our write: the next conditional write will tell
                raise WriteConflict()
            return found[1]
        if self.path.protocol == "memory":
            with _MEMORY_LOCK:
                try:
                    current = _content_tag(bytes(self.fs.cat_file(path)))
                except FileNotFoundError:
                    current = None
                if current != expected:
                    raise WriteConflict()
                self.fs.pipe_file(path, data)
            return _content_tag(data)
        # No compare-and-swap: write, then read back (the window is documented in the module doc).
        found = self.get_tagged(name)
        if (found[1] if found else None) != expected:
            raise WriteConflict()
        self.fs.pipe_file(path, data)
        back = self.get_tagged(name)
        if back is None or back[0] != data:
            raise WriteConflict()
        return back[1]


def _precondition_failed(exc: BaseException) -> bool:
    """True for S3's answer to a conditional PUT that did not hold (412, or 409 for a concurrent one),
    which s3fs turns into an OSError whose cause is botocore's ClientError."""
    cause = exc.__cause__
    response = getattr(cause, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code", ""))
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


async def _s3_get_tagged(fs: Any, path: str) -> tuple[bytes, str]:
    bucket, key, _ = fs.split_path(path)
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    body = response["Body"]
    try:
        data = await body.read()
    finally:
        body.close()
    return data, str(response["ETag"])


def _content_tag(data: bytes) -> str:
    return digest(data)
