"""The widget views of the progress models, a run's and a sharded map's: with ``panel.py`` (the run's
panel, an anywidget with its own view), the only modules that import ipywidgets (and, for
``display``, IPython).

:class:`WidgetProgress` is a :class:`~resumable_magic.progress.model.ProgressModel` that displays a
:class:`~resumable_magic.progress.panel.RunPanel` under the cell when the run starts: state (word and
colour), a progress bar (or a count when the iterable has no length), rate, ETA, the time since the
last checkpoint (ticking every second from a timer thread, even while one iteration takes minutes),
checkpoints written, the last one's size, write time and wall-clock time, the checkpoint overhead,
and where a resumed run picked up. The panel's view (``panel.js``) turns red when the kernel dies
and amber when the kernel's heartbeat stops (``docs/widget.md``).

The loop's thread only updates the model's counters (cheap); a daemon timer thread renders the
model into the panel a few times a second at most (only changed values are sent) and ticks its
heartbeat. The panel's ``text/plain`` representation says when the run started and that the summary
replaces it; once the run ended it is the summary line, which is what frontends without a widget
manager (nbconvert, nbclient, nbval) store and show. Each fact is stated once in the panel and once
in the cell's stdout (a line per banner; an interrupted run's summary as an orange line), so that a
saved notebook keeps them as text.

:class:`WidgetMapView` is the panel of a sharded map or sweep (ipywidgets): state, a bar of items
(or runs) done, and a row per running shard, redrawn when the map's poller (a
:class:`~resumable_magic.progress.model.MapSource`) says so.

The magic calls :func:`make_widget_progress`.
"""

from __future__ import annotations

import contextlib
import html
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from resumable_magic.progress.model import ProgressModel
from resumable_magic.progress.panel import RunPanel, status_of
from resumable_magic.progress.snapshots import CheckpointStats, MapSnapshot, MapSource, RunSnapshot, StartInfo
from resumable_magic.progress.text import (
    format_clock,
    format_count,
    format_duration,
    format_rate,
    format_size,
    map_items_text,
    map_summary_line,
    resume_text,
    run_checkpoint_age,
    started_line,
    summary_line,
)
from resumable_magic.progress.textview import ORANGE, NullMapView, TextProgress, in_kernel

__all__ = ["STATE_COLOURS", "WidgetMapView", "WidgetProgress", "make_widget_progress"]

#: Seconds between two renders by the timer thread: at most this many updates a second per widget.
TICK_SECONDS = 0.5
#: Seconds between two heartbeats: the panel says the kernel is silent after 5 s without one.
HEARTBEAT_SECONDS = 1.0

STATE_COLOURS = {
    "starting": "#757575",
    "running": "#1976d2",
    "checkpointing": "#f9a825",
    "interrupted": "#ef6c00",
    "failed": "#d32f2f",
    "finished": "#2e7d32",
    "replayed": "#00897b",
}
_BAR_STYLES = {
    "checkpointing": "warning",
    "interrupted": "warning",
    "failed": "danger",
    "finished": "success",
    "replayed": "info",
}
_BANNERS = ("Resumed ", "Replayed ")  # run.py's info banners, shown by the widget as its resume row
SHOWN_RUNNING = 8  # rows of running shards in a map's panel; the rest are counted


def make_widget_progress(quiet: bool = False) -> ProgressModel:
    """The progress view for a ``%%resumable`` run in this process.

    Under a Jupyter kernel: the widget (:class:`WidgetProgress`). ``quiet``, or no kernel (terminal
    IPython, a plain script): the text view, which with ``quiet`` prints only warnings and the final
    summary line.
    """
    if quiet or not in_kernel():
        return TextProgress(quiet=quiet)
    return WidgetProgress()


