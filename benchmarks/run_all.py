"""Run every benchmark, one after the other, and print one summary table of their headline figures.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only bench_loop,bench_store] [--skip bench_shards]

Every ``benchmarks/bench_*.py`` is found by glob and run in its own subprocess with this Python. Each
writes its JSON artifact(s) through ``_common.write_json``; the rows under ``"headlines"`` (see
``_common.headline``) become the table: figure | ratio median [min-max] | baseline | target | met. Every
ratio is against a baseline measured in the same run of the same benchmark, so a busy machine moves
both sides. A benchmark that fails is listed as failed and the others still run (exit status 1 at the
end); one that writes no headlines is listed as such; a missing optional contender (pandas, kishu,
loopz, ... from ``benchmarks/requirements.txt``) is a "not installed" row, not a failure.

``--quick`` passes each benchmark its tiny arguments from ``QUICK`` (``--quick`` for one not listed
there): a smoke run of seconds to minutes, the same one ``tests/test_benchmarks_smoke.py`` runs. Its
figures say nothing; its artifacts go to ``ci-artifacts/bench/quick/`` so they never overwrite the
figures of a full run. Both write ``summary.md`` (the table for the README) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import ARTIFACTS

BENCHMARKS = Path(__file__).resolve().parent

# Tiny arguments per benchmark: the single list run_all.py --quick and the smoke test use.
QUICK: dict[str, list[str]] = {
    "bench_loop.py": ["--quick"],
    "bench_snapshot.py": ["--quick"],
    "bench_shards.py": ["--quick"],
    "bench_widget.py": ["--iterations", "20000", "--rounds", "1"],
    "bench_widget_render.py": ["--calls", "20", "--rounds", "1"],
    "bench_serialize.py": ["--cases", "array,tuples,notebook", "--array-mib", "1", "--rounds", "1"],
    "bench_alternatives.py": ["--states", "small,notebook", "--rounds", "1"],
}


def discover() -> list[Path]:
    """Every benchmark script, in name order."""
    return sorted(BENCHMARKS.glob("bench_*.py"))


def quick_args(script: Path) -> list[str]:
    return QUICK.get(script.name, ["--quick"])


@dataclass
class Outcome:
    """One benchmark's run: its exit status, time, output, and the headline rows of its artifacts."""

    name: str
    args: list[str]
    returncode: int
    seconds: float
    output: str
    artifacts: list[str] = field(default_factory=list)
    headlines: list[dict[str, Any]] = field(default_factory=list)
    timed_out: bool = False

    @property
    def status(self) -> str:
        if self.timed_out:
            return f"FAILED (killed after {self.seconds:.0f} s)"
        if self.returncode != 0:
            return f"FAILED (exit {self.returncode})"
        return "ok" if self.headlines else "no headlines"


def _json_mtimes(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in folder.glob("*.json")}


def run_benchmark(
    script: Path,
    args: list[str],
    *,
    artifacts: Path,
    cwd: Path,
    timeout: float | None = None,
    echo: bool = True,
) -> Outcome:
    """Run one benchmark in a subprocess (this Python), its artifacts to ``artifacts``; collect them.

    The artifacts are the JSON files it wrote or rewrote in that folder (benchmarks run one at a time,
    so nothing else writes there meanwhile). ``echo`` streams its output as it goes.
    """
    artifacts.mkdir(parents=True, exist_ok=True)
    before = _json_mtimes(artifacts)
    # PYTHONFAULTHANDLER: a benchmark that hangs is sent SIGABRT first, and every Python process of
    # its group prints all its threads' stacks (even one deadlocked with the GIL held) before it dies.
    env = {
        **os.environ,
        "RESUMABLE_BENCH_ARTIFACTS": str(artifacts),
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group: what it leaves behind can be killed with it
    )
    lines: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        returncode = process.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
    finally:
        # A hung benchmark, or a stray it left (a forked writer stuck after its parent died), goes with
        # its group: otherwise it would keep the output pipe open and this run would never end.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    if timed_out:
        returncode = process.wait()
        lines.append(f"\nrun_all: killed after {timeout:g} s (the stacks above are where it hung)\n")
    reader.join()
    outcome = Outcome(script.stem, args, returncode, time.perf_counter() - started, "".join(lines))
    outcome.timed_out = timed_out
    for path, mtime in sorted(_json_mtimes(artifacts).items()):
        if before.get(path) == mtime or path.name == "summary.json":
            continue
        outcome.artifacts.append(path.name)
        with contextlib.suppress(ValueError, AttributeError):  # not a JSON object: no headlines
            outcome.headlines += json.loads(path.read_text()).get("headlines", [])
    return outcome


# -- the machine ------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def filesystem(path: Path) -> str:
    """The file system ``path`` is on, from the longest matching mount point in /proc/mounts."""
    path = path.resolve()
    best = ("", "unknown", "")
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in mounts:
        device, mount, kind = line.split()[:3]
        if path.is_relative_to(mount) and len(mount) >= len(best[0]):
            best = (mount, kind, device)
    return f"{best[1]} ({best[2]} at {best[0]})"


