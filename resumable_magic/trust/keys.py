"""Whose checkpoints are loaded: a signing key, HMAC signatures, and ssh-style permission checks.

Unpickling a checkpoint runs code from it, so a checkpoint folder is an attack surface (a shared
project folder, a world-writable scratch space, a checkpoint copied from a colleague). Two checks
stand between a planted file and ``pickle.loads``:

* **Signatures.** Every manifest and completion record is signed with a secret key (HMAC-SHA256
  over its canonical JSON, in the style of Jupyter's notebook trust signatures). A manifest records
  the BLAKE3 hash of every blob it names, so the signature covers the pickled state too (the blobs'
  own names are xxh3 checksums, which catch damage, not forgery; see blobs.py). A record whose signature does not
  verify is never unpickled. On object stores, which have no owner bits, this is the protection.
* **Ownership and modes** (POSIX): a checkpoint file, its run folder, ``objects/`` and the
  checkpoint folder must be owned by the current user (root included, as ssh checks) and not
  writable by group or others.

The key is, in this order: ``$RESUMABLE_SIGNING_KEY`` (the key itself: hex, or any text of at
least 16 bytes), the file named by ``$RESUMABLE_SIGNING_KEY_FILE``, or
``<jupyter data dir>/resumable_magic_secret`` (beside Jupyter's own ``notebook_secret``), created on
first use. ``resumable trust PATH`` re-signs checkpoints the user vouches for (:func:`trust_run`).

No IPython here; ``jupyter_core`` is imported only to find the default key's folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import shlex
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from resumable_magic.errors import OptionError, ResumableError, UntrustedCheckpointError

__all__ = [
    "ENV_KEY",
    "ENV_KEY_FILE",
    "SECRET_FILE_NAME",
    "TrustReport",
    "check_private",
    "default_key_file",
    "find_runs",
    "key_source",
    "sign",
    "signing_key",
    "trust_run",
    "verify",
]

ENV_KEY = "RESUMABLE_SIGNING_KEY"
ENV_KEY_FILE = "RESUMABLE_SIGNING_KEY_FILE"
SECRET_FILE_NAME = "resumable_magic_secret"
SCHEME = "hmac-sha256"
MIN_KEY_BYTES = 16
_ENV_KEYS = (ENV_KEY, ENV_KEY_FILE, "JUPYTER_DATA_DIR", "XDG_DATA_HOME", "HOME", "JUPYTER_PLATFORM_DIRS")
_cache: dict[tuple[str | None, ...], bytes] = {}
_ELSEWHERE = f"; set ${ENV_KEY_FILE} to a key file elsewhere, or ${ENV_KEY} to the key itself"


# -- the key -----------------------------------------------------------------------------------------


def default_key_file() -> Path:
    """``<jupyter data dir>/resumable_magic_secret`` (``~/.local/share/jupyter`` on Linux)."""
    try:
        from jupyter_core.paths import jupyter_data_dir
    except ImportError:  # a plain script without Jupyter installed: the same place by the XDG rule
        base = os.environ.get("JUPYTER_DATA_DIR")
        if base:
            return Path(base) / SECRET_FILE_NAME
        data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(data) / "jupyter" / SECRET_FILE_NAME
    return Path(jupyter_data_dir()) / SECRET_FILE_NAME


def key_source() -> str:
    """Where the key comes from, for messages: ``$RESUMABLE_SIGNING_KEY`` or a key file's path."""
    if os.environ.get(ENV_KEY):
        return f"${ENV_KEY}"
    if os.environ.get(ENV_KEY_FILE):
        return f"the key file {os.environ[ENV_KEY_FILE]!r} named by ${ENV_KEY_FILE}"
    return f"the key file {str(default_key_file())!r}"


def signing_key() -> bytes:
    """The user's secret key (cached per process, per value of the environment variables it reads)."""
    cache_key = tuple(os.environ.get(name) for name in _ENV_KEYS)
    key = _cache.get(cache_key)
    if key is None:
        key = _cache[cache_key] = _resolve_key()
    return key


def _resolve_key() -> bytes:
    text = os.environ.get(ENV_KEY)
    if text:
        return _parse_key(text.encode(), ENV_KEY)
    named = os.environ.get(ENV_KEY_FILE)
    if named:
        try:
            return _read_key_file(Path(named), ENV_KEY_FILE)
        except OSError as exc:
            raise OptionError(ENV_KEY_FILE, named, f"the key file cannot be read ({exc.strerror})") from None
    path = default_key_file()
    try:
        return _read_key_file(path, "the key file")
    except FileNotFoundError:
        return _create_key_file(path)
    except OSError as exc:
        raise OptionError(
            "the key file", str(path), f"it cannot be read ({exc.strerror}){_ELSEWHERE}"
        ) from None


