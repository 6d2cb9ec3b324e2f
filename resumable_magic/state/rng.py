"""Capture and restore the global random number generators, so a resumed run draws what an
uninterrupted one would have drawn.

Covered: :mod:`random` always, ``numpy.random``'s global generator when numpy is imported. Generators
the user creates (``numpy.random.default_rng()``, ``random.Random()``) are ordinary objects: name them
as state and they are checkpointed with the rest.
"""

from __future__ import annotations

import importlib
import random
import sys
from typing import Any


def capture() -> dict[str, Any]:
    """The current global RNG states, by module name."""
    states: dict[str, Any] = {"random": random.getstate()}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        states["numpy"] = numpy.random.get_state(legacy=False)
    return states


def restore(states: dict[str, Any]) -> None:
    """Put back what :func:`capture` returned (importing numpy if the checkpoint used it)."""
    if "random" in states:
        random.setstate(states["random"])
    if "numpy" in states:
        importlib.import_module("numpy").random.set_state(states["numpy"])
