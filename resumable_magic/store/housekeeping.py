"""Housekeeping of a run folder nobody executes: ``resumable gc`` and ``resumable rm``.

The caller holds the run's lease (or knows nobody runs it): old generations and stale temporaries
are deleted, a finished run's final values dropped (its DONE record kept), or the run removed.
"""

from __future__ import annotations

import time

from resumable_magic.lease.lease import LEASE_FILE, LOCK_FILE
from resumable_magic.storage.base import open_backend
from resumable_magic.storage.paths import TMP_PREFIX, folders_down
from resumable_magic.store.layout import AUTORESUME_FILE, MANIFEST_RE, OUTCOME_FILE
from resumable_magic.store.records import FORMAT_VERSION, manifest_blobs, seal
from resumable_magic.store.runstore import RunStore

__all__ = ["drop_values", "prune", "remove"]


def prune(store: RunStore, dry_run: bool = False) -> int:
    """Keep only the newest good generation and the blobs it names; returns the bytes freed.

    For a run nobody executes (the caller holds its lease). Stale temporaries go too.
    """
    newest = store.read_latest(load_state=False).checkpoint
    if newest is None:
        return 0
    kept = {store.manifest_name(newest.generation), "DONE"}
    kept.update(f"objects/{name}" for name, _ in manifest_blobs(newest.manifest))
    victims = [
        name
        for name in store.files()
        if name not in kept and (name.startswith("objects/") or MANIFEST_RE.match(name))
    ]
    return _delete(store, [*victims, *store.stale_temporary_names()], dry_run)


def drop_values(store: RunStore, dry_run: bool = False) -> int:
    """Delete a finished run's checkpoints, keeping a DONE record that says so; returns bytes freed.

    The record keeps the metadata (position, total, params, history), so the run stays listed as
    finished and is never run again by accident (:class:`~resumable_magic.errors.ValuesDroppedError`).
    """
    newest = store.read_latest(load_state=False).checkpoint
    if newest is None or store.finished(newest.generation) is None:
        return 0
    victims = [n for n in store.files() if n.startswith("objects/") or MANIFEST_RE.match(n)]
    if not dry_run:
        kept = ("position", "total", "params", "names", "header", "created", "history", "key", "origin")
        record = {k: newest.manifest[k] for k in kept if k in newest.manifest}
        body = {**store.unseal("DONE"), **record, "values_dropped": time.time()}
        with store.fence():
            store.backend.put_record("DONE", seal({**body, "format": FORMAT_VERSION}))
            store.backend.sync()
    return _delete(store, victims, dry_run)


def remove(store: RunStore) -> None:
    """Delete this run's own files (nested runs below it stay), then its folder and the empty
    folders of a nested key up to the checkpoint folder. For a run nobody executes."""
    own = ("DONE", OUTCOME_FILE, AUTORESUME_FILE, LEASE_FILE, LOCK_FILE)
    for name in store.files():
        if name.startswith(("objects/", TMP_PREFIX)) or MANIFEST_RE.match(name) or name in own:
            store.backend.delete(name)
    store.backend.remove_folder("objects")
    store.backend.remove_folder("")
    for folder in reversed(folders_down(store.directory, store.path)[:-1]):
        open_backend(folder).remove_folder("")


def _delete(store: RunStore, names: list[str], dry_run: bool) -> int:
    freed = 0
    with store.fence():
        for name in names:
            try:
                size = store.backend.size(name)
                if not dry_run:
                    store.backend.delete(name)
            except OSError:
                continue
            freed += size
    return freed
