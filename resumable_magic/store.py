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

Writes that change what readers see (a manifest, DONE, outcome, collection) run inside ``fence``,
which the run sets to its lease's fence: a writer that lost the run, or that finds a generation newer
than any it knew, raises :class:`~resumable_magic.errors.OwnershipLostError` instead of committing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import trust
from .blobs import (
    MMAP_MIN,
    STRONG_HASH,
    Alongside,
    ReadBlob,
    digest,
    file_hashes,
    read_blob_file,
    strong_hash,
)
from .errors import (
    CheckpointCorruptError,
    CheckpointFormatError,
    OptionError,
    OwnershipLostError,
    UntrustedCheckpointError,
)

FORMAT_VERSION = 1
DIGEST_ALGORITHM = "xxh3_128"
MANIFEST_RE = re.compile(r"^manifest\.(\d+)\.json$")
TMP_PREFIX = ".tmp-"
_KEY_PART_RE = re.compile(r"[^A-Za-z0-9._=,+@-]")


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


def _crash_point(step: str) -> None:
    if not _crash_spec:
        return
    target, _, nth = _crash_spec.partition(":")
    if target != step:
        return
    _crash_counts[step] = _crash_counts.get(step, 0) + 1
    if _crash_counts[step] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def crash_point(step: str) -> None:
    """Public hook for the serializer's step (``serialized``); a no-op unless the test env var is set."""
    _crash_point(step)


# -- atomic files ----------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(
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
                _crash_point(steps[0])
            os.fsync(fd)
        finally:
            os.close(fd)
            if alongside is not None:
                alongside.join()
        if steps:
            _crash_point(steps[1])
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


_SIGNED = b"resumable_magic record\n"  # a signature is over this, then the record's canonical JSON
_strong_put: dict[str, str] = {}  # name -> BLAKE3 of the bytes this process stored under that name
_verified: set[tuple[str, int, int, int, int]] = set()  # blob files whose content matched their name
BLOB_HASHES = f"blob_{STRONG_HASH}"  # the manifest field: {blob name: its BLAKE3}


def _sealed(record: dict[str, Any], objects: Path | None = None) -> bytes:
    """JSON with a checksum over its canonical form, so a torn or edited record is detected, and a
    signature with the user's key (:mod:`.trust`), so a planted or foreign one is refused.

    A manifest records the BLAKE3 of every blob it names (:data:`BLOB_HASHES`), so that the signature
    covers the blobs' content: their xxh3 names detect damage, not forgery (xxh3 collisions are easy
    to construct). The hash is the one the record has, else that of the bytes :meth:`RunStore.put_blob`
    stored under the name in this process, else (given ``objects``) that of the file.
    """
    body = {k: v for k, v in record.items() if k not in ("checksum", "signature")}
    if "state" in body:  # a manifest
        known = body.get(BLOB_HASHES) if isinstance(body.get(BLOB_HASHES), dict) else {}
        hashes = {}
        with contextlib.suppress(CheckpointCorruptError, OSError):  # names no blob: nothing to hash
            for name, _ in manifest_blobs(body):
                found = known.get(name) or _strong_put.get(name)
                if found is None and objects is not None:
                    found = file_hashes(objects / name)[1]
                if found is not None:
                    hashes[name] = found
        if hashes or BLOB_HASHES in body:
            body[BLOB_HASHES] = hashes
    signed = {**body, "signature": trust.sign(_SIGNED + _canonical(body))}
    return json.dumps(
        {**signed, "checksum": digest(_canonical(signed))}, indent=1, ensure_ascii=False
    ).encode()


def _remember(cache: dict[str, str] | set[Any], item: Any, value: str | None = None) -> None:
    if len(cache) > 4096:
        cache.clear()
    if isinstance(cache, dict):
        cache[item] = value
    else:
        cache.add(item)


