"""The JSON report of a `resumable run`, which is also the supervisor's own state.

Written (atomically) when the run starts, at every attempt's start and end, and when it stops: a
supervisor that dies leaves a report saying ``"status": "running"`` with its pid and its child's. Run
again with the same command, the next supervisor continues that report (restarts counted on, the
no-progress rule comparing with the last restart), after the old child has gone.

Fields: ``status`` (running, finished, error, gave up, interrupted), ``exit_status``, ``message``,
``notebook`` or ``script``, ``parameters`` or ``args``, ``dir``, ``output``, ``supervisor`` (pid,
host), ``child_pid``, ``started``/``ended`` (wall times), ``attempts`` (each: started, ended, pid,
how it ended) and ``restarts`` (each: cause, time, the newest checkpoint then, and the position the
dead process had reached, hence the work redone).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from resumable_magic.errors import SupervisorUsageError
from resumable_magic.lease.procs import pid_alive
from resumable_magic.storage.local import write_atomic

__all__ = ["Report"]

_IDENTITY = ("notebook", "script", "parameters", "args", "dir")


class Report:
    """The report at ``path``: a dict kept in memory and written out whole by :meth:`save`."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    @classmethod
    def begin(cls, path: Path, identity: dict[str, Any], output: str | None) -> Report:
        """A new report, or the previous one continued when its supervisor died mid-run.

        Refused when the previous report's supervisor is still running it (on this host)."""
        previous = _read(path)
        host, now = socket.gethostname(), time.time()
        me = {"pid": os.getpid(), "host": host}
        if previous is not None and previous.get("status") == "running" and _same(previous, identity):
            owner = previous.get("supervisor") or {}
            if owner.get("host") == host and isinstance(owner.get("pid"), int) and pid_alive(owner["pid"]):
                raise SupervisorUsageError(
                    str(path),
                    f"this run is being executed by another `resumable run` (pid {owner['pid']}), "
                    f"as its report {str(path)!r} says: stop that one first, or wait for it",
                )
            previous.setdefault("pickups", []).append({"time": now, "previous_supervisor": owner})
            previous["supervisor"] = me
            return cls(path, previous)
        data: dict[str, Any] = {
            **identity,
            "output": output,
            "status": "running",
            "exit_status": None,
            "message": None,
            "supervisor": me,
            "child_pid": None,
            "started": now,
            "ended": None,
            "attempts": [],
            "restarts": [],
        }
        return cls(path, data)

    @property
    def restarts(self) -> list[dict[str, Any]]:
        return list(self.data["restarts"])

    def stale_child(self) -> int | None:
        """The child a dead supervisor left behind, when it still runs (it is about to stop)."""
        pid = self.data.get("child_pid")
        return pid if isinstance(pid, int) and pid_alive(pid) else None

    def attempt_started(self, pid: int | None) -> None:
        self.data["child_pid"] = pid
        self.data["attempts"].append({"started": time.time(), "pid": pid, "ended": None, "how": None})
        self.save()

    def attempt_ended(self, how: str, detail: str | None = None) -> None:
        attempt = self.data["attempts"][-1]
        attempt.update(ended=time.time(), how=how, detail=detail)
        self.data["child_pid"] = None
        self.save()

    def restarted(self, cause: str, mark: Any) -> None:
        redone = None
        if mark.reached is not None and mark.reached_key == mark.key and mark.position is not None:
            redone = max(0, mark.reached - mark.position)
        self.data["restarts"].append(
            {
                "time": time.time(),
                "cause": cause,
                "checkpoint": {"key": mark.key, "generation": mark.generation, "position": mark.position},
                "reached": {"key": mark.reached_key, "position": mark.reached},
                "redone_iterations": redone,
            }
        )
        self.save()

    def finish(self, status: str, exit_status: int, message: str) -> None:
        self.data.update(status=status, exit_status=exit_status, message=message, ended=time.time())
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, (json.dumps(self.data, indent=1, ensure_ascii=False) + "\n").encode())


def _read(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if (
            isinstance(data, dict)
            and isinstance(data.get("attempts"), list)
            and isinstance(data.get("restarts"), list)
        ):
            return data
    return None


def _same(previous: dict[str, Any], identity: dict[str, Any]) -> bool:
    return all(previous.get(k) == identity.get(k) for k in _IDENTITY)
