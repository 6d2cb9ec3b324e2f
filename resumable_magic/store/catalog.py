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

Nothing here writes: listing is safe next to live runs (a file that vanishes mid-read is skipped, and
a generation collected while it is read is retried once).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from resumable_magic.errors import ResumableError
from resumable_magic.lease.lease import owner_state, read_lease
from resumable_magic.storage.local import RemotePath, Where, location
from resumable_magic.store.runstore import MANIFEST_RE, Checkpoint, RunStore

__all__ = ["STATES", "RunInfo", "find_run", "list_runs"]

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
        return " ".join(f"{name}={value}" for name, value in params.items())

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (without the manifest's bulky fields)."""
        record = asdict(self)
        record["path"] = str(self.path)
        record.pop("manifest")
        record["params"] = self.manifest.get("params") or {}
        record["history"] = self.manifest.get("history") or []
        return record


def list_runs(directory: str | os.PathLike[str] | RemotePath) -> list[RunInfo]:
    """Every run under ``directory`` (a folder or an fsspec URL), most recently active first; ``[]``
    when there is none."""
    root = location(directory)
    if isinstance(root, RemotePath):  # one recursive listing gives the runs and their sizes
        from resumable_magic.storage.fsspec import run_folders

        runs = [_inspect(root, path, size) for path, size in run_folders(root).items()]
    else:
        runs = [_inspect(root, path) for path in _run_dirs(root)]
    runs.sort(key=lambda r: r.updated or 0.0, reverse=True)
    return runs


def find_run(directory: str | os.PathLike[str] | RemotePath, key: str) -> RunInfo | None:
    """The run stored under ``key`` (a key as given to the magic), or None when there is none."""
    root = location(directory)
    store = RunStore(root, key)  # validates the key (OptionError) and maps it to its folder
    if isinstance(root, RemotePath):
        names = store.backend.list("")
        if not any(MANIFEST_RE.match(n) or n == "DONE" for n in names):
            return None
        size = sum(_remote_size(store, n) for n in store._files())
        return _inspect(root, store.path, size)
    if not _is_run_dir(store.path):
        return None
    return _inspect(root, store.path)


# -- internals -------------------------------------------------------------------------------------


def _listdir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except OSError:
        return []


def _holds_run(entries: list[os.DirEntry[str]]) -> bool:
    # A finished run whose values were dropped keeps only its DONE record.
    return any(MANIFEST_RE.match(e.name) or e.name == "DONE" for e in entries)


def _is_run_dir(path: Path) -> bool:
    return _holds_run(_listdir(path))


def _run_dirs(root: Path) -> list[Path]:
    found: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        entries = _listdir(folder)
        if _holds_run(entries):
            found.append(folder)
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.name != "objects" and entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
    return found


def _size(run_dir: Path) -> int:
    """Bytes of the run's own files and its objects/ (nested runs below it are not counted)."""
    total = 0
    for folder in (run_dir, run_dir / "objects"):
        for entry in _listdir(folder):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def _newest(store: RunStore) -> tuple[Checkpoint | None, list[str]]:
    """The newest good checkpoint, state not read; retried once if a live run collected it."""
    try:
        result = store.read_latest(load_state=False)
        if result.checkpoint is None and result.problems:
            result = store.read_latest(load_state=False)
    except ResumableError as exc:  # another format version: listed with the reason, not read
        return None, [str(exc)]
    return result.checkpoint, [str(p) for p in result.problems]


def _read_owner(run_dir: Path) -> dict[str, Any] | None:
    try:
        return read_lease(run_dir)
    except RecursionError:  # JSON nested deeper than the parser goes: no lease a run wrote
        return None


def _owner_live(owner: dict[str, Any]) -> bool:
    try:
        return owner_state(owner) == "live"
    except OverflowError:  # a time no float holds: not a lease any live process wrote
        return False


def _wall_time(value: Any) -> float | None:
    """``value`` as a wall-clock time, or None when it is no plausible one (not a number, year > 5000)."""
    return float(value) if type(value) in (int, float) and 0 <= value < 1e11 else None


def _remote_size(store: RunStore, name: str) -> int:
    try:
        return store.backend.size(name)
    except (OSError, KeyError, ValueError):
        return 0


def _key_of(root: Where, run_dir: Where, manifest: dict[str, Any]) -> str:
    key = manifest.get("key")
    if isinstance(key, str) and key:
        return key
    try:
        return run_dir.relative_to(root).as_posix()  # type: ignore[arg-type]
    except ValueError:
        return run_dir.name


def _inspect(root: Where, run_dir: Where, size: int | None = None) -> RunInfo:
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
    info.size = _size(run_dir) if size is None else size  # type: ignore[arg-type]
    info.owner = _read_owner(run_dir)
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
        with contextlib.suppress(AttributeError, TypeError, ValueError, OverflowError):
            times.append(float(record.get("heartbeat", record.get("time", record.get("finished")))))  # type: ignore[union-attr]
    info.updated = max((t for t in times if t is not None), default=None)
    return info
