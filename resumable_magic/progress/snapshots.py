"""What the views show: immutable snapshots of a run's progress, or of a sharded map's, and the
records of a run's start, resume and checkpoints that go into them.

Plain data: the models (``model.py`` for a run, ``distributed/progress.py`` for a map) make them,
the text lines (``text.py``) and the views (``textview.py``, ``widget.py``) read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "OUTCOMES",
    "STATES",
    "CheckpointStats",
    "MapSnapshot",
    "MapSource",
    "ResumeInfo",
    "RunProgress",
    "RunSnapshot",
    "StartInfo",
]

OUTCOMES = ("finished", "interrupted", "failed", "replayed")
STATES = ("starting", "running", "checkpointing", *OUTCOMES)


@dataclass(frozen=True)
class ResumeInfo:
    """Where a resumed run picked up."""

    from_position: int
    checkpoint_wall_time: float  # time.time() when that checkpoint was written
    generation: int
    redone_iterations: int | None = None  # iterations the crashed run had done past the checkpoint, if known
    redone_seconds: float | None = None  # wall time of that lost work, if known
    by_jupyterlab: str | None = None  # "automatic" or "clicked": the JupyterLab extension resumed it


@dataclass(frozen=True)
class StartInfo:
    """What the run knows when it starts."""

    key: str
    names: tuple[str, ...]
    total: int | None  # iterations in all, when the iterable has a length
    start_position: int  # iterations already done (restored)
    policy: str  # human description of the checkpoint policy, e.g. "every 30s"
    resumed: ResumeInfo | None = None
    replayed: bool = False  # a finished run's final values were restored; the loop does not run
    directory: str = ""  # the run's folder: an absolute path or a URL ("" when not known)


@dataclass(frozen=True)
class CheckpointStats:
    """One committed checkpoint."""

    generation: int
    position: int
    wall_time: float  # time.time() at commit
    nbytes: int  # size of the checkpointed state
    seconds: float  # time the loop was blocked by it
    written: int | None = None  # bytes actually written (less when unchanged data was not rewritten)
    # How it was written: "sync" (the loop waited) or "background" (a forked writer, core/forked_writer.py).
    mode: str = "sync"


@dataclass(frozen=True)
class RunSnapshot:
    """Everything a view shows, computed at one instant (``now_wall``)."""

    state: str
    position: int
    total: int | None
    start_position: int
    elapsed: float  # seconds since run_started (frozen at run_ended)
    rate: float | None  # smoothed iterations per second
    eta: float | None  # seconds to the end, when the total is known
    checkpoints: int  # committed in this run
    checkpoint_seconds: float
    overhead: float  # checkpoint_seconds / elapsed
    last_checkpoint: CheckpointStats | None  # newest committed in this run
    since_checkpoint: float | None  # seconds since it was committed (or since the start when none yet)
    failed_checkpoints: int
    info: StartInfo | None
    detail: str
    messages: tuple[tuple[str, str], ...]
    now_wall: float
    notice: str = ""  # a transient message (an interrupt being honoured); gone once the run ended

    @property
    def done(self) -> int:
        """Iterations done in this run."""
        return self.position - self.start_position

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(max(self.position / self.total, 0.0), 1.0)

    @property
    def unsaved(self) -> int:
        """Iterations a crash now would redo."""
        saved = self.last_checkpoint.position if self.last_checkpoint else self.start_position
        return max(self.position - saved, 0)

    @property
    def resumed(self) -> ResumeInfo | None:
        return self.info.resumed if self.info else None

    @property
    def ended(self) -> bool:
        return self.state in OUTCOMES


# -- a sharded map or sweep: one view for all its runs -------------------------------------------


@dataclass(frozen=True)
class RunProgress:
    """One shard or sweep member as last seen."""

    name: str
    path: Any  # a local Path or a storage.RemotePath
    size: int | None  # items (None: a sweep member's own loop, total from its checkpoints)
    state: str = "waiting"  # waiting, running, done
    position: int = 0  # reached: the lease's while running, else the last checkpoint's
    checkpointed: int | None = None  # position of the newest checkpoint
    checkpoint_wall: float | None = None  # when it was written
    total: int | None = None  # from the newest checkpoint
    pid: int | None = None
    host: str | None = None
    generation: int | None = None

    @property
    def items(self) -> int | None:
        return self.size if self.size is not None else self.total

    def done_items(self) -> int:
        if self.state == "done":
            return self.items if self.items is not None else self.position
        return min(self.position, self.items) if self.items is not None else self.position


@dataclass(frozen=True)
class MapSnapshot:
    """Everything a view of a map shows, at one instant."""

    key: str
    what: str  # "shard" or "member"
    state: str  # running, finished, failed, interrupted
    runs: tuple[RunProgress, ...]
    items_total: int | None
    items_done: int
    rate: float | None
    eta: float | None
    elapsed: float
    replayed: int
    resumed: int
    redone: int  # items redone by resumed runs (as far as known)
    messages: tuple[tuple[str, str], ...]
    now_wall: float

    @property
    def done(self) -> int:
        return sum(r.state == "done" for r in self.runs)

    @property
    def running(self) -> tuple[RunProgress, ...]:
        return tuple(r for r in self.runs if r.state == "running")

    def noun(self, n: int) -> str:
        word = "shard" if self.what == "shard" else "sweep member"
        return word if n == 1 else word + "s"


class MapSource(Protocol):
    """What the views of a map read (``distributed.progress.MapProgress`` is one)."""

    started: float  # when the map started, on the clock of now()
    messages: list[tuple[str, str]]  # every message so far, oldest first

    def now(self) -> float: ...  # a monotonic clock
    def snapshot(self) -> MapSnapshot: ...
    def line(self) -> str: ...  # the progress line while running, the summary once ended
