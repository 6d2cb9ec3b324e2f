"""What the board costs at 1,000 runs: a poll of its API against reading every run as ``resumable status`` does.

Makes ``--runs`` real runs (plain API, one process: 90% members of one sweep, the rest runs of their
own; every one finished, one checkpoint a few KiB), then measures, interleaved over ``--rounds``:

- ``list_runs`` (baseline): :func:`resumable_magic.store.catalog.list_runs`, every run's newest
  manifest read and verified: what ``resumable status`` does, and what a board without a cache would
  do at every poll;
- ``listing refresh``: :class:`resumable_magic.store.listing.FolderListing` refreshed with nothing
  changed (one walk, each lease record read; the board's steady state);
- ``listing refresh, 1% changed``: the same after 1% of the runs were run again (``--fresh``: new
  generations), between rounds;
- ``API poll, group collapsed`` / ``API poll, group open``: one ``GET /resumable/api/runs`` to a
  real ``jupyter server`` with the extension, timed at the client; the server lists again at most
  every 2 s (``poll_seconds``) or 10x a listing's cost, so a poll mostly costs building the JSON.

    .venv/bin/python benchmarks/bench_board.py [--runs 1000] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from _common import REPO, measure, per_round, print_table, ratio_headline, ratios, write_json

sys.path.insert(0, str(REPO / "tests"))

from servers import jupyter_env, running_server  # the tests' real jupyter server, the extension enabled

from resumable_magic import Resumable
from resumable_magic.progress.model import ProgressModel
from resumable_magic.store.catalog import list_runs
from resumable_magic.store.listing import FolderListing

TARGET_REFRESH = 0.35  # a steady-state refresh costs at most this share of reading every run


def make_runs(folder: Path, count: int) -> list[str]:
    keys = [f"sweep/lr={i}" if i % 10 else f"run-{i}" for i in range(count)]
    for key in keys:
        rerun(folder, key)
    return keys


def rerun(folder: Path, key: str, fresh: bool = False) -> None:
    state = {"total": 0}
    with Resumable(key, state, dir=folder, every="1it", fresh=fresh, progress=ProgressModel()) as run:
        for i in run.iterate(range(3)):
            state["total"] += i


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="40 runs, 2 rounds: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.rounds = 40, 2

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root, folder = base / "root", base / "root" / ".resumable"
        root.mkdir()
        os.environ.update({k: v for k, v in jupyter_env(base).items() if k.startswith("JUPYTER")})  # one key
        started = time.perf_counter()
        keys = make_runs(folder, args.runs)
        print(f"made {len(keys)} runs in {time.perf_counter() - started:.1f} s")
        steady, changing = FolderListing(folder), FolderListing(folder)
        steady.refresh()
        changing.refresh()
        changed = keys[:: max(1, len(keys) // max(1, len(keys) // 100))][: max(1, len(keys) // 100)]

        def rerun_changed(_name: str, _result: object) -> None:  # between rounds, not timed
            for key in changed:
                rerun(folder, key, fresh=True)

        with running_server(base, root) as server:
            group = urllib.parse.urlencode({"open": f"{folder}\nsweep"})

            def poll(query: str = "") -> int:
                status, _, body = server.request(f"/resumable/api/runs?{query}")
                assert status == 200, body[:300]
                return len(body)

            sizes = {"collapsed": poll(), "open": poll(group)}
            results = measure(
                {
                    "list_runs": lambda: list_runs(folder),
                    "listing refresh": steady.refresh,
                    "API poll, group collapsed": poll,
                    "API poll, group open": lambda: poll(group),
                },
                args.rounds,
            )
            reruns = measure(
                {"list_runs": lambda: list_runs(folder), "listing refresh, 1% changed": changing.refresh},
                args.rounds,
                after=lambda name, result: rerun_changed(name, result) if name != "list_runs" else None,
            )
        ratios(results, "list_runs")
        ratios(reruns, "list_runs")
        print_table(f"board at {args.runs} runs, one poll", results, "list_runs")
        print_table(f"a refresh after {len(changed)} runs were run again", reruns, "list_runs")
        print(
            f"JSON of a poll: {sizes['collapsed']:,} bytes collapsed, {sizes['open']:,} with the sweep open"
        )

    headlines = [
        ratio_headline(
            f"board: listing refresh at {args.runs} runs, nothing changed",
            per_round(results, "listing refresh", "list_runs"),
            baseline="list_runs (every run read and verified)",
            at_most=TARGET_REFRESH,
        ),
        ratio_headline(
            f"board: listing refresh at {args.runs} runs, 1% of them run again",
            per_round(reruns, "listing refresh, 1% changed", "list_runs"),
            baseline="list_runs (every run read and verified)",
            at_most=TARGET_REFRESH,
        ),
        ratio_headline(
            f"board: API poll at {args.runs} runs (sweep collapsed)",
            per_round(results, "API poll, group collapsed", "list_runs"),
            baseline="list_runs (every run read and verified)",
            note=f"{sizes['collapsed']:,} bytes of JSON",
        ),
        ratio_headline(
            f"board: API poll at {args.runs} runs (sweep of {args.runs * 9 // 10} open)",
            per_round(results, "API poll, group open", "list_runs"),
            baseline="list_runs (every run read and verified)",
            note=f"{sizes['open']:,} bytes of JSON",
        ),
    ]
    write_json(
        "board.json",
        {
            "runs": args.runs,
            "rounds": args.rounds,
            "results": results,
            "reruns": reruns,
            "json_bytes": sizes,
            "headlines": headlines,
        },
    )
    print(json.dumps([{k: h[k] for k in ("figure", "ratio", "target", "met")} for h in headlines], indent=1))


if __name__ == "__main__":
    main()