def machine() -> dict[str, Any]:
    """What the figures ran on; the load average is taken again at the end."""
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "filesystem_benchmarks": filesystem(BENCHMARKS),
        "filesystem_tmp": f"{tempfile.gettempdir()}: {filesystem(Path(tempfile.gettempdir()))}",
        "load_average_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def machine_lines(info: dict[str, Any]) -> list[str]:
    load = " / ".join(
        f"{a:.2f}, {b:.2f}, {c:.2f}" for a, b, c in (info["load_average_start"], info["load_average_end"])
    )
    return [
        f"{info['cpus']} CPUs ({info['cpus_usable']} usable), {info['cpu_model']}; {info['kernel']}",
        f"{info['python']}",
        f"file systems: benchmarks on {info['filesystem_benchmarks']}; temporary files {info['filesystem_tmp']}",
        f"load average (1, 5, 15 min) at start / end: {load}; started {info['started']}",
    ]


# -- the table ---------------------------------------------------------------------------------------------

COLUMNS = ("figure", "ratio median [min-max]", "baseline", "target", "met", "note")


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:#.3g}"  # 3 digits, trailing zeros kept: 1.00, 0.0461


def rows(outcomes: list[Outcome]) -> list[tuple[str, ...] | str]:
    """Table rows; a plain string is a benchmark's header row (name, time, status)."""
    table: list[tuple[str, ...] | str] = []
    for outcome in outcomes:
        table.append(f"{outcome.name} ({outcome.seconds:.0f} s): {outcome.status}")
        for row in outcome.headlines:
            if row.get("ratio") is None:
                ratio = "-"
            elif row.get("min") is None or row["min"] == row["max"]:  # one round: no spread to show
                ratio = _num(row["ratio"])
            else:
                ratio = f"{_num(row['ratio'])} [{_num(row['min'])}-{_num(row['max'])}]"
            met = {True: "yes", False: "NO", None: ""}[row.get("met")]
            table.append(
                (row["figure"], ratio, row["baseline"], row.get("target") or "", met, row.get("note") or "")
            )
    return table


def text_table(outcomes: list[Outcome]) -> str:
    table = rows(outcomes)
    cells = [COLUMNS, *(r for r in table if not isinstance(r, str))]
    widths = [min(max(len(c[i]) for c in cells), 60) for i in range(len(COLUMNS) - 1)]

    def line(cols: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cols[:-1], widths, strict=True)) + "  " + cols[-1]

    out = [line(COLUMNS)]
    for row in table:
        out.append(row if isinstance(row, str) else "  " + line(row))
    return "\n".join(out)


def markdown_table(outcomes: list[Outcome]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows(outcomes):
        cols = (f"**{row}**", *[""] * (len(COLUMNS) - 1)) if isinstance(row, str) else row
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Quick arguments: " + json.dumps(QUICK)
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, figures meaningless")
    parser.add_argument("--only", default="", help="comma-separated benchmarks to run (bench_loop,...)")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    parser.add_argument(
        "--out", type=Path, default=None, help="artifacts and summary (default ci-artifacts/bench)"
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (--quick: 900)")
    args = parser.parse_args(argv)

    scripts = discover()
    known = {s.stem for s in scripts}

    def names(option: str) -> set[str]:
        chosen = {n.strip().removesuffix(".py") for n in option.split(",") if n.strip()}
        if chosen - known:
            parser.error(
                f"no such benchmark: {', '.join(sorted(chosen - known))} (have {', '.join(sorted(known))})"
            )
        return chosen

    only, skip = names(args.only), names(args.skip)
    scripts = [s for s in scripts if (not only or s.stem in only) and s.stem not in skip]
    out = args.out or (ARTIFACTS / "quick" if args.quick else ARTIFACTS)
    timeout = args.timeout or (900 if args.quick else None)

    info = machine()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="bench-cwd-") as cwd:  # stray files land here, not in the repo
        for script in scripts:
            bench_args = quick_args(script) if args.quick else []
            print(f"\n==== {script.name} {' '.join(bench_args)}", flush=True)
            outcomes.append(run_benchmark(script, bench_args, artifacts=out, cwd=Path(cwd), timeout=timeout))
    info["load_average_end"] = os.getloadavg()

    kind = "quick (tiny sizes: a smoke run, the figures mean nothing)" if args.quick else "full"
    print(f"\n==== summary, {kind} run: each figure a ratio to its baseline from the same run")
    print(text_table(outcomes))
    for line in machine_lines(info):
        print(line)
    for outcome in outcomes:
        if outcome.returncode != 0:
            print(f"\n---- {outcome.name}: {outcome.status}, its last lines:")
            print("\n".join(outcome.output.splitlines()[-25:]))

    out.mkdir(parents=True, exist_ok=True)
    summary = [
        f"Benchmarks, {kind} run: `python benchmarks/run_all.py{' --quick' if args.quick else ''}`. "
        "Each figure is a ratio to its baseline measured in the same run: median [min-max] over rounds.",
        "",
        markdown_table(outcomes),
        "",
        *(f"- {line}" for line in machine_lines(info)),
    ]
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    (out / "summary.json").write_text(
        json.dumps(
            {
                "quick": args.quick,
                "machine": info,
                "benchmarks": [
                    {k: v for k, v in vars(o).items() if k != "output"} | {"status": o.status}
                    for o in outcomes
                ],
            },
            indent=2,
        )
    )
    print(f"\nwrote {out / 'summary.md'} and summary.json")
    return 1 if any(o.returncode != 0 for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
