"""The torture test's worker: a resumable loop whose state and RNG change every iteration.

    python tests/torture_worker.py --dir CK --key K --n 60 --every 1it --log LOG --out OUT [--mode for|while|plain]

Plain Python over the :class:`~resumable_magic.Resumable` API (no IPython: a process starts in ~0.2 s).
Each iteration draws from the global ``random`` (``random()``, ``gauss()`` with its cached second
value, data-dependent extra draws) and from a ``random.Random`` held as state, and changes every part
of the state. ``--mode plain`` runs the same loop without checkpoints: the uninterrupted truth.

After each checkpoint's commit has returned, the worker appends ``<generation> <position>`` to
``--log`` and fsyncs it: the checkpoints it reported committed, which must survive any later kill.
When the loop ends it writes the pickled final state and RNG states to ``--out`` (atomically) and
prints ``FINISHED``. It prints ``LOOP <position>`` when the loop is about to start, and every warning
the run reports as ``WARNING <text>`` (a SIGKILL never damages a checkpoint, so there must be none).
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import sys

from resumable_magic import Resumable
from resumable_magic.progress.model import ProgressModel
from resumable_magic.progress.snapshots import CheckpointStats, StartInfo


class Reporter(ProgressModel):
    """Records every committed checkpoint durably, and echoes the run's warnings and banners."""

    def __init__(self, log: str) -> None:
        super().__init__()
        self._fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def run_started(self, info: StartInfo) -> None:
        super().run_started(info)
        print(f"LOOP {info.start_position}", flush=True)

    def checkpoint_finished(self, stats: CheckpointStats) -> None:
        super().checkpoint_finished(stats)
        os.write(self._fd, f"{stats.generation} {stats.position}\n".encode())
        os.fsync(self._fd)

    def message(self, level: str, text: str) -> None:
        super().message(level, text)
        print(f"{level.upper()} {' '.join(text.split())}", flush=True)


def step(state: dict, i: int) -> None:
    """One iteration: every part of ``state`` and both RNGs move."""
    local: random.Random = state["local"]
    x = random.random() * random.gauss(0.0, 1.0) + local.gauss(1.0, 0.5)
    while random.random() < 0.3:  # a data-dependent number of extra draws
        x += local.random()
    state["total"] += x
    state["history"].append(round(x, 12))
    state["counts"][int(x * 4) % 7] = state["counts"].get(int(x * 4) % 7, 0) + 1
    state["digest"] = hash((state["digest"], i, x)) & 0xFFFFFFFFFFFF


def initial() -> dict:
    random.seed(20240601)
    return {"total": 0.0, "history": [], "counts": {}, "digest": 0, "local": random.Random(7), "i": -1}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--key", default="torture")
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--every", default="1it")
    parser.add_argument("--mode", choices=("for", "while", "plain"), default="for")
    parser.add_argument("--log", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    state = initial()
    if args.mode == "plain":
        print("LOOP 0", flush=True)
        for i in range(args.n):
            step(state, i)
            state["i"] = i
    else:
        with Resumable(args.key, state, dir=args.dir, every=args.every, progress=Reporter(args.log)) as run:
            if args.mode == "for":
                for i in run.iterate(range(args.n)):
                    step(state, i)
                    state["i"] = i
            else:
                while run.tick() and state["i"] + 1 < args.n:
                    state["i"] += 1
                    step(state, state["i"])

    data = pickle.dumps((state, random.getstate(), state["local"].getstate()), protocol=4)
    tmp = f"{args.out}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, args.out)
    print("FINISHED", flush=True)


if __name__ == "__main__":
    sys.exit(main())
