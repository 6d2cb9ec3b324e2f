"""One attempt at a script: ``python SCRIPT ARGS`` in a process group of its own.

The script uses the plain API (:class:`resumable_magic.Resumable`); it runs with the supervisor's
Python, in the supervisor's working folder, with the run's origin in its environment. In a session of
its own, so a Ctrl-C in the terminal reaches only the supervisor, which passes it on; on Linux it
also gets SIGTERM when the supervisor dies, so it checkpoints and stops rather than running on
unsupervised (the next `resumable run` then picks up from that checkpoint).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from resumable_magic.supervise.restarts import Ended

__all__ = ["ScriptAttempt"]

_PR_SET_PDEATHSIG = 1


def _own_session() -> None:
    """In the child before exec: a new session, and SIGTERM when the parent dies (Linux)."""
    os.setsid()
    # Not Linux (no prctl): the next supervisor asks the script to stop, and waits for it.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ScriptAttempt:
    """Run ``script`` with ``args`` once."""

    what = "script"

    def __init__(
        self,
        script: Path,
        args: list[str],
        env: dict[str, str],
        on_started: Callable[[int], None] = lambda pid: None,
    ) -> None:
        self.script, self.args, self.env, self.on_started = script, args, env, on_started
        self.process: subprocess.Popen[bytes] | None = None
        self.stop_signal: int | None = None
        self.on_signal: Callable[[int], None] = self.forward  # unused: Python's handler runs meanwhile

    def forward(self, signum: int) -> None:
        """Pass a signal the supervisor got to the script's process group (from a signal handler)."""
        self.stop_signal = signum
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.process.pid, signum)

    def run(self) -> Ended:
        self.process = subprocess.Popen(
            [sys.executable, str(self.script), *self.args], env=self.env, preexec_fn=_own_session
        )
        self.on_started(self.process.pid)
        if self.stop_signal is not None:
            self.forward(self.stop_signal)
        returncode = self.process.wait()
        if self.stop_signal is not None:
            return Ended("interrupted", self.process.pid, returncode)
        if returncode == 0:
            return Ended("finished", self.process.pid, 0)
        if returncode == 1:  # Python's status for an uncaught exception: its traceback is on stderr
            return Ended(
                "error", self.process.pid, 1, error="the script raised an exception (its traceback is above)"
            )
        return Ended("died", self.process.pid, returncode)
