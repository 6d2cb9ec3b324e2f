"""Crash and resume in real kernels: SIGKILL a kernel running a ``%%resumable`` cell, restart it,
run the cell again, repeat; the final state must equal an uninterrupted run's exactly (named
variables, the loop target, and the global ``random`` / ``numpy.random`` states), and each crash
may redo at most ``--every N`` iterations plus the one in flight.

Kills happen at random moments (seeded: set ``RESUMABLE_TEST_SEED`` to replay a failure;
``RESUMABLE_TEST_KILLS`` sets the number per loop, default 5) and at every step of a checkpoint
commit through the test-only hook ``RESUMABLE_CRASH_AT``.

Each loop body appends its iteration index to a log file (outside the checkpointed state), so the
test sees exactly which iterations every kernel ran: nothing skipped, little redone.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xxhash
from kernels import REPO_ROOT, KernelDied, KernelHandle, start_kernel

try:
    from resumable_magic.store.runstore import CRASH_STEPS, RunStore
except ImportError:  # not installed: use the checkout
    sys.path.insert(0, str(REPO_ROOT))
    from resumable_magic.store.runstore import CRASH_STEPS, RunStore

pytestmark = pytest.mark.kernel

SEED = int(os.environ.get("RESUMABLE_TEST_SEED", "0")) or random.SystemRandom().randrange(1, 10**6)
KILLS = int(os.environ.get("RESUMABLE_TEST_KILLS", "5"))  # random kills per loop; raise it for a torture run

# ---------------------------------------------------------------------------
# The cells
# ---------------------------------------------------------------------------

# Teardown shared by every cell: one line of JSON fingerprinting the final state.
SUMMARY = """\
import hashlib as _hl, json as _json, pickle as _pk
def _digest(obj):
    return _hl.sha256(_pk.dumps(obj, protocol=4)).hexdigest()
_np_state = np.random.get_state(legacy=True)
print("FINAL " + _json.dumps({{
    {fields},
    "random": _digest(random.getstate()),
    "numpy": _digest((_np_state[0], _np_state[1].tobytes(), *_np_state[2:])),
}}, sort_keys=True))
"""

FOR_FIELDS = '"total": repr(total), "results": _digest(results), "n": len(results), "i": i'
WHILE_FIELDS = '"todo": _digest(todo), "done": _digest(done), "n": len(done)'


def for_cell(ckpt: Path, log: Path, *, n: int, every: int, key: str, sleep: float, magic: bool = True) -> str:
    """A for loop over ``range(n)`` drawing from ``random`` and ``numpy.random`` (including their
    cached-gaussian state and data-dependent extra draws)."""
    head = f"%%resumable total results --every {every}it --name {key} --dir {ckpt}\n" if magic else ""
    pause = f"    time.sleep({sleep})\n" if sleep else ""
    return (
        head
        + f"""\
