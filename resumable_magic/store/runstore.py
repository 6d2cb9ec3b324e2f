"""One run's checkpoints: commit one atomically, read back the newest good one, collect old ones.

The run folder's files are named in :mod:`.layout`, the folder of a key in :mod:`.keys`. A checkpoint exists once its manifest is in
place and durable: every file is written whole before it counts (a temporary, fsynced, renamed on
a disk; one PUT, the manifest's create-only, on an object store), so a crash at any point leaves the
previous checkpoint intact. Readers take the newest manifest that verifies (its own checksum and
signature, its blobs' hashes) and fall back to older ones, reporting what was damaged. After a
commit, only the new generation and the one before it are kept. The store knows the format, not
loops; the files go through a backend (:mod:`resumable_magic.storage.base`).

Writes that change what readers see (a manifest, DONE, outcome, collection) run inside ``fence``,
which the run sets to its lease's fence: a writer that lost the run, or that finds a generation newer
than any it knew, raises :class:`~resumable_magic.errors.OwnershipLostError` instead of committing.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from resumable_magic.errors import (
    CheckpointCorruptError,
    CheckpointFormatError,
    KeyMismatchError,
    OwnershipLostError,
    UntrustedCheckpointError,
)
from resumable_magic.lease.lease import Lease, make_lease, read_lease
from resumable_magic.lease.procs import pid_alive
from resumable_magic.state.buffers import buffer_kinds
from resumable_magic.storage.base import Backend, Buffer, location, open_backend
from resumable_magic.storage.blobs import MMAP_MIN, STRONG_HASH, Alongside, BlobKind, ReadBlob, strong_hash
from resumable_magic.storage.crashpoints import CRASH_STEPS as CRASH_STEPS
from resumable_magic.storage.crashpoints import crash_point
from resumable_magic.storage.paths import TMP_PREFIX as TMP_PREFIX
from resumable_magic.storage.paths import RemotePath, Where, as_where
from resumable_magic.store.keys import key_to_relpath as key_to_relpath
from resumable_magic.store.keys import same_key
from resumable_magic.store.layout import (
    _GLANCE_MAX,
    MANIFEST_RE,
    OUTCOME_FILE,
    Checkpoint,
    Glance,
    ReadResult,
    manifest_name,
)
from resumable_magic.store.oldfolders import find_folder
from resumable_magic.store.records import BLOB_HASHES as BLOB_HASHES
from resumable_magic.store.records import DIGEST_ALGORITHM as DIGEST_ALGORITHM
from resumable_magic.store.records import FORMAT_VERSION as FORMAT_VERSION
from resumable_magic.store.records import (
    check_manifest,
    known_strong,
    manifest_blobs,
    remember_strong,
    seal,
    unseal,
)
from resumable_magic.store.records import digest as digest
from resumable_magic.trust import keys as trust

_KINDS: dict[str, BlobKind] = {"bytes": "bytes", "bytearray": "bytearray"}
# From this size a blob's xxh3 pass before its write (~5 ms) outweighs listing the run's blobs' sizes.
NEW_BLOB_MIN = 64 << 20


def _read_signed_blob(
    store: RunStore, manifest: dict[str, Any], name: str, into: BlobKind = "any"
) -> bytes | bytearray | Any:
    """Blob ``name``'s bytes for unpickling (writable where local; ``into``: a ``bytes`` or
    ``bytearray`` of the state): the user's own private file (on an object store: any object),
    holding exactly the content whose BLAKE3 the signed ``manifest`` records (a blob with the right
    xxh3 name is not enough)."""
    path = store.objects / name
    hashes = manifest.get(BLOB_HASHES)
    expected = hashes.get(name) if isinstance(hashes, dict) else None
    if not isinstance(expected, str):
        reason = (
            f"its manifest records no {STRONG_HASH.upper()} hash of it, so the manifest's signature "
            f"does not cover it"
        )
        raise UntrustedCheckpointError(path, reason, store.trust_remedy())
    blob = store.read_blob(name, private=True, into=into)
    if blob.strong != expected:
        reason = (
            f"it is not the content its signed manifest names (the {STRONG_HASH.upper()} hash differs): "
            f"it was replaced after the checkpoint was written"
        )
        raise UntrustedCheckpointError(path, reason, store.trust_remedy())
    return blob.data


class RunStore:
    """The checkpoints of one run: ``<directory>/<key>/``, on a local disk or an object store.

    ``directory`` is a local folder or an fsspec URL (:func:`.storage.location`); the files go
    through :attr:`backend` (:mod:`resumable_magic.storage.base`), so this class knows the format, not the medium.
    """

    def __init__(self, directory: str | os.PathLike[str] | RemotePath, key: str) -> None:
        """The store of run ``key`` (taken in canonical form, :func:`.keys.canonical_key`) in its own
        folder, or in the folder an earlier version gave it (:func:`.oldfolders.find_folder`, which
        moves it to its own where it can). Every record read is checked to name ``key``."""
        where = location(directory)
        found = find_folder(where, key)
        self._setup(where, found.key, found.path)
        self.expected_key: str | None = found.key
        self.moved_from = found.old  # the earlier version's folder the run was found in, if any

    def _setup(self, directory: Where, key: str, path: Where) -> None:
        self.directory, self.key, self.path = directory, key, path
        self.objects: Where = self.path / "objects"
        self.backend: Backend = open_backend(self.path)
        # Held around every commit: the run's lease mutex, checking the lease is still this process's.
        self.fence: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
        self.seen_generation = 0  # the newest generation this writer knows of (read or committed)
        self._glanced: tuple[int | None, dict[str, Any]] = (None, {})

    @classmethod
    def at(cls, path: Where, key: str, directory: Where | None = None) -> RunStore:
        """The store in exactly the folder ``path`` (found by listing), whatever its key maps to;
        ``directory``: the checkpoint folder it was found in (default: the folder above it). Its
        records are not checked against ``key``: a listing passes the folder's name and takes the
        run's key from its manifest."""
        path = as_where(path)
        store = cls.__new__(cls)
        store._setup(path.parent if directory is None else directory, key, path)
        store.expected_key, store.moved_from = None, None
        return store

    # -- what the layers above ask of the storage, without asking what kind it is ----------------------
    @property
    def can_fork(self) -> bool:
        """True when a forked child can write this run's checkpoints (not ``memory://``)."""
        return bool(self.backend.forks)

    def for_forked_child(self) -> None:
        """Make this store usable in a forked child: its backend's own connections (S3 clients must
        not cross a fork); local files need nothing new."""
        self.backend = self.backend.in_child()

    def accept_verified(self, names: Iterable[str]) -> None:
        """Blobs a forked child stored and verified: the parent need not store them again."""
        for name in names:
            self.backend.mark_verified(str(name))

    def free_space(self) -> int | None:
        """Bytes free where the run's files live; None where that has no meaning (object storage)."""
        result: int | None = self.backend.free_space()
        return result

    def new_lease(self, timeout: float | None = None) -> Lease:
        """A lease on this run (not yet acquired)."""
        return make_lease(self.backend, self.key, timeout)

    def owner(self) -> dict[str, Any] | None:
        """The run's lease record (who executes it, its heartbeat and position), or None."""
        try:
            return read_lease(self.backend)
        except RecursionError:  # JSON nested deeper than the parser goes: no lease a run wrote
            return None

    def glance(self) -> Glance:
        """The newest generation's position and time for display, cheaply: its manifest is read but
        neither verified nor trusted (nothing in it is unpickled). For progress views polling many
        runs; decisions use :meth:`read_latest`."""
        names = self.backend.list("")
        generations = [int(m.group(1)) for m in map(MANIFEST_RE.match, names) if m]
        newest = max(generations, default=None)
        fields: dict[str, Any] = self._glanced[1] if self._glanced[0] == newest else {}
        if newest is not None and not fields:
            raw = self.backend.read_plain(self.manifest_name(newest))
            with contextlib.suppress(ValueError, RecursionError, UnicodeDecodeError, TypeError):
                record = json.loads(raw[:_GLANCE_MAX]) if raw else None
                if isinstance(record, dict):
                    fields = record
            self._glanced = (newest, fields)  # a manifest never changes: read each generation once
        return Glance(
            generation=newest,
            position=fields.get("position") if type(fields.get("position")) is int else None,
            created=fields.get("created") if type(fields.get("created")) in (int, float) else None,
            total=fields.get("total") if type(fields.get("total")) is int else None,
            final=bool(fields.get("final")),
            done="DONE" in names,
        )

    @property
    def local(self) -> bool:
        """True on a local file system: for messages and tests (decisions ask the backend's
        capabilities)."""
        return self.backend.local

    def trust_remedy(self) -> str:
        """What to do about a checkpoint of this run that is not signed with the user's key."""
        return trust.trust_remedy(self.path, signature_only=not self.backend.checks_permissions)

    # -- writing ------------------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the run's directories (private to the user: a nested key's folders too), and check
        them as a reader will (the user's own, writable by nobody else): a folder a resume would
        refuse is refused now, before hours of checkpoints are written into it."""
        self.backend.ensure(self.directory)
        self.backend.check_folders(self.directory)

    def put_blob(self, data: Buffer) -> tuple[str, int]:
        """Store ``data`` under its digest; return (digest, bytes written: 0 when it was already there).

        A blob already there is checked once per process (see the backends' ``has_blob``), so an
        unchanged 1 GiB array costs its xxh3 digest, not a read, at each checkpoint. Its BLAKE3, for the
        signed manifest, is computed while it is written (or once, if it was there). A large blob of a
        size nothing stored has (the first checkpoint's) is new: both hashes are computed while it is
        written, none in a pass before.
        """
        size = memoryview(data).nbytes
        if size >= NEW_BLOB_MIN and self.backend.cheap_listing and not self._holds_blob_of(size):
            hashes = Alongside(data)
            name = self.backend.put_new_blob(data, hashes)
            remember_strong(name, hashes.join()[1])
            return name, size
        name = digest(data)
        known = known_strong(name)
        if self.backend.has_blob(name, data):
            remember_strong(name, known or strong_hash(data))
            return name, 0
        if known is None and size < MMAP_MIN:
            known = strong_hash(data)  # small: faster than starting a thread
        if known is None:
            alongside = Alongside(data, name)
            self.backend.put_blob(name, data, alongside)
            known = alongside.join()[1]
        else:
            self.backend.put_blob(name, data)
        remember_strong(name, known)
        return name, size

    def _holds_blob_of(self, size: int) -> bool:
        for name in self.backend.list("objects"):
            with contextlib.suppress(OSError):
                if self.backend.size(f"objects/{name}") == size:
                    return True
        return False

    def commit(self, manifest: dict[str, Any], keep: int | None = None) -> int:
        """Write the manifest as the next generation, durably; then drop all but it and ``keep``.

        Returns the new generation number.
        """
        self.backend.sync("objects")  # blob renames are durable before any manifest names them
        with self.fence():
            listed = self.backend.list("")
            newest = max(self._generations(listed), default=0)
            if newest > self.seen_generation:
                raise OwnershipLostError(
                    self.key,
                    f"another writer, which committed generation {newest} (this one knew of "
                    f"{self.seen_generation} and no later)",
                )
            generation = newest + 1
            record = {**manifest, "format": FORMAT_VERSION, "generation": generation, "key": self.key}
            try:
                # Create-only where the medium has no mutex (an object store): never over another's.
                self.backend.put_record(
                    self.manifest_name(generation),
                    seal(record, self._blob_strong_hash),
                    steps=("manifest-written", "manifest-synced"),
                    exclusive=True,
                )
            except FileExistsError:
                raise OwnershipLostError(
                    self.key, f"another writer, which committed generation {generation} at the same time"
                ) from None
            self.seen_generation = generation
        crash_point("manifest-renamed")
        self.backend.sync()
        crash_point("committed")
        # Where each listing is a request, collection reuses the one above (only the owner adds
        # manifests, and it deletes older ones only); on disk it lists again, as ever.
        reuse = None if self.backend.cheap_listing else [*listed, self.manifest_name(generation)]
        with self.fence():  # only the owner deletes: never a newer owner's blobs
            self._collect(keep={generation} if keep is None else {generation, keep}, listed=reuse)
        return generation

    def mark_finished(self, generation: int, record: dict[str, Any]) -> None:
        """Write the completion record naming the final generation."""
        body = {**record, "format": FORMAT_VERSION, "generation": generation, "key": self.key}
        with self.fence():
            self.backend.put_record("DONE", seal(body))
        self.backend.sync()

    def write_outcome(self, record: dict[str, Any]) -> None:
        """Record how the last run ended (interrupted, failed: with the error's last line); atomic."""
        with contextlib.suppress(OSError), self.fence():
            self.backend.put_record(OUTCOME_FILE, json.dumps(record, ensure_ascii=False).encode())

    def clear_outcome(self) -> None:
        with contextlib.suppress(OSError), self.fence():
            self.backend.delete(OUTCOME_FILE)

    def read_outcome(self) -> dict[str, Any] | None:
        raw = self.backend.read_plain(OUTCOME_FILE)
        try:
            record = json.loads(raw) if raw is not None else None
        except (ValueError, RecursionError):
            return None
        return record if isinstance(record, dict) else None

    def stale_temporaries(self) -> list[Where]:
        """Temporary files left by writers that are gone (a crash mid-write)."""
        return [self.path / name for name in self.stale_temporary_names()]

    def clean_temporaries(self) -> None:
        """Remove :meth:`stale_temporaries`."""
        for name in self.stale_temporary_names():
            self.backend.delete(name)

    def stale_temporary_names(self) -> list[str]:
        return [name for name in self.backend.temporaries() if not _pid_alive_other(name.rpartition("/")[2])]

    # -- reading ------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return any(True for _ in self._generations())

    def folder_exists(self) -> bool:
        """True when the run's folder exists (on an object store: when anything is stored under it)."""
        return bool(self.backend.exists(""))

    def read_latest(self, load_state: bool = True) -> ReadResult:
        """The newest checkpoint whose manifest and blob verify, with the state bytes loaded.

        ``load_state=False`` (listings): the manifest is verified, the blobs only checked to exist
        with the recorded size, and no state is read: cheap for runs holding gigabytes.
        """
        problems: list[CheckpointCorruptError] = []
        with contextlib.suppress(CheckpointFormatError):  # finished() raises that one
            try:
                if self.backend.exists("DONE"):
                    self.check_key(self.unseal("DONE"))
            except CheckpointCorruptError as exc:
                problems.append(exc)  # a damaged DONE is reported here; finished() says "not finished"
        generations = sorted(self._generations(), reverse=True)
        self.seen_generation = max([self.seen_generation, *generations[:1]])
        try:
            if generations:
                self.backend.check_folders(self.directory)
        except UntrustedCheckpointError as exc:
            return ReadResult(None, [*problems, exc])
        for generation in generations:
            try:
                manifest = self.unseal(self.manifest_name(generation))
                check_manifest(self._manifest_path(generation), manifest)
                self.check_key(manifest)
                if not load_state:
                    self._check_blobs(manifest)
                    return ReadResult(Checkpoint(generation, manifest), problems)
                names = [name for name, _ in manifest_blobs(manifest)]
                state = _read_signed_blob(self, manifest, names[0])
                # The stream says which buffers are bytes and bytearray objects: read into those.
                kinds = [_KINDS[kind] for kind in buffer_kinds(state)]
                buffers = tuple(
                    _read_signed_blob(self, manifest, name, kinds[i] if i < len(kinds) else "any")
                    for i, name in enumerate(names[1:])
                )
            except CheckpointCorruptError as exc:
                problems.append(exc)
                continue
            return ReadResult(Checkpoint(generation, manifest, state, buffers), problems)
        return ReadResult(None, problems)

    def read_blob(self, name: str, *, private: bool = False, into: BlobKind = "any") -> ReadBlob:
        """Blob ``name`` read whole, checked against its name and hashed for the signature (both while
        it is read); ``private``: refused unless it is the user's own private file (where files have
        owners); ``into``: see :data:`~resumable_magic.storage.blobs.BlobKind`."""
        blob = self.backend.read_blob(str(name), private=private, into=into)
        if blob.name != name:
            raise CheckpointCorruptError(self.objects / str(name), "its checksum does not match its content")
        self.backend.mark_verified(name)  # an unchanged blob need not be stored (nor read) again
        return blob

    def _check_blobs(self, manifest: dict[str, Any]) -> None:
        for name, size in manifest_blobs(manifest):
            path = self.objects / name
            try:
                found = self.backend.size(f"objects/{name}")
            except OSError:
                raise CheckpointCorruptError(path, "it is missing") from None
            if size is not None and found != size:
                raise CheckpointCorruptError(path, f"it holds {found} bytes, not the {size} recorded")

    def dropped_values(self) -> dict[str, Any] | None:
        """The completion record of a finished run whose final values ``gc --final-values`` deleted."""
        if not self.backend.exists("DONE"):
            return None
        record = self.check_key(self.unseal("DONE"))
        return record if record.get("values_dropped") else None

    def files(self) -> list[str]:
        """The run's own files, as names relative to its folder (``objects/<digest>`` for blobs)."""
        return [*self.backend.list(""), *(f"objects/{n}" for n in self.backend.list("objects"))]

    def finished(self, latest_generation: int | None) -> dict[str, Any] | None:
        """The completion record, if it names the newest good generation (a newer run makes it stale)."""
        if not self.backend.exists("DONE"):
            return None
        try:
            record = self.unseal("DONE")
        except CheckpointCorruptError:  # reported by read_latest: the final checkpoint resumes instead
            return None
        self.check_key(record)
        return record if record.get("generation") == latest_generation else None

    def check_key(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` (a manifest or DONE, verified), if it names this store's key; a record of another
        run is refused (:class:`~resumable_magic.errors.KeyMismatchError`): its values are not this
        run's. Not checked in a store made by :meth:`at`, whose key the records tell."""
        if self.expected_key is not None and not same_key(record.get("key"), self.expected_key):
            raise KeyMismatchError(self.expected_key, record.get("key"), self.path)
        return record

    # -- internals ----------------------------------------------------------------------------------
    manifest_name = staticmethod(manifest_name)

    def _manifest_path(self, generation: int) -> Where:
        return self.path / self.manifest_name(generation)

    def unseal(self, name: str, verify: bool = True) -> dict[str, Any]:
        """A sealed record of this run read through the backend (see :func:`.records.unseal`)."""
        raw = self.backend.read_record(name, verify)
        return unseal(self.path / name, verify, raw=raw, signature_only=not self.backend.checks_permissions)

    def _blob_strong_hash(self, name: str) -> str:
        return self.backend.blob_hashes(name)[1]

    def _generations(self, listed: list[str] | None = None) -> Iterable[int]:
        for name in self.backend.list("") if listed is None else listed:
            match = MANIFEST_RE.match(name)
            if match:
                yield int(match.group(1))

    def _collect(self, keep: set[int], listed: list[str] | None = None) -> None:
        """Delete manifests not in ``keep`` (older ones only) and blobs no kept manifest names.

        ``listed``: the run folder's names, as listed by the caller (else listed here)."""
        newest = max(keep)
        referenced: set[str] = set()
        for generation in self._generations(listed):
            if generation in keep:
                with contextlib.suppress(CheckpointCorruptError, CheckpointFormatError):
                    body = self.unseal(self.manifest_name(generation), verify=False)
                    referenced.update(name for name, _ in manifest_blobs(body))
            elif generation < newest:
                self.backend.delete(self.manifest_name(generation))
        crash_point("collecting")
        for name in self.backend.list("objects"):
            if not name.startswith(TMP_PREFIX) and name not in referenced:
                self.backend.delete(f"objects/{name}")
        if ("DONE" in listed) if listed is not None else self.backend.exists("DONE"):
            try:
                stale = self.unseal("DONE").get("generation") not in keep
            except (CheckpointCorruptError, CheckpointFormatError):
                stale = True
            if stale:
                self.backend.delete("DONE")


def _pid_alive_other(tmp_name: str) -> bool:
    """True when the temp file belongs to another live process on this host (it may still be writing)."""
    try:
        pid = int(tmp_name[len(TMP_PREFIX) :].split("-", 1)[0])
    except ValueError:
        return False
    return pid != os.getpid() and pid_alive(pid)
