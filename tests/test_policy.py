"""When checkpoints are due."""

from __future__ import annotations

import pytest

from resumable_magic.core.policy import CheckpointPolicy, Every, parse_every
from resumable_magic.errors import OptionError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("30s", Every(seconds=30)),
        ("5m", Every(seconds=300)),
        ("2h", Every(seconds=7200)),
        ("1.5m", Every(seconds=90)),
        ("500it", Every(iterations=500)),
        (" 10 it ", Every(iterations=10)),
        (7, Every(iterations=7)),
        (None, None),
    ],
)
def test_parse_every(spec, expected):
    assert parse_every(spec) == expected


@pytest.mark.parametrize("spec", ["5x", "0s", "0it", "1.5it", "-3s", "", "s", True])
def test_parse_every_rejects_with_the_option_named(spec):
    with pytest.raises(OptionError, match="--every"):
        parse_every(spec)


def test_fixed_policies_ignore_cost():
    policy = CheckpointPolicy(Every(seconds=30))
    policy.checkpoint_done(100.0)
    assert policy.interval == 30 and policy.iterations is None and policy.over_budget_note is None
    assert CheckpointPolicy(Every(iterations=5)).iterations == 5


def test_adaptive_keeps_overhead_at_budget_between_floor_and_cap():
    policy = CheckpointPolicy(None, budget=0.02, floor=10, cap=300)
    policy.checkpoint_done(0.001)
    assert policy.interval == 10  # floor: tiny states are not written every 50 ms
    policy.checkpoint_done(1.0)
    assert policy.interval == pytest.approx(50)  # 1 s is 2% of 50 s
    assert policy.over_budget_note is None


def test_adaptive_cap_wins_and_says_so_once():
    policy = CheckpointPolicy(None, budget=0.02, floor=10, cap=300)
    policy.checkpoint_done(9.0)  # would need 450 s between checkpoints
    assert policy.interval == 300
    assert "3.0% of the 5 min cap" in policy.over_budget_note
    policy.over_budget_note = None
    policy.checkpoint_done(9.0)
    assert policy.over_budget_note is None
