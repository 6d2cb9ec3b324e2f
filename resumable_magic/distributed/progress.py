"""The poller of a sharded map (or sweep): :class:`MapProgress` reads the state of the map's runs
through their stores and feeds one progress view for the whole map.

The client that waits on the map's Dask futures polls about twice a second: for each run not yet
done, its lease (:meth:`RunStore.owner`: who executes it, its heartbeat and the position it reached,
renewed 4 times a second) and its newest generation (:meth:`RunStore.glance`: the last checkpoint's
position and time, unverified, for display). Nothing here talks to Dask or to the workers, so the view
works for any cluster whose shared folder the client can read (and shows only what the client itself
learns, from the finished futures, when it cannot).

:class:`MapProgress` is a :class:`~resumable_magic.progress.model.MapSource`; :func:`make_view` gives
its view: an ipywidgets panel in a notebook (``progress/widget.py``, imported only then), a text line
elsewhere (``progress/textview.py``). The panel's ``text/plain`` is the model's line, the final
summary once the map ended.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from resumable_magic.progress.model import KEEP_MESSAGES, RATE_SAMPLE_SECONDS, RATE_SMOOTHING
from resumable_magic.progress.snapshots import MapSnapshot, RunProgress
from resumable_magic.progress.text import format_count, map_progress_line, map_summary_line
from resumable_magic.progress.textview import NullMapView, TextMapView, in_kernel
from resumable_magic.storage.paths import Where

__all__ = ["MapProgress", "make_view"]


class MapProgress:
    """The state of a map's runs, polled from their stores; events from the waiting client."""

    def __init__(
        self,
        key: str,
        directory: Where,
        runs: Sequence[tuple[str, str, int | None]],
        what: str = "shard",
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        from resumable_magic.store.runstore import RunStore

        self.key, self.what = key, what
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._stores = {name: RunStore(directory, run_key) for name, run_key, _ in runs}
        self.runs = {name: RunProgress(name, self._stores[name].path, size) for name, _, size in runs}
        self.state = "running"
        self.started = clock()
        self.ended: float | None = None
        self.replayed = self.resumed = self.redone = 0
        self.messages: list[tuple[str, str]] = []
        self.rate: float | None = None
        self._sample: tuple[float, int] | None = None

    def now(self) -> float:
        return self._clock()

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
        """A run's task returned ``report`` (see ``distributed.task._report``)."""
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

    # -- reading the stores ---------------------------------------------------------------------------
    def _read(self, run: RunProgress) -> RunProgress:
        from resumable_magic.lease.lease import owner_state

        store = self._stores[run.name]
        try:
            glance = store.glance()  # unverified: for display only, nothing in it is unpickled
        except OSError:  # the folder cannot be listed (yet): no checkpoint seen
            glance = None
        newest = glance.generation if glance is not None else None
        position = glance.position if glance is not None else None
        seen = replace(
            run,
            checkpointed=position,
            checkpoint_wall=glance.created if glance is not None else None,
            total=glance.total if glance is not None and glance.total is not None else run.total,
            generation=newest,
        )
        if glance is not None and glance.done and glance.final:
            return replace(seen, state="done", position=position or 0)
        lease = store.owner()
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
        return map_summary_line(snap) if snap.state != "running" else map_progress_line(snap)


def make_view(model: MapProgress, progress: bool) -> NullMapView:
    """The widget under a Jupyter kernel, the text line elsewhere, nothing when ``progress`` is false."""
    if not progress:
        return NullMapView()
    if in_kernel():
        with contextlib.suppress(ImportError):  # no ipywidgets: the text line
            from resumable_magic.progress.widget import WidgetMapView

            return WidgetMapView(model)
    return TextMapView(model)
