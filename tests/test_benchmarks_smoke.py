"""Every benchmark runs, at tiny sizes, so none of them rots (figures come from full runs, not here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SMOKE = {
    "bench_loop.py": ["--quick"],
    "bench_snapshot.py": ["--quick"],
    "bench_shards.py": ["--quick"],
    "bench_widget.py": ["--iterations", "20000", "--rounds", "1"],
    "bench_serialize.py": ["--cases", "array,tuples,notebook", "--array-mib", "1", "--rounds", "1"],
    "bench_alternatives.py": ["--states", "small,notebook", "--rounds", "1"],
    "bench_storage.py": ["--quick"],  # starts its own moto_server on loopback
}


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_smoke_run(script, tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *SMOKE[script]],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip(), "the benchmark printed no figures"
