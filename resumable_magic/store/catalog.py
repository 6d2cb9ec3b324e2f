"""Every run under a checkpoint folder, and what state each is in: read-only, no IPython.

A *run directory* is one holding ``manifest.*.json`` files; nested keys (``sweep/lr=0.01``) are
sub-folders. For each run :func:`list_runs` reports its key, state, position and total (from the newest
good checkpoint), the time of that checkpoint, its size on disk and, for a failed run, the error's line.

States, decided in this order:

``finished``     the DONE record names the newest good generation.
``running``      the run's lease (``owner.json``, see :mod:`resumable_magic.lease.lease`) is held and live:
                 not released, its heartbeat younger than its timeout and, on this host, its process
                 alive. The heartbeat comes from a thread, so long iterations do not look dead.
``interrupted``  / ``failed``: as recorded in ``outcome.json`` when the last attempt ended.
``crashed``      none of the above: the process died without a word (SIGKILL, OOM, power).

Nothing here writes (but :func:`find_run`, which moves a run out of the folder an earlier version
gave its key, as opening it does): listing is safe next to live runs (a file that vanishes mid-read
is skipped, and a generation collected while it is read is retried once).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from resumable_magic.errors import ResumableError
from resumable_magic.lease.lease import owner_state
from resumable_magic.storage.base import location, open_backend
from resumable_magic.storage.paths import RemotePath, Where, relative_posix
from resumable_magic.store.keys import key_to_relpath, legacy_relpaths, same_key
from resumable_magic.store.layout import Checkpoint, holds_run
from resumable_magic.store.oldfolders import recorded_key
from resumable_magic.store.runstore import RunStore

__all__ = ["STATES", "RunInfo", "find_run", "inspect_run", "list_runs", "names_under", "run_folders"]

STATES = ("finished", "running", "interrupted", "failed", "crashed")


@dataclass
class RunInfo:
    """One run as found on disk (no state bytes are kept)."""

    key: str
    path: Where  # a local folder, or a storage.RemotePath (its str() is the URL)
    state: str
    position: int | None = None
    total: int | None = None
    created: float | None = None  # wall time of the newest good checkpoint
    size: int = 0  # bytes of all the run's files
    error: str | None = None  # the error's line, for a failed run
    note: str | None = None  # anything else worth a word in the table
    generation: int | None = None
    updated: float | None = None  # latest of checkpoint, heartbeat, outcome: the sort key
    owner: dict[str, Any] | None = None  # the lease record (who runs it, last heartbeat, position)
    outcome: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)  # damaged files passed over
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    def progress(self) -> str:
        """``"1,200/5,000"``, ``"1,200"`` without a total, ``"-"`` without a checkpoint."""
        if self.position is None:
            return "-"
        return f"{self.position:,}/{self.total:,}" if self.total is not None else f"{self.position:,}"

    def params(self) -> str:
        """``lr=0.01 seed=3`` for a run keyed by ``--params``; ``""`` otherwise."""
        params = self.manifest.get("params")
        if not isinstance(params, dict):
            return ""
        # A parameter's record ({"text": ..., "json": ...}), or its text (older runs, a map's shards).
        return " ".join(
            f"{name}={value.get('text') if isinstance(value, dict) else value}"
            for name, value in params.items()
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (without the manifest's bulky fields)."""
        record = asdict(self)
        record["path"] = str(self.path)
        record.pop("manifest")
        record["params"] = self.manifest.get("params") or {}
        record["history"] = self.manifest.get("history") or []
        record["origin"] = self.manifest.get("origin")
        return record

    def restarts(self) -> list[str]:
        """The causes of the restarts `resumable run` made, oldest first (a resumed event's ``cause``)."""
        history = self.manifest.get("history")
        events = history if isinstance(history, list) else []
        return [str(e["cause"]) for e in events if isinstance(e, dict) and e.get("cause")]


def list_runs(directory: str | os.PathLike[str] | RemotePath) -> list[RunInfo]:
    """Every run under ``directory`` (a folder or an fsspec URL), most recently active first; ``[]``
    when there is none."""
    root = location(directory)
    backend = open_backend(root)
    runs = [
        inspect_run(root, _join(root, folder), backend.bytes_in(folder))
        for folder, names in backend.folders()
        if holds_run(names)
    ]
    runs.sort(key=lambda r: r.updated or 0.0, reverse=True)
    return runs


def run_folders(directory: str | os.PathLike[str] | RemotePath) -> list[Where]:
    """The run folders at or under ``directory``: the one walk over a checkpoint folder."""
    root = location(directory)
    return [_join(root, folder) for folder, names in open_backend(root).folders() if holds_run(names)]


