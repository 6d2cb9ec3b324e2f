"""Differential testing: random loop programs, run uninterrupted and under ``%%resumable`` with SIGKILLs.

hypothesis draws small programs from the grammar in ``diffgen.py`` (accumulators, lists appended and
popped, dicts and sets of strings, nested containers, an object holding a set, draws from ``random``
and ``numpy.random``, ``for`` over a range or over a named list the body extends, ``while`` drains,
``continue``, ``break``, a deliberate exception). Each program runs

- uninterrupted, without the magic, in two kernels with different ``PYTHONHASHSEED`` (1 and 2): if
  they differ the program depends on hash order (it iterates over a set) and is generated away;
- under the magic, uninterrupted (a third hash seed): the same result is required;
- under the magic with SIGKILLs in a "hook" lane (the test-only crash hook kills the kernel at an exact
  commit step, the n-th time it gets there) and in a "time" lane (this process sends SIGKILL to the
  kernel's pid after a random delay within the time the uninterrupted cell took under the magic),
  run again in a new kernel after each kill until a launch completes; then once more (a finished run
  replays).

The kernels are real ipykernel kernels driven through jupyter_client (``diffrun.py``; the extension
loaded with ``%load_ext resumable_magic``), each running one program after another (``%reset -f``
and a run folder of the program's own between them) until a SIGKILL ends it; a spare kernel, started
in the background, takes a killed one's place. All lanes of a program run at once but the time lane,
which waits for the uninterrupted run's duration.

What passes: the completed launch's result (the error it raised, by type and message, each variable's
value and both global RNG states) equals the uninterrupted run's, and so does the replay; or the first
launch was refused with a :class:`ResumableError` before any checkpoint was written (counted apart).
A program that raises is expected to raise the same error with the same state. A program that leaves
a changed variable out of the names on purpose may end differently only if a warning named it.

``RESUMABLE_DIFF_PROGRAMS`` (default 100) sets the number of valid programs, ``RESUMABLE_DIFF_SEED``
the hypothesis seed (default fixed). The figures are printed and written to
``ci-artifacts/differential.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from diffgen import Program, programs
from diffrun import Lane, Outcome, drive
from hypothesis import HealthCheck, given, reject, seed, settings
from hypothesis import strategies as st

from resumable_magic.store.runstore import CRASH_STEPS, RunStore

pytestmark = pytest.mark.kernel

PROGRAMS = int(os.environ.get("RESUMABLE_DIFF_PROGRAMS", "100"))
SEED = int(os.environ.get("RESUMABLE_DIFF_SEED", "20261214"))
ARTIFACT = Path(__file__).resolve().parent.parent / "ci-artifacts" / "differential.json"

FIGURES: dict[str, Any] = {}


def add(name: str, n: int = 1) -> None:
    FIGURES[name] = FIGURES.get(name, 0) + n


def same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return a is not None and b is not None and all(a[k] == b[k] for k in ("error", "state", "rng"))


def show(result: dict[str, Any] | None) -> str:
    if result is None:
        return "no result"
    text = f"error: {result['error']}\nstate: {json.dumps(result['state'])}\nrng: {result['rng']}"
    if result["messages"]:
        text += "\nmessages: " + " | ".join(result["messages"])
    return text + (f"\noutput: {result['output']}" if result.get("output") else "")


hook_kills = st.lists(
    st.tuples(
        st.just("hook"),
        st.sampled_from(CRASH_STEPS).flatmap(lambda s: st.integers(1, 4).map(lambda n: f"{s}:{n}")),
    ),
    min_size=1,
    max_size=2,
)
time_kills = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=2)


@pytest.fixture(scope="module")
def lanes(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("kernels")
    made = {
        name: Lane(seed, cwd)
        for name, seed in [("ref1", 1), ("ref2", 2), ("calm", 3), ("hook", 4), ("time", 5)]
    }
    yield made
    for lane in made.values():
        lane.close()


# ~2-3 s a program on 2 cores; the project's default 300 s timeout would cut a soak run short
@pytest.mark.timeout(max(900, PROGRAMS * 10))
def test_differential(tmp_path_factory, lanes):
    """Every valid program ends as its uninterrupted run does, however it is killed."""
    # Checkpoints on tmpfs when there is one: a SIGKILL does not care whether fsync reached a disk
    # (test_torture.py crashes commits on the disk), and a commit there costs a third of the time.
    shm = Path("/dev/shm")
    base = (
        Path(tempfile.mkdtemp(prefix="diff-", dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("diff")
    )
    started = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=4)

    @seed(SEED)
    @settings(
        max_examples=PROGRAMS,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(program=programs(), hooks=hook_kills, fractions=time_kills)
    def check(program: Program, hooks: list[tuple[str, str]], fractions: list[float]) -> None:
        add("examples")
        where = base / f"p{FIGURES['examples']}"
        plain = {"cell": program.plain(), "names": list(program.names)}

        def job(lane: str) -> dict[str, Any]:
            return {"cell": program.cell(lane, str(where)), "names": list(program.names)}

        def calm_then_timed() -> tuple[Outcome, Outcome]:
            calm = drive(lanes["calm"], job("calm"), [])
            assert calm.final is not None
            # random kill times within the time the uninterrupted cell took under the magic
            delays = [("time", f * calm.final["seconds"] * 1.2) for f in fractions]
            return calm, drive(lanes["time"], job("time"), delays)

        # Every lane at once but the time lane, which needs the calm lane's duration.
        ref1, ref2, (calm, timed), hook = pool.map(
            lambda run: run(),
            [
                lambda: lanes["ref1"].get().run(plain),
                lambda: lanes["ref2"].get().run(plain),
                calm_then_timed,
                lambda: drive(lanes["hook"], job("hook"), hooks),
            ],
        )
        if not same(ref1, ref2):
            add("generated_away_hash_dependent")
            reject()
        assert ref1 is not None
        add("programs")
        lanes_out = (("calm", calm), ("hook", hook), ("time", timed))
        problems = [verdict(program, ref1, name, o, where) for name, o in lanes_out]
        add("kills_hook", hook.kills)
        add("kills_time", timed.kills)
        failed = [p for p in problems if p]
        if failed:
            add("mismatches")
        assert not failed, f"program:\n{program}\nuninterrupted:\n{show(ref1)}\n\n" + "\n\n".join(failed)

    try:
        check()
    finally:
        pool.shutdown()
        shutil.rmtree(base, ignore_errors=True)
        FIGURES["seconds"] = round(time.monotonic() - started, 1)
        FIGURES["seed"] = SEED
        FIGURES["process_starts"] = sum(lane.starts for lane in lanes.values())
        FIGURES["kills"] = FIGURES.get("kills_hook", 0) + FIGURES.get("kills_time", 0)
        FIGURES.setdefault("mismatches", 0)
        ARTIFACT.parent.mkdir(exist_ok=True)
        ARTIFACT.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
        print("\ndifferential:", json.dumps(FIGURES, sort_keys=True))
    assert FIGURES["programs"] >= PROGRAMS
    # the hook lane kills in every program whose run reaches a commit step that often; most do
    assert FIGURES["kills_hook"] >= PROGRAMS // 2 and FIGURES["kills_time"] >= PROGRAMS // 4, FIGURES


def verdict(program: Program, truth: dict[str, Any], lane: str, outcome: Outcome, where: Path) -> str:
    """'' if the lane's outcome is acceptable, else what went wrong."""
    final = outcome.final
    launches = ", ".join(outcome.launches)
    if (
        outcome.first is not None
        and outcome.first["refused"]
        and not outcome.launches[0].startswith("killed")
    ):
        written = RunStore(where, lane).read_latest().checkpoint
        if written is None and same(outcome.first, outcome.final):
            add("refused_before_running")
            return ""
        return f"[{lane}] refused after writing a checkpoint ({launches}):\n{show(outcome.first)}"
    if final is not None and final["refused"]:
        return f"[{lane}] a resume was refused ({launches}):\n{show(final)}"
    if same(final, truth) and same(outcome.replay, truth):
        add(f"equal_{lane}")
        return ""
    if program.unnamed and all(
        r is not None and any(repr(program.unnamed) in m for m in r["messages"])
        for r in (final, outcome.replay)
    ):
        add("differ_with_warning_naming_the_unnamed")  # the one difference the test accepts
        return ""
    if same(final, truth):
        return f"[{lane}] the replay of the finished run differs ({launches}):\n{show(outcome.replay)}"
    return f"[{lane}] MISMATCH after {launches}:\n{show(final)}"
