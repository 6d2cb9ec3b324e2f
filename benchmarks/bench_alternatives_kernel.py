"""resumable_magic vs. the alternatives, in real kernels: bytes written after a small edit, restore time in a
fresh kernel, iterations redone after a SIGKILL. (``bench_alternatives.py`` times one checkpoint in-process.)

Every contender runs in real IPython kernels started through jupyter_client (``tests/kernels.py``), used
the way the tool is meant to be used:

  pickle             hand-written: pickle.dump(protocol=5) to a temporary file, fsync, rename
  ours               the plain API (``Resumable``, ``resumable_magic.load``); ``%%resumable`` in the kill test
  dill.dump_session  dill.dump_module() of the kernel's __main__; dill.load_module() to restore
  %store             IPython's ``%store NAMES`` / ``%store -r`` (pickleshare; a shared IPYTHONDIR)
  kishu              ``init_kishu`` in the kernel: a commit after every cell (its own planner decides what
                     to store); ``_kishu.checkout(commit)`` to restore (no Jupyter server: test mode)
  loopz              ``loopz.tracker.save_state`` / ``load_state`` (the calls its ``@track`` makes); the
                     kill test uses ``@loopz.track``

1. Bytes after a small edit: a first checkpoint of a state (256 MiB array + a counter; 1M small tuples +
   a counter), then ``step += 1`` and a second checkpoint in the same kernel. Bytes = the kernel's
   ``wchar`` delta over the edit cell (/proc/<pid>/io: bytes passed to write() by the kernel and the
   children it reaped), as a ratio to the state's size; the bytes of files new or changed on disk are
   recorded beside it (an SQLite file counts whole there).
2. Restore in a fresh kernel: per round, for each contender a new kernel loads what was saved (page cache
   warm); the time inside the kernel around the load call, as a ratio to ``pickle.load`` of the
   hand-written pickle in the same round.
3. Iterations redone after SIGKILL: a loop of N iterations of ~20 ms, SIGKILLed at a seeded random time,
   the same cell run again in a new kernel (each tool's own resume); redone = iteration numbers logged
   twice (a log file outside the state). Checkpoints every 1 s where the tool can save inside the loop;
   Kishu commits at cell ends only, so its restore point is the cell before the loop.

    /work/bench-venv/bin/python benchmarks/bench_alternatives_kernel.py [--states array,small] [--rounds 3]
        [--kills 3] [--quick]

Writes ci-artifacts/bench/alternatives_kernel.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import REPO, headline, ratio_headline, versions, write_json

sys.path.insert(0, str(REPO / "tests"))

from kernels import KernelHandle, start_kernel  # the tests' kernel harness

STEP_SECONDS = 0.02  # one iteration of the kill test's loop
EVERY_SECONDS = 1.0  # the checkpoint interval of every tool that can save inside a loop

# In every kernel: where things go, and the kill test's logging body (outside the state).
PRELUDE = """
import os, pickle, time
from pathlib import Path
CK = Path({ck!r}); CK.mkdir(parents=True, exist_ok=True)

def atomic_pickle(obj, path):
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=5)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

def log(i):
    with open("iterations.log", "a") as f:
        f.write(f"{{i}}\\n")
    time.sleep({step})
"""

STATES = {
    "array": "import numpy as np\nweights = np.random.default_rng(0).random({mib} * 2**20 // 8)\nstep = 0",
    "small": "rows = [(i, f'k{{i}}', i * 0.5) for i in range({rows})]\nstep = 0",
}
BIG = {"array": "weights", "small": "rows"}
# loopz restores in place: the objects must exist (its own requirement), made outside the timing.
PLACEHOLDERS = {
    "array": "import numpy as np\nweights = np.empty({mib} * 2**20 // 8)\nstep = 0",
    "small": "rows = []\nstep = 0",
}


@dataclass
class Tool:
    name: str
    needs: tuple[str, ...]  # modules that must be importable
    setup: str  # once per kernel, after the prelude
    save: str  # a checkpoint of NAMES (``{names}``: the names, ``{names_list}``: their list)
    again: str  # the checkpoint after the edit
    restore: str  # timed, in a fresh kernel
    kill_cell: str  # the kill test's cell ({n}: iterations)
    every: str  # its checkpoint interval in the kill test
    env: dict[str, str] | None = None


KISHU_ENV = {"ENV_KISHU_TEST_MODE": "1", "TEST_NOTEBOOK_PATH": "nb.ipynb"}
KISHU_SETUP = "from kishu import init_kishu\ninit_kishu('nb.ipynb')"  # its first cell errs harmlessly

TOOLS = [
    Tool(
        "pickle",
        (),
        "",
        "atomic_pickle({{n: globals()[n] for n in {names_list}}}, CK / 'work.pickle')",
        "atomic_pickle({{n: globals()[n] for n in {names_list}}}, CK / 'work.pickle')",
        "with open(CK / 'work.pickle', 'rb') as f:\n    globals().update(pickle.load(f))",
        """\
