"""PyTorch training state: a checkpoint and a restore against torch.save / torch.load, side by side.

A model of ``--sizes`` MiB of float32 parameters (default 100 and 1024: stacked ``Linear`` layers)
with Adam's state after a step (twice the parameters again), ``torch.set_num_threads(1)``. Each round
first takes an optimizer step, so that every tensor changed and every checkpoint writes all of them
(an unchanged tensor would not be written again: that would flatter us), then times, in turn:

- checkpoint: ``torch.save({"model": state_dict, "opt": state_dict}, file.tmp)`` + fsync + rename
  over the previous file (the baseline: crash-safe, as ours); ``safetensors.torch.save_file`` of the
  same tensors, the same way (an anchor); and our
  synchronous checkpoint of ``model`` and ``opt`` as ``Resumable`` state (``RESUMABLE_BACKGROUND=0``,
  the time the loop was blocked, as the run measures it). Target: <= 1.1x torch.save.
- restore, each in a new process as after a crash (its setup, untimed, built the model and the
  optimizer): ``torch.load(file, weights_only=False)`` + both ``load_state_dict`` (the baseline);
  ``safetensors.torch.load_file`` + both ``load_state_dict``; our ``load(key)``, which returns the
  model and optimizer themselves. Target: <= 1.1x torch.load. Files are in the page cache for all.
- the loop's stall with background checkpoints (forked writer): the same run with background writes
  on; the stall is the time the loop was blocked (pickling the state's small stream in the parent,
  then ``fork()``), as a share of our synchronous checkpoint.

    .venv/bin/python benchmarks/bench_torch.py [--sizes 100,1024] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import MIB, REPO, ratio_headline, write_json

sys.path.insert(0, str(REPO))

from resumable_magic import Resumable, load
from resumable_magic.progress.model import ProgressModel

try:  # the anchor, from benchmarks/requirements.txt: without it (the CI's smoke run), left out
    import safetensors.torch as safetensors
except ImportError:
    safetensors = None

WIDTH = 2048  # Linear(2048, 2048): 16 MiB of weights each


class Stalls(ProgressModel):
    def __init__(self) -> None:
        super().__init__()
        self.stats: list = []

    def checkpoint_finished(self, stats) -> None:  # type: ignore[override]
        super().checkpoint_finished(stats)
        self.stats.append(stats)


def build(size_mib: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    layers = max(1, round(size_mib * MIB / (4 * WIDTH * (WIDTH + 1))))
    model = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(layers)))
    return model, torch.optim.Adam(model.parameters(), lr=1e-4)


def step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.ones(4, WIDTH)).sum().backward()
    opt.step()


def replace_durably(path: Path) -> None:
    """``path``'s ``.tmp`` fsynced and renamed over the previous checkpoint: a crash mid-write leaves
    the previous one whole, as ours does (and the previous one's space is freed, as ours frees its
    old blobs)."""
    fd = os.open(path.with_suffix(".tmp"), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(path.with_suffix(".tmp"), path)


def flat_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Model and optimizer tensors under flat names: what safetensors stores."""
    flat = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    for index, entry in opt.state_dict()["state"].items():
        flat.update({f"opt.{index}.{k}": v.contiguous() for k, v in entry.items()})
    return flat


def one_size(size_mib: int, rounds: int, folder: Path) -> dict:
    """Checkpoint rounds for one model size, restore rounds (each in a new process), then the
    background run's stalls."""
    model, opt = build(size_mib)
    step(model, opt)
    state = {"model": model, "opt": opt}
    nbytes = sum(t.nbytes for t in flat_tensors(model, opt).values())
    times: dict[str, list[float]] = {k: [] for k in ("torch.save", "safetensors", "resumable")}
    os.environ["RESUMABLE_BACKGROUND"] = "0"
    progress = Stalls()
    saved, safe = folder / "torch.pt", folder / "model.safetensors"
    with Resumable("bench", state, dir=folder / "ckpt", every="1it", progress=progress) as run:
        for _ in run.iterate(range(rounds)):
            step(model, opt)  # every tensor changes: each checkpoint below writes all of them
            started = time.perf_counter()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, saved.with_suffix(".tmp"))
            replace_durably(saved)
            times["torch.save"].append(time.perf_counter() - started)
            if safetensors is not None:
                started = time.perf_counter()
                safetensors.save_file(flat_tensors(model, opt), safe.with_suffix(".tmp"))
                replace_durably(safe)
                times["safetensors"].append(time.perf_counter() - started)
    # Ours at each iteration's end, timed by the run itself; the first checkpoint (before the loop)
    # and the final one (nothing changed since the last) are left out.
    times["resumable"] = [s.seconds for s in progress.stats[1 : rounds + 1]]
    loads: dict[str, list[float]] = {k: [] for k in ("torch.load", "safetensors", "resumable")}
    for _ in range(rounds):  # interleaved; the files are in the page cache for all
        for kind in loads:
            if kind != "safetensors" or safetensors is not None:
                loads[kind].append(restore_in_new_process(kind, size_mib, folder))
    shutil.rmtree(folder / "ckpt")
    stalls = background_stalls(state, rounds, folder / "fork")
    return {"size_mib": size_mib, "state_bytes": nbytes, "save": times, "load": loads, "stalls": stalls}


