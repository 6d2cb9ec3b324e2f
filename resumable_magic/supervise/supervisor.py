"""The loop over attempts: run, and when the process dies of a crash, start it again.

Exit statuses (documented in docs/run.md): 0 finished; 1 an error (an exception in a cell or the
script, or a death that is no crash: an exit status, a SIGTERM from elsewhere); 2 usage (raised as
:class:`~resumable_magic.errors.SupervisorUsageError` before anything runs); 3 gave up (no progress
between two restarts, or ``--max-restarts`` reached); 130 or 143 interrupted (SIGINT or SIGTERM to
the supervisor, passed to the kernel or script, which checkpoints and stops).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resumable_magic.core.origin import ORIGIN_ENV, RESTART_ENV
from resumable_magic.lease.procs import pid_alive
from resumable_magic.supervise.report import Report
from resumable_magic.supervise.restarts import RESTART_SIGNALS, Ended, decide, progress_mark

__all__ = ["EXIT_ERROR", "EXIT_FINISHED", "EXIT_GAVE_UP", "EXIT_USAGE", "RunRequest", "supervise"]

EXIT_FINISHED, EXIT_ERROR, EXIT_USAGE, EXIT_GAVE_UP = 0, 1, 2, 3
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}
STALE_CHILD_WAIT = 60.0  # seconds for a child a dead supervisor left to checkpoint and stop


@dataclass
class RunRequest:
    """What to run: a notebook (with parameters) or a script (with arguments), and where things go."""

    target: Path  # absolute
    report: Path
    notebook: Any = None  # the parameterised nbformat notebook; None for a script
    parameters: dict[str, Any] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    output: Path | None = None
    dir: str | None = None  # --dir, absolute or a URL
    max_restarts: int = 5

    @property
    def what(self) -> str:
        return "kernel" if self.notebook is not None else "script"

    def origin(self) -> dict[str, Any]:
        """What the run records as its origin (and the report as its identity, with ``dir``)."""
        if self.notebook is not None:
            origin: dict[str, Any] = {"notebook": str(self.target)}
            if self.parameters:
                origin["parameters"] = self.parameters
        else:
            origin = {"script": str(self.target), "args": self.args}
        return origin

    def checkpoint_folder(self) -> str:
        """Where the runs checkpoint unless a cell says otherwise: where progress is looked for."""
        if self.dir:
            return self.dir
        cwd = self.target.parent if self.notebook is not None else Path.cwd()
        given = os.environ.get("RESUMABLE_DIR") or ".resumable"
        return given if "://" in given else str(cwd / given)


def _say(text: str) -> None:
    print(f"resumable run: {text}", file=sys.stderr, flush=True)


def supervise(request: RunRequest, say: Callable[[str], None] = _say) -> int:
    """Run ``request`` to its end; the exit status."""
    origin = request.origin()
    report = Report.begin(
        request.report, {**origin, "dir": request.dir}, str(request.output) if request.output else None
    )
    _wait_for_stale_child(report, say)
    attempt: Any = None
    stop: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if not stop:
            say(
                f"got {signal.Signals(signum).name}: passing it to the {request.what}, which checkpoints and stops"
            )
        stop.append(signum)
        if attempt is not None:
            attempt.forward(signum)

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    cause: str | None = None
    try:
        while not stop:
            for signum in saved:  # again each time: nbclient's event loop resets them when it ends
                signal.signal(signum, on_signal)
            attempt = _attempt(request, env=_environment(request, origin, cause), report=report, say=say)
            attempt.on_signal = lambda signum: on_signal(signum, None)
            ended = attempt.run()
            if request.output is not None and request.notebook is not None:
                _write_notebook(attempt.executed, request.output)
            died = ended.death(request.what) if ended.how == "died" else None
            report.attempt_ended(ended.how, ended.error or died)
            if stop or ended.how == "interrupted":
                break
            if ended.how == "finished":
                return _end(report, say, "finished", EXIT_FINISHED, _finished_text(report))
            if ended.how == "error":
                text = f"stopped on an error, not restarted (a bug is not a crash): {ended.error}"
                return _end(report, say, "error", EXIT_ERROR, text)
            restart, cause = _decide(request, report, origin, ended)
            if not restart:
                gave_up = ended.signal in RESTART_SIGNALS
                return _end(
                    report, say, *(("gave up", EXIT_GAVE_UP) if gave_up else ("error", EXIT_ERROR)), cause
                )
            say(f"{cause}: starting a new {request.what}")
        name = signal.Signals(stop[0] if stop else signal.SIGINT)
        text = (
            f"interrupted by {name.name}: the {request.what} checkpointed and stopped; run the same "
            f"command again to continue"
        )
        return _end(report, say, "interrupted", EXIT_INTERRUPTED[name], text)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _decide(request: RunRequest, report: Report, origin: dict[str, Any], ended: Ended) -> tuple[bool, str]:
    mark = progress_mark(request.checkpoint_folder(), origin, ended.pid)
    restarts = report.restarts
    previous = restarts[-1].get("checkpoint") if restarts else None
    decision = decide(ended, request.what, mark, previous, len(restarts), request.max_restarts)
    if decision.restart:
        report.restarted(decision.reason, mark)
    return decision.restart, decision.reason


def _attempt(request: RunRequest, *, env: dict[str, str], report: Report, say: Callable[[str], None]) -> Any:
    def started(pid: int) -> None:
        report.attempt_started(pid)
        say(
            f"executing {request.target.name} (attempt {len(report.data['attempts'])}, {request.what} pid {pid})"
        )

    if request.notebook is not None:
        from resumable_magic.supervise.notebook import NotebookAttempt

        return NotebookAttempt(request.notebook, request.target, env, on_started=started)
    from resumable_magic.supervise.script import ScriptAttempt

    return ScriptAttempt(request.target, request.args, env, on_started=started)


def _environment(request: RunRequest, origin: dict[str, Any], cause: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != RESTART_ENV}
    env[ORIGIN_ENV] = json.dumps(origin, sort_keys=True)
    if request.notebook is not None:
        env["JPY_SESSION_NAME"] = str(request.target)  # as jupyter_server sets it: the notebook's path
    if request.dir:
        env["RESUMABLE_DIR"] = request.dir
    if cause:
        env[RESTART_ENV] = cause
    return env


def _wait_for_stale_child(report: Report, say: Callable[[str], None]) -> None:
    """A supervisor that died left its child: it stops by itself (a kernel's parent poller, a
    script's SIGTERM on its parent's death); it is asked again, then waited for, so that its lease is
    free when the next attempt opens the run."""
    pid = report.stale_child()
    if pid is None:
        return
    say(f"the previous supervisor died; waiting for the process it left (pid {pid}) to checkpoint and stop")
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STALE_CHILD_WAIT
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def _write_notebook(nb: Any, path: Path) -> None:
    import nbformat

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, path)


def _finished_text(report: Report) -> str:
    restarts = report.restarts
    if not restarts:
        return "finished"
    return f"finished after {len(restarts)} restart(s): " + "; ".join(r["cause"] for r in restarts)


def _end(report: Report, say: Callable[[str], None], status: str, code: int, message: str) -> int:
    report.finish(status, code, message)
    say(f"{message} (exit status {code}; report: {report.path})")
    return code
