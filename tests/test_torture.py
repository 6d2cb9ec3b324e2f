"""Torture: SIGKILL a checkpointing worker hundreds of times; nothing committed is ever lost.

Plain-Python workers (``torture_worker.py``, the :class:`~resumable_magic.Resumable` API; no kernel,
so a process starts in ~0.2 s) checkpoint every 1 to 5 iterations of a loop whose state and RNGs
change every iteration. They are killed with SIGKILL

- at every step of a checkpoint commit (``store.CRASH_STEPS``: serialised, blob written, blob
  fsynced, manifest written, fsynced, renamed, directory fsynced, collecting), through the
  test-only hook ``RESUMABLE_CRASH_AT=<step>:<n>``, with n = 1, 2, 3, ... on successive restarts, so
  kills land in the first commit, in commits after a resume, and in the final commit;
- at random times (seeded: ``RESUMABLE_TORTURE_SEED`` replays the same kill delays; the OS still
  schedules as it likes), some while the process starts and opens the run, most inside the loop.

After every kill, before the restart, the test checks that the newest checkpoint the worker had
reported committed (its ``checkpoint_finished`` event appends ``<generation> <position>`` to an
fsynced log after the commit returned) is still the one :meth:`RunStore.read_latest` returns, or a
newer one; that it reports no damaged file; that every manifest left on disk verifies with its blob;
and that a DONE record, if any, is readable. Then it restarts the worker until the loop finishes and
compares the final state and both RNG states, pickled, byte for byte with an uninterrupted run.

``RESUMABLE_TORTURE_KILLS`` sets the number of random kills (default 150). The figures are printed at
the end of the pytest output and written to ``ci-artifacts/torture.json`` (``torture_report.py``).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torture_report as report

from resumable_magic.errors import ResumableError
from resumable_magic.store import records as store_module
from resumable_magic.store.runstore import CRASH_STEPS, RunStore

WORKER = Path(__file__).with_name("torture_worker.py")
SEED = int(os.environ.get("RESUMABLE_TORTURE_SEED", "0")) or random.SystemRandom().randrange(1, 10**6)
RANDOM_KILLS = int(os.environ.get("RESUMABLE_TORTURE_KILLS", "150"))
LANES = 2  # runs driven at once, each in its own thread
LAUNCH_TIMEOUT = 60.0  # one worker process, start to finish, on a busy machine


def worker_env(crash_at: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RESUMABLE_CRASH_AT"}
    if crash_at:
        env["RESUMABLE_CRASH_AT"] = crash_at
    return env


@dataclass
class Launch:
    """One worker process: how it ended and what it printed."""

    how: str  # "finished", "killed at <step>:<n>", "killed after <delay>"
    returncode: int
    output: str


@dataclass
class Run:
    """One run (one key) driven through kills and restarts to the end of its loop."""

    root: Path
    name: str
    n: int
    every: str
    mode: str = "for"
    launches: list[Launch] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.ckpt, self.log, self.out = self.root / "ck", self.root / "committed.log", self.root / "final.pkl"

    @property
    def store(self) -> RunStore:
        return RunStore(self.ckpt, self.name)

    def start(self, crash_at: str | None = None) -> subprocess.Popen[str]:
        report.add("launches")
        args = [sys.executable, str(WORKER), "--dir", str(self.ckpt), "--key", self.name]
        args += ["--n", str(self.n), "--every", self.every, "--mode", self.mode]
        args += ["--log", str(self.log), "--out", str(self.out)]
        return subprocess.Popen(
            args,
            env=worker_env(crash_at),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def end(self, proc: subprocess.Popen[str], how: str, seen: str = "") -> Launch:
        """Wait for the worker to end; ``seen``: output already read from it."""
        try:
            output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            self.failures.append(f"a worker hung for {LAUNCH_TIMEOUT:g} s ({how}):\n{output[-2000:]}")
        output = seen + output
        killed = proc.returncode == -signal.SIGKILL
        launch = Launch(how if killed else "finished", proc.returncode, output)
        self.launches.append(launch)
        if proc.returncode not in (0, -signal.SIGKILL):
            self.failures.append(f"a worker failed (exit {proc.returncode}, {how}):\n{output[-3000:]}")
        for line in output.splitlines():
            if line.startswith("WARNING"):  # a SIGKILL never damages a checkpoint: no warning is due
                self.failures.append(f"the worker warned after {self.describe_last()}: {line}")
        return launch

    def reported(self) -> tuple[int, int] | None:
        """The newest (generation, position) the worker reported committed, from its fsynced log."""
        if not self.log.exists():
            return None
        lines = [line.split() for line in self.log.read_text().splitlines() if line.strip()]
        # the log is appended after each commit returned; a kill can cut its last line short
        complete = [(int(g), int(p)) for g, p, *_ in (x for x in lines if len(x) == 2)]
        return complete[-1] if complete else None

    def check_after_kill(self, reported: tuple[int, int] | None, how: str) -> None:
        """What a kill must never do: lose a reported checkpoint, or leave a file that does not read."""
        report.add("checks")
        store = self.store
        result = store.read_latest()
        checkpoint = result.checkpoint
        if result.problems:
            report.add("damaged_after_kill", len(result.problems))
            self.failures.append(f"after a kill ({how}): " + "; ".join(map(str, result.problems)))
        if reported is not None:
            generation, position = reported
            if (
                checkpoint is None
                or checkpoint.generation < generation
                or (checkpoint.generation == generation and checkpoint.position != position)
                or checkpoint.position < position
            ):
                report.add("checkpoints_lost")
                found = (
                    f"generation {checkpoint.generation} at {checkpoint.position}" if checkpoint else "none"
                )
                self.failures.append(
                    f"checkpoint lost ({how}): generation {generation} at iteration {position} was "
                    f"reported committed; read_latest() gives {found}"
                )
        for problem in unreadable_files(store):
            report.add("damaged_after_kill")
            self.failures.append(f"after a kill ({how}): {problem}")

    def finish(self, reference: bytes) -> None:
        """Restart without faults until the loop ends; compare with the uninterrupted result."""
        launch = self.end(self.start(), "final restart")
        if launch.how != "finished":
            self.failures.append(f"the restart without faults did not finish:\n{launch.output[-2000:]}")
        report.add("runs")
        final = self.out.read_bytes() if self.out.exists() else b""
        if final == reference:
            report.add("results_equal")
        else:
            self.failures.append(
                f"the final state differs from the uninterrupted run's ({len(final)} vs {len(reference)} bytes)"
            )
        if self.store.stale_temporaries():
            self.failures.append(f"temporary files left behind: {self.store.stale_temporaries()}")
        newest = self.store.read_latest().checkpoint
        if newest is None or self.store.finished(newest.generation) is None:
            self.failures.append("the finished run has no valid DONE record naming its final checkpoint")
        # run again: a finished run replays its final values, it does not run the loop again
        self.out.unlink()
        before = self.log.read_text()
        launch = self.end(self.start(), "replay")
        replayed = self.out.read_bytes() if self.out.exists() else b""
        if replayed != reference or self.log.read_text() != before:
            self.failures.append(f"the replay of the finished run differs:\n{launch.output[-2000:]}")

    def describe_last(self) -> str:
        return "; ".join(launch.how for launch in self.launches[-3:]) or "the first launch"

    def describe(self) -> str:
        kills = [launch.how for launch in self.launches]
        return (
            f"run {self.name!r} (n={self.n}, every={self.every}, mode={self.mode}, seed {SEED}): "
            f"{len(kills)} launches: {', '.join(kills)}\n" + "\n".join(self.failures)
        )


def unreadable_files(store: RunStore) -> list[str]:
    """Every manifest in place must verify with its blob (not only the newest, which read_latest
    checks); a DONE record, if any, must verify."""
    bad = []
    for path in sorted(store.path.glob("manifest.*.json")):
        try:
            manifest = store_module.unseal(path)
            store.read_blob(manifest["state"]["digest"])
        except ResumableError as exc:
            bad.append(str(exc))
    if (store.path / "DONE").exists():
        try:
            store_module.unseal(store.path / "DONE")
        except ResumableError as exc:
            bad.append(str(exc))
    return bad


_references: dict[int, bytes] = {}
_references_lock = threading.Lock()


def reference(tmp_path: Path, n: int) -> bytes:
    """The same loop without checkpoints, uninterrupted (``--mode plain``)."""
    with _references_lock:
        if n not in _references:
            out = tmp_path / f"plain-{n}.pkl"
            args = [sys.executable, str(WORKER), "--mode", "plain", "--n", str(n), "--dir", str(tmp_path)]
            args += ["--log", str(tmp_path / f"plain-{n}.log"), "--out", str(out)]
            subprocess.run(
                args, env=worker_env(None), check=True, capture_output=True, timeout=LAUNCH_TIMEOUT
            )
            _references[n] = out.read_bytes()
        return _references[n]


@pytest.fixture(autouse=True)
def _timed():
    started = time.monotonic()
    yield
    report.FIGURES["seconds"] = report.FIGURES.get("seconds", 0.0) + time.monotonic() - started
    report.FIGURES["seed"] = SEED


@pytest.mark.parametrize("mode", ["for", "while"])
def test_uninterrupted_run_equals_the_plain_loop(tmp_path, mode):
    """The torture test's yardstick: with no fault, a checkpointed run ends as the plain loop does."""
    run = Run(tmp_path / "run", "calm", n=40, every="1it", mode=mode)
    launch = run.end(run.start(), "uninterrupted")
    assert launch.how == "finished", run.describe()
    assert run.out.read_bytes() == reference(tmp_path, 40), run.describe()
    assert run.reported() is not None and run.reported()[1] == 40
    assert not run.failures, run.describe()


