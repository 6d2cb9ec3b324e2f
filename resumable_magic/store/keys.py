"""A run key and the name of its folder: one folder per key, and never one folder for two keys.

A key is one or more ``/``-separated names (``sweep/lr=0.01``); each name is one folder level, so a
map's shards (``squares/shard-0003-of-0008``) live inside the map's folder. The key itself is taken in
its canonical form (:func:`canonical_key`): Unicode NFC, white space around each name and empty
names dropped. So ``café`` typed as one code point or as ``e`` plus a combining accent is one key (they look
the same, and macOS hands out file names decomposed), while ``Run`` and ``run`` are two.

Each name becomes a folder name (:func:`folder_name`):

* a *plain* name, made only of ``a-z 0-9 . _ = , + @ -``, at most 120 characters, not ending in
  ``.`` and not the name of a run folder's own file (``objects``, ``owner.json``, ``manifest.*.json``,
  ...), is its own folder name: ``squares``, ``lr=0.01,seed=3``, ``shard-0003-of-0008``, ``cell-1f2e``;
* any other name becomes a readable slug (accents dropped, other characters ``_``, cut to 120), ``~``
  and the first 12 hex digits of the SHA-256 of the name: ``exp/α`` is ``exp/_~<digest>``,
  ``Analysis.ipynb`` is ``Analysis.ipynb~<digest>``, a 130-character name keeps 120 of them.

Why this is injective, also where the file system folds case (macOS, Windows) or normalises Unicode
(macOS): a plain folder name has no ``~`` and no upper-case letter, so it equals no slugged name and no
other plain name even case-folded; two slugged names differ in their digests unless SHA-256's first 48
bits collide, and even then the store refuses to open the folder for the second key, since every record
in it names its key (:class:`~resumable_magic.errors.KeyMismatchError`); and every folder name is
ASCII, so no normalisation of the file system can merge two of them.

Up to this version a name's folder was the name with every other character replaced by ``_`` and cut
to 120 characters, so ``exp/α`` and ``exp/β`` shared ``exp/_``. :func:`legacy_relpath` keeps that rule:
a run in the folder it names is found and moved to its new folder
(:func:`resumable_magic.store.oldfolders.find_folder`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

from resumable_magic.errors import OptionError
from resumable_magic.lease.lease import LEASE_FILE, LOCK_FILE
from resumable_magic.storage.paths import TMP_PREFIX
from resumable_magic.store.layout import AUTORESUME_FILE, MANIFEST_RE, OUTCOME_FILE

__all__ = [
    "DIGEST_DIGITS",
    "NAME_MAX",
    "canonical_key",
    "folder_name",
    "key_parts",
    "key_to_relpath",
    "legacy_relpath",
    "legacy_relpaths",
    "same_key",
]

NAME_MAX = 120  # characters of a plain folder name (and of a slug)
DIGEST_DIGITS = 12  # hex digits of SHA-256 after the "~": 48 bits
_PLAIN_RE = re.compile(rf"[a-z0-9._=,+@-]{{1,{NAME_MAX}}}")
_UNSAFE_RUN_RE = re.compile(r"[^A-Za-z0-9._=,+@-]+")
_LEGACY_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._=,+@-]")
# The names of a run folder's own files: a nested key's folder must not be one of them (a run 'a/objects'
# would live in run 'a''s blob folder, whose collection deletes what it does not know).
_RUN_FILES = frozenset({"objects", "DONE", OUTCOME_FILE, AUTORESUME_FILE, LEASE_FILE, LOCK_FILE})
_WHAT_A_KEY_IS = "a key is one or more '/'-separated names, none of them '.' or '..'"


def key_parts(key: str) -> list[str]:
    """The names of ``key`` in canonical form (NFC; white space around each name, and empty names,
    dropped); :class:`~resumable_magic.errors.OptionError` for a key that is no key."""
    if not isinstance(key, str):
        raise OptionError("--name", key, _WHAT_A_KEY_IS)
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no record could store this key
        raise OptionError("--name", key, "a key is text that can be written as UTF-8") from None
    parts = [p.strip() for p in unicodedata.normalize("NFC", key).split("/") if p.strip()]
    if not parts or any(p in (".", "..") for p in parts):
        raise OptionError("--name", key, _WHAT_A_KEY_IS)
    return parts


def canonical_key(key: str) -> str:
    """``key`` as the store records it: ``" exp// café "`` (decomposed) is ``"exp/café"`` (composed)."""
    return "/".join(key_parts(key))


def same_key(recorded: object, key: str) -> bool:
    """True when a key recorded in a run's files is ``key`` (compared in canonical form)."""
    if not isinstance(recorded, str):
        return False
    try:
        return canonical_key(recorded) == canonical_key(key)
    except OptionError:
        return False


def folder_name(part: str) -> str:
    """The folder name of one name of a canonical key (see the module doc)."""
    if _PLAIN_RE.fullmatch(part) and not (
        part.endswith(".") or part in _RUN_FILES or MANIFEST_RE.match(part) or part.startswith(TMP_PREFIX)
    ):
        return part
    # The slug is for people; the digest of the whole name is what keeps the folders apart.
    letters = "".join(c for c in unicodedata.normalize("NFKD", part) if not unicodedata.combining(c))
    slug = _UNSAFE_RUN_RE.sub("_", letters)[:NAME_MAX] or "_"
    return f"{slug}~{hashlib.sha256(part.encode('utf-8')).hexdigest()[:DIGEST_DIGITS]}"


def key_to_relpath(key: str) -> Path:
    """The folder of run ``key``, relative to the checkpoint folder: ``sweep/lr=0.01`` stays
    ``sweep/lr=0.01``, ``exp/α`` is ``exp/_~<digest>`` (see the module doc)."""
    return Path(*(folder_name(p) for p in key_parts(key)))


def legacy_relpath(key: str) -> Path:
    """The folder earlier versions gave ``key`` (kept, unchanged, to find their runs): each name with
    characters outside ``A-Za-z0-9._=,+@-`` replaced by ``_`` and cut to 120 characters."""
    parts = [p for p in key.strip().split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise OptionError("--name", key, _WHAT_A_KEY_IS)
    return Path(*(_LEGACY_UNSAFE_RE.sub("_", p)[:NAME_MAX] for p in parts))


def legacy_relpaths(key: str) -> list[Path]:
    """The folders where earlier versions may have put run ``key`` but this one does not: its
    :func:`legacy_relpath` as given, composed (NFC) and decomposed (NFD), since an earlier version
    took the key as it came; ``[]`` for a key whose folder did not change (all its names plain)."""
    new = key_to_relpath(key)
    found: list[Path] = []
    for form in (key, unicodedata.normalize("NFC", key), unicodedata.normalize("NFD", key)):
        try:
            old = legacy_relpath(form)
        except OptionError:
            continue
        if old != new and old not in found:
            found.append(old)
    return found