class _Panel(widgets.VBox):
    """The displayed box of a map; its ``text/plain`` is the model's line, never ``VBox(...)``."""

    def __init__(self, line: Callable[[], str], children: list[widgets.Widget], **kwargs: Any) -> None:
        super().__init__(children, **kwargs)
        self._line = line

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is not None:
            bundle["text/plain"] = self._line()
        return bundle

    def __repr__(self) -> str:
        return self._line()


class WidgetProgress(ProgressModel):
    """The widget view of a run; see the module docstring."""

    def __init__(
        self,
        *,
        tick: float = TICK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        display: Callable[..., Any] | None = None,
        err_stream: Any = None,
    ) -> None:
        super().__init__(clock=clock, wall=wall)
        self._tick = tick
        self._display = display
        self._err = err_stream
        self._render_lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._handle: Any = None
        self._beaten = float("-inf")  # monotonic time of the last heartbeat
        self.panel: RunPanel | None = None
        self.renders = 0

    # -- events ---------------------------------------------------------------------------------
    def run_started(self, info: StartInfo) -> None:
        super().run_started(info)
        self.panel = RunPanel(self.text_plain, key=info.key, directory=info.directory)
        self._render()
        show = self._display if self._display is not None else _ipython_display()
        self._handle = show(self.panel, display_id=True)
        if not info.replayed:
            self._timer = threading.Thread(target=self._run_timer, name="resumable-progress", daemon=True)
            self._timer.start()

    def message(self, level: str, text: str) -> None:
        super().message(level, text)
        # Also in the cell's stream output: every frontend shows it, and it stays in the saved
        # notebook as text (the resume banner says what was restored and what is redone). A
        # transient message is the panel's alone: it is replaced when the run ends.
        if level == "info":
            print(text, file=sys.stdout, flush=True)
        elif level != "transient":  # (drawn by the timer thread: this may run in a signal handler)
            print(f"resumable: {text}", file=self._err or sys.stderr, flush=True)

    def run_ended(self, outcome: str, detail: str = "") -> None:
        super().run_ended(outcome, detail)
        self._stop.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join(timeout=5)
        self._render()
        if outcome == "interrupted":  # a stop the user asked for: a warning, not an error box
            print(ORANGE.format(self.summary()), file=sys.stdout, flush=True)
        if self._handle is not None:
            # Re-send the display so that its text/plain is the final summary (nbclient, nbval).
            with contextlib.suppress(Exception):  # the kernel may be going down; the widget shows the state
                self._handle.update(self.panel)

    def text_plain(self) -> str:
        """The panel's ``text/plain``: when it started, until the run ends; then the summary."""
        snap = self.snapshot()
        return summary_line(snap) if snap.ended else started_line(snap)

    # -- rendering -------------------------------------------------------------------------------
    def _run_timer(self) -> None:
        while not self._stop.wait(self._tick):
            try:
                self._render()
            except Exception as exc:  # never let a display problem reach the loop: stop drawing
                print(f"resumable: progress display stopped: {exc}", file=self._err or sys.stderr, flush=True)
                return

    def _render(self) -> None:
        panel = self.panel
        if panel is None:
            return
        with self._render_lock:
            snap = self.snapshot()
            last = snap.last_checkpoint
            if last is not None:
                known: dict[str, Any] | None = {"iteration": last.position, "time": last.wall_time}
            elif snap.resumed is not None:
                known = {"iteration": snap.resumed.from_position, "time": snap.resumed.checkpoint_wall_time}
            else:
                known = None
            view = {
                "state": snap.state,
                "word": snap.state,
                "colour": STATE_COLOURS.get(snap.state, "#757575"),
                "position": snap.position,
                "total": snap.total,
                "count": _count_text(snap),
                "details_html": _details_html(snap),
                "last_checkpoint": known,
            }
            now = self._clock()
            with panel.hold_sync():  # one message for all that changed
                panel.view = view
                panel.status = status_of(snap.state)
                if not snap.ended and now - self._beaten >= HEARTBEAT_SECONDS:
                    panel.heartbeat, self._beaten = self._wall(), now
            self.renders += 1