P = CK / "kill.pickle"
start, total = 0, 0
if P.exists():
    with open(P, "rb") as f:
        start, total = pickle.load(f)
last = time.monotonic()
for i in range(start, {n}):
    total += i
    log(i)
    if time.monotonic() - last >= {every}:
        atomic_pickle((i + 1, total), P)
        last = time.monotonic()
print("total", total)
""",
        f"every {EVERY_SECONDS:g} s (time-based, inside the loop)",
    ),
    Tool(
        "ours",
        (),
        "from resumable_magic import Resumable, load\nfrom resumable_magic.progress.textview import TextProgress\n"
        "%load_ext resumable_magic",
        "run = Resumable('bench', globals(), {names_list}, dir=CK, progress=TextProgress(quiet=True))\n"
        "run.__enter__()",
        "run.finish()\nrun.close()",  # the final checkpoint (and its DONE record)
        "globals().update(load('bench', dir=CK))",
        """\
%%resumable total --every {every}s --name kill --dir {{CK}} --quiet
total = 0
for i in range({n}):
    total += i
    log(i)
print("total", total)
""",
        f"--every {EVERY_SECONDS:g}s",
    ),
    Tool(
        "dill.dump_session",
        ("dill",),
        "import dill",
        "dill.dump_module(str(CK / 'session.pkl'))",
        "dill.dump_module(str(CK / 'session.pkl'))",
        "dill.load_module(str(CK / 'session.pkl'))",
        """\
P = CK / "kill-session.pkl"
next_i, total = 0, 0
if P.exists():
    dill.load_module(str(P))
last = time.monotonic()
for i in range(next_i, {n}):
    total += i
    log(i)
    if time.monotonic() - last >= {every}:
        next_i = i + 1
        dill.dump_module(str(P))
        last = time.monotonic()
print("total", total)
""",
        f"every {EVERY_SECONDS:g} s (dump_module inside the loop)",
    ),
    Tool(
        "%store",
        ("pickleshare",),
        "",
        "%store {names}",
        "%store {names}",
        "%store -r",
        """\
next_i, total = 0, 0
%store -r
last = time.monotonic()
for i in range(next_i, {n}):
    total += i
    log(i)
    if time.monotonic() - last >= {every}:
        next_i = i + 1
        get_ipython().run_line_magic("store", "next_i total")
        last = time.monotonic()
print("total", total)
""",
        f"every {EVERY_SECONDS:g} s (%store inside the loop)",
        {"IPYTHONDIR": "{root}/ipython"},
    ),
    Tool(
        "kishu",
        ("kishu",),
        KISHU_SETUP,
        "",  # the cell that built the state is committed at its end
        "",  # and so is the edit cell
        "_kishu.checkout({commit!r})",
        """\
total = 0
for i in range({n}):
    total += i
    log(i)
print("total", total)
""",
        "at each cell end (its only checkpoints)",
        {**KISHU_ENV, "ENV_KISHU_PATH_ROOT": "{root}/kishu"},
    ),
    Tool(
        "loopz",
        ("loopz",),
        "import loopz, loopz.tracker\nloopz.tracker.CACHE_DIR = CK",
        "loopz.tracker.save_state('bench', {{n: globals()[n] for n in {names_list}}})",
        "loopz.tracker.save_state('bench', {{n: globals()[n] for n in {names_list}}})",
        "loopz.tracker.load_state('bench', {{n: globals()[n] for n in {names_list}}})",
        """\
box = [0]
@loopz.track("kill", save_every={every_it}, loop_vars={{"total": box}})
def body(i):
    box[0] += i
    log(i)
body(range({n}))
total = box[0]
print("total", total)
""",
        f"save_every={round(EVERY_SECONDS / STEP_SECONDS)} iterations (~{EVERY_SECONDS:g} s; it counts iterations only)",
    ),
]


# The state's size as our serialiser counts it, leaving nothing behind in the namespace (dill, Kishu).
SIZE = """\
print((lambda e: len(e.stream) + sum(b.nbytes for b in e.buffers))(
    __import__("resumable_magic.state.serialize", fromlist=["encode_state"]).encode_state(
        {{n: globals()[n] for n in {names!r}}})))
