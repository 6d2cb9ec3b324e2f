"""When is a checkpoint due? The one place that decides, in pure logic: no I/O, no threads, no clock.

A run asks :meth:`CheckpointPolicy.due` at each boundary its loop driver stops at, with the time and
position of now and of its last checkpoint, and reports each checkpoint's cost back
(:meth:`CheckpointPolicy.checkpoint_done`), from which the adaptive policy learns its interval.
Three policies, from ``--every`` (:func:`parse_every`):

- ``every="500it"``: after every 500 completed iterations. The loop drivers stop at exactly that
  position (:meth:`CheckpointPolicy.next_due_at`: one int compare per item).
- ``every="30s"`` / ``"5m"`` / ``"2h"``: when that much time has passed since the last checkpoint.
  The run's timer thread brings the loop to a boundary a few times a second to ask.
- adaptive (no ``every``): aim for checkpoint time <= ``budget`` (2%) of loop time: after a checkpoint
  that blocked the loop for ``c`` seconds, wait ``c / budget`` (at least ``floor``) before the next;
  never wait longer than ``cap`` (the work the user can afford to lose). When the cap forces a higher
  overhead than the budget, the policy says so once (:attr:`over_budget_note`).

``--max-size``, the other checkpoint option of the magic's line, is parsed here too
(:func:`parse_size`); it decides no checkpoint, only a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from resumable_magic.errors import OptionError

ADAPTIVE_BUDGET = 0.02
ADAPTIVE_FLOOR_SECONDS = 10.0
ADAPTIVE_CAP_SECONDS = 300.0
_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_SPEC_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(it|s|sec|m|min|h)\s*$")


_SIZE_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20}
_SIZE_UNITS.update({"g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40})
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(spec: str | int | None, option: str = "--max-size") -> int | None:
    """``"500MB"``, ``"2GiB"``, ``"1.5G"`` or a number of bytes; None stays None."""
    if spec is None or (isinstance(spec, int) and not isinstance(spec, bool) and spec > 0):
        return spec
    match = _SIZE_RE.match(str(spec))
    if match and match.group(2).lower() in _SIZE_UNITS and float(match.group(1)) > 0:
        return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise OptionError(option, spec, "use a size like '500MB', '2GiB' or a number of bytes (above zero)")


@dataclass(frozen=True)
class Every:
    """A parsed ``--every``: exactly one of ``iterations`` / ``seconds``."""

    iterations: int | None = None
    seconds: float | None = None

    def __str__(self) -> str:
        if self.iterations is not None:
            return f"every {self.iterations}it"
        assert self.seconds is not None
        return f"every {self.seconds:g}s"


def parse_every(spec: str | int | float | Every | None) -> Every | None:
    """``"30s"``, ``"5m"``, ``"2h"``, ``"500it"`` (an int means iterations); None means adaptive."""
    if spec is None or isinstance(spec, Every):
        return spec
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = f"{spec}it"
    match = _SPEC_RE.match(str(spec))
    if match:
        value, unit = float(match.group(1)), match.group(2)
        if unit == "it" and value == int(value) and value >= 1:
            return Every(iterations=int(value))
        if unit != "it" and value > 0:
            return Every(seconds=value * _UNITS[unit])
    raise OptionError(
        "--every",
        spec,
        "use a number of iterations like '500it', or a time like '30s', '5m', '2h' (above zero)",
    )


class CheckpointPolicy:
    """Decides when the next checkpoint is due. Times are monotonic seconds."""

    def __init__(
        self,
        every: Every | None,
        *,
        budget: float = ADAPTIVE_BUDGET,
        floor: float = ADAPTIVE_FLOOR_SECONDS,
        cap: float = ADAPTIVE_CAP_SECONDS,
    ) -> None:
        self.every = every
        self.budget, self.floor, self.cap = budget, floor, cap
        self.over_budget_note: str | None = None
        self._noted = False
        self._said_too_long = False
        self._interval = floor if every is None else every.seconds

    def describe(self) -> str:
        if self.every is not None:
            return str(self.every)
        return f"adaptive: <= {self.budget:.0%} of loop time, at most every {self.cap / 60:g} min"

    @property
    def iterations(self) -> int | None:
        """Checkpoint after this many iterations (None: time-based)."""
        return self.every.iterations if self.every else None

    @property
    def interval(self) -> float | None:
        """Seconds from one checkpoint to the next (None: iteration-based)."""
        return self._interval

    def due(self, now: float, position: int, last_time: float, last_position: int) -> bool:
        """Is a checkpoint due now? ``now`` and ``last_time`` are monotonic seconds (``last_time``: when
        the last checkpoint was taken or tried), ``position`` and ``last_position`` completed iterations
        (``last_position``: where the newest checkpoint was committed)."""
        interval, iterations = self._interval, self.iterations
        return (interval is not None and now - last_time >= interval) or (
            iterations is not None and position - last_position >= iterations
        )

    def next_due_at(self, last_position: int) -> int:
        """The position at which an iteration policy is next due, after a checkpoint committed at
        ``last_position``: the loop drivers compare their position with it, item by item, and stop at
        the boundary exactly there. -1 (never reached) for a time policy, whose boundaries come from
        the run's timer thread."""
        iterations = self.iterations
        return last_position + iterations if iterations is not None else -1

    def one_iteration_too_long(self, elapsed: float, iterations: int) -> bool:
        """True once: when a checkpoint falls due after a single iteration that took well over a time
        interval (the loop cannot be checkpointed any finer)."""
        interval = self._interval  # None: an iteration policy, which a long iteration does not delay
        if self._said_too_long or interval is None or iterations != 1 or elapsed < 1.5 * interval:
            return False
        self._said_too_long = True
        return True

    def checkpoint_done(self, blocked_seconds: float) -> None:
        """Learn from a checkpoint that blocked the loop for ``blocked_seconds``."""
        if self.every is not None:
            return
        wanted = blocked_seconds / self.budget
        self._interval = min(max(wanted, self.floor), self.cap)
        if wanted > self.cap and not self._noted:
            self._noted = True
            self.over_budget_note = (
                f"one checkpoint blocks the loop for {blocked_seconds:.1f} s, which is "
                f"{blocked_seconds / self.cap:.1%} of the {self.cap / 60:g} min cap between checkpoints "
                f"(the budget is {self.budget:.0%}); checkpointing anyway every {self.cap / 60:g} min. "
                f"Pass --every with a longer interval to lower the overhead and risk more lost work."
            )
