"""The reference loop of the plain-API damage tests: the state and the global RNG change every
iteration, a checkpoint follows each one, and a run can be cut short at a chosen item."""

from __future__ import annotations

import random
from pathlib import Path

from resumable_magic import Resumable
from resumable_magic.progress.model import ProgressModel


class Recorder(ProgressModel):
    """Keeps the run's messages (warnings name damaged files)."""

    def __init__(self) -> None:
        super().__init__()
        self.said: list[tuple[str, str]] = []

    def message(self, level: str, text: str) -> None:
        super().message(level, text)
        self.said.append((level, text))

    def text(self, level: str) -> str:
        return "\n".join(text for lvl, text in self.said if lvl == level)


class Stop(Exception):
    """Raised by the loop at ``stop_at``: the run ends as an interrupted one."""


def run_loop(ckpt: str | Path, key: str, n: int, stop_at: int | None = None) -> tuple[tuple, Recorder]:
    """Runs (or resumes) run ``key`` of ``n`` items; returns (final values and RNG state, or () when
    stopped at ``stop_at``; the messages)."""
    saved = random.getstate()
    random.seed(11)
    state: dict = {"total": 0.0, "seen": []}
    progress = Recorder()
    try:
        with Resumable(key, state, dir=ckpt, every="1it", progress=progress) as run:
            for i in run.iterate(range(n)):
                if i == stop_at:
                    raise Stop
                state["total"] += random.random()
                state["seen"].append(i)
        return (state["total"], state["seen"], random.getstate()), progress
    except Stop:
        return (), progress
    finally:
        random.setstate(saved)
