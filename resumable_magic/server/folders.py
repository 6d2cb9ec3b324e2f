"""Which checkpoint folders the board shows, and refreshing their listings at a bounded cost.

By default, the ``.resumable`` folders beside notebooks under the server's root (the magic puts a
notebook's runs in ``.resumable`` in its kernel's working folder, the notebook's folder), found by a
walk at most ``walk_depth`` levels deep that skips hidden folders and virtual environments; then
``$RESUMABLE_DIR`` of the server's environment (its kernels inherit it); then the folders the
``ResumableServerApp.folders`` setting names (paths, or fsspec URLs such as ``s3://bucket/prefix``).

A folder is listed again at most every ``max(interval, 10 x the last listing's time)`` seconds (a
listing takes at most ~10% of the server's time however many runs a folder holds), and an object
store's at most every :data:`REMOTE_INTERVAL` seconds (each listing there is paid requests).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from resumable_magic.storage.base import location
from resumable_magic.storage.paths import RemotePath, Where
from resumable_magic.store.catalog import RunInfo
from resumable_magic.store.listing import FolderListing

__all__ = ["REMOTE_INTERVAL", "BoardFolder", "Folders"]

CHECKPOINT_FOLDER = ".resumable"
REMOTE_INTERVAL = 15.0  # seconds between listings of an object store
DISCOVERY_INTERVAL = 30.0  # seconds between walks of the root for new .resumable folders
# Folders the walk never enters: they hold no notebooks, and can hold very many files.
_SKIPPED = frozenset({"node_modules", "site-packages", "__pycache__", "venv"})
WALK_MAX_FOLDERS = 20_000  # folders one walk looks into at most, however wide the tree


@dataclass
class BoardFolder:
    """One checkpoint folder on the board: its listing, and when it may be listed again."""

    where: Where
    listing: FolderListing
    interval: float
    next_refresh: float = 0.0
    error: str | None = None
    runs: list[RunInfo] = field(default_factory=list)

    @property
    def remote(self) -> bool:
        return isinstance(self.where, RemotePath)

    def refresh(self, now: float) -> None:
        if now < self.next_refresh:
            return
        started = time.monotonic()
        try:
            self.runs, self.error = self.listing.refresh(), None
        except Exception as exc:  # a folder that vanished or an unreachable bucket: said on the board
            self.runs, self.error = [], f"{type(exc).__name__}: {exc}"
        cost = time.monotonic() - started
        floor = max(self.interval, REMOTE_INTERVAL) if self.remote else self.interval
        self.next_refresh = time.monotonic() + max(floor, 10 * cost)


class Folders:
    """The board's folders under ``root``: found again every :data:`DISCOVERY_INTERVAL` seconds."""

    def __init__(self, root: Path, extra: list[str], walk_depth: int, interval: float) -> None:
        self.root, self.extra, self.walk_depth, self.interval = root, extra, walk_depth, interval
        self._folders: dict[str, BoardFolder] = {}
        self._discovered = -DISCOVERY_INTERVAL
        self._lock = threading.Lock()

    def refresh(self) -> list[BoardFolder]:
        """The folders, each listed again if its time has come; one caller at a time."""
        with self._lock:
            now = time.monotonic()
            if now - self._discovered >= DISCOVERY_INTERVAL:
                self._discover()
                self._discovered = now
            for folder in self._folders.values():
                folder.refresh(now)
            return list(self._folders.values())

    def get(self, name: str) -> BoardFolder | None:
        """The folder named ``name`` (its ``str``) if the board shows it: the one way a request names a
        folder, so that no request can point the server at a folder of its choosing."""
        with self._lock:
            return self._folders.get(name)

    def _discover(self) -> None:
        found: list[Where] = list(self._walk())
        env = os.environ.get("RESUMABLE_DIR")
        for text in ([env] if env else []) + list(self.extra):
            found.append(location(text if "://" in text else self.root / os.path.expanduser(text)))
        kept: dict[str, BoardFolder] = {}
        for where in found:
            name = str(where)
            if name not in kept:
                kept[name] = self._folders.get(name) or BoardFolder(
                    where, FolderListing(where), self.interval
                )
        self._folders = kept

    def _walk(self) -> list[Path]:
        """``.resumable`` folders at most ``walk_depth`` levels below the root (not inside one)."""
        found, frontier, visited = [], [self.root], 0
        for _ in range(self.walk_depth + 1):
            deeper = []
            for folder in frontier[: max(0, WALK_MAX_FOLDERS - visited)]:
                visited += 1
                with contextlib.suppress(OSError), os.scandir(folder) as entries:
                    for entry in entries:
                        if not entry.is_dir(follow_symlinks=False):
                            continue
                        if entry.name == CHECKPOINT_FOLDER:
                            found.append(Path(entry.path))
                        elif not entry.name.startswith(".") and entry.name not in _SKIPPED:
                            deeper.append(Path(entry.path))
            frontier = deeper
        return sorted(found)
