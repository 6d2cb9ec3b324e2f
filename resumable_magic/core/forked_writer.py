"""Checkpoints written by a forked child: the loop stalls only for ``fork()``.

At ``fork()`` the child gets a copy-on-write image of the parent's memory: a consistent snapshot of
the state at that instant, which it serialises, writes and commits while the parent's loop goes on.
A child that fails (killed, disk full, state not picklable) is a failed checkpoint, reported at the
next boundary: the previous checkpoint is untouched because every commit is atomic and fenced.

Used only where it is safe (:func:`fork_refusal`): on Linux, for states of at least
:data:`FORK_MIN_BYTES` (below that a synchronous checkpoint costs less than a fork), when available
memory covers the state twice over plus :data:`MEMORY_MARGIN` (a parent that rewrites all of its
state while the child writes copies every page: a snapshot must never be what kills a kernel), and
one at a time. The child dies with its parent (``PR_SET_PDEATHSIG``) and never runs the parent's
exit handlers, threads or display code.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FORK_MIN_BYTES", "MEMORY_MARGIN", "ForkedWriter", "available_memory", "fork_refusal"]

FORK_MIN_BYTES = 64 * 2**20
MEMORY_MARGIN = 512 * 2**20
_PR_SET_PDEATHSIG = 1
_MAX_MESSAGE = 1 << 20  # a result names at most the checkpoint's blobs


def available_memory() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo``, in bytes (None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def fork_refusal(state_size: int, backend_forks: bool = True) -> str | None:
    """Why a checkpoint of ``state_size`` bytes must be written synchronously; None when it may fork.

    ``$RESUMABLE_BACKGROUND=0`` turns background checkpoints off. ``backend_forks=False``: the
    checkpoint folder is ``memory://``, which lives in this process's memory, where a forked child's
    writes would never reach.
    """
    if not backend_forks:
        return (
            "the checkpoint folder is memory://, in this process's memory, which a forked writer cannot reach"
        )
    if os.environ.get("RESUMABLE_BACKGROUND", "").strip().lower() in ("0", "no", "false", "off"):
        return "background checkpoints are off (RESUMABLE_BACKGROUND=0)"
    if sys.platform != "linux" or not hasattr(os, "fork"):
        return "background checkpoints need Linux"
    if state_size < FORK_MIN_BYTES:
        return "the state is small: a synchronous checkpoint costs less than a fork"
    free = available_memory()
    if free is None or free < 2 * state_size + MEMORY_MARGIN:
        return "available memory does not cover a copy of the state with a margin"
    return None


def _die_with(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@dataclass
class ForkedWriter:
    """One forked writer in flight: :meth:`start` it, then :meth:`poll` or :meth:`wait` for its result."""

    pid: int
    fd: int
    started: float
    position: int
    stall: float  # seconds the parent was blocked by the fork
    _received: bytes = b""
    _status: int | None = None

    @classmethod
    def start(cls, work: Callable[[], dict[str, Any]], position: int) -> ForkedWriter:
        """Fork; the child runs ``work()`` and reports its JSON-able result (or its error) through a pipe."""
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        started = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork of a threaded process
            pid = os.fork()
        if pid == 0:  # the child: never returns
            status = 0
            try:
                os.close(read_fd)
                _die_with(parent)
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a notebook interrupt is for the parent
                message = json.dumps(
                    {"ok": work(), "private": _private_bytes(), "seconds": time.monotonic() - started}
                )
            except BaseException as exc:
                status = 1
                message = json.dumps(
                    {"error": type(exc).__name__, "message": str(exc), "attrs": _attributes(exc)}
                )
            with contextlib.suppress(BaseException):
                data = message.encode()[:_MAX_MESSAGE]
                while data:
                    data = data[os.write(write_fd, data) :]
            os._exit(status)
        os.close(write_fd)
        return cls(pid, read_fd, started, position, time.monotonic() - started)

    def poll(self) -> dict[str, Any] | None:
        """The child's result once it has exited, else None (never blocks)."""
        self._drain()
        if self._status is None:
            # Once the pipe is at EOF the child is exiting: waiting for it is then bounded.
            pid, status = os.waitpid(self.pid, 0 if self.fd < 0 else os.WNOHANG)
            if pid == 0:
                return None
            self._status = status
            self._drain()
        return self._result()

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for the child; after ``timeout`` seconds it is killed and the checkpoint counts as failed."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.poll()
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            if self.fd >= 0:
                select.select([self.fd], [], [], 0.05)  # until the child writes, exits or times out

    def _drain(self) -> None:
        if self.fd < 0:
            return
        while select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                os.close(self.fd)
                self.fd = -1
                return
            self._received += chunk

    def _result(self) -> dict[str, Any]:
        with contextlib.suppress(OSError):
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        try:
            result = json.loads(self._received)
        except ValueError:
            status = self._status or 0
            how = (
                f"was killed by {signal.Signals(-os.waitstatus_to_exitcode(status)).name}"
                if os.WIFSIGNALED(status)
                else f"exited with status {os.waitstatus_to_exitcode(status)}"
            )
            return {"error": "ChildDied", "message": f"the background writer {how}", "attrs": {}}
        return result if isinstance(result, dict) else {"error": "ChildDied", "message": "no result"}


def _private_bytes() -> int | None:
    """Memory this process no longer shares with its parent: the pages copied since the fork."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return sum(int(fields[k].split()[0]) * 1024 for k in ("Private_Clean", "Private_Dirty"))
    except (OSError, ValueError, KeyError):
        return None


def _attributes(exc: BaseException) -> dict[str, Any]:
    found = {}
    for name in ("name", "path", "reason", "key", "owner", "errno", "strerror", "filename", "lease_file"):
        value = getattr(exc, name, None)
        if isinstance(value, (str, int)) or value is None:
            found[name] = value
        else:
            found[name] = str(value)
    return found
