"""Runs in the folders earlier versions gave their keys: found, checked, and moved to their own.

Earlier versions named a key's folder by :func:`~resumable_magic.store.keys.legacy_relpath`, which
gave ``exp/α`` and ``exp/β`` one folder; this version gives every key its own
(:func:`~resumable_magic.store.keys.key_to_relpath`). So that a run crashed before the upgrade resumes
instead of silently starting over, opening a key whose folder changed looks in its old folder when
the new one holds no run yet (keys whose names are all plain keep their folder: nothing is looked up):

* the old folder's newest record names exactly this key: the run is this key's. On a local disk it is
  moved to the new folder in one atomic rename, and the user is told once with a
  :class:`~resumable_magic.errors.ResumableWarning`. Where it cannot, or must not, be moved in one step
  (an object store; a live process holds its lease; the folders of nested keys are in it, whose own
  old folders would move out of reach; the new folder exists), it is used where it is, and said so.
  An old ``a/objects`` that is also run ``a``'s blob folder is refused, never moved.
* it names another key whose folder under today's names is this very folder (``exp/_``, a plain key):
  that run is simply not this one's, and the new folder is used.
* anything else (another key, a key that cannot be read, two old folders holding this key): refused
  with :class:`~resumable_magic.errors.LegacyFolderError`, naming the old folder, before anything runs.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any

from resumable_magic.errors import LegacyFolderError, OptionError, ResumableWarning
from resumable_magic.lease.lease import owner_state, read_lease
from resumable_magic.storage.base import Backend, open_backend
from resumable_magic.storage.paths import Where, folders_down
from resumable_magic.store.keys import canonical_key, key_to_relpath, legacy_relpaths, same_key
from resumable_magic.store.layout import _GLANCE_MAX, MANIFEST_RE, holds_run

__all__ = ["Folder", "find_folder", "recorded_key"]


@dataclass(frozen=True)
class Folder:
    """Where run ``key`` lives: ``path``; ``old``: the earlier version's folder it was found in
    (moved from, when ``path`` differs; used where it is, when they are equal)."""

    key: str
    path: Where
    old: Where | None = None


def find_folder(directory: Where, key: str) -> Folder:
    """The folder of run ``key`` under ``directory``: its own, or the one an earlier version gave it
    (moved to its own where that is safe). :class:`~resumable_magic.errors.OptionError` for a bad key,
    :class:`~resumable_magic.errors.LegacyFolderError` when the old folder may be this run's but is
    not recorded as this key's."""
    canonical = canonical_key(key)
    new = directory / key_to_relpath(canonical)
    olds = legacy_relpaths(key)
    if not olds:  # the usual case: every name plain, the folder the same as ever; no I/O
        return Folder(canonical, new)
    new_backend = open_backend(new)
    if holds_run(new_backend.list("")):
        return Folder(canonical, new)
    mine: list[tuple[Where, Backend]] = []
    for relpath in olds:
        old = directory / relpath
        backend = open_backend(old)
        names = backend.list("")
        if not holds_run(names):
            continue  # no run there (none, or only the folders of nested keys)
        recorded = recorded_key(backend, names)
        if not same_key(recorded, canonical):
            if _own_folder(directory, recorded) != old:  # else: another key's own folder, today too
                raise _refusal(directory, canonical, old, recorded, new)
            continue
        if old.name == "objects" and holds_run(open_backend(old.parent).list("")):
            # 'a/objects' was run 'a''s blob folder too: moving it would take that run's blobs.
            found = f"is also the blob folder of the run in {str(old.parent)!r}, which must stay"
            remedy = (
                f"Its manifest.*.json files are {canonical!r}'s: delete them, and run this again: "
                f"{canonical!r} then starts from the beginning in its own folder."
            )
            raise LegacyFolderError(canonical, old, recorded, new, found, remedy)
        mine.append((old, backend))
    if len(mine) > 1:
        found = (
            f"holds run {canonical!r}, and so does {str(mine[0][0])!r} (earlier versions took the key "
            f"as typed: one has its accents composed, the other decomposed)"
        )
        remedy = "Keep the one to resume (see `resumable status`), move the other away, and run this again."
        raise LegacyFolderError(canonical, mine[1][0], canonical, new, found, remedy)
    if not mine:
        return Folder(canonical, new)
    old, backend = mine[0]
    why = _held(backend) or _nested(backend)
    if why is None:
        if new_backend.move_here(old, directory):
            _remove_empty(directory, old)
            _tell(
                f"Run {canonical!r} was in {str(old)!r}, the folder earlier versions of resumable_magic "
                f"gave it, and was moved to {str(new)!r}, its own folder from now on: a key's folder now "
                f"tells apart keys that differ in letter case, in characters outside "
                f"a-z 0-9 . _ = , + @ - or after their first 120 (see the docs' 'On disk' page)."
            )
            return Folder(canonical, new, old)
        if holds_run(new_backend.list("")) or not holds_run(backend.list("")):
            return Folder(canonical, new)  # another process moved it at the same time
        if not new_backend.local:
            why = "object storage cannot move a folder in one step"
        elif new_backend.exists(""):
            why = "that folder exists already, holding other keys' folders"
        else:
            why = "the file system refused to rename it"
    _tell(
        f"Run {canonical!r} is in {str(old)!r}, the folder earlier versions of resumable_magic gave it, "
        f"and is used there rather than moved to {str(new)!r}, its folder under this version's names "
        f"({why}). That is safe: it is found there each time it is opened."
    )
    return Folder(canonical, old, old)


