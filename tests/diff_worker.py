"""The differential test's worker: runs many generated cells, one after another, in a real IPython shell.

    python tests/diff_worker.py

A long-lived process (starting one costs ~0.5 s; a cell takes milliseconds), killed with SIGKILL by the
test at random times or by the test-only crash hook, and replaced by a fresh one that runs the same cell
again (it resumes). Jobs arrive on stdin as JSON lines: ``{"cell": TEXT, "names": [...], "crash_at":
"<step>:<n>" or null}``. For each the worker clears the shell's namespace (``reset``), arms the crash
hook (``RESUMABLE_CRASH_AT``'s meaning, set per job: the n-th time this job reaches ``<step>``), prints
``START``, runs the cell through ``InteractiveShell.run_cell`` (the ``%%resumable`` magic, loaded with
``%load_ext``, or plain Python), then prints ``RESULT <json>``: the error it raised (type and message),
whether that is a :class:`ResumableError` (a refusal), the canonical text of each named variable and
of both global RNG states, and every ``resumable:`` line the run printed (warnings and errors).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import sys
from typing import Any

import numpy as np
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from resumable_magic.errors import ResumableError
from resumable_magic.storage import crashpoints


def canon(value: Any) -> Any:
    """A value as JSON-able text that is equal exactly when the values are: floats by ``repr`` (it
    round-trips), types kept (a numpy integer is not an int), dicts in their order, sets sorted."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and type(value) in (int, float):
        return [type(value).__name__, repr(value)]
    if isinstance(value, np.generic):
        return ["np." + type(value).__name__, repr(value.item())]
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [canon(v) for v in value]]
    if isinstance(value, dict):
        return ["dict", [[canon(k), canon(v)] for k, v in value.items()]]
    if isinstance(value, (set, frozenset)):
        return [type(value).__name__, sorted((canon(v) for v in value), key=json.dumps)]
    if hasattr(value, "__dict__"):
        return ["object " + type(value).__qualname__, canon(dict(sorted(vars(value).items())))]
    return ["repr", repr(value)]


def rng_digest() -> str:
    state = (random.getstate(), [repr(x) for x in np.random.get_state()])
    return hashlib.sha256(repr(state).encode()).hexdigest()[:16]


def run(shell: InteractiveShell, job: dict[str, Any]) -> dict[str, Any]:
    shell.reset(new_session=False)
    crashpoints._crash_spec = job.get("crash_at") or ""
    crashpoints._crash_counts.clear()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        result = shell.run_cell(job["cell"], store_history=False, silent=False)
    crashpoints._crash_spec = ""
    error = result.error_before_exec or result.error_in_exec
    ns = shell.user_ns
    return {
        "error": f"{type(error).__name__}: {error}" if error is not None else None,
        "refused": isinstance(error, ResumableError),
        "state": {n: canon(ns[n]) if n in ns else "<unbound>" for n in job["names"]},
        "rng": rng_digest(),
        "messages": [line for line in (out.getvalue() + err.getvalue()).splitlines() if "resumable:" in line],
        "output": (out.getvalue() + err.getvalue())[-3000:] if error is not None else "",
    }


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    config = Config()
    config.HistoryManager.enabled = False  # no sqlite file to open and fsync for each process
    shell = InteractiveShell.instance(config=config, colors="nocolor")
    shell.run_line_magic("load_ext", "resumable_magic")
    proto.write("READY\n")
    for line in sys.stdin:
        job = json.loads(line)
        proto.write("START\n")
        proto.write("RESULT " + json.dumps(run(shell, job)) + "\n")


if __name__ == "__main__":
    main()
