"""The run panel's view (``progress/panel.js``): the dead-kernel text, run in Node.js on the ES module
itself (the same code the browser runs; the browser tests check it in JupyterLab)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

PANEL = Path(__file__).resolve().parents[1] / "resumable_magic" / "progress" / "panel.js"


def death_text(view: dict, checkpoint: dict | None) -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is needed to run the widget's ES module (apt-get install nodejs)", pytrace=False)
    script = (
        f"import({json.dumps(PANEL.as_uri())}).then(m => "
        f"process.stdout.write(m.deathText({json.dumps(view)}, {json.dumps(checkpoint)})))"
    )
    done = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


VIEW = {"position": 151, "total": 400, "last_checkpoint": {"iteration": 140, "time": time.time() - 30}}


def test_the_checkpoint_on_disk_names_what_a_resume_redoes():
    wall = time.time() - 5
    disk = {"iteration": 146, "position": 146, "total": 400, "time": wall, "folder_exists": True}
    assert death_text(VIEW, disk) == (
        f"Kernel died at about iteration 151 of 400. Last checkpoint: iteration 146 ({clock(wall)}). "
        "Run the cell again to resume (5 iterations will be redone)."
    )


def test_without_the_disk_the_kernels_last_report_is_used():
    wall = VIEW["last_checkpoint"]["time"]
    assert death_text(VIEW, None) == (
        f"Kernel died at about iteration 151 of 400. Last checkpoint: iteration 140 ({clock(wall)}). "
        "Run the cell again to resume (11 iterations will be redone)."
    )


def test_a_disk_ahead_of_the_widget_is_believed_and_one_iteration_is_one():
    wall = time.time()
    assert death_text(VIEW, {"iteration": 155, "total": 400, "time": wall, "folder_exists": True}) == (
        f"Kernel died at about iteration 155 of 400. Last checkpoint: iteration 155 ({clock(wall)}). "
        "Run the cell again to resume (nothing will be redone)."
    )
    one = death_text({**VIEW, "position": 141}, None)
    assert one.endswith("(1 iteration will be redone).")


def test_no_checkpoint_means_starting_over():
    assert death_text(VIEW, {"folder_exists": False}) == (
        "Kernel died at about iteration 151 of 400. No checkpoint on disk: running the cell again starts over."
    )
    assert death_text({"position": 3, "total": None, "last_checkpoint": None}, None) == (
        "Kernel died at about iteration 3. No checkpoint was written: running the cell again starts over."
    )


def test_the_servers_iso_time_reads_as_the_same_clock():
    """The extension's endpoint sends the checkpoint's time as ISO 8601; the kernel sends seconds."""
    from datetime import datetime, timezone

    wall = time.time() - 7
    iso = datetime.fromtimestamp(wall, timezone.utc).isoformat()
    disk = {"iteration": 146, "total": 400, "time": iso, "folder_exists": True}
    assert f"Last checkpoint: iteration 146 ({clock(wall)})." in death_text(VIEW, disk)
