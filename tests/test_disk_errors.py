"""Disk errors for real: a tiny tmpfs in a private mount namespace, and a path that cannot be a folder."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys
from resumable_magic import Resumable, CheckpointWriteError
state = {"big": bytes(range(256)) * 4096}  # 1 MiB (out of band): more than the 64 KiB file system holds
try:
    with Resumable("job", state, dir=sys.argv[1]) as run:
        for i in run.iterate(range(3)):
            print("iteration ran", flush=True)
except CheckpointWriteError as exc:
    print("ERROR:", exc)
    import os
    left = sorted(os.listdir(os.path.join(sys.argv[1], "job", "objects")))
    print("LEFT:", left, "TEMPORARIES:", [n for n in left if n.startswith(".tmp-")])
    print("SIZES:", sorted(os.path.getsize(os.path.join(sys.argv[1], "job", "objects", n)) for n in left))
"""


def test_disk_full_before_the_loop_is_a_clear_error_and_leaves_no_temporaries(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            f'mount -t tmpfs -o size=64k tmpfs "{mount}" && "{sys.executable}" "{script}" "{mount}"',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "iteration ran" not in done.stdout
    assert "ERROR: Cannot write the first checkpoint (before the loop)" in done.stdout
    assert "No space left on device" in done.stdout and "Traceback" not in done.stdout + done.stderr
    # The half-written temporary file was removed. The state's small stream, a whole blob written
    # before its 1 MiB buffer, may stay until the next commit collects it (nothing names it).
    assert "TEMPORARIES: []" in done.stdout
    sizes = done.stdout.split("SIZES:")[1].strip()
    assert all(int(n) < 64 * 1024 for n in sizes.strip("[]").split(",") if n.strip()), done.stdout


def test_a_checkpoint_folder_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "blocked").write_text("a file where the checkpoint folder should be")
    from resumable_magic import CheckpointWriteError, Resumable

    with pytest.raises(CheckpointWriteError, match=r"Cannot write the checkpoint folder to .*blocked"):
        Resumable("job", {"x": 1}, dir=tmp_path / "blocked").open()


GROWING = """
import os, sys
from resumable_magic import CheckpointWriteError, Resumable
from resumable_magic.store.runstore import RunStore

state = {"blocks": []}
try:
    with Resumable("grow", state, dir=sys.argv[1], every="1it") as run:
        for i in run.iterate(range(40)):
            state["blocks"].append(os.urandom(100_000))  # incompressible: 100 kB more per iteration
            print("iteration", i, flush=True)
except CheckpointWriteError as exc:
    print("FINAL:", exc)
newest = RunStore(sys.argv[1], "grow").read_latest()
print("READABLE:", newest.checkpoint.position, len(newest.problems))
left = [n for d in ("grow", "grow/objects") for n in os.listdir(os.path.join(sys.argv[1], d))]
print("TEMPORARIES:", [n for n in left if n.startswith(".tmp-")])
"""


def test_a_filling_disk_warns_first_then_fails_checkpoints_and_keeps_the_last_good_one(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "grow.py"
    script.write_text(GROWING)
    done = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            f'mount -t tmpfs -o size=2m tmpfs "{mount}" && "{sys.executable}" "{script}" "{mount}" 2>&1',
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    warned, failed = (
        out.find("the next checkpoints may fail for lack of space"),
        out.find("could not be written"),
    )
    assert 0 <= warned < failed, out  # the warning comes before the first failed checkpoint
    assert out.count("the next checkpoints may fail") == 1
    assert "iteration 39" in out  # the loop went on past the failures
    assert "FINAL: Cannot write the final checkpoint" in out and "No space left on device" in out
    position, problems = map(int, out.split("READABLE: ")[1].split()[:2])
    assert position > 0 and problems == 0  # the last good checkpoint reads back, undamaged
    assert "TEMPORARIES: []" in out
