"""The differential test's kernels: real ipykernel kernels, driven through jupyter_client, that run one
program after another, and the lanes that kill them, replace them and drive one program to its end.

A kernel runs many programs (``%reset -f`` and a fresh run folder between them: starting a kernel costs
~0.8 s, a program's cell tens of milliseconds); only a kill ends it, and the lane then starts a fresh
kernel that runs the same cell again (so it resumes). Kills are SIGKILLs, either through the test-only
crash hook at an exact commit step (deterministic; the kernel kills itself) or sent from this process
to the kernel's pid after a random delay.
"""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernels import REPO_ROOT, KernelDied, KernelHandle, start_kernel

TESTS = Path(__file__).resolve().parent
TIMEOUT = 60.0  # one cell, on a busy machine
_STARTER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="spare-kernel")


class Worker:
    """One real kernel with a hash seed of its own and the extension loaded."""

    def __init__(self, hash_seed: int, cwd: Path) -> None:
        # diff_kernel.py (this folder) is imported inside the kernel
        self.kernel: KernelHandle = start_kernel(
            cwd, {"PYTHONHASHSEED": str(hash_seed)}, pythonpath=(REPO_ROOT, TESTS)
        )
        self.kernel.run("%load_ext resumable_magic", store_history=False, timeout=TIMEOUT)
        self.running: tuple[str, list[str]] | None = None  # the job cell's msg_id and its names
        self.started = 0.0

    def submit(self, job: dict[str, Any]) -> None:
        """Start one job and return once the kernel is running its cell."""
        crash_at = job.get("crash_at") or ""
        self.kernel.run(
            f"%reset -f\n__import__('diff_kernel').prepare({crash_at!r})",
            store_history=False,
            timeout=TIMEOUT,
        )
        msg_id = self.kernel.execute_async(job["cell"])
        self.running = (msg_id, job["names"])
        self.kernel.wait_for(
            lambda: self.kernel.partial(msg_id).busy, timeout=TIMEOUT, message="the cell to start"
        )
        self.started = time.monotonic()

    def finished(self) -> bool:
        """Whether the running job's cell has finished."""
        assert self.running is not None
        return self.kernel.partial(self.running[0]).done

    def result(self) -> dict[str, Any] | None:
        """The running job's result, or None if the kernel died first (a SIGKILL)."""
        assert self.running is not None
        msg_id, names = self.running
        self.running = None
        try:
            cell = self.kernel.result(msg_id, timeout=TIMEOUT)
            seconds = time.monotonic() - self.started
        except KernelDied as died:
            if died.signal != signal.SIGKILL:
                raise
            return None
        printed = self.kernel.run(f"__import__('diff_kernel').report({names!r})", store_history=False)
        line = next(line for line in printed.stdout.splitlines() if line.startswith("RESULT "))
        result: dict[str, Any] = json.loads(line[len("RESULT ") :])
        streams = cell.stdout + cell.stderr
        result["messages"] = [line for line in streams.splitlines() if "resumable:" in line]
        result["output"] = cell.output[-3000:] if result["error"] is not None else ""
        result["seconds"] = seconds  # from the kernel's busy to its reply
        return result

    def run(self, job: dict[str, Any]) -> dict[str, Any] | None:
        self.submit(job)
        return self.result()

    def kill(self) -> None:
        """SIGKILL the kernel from outside and wait until its process is gone. Its job has no result,
        even if the cell's reply came just before the kill: its state can no longer be read."""
        self.kernel.kill()
        self.running = None

    @property
    def alive(self) -> bool:
        return self.kernel.alive

    def close(self) -> None:
        self.kernel.shutdown()


@dataclass
class Lane:
    """A kernel slot: the current kernel, replaced after each kill by a spare started in the background
    (a kernel takes ~0.8 s to start; the lane's program goes on meanwhile)."""

    hash_seed: int
    cwd: Path
    worker: Worker | None = None
    spare: Future[Worker] | None = None
    starts: int = 0

    def get(self) -> Worker:
        if self.worker is None:
            self.worker = Worker(self.hash_seed, self.cwd)
            self.starts += 1
        elif not self.worker.alive:  # killed
            self.worker.close()
            self.worker = (self.spare or self._start_spare()).result()
            self.spare = self._start_spare()  # a lane whose kernels are killed will need another
            self.starts += 1
        return self.worker

    def _start_spare(self) -> Future[Worker]:
        return _STARTER.submit(Worker, self.hash_seed, self.cwd)

    def close(self) -> None:
        for worker in (self.worker, self.spare.result() if self.spare is not None else None):
            if worker is not None:
                worker.close()


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
    in a fresh kernel after each kill, until a launch completes; then without faults if none did;
    then once more (a finished run replays its final values)."""
    outcome = Outcome()
    for how, what in kills:
        worker = lane.get()
        if how == "hook":
            result = worker.run({**job, "crash_at": what})
            label = f"crash hook {what}"
        else:
            worker.submit(job)
            # the random moment of the kill, unless the cell finishes before it
            try:
                worker.kernel.wait_for(worker.finished, timeout=what)
            except TimeoutError:
                worker.kill()
                result = None
            else:
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
