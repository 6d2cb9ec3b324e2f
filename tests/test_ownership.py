"""Two real kernels and one run: refusal, takeover of a killed or stopped owner, fencing; and runs with
different parameters side by side in one folder. Kernels are driven through jupyter_client
(tests/kernels.py) and crashed or stopped with real signals."""

from __future__ import annotations

import fcntl
import json
import os
import signal
from pathlib import Path

import pytest

from resumable_magic.lease.lease import LOCK_FILE, owner_state, read_lease
from resumable_magic.store.runstore import MANIFEST_RE

pytestmark = pytest.mark.kernel

N = 400
# Each kernel logs the iterations it ran to its own file (named by its pid), outside the state.
CELL = """\
%%resumable total --name shared --dir {ck} --every 5it {quiet}
import os, time
total = 0
for i in range({n}):
    total += i
    with open(f"log-{{os.getpid()}}.txt", "a") as log:
        log.write(f"{{i}}\\n")
    time.sleep({pause})
print("total", total)
"""


def iterations_run(cwd: Path, pid: int) -> int:
    path = cwd / f"log-{pid}.txt"
    return len(path.read_text().split()) if path.exists() else 0


def committed_files(run: Path) -> dict[str, bytes]:
    """Everything a commit, DONE, an outcome or a lease change writes (blobs are checked apart)."""
    return {
        p.name: p.read_bytes()
        for p in run.iterdir()
        if p.is_file() and p.name != LOCK_FILE and not p.name.startswith(".tmp-")
    }


def start_two(kernel_factory, env_a=None):
    a, b = kernel_factory(env=env_a), kernel_factory()
    for k in (a, b):
        k.run("%load_ext resumable_magic")
    return a, b


def test_a_second_kernel_is_refused_then_takes_over_when_the_owner_is_killed(kernel_factory, tmp_path):
    a, b = start_two(kernel_factory)
    cell = CELL.format(ck=tmp_path / "ck", n=N, pause=0.01, quiet="")
    running = a.execute_async(cell)
    a.wait_for(lambda: iterations_run(tmp_path, a.pid) >= 20)

    refused = b.execute(cell)
    assert refused.error is not None and refused.error.ename == "RunOwnedError", refused.describe()
    assert f"pid {a.pid} on host" in refused.error.evalue and "last heartbeat" in refused.error.evalue
    assert "Traceback" not in refused.output
    assert iterations_run(tmp_path, b.pid) == 0  # nothing ran
    assert a.partial(running).error is None  # the owner goes on
    status = b.run(f"%resumable_status {tmp_path / 'ck'}")
    row = next(line for line in status.text.splitlines() if line.startswith("shared"))
    assert row.split()[1] == "running", status.text

    a.kill()
    resumed = b.run(cell)
    assert f"The previous kernel (pid {a.pid}) died; this kernel takes the run over." in resumed.stdout
    assert f"total {sum(range(N))}" in resumed.stdout
    assert iterations_run(tmp_path, b.pid) < N  # resumed, not started over


def all_threads_stopped(pid: int) -> bool:
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        states.append(stat[stat.rindex(")") + 2])
    return all(state == "T" for state in states)


def stop_outside_the_lock(kernel, run_dir: Path) -> None:
    """SIGSTOP ``kernel`` at a moment it does not hold the run's mutex.

    The heartbeat takes the mutex 4 times a second for ~100 us; a process stopped inside it blocks
    everyone until it continues (documented: the lease section of the README). This test is about a
    stopped owner, not a stopped lock holder, so it checks the lock with the same ``flock`` filelock
    uses and lets the kernel continue and stops it again if the signal landed inside.
    """
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            kernel.send_signal(signal.SIGSTOP)
            kernel.wait_for(lambda: all_threads_stopped(kernel.pid))  # kill() only queues the stop
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                kernel.send_signal(signal.SIGCONT)
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
    finally:
        os.close(fd)


def test_a_stopped_owner_is_taken_over_and_cannot_commit_when_it_continues(kernel_factory, tmp_path):
    a, b = start_two(kernel_factory, env_a={"RESUMABLE_LEASE_TIMEOUT": "2"})
    run_dir = tmp_path / "ck" / "shared"
    cell = CELL.format(ck=tmp_path / "ck", n=N, pause=0.005, quiet="--quiet")
    stopped = a.execute_async(cell)
    a.wait_for(lambda: iterations_run(tmp_path, a.pid) >= 20)
    stop_outside_the_lock(a, run_dir)
    try:
        b.wait_for(lambda: owner_state(read_lease(run_dir)) == "stale", timeout=30)
        taken = b.run(cell)
        assert f"The previous kernel (pid {a.pid}) has not renewed its hold on the run for " in taken.output
        assert f"total {sum(range(N))}" in taken.stdout
        before = committed_files(run_dir)
        assert read_lease(run_dir)["pid"] == b.pid
    finally:
        a.send_signal(signal.SIGCONT)

    lost = a.result(stopped)
    assert lost.error is not None and lost.error.ename == "OwnershipLostError", lost.describe()
    assert f"taken over by pid {b.pid}" in lost.error.evalue
    # The old owner wrote nothing readers see: no manifest, no DONE, no outcome, no lease change.
    assert committed_files(run_dir) == before
    newest = max(p for p in run_dir.iterdir() if MANIFEST_RE.match(p.name))
    history = json.loads(newest.read_bytes())["history"]
    assert [(e["event"], e["pid"]) for e in history] == [
        ("started", a.pid),
        ("resumed", b.pid),
        ("finished", b.pid),
    ]
    again = b.run(cell)  # and the run is still b's finished result
    assert "replayed" in again.output
    assert f"total {sum(range(N))}" in again.stdout


PARAM_CELL = """\
%%resumable results --name sweep --params seed --dir {ck} --every 3it --quiet
import random, hashlib
random.seed(seed)
results = []
for i in range(300):
    results.append(random.random())
digest = hashlib.sha256(repr(results).encode()).hexdigest()
print("seed", seed, "digest", digest, "n", len(results))
"""


def summary(result) -> str:
    return next(line for line in result.stdout.splitlines() if line.startswith("seed "))


def test_runs_with_different_parameters_share_a_folder_without_interfering(kernel_factory, tmp_path):
    a, b = start_two(kernel_factory)
    a.run("seed = 1")
    b.run("seed = 2")
    solo = {k: summary(k.run(PARAM_CELL.format(ck=tmp_path / f"solo-{n}"))) for n, k in (("a", a), ("b", b))}
    shared = tmp_path / "shared"
    msgs = [(k, k.execute_async(PARAM_CELL.format(ck=shared))) for k in (a, b)]
    together = {k: summary(k.result(m).check()) for k, m in msgs}
    for k in (a, b):
        assert together[k] == solo[k] and "n 300" in solo[k]
    assert solo[a] != solo[b]
    assert sorted(p.name for p in (shared / "sweep").iterdir()) == ["seed=1", "seed=2"]
