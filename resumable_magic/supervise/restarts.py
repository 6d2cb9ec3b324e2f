"""The restart policy: which deaths are restarted, and when restarting stops helping.

Restarted: a death by SIGKILL (the OOM killer's signal), SIGSEGV, SIGBUS or SIGABRT: a crash that a
new process resumes from the last checkpoint. Not restarted: an ordinary exception (a bug is not a
crash: it fails again), a process that exited or was terminated otherwise, and anything after the
supervisor was itself asked to stop. Restarting stops when a death leaves the same newest checkpoint
as the death before it (no progress: the crash repeats at the same point) or after ``max_restarts``.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

__all__ = ["RESTART_SIGNALS", "Decision", "Ended", "Mark", "decide", "progress_mark"]

RESTART_SIGNALS = frozenset({signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT})


@dataclass
class Ended:
    """How one attempt (a kernel or a script process) ended."""

    how: str  # "finished", "error" (an exception), "died" (the process ended mid-run), "interrupted"
    pid: int | None = None
    returncode: int | None = None  # the process's exit status; -N: killed by signal N
    error: str | None = None  # the exception's last line, for "error"

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode is not None and self.returncode < 0 else None

    def death(self, what: str) -> str:
        """``"kernel killed by SIGKILL"``, ``"script exited with status 3"``."""
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"{what} killed by {name}"
        if self.returncode is None:
            return f"{what} died"
        return f"{what} exited with status {self.returncode}"


@dataclass(frozen=True)
class Mark:
    """The newest checkpoint of the runs a notebook or script made, and how far the dead process got."""

    key: str | None = None
    generation: int | None = None
    position: int | None = None
    reached: int | None = None  # the dead process's last reported position (its lease), if it held one
    reached_key: str | None = None

    def same_checkpoint(self, other: dict[str, Any] | None) -> bool:
        return other is not None and (self.key, self.generation) == (
            other.get("key"),
            other.get("generation"),
        )


@dataclass
class Decision:
    restart: bool
    reason: str  # the cause recorded with the restart, or why the supervisor gave up


def decide(
    ended: Ended, what: str, mark: Mark, previous: dict[str, Any] | None, restarts: int, max_restarts: int
) -> Decision:
    """Whether to start the dead ``what`` (``"kernel"``, ``"script"``) again.

    ``previous`` is the newest checkpoint recorded at the restart before (None before the first),
    ``restarts`` how many restarts were made so far.
    """
    death = ended.death(what)
    if ended.signal not in RESTART_SIGNALS:
        return Decision(
            False, f"{death}: not a crash that a restart resumes from (SIGKILL, SIGSEGV, SIGBUS, SIGABRT)"
        )
    if restarts and mark.same_checkpoint(previous):
        at = f"the checkpoint at iteration {mark.position:,} of {mark.key}" if mark.key else "no checkpoint"
        return Decision(
            False,
            f"{death} again with no progress since the restart before ({at}): the crash repeats at the "
            f"same point, so another restart would not get further",
        )
    if restarts >= max_restarts:
        return Decision(False, f"{death} after {restarts} restart(s), the most --max-restarts allows")
    return Decision(True, f"{death} (restart {restarts + 1} of {max_restarts})")


def progress_mark(directory: Any, origin: dict[str, Any], dead_pid: int | None) -> Mark:
    """The newest checkpoint among the runs under ``directory`` recorded as coming from ``origin``."""
    from resumable_magic.store.catalog import list_runs

    try:
        runs = [r for r in list_runs(directory) if _same_origin(r.manifest.get("origin"), origin)]
    except (OSError, ValueError):
        runs = []
    newest = max((r for r in runs if r.created is not None), key=lambda r: r.created or 0.0, default=None)
    dead = next(
        (r for r in runs if r.owner and dead_pid is not None and r.owner.get("pid") == dead_pid), None
    )
    reached = dead.owner.get("position") if dead and dead.owner else None
    return Mark(
        key=newest.key if newest else None,
        generation=newest.generation if newest else None,
        position=newest.position if newest else None,
        reached=reached if isinstance(reached, int) else None,
        reached_key=dead.key if dead else None,
    )


def _same_origin(recorded: Any, origin: dict[str, Any]) -> bool:
    if not isinstance(recorded, dict):
        return False
    where = "notebook" if "notebook" in origin else "script"
    return recorded.get(where) == origin.get(where) and recorded.get("parameters") == origin.get("parameters")