def in_parallel(jobs: list[Callable[[], Run]]) -> list[Run]:
    """Run the jobs in two threads (the workers are processes: two run at once on two cores)."""
    with ThreadPoolExecutor(max_workers=LANES) as pool:
        return [future.result() for future in [pool.submit(job) for job in jobs]]


def kill_at_step(root: Path, step: str, mode: str, every: str, n: int) -> Run:
    run = Run(root / mode, f"steps/{step}-{mode}", n=n, every=every, mode=mode)
    for nth in range(1, 40):
        crash_at = f"{step}:{nth}"
        launch = run.end(run.start(crash_at), f"killed at {crash_at}")
        if launch.how == "finished":
            break
        report.add("kills")
        report.add("kills_deterministic")
        report.add_to("kills_by_step", step)
        run.check_after_kill(run.reported(), launch.how)
    killed = sum(launch.how != "finished" for launch in run.launches)
    if killed < 3:
        run.failures.append(f"only {killed} kills at {step}")
    run.finish(reference(root, n))
    return run


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_sigkill_at_every_commit_step(tmp_path, step):
    """Each launch kills itself the n-th time it reaches ``step`` (n = 1, 2, 3, ...: the first commit
    of a fresh run, commits after a resume, the final commit), until a launch gets to the end."""
    runs = in_parallel(
        [
            lambda: kill_at_step(tmp_path, step, "for", "1it", 24),
            lambda: kill_at_step(tmp_path, step, "while", "3it", 45),
        ]
    )
    for run in runs:
        assert not run.failures, run.describe()


