"""One progress view for a whole sharded map (or sweep), fed from the runs' folders.

The client that waits on the map's Dask futures polls the map's folder about twice a second: for
each run not yet done, its lease (``owner.json``: who executes it, its heartbeat and the position it
reached, renewed 4 times a second) and its newest manifest (the last checkpoint: position, time).
Nothing here talks to Dask or to the workers, so the view works for any cluster whose shared folder
the client can read (and shows only what the client itself learns, from the finished futures, when
it cannot).

:class:`MapProgress` is the model; :func:`make_view` gives its view: an ipywidgets panel in a
notebook (imported lazily), a text line elsewhere. The panel's ``text/plain`` is the model's line,
the final summary once the map ended.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from resumable_magic.progress.text import format_count, format_duration, format_rate

__all__ = ["MapProgress", "MapSnapshot", "RunProgress", "make_view"]

RATE_SAMPLE_SECONDS = 0.5
RATE_SMOOTHING = 0.3
KEEP_MESSAGES = 5
SHOWN_RUNNING = 8  # rows of running shards in the widget; the rest are counted
_MANIFEST_MAX = 4 << 20


@dataclass(frozen=True)
class RunProgress:
    """One shard or sweep member as last seen."""

    name: str
    path: Any  # a local Path or a storage.RemotePath
    size: int | None  # items (None: a sweep member's own loop, total from its checkpoints)
    state: str = "waiting"  # waiting, running, done
    position: int = 0  # reached: the lease's while running, else the last checkpoint's
    checkpointed: int | None = None  # position of the newest checkpoint
    checkpoint_wall: float | None = None  # when it was written
    total: int | None = None  # from the newest checkpoint
    pid: int | None = None
    host: str | None = None
    generation: int | None = None

    @property
    def items(self) -> int | None:
        return self.size if self.size is not None else self.total

    def done_items(self) -> int:
        if self.state == "done":
            return self.items if self.items is not None else self.position
        return min(self.position, self.items) if self.items is not None else self.position


@dataclass(frozen=True)
class MapSnapshot:
    """Everything a view shows, at one instant."""

    key: str
    what: str  # "shard" or "member"
    state: str  # running, finished, failed, interrupted
    runs: tuple[RunProgress, ...]
    items_total: int | None
    items_done: int
    rate: float | None
    eta: float | None
    elapsed: float
    replayed: int
    resumed: int
    redone: int  # items redone by resumed runs (as far as known)
    messages: tuple[tuple[str, str], ...]
    now_wall: float

    @property
    def done(self) -> int:
        return sum(r.state == "done" for r in self.runs)

    @property
    def running(self) -> tuple[RunProgress, ...]:
        return tuple(r for r in self.runs if r.state == "running")

    def noun(self, n: int) -> str:
        word = "shard" if self.what == "shard" else "sweep member"
        return word if n == 1 else word + "s"


def _names(path: Any) -> list[str]:
    """The names in a run's folder, local or on object storage; [] when it cannot be listed."""
    if isinstance(path, Path):
        with contextlib.suppress(OSError), os.scandir(path) as entries:
            return [entry.name for entry in entries]
        return []
    from resumable_magic.storage.base import open_backend as backend_for

    with contextlib.suppress(OSError):
        return backend_for(path).list("")
    return []


