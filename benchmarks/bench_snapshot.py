"""How long a checkpoint of a large state blocks the loop: synchronous vs. background (fork) writes.

One process, the plain API, a numpy array of ``--size-mb`` (default 1024) as the state, checkpoints
``--every`` seconds, the loop touching the array each iteration (``--rewrite``: rewriting all of it
during every write, the worst case for copy-on-write memory). The same run twice: with
``RESUMABLE_BACKGROUND=0`` (synchronous) and with background writes. Reported, for the checkpoints
taken mid-run (not the first or the final one, which are always synchronous): the stall (time the
loop was blocked) as median [min-max], the ratio background / synchronous (target < 0.10), the
background writer's own time, and the memory it copied (pages the loop rewrote while it wrote, plus
its serialisation buffers).

    .venv/bin/python benchmarks/bench_snapshot.py [--size-mb 1024] [--seconds 8] [--rewrite] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from _common import MIB, REPO, ratio_headline, write_json

sys.path.insert(0, str(REPO))

from resumable_magic import Resumable
from resumable_magic.progress.model import ProgressModel


class Stalls(ProgressModel):
    def __init__(self) -> None:
        super().__init__()
        self.stats = []

    def checkpoint_finished(self, stats) -> None:  # type: ignore[override]
        super().checkpoint_finished(stats)
        self.stats.append(stats)


def one_run(mode: str, size_mb: int, seconds: float, every: str, rewrite: bool) -> dict:
    os.environ["RESUMABLE_BACKGROUND"] = "0" if mode == "sync" else "1"
    state = {"arr": np.ones(size_mb * 2**20 // 8), "i": 0}
    arr = state["arr"]
    stride = max(1, arr.size // 1000)
    progress = Stalls()
    with tempfile.TemporaryDirectory(dir=REPO / "ci-artifacts") as directory:
        deadline = time.monotonic() + seconds
        with Resumable("bench", state, dir=directory, every=every, progress=progress) as run:
            for i in run.iterate(range(10**9)):
                if rewrite:
                    chunk = arr.size // 50
                    arr[(i % 50) * chunk : (i % 50 + 1) * chunk] += 1.0
                else:
                    arr[(i * stride) % arr.size] += 1.0
                state["i"] = i
                time.sleep(0.002)
                if time.monotonic() > deadline:
                    break
        mid = [s for s in progress.stats[1:-1]]
        stalls = [s.seconds for s in mid]
        return {
            "mode": mode,
            "checkpoints_mid_run": len(mid),
            "stall_median": statistics.median(stalls) if stalls else None,
            "stall_min": min(stalls, default=None),
            "stall_max": max(stalls, default=None),
            "stalls": stalls,
            "writer_seconds": [w["seconds"] for w in run.checkpoints.background_writes],
            "copied_bytes": [w["private"] for w in run.checkpoints.background_writes],
        }


def headlines(args: argparse.Namespace, sync: dict, fork: dict) -> list[dict]:
    """The stall ratio and the memory a background writer copied (a share of the state). One run per
    mode, no rounds: min-max are over the background run's checkpoints, each against the sync median."""
    note = f"{args.size_mb} MiB state, every {args.every}{', --rewrite' if args.rewrite else ''}"
    stalls = [s / sync["stall_median"] for s in fork["stalls"]] if sync["stall_median"] else []
    copied = [c / (args.size_mb * MIB) for c in fork["copied_bytes"] if c is not None]
    return [
        ratio_headline(
            "snapshot stall: background / synchronous",
            stalls,
            baseline="synchronous checkpoint",
            below=0.1,
            note=f"{note}; {len(fork['stalls'])} / {len(sync['stalls'])} mid-run checkpoints",
        ),
        ratio_headline(
            "snapshot: memory a background writer copied",
            copied,
            baseline="the state's size",
            note=f"median {statistics.median(copied) * args.size_mb:.0f} MiB"
            if copied
            else "no background write",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--every", default="1s")
    parser.add_argument("--rewrite", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 96 MiB, 2 s")
    parser.add_argument(
        "--json", default="snapshot.json", help="file name under ci-artifacts/bench, or a path"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mb, args.seconds, args.every = 96, 2.0, "0.3s"
    (REPO / "ci-artifacts").mkdir(exist_ok=True)
    runs = [one_run(mode, args.size_mb, args.seconds, args.every, args.rewrite) for mode in ("sync", "fork")]
    sync, fork = runs
    ratio = (
        fork["stall_median"] / sync["stall_median"] if fork["stall_median"] and sync["stall_median"] else None
    )
    print(f"{args.size_mb} MiB of state, checkpoint every {args.every}, {args.seconds:g} s per mode"
          f"{', loop rewriting the whole array' if args.rewrite else ''}:")  # fmt: skip
    for run in runs:
        if run["stall_median"] is None:
            print(f"  {run['mode']:5s} no mid-run checkpoint")
            continue
        print(
            f"  {run['mode']:5s} stall {run['stall_median'] * 1e3:8.1f} ms "
            f"[{run['stall_min'] * 1e3:.1f}-{run['stall_max'] * 1e3:.1f}] over {run['checkpoints_mid_run']} checkpoints"
        )
    if fork["writer_seconds"]:
        copied = [c for c in fork["copied_bytes"] if c is not None]
        print(
            f"  background writer: {statistics.median(fork['writer_seconds']):.2f} s per checkpoint, "
            f"memory copied {statistics.median(copied) / 2**20:.0f} MiB median, {max(copied) / 2**20:.0f} MiB max"
            if copied
            else ""
        )
    if ratio is not None:
        print(f"  stall background / synchronous = {ratio:.3f} (target < 0.10)")
    write_json(
        args.json,
        {"size_mb": args.size_mb, "runs": runs, "ratio": ratio, "headlines": headlines(args, sync, fork)},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