def restore_in_new_process(kind: str, size_mib: int, folder: Path) -> float:
    """A restore as after a crash: in a new process, whose setup built the model and optimizer
    (untimed); the restore's seconds, as that process measured them."""
    argv = [sys.executable, __file__, "--restore", kind, "--sizes", str(size_mib), "--folder", str(folder)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def restore(kind: str, size_mib: int, folder: Path) -> float:
    """One restore of ``kind`` in this (new) process: the model and optimizer built first, as a
    notebook's setup builds them; the seconds the restore took."""
    model, opt = build(size_mib)
    started = time.perf_counter()
    if kind == "torch.load":
        loaded = torch.load(folder / "torch.pt", weights_only=False)
        model.load_state_dict(loaded["model"])
        opt.load_state_dict(loaded["opt"])
    elif kind == "safetensors":
        flat = safetensors.load_file(folder / "model.safetensors")
        model.load_state_dict({k[6:]: v for k, v in flat.items() if k.startswith("model.")})
        opt.load_state_dict(_opt_state(opt, flat))
    else:
        restored = load("bench", dir=folder / "ckpt")
        model, opt = restored["model"], restored["opt"]  # the run binds these in place of setup's
    return time.perf_counter() - started


def _opt_state(opt: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> dict:
    current = opt.state_dict()
    state: dict = {}
    for name, tensor in flat.items():
        if name.startswith("opt."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor
    return {"state": state, "param_groups": current["param_groups"]}


def background_stalls(state: dict, rounds: int, folder: Path) -> list[float]:
    """How long the loop is blocked by a background (forked) checkpoint, each one awaited before the
    next step (so that the loop's own writes do not make the child's copy-on-write copies)."""
    os.environ["RESUMABLE_BACKGROUND"] = "1"
    progress = Stalls()
    with Resumable("bench", state, dir=folder, every="1it", progress=progress) as run:
        for _ in run.iterate(range(rounds + 1)):
            step(state["model"], state["opt"])
            run.checkpoints.collect(wait=True)
    shutil.rmtree(folder)
    return [s.seconds for s in progress.stats if s.mode == "background"]


def ratios(ours: list[float], base: list[float]) -> list[float]:
    return [a / b for a, b in zip(ours, base, strict=False)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1024", help="MiB of parameters, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 32 MiB, 1 round")
    parser.add_argument("--json", default="torch.json", help="file name under ci-artifacts/bench, or a path")
    parser.add_argument("--restore", help=argparse.SUPPRESS)  # one restore, in a new process
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.restore:
        print(restore(args.restore, int(args.sizes), Path(args.folder)))
        return 0
    if args.quick:
        args.sizes, args.rounds = "30", 1
    (REPO / "ci-artifacts").mkdir(exist_ok=True)
    results, rows = [], []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(dir=REPO / "ci-artifacts") as directory:
            result = one_size(size, args.rounds, Path(directory))
        results.append(result)
        save, loads = result["save"], result["load"]
        note = f"{size} MiB of parameters + Adam: {result['state_bytes'] / MIB:.0f} MiB, {args.rounds} rounds"
        print(f"\n{note}")
        for kind, table in (("checkpoint", save), ("restore", loads)):
            for name, seconds in table.items():
                if not seconds:
                    print(f"  {kind:10s} {name:12s} not installed")
                    continue
                print(f"  {kind:10s} {name:12s} {statistics.median(seconds) * 1e3:9.1f} ms  {seconds}")
        stall = statistics.median(result["stalls"]) if result["stalls"] else None
        if stall is not None:
            print(
                f"  background checkpoint: loop stalled {stall * 1e3:.1f} ms (median of {len(result['stalls'])})"
            )
        rows += [
            ratio_headline(
                f"torch {size} MiB: checkpoint / torch.save+fsync",
                ratios(save["resumable"], save["torch.save"]),
                baseline="torch.save + fsync",
                at_most=1.1,
                note=note,
            ),
            ratio_headline(
                f"torch {size} MiB: safetensors save / torch.save+fsync",
                ratios(save["safetensors"], save["torch.save"]),
                baseline="torch.save + fsync",
                note="an anchor",
            ),
            ratio_headline(
                f"torch {size} MiB: restore / torch.load+load_state_dict",
                ratios(loads["resumable"], loads["torch.load"]),
                baseline="torch.load + load_state_dict",
                at_most=1.1,
                note=note,
            ),
            ratio_headline(
                f"torch {size} MiB: safetensors load / torch.load+load_state_dict",
                ratios(loads["safetensors"], loads["torch.load"]),
                baseline="torch.load + load_state_dict",
                note="an anchor",
            ),
            ratio_headline(
                f"torch {size} MiB: loop stall, background / synchronous checkpoint",
                [s / statistics.median(save["resumable"]) for s in result["stalls"]],
                baseline="our synchronous checkpoint",
                below=0.1,
                note=f"median stall {stall * 1e3:.1f} ms" if stall is not None else "no background write",
            ),
        ]
    write_json(args.json, {"torch": torch.__version__, "results": results, "headlines": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
