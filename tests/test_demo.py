"""The README's main job: the quick-start notebook killed mid-loop, restarted, resumed, verified."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "notebooks" / "crash_demo.py"


@pytest.mark.kernel
def test_crash_demo_resumes_to_the_uninterrupted_result(tmp_path):
    env = {**os.environ, "RESUMABLE_ARTIFACTS": str(tmp_path)}
    done = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Kernel killed with SIGKILL" in done.stdout
    assert "Redoing the work after it: the interrupted run had reached iteration" in done.stdout
    assert (
        len(re.findall(r"identical: +True", done.stdout)) == 3
        and (tmp_path / "quickstart-resumed.ipynb").exists()
    )
