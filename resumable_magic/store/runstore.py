"""The on-disk format of one run's checkpoints: content-addressed blobs, numbered manifests, a DONE record.

::

    <dir>/<key>/
      objects/<xxh3_128 hex>    pickled state; the name is the checksum
      manifest.<gen>.json       position, fingerprints, metadata, the state blob's digest; self-checksummed
      DONE                      completion record: names the final generation; self-checksummed
      owner.json, owner.lock    the lease of the process executing the run (see lease.py)
      outcome.json              how the last run ended when it did not finish (interrupted, failed)

A checkpoint exists once its manifest is renamed into place and the directory is fsynced: every file
is written to a temporary name, flushed, fsynced, then atomically renamed, so a crash at any point
leaves the previous checkpoint intact. Readers take the newest manifest that verifies (its own
checksum and its blob's) and fall back to older ones, reporting what was damaged. After a commit,
only the new generation and the one before it are kept. The store knows bytes and files, not loops.

The files themselves go through a backend (:mod:`.storage`): on a local disk every write is the
tmp -> fsync -> rename above; on object storage (``s3://``, ``memory://``, :mod:`.objectstore`) each
file is one PUT, the manifest's create-only, and there are no temporaries, renames or fsyncs.

Writes that change what readers see (a manifest, DONE, outcome, collection) run inside ``fence``,
which the run sets to its lease's fence: a writer that lost the run, or that finds a generation newer
than any it knew, raises :class:`~resumable_magic.errors.OwnershipLostError` instead of committing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resumable_magic.errors import (
    CheckpointCorruptError,
    CheckpointFormatError,
    OptionError,
    OwnershipLostError,
    UntrustedCheckpointError,
)
from resumable_magic.storage.blobs import MMAP_MIN, Alongside, ReadBlob, file_hashes, strong_hash
from resumable_magic.storage.local import CRASH_STEPS as CRASH_STEPS
from resumable_magic.storage.local import TMP_PREFIX as TMP_PREFIX
from resumable_magic.storage.local import RemotePath, Where, backend_for, crash_point, location
from resumable_magic.storage.local import listdir as _listdir
from resumable_magic.store.records import BLOB_HASHES as BLOB_HASHES
from resumable_magic.store.records import DIGEST_ALGORITHM as DIGEST_ALGORITHM
from resumable_magic.store.records import FORMAT_VERSION as FORMAT_VERSION
from resumable_magic.store.records import STRONG_HASH, _remember_strong, _strong_put
from resumable_magic.store.records import _canonical as _canonical
from resumable_magic.store.records import _check_manifest as _check_manifest
from resumable_magic.store.records import _sealed as _sealed
from resumable_magic.store.records import _unseal as _unseal
from resumable_magic.store.records import digest as digest
from resumable_magic.store.records import manifest_blobs as manifest_blobs
from resumable_magic.trust import keys as trust

MANIFEST_RE = re.compile(r"^manifest\.(\d+)\.json$")
_KEY_PART_RE = re.compile(r"[^A-Za-z0-9._=,+@-]")


def _read_signed_blob(store: RunStore, manifest: dict[str, Any], name: str) -> Any:
    """Blob ``name``'s bytes for unpickling (writable where local): the user's own private file (on an
    object store: any object), holding exactly the content whose BLAKE3 the signed ``manifest``
    records (a blob with the right xxh3 name is not enough)."""
    path = store.objects / name
    hashes = manifest.get(BLOB_HASHES)
    expected = hashes.get(name) if isinstance(hashes, dict) else None
    if not isinstance(expected, str):
        reason = (
            f"its manifest records no {STRONG_HASH.upper()} hash of it, so the manifest's signature "
            f"does not cover it"
        )
        raise UntrustedCheckpointError(path, reason, trust.trust_remedy(store.path))
    check = None
    if store.backend.checks_permissions:
        check = lambda st: trust.check_private(path, st, run=store.path)  # noqa: E731 (on the open file)
    blob = store.read_blob(name, check)
    if blob.strong != expected:
        reason = (
            f"it is not the content its signed manifest names (the {STRONG_HASH.upper()} hash differs): "
            f"it was replaced after the checkpoint was written"
        )
        raise UntrustedCheckpointError(path, reason, trust.trust_remedy(store.path))
    return blob.data


def folders_down(top: Path, path: Path) -> list[Path]:
    """The folders below ``top`` down to ``path`` (a nested key's), ``path`` included."""
    try:
        parts = path.relative_to(top).parts
    except ValueError:
        return [path]
    return [top.joinpath(*parts[: i + 1]) for i in range(len(parts))] or [path]


def _check_folders(store: RunStore) -> None:
    """The checkpoint folder, a nested key's folders, the run folder and ``objects/``: the user's own
    and writable by nobody else (:func:`.trust.check_private`), or nothing in them is loaded."""
    for folder in dict.fromkeys([store.directory, *folders_down(store.directory, store.path), store.objects]):
        trust.check_private(folder, run=store.path, what="checkpoint folder")


# -- keys ------------------------------------------------------------------------------------------


def key_to_relpath(key: str) -> Path:
    """A run key (``sweep/lr=0.01``) as a safe relative path; characters outside a small set become ``_``."""
    parts = [p for p in key.strip().split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise OptionError("--name", key, "a key is one or more '/'-separated names, none of them '.' or '..'")
    return Path(*(_KEY_PART_RE.sub("_", p)[:120] for p in parts))


# -- one run's checkpoints ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A committed, verified checkpoint: its manifest and (when loaded) its state bytes."""

    generation: int
    manifest: dict[str, Any]
    state: bytes | bytearray = field(repr=False, default=b"")
    # Out-of-band buffers, in order: writable where local (bytearray or anonymous mmap), so arrays
    # restore uncopied.
    buffers: tuple[Any, ...] = field(repr=False, default=())

    @property
    def position(self) -> int:
        return int(self.manifest["position"])

    @property
    def created(self) -> float:
        return float(self.manifest["created"])


_GLANCE_MAX = 4 << 20  # a manifest is a few KiB; a larger file is not one a run wrote


@dataclass(frozen=True)
class Glance:
    """A run's newest generation as :meth:`RunStore.glance` saw it (unverified: for display only)."""

    generation: int | None
    position: int | None
    created: float | None
    total: int | None
    final: bool
    done: bool  # a DONE record is present


@dataclass
class ReadResult:
    """The newest good checkpoint (or None) and the damage found on the way to it."""

    checkpoint: Checkpoint | None
    problems: list[CheckpointCorruptError]


class RunStore:
    """The checkpoints of one run: ``<directory>/<key>/``, on a local disk or an object store.

    ``directory`` is a local folder or an fsspec URL (:func:`.storage.location`); the files go
    through :attr:`backend` (:mod:`.storage`), so this class knows the format, not the medium.
    """

    def __init__(self, directory: str | os.PathLike[str] | RemotePath, key: str) -> None:
        self.directory: Any = location(directory)
        self.key = key
        self.path: Any = self.directory / key_to_relpath(key)
        self.objects: Any = self.path / "objects"
        self.backend: Any = backend_for(self.path)
        # Held around every commit: the run's lease mutex, checking the lease is still this process's.
        self.fence: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
        self.seen_generation = 0  # the newest generation this writer knows of (read or committed)

    @classmethod
    def at(cls, path: Where, key: str) -> RunStore:
        """The store in exactly the folder ``path`` (found by listing), whatever its key maps to."""
        path = path if isinstance(path, RemotePath) else Path(path)
        store = cls(path.parent, "_")
        store.key, store.path, store.objects = key, path, path / "objects"
        store.backend = backend_for(path)
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

    def new_lease(self, timeout: float | None = None) -> Any:
        """A lease on this run (not yet acquired): :class:`~resumable_magic.lease.lease.Lease`."""
        from resumable_magic.lease.lease import make_lease

        return make_lease(self.path, self.key, timeout)

    def owner(self) -> dict[str, Any] | None:
        """The run's lease record (who executes it, its heartbeat and position), or None."""
        from resumable_magic.lease.lease import read_lease

        return read_lease(self.path)

    def glance(self) -> Glance:
        """The newest generation's position and time for display, cheaply: its manifest is read but
        neither verified nor trusted (nothing in it is unpickled). For progress views polling many
        runs; decisions use :meth:`read_latest`."""
        names = self.backend.list("")
        generations = [int(m.group(1)) for m in map(MANIFEST_RE.match, names) if m]
        newest = max(generations, default=None)
        fields: dict[str, Any] = {}
        if newest is not None:
            raw = self.backend.read_plain(self._manifest_name(newest))
            with contextlib.suppress(ValueError, RecursionError, UnicodeDecodeError, TypeError):
                record = json.loads(raw[:_GLANCE_MAX]) if raw else None
                if isinstance(record, dict):
                    fields = record
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
        """True on a local file system (owner and mode checks, fsync, free-space warnings apply)."""
        return bool(self.backend.local)

    # -- writing ------------------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the run's directories (private to the user: a nested key's folders too)."""
        self.backend.ensure(self.directory)

    def put_blob(self, data: bytes | memoryview) -> tuple[str, int]:
        """Store ``data`` under its digest; return (digest, bytes written: 0 when it was already there).

        A blob already there is checked once per process (see the backends' ``has_blob``), so an
        unchanged 1 GiB array costs its xxh3 digest, not a read, at each checkpoint. Its BLAKE3, for the
        signed manifest, is computed while it is written (or once, if it was there).
        """
        name = digest(data)
        known = _strong_put.get(name)
        if self.backend.has_blob(name, data):
            _remember_strong(name, known or strong_hash(data))
            return name, 0
        size = memoryview(data).nbytes
        if known is None and size < MMAP_MIN:
            known = strong_hash(data)  # small: faster than starting a thread
        alongside = Alongside(data) if known is None else None
        self.backend.put_blob(name, data, alongside)
        _remember_strong(name, known or alongside.join())
        return name, size

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
                    self._manifest_name(generation),
                    _sealed(record, self._blob_strong_hash),
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
        # On an object store each listing is a request: collection reuses the one above (only the
        # owner adds manifests, and it deletes older ones only); on disk it lists again, as ever.
        listed = None if self.local else [*listed, self._manifest_name(generation)]
        with self.fence():  # only the owner deletes: never a newer owner's blobs
            self._collect(keep={generation, keep} - {None}, listed=listed)
        return generation

    def mark_finished(self, generation: int, record: dict[str, Any]) -> None:
        """Write the completion record naming the final generation."""
        body = {**record, "format": FORMAT_VERSION, "generation": generation, "key": self.key}
        with self.fence():
            self.backend.put_record("DONE", _sealed(body))
        self.backend.sync()

    def write_outcome(self, record: dict[str, Any]) -> None:
        """Record how the last run ended (interrupted, failed: with the error's last line); atomic."""
        with contextlib.suppress(OSError), self.fence():
            self.backend.put_record("outcome.json", json.dumps(record, ensure_ascii=False).encode())

    def clear_outcome(self) -> None:
        with contextlib.suppress(OSError), self.fence():
            self.backend.delete("outcome.json")

    def read_outcome(self) -> dict[str, Any] | None:
        raw = self.backend.read_plain("outcome.json")
        try:
            record = json.loads(raw) if raw is not None else None
        except (ValueError, RecursionError):
            return None
        return record if isinstance(record, dict) else None

    def stale_temporaries(self) -> list[Path]:
        """Temporary files left by writers that are gone (a crash mid-write); none on object stores."""
        if not self.local:
            return []
        return [
            folder / name
            for folder in (self.path, self.objects)
            for name in _listdir(folder)
            if name.startswith(TMP_PREFIX) and not _pid_alive_other(name)
        ]

    def clean_temporaries(self) -> None:
        """Remove :meth:`stale_temporaries`."""
        for tmp in self.stale_temporaries():
            with contextlib.suppress(OSError):
                os.unlink(tmp)

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
                    self._unseal("DONE")
            except CheckpointCorruptError as exc:
                problems.append(exc)  # a damaged DONE is reported here; finished() says "not finished"
        generations = sorted(self._generations(), reverse=True)
        self.seen_generation = max([self.seen_generation, *generations[:1]])
        try:
            if generations and self.backend.checks_permissions:
                _check_folders(self)
        except UntrustedCheckpointError as exc:
            return ReadResult(None, [*problems, exc])
        for generation in generations:
            try:
                manifest = self._unseal(self._manifest_name(generation))
                _check_manifest(self._manifest_path(generation), manifest)
                if not load_state:
                    self._check_blobs(manifest)
                    return ReadResult(Checkpoint(generation, manifest), problems)
                names = [name for name, _ in manifest_blobs(manifest)]
                state = _read_signed_blob(self, manifest, names[0])
                buffers = tuple(_read_signed_blob(self, manifest, name) for name in names[1:])
            except CheckpointCorruptError as exc:
                problems.append(exc)
                continue
            return ReadResult(Checkpoint(generation, manifest, state, buffers), problems)
        return ReadResult(None, problems)

    def read_blob(self, name: str, check: Callable[[Any], None] | None = None) -> ReadBlob:
        """Blob ``name`` read whole, checked against its name and hashed for the signature (both while
        it is read); ``check`` runs on the open local file's stat first."""
        blob = self.backend.read_blob(str(name), check)
        if blob.name != name:
            raise CheckpointCorruptError(self.objects / str(name), "its checksum does not match its content")
        if not self.local:
            self.backend.mark_verified(name)  # an unchanged blob need not be uploaded again
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
        record = self._unseal("DONE")
        return record if record.get("values_dropped") else None

    def prune(self, dry_run: bool = False) -> int:
        """Keep only the newest good generation and the blobs it names; returns the bytes freed.

        For a run nobody executes (the caller holds its lease). Stale temporaries go too.
        """
        newest = self.read_latest(load_state=False).checkpoint
        if newest is None:
            return 0
        kept = {self._manifest_name(newest.generation), "DONE"}
        kept.update(f"objects/{name}" for name, _ in manifest_blobs(newest.manifest))
        victims = [
            name
            for name in self._files()
            if name not in kept and (name.startswith("objects/") or MANIFEST_RE.match(name))
        ]
        temporaries = [self._name_of(path) for path in self.stale_temporaries()]
        return self._delete([*victims, *temporaries], dry_run)

    def drop_values(self, dry_run: bool = False) -> int:
        """Delete a finished run's checkpoints, keeping a DONE record that says so; returns bytes freed.

        The record keeps the metadata (position, total, params, history), so the run stays listed as
        finished and is never run again by accident (:class:`~resumable_magic.errors.ValuesDroppedError`).
        """
        newest = self.read_latest(load_state=False).checkpoint
        if newest is None or self.finished(newest.generation) is None:
            return 0
        victims = [n for n in self._files() if n.startswith("objects/") or MANIFEST_RE.match(n)]
        if not dry_run:
            kept = ("position", "total", "params", "names", "header", "created", "history", "key")
            record = {k: newest.manifest[k] for k in kept if k in newest.manifest}
            body = {**self._unseal("DONE"), **record, "values_dropped": time.time()}
            with self.fence():
                self.backend.put_record("DONE", _sealed({**body, "format": FORMAT_VERSION}))
                self.backend.sync()
        return self._delete(victims, dry_run)

    def _delete(self, names: list[str], dry_run: bool) -> int:
        freed = 0
        with self.fence():
            for name in names:
                try:
                    size = self.backend.size(name)
                    if not dry_run:
                        self.backend.delete(name)
                except OSError:
                    continue
                freed += size
        return freed

    def _files(self) -> list[str]:
        """The run's own files, as names relative to its folder (``objects/<digest>`` for blobs)."""
        return [*self.backend.list(""), *(f"objects/{n}" for n in self.backend.list("objects"))]

    def _name_of(self, path: Path) -> str:
        return "objects/" + path.name if path.parent == self.objects else path.name

    def finished(self, latest_generation: int | None) -> dict[str, Any] | None:
        """The completion record, if it names the newest good generation (a newer run makes it stale)."""
        if not self.backend.exists("DONE"):
            return None
        try:
            record = self._unseal("DONE")
        except CheckpointCorruptError:  # reported by read_latest: the final checkpoint resumes instead
            return None
        return record if record.get("generation") == latest_generation else None

    # -- internals ----------------------------------------------------------------------------------
    def _manifest_name(self, generation: int) -> str:
        return f"manifest.{generation:08d}.json"

    def _manifest_path(self, generation: int) -> Any:
        return self.path / self._manifest_name(generation)

    def _unseal(self, name: str, verify: bool = True) -> dict[str, Any]:
        """A sealed record of this run read through the backend (see the module's ``_unseal``)."""
        return _unseal(self.path / name, verify, raw=self.backend.read_record(name, verify))

    def _blob_strong_hash(self, name: str) -> str:
        if self.local:
            return file_hashes(self.objects / name)[1]
        return self.backend.read_blob(name).strong

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
                    body = self._unseal(self._manifest_name(generation), verify=False)
                    referenced.update(name for name, _ in manifest_blobs(body))
            elif generation < newest:
                self.backend.delete(self._manifest_name(generation))
        crash_point("collecting")
        for name in self.backend.list("objects"):
            if not name.startswith(TMP_PREFIX) and name not in referenced:
                self.backend.delete(f"objects/{name}")
        if ("DONE" in listed) if listed is not None else self.backend.exists("DONE"):
            try:
                stale = self._unseal("DONE").get("generation") not in keep
            except (CheckpointCorruptError, CheckpointFormatError):
                stale = True
            if stale:
                self.backend.delete("DONE")


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this host (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _pid_alive_other(tmp_name: str) -> bool:
    """True when the temp file belongs to another live process on this host (it may still be writing)."""
    try:
        pid = int(tmp_name[len(TMP_PREFIX) :].split("-", 1)[0])
    except ValueError:
        return False
    return pid != os.getpid() and pid_alive(pid)