class MapProgress:
    """The state of a map's runs, polled from their folders; events from the waiting client."""

    def __init__(
        self,
        key: str,
        directory: Path,
        runs: Sequence[tuple[str, str, int | None]],
        what: str = "shard",
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        from resumable_magic.storage.base import location
        from resumable_magic.store.runstore import key_to_relpath

        self.key, self.what = key, what
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self.runs = {
            name: RunProgress(name, location(directory) / key_to_relpath(run_key), size)
            for name, run_key, size in runs
        }
        self.state = "running"
        self.started = clock()
        self.ended: float | None = None
        self.replayed = self.resumed = self.redone = 0
        self.messages: list[tuple[str, str]] = []
        self.rate: float | None = None
        self._sample: tuple[float, int] | None = None
        self._manifests: dict[str, tuple[int, dict[str, Any]]] = {}

    # -- from the client ----------------------------------------------------------------------------
    def poll(self) -> None:
        """Read the lease and newest checkpoint of every run not yet done."""
        for name, run in list(self.runs.items()):
            if run.state != "done":
                seen = self._read(run)
                with self._lock:
                    if self.runs[name].state != "done":
                        self.runs[name] = seen
        with self._lock:
            self._sample_rate()

    def run_done(self, name: str, report: dict[str, Any]) -> None:
        """A run's task returned ``report`` (see ``shards._report``)."""
        with self._lock:
            run = self.runs[name]
            self.runs[name] = replace(
                run, state="done", position=run.items or run.position, pid=report.get("pid")
            )
            if report.get("replayed"):
                self.replayed += 1
            resumed = report.get("resumed")
            if resumed:
                self.resumed += 1
                redone = resumed.get("redone") or 0
                self.redone += redone
                after = resumed.get("after") or "crashed"
                self._message(
                    "info",
                    f"{name} resumed from its checkpoint at item {format_count(int(resumed.get('from') or 0))} "
                    f"(the attempt before {after}"
                    + (
                        f"; {format_count(redone)} item{'' if redone == 1 else 's'} redone)"
                        if redone
                        else ")"
                    ),
                )

    def message(self, level: str, text: str) -> None:
        with self._lock:
            self._message(level, text)

    def end(self, outcome: str) -> None:
        with self._lock:
            self.state, self.ended = outcome, self._clock()

    def _message(self, level: str, text: str) -> None:
        self.messages.append((level, text))  # at most one per run: all kept, the views show the last few

    # -- reading the folder ---------------------------------------------------------------------------
    def _read(self, run: RunProgress) -> RunProgress:
        from resumable_magic.lease.lease import owner_state, read_lease
        from resumable_magic.store.runstore import MANIFEST_RE

        newest, done = None, False
        for name in _names(run.path):
            match = MANIFEST_RE.match(name)
            if match and (newest is None or int(match.group(1)) > newest):
                newest = int(match.group(1))
            done = done or name == "DONE"
        manifest = self._manifest(run, newest)
        position = manifest.get("position") if type(manifest.get("position")) is int else None
        created = manifest.get("created") if type(manifest.get("created")) in (int, float) else None
        total = manifest.get("total") if type(manifest.get("total")) is int else run.total
        seen = replace(run, checkpointed=position, checkpoint_wall=created, total=total, generation=newest)
        if done and manifest.get("final"):
            return replace(seen, state="done", position=position or 0)
        lease = read_lease(run.path)
        live = False
        if lease is not None:
            with contextlib.suppress(Exception):
                live = owner_state(lease) == "live"
        if live and lease is not None:
            reached = lease.get("position")
            return replace(
                seen,
                state="running",
                position=reached if type(reached) is int else position or 0,
                pid=lease.get("pid") if type(lease.get("pid")) is int else None,
                host=str(lease.get("host")),
            )
        return replace(seen, state="waiting", position=position or 0, pid=None, host=None)

    def _manifest(self, run: RunProgress, generation: int | None) -> dict[str, Any]:
        """The newest manifest's fields, for display only (nothing in it is unpickled or trusted)."""
        if generation is None:
            return {}
        cached = self._manifests.get(run.name)
        if cached is not None and cached[0] == generation:
            return cached[1]
        fields: dict[str, Any] = {}
        path = run.path / f"manifest.{generation:08d}.json"
        if isinstance(path, Path):
            with contextlib.suppress(OSError, ValueError, RecursionError):
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
                with os.fdopen(fd, "rb") as f:
                    if stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                        record = json.loads(f.read(_MANIFEST_MAX))
                        if isinstance(record, dict):
                            fields = {k: record.get(k) for k in ("position", "created", "total", "final")}
        else:  # on object storage
            from resumable_magic.storage.base import open_backend as backend_for

            raw = backend_for(run.path).read_plain(path.name)
            with contextlib.suppress(ValueError, RecursionError, UnicodeDecodeError):
                record = json.loads(raw[:_MANIFEST_MAX]) if raw else None
                if isinstance(record, dict):
                    fields = {k: record.get(k) for k in ("position", "created", "total", "final")}
        if fields:
            self._manifests[run.name] = (generation, fields)
        return fields

    def _sample_rate(self) -> None:
        now, done = self._clock(), sum(r.done_items() for r in self.runs.values())
        if self._sample is None:
            self._sample = (now, done)
            return
        then, before = self._sample
        if now - then >= RATE_SAMPLE_SECONDS:
            sample = max(done - before, 0) / (now - then)  # a resumed shard steps back: no negative rate
            self.rate = sample if self.rate is None else self.rate + RATE_SMOOTHING * (sample - self.rate)
            self._sample = (now, done)

    # -- derived --------------------------------------------------------------------------------------
    def snapshot(self) -> MapSnapshot:
        with self._lock:
            runs = tuple(self.runs.values())
            sizes = [r.items for r in runs]
            total = None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
            done = sum(r.done_items() for r in runs)
            end = self.ended if self.ended is not None else self._clock()
            eta = None
            if total is not None and self.rate and self.state == "running":
                eta = max(total - done, 0) / self.rate
            return MapSnapshot(
                key=self.key,
                what=self.what,
                state=self.state,
                runs=runs,
                items_total=total,
                items_done=done,
                rate=self.rate,
                eta=eta,
                elapsed=max(end - self.started, 0.0),
                replayed=self.replayed,
                resumed=self.resumed,
                redone=self.redone,
                messages=tuple(self.messages[-KEEP_MESSAGES:]),
                now_wall=self._wall(),
            )

    def line(self) -> str:
        snap = self.snapshot()
        return summary_line(snap) if snap.state != "running" else progress_line(snap)


# -- text ----------------------------------------------------------------------------------------------


def _items_text(snap: MapSnapshot) -> str:
    if snap.items_total is None:
        return f"{format_count(snap.items_done)} items"
    pct = snap.items_done / snap.items_total if snap.items_total else 1.0
    return f"{pct:.0%} {format_count(snap.items_done)}/{format_count(snap.items_total)} items"


def _since(run: RunProgress, now_wall: float) -> str:
    if run.checkpoint_wall is None:
        return "no checkpoint yet"
    return f"last checkpoint {format_duration(max(now_wall - run.checkpoint_wall, 0.0), whole=True)} ago"


def progress_line(snap: MapSnapshot) -> str:
    """``running 45% 90/200 items | 1/4 shards done, 2 running | 12.3 it/s | ETA 8 s | oldest checkpoint 3 s ago``."""
    running = snap.running
    parts = [
        f"running {_items_text(snap)}",
        f"{snap.done}/{len(snap.runs)} {snap.noun(len(snap.runs))} done, {len(running)} running",
        format_rate(snap.rate),
    ]
    if snap.eta is not None:
        parts.append(f"ETA {format_duration(snap.eta, whole=True)}")
    walls = [r.checkpoint_wall for r in running if r.checkpoint_wall is not None]
    if walls:
        parts.append(
            f"oldest checkpoint of a running {snap.noun(1)} "
            f"{format_duration(max(snap.now_wall - min(walls), 0.0), whole=True)} ago"
        )
    return " | ".join(parts)


def summary_line(snap: MapSnapshot) -> str:
    """``finished: 200 items in 4 shards in 3.2 s (1 replayed, 1 resumed from its checkpoint, 4 items redone)``."""
    n = len(snap.runs)
    if snap.state == "finished":
        what = (
            f"{format_count(snap.items_total)} items in "
            if snap.items_total is not None and snap.what == "shard"
            else ""
        )
        text = f"finished: {what}{n} {snap.noun(n)} in {format_duration(snap.elapsed)}"
    else:
        text = (
            f"{snap.state} after {format_duration(snap.elapsed)}: {snap.done}/{n} {snap.noun(n)} done, "
            f"{_items_text(snap)}; the checkpoints are kept: call again to resume"
        )
    notes = []
    if snap.replayed:
        notes.append(f"{snap.replayed} replayed")
    if snap.resumed:
        resumed = (
            f"{snap.resumed} resumed from {'its checkpoint' if snap.resumed == 1 else 'their checkpoints'}"
        )
        if snap.redone:
            resumed += f", {format_count(snap.redone)} item{'' if snap.redone == 1 else 's'} redone"
        notes.append(resumed)
    return text + (f" ({', '.join(notes)})" if notes else "")


class _NullView:
    def start(self) -> None:
        pass

    def update(self) -> None:
        pass

    def close(self) -> None:
        pass


class TextMapView(_NullView):
    """The map's line on a stream: redrawn in place on a terminal; in captured output, a line after
    ``first_line`` seconds, then at doubling intervals; messages as they come; the summary at the end."""

    def __init__(self, model: MapProgress, stream: TextIO | None = None, *, first_line: float = 10.0) -> None:
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
        now = self.model._clock()
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


# -- the widget ----------------------------------------------------------------------------------------


def _in_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def make_view(model: MapProgress, progress: bool) -> Any:
    """The widget under a Jupyter kernel, the text line elsewhere, nothing when ``progress`` is false."""
    if not progress:
        return _NullView()
    if _in_kernel():
        with contextlib.suppress(ImportError):
            return WidgetMapView(model)
    return TextMapView(model)


_COLOURS = {"running": "#1976d2", "finished": "#2e7d32", "failed": "#d32f2f", "interrupted": "#ef6c00"}


class WidgetMapView(_NullView):
    """An ipywidgets panel: state, a bar of items (or runs) done, and a row per running shard."""

    def __init__(self, model: MapProgress, display: Callable[..., Any] | None = None) -> None:
        import ipywidgets as widgets

        self.model = model
        self._display = display
        self.state_label = widgets.HTML()
        self.bar = widgets.IntProgress(min=0, max=1, value=0)
        self.bar.layout.width = "320px"
        self.count_label = widgets.HTML()
        self.details = widgets.HTML()
        header = widgets.HBox([self.state_label, self.bar, self.count_label])
        header.layout.align_items = "center"
        line = model.line

        class Panel(widgets.VBox):  # its text/plain is the model's line, never VBox(...)
            def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
                bundle = super()._repr_mimebundle_(**kwargs)
                if bundle is not None:
                    bundle["text/plain"] = line()
                return bundle

            def __repr__(self) -> str:
                return line()

        self.panel = Panel([header, self.details])
        self.panel.add_class("resumable-map-progress")
        self._handle: Any = None

    def start(self) -> None:
        self.update()
        display = self._display
        if display is None:
            from IPython.display import display
        self._handle = display(self.panel, display_id=True)

    def update(self) -> None:
        snap = self.model.snapshot()
        colour = _COLOURS.get(snap.state, "#757575")
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
        self.bar.bar_style = {"finished": "success", "failed": "danger", "interrupted": "warning"}.get(
            snap.state, ""
        )
        count = f"{_items_text(snap)} · {snap.done}/{n} {snap.noun(n)} done"
        self.count_label.value = f'<span style="margin-left:8px">{html.escape(count)}</span>'
        self.details.value = _details_html(snap)

    def close(self) -> None:
        self.update()
        if self._handle is not None:
            with contextlib.suppress(
                Exception
            ):  # re-sent so that text/plain is the summary (nbclient, nbval)
                self._handle.update(self.panel)


def _details_html(snap: MapSnapshot) -> str:
    rows = []
    if snap.state != "running":
        rows.append(f"<b>{html.escape(summary_line(snap))}</b>")
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
            text = f"{run.name}: {run.position:,}/{where} · {_since(run, snap.now_wall)}"
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
