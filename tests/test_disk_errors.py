"""Disk errors for real: a tiny tmpfs in a private mount namespace, and a path that cannot be a folder."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys
from resumable_magic import Resumable, CheckpointWriteError
state = {"big": bytes(range(256)) * 4096}  # 1 MiB: more than the 64 KiB file system holds
try:
    with Resumable("job", state, dir=sys.argv[1]) as run:
        for i in run.iterate(range(3)):
            print("iteration ran", flush=True)
except CheckpointWriteError as exc:
    print("ERROR:", exc)
    import os
    print("LEFT:", sorted(os.listdir(os.path.join(sys.argv[1], "job", "objects"))))
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
    assert "LEFT: []" in done.stdout  # the half-written temporary file was removed


def test_a_checkpoint_folder_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "blocked").write_text("a file where the checkpoint folder should be")
    from resumable_magic import CheckpointWriteError, Resumable

    with pytest.raises(CheckpointWriteError, match=r"Cannot write the checkpoint folder to .*blocked"):
        Resumable("job", {"x": 1}, dir=tmp_path / "blocked").open()
