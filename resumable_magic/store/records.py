"""The records of the checkpoint format: sealing (checksum + signature) and unsealing of manifests
and completion records, and the checks a manifest's fields must pass.

The run store decides which files a run has and when they are written; this module says what a
valid record is. No I/O here but reading a record through its folder's backend when no bytes are
given (:func:`unseal`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from typing import Any

from resumable_magic.errors import CheckpointCorruptError, CheckpointFormatError, UntrustedCheckpointError
from resumable_magic.storage.base import open_backend
from resumable_magic.storage.blobs import STRONG_HASH
from resumable_magic.storage.blobs import digest as digest
from resumable_magic.storage.paths import Where, run_folder
from resumable_magic.trust import keys as trust

__all__ = [
    "BLOB_HASHES",
    "DIGEST_ALGORITHM",
    "FORMAT_VERSION",
    "canonical",
    "check_manifest",
    "digest",
    "known_strong",
    "manifest_blobs",
    "remember_strong",
    "seal",
    "unseal",
]

FORMAT_VERSION = 1
DIGEST_ALGORITHM = "xxh3_128"


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


_SIGNED = b"resumable_magic record\n"  # a signature is over this, then the record's canonical JSON
_strong_put: dict[str, str] = {}  # name -> BLAKE3 of the bytes this process stored under that name
BLOB_HASHES = f"blob_{STRONG_HASH}"  # the manifest field: {blob name: its BLAKE3}


def seal(record: dict[str, Any], blob_hash: Callable[[str], str] | None = None) -> bytes:
    """JSON with a checksum over its canonical form, so a torn or edited record is detected, and a
    signature with the user's key (:mod:`resumable_magic.trust.keys`), so a planted or foreign one is refused.

    A manifest records the BLAKE3 of every blob it names (:data:`BLOB_HASHES`), so that the signature
    covers the blobs' content: their xxh3 names detect damage, not forgery (xxh3 collisions are easy
    to construct). The hash is the one the record has, else that of the bytes :meth:`RunStore.put_blob`
    stored under the name in this process, else (given ``blob_hash``) that of the stored blob.
    """
    body = {k: v for k, v in record.items() if k not in ("checksum", "signature")}
    if "state" in body:  # a manifest
        recorded = body.get(BLOB_HASHES)
        known: dict[str, str] = recorded if isinstance(recorded, dict) else {}
        hashes: dict[str, str] = {}
        with contextlib.suppress(CheckpointCorruptError, OSError):  # names no blob: nothing to hash
            for name, _ in manifest_blobs(body):
                found = known.get(name) or _strong_put.get(name)
                if found is None and blob_hash is not None:
                    found = blob_hash(name)
                if found is not None:
                    hashes[name] = found
        if hashes or BLOB_HASHES in body:
            body[BLOB_HASHES] = hashes
    signed = {**body, "signature": trust.sign(_SIGNED + canonical(body))}
    return json.dumps(
        {**signed, "checksum": digest(canonical(signed))}, indent=1, ensure_ascii=False
    ).encode()


def known_strong(name: str) -> str | None:
    """The BLAKE3 of the bytes this process stored under blob ``name``, if it stored any."""
    return _strong_put.get(name)


def remember_strong(name: str, value: str) -> None:
    if len(_strong_put) > 4096:
        _strong_put.clear()
    _strong_put[name] = value


def unseal(
    path: Where, verify: bool = True, raw: bytes | None = None, *, signature_only: bool = False
) -> dict[str, Any]:
    """A sealed record's fields (without its checksum and signature), once its checksum and format
    check out and, with ``verify``, its owner, mode and signature: otherwise
    :class:`~resumable_magic.errors.UntrustedCheckpointError`. ``verify=False``: for ``resumable
    trust``, which re-signs what it verified, and for collection, which keeps what kept manifests name.
    ``raw``: the record's bytes, read by the caller's backend (else read here through the backend of
    ``path``'s folder). ``signature_only``: the record lives where the signature is the only check
    (object storage), which the remedy in a refusal says."""
    if raw is None:
        raw = open_backend(path.parent).read_record(path.name, verify)
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
        text = canonical(body)
    except (ValueError, RecursionError):  # a lone surrogate ("\ud800") parses but cannot be encoded
        raise CheckpointCorruptError(path, "it holds text that cannot be encoded") from None
    if digest(text) != record["checksum"]:
        raise CheckpointCorruptError(path, "its checksum does not match its content")
    version = record.get("format")
    if version != FORMAT_VERSION:
        raise CheckpointFormatError(path, version, FORMAT_VERSION)
    signature = body.pop("signature", None)
    if verify and not trust.verify(_SIGNED + canonical(body), signature):
        raise UntrustedCheckpointError(
            path, trust.signature_reason(signature), trust.trust_remedy(run_folder(path), signature_only)
        )
    return body


_BLOB_NAME_RE = re.compile(r"[0-9a-f]{1,128}")
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "names": list,
    "inputs": dict,
    "code": (str, type(None)),
    "history": (list, type(None)),
    "origin": (dict, type(None)),
}


def check_manifest(path: Where, manifest: dict[str, Any]) -> None:
    """The fields readers rely on have their types: a valid checksum over wrong ones (a foreign or
    buggy writer) is damage too, not a TypeError in a reader later."""
    position, created = manifest.get("position"), manifest.get("created")
    if type(position) is not int or position < 0:
        raise CheckpointCorruptError(path, f"its position {str(position)[:40]!r} is not a count")
    if not isinstance(created, (int, float)) or isinstance(created, bool) or not 0 <= created < 1e11:
        raise CheckpointCorruptError(path, f"its time {str(created)[:40]!r} is not a wall-clock time")
    for name, _ in manifest_blobs(manifest):
        if not _BLOB_NAME_RE.fullmatch(name):
            raise CheckpointCorruptError(path, f"it names a blob {name[:80]!r} that is no digest")
    for name, kinds in _FIELD_TYPES.items():
        if name in manifest and not isinstance(manifest[name], kinds):
            raise CheckpointCorruptError(path, f"its {name!r} is a {type(manifest[name]).__name__}")


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
