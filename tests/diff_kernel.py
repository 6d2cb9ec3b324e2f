"""The differential test's code inside each kernel: arm the crash hook for one job, then report its result.

The test (``diffrun.py``) runs each job in a real ipykernel kernel as three cells: ``%reset -f`` and
:func:`prepare` (a clean namespace, the crash hook armed for this job only: ``RESUMABLE_CRASH_AT``'s
meaning, the n-th time this job reaches ``<step>``), the job's cell itself (the ``%%resumable`` magic,
loaded once per kernel with ``%load_ext``, or plain Python), then :func:`report`, which prints
``RESULT <json>``: the error the cell raised (type and message), whether that is a
:class:`ResumableError` (a refusal), the canonical text of each named variable and of both global
RNG states.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from typing import Any

import numpy as np
from IPython import get_ipython

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


def prepare(crash_at: str) -> None:
    """Before a job: arm the crash hook for it (or disarm it) and forget the last job's error."""
    crashpoints._crash_spec = crash_at
    crashpoints._crash_counts.clear()
    if "ipywidgets" in sys.modules:  # the last job's progress display: its widgets live on in the kernel
        sys.modules["ipywidgets"].Widget.close_all()
    # IPython records the error a cell raised here, also one shown by its ``_render_traceback_``
    sys.last_type = sys.last_value = sys.last_traceback = None  # type: ignore[assignment]


def report(names: list[str]) -> None:
    """After a job: print its result as one ``RESULT <json>`` line."""
    crashpoints._crash_spec = ""
    error = sys.last_value
    ns = get_ipython().user_ns
    result = {
        "error": f"{type(error).__name__}: {error}" if error is not None else None,
        "refused": isinstance(error, ResumableError),
        "state": {n: canon(ns[n]) if n in ns else "<unbound>" for n in names},
        "rng": rng_digest(),
    }
    print("RESULT " + json.dumps(result))
