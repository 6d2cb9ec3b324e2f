"""Every benchmark runs, at tiny sizes, so none of them rots (figures come from full runs, not here).

The benchmarks and their tiny arguments come from ``benchmarks/run_all.py`` (``discover``, ``QUICK``):
one list, so a new ``benchmarks/bench_*.py`` is smoke-run here without being added anywhere.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import run_all  # noqa: E402  (benchmarks/ is not a package)

HEADLINE_KEYS = {"figure", "ratio", "min", "max", "baseline", "target", "met", "note"}


@pytest.mark.parametrize("script", run_all.discover(), ids=lambda script: script.name)
def test_benchmark_smoke_run(script, tmp_path):
    artifacts = tmp_path / "artifacts"  # not ci-artifacts/bench: a smoke run must not overwrite real figures
    # 240 s, under pytest-timeout's 300 s: a hung benchmark is stopped by run_all, which shows its stacks
    outcome = run_all.run_benchmark(
        script, run_all.quick_args(script), artifacts=artifacts, cwd=tmp_path, timeout=240, echo=False
    )
    assert outcome.returncode == 0, outcome.output[-6000:]
    assert outcome.output.strip(), "the benchmark printed no figures"
    # Headlines are optional, but those written must fit the summary table.
    for name in outcome.artifacts:
        for row in json.loads((artifacts / name).read_text()).get("headlines", []):
            assert set(row) == HEADLINE_KEYS, (name, row)


FAKE = {
    # a benchmark that writes one headline where run_all points it
    "writes": """
import json, os, pathlib
row = {"figure": "f", "ratio": 1.0, "min": 0.9, "max": 1.1, "baseline": "b", "target": "", "met": None, "note": ""}
out = pathlib.Path(os.environ["RESUMABLE_BENCH_ARTIFACTS"]) / "fake.json"
out.write_text(json.dumps({"headlines": [row]}))
print("figures")
""",
    "fails": "import sys; print('partial'); sys.exit(3)",
    # exits while a forked child it left behind still holds the output pipe (a stuck background writer)
    "leaves_a_child": "import os, time\nif os.fork() == 0:\n    time.sleep(3600)\nprint('done')",
    "hangs": "import time; print('started', flush=True); time.sleep(3600)",
}


@pytest.mark.parametrize("kind", sorted(FAKE))
def test_run_all_reports_each_outcome(kind, tmp_path):
    """run_all collects headlines, reports failures, and neither a hung benchmark nor a stray child of one
    stops it (both are killed with the benchmark's process group)."""
    script = tmp_path / f"bench_{kind}.py"
    script.write_text(FAKE[kind])
    timeout = 2 if kind == "hangs" else 120
    outcome = run_all.run_benchmark(
        script, [], artifacts=tmp_path / "out", cwd=tmp_path, timeout=timeout, echo=False
    )
    expected = {
        "writes": (0, "ok", 1),
        "fails": (3, "FAILED (exit 3)", 0),
        "leaves_a_child": (0, "no headlines", 0),
        "hangs": (-6, "FAILED (killed after", 0),  # SIGABRT: faulthandler shows where it hung
    }[kind]
    returncode, status, headlines = expected
    assert outcome.returncode == returncode, outcome.output
    assert outcome.status.startswith(status), outcome.status
    assert len(outcome.headlines) == headlines, outcome.artifacts
    assert outcome.output.startswith(("figures", "partial", "done", "started"))
    if kind == "hangs":
        assert f'File "{script}", line 1 in <module>' in outcome.output, outcome.output