def _file_identity(path: Path) -> tuple[str, int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read_record(path: Path, verify: bool) -> bytes:
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


def _read_signed_blob(store: RunStore, manifest: dict[str, Any], name: str) -> bytearray | Any:
    """Blob ``name``'s bytes for unpickling (writable): the user's own private file, holding exactly the
    content whose BLAKE3 the signed ``manifest`` records (a blob with the right xxh3 name is not enough)."""
    path = store.objects / name
    hashes = manifest.get(BLOB_HASHES)
    expected = hashes.get(name) if isinstance(hashes, dict) else None
    if not isinstance(expected, str):
        reason = (
            f"its manifest records no {STRONG_HASH.upper()} hash of it, so the manifest's signature "
            f"does not cover it"
        )
        raise UntrustedCheckpointError(path, reason, trust.trust_remedy(store.path))
    blob = store.read_blob(name, check=lambda st: trust.check_private(path, st, run=store.path))
    if blob.strong != expected:
        reason = (
            f"it is not the content its signed manifest names (the {STRONG_HASH.upper()} hash differs): "
            f"it was replaced after the checkpoint was written"
        )
        raise UntrustedCheckpointError(path, reason, trust.trust_remedy(store.path))
    return blob.data


def _folders_down(top: Path, path: Path) -> list[Path]:
    """The folders below ``top`` down to ``path`` (a nested key's), ``path`` included."""
    try:
        parts = path.relative_to(top).parts
    except ValueError:
        return [path]
    return [top.joinpath(*parts[: i + 1]) for i in range(len(parts))] or [path]


def _check_folders(store: RunStore) -> None:
    """The checkpoint folder, a nested key's folders, the run folder and ``objects/``: the user's own
    and writable by nobody else (:func:`.trust.check_private`), or nothing in them is loaded."""
    for folder in dict.fromkeys(
        [store.directory, *_folders_down(store.directory, store.path), store.objects]
    ):
        trust.check_private(folder, run=store.path, what="checkpoint folder")


def _unseal(path: Path, verify: bool = True) -> dict[str, Any]:
    """A sealed record's fields (without its checksum and signature), once its checksum and format
    check out and, with ``verify``, its owner, mode and signature: otherwise
    :class:`~resumable_magic.errors.UntrustedCheckpointError`. ``verify=False``: for ``resumable
    trust``, which re-signs what it verified, and for collection, which keeps what kept manifests name."""
    raw = _read_record(path, verify)
    if not raw:
        raise CheckpointCorruptError(path, "the file is empty")
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CheckpointCorruptError(path, "it is not valid JSON (torn or overwritten)") from None
    if not isinstance(record, dict) or not isinstance(record.get("checksum"), str):
        raise CheckpointCorruptError(path, "it has no checksum")
    body = {k: v for k, v in record.items() if k != "checksum"}
    try:
        canonical = _canonical(body)
    except (ValueError, RecursionError):  # a lone surrogate ("\ud800") parses but cannot be encoded
        raise CheckpointCorruptError(path, "it holds text that cannot be encoded") from None
    if digest(canonical) != record["checksum"]:
        raise CheckpointCorruptError(path, "its checksum does not match its content")
    version = record.get("format")
    if version != FORMAT_VERSION:
        raise CheckpointFormatError(path, version, FORMAT_VERSION)
    signature = body.pop("signature", None)
    if verify and not trust.verify(_SIGNED + _canonical(body), signature):
        raise UntrustedCheckpointError(
            path, trust.signature_reason(signature), trust.trust_remedy(trust.run_folder(path))
        )
    return body


_BLOB_NAME_RE = re.compile(r"[0-9a-f]{1,128}")
_FIELD_TYPES = {"names": list, "inputs": dict, "code": (str, type(None)), "history": (list, type(None))}


def _check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """The fields readers rely on have their types: a valid checksum over wrong ones (a foreign or
    buggy writer) is damage too, not a TypeError in a reader later."""
    position, created = manifest.get("position"), manifest.get("created")
    if type(position) is not int or position < 0:
        raise CheckpointCorruptError(path, f"its position {str(position)[:40]!r} is not a count")
    if type(created) not in (int, float) or not 0 <= created < 1e11:
        raise CheckpointCorruptError(path, f"its time {str(created)[:40]!r} is not a wall-clock time")
    for name, _ in manifest_blobs(manifest):
        if not _BLOB_NAME_RE.fullmatch(name):
            raise CheckpointCorruptError(path, f"it names a blob {name[:80]!r} that is no digest")
    for name, kinds in _FIELD_TYPES.items():
        if name in manifest and not isinstance(manifest[name], kinds):
            raise CheckpointCorruptError(path, f"its {name!r} is a {type(manifest[name]).__name__}")


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
    # Out-of-band buffers, in order: writable (bytearray or anonymous mmap), so arrays restore uncopied.
    buffers: tuple[Any, ...] = field(repr=False, default=())

    @property
    def position(self) -> int:
        return int(self.manifest["position"])

    @property
    def created(self) -> float:
        return float(self.manifest["created"])


@dataclass
class ReadResult:
    """The newest good checkpoint (or None) and the damage found on the way to it."""

    checkpoint: Checkpoint | None
    problems: list[CheckpointCorruptError]


class RunStore:
    """The checkpoints of one run: ``<directory>/<key>/``."""

    def __init__(self, directory: str | os.PathLike[str], key: str) -> None:
        self.directory = Path(directory)
        self.key = key
        self.path = self.directory / key_to_relpath(key)
        self.objects = self.path / "objects"
        # Held around every commit: the run's lease mutex, checking the lease is still this process's.
        self.fence: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
        self.seen_generation = 0  # the newest generation this writer knows of (read or committed)

    @classmethod
    def at(cls, path: str | os.PathLike[str], key: str) -> RunStore:
        """The store in exactly the folder ``path`` (found by listing), whatever its key maps to."""
        store = cls(Path(path).parent, "_")
        store.key, store.path, store.objects = key, Path(path), Path(path) / "objects"
        return store

    # -- writing ------------------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the run's directories (private to the user: a nested key's folders too)."""
        for path in (self.directory, *_folders_down(self.directory, self.path), self.objects):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def put_blob(self, data: bytes | memoryview) -> tuple[str, int]:
        """Store ``data`` under its digest; return (digest, bytes written: 0 when it was already there).

        A blob already there is read back and checked once per process (then known by its file's
        identity), so an unchanged 1 GiB array costs its xxh3 digest, not a read, at each checkpoint.
        Its BLAKE3, for the signed manifest, is computed while it is written (or once, if it was there).
        """
        name = digest(data)
        target = self.objects / name
        known = _strong_put.get(name)
        ident = _file_identity(target)
        if ident is not None:
            if ident not in _verified:
                with contextlib.suppress(OSError):
                    if file_hashes(target)[0] == name:
                        _remember(_verified, ident)
            if ident in _verified:
                _remember(_strong_put, name, known or strong_hash(data))
                return name, 0
        size = memoryview(data).nbytes
        if known is None and size < MMAP_MIN:
            known = strong_hash(data)  # small: faster than starting a thread
        alongside = Alongside(data) if known is None else None
        _write_atomic(target, data, steps=("blob-written", "blob-synced"), alongside=alongside)
        _remember(_strong_put, name, known or alongside.result)
        _remember(_verified, _file_identity(target))
        return name, size

    def commit(self, manifest: dict[str, Any], keep: int | None = None) -> int:
        """Write the manifest as the next generation, durably; then drop all but it and ``keep``.

        Returns the new generation number.
        """
        _fsync_dir(self.objects)  # blob renames are durable before any manifest names them
        with self.fence():
            newest = max(self._generations(), default=0)
            if newest > self.seen_generation:
                raise OwnershipLostError(
                    self.key,
                    f"another writer, which committed generation {newest} (this one knew of "
                    f"{self.seen_generation} and no later)",
                )
            generation = newest + 1
            record = {**manifest, "format": FORMAT_VERSION, "generation": generation, "key": self.key}
            _write_atomic(
                self._manifest_path(generation),
                _sealed(record, self.objects),
                steps=("manifest-written", "manifest-synced"),
            )
            self.seen_generation = generation
        _crash_point("manifest-renamed")
        _fsync_dir(self.path)
        _crash_point("committed")
        with self.fence():  # only the owner deletes: never a newer owner's blobs
            self._collect(keep={generation, keep} - {None})
        return generation

    def mark_finished(self, generation: int, record: dict[str, Any]) -> None:
        """Write the completion record naming the final generation."""
        body = {**record, "format": FORMAT_VERSION, "generation": generation, "key": self.key}
        with self.fence():
            _write_atomic(self.path / "DONE", _sealed(body))
        _fsync_dir(self.path)

    def write_outcome(self, record: dict[str, Any]) -> None:
        """Record how the last run ended (interrupted, failed: with the error's last line); atomic."""
        with contextlib.suppress(OSError), self.fence():
            _write_atomic(self.path / "outcome.json", json.dumps(record, ensure_ascii=False).encode())

    def clear_outcome(self) -> None:
        with contextlib.suppress(OSError), self.fence():
            os.unlink(self.path / "outcome.json")

    def read_outcome(self) -> dict[str, Any] | None:
        try:
            record = json.loads((self.path / "outcome.json").read_bytes())
        except (OSError, ValueError, RecursionError):
            return None
        return record if isinstance(record, dict) else None

    def stale_temporaries(self) -> list[Path]:
        """Temporary files left by writers that are gone (a crash mid-write)."""
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

    def read_latest(self, load_state: bool = True) -> ReadResult:
        """The newest checkpoint whose manifest and blob verify, with the state bytes loaded.

        ``load_state=False`` (listings): the manifest is verified, the blobs only checked to exist
        with the recorded size, and no state is read: cheap for runs holding gigabytes.
        """
        problems: list[CheckpointCorruptError] = []
        with contextlib.suppress(CheckpointFormatError):  # finished() raises that one
            try:
                if (self.path / "DONE").exists():
                    _unseal(self.path / "DONE")
            except CheckpointCorruptError as exc:
                problems.append(exc)  # a damaged DONE is reported here; finished() says "not finished"
        generations = sorted(self._generations(), reverse=True)
        self.seen_generation = max([self.seen_generation, *generations[:1]])
        try:
            if generations:
                _check_folders(self)
        except UntrustedCheckpointError as exc:
            return ReadResult(None, [*problems, exc])
        for generation in generations:
            try:
                manifest = _unseal(self._manifest_path(generation))
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

    def read_blob(self, name: str, check: Callable[[os.stat_result], None] | None = None) -> ReadBlob:
        """Blob ``name`` read whole and checked against its name (and hashed for the signature);
        ``check`` runs on the open file's stat first."""
        path = self.objects / str(name)
        try:
            blob = read_blob_file(path, check)
        except FileNotFoundError:
            raise CheckpointCorruptError(path, "it is missing") from None
        except OSError as exc:
            raise CheckpointCorruptError(path, f"cannot be read ({exc.strerror})") from None
        if blob.name != name:
            raise CheckpointCorruptError(path, "its checksum does not match its content")
        return blob

    def _check_blobs(self, manifest: dict[str, Any]) -> None:
        for name, size in manifest_blobs(manifest):
            path = self.objects / name
            try:
                found = path.stat().st_size
            except OSError:
                raise CheckpointCorruptError(path, "it is missing") from None
            if size is not None and found != size:
                raise CheckpointCorruptError(path, f"it holds {found} bytes, not the {size} recorded")

    def dropped_values(self) -> dict[str, Any] | None:
        """The completion record of a finished run whose final values ``gc --final-values`` deleted."""
        path = self.path / "DONE"
        if not path.exists():
            return None
        record = _unseal(path)
        return record if record.get("values_dropped") else None

    def prune(self, dry_run: bool = False) -> int:
        """Keep only the newest good generation and the blobs it names; returns the bytes freed.

        For a run nobody executes (the caller holds its lease). Stale temporaries go too.
        """
        newest = self.read_latest(load_state=False).checkpoint
        if newest is None:
            return 0
        kept = {self._manifest_path(newest.generation), self.path / "DONE"}
        kept.update(self.objects / name for name, _ in manifest_blobs(newest.manifest))
        victims = [
            path
            for path in self._files()
            if path not in kept and (path.parent == self.objects or MANIFEST_RE.match(path.name))
        ]
        return self._delete([*victims, *self.stale_temporaries()], dry_run)

    def drop_values(self, dry_run: bool = False) -> int:
        """Delete a finished run's checkpoints, keeping a DONE record that says so; returns bytes freed.

        The record keeps the metadata (position, total, params, history), so the run stays listed as
        finished and is never run again by accident (:class:`~resumable_magic.errors.ValuesDroppedError`).
        """
        newest = self.read_latest(load_state=False).checkpoint
        if newest is None or self.finished(newest.generation) is None:
            return 0
        victims = [p for p in self._files() if p.parent == self.objects or MANIFEST_RE.match(p.name)]
        if not dry_run:
            kept = ("position", "total", "params", "names", "header", "created", "history", "key")
            record = {k: newest.manifest[k] for k in kept if k in newest.manifest}
            body = {**_unseal(self.path / "DONE"), **record, "values_dropped": time.time()}
            with self.fence():
                _write_atomic(self.path / "DONE", _sealed({**body, "format": FORMAT_VERSION}))
                _fsync_dir(self.path)
        return self._delete(victims, dry_run)

    def _delete(self, paths: list[Path], dry_run: bool) -> int:
        freed = 0
        with self.fence():
            for path in paths:
                try:
                    size = path.stat().st_size
                    if not dry_run:
                        path.unlink()
                except OSError:
                    continue
                freed += size
        return freed

    def _files(self) -> list[Path]:
        return [folder / name for folder in (self.path, self.objects) for name in _listdir(folder)]

    def finished(self, latest_generation: int | None) -> dict[str, Any] | None:
        """The completion record, if it names the newest good generation (a newer run makes it stale)."""
        path = self.path / "DONE"
        if not path.exists():
            return None
        try:
            record = _unseal(path)
        except CheckpointCorruptError:  # reported by read_latest: the final checkpoint resumes instead
            return None
        return record if record.get("generation") == latest_generation else None

    # -- internals ----------------------------------------------------------------------------------
    def _manifest_path(self, generation: int) -> Path:
        return self.path / f"manifest.{generation:08d}.json"

    def _generations(self) -> Iterable[int]:
        for name in _listdir(self.path):
            match = MANIFEST_RE.match(name)
            if match:
                yield int(match.group(1))

    def _collect(self, keep: set[int]) -> None:
        """Delete manifests not in ``keep`` (older ones only) and blobs no kept manifest names."""
        newest = max(keep)
        referenced: set[str] = set()
        for generation in self._generations():
            path = self._manifest_path(generation)
            if generation in keep:
                with contextlib.suppress(CheckpointCorruptError, CheckpointFormatError):
                    referenced.update(name for name, _ in manifest_blobs(_unseal(path, verify=False)))
            elif generation < newest:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        _crash_point("collecting")
        for name in _listdir(self.objects):
            if not name.startswith(TMP_PREFIX) and name not in referenced:
                with contextlib.suppress(OSError):
                    os.unlink(self.objects / name)
        done = self.path / "DONE"
        if done.exists():
            try:
                stale = _unseal(done).get("generation") not in keep
            except (CheckpointCorruptError, CheckpointFormatError):
                stale = True
            if stale:
                with contextlib.suppress(OSError):
                    os.unlink(done)


def manifest_blobs(manifest: dict[str, Any]) -> list[tuple[str, int | None]]:
    """(digest, size) of every blob a manifest names: the state stream first, then its out-of-band
    buffers in order; a malformed entry is corruption."""
    try:
        entries = [manifest["state"], *manifest.get("buffers", ())]
        return [
            (str(entry["digest"]), entry.get("size") if isinstance(entry.get("size"), int) else None)
            for entry in entries
        ]
    except (KeyError, TypeError, AttributeError):
        raise CheckpointCorruptError(
            f"manifest generation {manifest.get('generation')}", "it names no state blob"
        ) from None


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


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
