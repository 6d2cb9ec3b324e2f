"""The loop drivers keep the position exact however a loop over a list, tuple or range stops.

Plain API, no IPython: the items seen, the position where the loop stopped (completed iterations),
and a resume after an exception that continues with exactly the items not yet checkpointed.
"""

from __future__ import annotations

import pytest

from resumable_magic import Resumable
from resumable_magic.progress.textview import TextProgress

SEQUENCES = {
    "range": range(1000),
    "range with a step": range(3, 2000, 7),
    "descending range": range(500, -3, -3),
    "empty range": range(0),
    "list": [f"item{i}" for i in range(600)],
    "tuple": tuple(range(0, 900, 2)),
}


def run(tmp_path, sequence, stop_at=None, how="break", every="37it"):
    """Loop over ``sequence`` until item index ``stop_at`` (break or raise there); return what the body
    saw, the run's position afterwards, and the error raised, if any."""
    state = {"seen": []}
    error = None
    r = Resumable("loop", state, dir=tmp_path, every=every, progress=TextProgress(quiet=True))
    try:
        with r:
            for index, item in enumerate(r.iterate(sequence), start=len(state["seen"])):
                if index == stop_at:
                    if how == "break":
                        break
                    raise KeyError("stop")
                state["seen"].append(item)
    except KeyError as exc:
        error = exc
    return state["seen"], r.position, error


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_a_loop_that_runs_through_sees_every_item_once(name, tmp_path):
    sequence = SEQUENCES[name]
    seen, position, error = run(tmp_path, sequence)
    assert error is None and seen == list(sequence) and position == len(sequence)


@pytest.mark.parametrize("name", sorted(set(SEQUENCES) - {"empty range"}))
@pytest.mark.parametrize("stop_at", [0, 1, 36, 37, 38, 150])
def test_break_leaves_the_position_at_the_completed_iterations(name, stop_at, tmp_path):
    seen, position, error = run(tmp_path, SEQUENCES[name], stop_at=stop_at)
    assert error is None and seen == list(SEQUENCES[name])[:stop_at] and position == stop_at


@pytest.mark.parametrize("name", sorted(set(SEQUENCES) - {"empty range"}))
@pytest.mark.parametrize("stop_at", [1, 37, 38, 150])
def test_after_an_exception_the_next_run_continues_from_the_last_checkpoint(name, stop_at, tmp_path):
    sequence = list(SEQUENCES[name])
    first, position, error = run(tmp_path, SEQUENCES[name], stop_at=stop_at, how="raise")
    assert isinstance(error, KeyError) and position == stop_at and first == sequence[:stop_at]
    state = {"seen": []}
    with Resumable("loop", state, dir=tmp_path, every="37it", progress=TextProgress(quiet=True)) as r:
        restored = list(state["seen"])
        for item in r.iterate(SEQUENCES[name]):
            state["seen"].append(item)
    checkpointed = stop_at // 37 * 37  # the last every-37-iterations boundary before the stop
    assert restored == sequence[:checkpointed]
    assert state["seen"] == sequence


@pytest.mark.parametrize("name", ["range", "descending range", "list"])
def test_time_based_checkpoints_cut_chunks_without_losing_items(name, tmp_path):
    seen, position, error = run(tmp_path, SEQUENCES[name], every="1s")
    assert error is None and seen == list(SEQUENCES[name]) and position == len(SEQUENCES[name])
