"""What the board's API says about runs: one JSON row per run, shards and sweep members grouped.

A run whose key ends in a shard's name (``squares/shard-0003-of-0008``) or a parameter set
(``sweep/lr=0.01,seed=3``, as ``--params`` and sweeps key runs), or that a plan names, belongs to the
group of its key's parent (the map or sweep). A group is sent as its counts by state; its rows only
when the page has it open, so a board of thousands of members sends a few lines a poll.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from resumable_magic.lease.lease import describe_owner
from resumable_magic.store.catalog import RunInfo

__all__ = ["STATES", "board_json", "group_of", "run_row", "shown_state"]

# The board's states, in the order its summary lists them.
STATES = ("running", "planned", "crashed", "failed", "interrupted", "finished")
_MEMBER_RE = re.compile(r"^(shard-\d{4,}-of-\d{4,}|[^/=]+=[^/]*)$")
_CELL_RE = re.compile(r"^cell-(.+)$")


def group_of(info: RunInfo) -> str | None:
    """The key of the map or sweep ``info`` belongs to, or None for a run of its own."""
    parent, _, last = info.key.rpartition("/")
    if parent and (info.state == "planned" or _MEMBER_RE.match(last)):
        return parent
    return None


def _origin(info: RunInfo, root: Path) -> dict[str, Any]:
    """The notebook (and cell) or script the run came from, relative to the root when inside it."""
    origin = info.manifest.get("origin")
    found: dict[str, Any] = {}
    if isinstance(origin, dict):
        for kind in ("notebook", "script"):
            path = origin.get(kind)
            if isinstance(path, str) and path:
                full = os.path.normpath(root / path)
                found[kind] = os.path.relpath(full, root) if full.startswith(str(root) + os.sep) else path
    for part in info.key.split("/"):
        cell = _CELL_RE.match(part)
        if cell:
            found["cell"] = cell.group(1)
    return found


def _origin_parameters(info: RunInfo) -> str:
    """``n=400`` for a notebook `resumable run` started with ``-p n 400`` (what Resubmit passes again)."""
    origin = info.manifest.get("origin")
    parameters = origin.get("parameters") if isinstance(origin, dict) else None
    return " ".join(f"{k}={v!r}" for k, v in parameters.items()) if isinstance(parameters, dict) else ""


def _first_sentence(text: str) -> str:
    """A damage or trust message's first sentence (the rest, with the remedy, is in the details)."""
    end = text.find(". ")
    return text[: end + 1] if 0 < end < 400 else text[:400]


def shown_state(info: RunInfo, launch: dict[str, Any] | None) -> str:
    """The run's state, or ``running`` while a `resumable run` the board started has not yet taken
    the run's lease (its kernel is starting)."""
    if launch is not None and launch["exit_status"] is None and info.state not in ("running", "finished"):
        return "running"
    return info.state


def run_row(
    info: RunInfo, root: Path, folder: str, launch: dict[str, Any] | None, history: bool = False
) -> dict[str, Any]:
    """One run as the page shows it; with ``history``, the events of its attempts (shown on click)."""
    state = shown_state(info, launch)
    owner = info.owner if state == "running" and info.owner is not None else None
    row: dict[str, Any] = {
        "folder": folder,
        "key": info.key,
        "state": state,
        "params": info.params() or _origin_parameters(info),
        "position": info.position,
        "total": info.total,
        "checkpoint_time": info.created,
        "size": info.size,
        "error": info.error,
        "note": info.note,
        "owner": describe_owner(owner) if owner else None,
        "origin": _origin(info, root),
        "problem": _first_sentence(info.problems[0]) if info.problems else None,
        "launch": launch,
    }
    if history:
        row["history"] = info.manifest.get("history") or []
        row["problems"] = info.problems
    return row


def board_json(
    folders: list[tuple[str, str | None, list[RunInfo]]],
    root: Path,
    open_groups: set[str],
    launches: dict[tuple[str, str], dict[str, Any]],
) -> dict[str, Any]:
    """The API's answer: ``folders`` is (name, error, runs) per folder; ``open_groups`` the group ids
    (``folder + "\\n" + key``) whose rows to send."""
    counts: Counter[str] = Counter()
    out_folders: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    groups: dict[str, dict[str, Any]] = {}
    for name, error, runs in folders:
        out_folders.append({"folder": name, "error": error, "runs": len(runs)})
        for info in runs:
            row_launch = launches.get((name, info.key))
            state = shown_state(info, row_launch)
            counts[state] += 1
            group = group_of(info)
            if group is None:
                rows.append(run_row(info, root, name, row_launch))
                continue
            gid = f"{name}\n{group}"
            entry = groups.setdefault(
                gid, {"id": gid, "folder": name, "key": group, "counts": Counter(), "rows": []}
            )
            entry["counts"][state] += 1
            if gid in open_groups:
                entry["rows"].append(run_row(info, root, name, row_launch))
    for entry in groups.values():
        entry["open"] = entry["id"] in open_groups
        entry["counts"] = dict(entry["counts"])
    return {
        "states": list(STATES),
        "counts": dict(counts),
        "folders": out_folders,
        "runs": rows,
        "groups": sorted(groups.values(), key=lambda g: (g["folder"], g["key"])),
    }
