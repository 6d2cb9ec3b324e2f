"""The lease (resumable_magic/lease.py) with real processes and real files: refusal, takeover, fencing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from resumable_magic import Resumable
from resumable_magic.errors import OwnershipLostError, RunOwnedError
from resumable_magic.lease.lease import LEASE_FILE, Lease, owner_state, read_lease
from resumable_magic.lease.procs import process_start_time
from resumable_magic.store.runstore import RunStore

REPO = Path(__file__).resolve().parents[1]

# A process that takes the lease of run "r" under argv[1], says so, and then waits to be killed.
HOLDER = """\
import sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from resumable_magic.lease.lease import Lease
lease = Lease(Path(sys.argv[1]), "r")
lease.acquire()
lease.start_heartbeat(lambda: 7, on_lost=lambda: None)
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(repo=str(REPO)), str(run)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "held\n"
    yield run, proc
    proc.kill()
    proc.wait()
    proc.stdout.close()


def test_a_live_owner_is_named_in_the_refusal(holder):
    run, proc = holder
    with pytest.raises(RunOwnedError) as refused:
        Lease(run, "r").acquire()
    message = str(refused.value)
    assert f"pid {proc.pid} on host {socket.gethostname()}" in message
    assert "last heartbeat" in message and "process started" in message
    assert read_lease(run)["pid"] == proc.pid  # the refusal changed nothing


def test_the_heartbeat_thread_keeps_the_lease_fresh(holder):
    run, _ = holder
    first = read_lease(run)["heartbeat"]
    _wait_until(lambda: read_lease(run)["heartbeat"] != first)
    assert read_lease(run)["position"] == 7


def _wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)


def test_a_dead_owner_is_taken_over_with_what_it_had_reached(holder):
    run, proc = holder
    _wait_until(lambda: read_lease(run)["position"] == 7)  # its first heartbeat
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lease = Lease(run, "r")
    note = lease.acquire()
    assert note is not None and "its process is gone" in note and f"pid {proc.pid}" in note
    assert lease.previous["position"] == 7  # what the dead owner had reached
    assert read_lease(run)["token"] == lease.token


