"""Where a run comes from (the notebook or script that runs it) and why this attempt is a restart.

Read from the environment: `resumable run` starts the kernel or the script with both set, and the
environment is the one channel that reaches a notebook's magic and a script's plain API alike,
without a change to the user's code. JupyterLab and Notebook 7 start a kernel with the notebook's
path in ``JPY_SESSION_NAME``; a run started there records that path, so `resumable run` (and the
board) can find the notebook again.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["ORIGIN_ENV", "RESTART_ENV", "restart_cause", "run_origin"]

# JSON: {"notebook": path, "parameters": {...}} or {"script": path, "args": [...]}
ORIGIN_ENV = "RESUMABLE_RUN_ORIGIN"
# The cause of this attempt, e.g. "kernel killed by SIGKILL (restart 2 of 5)"
RESTART_ENV = "RESUMABLE_RUN_RESTART"


def run_origin() -> dict[str, Any] | None:
    """The run's origin, recorded in its manifests; None when nothing says (terminal IPython)."""
    text = os.environ.get(ORIGIN_ENV)
    if text:
        try:
            origin = json.loads(text)
        except ValueError:
            origin = None
        if isinstance(origin, dict):
            return origin
    session = os.environ.get("JPY_SESSION_NAME")
    return {"notebook": session} if session else None


def restart_cause() -> str | None:
    """Why the supervisor started this attempt after the last one died; None outside a restart."""
    return os.environ.get(RESTART_ENV) or None
