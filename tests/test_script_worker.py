"""The README's plain-Python worker: killed with SIGKILL from the shell, restarted, finishes right."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from checkpoints import newest_position

WORKER = Path(__file__).resolve().parents[1] / "notebooks" / "drain_worker.py"


def test_worker_survives_kill_9_and_redoes_at_most_one_interval(tmp_path):
    every = 40
    args = [
        sys.executable,
        str(WORKER),
        "--items",
        "1500",
        "--dir",
        str(tmp_path / "ck"),
        "--every",
        f"{every}it",
    ]
    reference = subprocess.run(
        [*args[:-4], "--dir", str(tmp_path / "ref")], capture_output=True, text=True, check=True
    )
    log = tmp_path / "log.txt"
    run_dir = tmp_path / "ck" / "drain-worker"
    for target in (200, 700):
        proc = subprocess.Popen([*args, "--log", str(log)], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while (
            (newest_position(run_dir) or 0) < target and proc.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.01)  # polling for a file, not hiding a race
        assert proc.poll() is None, "the worker finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        processed = log.read_text().split()
        lost = len(processed) - newest_position(run_dir)
        assert 0 <= lost <= every + 1, f"{lost} iterations past the newest checkpoint"
    final = subprocess.run([*args, "--log", str(log)], capture_output=True, text=True, check=True)
    assert final.stdout.splitlines()[-1] == reference.stdout.splitlines()[-1]  # same results, same digest
    assert "Resumed todo, results from the checkpoint" in final.stdout
    assert sorted(set(map(int, log.read_text().split()))) == list(range(1500))
