"""What wakes a running loop's boundary check: a timer thread, and SIGINT/SIGTERM.

The loop tests one flag per iteration (``Wakeup.flag[0]``); everything else happens only when the
flag is up. The timer thread raises it a few times a second (progress, time-based checkpoints);
the first SIGINT or SIGTERM raises it and asks the loop to stop at the next boundary, after a
checkpoint. A second SIGINT stops at once. SIGTERM never escalates (in Jupyter's shutdown
sequence it follows the SIGINT), and once the loop has stopped, :meth:`Wakeup.stop` re-delivers
it so the process terminates as it was asked to.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

TICK_SECONDS = 0.25


class Wakeup:
    """The flag, the timer thread and the signal handlers of one running loop."""

    def __init__(self, on_interrupt: Callable[[], None] = lambda: None) -> None:
        self.flag = [False]  # a list: the loop keeps a reference and tests flag[0]
        self.stop_signal: int | None = None  # set by the first SIGINT/SIGTERM
        self._on_interrupt = on_interrupt
        self._sigterm_pending = False
        self._saved_handlers: dict[int, Any] = {}
        self._ticker: threading.Thread | None = None
        self._ticker_stop = threading.Event()

    def start(self) -> None:
        """Start the timer thread and take over SIGINT/SIGTERM (from the main thread only)."""
        if self._ticker is None:
            self._ticker_stop.clear()
            self._ticker = threading.Thread(target=self._tick_forever, name="resumable-ticker", daemon=True)
            self._ticker.start()
        if threading.current_thread() is threading.main_thread():
            # Elsewhere signal handlers cannot be set; Ctrl-C then stops at once, as in plain Python.
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, OSError):
                    self._saved_handlers[signum] = signal.signal(signum, self._on_signal)

    def stop_timer(self) -> None:
        if self._ticker is not None:
            self._ticker_stop.set()
            self._ticker.join()
            self._ticker = None

    def stop(self) -> None:
        """Stop the timer, give the signals back, and re-deliver a SIGTERM that arrived meanwhile."""
        self.stop_timer()
        for signum, handler in self._saved_handlers.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._saved_handlers.clear()
        if self._sigterm_pending:
            self._sigterm_pending = False
            os.kill(os.getpid(), signal.SIGTERM)

    def _tick_forever(self) -> None:
        while not self._ticker_stop.wait(TICK_SECONDS):
            self.flag[0] = True

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGTERM:
            self._sigterm_pending = True
            if self.stop_signal is None:
                self.stop_signal = signum
                self.flag[0] = True
            return
        if self.stop_signal is not None:
            raise KeyboardInterrupt("second interrupt: stopped at once; the last checkpoint stays")
        self.stop_signal = signum
        self.flag[0] = True
        self._on_interrupt()
