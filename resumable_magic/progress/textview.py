"""The text views: a run's progress line, and a sharded map's, printed on a stream (a terminal, a
pipe, a notebook cell's output), and the final summary line.

On a terminal a line is redrawn in place (``\\r``); in captured output a full line is written
sparingly, after ``first_line`` seconds, then at doubling intervals. :class:`TextProgress` is a
:class:`~resumable_magic.progress.model.ProgressModel` that prints itself; :class:`TextMapView` prints
a :class:`~resumable_magic.progress.model.MapSource`. :func:`in_kernel` says whether a widget can show
instead; it looks at ``sys.modules`` and never imports IPython.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from resumable_magic.progress.model import ProgressModel
from resumable_magic.progress.snapshots import CheckpointStats, MapSource, StartInfo
from resumable_magic.progress.text import progress_line

__all__ = ["ORANGE", "NullMapView", "TextMapView", "TextProgress", "in_kernel"]

#: An interrupted run's summary on a terminal or in a notebook: orange (ANSI 256-colour 208).
ORANGE = "\x1b[38;5;208m{}\x1b[0m"


def in_kernel() -> bool:
    """True under a Jupyter kernel, where a widget can show (IPython is not imported to find out)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class TextProgress(ProgressModel):
    """Text view: a progress line and the final summary line.

    On a terminal the line is redrawn in place (``\\r``) at most ``refresh`` times a second. In
    captured output (a pipe, a notebook executed headless) a full line is written sparingly: after
    ``first_line`` seconds, then at doubling intervals up to ``max_interval``. ``quiet`` shows only
    warnings and the final summary line. Warnings go to stderr.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        quiet: bool = False,
        *,
        refresh: float = 0.5,
        first_line: float = 10.0,
        max_interval: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        err_stream: TextIO | None = None,
    ) -> None:
        super().__init__(clock=clock, wall=wall)
        self._stream, self._err = stream, err_stream
        self._quiet = quiet
        self._refresh, self._interval, self._max_interval = refresh, first_line, max_interval
        self._next_draw = self.started_monotonic
        self._drawn = 0  # width of the line on the terminal (0: none drawn)
        self._tty: bool | None = None

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    @property
    def err_stream(self) -> TextIO:
        return self._err or sys.stderr

    def _is_tty(self) -> bool:
        if self._tty is None:
            try:
                self._tty = bool(self.stream.isatty())
            except (AttributeError, ValueError):
                self._tty = False
        return self._tty

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def _maybe_draw(self, force: bool = False) -> None:
        if self._quiet:
            return
        now = self._clock()
        if not force and now < self._next_draw:
            return
        line = progress_line(self.snapshot())
        if self._is_tty():
            self.stream.write("\r" + line + " " * max(self._drawn - len(line), 0))
            self._drawn = len(line)
            self._next_draw = now + self._refresh
        else:
            self.stream.write(line + "\n")
            self._next_draw = now + self._interval
            self._interval = min(self._interval * 2, self._max_interval)
        self.stream.flush()

    def run_started(self, info: StartInfo) -> None:
        super().run_started(info)
        if self._is_tty():
            self._next_draw = self.started_monotonic  # first draw at once
        else:
            self._next_draw = self.started_monotonic + self._interval
            self._interval = min(self._interval * 2, self._max_interval)

    def advanced(self, position: int) -> None:
        super().advanced(position)
        if self._clock() >= self._next_draw:
            self._maybe_draw()

    def checkpoint_finished(self, stats: CheckpointStats) -> None:
        super().checkpoint_finished(stats)
        self._maybe_draw()

    def message(self, level: str, text: str) -> None:
        super().message(level, text)
        if level == "info" and self._quiet:
            return
        if level == "transient":  # in the progress line (a terminal's is redrawn); the summary replaces it
            if self._is_tty():
                self._maybe_draw(force=True)
            return
        self._clear()
        if level == "info":
            print(text, file=self.stream, flush=True)
        else:
            self.stream.flush()
            print(f"resumable: {text}", file=self.err_stream, flush=True)

    def run_ended(self, outcome: str, detail: str = "") -> None:
        super().run_ended(outcome, detail)
        self._clear()
        summary = self.summary()
        if outcome == "interrupted" and (self._is_tty() or in_kernel()):
            summary = ORANGE.format(summary)  # a stop the user asked for: a warning, not an error
        print(summary, file=self.stream, flush=True)


# -- a sharded map or sweep ----------------------------------------------------------------------


class NullMapView:
    """A map's view that shows nothing (``progress=False``); the others extend it."""

    def start(self) -> None:
        pass

    def update(self) -> None:
        pass

    def close(self) -> None:
        pass


class TextMapView(NullMapView):
    """The map's line on a stream: redrawn in place on a terminal; in captured output, a line after
    ``first_line`` seconds, then at doubling intervals; messages as they come; the summary at the end."""

    def __init__(self, model: MapSource, stream: TextIO | None = None, *, first_line: float = 10.0) -> None:
        self.model, self._stream = model, stream
        self._interval, self._next = first_line, model.started + first_line
        self._drawn = 0
        self._said = 0
        try:
            self._tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self._tty = False

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def _messages(self) -> None:
        fresh = self.model.messages[self._said :]
        if fresh:
            self._clear()
            for _, text in fresh:
                print(text, file=self.stream, flush=True)
            self._said += len(fresh)

    def update(self) -> None:
        self._messages()
        now = self.model.now()
        if now < self._next:
            return
        line = self.model.line()
        if self._tty:
            self.stream.write("\r" + line + " " * max(self._drawn - len(line), 0))
            self._drawn = len(line)
            self._next = now + 0.5
        else:
            self.stream.write(line + "\n")
            self._interval = min(self._interval * 2, 600.0)
            self._next = now + self._interval
        self.stream.flush()

    def close(self) -> None:
        self._messages()
        self._clear()
        print(self.model.line(), file=self.stream, flush=True)
