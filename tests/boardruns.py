"""Runs in every state the board shows, each made by a real process, for the server and browser tests.

A worker process runs a plain-API loop and finishes, fails (its loop raises), is interrupted (SIGINT:
it checkpoints and stops), is SIGKILLed mid-loop (crashed), or is still looping (running); a sweep on
a one-worker Dask ``LocalCluster`` whose first member waits for a gate file leaves its other members
planned and not started (blue). Every process gets the server's environment, so that its checkpoints
are signed with the key the server verifies with.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from checkpoints import newest_position

WORKER = """
import sys, time
from resumable_magic import Resumable, RunInterrupted

directory, key, mode, items = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
state = {"total": 0}
try:
    with Resumable(key, state, dir=directory, every="10it", code="for i in range(n): ...") as run:
        for i in run.iterate(range(items)):
            if mode == "fail" and i == 25:
                raise ValueError(f"bad item {i}")
            state["total"] += i
            if mode != "finish":
                time.sleep(0.005)
except RunInterrupted:
    sys.exit(3)
except ValueError:
    sys.exit(4)
"""

SWEEP = """
import os, sys, time
from distributed import Client, LocalCluster
from resumable_magic import resumable_sweep

directory, gate, members = sys.argv[1], sys.argv[2], int(sys.argv[3])

def member(i):
    while not os.path.exists(gate):  # the test opens the gate once it saw the planned members
        time.sleep(0.05)
    return i * i

if __name__ == "__main__":
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            squares = resumable_sweep(member, [{"i": i} for i in range(members)], key="sweep", dir=directory,
                                      client=client, progress=False)
    print(squares)
"""


def wait_for(
    predicate: Callable[[], object], what: str, proc: subprocess.Popen | None = None, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None:
            assert proc.poll() is None, f"the process exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # polling a condition, not hiding a race


class Runs:
    """The processes behind the runs; :meth:`stop` kills those still going."""

    def __init__(self, folder: Path | str, env: dict[str, str], scripts: Path) -> None:
        self.folder, self.env, self.scripts = folder, env, scripts
        self.procs: list[subprocess.Popen] = []
        scripts.mkdir(parents=True, exist_ok=True)
        (scripts / "worker.py").write_text(WORKER)
        (scripts / "sweep.py").write_text(SWEEP)

    def start(self, key: str, mode: str, items: int, env: dict[str, str] | None = None) -> subprocess.Popen:
        """The worker on run ``key`` (``env``: added to the server's environment)."""
        proc = subprocess.Popen(
            [sys.executable, str(self.scripts / "worker.py"), str(self.folder), key, mode, str(items)],
            env={**self.env, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def make_five_states(self) -> subprocess.Popen:
        """finished, failed, crashed, interrupted and running (returned: the live worker)."""
        finished = self.start("finished", "finish", 100)
        failed = self.start("failing", "fail", 100)
        crashed = self.start("crashed", "loop", 100_000)
        interrupted = self.start("interrupted", "loop", 100_000)
        live = self.start("live", "loop", 10_000_000)
        wait_for(
            lambda: (newest_position(self.folder / "crashed") or 0) >= 30,
            "a checkpoint of 'crashed'",
            crashed,
        )
        crashed.send_signal(signal.SIGKILL)
        crashed.wait()
        wait_for(
            lambda: newest_position(self.folder / "interrupted") is not None, "a checkpoint", interrupted
        )
        interrupted.send_signal(signal.SIGINT)
        assert interrupted.wait(60) == 3, interrupted.stderr.read()
        assert finished.wait(60) == 0, finished.stderr.read()
        assert failed.wait(60) == 4, failed.stderr.read()
        wait_for(lambda: newest_position(self.folder / "live") is not None, "a checkpoint of 'live'", live)
        return live

    def start_sweep(self, members: int) -> tuple[subprocess.Popen, Path]:
        """A sweep whose first member waits for the returned gate file (the others stay planned)."""
        gate = self.scripts / "gate"
        proc = subprocess.Popen(
            [sys.executable, str(self.scripts / "sweep.py"), str(self.folder), str(gate), str(members)],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc, gate

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):  # the group: a sweep's Dask workers too
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
