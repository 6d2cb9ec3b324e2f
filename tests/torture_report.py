"""Pytest plugin: the torture test's figures, printed at the end of the run and saved for CI.

``test_torture.py`` adds to :data:`FIGURES` as it goes; at the end of the session this plugin prints
them (the last lines of the CI log) and writes them to ``ci-artifacts/torture.json``. Nothing is
printed or written when the torture test did not run.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

ARTIFACT = Path(__file__).resolve().parents[1] / "ci-artifacts" / "torture.json"

#: Filled by test_torture.py: counters and the seed of the random kills.
FIGURES: dict[str, Any] = {}
_lock = threading.Lock()  # the test drives workers from several threads


def add(name: str, amount: int = 1) -> None:
    """Add ``amount`` to the counter ``name``."""
    with _lock:
        FIGURES[name] = FIGURES.get(name, 0) + amount


def add_to(table: str, name: str, amount: int = 1) -> None:
    """Add ``amount`` to ``FIGURES[table][name]`` (kills per commit step, ...)."""
    with _lock:
        counts = FIGURES.setdefault(table, {})
        counts[name] = counts.get(name, 0) + amount


def summary_lines(figures: dict[str, Any]) -> list[str]:
    lines = [
        f"runs: {figures.get('runs', 0)}, processes started: {figures.get('launches', 0)}, "
        f"kills (SIGKILL): {figures.get('kills', 0)} "
        f"({figures.get('kills_deterministic', 0)} at commit steps, {figures.get('kills_random', 0)} at random times)",
        f"results equal to the uninterrupted run: {figures.get('results_equal', 0)} of {figures.get('runs', 0)}",
        f"checkpoints lost: {figures.get('checkpoints_lost', 0)}; damaged files after a kill: "
        f"{figures.get('damaged_after_kill', 0)} (checked after each of {figures.get('checks', 0)} kills)",
    ]
    by_step = figures.get("kills_by_step")
    if by_step:
        lines.append("kills per commit step: " + ", ".join(f"{k} {v}" for k, v in by_step.items()))
    if "seed" in figures:
        lines.append(
            f"random kills seed: {figures['seed']} (RESUMABLE_TORTURE_SEED={figures['seed']} replays the "
            f"kill times); {figures.get('seconds', 0):.1f} s"
        )
    return lines


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.write_sep("=", "torture test: SIGKILL at commit steps and random times")
    for line in summary_lines(FIGURES):
        terminalreporter.write_line(line)
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(FIGURES, indent=1, sort_keys=True) + "\n")
    terminalreporter.write_line(f"(written to {ARTIFACT})")