def _span(cls: str, text: str, title: str = "") -> str:
    attr = f' title="{html.escape(title)}"' if title else ""
    return f'<span class="{cls}"{attr}>{html.escape(text)}</span>'


def _count_text(snap: RunSnapshot) -> str:
    if snap.total is not None:
        pct = f"{snap.fraction:.0%}" if snap.fraction is not None else ""
        return f"{pct} · {format_count(snap.position)} / {format_count(snap.total)}"
    return f"{format_count(snap.position)} iterations"


def _details_html(snap: RunSnapshot) -> str:
    rows = []
    if snap.ended:  # the summary says the time, the checkpoints and the overhead: not said again below
        rows.append(f"<b>{_span('rm-summary', summary_line(snap))}</b>")
        if snap.state != "replayed":
            rows.append(
                "mean rate "
                + _span("rm-rate", format_rate(snap.done / snap.elapsed if snap.elapsed else None))
            )
    elif snap.info is not None and not snap.info.replayed:
        speed = [_span("rm-rate", format_rate(snap.rate))]
        if snap.eta is not None:
            speed.append("ETA " + _span("rm-eta", format_duration(snap.eta, whole=True)))
        speed.append("elapsed " + _span("rm-elapsed", format_duration(snap.elapsed, whole=True)))
        if snap.start_position:
            speed.append(_span("rm-done", f"{format_count(snap.done)} this run"))
        rows.append(" · ".join(speed))
        rows.append(_checkpoint_html(snap))
    resumed = "" if snap.state == "replayed" else resume_text(snap)  # a replay's summary says it
    if resumed:
        rows.append(_span("rm-resume", resumed))
    if snap.notice:
        rows.append(f'<span class="rm-notice" style="color:#ef6c00">{html.escape(snap.notice)}</span>')
    for level, text in snap.messages:
        if level == "info" and text.startswith(_BANNERS):
            continue  # the run's resume/replay banner: the resume row or the summary says it in short
        colour = "#ef6c00" if level != "info" else "inherit"
        rows.append(
            f'<span class="rm-message rm-{html.escape(level)}" style="color:{colour}">{html.escape(text)}</span>'
        )
    body = "<br>".join(rows)
    style = "color:var(--jp-ui-font-color1, #212121);line-height:1.5;font-size:var(--jp-ui-font-size1, 13px)"
    return f'<div class="rm-details-body" style="{style}">{body}</div>'


def _checkpoint_html(snap: RunSnapshot) -> str:
    """The checkpoint row while the run goes on (once it ended, the summary says it)."""
    last: CheckpointStats | None = snap.last_checkpoint
    overhead = "overhead " + _span("rm-overhead", f"{snap.overhead:.1%}")
    if last is None:
        parts = []
        if snap.resumed is not None:
            restored = format_clock(snap.resumed.checkpoint_wall_time, snap.now_wall)
            parts.append("restored checkpoint of " + _span("rm-last-clock", restored))
        if snap.since_checkpoint is not None:
            since = _span("rm-since", format_duration(snap.since_checkpoint, whole=True))
            parts.append(f"no new checkpoint yet, started {since} ago")
        elif not parts:
            parts.append("no checkpoint")
        return " · ".join([*parts, overhead])
    clock = _span(
        "rm-last-clock", format_clock(last.wall_time, snap.now_wall), "wall-clock time of the last checkpoint"
    )
    since = _span("rm-since", format_duration(snap.since_checkpoint or 0.0, whole=True))
    head = f"last checkpoint {since} ago at {clock} · " + _span(
        "rm-unsaved", f"{format_count(snap.unsaved)} iterations unsaved"
    )
    parts = [
        head,
        _span("rm-checkpoints", f"{snap.checkpoints} written"),
        "last "
        + _span("rm-size", format_size(last.nbytes))
        + " in "
        + _span("rm-write", format_duration(last.seconds)),
        overhead,
    ]
    if snap.failed_checkpoints:
        parts.append(_span("rm-failed", f"{snap.failed_checkpoints} failed"))
    return " · ".join(parts)