"""


def missing(tool: Tool) -> str | None:
    gone = [m for m in tool.needs if importlib.util.find_spec(m) is None]
    return f"{', '.join(gone)} not installed" if gone else None


class Kernels:
    """One tool's kernels: a fixed cwd, checkpoint folder and environment; one kernel alive at a time."""

    def __init__(self, tool: Tool, root: Path) -> None:
        self.tool, self.root = tool, root
        self.cwd = root / "cwd"
        self.cwd.mkdir(parents=True, exist_ok=True)
        (self.cwd / "nb.ipynb").write_text(
            '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
        )
        env = {k: v.format(root=root) for k, v in (tool.env or {}).items()}
        self.handle: KernelHandle = start_kernel(self.cwd, env)
        self._setup()

    def _setup(self) -> None:
        self.run(PRELUDE.format(ck=str(self.root / "ck"), step=STEP_SECONDS))
        if self.tool.setup:
            self.handle.execute(self.tool.setup, timeout=120)  # Kishu's first cell reports a harmless error

    def fresh(self) -> None:
        self.handle.restart()
        self._setup()

    def run(self, code: str, timeout: float = 600) -> str:
        return self.handle.run(code, timeout=timeout).stdout

    def wchar(self) -> int:
        for line in Path(f"/proc/{self.handle.pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
        raise RuntimeError("no wchar in /proc/<pid>/io")

    def stop(self) -> None:
        """SIGKILL the kernel (a fresh one may follow); :meth:`close` ends the handle."""
        self.handle.kill()

    def close(self) -> None:
        self.handle.shutdown()


def files(root: Path) -> dict[Path, tuple[int, int, int]]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            stat = path.stat()
            found[path] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return found


def changed_bytes(before: dict[Path, tuple[int, int, int]], after: dict[Path, tuple[int, int, int]]) -> int:
    return sum(meta[1] for path, meta in after.items() if before.get(path) != meta)


def state_code(name: str, args: argparse.Namespace, table: dict[str, str]) -> str:
    return table[name].format(mib=args.array_mib, rows=args.rows)


def edit_and_restore(name: str, args: argparse.Namespace, root: Path, log: list[str]) -> dict[str, Any]:
    """Measures 1 and 2 for one state: every tool's first checkpoint, edit, second checkpoint (bytes);
    then ``--rounds`` rounds of a fresh kernel per tool loading it (interleaved, pickle first)."""
    names = [BIG[name], "step"]
    fmt = {"names": " ".join(names), "names_list": repr(names)}
    out: dict[str, Any] = {}
    kernels: dict[str, Kernels] = {}
    try:
        for tool in TOOLS:
            if why := missing(tool):
                out[tool.name] = {"missing": why}
                continue
            k = kernels[tool.name] = Kernels(tool, root / name / tool.name.strip("%."))
            k.run(state_code(name, args, STATES))
            size = int(k.run(SIZE.format(names=names)).split()[-1])
            if tool.save:  # Kishu: the cell that built the state was committed at its end
                k.run(tool.save.format(**fmt))
            before, wchar = files(k.root), k.wchar()
            k.run("step += 1\n" + tool.again.format(**fmt))
            time.sleep(0.2)  # Kishu commits in post_run_cell, after the reply
            row = {
                "state_bytes": size,
                "wchar": k.wchar() - wchar,
                "files": changed_bytes(before, files(k.root)),
            }
            if tool.name == "kishu":
                row["commit"] = k.run("print(_kishu._kishu_branch.get_head().commit_id)").split()[-1]
            out[tool.name] = row
            log.append(
                f"[{name}] {tool.name}: second checkpoint wrote {row['wchar']:,} B (wchar), files {row['files']:,} B, state {size:,} B"
            )
            print(log[-1], flush=True)
            k.stop()
        for _ in range(args.rounds):
            for tool in TOOLS:
                if tool.name not in kernels:
                    continue
                k = kernels[tool.name]
                print(f"[{name}] restore in a fresh kernel: {tool.name}", flush=True)
                k.fresh()
                if tool.name == "loopz":
                    k.run(state_code(name, args, PLACEHOLDERS))
                code = tool.restore.format(**fmt, commit=out[tool.name].get("commit", ""))
                timed = f"_t0 = time.perf_counter()\n{code}\n_t1 = time.perf_counter()"
                k.run(timed)
                elapsed = float(k.run("print(_t1 - _t0)").split()[-1])
                check = k.run(f"print(step, len({BIG[name]}))").split()
                out[tool.name].setdefault("restore_s", []).append(elapsed)
                out[tool.name]["restored"] = check  # step 1 and the full length, or what the tool gave back
                k.stop()
    finally:
        for k in kernels.values():
            k.close()
    return out


def kill_test(tool: Tool, args: argparse.Namespace, root: Path, when: list[float]) -> dict[str, Any]:
    """Run the tool's loop cell, SIGKILL it at each of the times ``when`` (fractions of the loop's
    duration, the same for every tool), run it again in a new kernel; per kill."""
    redone, totals = [], []
    n = args.iterations
    for kill, fraction in enumerate(when):
        k = Kernels(tool, root / f"kill-{tool.name.strip('%.')}-{kill}")
        try:
            commit = ""
            if tool.name == "kishu":
                k.run("pass")
                time.sleep(0.2)
                commit = k.run("print(_kishu._kishu_branch.get_head().commit_id)").split()[-1]
            cell = tool.kill_cell.format(
                n=n, every=f"{EVERY_SECONDS:g}", every_it=round(EVERY_SECONDS / STEP_SECONDS)
            )
            cell = cell.replace("{CK}", str(k.root / "ck"))
            logged = k.cwd / "iterations.log"
            k.handle.execute_async(cell)
            k.handle.wait_for(logged.exists, timeout=60)
            time.sleep(fraction * n * STEP_SECONDS)
            k.handle.kill()
            k.fresh()
            if commit:
                k.handle.execute(f"_kishu.checkout({commit!r})", timeout=120)
            said = k.run(cell, timeout=600)
            lines = logged.read_text().split()
            if {int(x) for x in lines} != set(range(n)):
                raise RuntimeError(f"{tool.name}: logged {lines}, not 0..{n - 1}; the cell said:\n{said}")
            redone.append(len(lines) - n)
            totals.append("total " + str(sum(range(n))) in said)
        finally:
            k.close()
    return {"redone": redone, "total_right": totals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--states", default="array,small")
    parser.add_argument("--array-mib", type=int, default=256)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=200, help="of the kill test's loop (~20 ms each)")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", default="alternatives_kernel.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.states, args.array_mib, args.rows, args.rounds, args.kills, args.iterations = (
            "array",
            1,
            1000,
            1,
            1,
            30,
        )
    root = Path(tempfile.mkdtemp(prefix="bench-altk-"))
    log: list[str] = []
    headlines: list[dict[str, Any]] = []
    states: dict[str, Any] = {}
    kills: dict[str, Any] = {}
    rng = random.Random(args.seed)
    when = [rng.uniform(0.1, 0.9) for _ in range(args.kills)]  # the kill times, the same for every tool
    try:
        for name in args.states.split(","):
            states[name] = rows = edit_and_restore(name, args, root, log)
            base = rows["pickle"].get("restore_s", [])
            for tool in TOOLS:
                row = rows[tool.name]
                if "missing" in row:
                    headlines.append(
                        headline(
                            f"bytes after a small edit, {name}: {tool.name}",
                            None,
                            baseline="the state's size",
                            note="not installed",
                        )
                    )
                    headlines.append(
                        ratio_headline(
                            f"restore in a fresh kernel, {name}: {tool.name}",
                            [],
                            baseline="pickle.load in a fresh kernel",
                            note="not installed",
                        )
                    )
                    continue
                share = row["wchar"] / row["state_bytes"]
                headlines.append(
                    headline(
                        f"bytes after a small edit, {name}: {tool.name}",
                        share,
                        share,
                        share,
                        baseline="the state's size",
                        note=f"{row['wchar']:,} B written (wchar); files new or changed {row['files']:,} B; state {row['state_bytes']:,} B",
                    )
                )
                samples = [a / b for a, b in zip(row["restore_s"], base, strict=True)]
                median = statistics.median(row["restore_s"])
                headlines.append(
                    ratio_headline(
                        f"restore in a fresh kernel, {name}: {tool.name}",
                        samples,
                        baseline="pickle.load in a fresh kernel",
                        note=f"median {median * 1e3:.0f} ms; restored step, len: {' '.join(row['restored'])}",
                    )
                )
        for tool in TOOLS:
            if why := missing(tool):
                kills[tool.name] = {"missing": why}
                headlines.append(
                    ratio_headline(
                        f"iterations redone after SIGKILL: {tool.name}",
                        [],
                        baseline="the loop's iterations",
                        note="not installed",
                    )
                )
                continue
            kills[tool.name] = row = kill_test(tool, args, root, when)
            row["every"] = tool.every
            log.append(
                f"[kill] {tool.name}: redone {row['redone']} of {args.iterations} ({tool.every}); right total {row['total_right']}"
            )
            print(log[-1], flush=True)
            shares = [r / args.iterations for r in row["redone"]]
            headlines.append(
                ratio_headline(
                    f"iterations redone after SIGKILL: {tool.name}",
                    shares,
                    baseline="the loop's iterations",
                    note=f"redone median {statistics.median(row['redone']):g}, max {max(row['redone'])} of {args.iterations} x ~{STEP_SECONDS * 1e3:.0f} ms; checkpoints {tool.every}",
                )
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n" + "\n".join(log))
    write_json(
        args.out,
        {
            "args": vars(args),
            "versions": versions("numpy", "dill", "IPython", "kishu", "loopz"),
            "states": states,
            "kill_fractions": when,
            "kills": kills,
            "headlines": headlines,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
