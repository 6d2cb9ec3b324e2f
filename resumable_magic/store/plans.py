"""The plan of a map or sweep: which runs it will make, recorded before any of them starts.

A run folder appears when its run starts; until then only the plan knows the run exists. So that a
board can show members and shards that are planned but not started, the map or sweep writes one
signed record, ``PLANNED``, into its own folder (``<dir>/<key>/PLANNED``) before submitting any work:
its members' names, run keys and parameters. One record per plan, not one per member: a sweep of
thousands starts with one write (one PUT on object storage), not thousands.

``PLANNED`` is upper case, so no key's folder can be named so (:mod:`.keys`: plain folder names are
lower case, other names get a ``~digest``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from resumable_magic.errors import ResumableError
from resumable_magic.storage.base import location, open_backend
from resumable_magic.storage.paths import RemotePath, Where
from resumable_magic.store.keys import canonical_key, key_to_relpath
from resumable_magic.store.records import FORMAT_VERSION, seal, unseal

__all__ = ["PLAN_FILE", "PlannedRun", "read_plan", "remove_plan", "write_plan"]

PLAN_FILE = "PLANNED"


@dataclass(frozen=True)
class PlannedRun:
    """One run a plan names: its key and the parameters it was planned with (for display)."""

    key: str
    params: dict[str, Any]
    planned: float  # wall time the plan was written


def write_plan(
    directory: str | os.PathLike[str] | RemotePath, key: str, members: list[tuple[str, dict[str, Any]]]
) -> None:
    """Record that the map or sweep ``key`` will make the runs ``members`` ((run key, parameters)),
    replacing an earlier plan of ``key``. Signed like a manifest, so a planted plan is not shown."""
    folder = location(directory) / key_to_relpath(key)
    backend = open_backend(folder)
    backend.ensure(location(directory))
    backend.remove_folder("objects")  # ensure() makes a run's blob folder: a plan has no blobs
    record = {
        "format": FORMAT_VERSION,
        "key": canonical_key(key),
        "created": time.time(),
        "members": [{"key": run_key, "params": params} for run_key, params in members],
    }
    backend.put_record(PLAN_FILE, seal(record))


def remove_plan(directory: str | os.PathLike[str] | RemotePath, key: str) -> None:
    """Remove the plan of ``key`` once every run it names has finished: each has its folder now."""
    open_backend(location(directory) / key_to_relpath(key)).delete(PLAN_FILE)


def read_plan(folder: Where) -> list[PlannedRun]:
    """The runs the plan in ``folder`` names; ``[]`` when there is no plan, or it does not verify
    (damaged, another user's, not signed with the user's key)."""
    try:
        record = unseal(folder / PLAN_FILE)
    except (ResumableError, OSError):
        return []
    members, created = record.get("members"), record.get("created")
    if not isinstance(members, list) or not isinstance(created, (int, float)):
        return []
    found = []
    for member in members:
        if isinstance(member, dict) and isinstance(member.get("key"), str):
            params = member.get("params")
            found.append(
                PlannedRun(member["key"], params if isinstance(params, dict) else {}, float(created))
            )
    return found