# -- a sharded map or sweep ----------------------------------------------------------------------


class WidgetMapView(NullMapView):
    """An ipywidgets panel: state, a bar of items (or runs) done, and a row per running shard."""

    def __init__(self, model: MapSource, display: Callable[..., Any] | None = None) -> None:
        self.model = model
        self._display = display
        self.state_label = widgets.HTML()
        self.bar = widgets.IntProgress(min=0, max=1, value=0)
        self.bar.layout.width = "320px"
        self.count_label = widgets.HTML()
        self.details = widgets.HTML()
        header = widgets.HBox([self.state_label, self.bar, self.count_label])
        header.layout.align_items = "center"
        self.panel = _Panel(model.line, [header, self.details])
        self.panel.add_class("resumable-map-progress")
        self._handle: Any = None

    def start(self) -> None:
        self.update()
        show = self._display if self._display is not None else _ipython_display()
        self._handle = show(self.panel, display_id=True)

    def update(self) -> None:
        snap = self.model.snapshot()
        colour = STATE_COLOURS.get(snap.state, "#757575")
        self.state_label.value = (
            f'<span style="background:{colour};color:#fff;padding:1px 8px;border-radius:3px;'
            f'font-weight:600">{html.escape(snap.state)}</span>'
        )
        n = len(snap.runs)
        if snap.items_total is not None:
            self.bar.max, self.bar.value = (
                max(snap.items_total, 1),
                min(snap.items_done, max(snap.items_total, 1)),
            )
        else:
            self.bar.max, self.bar.value = max(n, 1), snap.done
        self.bar.bar_style = _BAR_STYLES.get(snap.state, "")
        count = f"{map_items_text(snap)} · {snap.done}/{n} {snap.noun(n)} done"
        self.count_label.value = f'<span style="margin-left:8px">{html.escape(count)}</span>'
        self.details.value = _map_details_html(snap)

    def close(self) -> None:
        self.update()
        if self._handle is not None:
            # Re-sent so that text/plain is the summary (nbclient, nbval).
            with contextlib.suppress(Exception):
                self._handle.update(self.panel)


def _map_details_html(snap: MapSnapshot) -> str:
    rows = []
    if snap.state != "running":
        rows.append(f"<b>{html.escape(map_summary_line(snap))}</b>")
    else:
        speed = [format_rate(snap.rate)]
        if snap.eta is not None:
            speed.append(f"ETA {format_duration(snap.eta, whole=True)}")
        speed.append(f"elapsed {format_duration(snap.elapsed, whole=True)}")
        waiting = sum(r.state == "waiting" for r in snap.runs)
        speed.append(f"{len(snap.running)} running, {waiting} waiting")
        rows.append(html.escape(" · ".join(speed)))
        for run in snap.running[:SHOWN_RUNNING]:
            where = f"{run.items:,}" if run.items is not None else "?"
            text = f"{run.name}: {run.position:,}/{where} · {run_checkpoint_age(run, snap.now_wall)}"
            if run.pid is not None:
                text += f" · pid {run.pid} on {run.host}"
            rows.append(f'<span class="rm-map-run">{html.escape(text)}</span>')
        if len(snap.running) > SHOWN_RUNNING:
            rows.append(html.escape(f"... and {len(snap.running) - SHOWN_RUNNING} more running"))
    for level, text in snap.messages:
        colour = "#ef6c00" if level != "info" else "inherit"
        rows.append(f'<span style="color:{colour}">{html.escape(text)}</span>')
    style = "color:var(--jp-ui-font-color1, #212121);line-height:1.5;font-size:var(--jp-ui-font-size1, 13px)"
    return f'<div style="{style}">' + "<br>".join(rows) + "</div>"


def _ipython_display() -> Callable[..., Any]:
    """IPython's ``display``, imported only when a widget is shown in a kernel."""
    from IPython.display import display

    return display