import os, random, time
import numpy as np
random.seed(20240601)
np.random.seed(4242)
total, results = 0.0, []
log_fd = os.open({str(log)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
for i in range({n}):
    os.write(log_fd, b"%d\\n" % i)
    x = random.random() * random.gauss(0.0, 1.0) + float(np.random.standard_normal())
    x += int(np.random.randint(0, 1000)) / 7
    if random.random() < 0.3:
        np.random.random(int(x) % 3 + 1)  # data-dependent extra draws
    total += x
    results.append(x)
{pause}os.close(log_fd)
"""
        + SUMMARY.format(fields=FOR_FIELDS)
    )


def while_cell(
    ckpt: Path, log: Path, *, n: int, every: int, key: str, sleep: float, magic: bool = True
) -> str:
    """A while loop draining a shuffled work list; the log records each iteration's index."""
    head = f"%%resumable todo done --every {every}it --name {key} --dir {ckpt}\n" if magic else ""
    return (
        head
        + f"""\
import os, random, time
import numpy as np
random.seed(99)
np.random.seed(7)
todo = list(range({n}))
random.shuffle(todo)
done = []
log_fd = os.open({str(log)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while todo:
    os.write(log_fd, b"%d\\n" % len(done))
    item = todo.pop()
    done.append((item, random.random(), float(np.random.random())))
    if done[-1][1] < 0.1:
        todo.insert(0, -item - 1)  # the work list also grows now and then
    time.sleep({sleep})
os.close(log_fd)
"""
        + SUMMARY.format(fields=WHILE_FIELDS)
    )


@dataclass(frozen=True)
class Scenario:
    name: str
    make: Callable[..., str]
    n: int
    every: int
    sleep: float
    key: str


FOR_RANDOM = Scenario("for", for_cell, n=3000, every=50, sleep=0.001, key="crash-for")
FOR_STEPS = Scenario("for-steps", for_cell, n=300, every=20, sleep=0.0, key="crash-steps")
WHILE_RANDOM = Scenario("while", while_cell, n=1500, every=25, sleep=0.001, key="crash-while")


def final_of(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("FINAL ")]
    assert len(lines) == 1, f"expected one FINAL line in:\n{stdout[-3000:]}"
    return json.loads(lines[0][len("FINAL ") :])


# ---------------------------------------------------------------------------
# Reference results: the same code without the magic, uninterrupted
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("reference")
    k = start_kernel(work)
    try:
        out = {}
        for sc in (FOR_RANDOM, FOR_STEPS, WHILE_RANDOM):
            cell = sc.make(
                work, work / f"{sc.name}.log", n=sc.n, every=sc.every, key=sc.key, sleep=0, magic=False
            )
            out[sc.name] = final_of(k.run(cell, timeout=120).stdout)
        return out
    finally:
        k.shutdown()


# ---------------------------------------------------------------------------
# Checkpoint directory checks (independent of the package's reader where possible)
# ---------------------------------------------------------------------------


def manifests(run_dir: Path) -> dict[int, Path]:
    found = {}
    for p in run_dir.glob("manifest.*.json"):
        m = re.fullmatch(r"manifest\.(\d+)\.json", p.name)
        if m:
            found[int(m.group(1))] = p
    return found


def check_checkpoints(run_dir: Path, ckpt_dir: Path, key: str) -> tuple[int | None, int | None]:
    """Every manifest in place must be complete and point at intact blobs; return the newest
    (generation, position)."""
    newest: tuple[int | None, int | None] = (None, None)
    for gen, path in sorted(manifests(run_dir).items()):
        raw = path.read_bytes()
        assert raw, f"{path.name} is empty"
        try:
            record = json.loads(raw)
        except ValueError as exc:
            raise AssertionError(
                f"{path.name} is not valid JSON (torn write visible): {raw[:200]!r}"
            ) from exc
        assert record.get("generation") == gen, (path.name, record.get("generation"))
        assert isinstance(record.get("position"), int), record
        blob_digest = record["state"]["digest"]
        blob = run_dir / "objects" / blob_digest
        assert blob.exists(), f"{path.name} names missing blob {blob_digest}"
        assert xxhash.xxh3_128_hexdigest(blob.read_bytes()) == blob_digest, f"blob {blob_digest} is damaged"
        newest = (gen, record["position"])
    # and the package's own reader agrees: nothing damaged on the way to the newest checkpoint
    read = RunStore(ckpt_dir, key).read_latest()
    assert not read.problems, [str(p) for p in read.problems]
    if newest[0] is not None:
        assert read.checkpoint is not None and read.checkpoint.generation == newest[0]
    return newest


def temporaries(run_dir: Path) -> list[str]:
    return [
        p.name for d in (run_dir, run_dir / "objects") if d.exists() for p in d.iterdir() if ".tmp" in p.name
    ]


# ---------------------------------------------------------------------------
# The iteration log: which iterations each kernel ran
# ---------------------------------------------------------------------------


def read_log(log: Path) -> list[int]:
    try:
        data = log.read_bytes()
    except FileNotFoundError:
        return []
    # only complete lines (a kill may land between two writes, never inside one small write)
    return [int(x) for x in data[: data.rfind(b"\n") + 1].split()]


@dataclass
class Attempt:
    start_line: int  # log lines before this kernel ran the cell
    iterations: list[int] = field(default_factory=list)
    killed: str | None = None  # how it was killed, None for the run that finished
    newest_before_kill: int | None = None  # newest manifest generation seen just before the kill
    resumable_from: int | None = None  # newest good checkpoint position after the kill
    mid_write: bool = False  # the kill left a commit's temporary file behind


def check_attempts(attempts: list[Attempt], n: int, every: int, context: str = "") -> list[int]:
    """Nothing skipped, each crash redoes at most every+1 iterations; returns the redo counts.

    ``n`` is the number of iterations of an uninterrupted run."""
    try:
        return _check_attempts(attempts, n, every)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{context}") from None


def _check_attempts(attempts: list[Attempt], n: int, every: int) -> list[int]:
    redone = []
    expected_start = 0
    for k, att in enumerate(attempts):
        its = att.iterations
        if its:
            # each kernel runs a contiguous range, starting where the checkpoint left off
            assert its == list(range(its[0], its[0] + len(its))), f"attempt {k}: iterations not contiguous"
            assert its[0] == expected_start, (
                f"attempt {k} started at iteration {its[0]}, but the newest good checkpoint after "
                f"the previous kill was at {expected_start}"
            )
        if att.killed is None:
            assert its and its[-1] == n - 1, f"final attempt ended at {its[-1] if its else None}, not {n - 1}"
            break
        resumed = att.resumable_from or 0
        assert resumed <= (its[-1] + 1 if its else expected_start), (
            f"attempt {k}: the checkpoint claims {resumed} iterations done but only "
            f"{its[-1] + 1 if its else expected_start} ever started: iterations would be skipped"
        )
        lost = (its[-1] + 1 - resumed) if its else 0
        redone.append(lost)
        assert lost <= every + 1, (
            f"attempt {k} (killed {att.killed}) ran up to iteration {its[-1]} but the newest "
            f"checkpoint after the kill is at {resumed}: {lost} iterations to redo > --every {every} + 1"
        )
        expected_start = resumed
    return redone


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------


class Runner:
    """Runs one scenario's cell in a kernel, again and again, across kills."""

    def __init__(self, kernel: KernelHandle, sc: Scenario, work: Path):
        self.k, self.sc = kernel, sc
        self.ckpt = work / "ckpt"
        self.log = work / f"{sc.name}.log"
        self.run_dir = self.ckpt / sc.key
        self.cell = sc.make(self.ckpt, self.log, n=sc.n, every=sc.every, key=sc.key, sleep=sc.sleep)
        self.attempts: list[Attempt] = []
        self.outputs: list[str] = []

    def load_ext(self) -> None:
        self.k.run("%load_ext resumable_magic")

    def begin(self) -> tuple[Attempt, str]:
        att = Attempt(start_line=len(read_log(self.log)))
        self.attempts.append(att)
        return att, self.k.execute_async(self.cell)

    def after_death(self, att: Attempt, how: str) -> None:
        att.killed = how
        att.iterations = read_log(self.log)[att.start_line :]
        att.mid_write = bool(temporaries(self.run_dir))
        gen, pos = check_checkpoints(self.run_dir, self.ckpt, self.sc.key)
        if att.newest_before_kill is not None:
            assert gen is not None and gen >= att.newest_before_kill, (
                f"checkpoint lost: generation {att.newest_before_kill} was committed before the kill, "
                f"the newest readable one after it is {gen}"
            )
        att.resumable_from = pos

    def finish(self, att: Attempt, msg_id: str) -> dict:
        res = self.k.result(msg_id, timeout=120)
        self.outputs.append(res.output)
        assert res.ok, f"{self.describe()}\n{res.describe()}"
        att.iterations = read_log(self.log)[att.start_line :]
        return final_of(res.stdout)

    def newest_generation(self) -> int | None:
        return max(manifests(self.run_dir), default=None)

    def describe(self) -> str:
        return "attempts: " + "; ".join(
            f"[{a.iterations[0] if a.iterations else '-'}..{a.iterations[-1] if a.iterations else '-'}"
            f" killed={a.killed}{' (mid-write)' if a.mid_write else ''} resumable_from={a.resumable_from}]"
            for a in self.attempts
        )


KILL_MODES = ("iteration", "after-commit", "mid-commit", "early", "soon-after-resume")


def kill_moment(mode: str, r: Runner, att: Attempt, rnd: random.Random) -> Callable[[], bool]:
    """A predicate that turns true at the moment to kill the kernel running ``att``."""
    sc = r.sc

    def lines() -> int:
        return len(read_log(r.log))

    if mode == "iteration":
        # at a random iteration of the remaining work (within the first 40% of it)
        remaining = sc.n - (r.attempts[-2].resumable_from or 0 if len(r.attempts) > 1 else 0)
        target = att.start_line + rnd.randint(1, max(2, int(remaining * 0.4)))
        return lambda: lines() >= target
    if mode == "soon-after-resume":
        # a little more than --every iterations after the resume point: the first checkpoint
        # after a resume must already be committed then
        target = att.start_line + sc.every + rnd.randint(1, sc.every // 2)
        return lambda: lines() >= target
    if mode == "after-commit":
        # right after the first or second checkpoint this kernel commits
        wanted = (r.newest_generation() or 0) + rnd.randint(1, 2)
        return lambda: (r.newest_generation() or 0) >= wanted
    if mode == "mid-commit":
        # while a commit's temporary file exists (falls back to a random iteration if never seen)
        target = att.start_line + rnd.randint(sc.every, 6 * sc.every)
        return lambda: bool(temporaries(r.run_dir)) or lines() >= target
    if mode == "early":
        # during kernel-side setup, restore, or the first iterations
        t_end = time.monotonic() + rnd.uniform(0.0, 0.4)
        return lambda: time.monotonic() >= t_end
    raise ValueError(mode)


def kill_at_random(r: Runner, rnd: random.Random, kills: int) -> tuple[dict, list[str]]:
    """Kill the running cell ``kills`` times at random moments, resuming in between; return the
    final summary and how each kill was timed."""
    k = r.k
    # every mode at least once, the rest random; "soon-after-resume" is meant for a resumed kernel
    plan = (list(KILL_MODES) * ((kills + len(KILL_MODES) - 1) // len(KILL_MODES)))[:kills]
    rnd.shuffle(plan)
    if plan[0] == "soon-after-resume" and len(plan) > 1:
        plan[0], plan[1] = plan[1], plan[0]
    log_of: list[str] = []
    r.load_ext()
    for mode in plan:
        att, msg_id = r.begin()
        moment = kill_moment(mode, r, att, rnd)
        # stop waiting also when the cell finished before the moment came
        k.wait_for(lambda msg_id=msg_id, moment=moment: k.partial(msg_id).done or moment(), timeout=60)
        att.newest_before_kill = r.newest_generation()
        if k.partial(msg_id).done:
            # the cell finished before the kill: that run counts as the last one
            return r.finish(att, msg_id), log_of
        k.kill()
        try:
            k.result(msg_id, timeout=10)
        except KernelDied:
            pass
        else:  # it finished in the instant before the kill: count it as the last run
            att.iterations = read_log(r.log)[att.start_line :]
            k.restart()
            r.load_ext()
            return final_of(k.run(r.cell, timeout=60).stdout), log_of
        log_of.append(mode)
        r.after_death(att, mode)
        k.restart()
        r.load_ext()
    att, msg_id = r.begin()
    return r.finish(att, msg_id), log_of


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("sc", [FOR_RANDOM, WHILE_RANDOM], ids=["for-random-numpy", "while-work-list"])
def test_random_kills_resume_to_the_uninterrupted_result(sc, reference, kernel, tmp_path):
    rnd = random.Random(f"{SEED}-{sc.name}")
    r = Runner(kernel, sc, tmp_path)
    final, how = kill_at_random(r, rnd, kills=KILLS)
    context = f"seed {SEED} (RESUMABLE_TEST_SEED), kills: {how}\n{r.describe()}"
    assert final == reference[sc.name], context
    redone = check_attempts(r.attempts, reference[sc.name]["n"], sc.every, context)
    assert how, f"no kill landed before the run finished: {context}"
    mid = sum(a.mid_write for a in r.attempts)
    print(f"{sc.name}: {len(how)} kills ({', '.join(how)}), {mid} during a write, redone per kill: {redone}")

    # finished: DONE written, every manifest readable, no temporary files left behind
    assert (r.run_dir / "DONE").exists()
    check_checkpoints(r.run_dir, r.ckpt, sc.key)
    assert not temporaries(r.run_dir), temporaries(r.run_dir)

    # replay in the same kernel and in a fresh one: the final state comes back, the loop is skipped
    lines = len(read_log(r.log))
    assert final_of(kernel.run(r.cell, timeout=60).stdout) == reference[sc.name]
    kernel.restart()
    r.load_ext()
    assert final_of(kernel.run(r.cell, timeout=60).stdout) == reference[sc.name]
    assert len(read_log(r.log)) == lines, "a replayed run ran loop iterations"


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_crash_at_every_commit_step(step, reference, kernel_factory, tmp_path):
    """The kernel SIGKILLs itself inside a checkpoint commit (``RESUMABLE_CRASH_AT=<step>:<n>``):
    first at its first commit (the position-0 checkpoint), then at a later one, then at the second
    commit after a resume; a kernel without the hook then finishes the run."""
    sc = FOR_STEPS
    k = kernel_factory(env={"RESUMABLE_CRASH_AT": f"{step}:1"})
    r = Runner(k, sc, tmp_path)
    r.load_ext()
    for nth in (3, 2, None):
        att, msg_id = r.begin()
        att.newest_before_kill = r.newest_generation()
        with pytest.raises(KernelDied) as died:
            r.k.result(msg_id, timeout=60)
        assert died.value.signal == signal.SIGKILL, died.value
        r.after_death(att, f"{step}:{nth}")
        if step in ("serialized", "blob-written", "blob-synced", "manifest-written") and att.iterations:
            # the commit that crashed never became visible: the resume point is the one before it
            assert att.resumable_from is None or att.resumable_from < att.iterations[-1] + 1
        env = {"RESUMABLE_CRASH_AT": f"{step}:{nth}" if nth else None}
        r.k.restart(env=env)
        r.load_ext()
    att, msg_id = r.begin()
    final = r.finish(att, msg_id)
    assert final == reference[sc.name], r.describe()
    check_attempts(r.attempts, reference[sc.name]["n"], sc.every, r.describe())
    # the first crash happened at the position-0 commit: nothing ran, nothing (valid) was left
    first = r.attempts[0]
    assert first.iterations == [], (
        f"the crash at the first commit happened after the loop started: {r.describe()}"
    )
    check_checkpoints(r.run_dir, r.ckpt, sc.key)
    assert (r.run_dir / "DONE").exists()
    assert not temporaries(r.run_dir), temporaries(r.run_dir)


def test_uninterrupted_magic_run_equals_plain_code(reference, kernel, tmp_path):
    """Sanity for the tests above: without any crash, the cell under %%resumable gives exactly
    what the plain code gives."""
    for sc in (FOR_STEPS,):
        r = Runner(kernel, sc, tmp_path)
        r.load_ext()
        att, msg_id = r.begin()
        assert r.finish(att, msg_id) == reference[sc.name]
        assert att.iterations == list(range(sc.n))
