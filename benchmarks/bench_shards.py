"""Overhead of resumable_map over a plain client.map of the same work, and how a map's files scale.

Part 1, on one LocalCluster (2 worker processes, 1 thread each), in one run, rounds interleaved:

- ``client.map per item``: one Dask task per item, ``client.gather`` (what one writes without us);
- ``client.map per shard``: the same shards as resumable_map, each a plain loop, no checkpoints;
- ``resumable_map`` with ``every="30s"`` (only each shard's first and final checkpoints at this
  size), with ``every="1s"``, and with ``every=f"{items_per_shard // 10}it"`` (10 checkpoints a shard);
- ``resumable_map, all replayed``: the same call again once every shard finished.

Each figure is the median over rounds with min-max, and its ratio to ``client.map per item``
(also to ``per shard``). Every resumable round uses a fresh key.

Part 2, the scaling simulation: N shard runs (10, 100, 1000) made by real ``Resumable`` runs with
tiny states in a synthetic folder; files and bytes on disk, the cost of ``list_runs`` (what
``resumable status`` does) and of one progress poll (what the map's view does twice a second), the
manifest's size; then the size and time of one checkpoint of a shard's results as the shard grows.
From these, a projection for maps larger than this machine can run.

    .venv/bin/python benchmarks/bench_shards.py [--quick] [--rounds 5] [--items 4000] [--work-ms 1]

Writes ``ci-artifacts/bench/shards.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import ratio_headline, versions, write_json

from resumable_magic.core.run import Resumable
from resumable_magic.distributed.client import resumable_map
from resumable_magic.distributed.plan import shard_indices
from resumable_magic.distributed.progress import MapProgress
from resumable_magic.progress.model import ProgressModel
from resumable_magic.store.catalog import list_runs


def make_work(loops: int) -> Any:
    def work(x: int) -> int:
        s = 0
        for i in range(loops):
            s += i * x
        return s

    return work


def calibrate(work_ms: float) -> int:
    loops = 10_000
    while True:
        work = make_work(loops)
        started = time.perf_counter()
        for x in range(20):
            work(x)
        took = (time.perf_counter() - started) / 20
        if took > 2e-4:
            return max(1, int(loops * work_ms / 1e3 / took))
        loops *= 4


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "all_s": samples,
    }


def bench_overhead(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    import distributed

    loops = calibrate(args.work_ms)
    work = make_work(loops)
    items = list(range(args.items))
    shards = args.shards
    chunked = [[items[i] for i in r] for r in shard_indices(len(items), shards)]
    every_it = f"{max(1, len(items) // shards // 10)}it"
    expected = [work(x) for x in items]

    def plain_shard(chunk: list[int]) -> list[int]:
        return [work(x) for x in chunk]

    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        client.run(lambda: None)  # workers up

        def per_item() -> list[int]:
            return client.gather(client.map(work, items, pure=False))

        def per_shard() -> list[int]:
            results: list[int] = [0] * len(items)
            chunks = client.gather(client.map(plain_shard, chunked, pure=False))
            for r, values in zip(shard_indices(len(items), shards), chunks, strict=True):
                for i, v in zip(r, values, strict=True):
                    results[i] = v
            return results

        def sharded(every: str) -> Any:
            def call() -> list[int]:
                key = f"bench-{uuid.uuid4().hex[:8]}"
                try:
                    return resumable_map(
                        work,
                        items,
                        key=key,
                        dir=scratch,
                        shards=shards,
                        client=client,
                        every=every,
                        progress=False,
                    )
                finally:
                    shutil.rmtree(scratch / key, ignore_errors=True)

            return call

        replay_key = "bench-replayed"
        resumable_map(work, items, key=replay_key, dir=scratch, shards=shards, client=client, progress=False)

        def replayed() -> list[int]:
            return resumable_map(work, items, key=replay_key, dir=scratch, client=client, progress=False)

        contenders = {
            "client.map per item": per_item,
            "client.map per shard (plain loop)": per_shard,
            'resumable_map every="30s"': sharded("30s"),
            'resumable_map every="1s"': sharded("1s"),
            f'resumable_map every="{every_it}" (10 a shard)': sharded(every_it),
            "resumable_map, all replayed": replayed,
        }
        walls: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, call in contenders.items():
                started = time.perf_counter()
                result = call()
                walls[name].append(time.perf_counter() - started)
                assert result == expected, name
    rows = {name: summary(samples) for name, samples in walls.items()}
    for base, label in (
        ("client.map per item", "ratio_per_item"),
        ("client.map per shard (plain loop)", "ratio_per_shard"),
    ):
        for row in rows.values():
            row[label] = row["median_s"] / rows[base]["median_s"]
            row[label + "_min_max"] = [
                min(a / b for a, b in zip(row["all_s"], walls[base], strict=True)),
                max(a / b for a, b in zip(row["all_s"], walls[base], strict=True)),
            ]
    print(
        f"\nresumable_map vs client.map: {len(items)} items of ~{args.work_ms:g} ms CPU, {shards} shards, "
        f"2 workers x 1 thread, {args.rounds} rounds (median, min-max; ratio of the medians, and min-max of per-round ratios)"
    )
    print(f"  {'contender':<46} {'median':>9} {'min-max':>17} {'/ per item':>11} {'/ per shard':>12}")
    for name, row in rows.items():
        print(
            f"  {name:<46} {row['median_s']:>8.3f}s {row['min_s']:>7.3f}-{row['max_s']:.3f}s "
            f"{row['ratio_per_item']:>10.3f}x {row['ratio_per_shard']:>11.3f}x"
        )
    return {
        "items": len(items),
        "work_ms": args.work_ms,
        "shards": shards,
        "rounds": args.rounds,
        "workers": "LocalCluster(n_workers=2, threads_per_worker=1, processes=True)",
        "contenders": rows,
    }


PER_ITEM, PER_SHARD = "client.map per item", "client.map per shard (plain loop)"


def headlines(overhead: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each checkpointing resumable_map against the same shards as plain loops (its own overhead), and the
    first against one task per item (what one writes without it); per-round ratios."""
    if overhead is None:
        return [
            ratio_headline("shards: resumable_map", [], baseline=PER_SHARD, note="distributed not installed")
        ]
    rows = overhead["contenders"]
    note = f"{overhead['items']} items of ~{overhead['work_ms']:g} ms, {overhead['shards']} shards"
    pairs = [(name, PER_SHARD) for name in rows if name.startswith("resumable_map every")]
    pairs.append((pairs[0][0], PER_ITEM))
    return [
        ratio_headline(
            f"shards: {name}",
            [a / b for a, b in zip(rows[name]["all_s"], rows[base]["all_s"], strict=True)],
            baseline=base,
            note=note,
        )
        for name, base in pairs
    ]


