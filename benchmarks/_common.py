"""Shared by the benchmarks: interleaved repeated timing, ratio tables, headline rows, JSON artifacts.

Timings on a shared machine are noisy, so every figure is a ratio against a baseline measured in the
same run: the contenders of one case run round-robin (baseline, a, b, baseline, a, b, ...) and each
one's median is divided by the baseline's median. The headline rows of the summary table
(``benchmarks/run_all.py``) take the median and min-max of the per-round ratios instead: round i of
both ran back to back, under the same load.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from resumable_magic.storage.local import fsync_dir, write_atomic

REPO = Path(__file__).resolve().parents[1]
# run_all.py --quick and the smoke test point this elsewhere, so tiny runs never overwrite full figures.
ARTIFACTS = Path(os.environ.get("RESUMABLE_BENCH_ARTIFACTS") or REPO / "ci-artifacts" / "bench")
GIB = 1 << 30
MIB = 1 << 20


def measure(
    contenders: dict[str, Callable[[], Any]], rounds: int, after: Callable[[str, Any], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Run each contender ``rounds`` times, interleaved; wall and CPU medians; errors recorded.

    ``after(name, result)`` runs outside the timed part (to delete files, free memory).
    """
    walls: dict[str, list[float]] = {name: [] for name in contenders}
    cpus: dict[str, list[float]] = {name: [] for name in contenders}
    errors: dict[str, str] = {}
    for _ in range(rounds):
        for name, run in contenders.items():
            if name in errors:
                continue
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                result = run()
            except Exception as exc:  # a contender that cannot do this case: reported, not fatal
                errors[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
                continue
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            walls[name].append(wall)
            cpus[name].append(cpu)
            if after is not None:
                after(name, result)
            del result
    out: dict[str, dict[str, Any]] = {}
    for name in contenders:
        if name in errors:
            out[name] = {"error": errors[name]}
        else:
            out[name] = {
                "wall_s": statistics.median(walls[name]),
                "cpu_s": statistics.median(cpus[name]),
                "wall_all_s": walls[name],
            }
    return out


def ratios(results: dict[str, dict[str, Any]], baseline: str, key: str = "wall_s") -> None:
    base = results.get(baseline, {}).get(key)
    for row in results.values():
        if base and key in row:
            row[f"ratio_{key[:-2]}"] = row[key] / base


def print_table(title: str, results: dict[str, dict[str, Any]], baseline: str, extra: str = "") -> None:
    print(f"\n{title}  (baseline: {baseline}){'  ' + extra if extra else ''}")
    print(f"  {'contender':<34} {'wall':>10} {'ratio':>7} {'cpu':>10} {'ratio':>7}  note")
    for name, row in results.items():
        if "error" in row:
            print(f"  {name:<34} {'-':>10} {'-':>7} {'-':>10} {'-':>7}  {row['error']}")
            continue
        note = row.get("note", "")
        print(
            f"  {name:<34} {row['wall_s'] * 1e3:>8.1f}ms {row.get('ratio_wall', float('nan')):>7.3f}"
            f" {row['cpu_s'] * 1e3:>8.1f}ms {row.get('ratio_cpu', float('nan')):>7.3f}  {note}"
        )


def machine() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def headline(
    figure: str,
    ratio: float | None,
    low: float | None = None,
    high: float | None = None,
    *,
    baseline: str,
    target: str = "",
    met: bool | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One row of the summary table ``benchmarks/run_all.py`` prints: a figure as a ratio to its
    baseline from the same run (median, with min and max over rounds), its target, whether it met it.

    Each benchmark puts its rows in its JSON artifact under ``"headlines"``.
    """
    return {
        "figure": figure,
        "ratio": ratio,
        "min": low,
        "max": high,
        "baseline": baseline,
        "target": target,
        "met": met,
        "note": note,
    }


def _target(at_most: float | None, below: float | None) -> str:
    if at_most is not None:
        return f"<= {at_most:g}"
    return f"< {below:g}" if below is not None else ""


def ratio_headline(
    figure: str,
    samples: Sequence[float],
    *,
    baseline: str,
    at_most: float | None = None,
    below: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    """A headline from per-round ratios: their median, min and max; met if the median is within the target
    (``at_most``: <=, ``below``: <). No samples (the contender failed or is missing): ratio None."""
    if not samples:
        return headline(figure, None, baseline=baseline, target=_target(at_most, below), note=note)
    median = statistics.median(samples)
    met = None
    if at_most is not None:
        met = median <= at_most
    elif below is not None:
        met = median < below
    return headline(
        figure,
        median,
        min(samples),
        max(samples),
        baseline=baseline,
        target=_target(at_most, below),
        met=met,
        note=note,
    )


def per_round(results: dict[str, dict[str, Any]], name: str, baseline: str) -> list[float]:
    """Per-round ratios name / baseline from :func:`measure` (rounds are interleaved, so round i of
    both ran back to back under the same load); empty if either one failed."""
    ours, base = results.get(name, {}).get("wall_all_s"), results.get(baseline, {}).get("wall_all_s")
    if not ours or not base:
        return []
    return [a / b for a, b in zip(ours, base, strict=True)]


def write_json(name: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the machine) to ``name`` under ``ARTIFACTS`` (or to ``name`` if absolute)."""
    path = ARTIFACTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str))
    print(f"\nwrote {path}")
    return path


def versions(*modules: str) -> dict[str, str]:
    found = {}
    for module in modules:
        try:
            found[module] = __import__(module).__version__
        except Exception:
            found[module] = "not installed"
    return found


# -- the raw-write baseline ------------------------------------------------------------------------------


def raw_write(folder: Path, data: Any) -> None:
    """The raw-write baseline: ``data``'s bytes to a new file in a new ``folder``, fsynced, renamed,
    the folder fsynced."""
    folder.mkdir()
    write_atomic(folder / "raw.bin", memoryview(data).cast("B"))
    fsync_dir(folder)
