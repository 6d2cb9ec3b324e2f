"""Cost of one render of the run's widget in a real kernel: what the timer thread takes from the
loop a few times a second (snapshot, HTML of the details, the trait changes and their comm message).

Runs in one real IPython kernel (through jupyter_client, so the comm messages really go out) and
reports the best of several rounds of ``--calls`` renders, in ms per render. Compare two checkouts by
running it with each on ``PYTHONPATH`` (the kernel imports the package from there).

    .venv/bin/python benchmarks/bench_widget_render.py [--calls 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from _common import REPO

sys.path.insert(0, str(REPO / "tests"))

from kernels import start_kernel  # the tests' kernel harness

CODE = """
import time
from resumable_magic.progress.snapshots import StartInfo, CheckpointStats
from resumable_magic.progress.widget import WidgetProgress
p = WidgetProgress(tick=3600)  # no timer renders: only the ones timed here
p.run_started(StartInfo("k", ("x",), 10**6, 0, "every 1it"))
p.checkpoint_finished(CheckpointStats(1, 0, time.time(), 1000, 0.01))
times = []
for r in range({rounds}):
    t = time.perf_counter()
    for i in range({calls}):
        p.advanced(r * {calls} + i + 1)
        p._render()
    times.append((time.perf_counter() - t) / {calls} * 1e3)
p.run_ended("finished")
times  # the cell's value: an execute_result, which the reply waits for (a print's stream may not)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        kernel = start_kernel(cwd)
        try:
            result = kernel.execute(CODE.format(calls=args.calls, rounds=args.rounds), timeout=600)
        finally:
            kernel.shutdown()
    if result.error is not None or result.execute_result is None:
        sys.exit(f"the benchmark failed in the kernel:\n{result.describe()}")
    times = json.loads(result.execute_result)
    print(f"widget render, best of {args.rounds} rounds of {args.calls}: {min(times):.3f} ms")
    print("  all: " + ", ".join(f"{t:.3f}" for t in times))


if __name__ == "__main__":
    main()