def recorded_key(backend: Backend, names: list[str]) -> str | None:
    """The key the newest readable record of a run folder names (manifests newest first, then DONE),
    read but not verified: it only chooses the folder, whose records are verified, and their key
    checked, when the run opens. None when no record names one."""
    manifests = sorted((n for n in names if MANIFEST_RE.match(n)), reverse=True)
    for name in [*manifests, *(["DONE"] if "DONE" in names else [])]:
        raw = backend.read_plain(name)
        try:
            record = json.loads(raw[:_GLANCE_MAX]) if raw else None
        except (ValueError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(record, dict) and isinstance(record.get("key"), str):
            return str(record["key"])
    return None


_WHY = (
    "Earlier versions gave keys that differ only in characters outside a-z A-Z 0-9 . _ = , + @ -, "
    "after their first 120, or (on a disk that ignores case) in letter case one folder, so it may "
    "hold {key!r}'s checkpoints continued by {other!r}, or none of them."
)


def _refusal(directory: Where, key: str, old: Where, recorded: str | None, new: Where) -> LegacyFolderError:
    """The refusal of an old folder that holds a run of another key, or of no readable key."""
    if recorded is None:
        found = "holds a run whose records cannot be read or name no key"
        remedy = (
            f"Look at it with `resumable status`; if it is not this run's, move it away or delete it, and "
            f"run this again: {key!r} then starts from the beginning."
        )
        return LegacyFolderError(key, old, recorded, new, found, remedy)
    why = _WHY.format(key=key, other=recorded)
    own = _own_folder(directory, recorded)
    if own is not None and holds_run(open_backend(own).list("")):
        found = f"holds an older copy of run {recorded!r}, which has its own folder {str(own)!r} already"
        remedy = (
            f"{why} Move it away or delete it, and run this again: {key!r} then starts from the beginning."
        )
    else:
        found = f"holds run {recorded!r}"
        remedy = (
            f"{why} If it is {recorded!r}'s, open {recorded!r} once (run it, or resumable_magic.load it), "
            f"which moves it to its own folder, and run this again: {key!r} then starts from the "
            f"beginning. Otherwise move the folder away or delete it."
        )
    return LegacyFolderError(key, old, recorded, new, found, remedy)


def _own_folder(directory: Where, key: str | None) -> Where | None:
    try:
        return directory / key_to_relpath(key) if key is not None else None
    except OptionError:
        return None


def _held(backend: Backend) -> str | None:
    """Why the folder must not be moved now (a live process holds its lease), or None."""
    try:
        owner = read_lease(backend)
    except RecursionError:  # JSON nested deeper than the parser goes: no lease a run wrote
        return None
    return "a live process holds it" if owner is not None and owner_state(owner) == "live" else None


def _nested(backend: Backend) -> str | None:
    """Why the folder must not be moved: it holds the folders of nested keys, whose own old folders
    are in it (moved along, they would not be found), or None."""
    if any(folder for folder, _ in backend.folders()):
        return "it holds the folders of other keys too, which must not move with it"
    return None


def _remove_empty(directory: Where, old: Where) -> None:
    """The folders a nested key's old folder was in, if the move left them empty (as ``resumable rm``
    does)."""
    for folder in reversed(folders_down(directory, old)[:-1]):
        open_backend(folder).remove_folder("")


_TOLD: dict[Any, Any] = {}  # the warnings registry of these messages


def _tell(message: str) -> None:
    # Once per message and process (the "default" action, with one registry whichever layer opened
    # the run: the magic, the core, the catalog), so once per run moved. Shown as coming from the
    # package: a line of its code would tell the reader nothing.
    warnings.warn_explicit(message, ResumableWarning, "resumable_magic", 0, registry=_TOLD)
