r"""The progress model of a run: its events in, immutable snapshots (``snapshots.py``) out.

The run (``core/run.py``) reports events to a :class:`ProgressModel`; views (the text view in
``textview.py``, the ipywidgets view in ``widget.py``) render the model. This module imports neither
IPython nor ipywidgets.

Contract with ``run.py`` (the calls the run makes, in order, all from the loop's thread):

- ``run_started(info)`` once, before the first iteration (or for a replay).
- ``advanced(position)`` often, but at most a few times a second.
- ``checkpoint_started(position)`` / ``checkpoint_finished(stats)`` around each checkpoint
  (``checkpoint_failed(message)`` instead of finished when a write fails; the run also warns
  through ``message``, so views do not print the failure themselves).
- ``message(level, text)`` for banners ('info') and problems ('warning'); level 'transient' for a
  message that holds only until the run ends (an interrupt being honoured): views show it in
  place and drop it, and it is not kept among the messages.
- ``run_ended(outcome, detail)`` once; outcome is one of ``OUTCOMES``.

Views read the model from any thread through :meth:`ProgressModel.snapshot`, an immutable
:class:`RunSnapshot` with every derived number (smoothed rate, ETA, overhead share, time since the
last checkpoint); :func:`progress_line` and :func:`summary_line` (in ``text.py``) turn a snapshot into the text that the text view prints and that the widget uses as its
``text/plain`` representation.

A sharded map or sweep (``resumable_magic.distributed``) shows one view for all its runs: its poller
is a ``MapSource`` of ``MapSnapshot``\ s (``snapshots.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from resumable_magic.progress.snapshots import (
    OUTCOMES,
    CheckpointStats,
    RunSnapshot,
    StartInfo,
)
from resumable_magic.progress.text import progress_line, summary_line

__all__ = ["KEEP_MESSAGES", "RATE_SAMPLE_SECONDS", "RATE_SMOOTHING", "ProgressModel"]

#: The rate is an exponential moving average of samples at least this many seconds long ...
RATE_SAMPLE_SECONDS = 0.5
#: ... with this weight for the newest sample (tqdm's default smoothing).
RATE_SMOOTHING = 0.3
#: How many messages a model keeps for its views.
KEEP_MESSAGES = 5


class ProgressModel:
    """Counts, rates and checkpoint statistics of one run.

    Events come from the loop's thread; views read :meth:`snapshot` from any thread. ``clock``
    (monotonic) and ``wall`` (``time.time``) are injectable for tests.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self._clock, self._wall = clock, wall
        # re-entrant: the run reports messages from signal handlers, which may interrupt the main
        # thread while it holds the lock in another event
        self._lock = threading.RLock()
        self.info: StartInfo | None = None
        self.position = 0
        self.state = "starting"
        self.started_monotonic = clock()
        self.ended_monotonic: float | None = None
        self.checkpoints = 0
        self.checkpoint_seconds = 0.0
        self.failed_checkpoints = 0
        self.last_checkpoint: CheckpointStats | None = None
        self._last_checkpoint_monotonic: float | None = None
        self.detail = ""
        self.last_error = ""
        self.messages: list[tuple[str, str]] = []
        self.notice = ""  # the transient message, until the run ends
        # rate: EMA of samples (dn / dt) each at least RATE_SAMPLE_SECONDS long
        self.rate: float | None = None
        self._sample_position = 0
        self._sample_start = self.started_monotonic
        self._last_advance = self.started_monotonic

    # -- events from the run ------------------------------------------------------------------
    def run_started(self, info: StartInfo) -> None:
        with self._lock:
            self.info, self.position = info, info.start_position
            self.state = "replayed" if info.replayed else "running"
            now = self._clock()
            self.started_monotonic = self._sample_start = self._last_advance = now
            self._sample_position = info.start_position

    def advanced(self, position: int) -> None:
        with self._lock:
            self._moved(position)

    def checkpoint_started(self, position: int) -> None:
        with self._lock:
            self._moved(position)
            self.state = "checkpointing"

    def checkpoint_finished(self, stats: CheckpointStats) -> None:
        with self._lock:
            self.checkpoints += 1
            self.checkpoint_seconds += stats.seconds
            self.last_checkpoint, self.state = stats, "running"
            self._last_checkpoint_monotonic = self._clock()

    def checkpoint_failed(self, message: str) -> None:
        """A checkpoint write failed; the run says so with a warning ``message`` of its own."""
        with self._lock:
            self.state, self.last_error = "running", message
            self.failed_checkpoints += 1

    def message(self, level: str, text: str) -> None:
        """Banners ('info') and problems ('warning'), kept for the views (the last few); a 'transient'
        message is shown until the run ends, then dropped."""
        with self._lock:
            if level == "transient":
                self.notice = text
            else:
                self._add_message(level, text)

    def run_ended(self, outcome: str, detail: str = "") -> None:
        with self._lock:
            self.state, self.detail, self.notice = outcome, detail, ""
            self.ended_monotonic = self._clock()

    def _moved(self, position: int) -> None:
        now = self._clock()
        self.position, self._last_advance = position, now
        dt = now - self._sample_start
        if dt >= RATE_SAMPLE_SECONDS:
            sample = (position - self._sample_position) / dt
            self.rate = sample if self.rate is None else self.rate + RATE_SMOOTHING * (sample - self.rate)
            self._sample_start, self._sample_position = now, position

    def _add_message(self, level: str, text: str) -> None:
        self.messages.append((level, text))
        del self.messages[:-KEEP_MESSAGES]

    # -- derived ----------------------------------------------------------------------------
    def snapshot(self) -> RunSnapshot:
        """A consistent, immutable view of the model now (safe from any thread)."""
        with self._lock:
            now = self._clock() if self.ended_monotonic is None else self.ended_monotonic
            elapsed = max(now - self.started_monotonic, 0.0)
            total = self.info.total if self.info else None
            start = self.info.start_position if self.info else 0
            if self._last_checkpoint_monotonic is not None:
                since: float | None = max(now - self._last_checkpoint_monotonic, 0.0)
            else:
                since = elapsed if self.info and not self.info.replayed else None
            eta = None
            if total is not None and self.rate and self.state not in OUTCOMES:
                remaining = max(total - self.position, 0)
                # count down through a slow iteration, but never below the iterations still to come
                eta = max(
                    remaining / self.rate - (now - self._last_advance), max(remaining - 1, 0) / self.rate
                )
            return RunSnapshot(
                state=self.state,
                position=self.position,
                total=total,
                start_position=start,
                elapsed=elapsed,
                rate=self.rate,
                eta=eta,
                checkpoints=self.checkpoints,
                checkpoint_seconds=self.checkpoint_seconds,
                overhead=self.checkpoint_seconds / elapsed if elapsed > 0 else 0.0,
                last_checkpoint=self.last_checkpoint,
                since_checkpoint=since,
                failed_checkpoints=self.failed_checkpoints,
                info=self.info,
                detail=self.detail,
                messages=tuple(self.messages),
                now_wall=self._wall(),
                notice=self.notice,
            )

    @property
    def elapsed(self) -> float:
        return self.snapshot().elapsed

    @property
    def overhead(self) -> float:
        """Share of the loop's wall time spent blocked by checkpoints."""
        return self.snapshot().overhead

    def summary(self) -> str:
        """The one-line final summary."""
        return summary_line(self.snapshot())

    def line(self) -> str:
        """The compact progress line while running, the summary once ended."""
        snap = self.snapshot()
        return summary_line(snap) if snap.ended else progress_line(snap)