def find_run(directory: str | os.PathLike[str] | RemotePath, key: str) -> RunInfo | None:
    """The run stored under ``key`` (a key as given to the magic), or None when there is none.

    Like opening the run, this finds a run in the folder an earlier version gave ``key`` and moves
    it to its own (:mod:`.oldfolders`), or refuses an old folder that may not be its."""
    root = location(directory)
    store = RunStore(root, key)  # validates the key (OptionError) and finds its folder
    if not holds_run(store.backend.list("")):
        return None
    return inspect_run(root, store.path, store.backend.bytes_in(""))


def names_under(directory: str | os.PathLike[str] | RemotePath, key: str) -> list[str]:
    """The names directly under the folder of ``key`` (a map's shard folders among them); ``[]``
    when there is no such folder. Where an earlier version gave ``key`` another folder, the runs in
    that one recorded as ``<key>/<name>`` count too: they are this key's, and move when opened."""
    root = location(directory)
    names = open_backend(root / key_to_relpath(key)).list("")
    for relpath in legacy_relpaths(key):
        for name in open_backend(root / relpath).list(""):
            child = open_backend(root / relpath / name)
            listed = child.list("")
            if holds_run(listed) and same_key(recorded_key(child, listed), f"{key}/{name}"):
                names.append(name)
    return list(dict.fromkeys(names))


# -- internals -------------------------------------------------------------------------------------


def _join(root: Where, folder: str) -> Where:
    return root / folder if folder else root


def _newest(store: RunStore) -> tuple[Checkpoint | None, list[str]]:
    """The newest good checkpoint, state not read; retried once if a live run collected it."""
    try:
        result = store.read_latest(load_state=False)
        if result.checkpoint is None and result.problems:
            result = store.read_latest(load_state=False)
    except ResumableError as exc:  # another format version: listed with the reason, not read
        return None, [str(exc)]
    return result.checkpoint, [str(p) for p in result.problems]


def _owner_live(owner: dict[str, Any]) -> bool:
    try:
        return owner_state(owner) == "live"
    except OverflowError:  # a time no float holds: not a lease any live process wrote
        return False


def _wall_time(value: Any) -> float | None:
    """``value`` as a wall-clock time, or None when it is no plausible one (not a number, year > 5000)."""
    return float(value) if type(value) in (int, float) and 0 <= value < 1e11 else None


def _key_of(root: Where, run_dir: Where, manifest: dict[str, Any]) -> str:
    key = manifest.get("key")
    if isinstance(key, str) and key:
        return key
    try:
        return relative_posix(run_dir, root)
    except ValueError:
        return run_dir.name


def inspect_run(root: Where, run_dir: Where, size: int) -> RunInfo:
    """The run in folder ``run_dir`` (found under the checkpoint folder ``root``; ``size``: its bytes),
    its newest checkpoint read and verified, its state decided."""
    store = RunStore.at(run_dir, run_dir.name)
    checkpoint, problems = _newest(store)
    manifest = checkpoint.manifest if checkpoint else {}
    info = RunInfo(key=_key_of(root, run_dir, manifest), path=run_dir, state="crashed", problems=problems)
    info.manifest = manifest
    if checkpoint is not None:
        info.generation, info.position, info.created = (
            checkpoint.generation,
            checkpoint.position,
            checkpoint.created,
        )
        total = manifest.get("total")
        info.total = int(total) if isinstance(total, int) else None
    info.size = size
    info.owner = store.owner()
    info.outcome = store.read_outcome()

    done = None
    if checkpoint is not None:
        try:
            done = store.finished(checkpoint.generation)
        except ResumableError as exc:  # a damaged DONE record: not finished, say why
            info.problems.append(str(exc))
    elif not info.problems:
        try:
            done = store.dropped_values()
        except ResumableError as exc:
            info.problems.append(str(exc))
        if done is not None:
            info.manifest = done
            info.position = done.get("position") if isinstance(done.get("position"), int) else None
            info.total = done.get("total") if isinstance(done.get("total"), int) else None
            info.created = _wall_time(done.get("created"))
            info.key = _key_of(root, run_dir, done)
            info.note = "final values deleted (gc --final-values)"
    if done is not None:
        info.state = "finished"
    elif info.owner is not None and _owner_live(info.owner):
        info.state = "running"
    elif info.outcome and info.outcome.get("state") in ("interrupted", "failed"):
        info.state = str(info.outcome["state"])
        if info.state == "failed":
            error = info.outcome.get("error")
            info.error = str(error).strip().splitlines()[-1] if error else None

    times = [info.created]
    for record in (info.owner, info.outcome, done):
        value = record.get("heartbeat", record.get("time", record.get("finished"))) if record else None
        if isinstance(value, (int, float, str)):
            with contextlib.suppress(ValueError, OverflowError):
                times.append(float(value))
    info.updated = max((t for t in times if t is not None), default=None)
    restarts = info.restarts()
    if restarts and not info.note:
        info.note = f"restarted {len(restarts)}x by resumable run, last: {restarts[-1]}"
    return info
