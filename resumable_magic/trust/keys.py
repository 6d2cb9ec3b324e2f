"""Whose checkpoints are loaded: the user's signing key, HMAC signatures and their verification.

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
  writable by group or others. The local storage backend checks that
  (:func:`resumable_magic.storage.local.check_private`), as it reads.

The key is, in this order: ``$RESUMABLE_SIGNING_KEY`` (the key itself: hex, or any text of at
least 16 bytes), the file named by ``$RESUMABLE_SIGNING_KEY_FILE``, or
``<jupyter data dir>/resumable_magic_secret`` (beside Jupyter's own ``notebook_secret``), created on
first use. ``resumable trust PATH`` re-signs checkpoints the user vouches for
(:func:`resumable_magic.store.resign.trust_run`).

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
from pathlib import Path

from resumable_magic.errors import OptionError

__all__ = [
    "ENV_KEY",
    "ENV_KEY_FILE",
    "SECRET_FILE_NAME",
    "default_key_file",
    "key_source",
    "sign",
    "signature_reason",
    "signing_key",
    "trust_remedy",
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


def trust_remedy(run: object, signature_only: bool = False) -> str:
    """What to do about a checkpoint of the run folder ``run`` that is not signed with the user's key;
    ``signature_only``: where it lives the signature is the only check (object storage)."""
    if signature_only:
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
