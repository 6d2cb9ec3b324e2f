"""The differential test's processes: long-lived IPython workers (``diff_worker.py``) and the lanes
that kill them, restart them and drive one program to its end.

A worker runs many programs, one after another; only a kill ends it, and the lane then starts a fresh
one that runs the same cell again (so it resumes). Kills are SIGKILLs, either through the test-only
crash hook at an exact commit step (deterministic) or from this process after a random delay.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("diff_worker.py")
REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 60.0  # one cell, on a busy machine


class Worker:
    """One ``diff_worker.py`` process with a hash seed of its own."""

    def __init__(self, hash_seed: int) -> None:
        env = {k: v for k, v in os.environ.items() if k != "RESUMABLE_CRASH_AT"}
        env["PYTHONHASHSEED"] = str(hash_seed)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.tail: list[str] = []  # what it printed besides the protocol (a crash's traceback)
        threading.Thread(target=self._read, daemon=True).start()
        if self._next() != "READY":
            raise RuntimeError(f"the worker did not start:\n{''.join(self.tail)[-3000:]}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # the process ended

    def _next(self) -> str | None:
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                self.kill()
                raise RuntimeError(f"a worker hung for {TIMEOUT:g} s") from None
            if line is None or line in ("READY", "START") or line.startswith("RESULT "):
                return line
            self.tail.append(line + "\n")

    def submit(self, job: dict[str, Any]) -> None:
        """Send one job and wait until the worker has taken it (``START``)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self._next()
        if line != "START":
            raise RuntimeError(f"the worker ended before its job: {line!r}\n{''.join(self.tail)[-3000:]}")

    def result(self) -> dict[str, Any] | None:
        """The job's result, or None if the process died first (a kill)."""
        line = self._next()
        if line is None:
            self.proc.wait(TIMEOUT)
            if self.proc.returncode != -signal.SIGKILL:
                raise RuntimeError(f"the worker exited {self.proc.returncode}:\n{''.join(self.tail)[-3000:]}")
            return None
        assert line.startswith("RESULT ")
        return json.loads(line[len("RESULT ") :])

    def run(self, job: dict[str, Any]) -> dict[str, Any] | None:
        self.submit(job)
        return self.result()

    def kill(self) -> None:
        """SIGKILL, and wait until the process is gone (so that no one hands it another job)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait()


@dataclass
class Lane:
    """A worker slot: the current process, replaced after each kill."""

    hash_seed: int
    worker: Worker | None = None
    starts: int = 0

    def get(self) -> Worker:
        if self.worker is None or not self.worker.alive:
            self.worker = Worker(self.hash_seed)
            self.starts += 1
        return self.worker

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


@dataclass
class Outcome:
    """How one program went in one lane: each launch, and the result of the one that completed."""

    launches: list[str] = field(default_factory=list)
    first: dict[str, Any] | None = None  # the first launch's result, if it completed
    final: dict[str, Any] | None = None
    replay: dict[str, Any] | None = None
    kills: int = 0


def drive(lane: Lane, job: dict[str, Any], kills: list[tuple[str, Any]]) -> Outcome:
    """Run ``job`` under each kill in ``kills`` in turn (("hook", "<step>:<n>") or ("time", seconds)),
    in a fresh process after each kill, until a launch completes; then without faults if none did;
    then once more (a finished run replays its final values)."""
    outcome = Outcome()
    for how, what in kills:
        worker = lane.get()
        if how == "hook":
            result = worker.run({**job, "crash_at": what})
            label = f"crash hook {what}"
        else:
            worker.submit(job)
            time.sleep(what)  # the random moment of the kill
            worker.kill()
            result = worker.result()
            label = f"SIGKILL {what * 1000:.0f} ms after the cell started"
        if result is None:
            outcome.kills += 1
            outcome.launches.append(f"killed ({label})")
            continue
        outcome.launches.append(f"completed ({label} did not fire)")
        outcome.first = outcome.first or (result if len(outcome.launches) == 1 else None)
        outcome.final = result
        break
    if outcome.final is None:
        outcome.final = lane.get().run(job)
        outcome.launches.append("completed (no fault)")
        if len(outcome.launches) == 1:
            outcome.first = outcome.final
    outcome.replay = lane.get().run(job)
    return outcome