# -- part 2: scaling -------------------------------------------------------------------------------------


def make_runs(root: Path, key: str, n: int, items_each: int = 10) -> None:
    """``n`` finished shard runs under ``root/key``, written by real Resumable runs (tiny states)."""
    for i in range(n):
        state: dict[str, Any] = {"results": {}}
        name = f"{key}/shard-{i:04d}-of-{n:04d}"
        with Resumable(name, state, ["results"], dir=root, every="1000it", progress=ProgressModel()) as run:
            for j in run.iterate(range(i, i + items_each)):
                state["results"][j] = j * j


def tree_stats(path: Path) -> tuple[int, int]:
    files = size = 0
    for folder, _, names in os.walk(path):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(folder, name))
    return files, size


def timed(call: Any, repeat: int = 3) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def bench_listing(counts: list[int], scratch: Path) -> list[dict[str, Any]]:
    rows = []
    print("\nA map's folder as the number of shards grows (finished shard runs of 10 items each)")
    print(
        f"  {'shards':>7} {'files':>7} {'on disk':>10} {'per shard':>10} {'list_runs':>10} {'per shard':>10} {'poll':>9} {'manifest':>9}"
    )
    for n in counts:
        root = scratch / f"listing-{n}"
        started = time.perf_counter()
        make_runs(root, "map", n)
        made = time.perf_counter() - started
        files, size = tree_stats(root)
        listing = timed(lambda root=root: list_runs(root))
        names = [(f"s{i}", f"map/shard-{i:04d}-of-{n:04d}", 10) for i in range(n)]
        poll = timed(lambda root=root, names=names: MapProgress("map", root, names).poll())  # every run read
        manifest = max((root / "map" / f"shard-0000-of-{n:04d}").glob("manifest.*.json")).stat().st_size
        rows.append(
            {
                "shards": n,
                "files": files,
                "bytes": size,
                "list_runs_s": listing,
                "poll_s": poll,
                "manifest_bytes": manifest,
                "create_s": made,
            }
        )
        print(
            f"  {n:>7} {files:>7} {size / 1024:>8.0f}KiB {size / n / 1024:>8.1f}KiB {listing * 1e3:>8.1f}ms "
            f"{listing / n * 1e6:>8.0f}us {poll * 1e3:>7.1f}ms {manifest:>8}B"
        )
        shutil.rmtree(root, ignore_errors=True)
    return rows


