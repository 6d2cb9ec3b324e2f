"""Memory and disk of a large state (issue 14): a checkpoint must never be what kills the kernel.

Two states of the same size (``--size-mb``, default 1024): a ``bytearray`` and a float64 numpy array,
each with a small counter beside it, checkpointed through the plain API with synchronous writes
(``RESUMABLE_BACKGROUND=0``) to new folders on the disk of ``--dir``. Every figure is a ratio:

  checkpoint time   the first checkpoint of a fresh run (serialise, blobs hashed while written, the
                    manifest, every fsync, the lease) vs. ``raw write``: the same bytes written from
                    memory to a new file, fsynced, renamed, the folder fsynced; rounds interleaved,
                    each write after an ``os.sync()``, each of the two first every other round.
                                                                                   target <= 1.3
  checkpoint peak   the process's resident high-water mark (``VmHWM``, reset through
                    ``/proc/self/clear_refs`` once the state exists) during that checkpoint, minus
                    its resident size before the state was made, over the state's size. A fresh
                    process per figure. (Synchronous: there is no copy-on-write to count.)  <= 1.1
  resume peak       that run resumed in a fresh process (the state restored), then one checkpoint of
                    the unchanged buffer (its blob is checked, not rewritten): high-water mark minus
                    the resident size before, over the state's size.                    <= 1.1
  load peak         ``resumable_magic.load()`` in a fresh process: the same measure.   <= 1.1
  replay peak       a finished run replayed (``Resumable`` restores its final values) in a fresh
                    process, as a new kernel does: the same measure.                   <= 1.1
  disk at rest      the run's blobs (objects/) over the checkpoint's size (the buffer, the stream of
                    the counter and the RNG states), after each of 3 checkpoints that each follow a
                    change of one byte of the buffer (a new blob each time): the largest of them. The
                    folder's other files (manifests, the lease: a few KiB), and the most the blobs
                    took while a checkpoint was being written (sampled), are in the note.   <= 2

    .venv/bin/python benchmarks/bench_memory.py [--size-mb 1024] [--rounds 5] [--dir DIR] [--quick]

Writes ``ci-artifacts/bench/memory.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MIB, ratio_headline, raw_write, write_json

KINDS = ("bytearray", "numpy")
TASKS = ("checkpoint", "resume", "load", "replay")  # in this order, on one run folder
CHUNK = 64 * MIB


def make_state(kind: str, size: int) -> dict[str, Any]:
    """A state of ``size`` bytes of random content, every page touched."""
    if kind == "bytearray":
        data: Any = bytearray(size)
        for at in range(0, size, CHUNK):
            data[at : at + CHUNK] = os.urandom(min(CHUNK, size - at))
    else:
        import numpy as np

        data = np.empty(size // 8)
        rng = np.random.default_rng(0)
        step = CHUNK // 8
        for at in range(0, len(data), step):
            data[at : at + step] = rng.random(min(step, len(data) - at))
    return {"data": data, "n": 0}


def change(state: dict[str, Any], i: int) -> None:
    data = state["data"]
    data[i] = data[i] + 1 if state["kind"] == "numpy" else (data[i] + 1) % 256
    state["n"] += 1


def status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Make VmHWM the current resident size (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# -- the children: one figure each, in a fresh process ------------------------------------------------


def child(task: str, kind: str, size: int, folder: str) -> dict[str, Any]:
    os.environ["RESUMABLE_BACKGROUND"] = "0"
    from resumable_magic import Resumable, load
    from resumable_magic.progress.textview import TextProgress

    quiet = TextProgress(quiet=True)
    if kind == "numpy":
        import numpy  # noqa: F401  (its import is part of the baseline, not of the figure)
    before = status("VmRSS")
    if task == "checkpoint":  # the first checkpoint of a run, left unfinished (as by a crash)
        state = make_state(kind, size)
        reset_peak()
        run = Resumable("bench", state, dir=folder, progress=quiet)
        run.__enter__()  # opens the run and takes its first checkpoint
        peak = status("VmHWM")
        run.close()
    elif task == "resume":  # restored, then one checkpoint of the unchanged buffer, then finished
        namespace: dict[str, Any] = {"data": None, "n": 0}
        reset_peak()
        with Resumable("bench", namespace, dir=folder, every="1it", progress=quiet) as run:
            assert type(namespace["data"]).__name__ == ("bytearray" if kind == "bytearray" else "ndarray")
            for _ in run.iterate(range(2)):
                namespace["n"] += 1
            peak = status("VmHWM")  # before the final checkpoint: the same as the one above
    elif task == "load":
        reset_peak()
        restored = load("bench", dir=folder)
        peak = status("VmHWM")
        assert len(restored["data"]) * (8 if kind == "numpy" else 1) == size
    else:  # replay: a finished run's final values restored, as a new kernel running the cell does
        namespace = {"data": None, "n": 0}
        reset_peak()
        with Resumable("bench", namespace, dir=folder, progress=quiet) as run:
            assert run.replayed
        peak = status("VmHWM")
        assert type(namespace["data"]).__name__ == ("bytearray" if kind == "bytearray" else "ndarray")
    return {"before": before, "peak": peak, "ratio": (peak - before) / size}


def in_child(task: str, kind: str, size: int, folder: Path) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            task,
            "--kind",
            kind,
            "--size",
            str(size),
            "--dir",
            str(folder),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{task} ({kind}) failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- in this process: time and disk --------------------------------------------------------------------


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def checkpoint_times(root: Path, kind: str, size: int, rounds: int) -> dict[str, list[float]]:
    from resumable_magic import Resumable
    from resumable_magic.progress.textview import TextProgress

    state = make_state(kind, size)
    warm = Resumable(
        "warm", make_state(kind, MIB), dir=root / f"warm-{kind}", progress=TextProgress(quiet=True)
    )
    with warm:  # the first run in a process imports and starts what every later one reuses: not timed
        pass
    times: dict[str, list[float]] = {"raw": [], "checkpoint": [], "raw_cpu": [], "checkpoint_cpu": []}

    def raw(r: int) -> None:
        raw_dir = root / f"raw-{kind}-{r}"
        os.sync()  # each write starts with no other write's dirty pages still going to the disk
        started, cpu = time.perf_counter(), time.process_time()
        raw_write(raw_dir, state["data"])
        times["raw"].append(time.perf_counter() - started)
        times["raw_cpu"].append(time.process_time() - cpu)
        shutil.rmtree(raw_dir)

    def checkpoint(r: int) -> None:
        run_dir = root / f"run-{kind}-{r}"
        os.sync()
        started, cpu = time.perf_counter(), time.process_time()
        run = Resumable("bench", state, dir=run_dir, progress=TextProgress(quiet=True))
        run.__enter__()
        times["checkpoint"].append(time.perf_counter() - started)
        times["checkpoint_cpu"].append(time.process_time() - cpu)
        run.__exit__(None, None, None)
        shutil.rmtree(run_dir)

    for r in range(rounds):
        # each goes first every other round: a load that grows or fades during a round favours neither
        for write in (raw, checkpoint) if r % 2 == 0 else (checkpoint, raw):
            write(r)
        print(
            f"  {kind} round {r + 1}: raw {times['raw'][-1]:.3f} s, checkpoint {times['checkpoint'][-1]:.3f} s"
            f" (CPU, every thread: {times['raw_cpu'][-1]:.2f} s, {times['checkpoint_cpu'][-1]:.2f} s)"
        )
    return times


def disk_at_rest(root: Path, kind: str, size: int) -> dict[str, Any]:
    """Three checkpoints, each after a change of one byte of the buffer; the blobs' bytes after each."""
    from resumable_magic import Resumable
    from resumable_magic.progress.textview import TextProgress

    folder = root / f"disk-{kind}"
    after: list[tuple[int, int, int]] = []  # (blob bytes, all bytes, the checkpoint's size)

    class Measure(TextProgress):
        def checkpoint_finished(self, stats: Any) -> None:
            super().checkpoint_finished(stats)
            objects = next(folder.rglob("objects"))
            after.append((folder_bytes(objects), folder_bytes(folder), stats.nbytes))

    most = [0]
    stop = threading.Event()

    def sample() -> None:  # the blobs' bytes while checkpoints are written: the transient third copy
        while not stop.wait(0.005):
            with contextlib.suppress(OSError, StopIteration):
                most[0] = max(most[0], folder_bytes(next(folder.rglob("objects"))))

    state = {**make_state(kind, size), "kind": kind}
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with Resumable("bench", state, dir=folder, every="1it", progress=Measure(quiet=True)) as run:
            for i in run.iterate(range(3)):
                change(state, i)
    finally:
        stop.set()
        sampler.join()
    shutil.rmtree(folder)
    ratios = [blobs / nbytes for blobs, _, nbytes in after]
    others = max(total - blobs for blobs, total, _ in after)
    return {
        "after_each": after,
        "ratios": ratios,
        "max_ratio": max(ratios),
        "other_files_max": others,
        "while_writing_ratio": most[0] / after[-1][2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--dir", default=None, help="where to write (default: a temporary folder in the repo's disk)"
    )
    parser.add_argument("--quick", action="store_true", help="64 MiB, one round: a smoke run, no figures")
    parser.add_argument("--child", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.kind, args.size, args.dir)))
        return
    if args.quick:
        args.size_mb, args.rounds = 64, 1
    size = args.size_mb * MIB
    os.environ["RESUMABLE_BACKGROUND"] = "0"
    root = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=args.dir or Path(__file__).resolve().parent))
    results: dict[str, Any] = {}
    try:
        for kind in KINDS:
            print(f"{kind}, {args.size_mb} MiB: peak memory (fresh processes)", flush=True)
            folder = root / f"peak-{kind}"
            peaks = {task: in_child(task, kind, size, folder) for task in TASKS}
            shutil.rmtree(folder)
            for task, found in peaks.items():
                print(f"  {task}: {found['ratio']:.3f} x the state above the baseline")
            print(f"{kind}: checkpoint time vs raw write, {args.rounds} rounds", flush=True)
            times = checkpoint_times(root, kind, size, args.rounds)
            disk = disk_at_rest(root, kind, size)
            print(
                f"  disk at rest: {disk['max_ratio']:.4f} x the state, besides {disk['other_files_max']} bytes"
            )
            results[kind] = {"peaks": peaks, "times": times, "disk": disk}
    finally:
        shutil.rmtree(root, ignore_errors=True)

    label = f"{args.size_mb} MiB"
    headlines = []
    for kind in KINDS:
        found = results[kind]
        times = found["times"]
        per_round = [c / r for c, r in zip(times["checkpoint"], times["raw"], strict=True)]
        headlines.append(
            ratio_headline(
                f"{kind} {label}: first checkpoint vs raw write+fsync",
                per_round,
                baseline="raw write+fsync",
                at_most=1.3,
                note=(
                    f"raw {statistics.median(times['raw']):.2f} s, checkpoint "
                    f"{statistics.median(times['checkpoint']):.2f} s; CPU of every thread "
                    f"{statistics.median(times['raw_cpu']):.2f} s, {statistics.median(times['checkpoint_cpu']):.2f} s"
                ),
            )
        )
        for task, what in (
            ("checkpoint", "the first checkpoint"),
            ("resume", "a resume and a checkpoint"),
            ("load", "load()"),
            ("replay", "replay in a new process"),
        ):
            peak = found["peaks"][task]
            headlines.append(
                ratio_headline(
                    f"{kind} {label}: peak memory of {what} above the baseline",
                    [peak["ratio"]],
                    baseline="the state's size",
                    at_most=1.1,
                    note=f"{(peak['peak'] - peak['before']) / MIB:.0f} MiB above {peak['before'] / MIB:.0f} MiB",
                )
            )
        disk = found["disk"]
        headlines.append(
            ratio_headline(
                f"{kind} {label}: disk at rest after 3 checkpoints of a changed buffer",
                [disk["max_ratio"]],
                baseline="the state's size",
                at_most=2.0,
                note=(
                    f"the largest after a checkpoint, blobs only; other files "
                    f"{disk['other_files_max'] / 1024:.0f} KiB; while writing {disk['while_writing_ratio']:.2f}x"
                ),
            )
        )
    print(f"\n{'figure':<78} {'ratio':>7}  target  met")
    for row in headlines:
        print(f"{row['figure']:<78} {row['ratio']:>7.3f}  {row['target']:<7} {row['met']}")
    write_json("memory.json", {"args": vars(args), "results": results, "headlines": headlines})


if __name__ == "__main__":
    main()
