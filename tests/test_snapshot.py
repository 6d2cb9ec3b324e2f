"""Background (fork) checkpoints for real: a worker process holding 80 MB of numpy state.

Checked: the snapshot is consistent (the array saved with position p holds exactly the first p
iterations' writes, although the loop kept writing while the child saved it); a child killed
mid-write is a reported failed checkpoint and the run goes on; a worker killed with SIGKILL takes
its writer with it (PR_SET_PDEATHSIG) and the next run resumes from a readable checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from resumable_magic import load
from resumable_magic.store.runstore import RunStore

N = 120
WORKER = """
import sys, time
import numpy as np
from resumable_magic import Resumable

state = {"arr": np.zeros(10_000_000), "done": 0}   # 80 MB: above the fork threshold
with Resumable("big", state, dir=sys.argv[1], every="0.2s") as run:
    for i in run.iterate(range(int(sys.argv[2]))):
        state["arr"][i] = i + 1          # iteration i writes slot i
        state["arr"][-1] = i + 1         # and rewrites the last page each time
        state["done"] += 1
        time.sleep(0.02)
print("FINISHED", state["done"], flush=True)
"""


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until(predicate, proc: subprocess.Popen, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"the worker exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)  # polling a condition, not hiding a race


@pytest.fixture
def worker(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = []

    def start(n: int = N, env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "ck"), str(n)],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def check_consistent(directory: Path) -> int:
    saved = load("big", dir=directory)
    arr, done = saved["arr"], saved["done"]
    expected = np.zeros(10_000_000)
    expected[:done] = np.arange(1, done + 1)
    if done:
        expected[-1] = done
    assert np.array_equal(arr, expected), f"the array saved at {done} mixes other iterations' writes"
    return done


def test_background_checkpoints_are_consistent_snapshots(worker, tmp_path):
    proc = worker()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "checkpoints are written by a background process (fork)" in out
    assert f"FINISHED {N}" in out
    assert check_consistent(tmp_path / "ck") == N
    # Every generation that a background writer committed and that is still kept is consistent too.
    store = RunStore(tmp_path / "ck", "big")
    assert store.read_latest().problems == []


def test_a_snapshot_taken_mid_run_holds_exactly_its_iterations(worker, tmp_path):
    proc = worker(n=100_000)
    store = RunStore(tmp_path / "ck", "big")
    wait_until(lambda: store.read_latest(load_state=False).checkpoint or None, proc, "a checkpoint")
    first = store.read_latest(load_state=False).checkpoint.generation
    wait_until(
        lambda: store.read_latest(load_state=False).checkpoint.generation >= first + 2, proc, "two more"
    )
    proc.send_signal(signal.SIGSTOP)  # hold it still while reading (its files stay put)
    try:
        assert check_consistent(tmp_path / "ck") > 0
    finally:
        proc.send_signal(signal.SIGCONT)


def test_a_killed_writer_is_a_failed_checkpoint_and_the_run_goes_on(worker, tmp_path):
    proc = worker(env={"RESUMABLE_CRASH_AT": "background:1"})  # the first writer dies at its start
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "could not be written (ChildDied: the background writer was killed by SIGKILL)" in out
    assert f"FINISHED {N}" in out and check_consistent(tmp_path / "ck") == N


def test_a_killed_worker_takes_its_writer_along_and_the_next_run_resumes(worker, tmp_path):
    proc = worker()
    child = wait_until(lambda: children(proc.pid), proc, "a background writer")[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while running(child):
        assert time.monotonic() < deadline, "the writer outlived its parent"
        time.sleep(0.01)
    resumed_from = check_consistent(tmp_path / "ck")
    again = worker()
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0, out
    assert f"from the checkpoint at iteration {resumed_from:,}" in out
    assert check_consistent(tmp_path / "ck") == N


def test_an_iteration_policy_keeps_checkpointing_while_background_writers_come_and_go(tmp_path, monkeypatch):
    """With ``every="1it"`` each boundary is due. While a forked writer is in flight its checkpoint
    is not committed, so the position the policy names next can already be behind the loop: the run
    must look again at the next iteration, not wait for the timer (switched off here, so that only
    the policy drives the boundaries)."""
    from resumable_magic import Resumable
    from resumable_magic.core import forked_writer, wakeup
    from resumable_magic.progress.model import ProgressModel

    if forked_writer.fork_refusal(80 * 2**20) is not None:
        pytest.fail(f"background checkpoints are refused here: {forked_writer.fork_refusal(80 * 2**20)}")
    monkeypatch.delenv("RESUMABLE_BACKGROUND", raising=False)
    monkeypatch.setattr(wakeup, "TICK_SECONDS", 3600.0)
    state = {"arr": np.zeros(10_000_000), "done": 0}  # 80 MB: above the fork threshold
    with Resumable("one-it", state, dir=tmp_path, every="1it", progress=ProgressModel()) as run:
        for i in run.iterate(range(6)):
            state["arr"][i] = i + 1
            state["done"] += 1
            if run.checkpoints.writer is not None:
                run.checkpoints.writer.wait(120)  # each writer has finished before the next boundary
    # A boundary after each of the 6 iterations: each collects the finished writer and forks the next.
    assert len(run.checkpoints.background_writes) == 6, run.checkpoints.background_writes
    assert load("one-it", dir=tmp_path)["done"] == 6