def test_a_stopped_owner_is_taken_over_after_its_timeout_and_is_fenced_out(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    old = Lease(run, "r", timeout=0.5)
    old.acquire()
    old.start_heartbeat(lambda: 3, on_lost=lambda: None)
    # Simulate the process being stopped: its heartbeat thread no longer runs.
    old._stop.set()
    old._thread.join()
    _wait_until(lambda: owner_state(read_lease(run)) == "stale")
    new = Lease(run, "r")
    new.acquire()  # (in-process here; tests/test_ownership.py does this with a SIGSTOPped kernel)
    with pytest.raises(OwnershipLostError), old.fenced():
        pass
    with new.fenced():
        pass  # the new owner commits
    new.release()
    assert read_lease(run)["released"] is not None


def test_another_hosts_lease_is_judged_by_its_heartbeat_age(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    record = {"token": "t", "host": "elsewhere.example", "pid": 1, "heartbeat": time.time(), "timeout": 60}
    (run / LEASE_FILE).write_text(json.dumps(record))
    with pytest.raises(RunOwnedError, match=r"elsewhere\.example"):
        Lease(run, "r").acquire()
    (run / LEASE_FILE).write_text(json.dumps({**record, "heartbeat": time.time() - 61}))
    note = Lease(run, "r").acquire()
    assert "heartbeat stopped" in note


def test_a_reused_pid_does_not_keep_a_dead_owner_alive(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    started = process_start_time(os.getppid())
    assert started is not None
    record = {  # our parent is alive, but it is not the process that took this lease
        "token": "t",
        "host": socket.gethostname(),
        "pid": os.getppid(),
        "process_started": started - 1000,
        "heartbeat": time.time(),
        "timeout": 60,
    }
    (run / LEASE_FILE).write_text(json.dumps(record))
    assert owner_state(record) == "gone"
    assert "its process is gone" in Lease(run, "r").acquire()


def test_a_writer_that_missed_a_newer_generation_cannot_commit(tmp_path):
    first, second = RunStore(tmp_path, "k"), RunStore(tmp_path, "k")
    first.ensure()
    blob, _ = first.put_blob(b"state")
    manifest = {"position": 0, "created": time.time(), "state": {"digest": blob, "size": 5}}
    first.commit(manifest)
    second.read_latest()
    second.commit(manifest)  # knows generation 1: commits 2
    with pytest.raises(OwnershipLostError, match="committed generation 2"):
        first.commit(manifest)
    assert sorted(p.name for p in first.path.glob("manifest.*")) == ["manifest.00000002.json"]


def test_the_plain_api_releases_its_lease_and_a_refused_run_leaves_it_as_it_was(tmp_path):
    state = {"total": 0}
    with Resumable("k", state, dir=tmp_path, every="1it", inputs={"n": 5}) as run:
        for i in run.iterate(range(5)):
            state["total"] += i
    lease = read_lease(tmp_path / "k")
    assert lease["released"] is not None and lease["position"] == 5
    before = (tmp_path / "k" / LEASE_FILE).read_bytes()
    refused = Resumable("k", {"total": 0}, dir=tmp_path, inputs={"n": 6})
    with pytest.raises(Exception, match="values the cell reads changed"):
        refused.open()
    assert (tmp_path / "k" / LEASE_FILE).read_bytes() == before


# Runs a Resumable loop twice (a run, then its replay) with the cyclic GC off, then collects; prints
# (thread-locals of the runs the GC freed, whether a control thread-local in a cycle was freed). In a
# process of its own: no other thread can collect, or turn the GC back on, in between.
GC_CHECK = """\
import _thread, gc, json, sys, threading, weakref
sys.path.insert(0, {repo!r})
from resumable_magic import Resumable
ckpt = sys.argv[1]
gc.collect()
gc.disable()  # what the runs leave in cycles stays there until the collect below
before = {{id(o) for o in gc.get_objects() if isinstance(o, _thread._local)}}
control = [threading.local()]  # a thread-local in a cycle: what the check must catch
control.append(control)
control_ref = weakref.ref(control[0])
del control
for _ in range(2):
    state = {{"total": 0}}
    with Resumable("locals", state, ["total"], dir=ckpt, every="2it") as run:
        for i in run.iterate(range(10)):
            state["total"] += i
    del run
left = [weakref.ref(o) for o in gc.get_objects() if isinstance(o, _thread._local) and id(o) not in before]
seen = control_ref in left  # weakref.ref hands out one ref object per referent
gc.collect()
freed = [ref for ref in left if ref() is None and ref is not control_ref]
print(json.dumps({{"freed": len(freed), "control_seen_and_freed": seen and control_ref() is None}}))
"""


@pytest.mark.parametrize("storage", ["local", "memory", "s3"])
def test_a_run_leaves_no_thread_local_for_the_cyclic_gc_to_free(storage, tmp_path, request):
    """Python 3.11 deadlocks when the cyclic GC frees a ``threading.local`` inside ``sys._current_frames()``
    (CPython gh-106883), which Dask's profiler calls every 10 ms on every worker: a run's objects end
    in reference cycles, so none of them may hold a thread-local (a thread-local ``FileLock`` did).
    On every kind of storage a shard can use."""
    ckpt = {
        "local": lambda: str(tmp_path),
        "memory": lambda: f"memory://locals-{uuid.uuid4().hex[:10]}",
        "s3": lambda: f"s3://{request.getfixturevalue('s3_bucket')}/locals",
    }[storage]()
    out = subprocess.run(
        [sys.executable, "-c", GC_CHECK.format(repo=str(REPO)), ckpt],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["control_seen_and_freed"], "the check no longer sees a cycle's thread-local"
    assert found["freed"] == 0, f"{found['freed']} thread-locals of the runs freed by the cyclic GC"