class _Sizes(ProgressModel):
    def __init__(self) -> None:
        super().__init__()
        self.stats: list[Any] = []

    def checkpoint_finished(self, stats: Any) -> None:
        super().checkpoint_finished(stats)
        self.stats.append(stats)


def bench_checkpoint_growth(sizes: list[int], scratch: Path) -> list[dict[str, Any]]:
    """One shard of m float results, 10 checkpoints: each checkpoint pickles the whole results dict."""
    rows = []
    print("\nOne shard's checkpoints as the shard grows (float results, 10 checkpoints a shard)")
    print(f"  {'items':>9} {'last checkpoint':>16} {'its time':>9} {'written in all':>15} {'per item':>9}")
    for m in sizes:
        state: dict[str, Any] = {"results": {}}
        model = _Sizes()
        with Resumable(
            f"growth-{m}", state, ["results"], dir=scratch, every=f"{m // 10}it", progress=model
        ) as run:
            for j in run.iterate(range(m)):
                state["results"][j] = j * 0.5
        last = model.stats[-1]
        written = sum(s.nbytes for s in model.stats)
        rows.append(
            {
                "items": m,
                "checkpoints": len(model.stats),
                "last_bytes": last.nbytes,
                "last_seconds": last.seconds,
                "written_bytes": written,
            }
        )
        print(
            f"  {m:>9,} {last.nbytes / 1024:>13.0f}KiB {last.seconds * 1e3:>7.1f}ms {written / 1024**2:>12.1f}MiB "
            f"{last.nbytes / m:>8.1f}B"
        )
        shutil.rmtree(scratch / f"growth-{m}", ignore_errors=True)
    return rows


def project(listing: list[dict[str, Any]], growth: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Figures for maps this machine cannot run, from the per-shard costs measured above (linear in the
    number of shards; a shard's checkpoint linear in its items)."""
    big = listing[-1]
    files_per, bytes_per = big["files"] / big["shards"], big["bytes"] / big["shards"]
    list_per, poll_per = big["list_runs_s"] / big["shards"], big["poll_s"] / big["shards"]
    per_item = growth[-1]["last_bytes"] / growth[-1]["items"]
    per_byte_s = growth[-1]["last_seconds"] / growth[-1]["last_bytes"]
    rows = []
    print(
        "\nProjected (from the per-shard figures above; a local disk: a shared file system's metadata "
        "operations cost more)"
    )
    print(
        f"  {'shards':>7} {'items':>12} {'files':>8} {'list_runs':>10} {'poll':>8} {'checkpoint':>11} {'its write':>10}"
    )
    for shards in (100, 1_000, 10_000):
        for items in (10**6, 10**8):
            ckpt = per_item * items / shards
            row = {
                "shards": shards,
                "items": items,
                "files": round(files_per * shards),
                "metadata_bytes": bytes_per * shards,  # manifests, records, leases, tiny states
                "list_runs_s": list_per * shards,
                "poll_s": poll_per * shards,
                "checkpoint_bytes": ckpt,
                "checkpoint_seconds": ckpt * per_byte_s,
            }
            rows.append(row)
            print(
                f"  {shards:>7,} {items:>12,} {row['files']:>8,} {row['list_runs_s']:>9.2f}s {row['poll_s']:>7.2f}s "
                f"{ckpt / 1024**2:>9.1f}MiB {row['checkpoint_seconds']:>9.2f}s"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer items, rounds and shards")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--work-ms", type=float, default=1.0, help="CPU time of one item")
    parser.add_argument("--shards", type=int, default=8)
    args = parser.parse_args()
    counts, sizes = [10, 100, 1000], [10_000, 100_000, 1_000_000]
    if args.quick:
        args.rounds, args.items = 2, 400
        counts, sizes = [10, 100], [10_000, 100_000]
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        scratch = Path(tmp)
        try:
            import distributed  # noqa: F401  (part 1 needs it; part 2 does not)
        except ImportError:
            print("\nresumable_map vs client.map: skipped, distributed is not installed")
            overhead = None
        else:
            overhead = bench_overhead(args, scratch / "maps")
        listing = bench_listing(counts, scratch)
        growth = bench_checkpoint_growth(sizes, scratch)
        projection = project(listing, growth)
    write_json(
        "shards.json",
        {
            "quick": args.quick,
            "overhead": overhead,
            "listing": listing,
            "checkpoint_growth": growth,
            "projection": projection,
            "versions": versions("dask", "distributed"),
            "headlines": headlines(overhead),
        },
    )


if __name__ == "__main__":
    main()