def kill_at_random(root: Path, rng: random.Random, kills_wanted: int, lane: int) -> list[Run]:
    runs: list[Run] = []
    kills = 0
    while kills < kills_wanted:
        mode, every = rng.choice(["for", "for", "while"]), rng.choice(["1it", "2it", "5it"])
        name = f"random/{lane}-{len(runs)}"
        run = Run(root / name, name, n=rng.randrange(60, 150), every=every, mode=mode)
        runs.append(run)
        for _ in range(rng.randint(3, 10)):
            proc = run.start()
            seen: list[str] = []
            if rng.random() < 0.2:
                delay, since = rng.uniform(0.0, 0.5), "start"
            else:
                delay, since = rng.uniform(0.0, 0.25), "loop"
                assert proc.stdout is not None
                while not (seen and seen[-1].startswith("LOOP")) and (line := proc.stdout.readline()):
                    seen.append(line)  # wait for the loop to start (or for the process to end)
            time.sleep(delay)  # the random moment of the kill
            proc.send_signal(signal.SIGKILL)
            launch = run.end(proc, f"killed {delay:.3f} s after the {since}", "".join(seen))
            if launch.how == "finished":
                break
            kills += 1
            report.add("kills")
            report.add("kills_random")
            run.check_after_kill(run.reported(), launch.how)
        run.finish(reference(root, run.n))
    return runs


def test_sigkill_at_random_times(tmp_path):
    """SIGKILL after a random delay, from the process start (open, lease, restore) or from the
    start of the loop (mostly inside commits: with a checkpoint every 1-5 iterations they are most
    of the loop's time); several kills per run, then a restart that finishes. Two lanes of runs, each
    with its own RNG seeded from the seed."""
    lanes = [
        (
            lambda lane=lane: kill_at_random(
                tmp_path, random.Random(f"{SEED}-{lane}"), RANDOM_KILLS // LANES, lane
            )
        )
        for lane in range(LANES)
    ]
    with ThreadPoolExecutor(max_workers=LANES) as pool:
        runs = [run for future in [pool.submit(job) for job in lanes] for run in future.result()]
    failed = [run.describe() for run in runs if run.failures]
    assert not failed, "\n\n".join(failed)