def _parse_key(raw: bytes, where: str) -> bytes:
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode("ascii")) if len(text) % 2 == 0 else text
    except (UnicodeDecodeError, ValueError):
        key = text  # not hex: the text itself is the key
    if len(key) < MIN_KEY_BYTES:
        raise OptionError(
            where,
            f"<a key of {len(key)} bytes>",
            f"a signing key has at least {MIN_KEY_BYTES} bytes (a short one can be guessed from any "
            f"signed checkpoint); make one with: python -c 'import secrets; print(secrets.token_hex(32))'",
        )
    return key


def _read_key_file(path: Path, where: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if os.name == "posix" and mode & 0o027:
            raise OptionError(
                where,
                str(path),
                f"its permissions {mode:04o} are too open: whoever can read the signing key can sign "
                f"checkpoints that your kernels will load, and whoever can write it can replace it. "
                f"Make it private: chmod 600 {shlex.quote(str(path))} (a group may read it, for a team)",
            )
        raw = f.read()
    return _parse_key(raw, f"{where} {str(path)!r}")


def _create_key_file(path: Path) -> bytes:
    """A new random key in ``path``, published atomically: of two processes creating it at once, both
    end with the one that was linked into place first."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32).hex().encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # never replaces a key another process published first
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links: an exclusive create instead
                _create_exclusive(path, tmp.read_bytes())
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return _read_key_file(path, "the key file")
    except OSError as exc:
        raise OptionError(
            "the key file", str(path), f"it cannot be created ({exc.strerror}){_ELSEWHERE}"
        ) from None


def _create_exclusive(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(100):  # the other creator is writing its 65 bytes: wait for them (<= 1 s)
            if len(path.read_bytes()) >= len(data):
                return
            time.sleep(0.01)
        return
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sign(data: bytes) -> str:
    """``"hmac-sha256:<hex>"`` of ``data`` with :func:`signing_key`."""
    return f"{SCHEME}:{hmac.new(signing_key(), data, hashlib.sha256).hexdigest()}"


def verify(data: bytes, signature: object) -> bool:
    """True when ``signature`` is :func:`sign` of ``data`` (compared in constant time)."""
    return isinstance(signature, str) and hmac.compare_digest(signature.encode(), sign(data).encode())


# -- messages ------------------------------------------------------------------------------------------


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def run_folder(path: Path) -> Path:
    """The run folder a checkpoint file belongs to (a blob's is above ``objects/``)."""
    folder = path.parent
    return folder.parent if folder.name == "objects" else folder


def trust_remedy(run: Path) -> str:
    """What to do about a checkpoint that is not signed with the user's key."""
    if not isinstance(run, Path):  # on object storage: the signature is the only check there is
        return (
            f"Checkpoints on object storage are trusted by their signature alone: if you trust "
            f"{str(run)!r}, set ${ENV_KEY} or ${ENV_KEY_FILE} to the key that wrote it (every machine "
            f"sharing the bucket needs the same key); otherwise delete it, or start over with --fresh."
        )
    return (
        f"If you trust it (your own checkpoint from another machine, key or older version, or one a "
        f"colleague gave you), run `resumable trust {shlex.quote(str(run))}` to sign it with your key; "
        f"otherwise delete it, or start over with --fresh."
    )


def signature_reason(signature: object) -> str:
    """Why a record's signature does not verify: missing, of another kind, or made with another key."""
    if signature is None:
        return (
            "it is not signed (written by a resumable_magic from before checkpoints were signed, or "
            "not by resumable_magic)"
        )
    if not isinstance(signature, str) or not signature.startswith(f"{SCHEME}:"):
        return f"its signature is not an {SCHEME} signature"
    return (
        f"it is signed with a different key: this checkpoint was not written with your key "
        f"({key_source()}). Machines that share checkpoints (Dask workers, a team's bucket) need the "
        f"same key: set ${ENV_KEY} or ${ENV_KEY_FILE} on each"
    )


# -- ownership and modes --------------------------------------------------------------------------------


def check_private(
    path: str | os.PathLike[str],
    st: os.stat_result | None = None,
    *,
    run: Path | None = None,
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
            f"it is owned by {_user(st.st_uid)} and you are {_user(me)}",
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


# -- resumable trust PATH -----------------------------------------------------------------------------


@dataclass
class TrustReport:
    """What :func:`trust_run` did to one run folder."""

    run: Path
    signed: list[str] = field(default_factory=list)  # file names re-signed
    skipped: list[str] = field(default_factory=list)  # "name: why" of damaged files left alone
    modes_fixed: int = 0
    notes: list[str] = field(default_factory=list)


def find_runs(path: Path) -> list[Path]:
    """``path`` if it is a run folder, else every run folder under it (nested keys included)."""
    from resumable_magic.store.runstore import MANIFEST_RE

    found, stack = [], [path]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        if any(MANIFEST_RE.match(e.name) or e.name == "DONE" for e in entries):
            found.append(folder)
        stack.extend(
            Path(e.path) for e in reversed(entries) if e.name != "objects" and e.is_dir(follow_symlinks=False)
        )
    return found


def _own_files(run: Path) -> Iterator[Path]:
    yield run
    for folder in (run, run / "objects"):
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.name == "objects" or not entry.is_dir(follow_symlinks=False):
                    yield Path(entry.path)


def _folders_between(top: Path | None, run: Path) -> list[Path]:
    """``top`` and the folders below it that hold ``run`` (not ``run`` itself)."""
    if top is None or top == run or os.name != "posix":
        return []
    try:
        parts = run.relative_to(top).parts
    except ValueError:
        return []
    return [top.joinpath(*parts[:i]) for i in range(len(parts))]


def trust_run(run: Path, top: Path | None = None) -> TrustReport:
    """Re-sign the run at ``run`` with the user's key after verifying every checksum, and make its
    files private. Damaged files are skipped (and reported), never signed. ``top``: the folder the
    user named, when ``run`` was found under it; the folders from it down to ``run`` lose group and
    other write permission.

    Refuses (:class:`~resumable_magic.errors.ResumableError`) a run with files owned by someone else
    (copy it: ``cp -r`` makes the copy yours) and a run being executed (its lease is live).
    """
    from resumable_magic.lease.lease import Lease
    from resumable_magic.storage.blobs import file_hashes
    from resumable_magic.storage.local import fsync_dir as _fsync_dir
    from resumable_magic.storage.local import write_atomic as _write_atomic
    from resumable_magic.store.runstore import (
        BLOB_HASHES,
        MANIFEST_RE,
        CheckpointCorruptError,
        CheckpointFormatError,
        _check_manifest,
        _sealed,
        _unseal,
        manifest_blobs,
    )

    report = TrustReport(run)
    signing_key()  # a missing or malformed key fails here, before anything changes
    me = os.geteuid() if os.name == "posix" else None
    for path in _own_files(run):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise ResumableError(
                f"{str(path)!r} is a symbolic link: copy the run folder (cp -rL) and trust the copy"
            )
        if me is not None and st.st_uid != me:
            raise ResumableError(
                f"{str(path)!r} is owned by {_user(st.st_uid)} and you are {_user(me)}: nothing in "
                f"{str(run)!r} was changed. Copy the run folder, which makes the copy yours (cp -r "
                f"{shlex.quote(str(run))} COPY), then run `resumable trust COPY`"
            )
    for folder in _folders_between(top, run):
        st = os.stat(folder)
        if st.st_mode & 0o022 and st.st_uid == me:
            os.chmod(folder, stat.S_IMODE(st.st_mode) & ~0o022)
            report.modes_fixed += 1
    lease = Lease(run, run.name)
    lease.acquire()  # RunOwnedError while a live process executes the run: it writes with its own key
    try:
        for path in _own_files(run):
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            private = 0o700 if path.is_dir() else 0o600
            if mode != private:
                os.chmod(path, private)
                report.modes_fixed += 1
        with lease.fenced():
            for path in sorted(p for p in run.iterdir() if MANIFEST_RE.match(p.name) or p.name == "DONE"):
                try:
                    body = _unseal(path, verify=False)
                    if path.name != "DONE":
                        _check_manifest(path, body)
                        hashes = {}
                        for name, _ in manifest_blobs(body):
                            blob = run / "objects" / name
                            try:
                                fast, strong = file_hashes(blob)
                            except OSError as exc:
                                raise CheckpointCorruptError(
                                    blob, f"cannot be read ({exc.strerror})"
                                ) from None
                            if fast != name:
                                raise CheckpointCorruptError(blob, "its checksum does not match its content")
                            hashes[name] = strong
                        body[BLOB_HASHES] = hashes
                except (CheckpointCorruptError, CheckpointFormatError) as exc:
                    report.skipped.append(f"{path.name}: {exc}")
                    continue
                _write_atomic(path, _sealed(body))
                report.signed.append(path.name)
            _fsync_dir(run)
    finally:
        lease.release(undo=True)
    parent = run.parent if top is None or top == run else top
    with contextlib.suppress(OSError):
        if os.name == "posix" and os.stat(parent).st_mode & 0o022:
            report.notes.append(
                f"the folder above it, {str(parent)!r}, is writable by others: checkpoints in it are "
                f"refused until you make it private (chmod go-w {shlex.quote(str(parent))})"
            )
    return report
