"""What the resume banner says is what happened: the total is known to the plain API too, "nothing is
redone" when nothing is, one iteration is "1 iteration", and the seconds redone are the dead
attempt's own work, not the time before it started."""

from __future__ import annotations

import time

from resumable_magic import Resumable
from resumable_magic.progress.model import ProgressModel


class Boom(Exception):
    pass


def attempt(tmp_path, fail_at: int | None, every: str = "1it", n: int = 20) -> tuple[Resumable, str]:
    """One attempt of a 20-iteration loop through the plain API; returns the run and its info texts."""
    progress = ProgressModel()
    state = {"total": 0}
    run = Resumable("banner", state, dir=tmp_path, every=every, progress=progress)
    try:
        with run:
            for i in run.iterate(range(n)):
                if i == fail_at:
                    raise Boom(i)
                state["total"] += i
    except Boom:
        pass
    return run, " ".join(text for level, text in progress.messages if level == "info")


def test_the_plain_api_banner_names_the_total_and_says_nothing_is_redone(tmp_path):
    attempt(tmp_path, fail_at=7)  # every iteration checkpointed: the failed one had not completed
    _, said = attempt(tmp_path, fail_at=None)
    assert "from the checkpoint at iteration 7 of 20 " in said, said
    assert "Nothing is redone" in said and "if any" not in said, said


def test_one_iteration_redone_is_one_iteration(tmp_path):
    attempt(tmp_path, fail_at=4, every="4it")  # checkpoint at 4, fails on the 5th item
    attempt(tmp_path, fail_at=5, every="100it")  # resumes at 4, completes 1 iteration, fails
    _, said = attempt(tmp_path, fail_at=None)
    assert "(1 iteration, about" in said, said


def test_seconds_redone_are_the_dead_attempts_own_work(tmp_path):
    attempt(tmp_path, fail_at=5)  # the checkpoint at iteration 5
    time.sleep(1.5)  # the time before the next attempt starts is no work of the next attempt
    attempt(tmp_path, fail_at=8, every="100it")  # iterations 5, 6, 7 in a few ms, no checkpoint
    run, said = attempt(tmp_path, fail_at=None)
    resumed = [event for event in run.history if event["event"] == "resumed"][-1]
    assert resumed["redone"] == 3, resumed
    assert resumed["redone_seconds"] < 1.0, resumed  # before: the 1.5 s wait was counted
    assert "(3 iterations, about" in said, said


def test_an_unknown_amount_of_redone_work_is_said_to_be_unknown(tmp_path):
    attempt(tmp_path, fail_at=3)
    (tmp_path / "banner" / "owner.json").unlink()  # no record of how far the attempt got
    _, said = attempt(tmp_path, fail_at=None)
    assert "Work done after that checkpoint, if any, is redone." in said, said
