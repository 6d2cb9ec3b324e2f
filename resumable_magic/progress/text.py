"""The words of progress: formatting of durations, sizes, rates and clock times, and the lines every
view shows, for one run and for a sharded map: the compact progress line and the final summary line.

Pure functions of a snapshot (:class:`~resumable_magic.progress.model.RunSnapshot`,
:class:`~resumable_magic.progress.model.MapSnapshot`); the text views (``textview.py``) print them,
the widgets use them as their ``text/plain`` representation. ``resumable_magic.progress.model``
re-exports the run's.
"""

from __future__ import annotations

import time

from resumable_magic.progress.snapshots import CheckpointStats, MapSnapshot, RunProgress, RunSnapshot

__all__ = [
    "checkpoint_text",
    "format_clock",
    "format_count",
    "format_duration",
    "format_rate",
    "format_size",
    "map_items_text",
    "map_progress_line",
    "map_summary_line",
    "progress_line",
    "resume_text",
    "run_checkpoint_age",
    "started_line",
    "summary_line",
]


def format_duration(seconds: float, whole: bool = False) -> str:
    """``0.35 s``, ``4.2 s``, ``42 s``, ``3 min 05 s``, ``2 h 04 min``, ``3 d 04 h``.

    ``whole``: whole seconds below a minute (``4 s``), for labels that tick every second.
    """
    seconds = max(seconds, 0.0)
    if seconds < 10 and not whole:
        return f"{seconds:.2f} s" if seconds < 1 else f"{seconds:.1f} s"
    if seconds < 59.5:
        return f"{int(seconds) if whole else round(seconds)} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def format_size(nbytes: float) -> str:
    """``512 B``, ``1.5 KiB``, ``2.0 GiB``, ``1.5 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def format_count(n: int) -> str:
    """``1,234,567``."""
    return f"{n:,}"


def format_rate(rate: float | None) -> str:
    """``1,234 it/s``, ``45.6 it/s``, ``3.21 it/s``; slower than one a second: ``2.0 s/it``, ``12.5 s/it``, ``3 min 05 s/it``."""
    if rate is None:
        return "- it/s"
    if rate <= 0:
        return "0 it/s"
    if rate >= 100:
        return f"{rate:,.0f} it/s"
    if rate >= 10:
        return f"{rate:.1f} it/s"
    if rate >= 1:
        return f"{rate:.2f} it/s"
    seconds = 1 / rate
    return f"{seconds:.1f} s/it" if seconds < 59.5 else f"{format_duration(seconds)}/it"


def format_clock(wall: float, now: float | None = None) -> str:
    """Local wall-clock time: ``14:03:22`` today, ``2024-05-01 14:03`` on another day."""
    then = time.localtime(wall)
    today = time.localtime(time.time() if now is None else now)
    if then[:3] == today[:3]:
        return time.strftime("%H:%M:%S", then)
    return time.strftime("%Y-%m-%d %H:%M", then)


def written_note(stats: CheckpointStats) -> str:
    """``""`` when all of a checkpoint was written, else ``", 40.0 KiB new"`` / ``", unchanged"``."""
    if stats.written is None or stats.written >= stats.nbytes:
        return ""
    return ", unchanged" if stats.written == 0 else f", {format_size(stats.written)} new"


def _position_text(snap: RunSnapshot) -> str:
    if snap.total is not None:
        pct = f"{snap.fraction:.0%}" if snap.fraction is not None else "-"
        return f"{pct} {format_count(snap.position)}/{format_count(snap.total)}"
    return f"{format_count(snap.position)} it"


def checkpoint_text(snap: RunSnapshot) -> str:
    """``last checkpoint 12 s ago (14:03:22), 5 written, 12.3 MiB in 0.12 s, overhead 0.8%``."""
    last = snap.last_checkpoint
    if last is None:
        if snap.resumed is not None:
            text = f"restored checkpoint of {format_clock(snap.resumed.checkpoint_wall_time, snap.now_wall)}"
        else:
            text = "no checkpoint yet"
    else:
        ago = format_duration(snap.since_checkpoint or 0.0, whole=True)
        text = (
            f"last checkpoint {ago} ago ({format_clock(last.wall_time, snap.now_wall)}), "
            f"{snap.checkpoints} written, {format_size(last.nbytes)}{written_note(last)} in "
            f"{format_duration(last.seconds)}"
        )
    text += f", overhead {snap.overhead:.1%}"
    if snap.failed_checkpoints:
        text += f", {snap.failed_checkpoints} failed"
    return text


def resume_text(snap: RunSnapshot) -> str:
    """``resumed from iteration 1,200 (checkpoint of 14:03:22), redoing 37 iterations (12 s)`` (once
    the run ended: ``..., 37 iterations (12 s) redone``), or ''."""
    info = snap.info
    if info is None:
        return ""
    if info.replayed:
        return f"finished run replayed from its completion record ({format_count(snap.position)} iterations)"
    resumed = info.resumed
    if resumed is None:
        return ""
    how = {"automatic": " automatically after a kernel crash,", "clicked": " after a kernel crash,"}
    text = (
        f"resumed{how.get(resumed.by_jupyterlab or '', '')} from iteration {format_count(resumed.from_position)} "
        f"(checkpoint of {format_clock(resumed.checkpoint_wall_time, snap.now_wall)})"
    )
    lost = []
    if resumed.redone_iterations:
        n = resumed.redone_iterations
        lost.append(f"{format_count(n)} iteration{'' if n == 1 else 's'}")
        if resumed.redone_seconds is not None:
            lost.append(format_duration(resumed.redone_seconds))
    if lost:
        took = f" ({lost[1]})" if len(lost) > 1 else ""
        text += f", {lost[0]}{took} redone" if snap.ended else f", redoing {lost[0]}{took}"
    return text


def progress_line(snap: RunSnapshot) -> str:
    """The compact line while running:
    ``running 45% 90,000/200,000 | 1,234 it/s | ETA 1 min 29 s | last checkpoint 12 s ago (14:03:22), ...``.
    """
    if snap.notice:  # an interrupt being honoured: the one thing to say until the run stops
        return f"{snap.state} {_position_text(snap)} | {snap.notice}"
    parts = [f"{snap.state} {_position_text(snap)}", format_rate(snap.rate)]
    if snap.eta is not None:
        parts.append(f"ETA {format_duration(snap.eta, whole=True)}")
    parts.append(checkpoint_text(snap))
    return " | ".join(parts)


def started_line(snap: RunSnapshot) -> str:
    """The widget's ``text/plain`` while the run goes on: what a notebook saved now keeps, so it says
    no more than is known for sure:
    ``running since 14:03:22, from iteration 0 of 400 (the summary replaces this line when the run
    ends: if it is still here, the kernel stopped first)``."""
    of = f" of {format_count(snap.total)}" if snap.total is not None else ""
    since = format_clock(snap.now_wall - snap.elapsed, snap.now_wall)
    return (
        f"running since {since}, from iteration {format_count(snap.start_position)}{of} (the summary "
        "replaces this line when the run ends: if it is still here, the kernel stopped first)"
    )


def summary_line(snap: RunSnapshot) -> str:
    """The one-line final summary: outcome, iterations, wall time, checkpoints, overhead."""
    info = snap.info
    if info is not None and info.replayed:
        return (
            f"replayed: the finished run's final values ({format_count(snap.position)} iterations) were "
            "restored from its completion record; the loop was skipped (--fresh runs it again)"
        )
    last = snap.last_checkpoint
    if snap.state == "finished":
        head = f"finished: {format_count(snap.position)} iterations"
        if snap.start_position:
            head += f" ({format_count(snap.done)} this run)"
    else:
        head = f"{snap.state} at iteration {format_count(snap.position)}"
    text = (
        f"{head} in {format_duration(snap.elapsed)}, {snap.checkpoints} checkpoint"
        f"{'' if snap.checkpoints == 1 else 's'}"
    )
    if last is not None:
        text += f" (last {format_size(last.nbytes)}{written_note(last)})"
    text += f", overhead {snap.overhead:.1%}"
    # A resume is not restated here: the run's banner (stdout) and the widget's resume row say it.
    if snap.detail:  # the run's own words: what stopped it and which checkpoint is kept
        text += f": {snap.detail}"
    elif snap.state in ("interrupted", "failed"):
        if last is not None:
            kept_at, kept_wall = last.position, last.wall_time
        elif snap.resumed is not None:
            kept_at, kept_wall = snap.resumed.from_position, snap.resumed.checkpoint_wall_time
        else:
            return text + ", no checkpoint written"
        saved = "checkpoint saved" if snap.state == "interrupted" else "kept the checkpoint"
        # where the run stopped, when the checkpoint is there (an interrupt's): said once
        where = "there" if kept_at == snap.position else f"at iteration {format_count(kept_at)}"
        text += f"; {saved} {where} ({format_clock(kept_wall, snap.now_wall)}): run the cell again to resume"
    return text


# -- a sharded map or sweep ----------------------------------------------------------------------


def map_items_text(snap: MapSnapshot) -> str:
    """``45% 90/200 items``, or ``90 items`` when the total is not known yet."""
    if snap.items_total is None:
        return f"{format_count(snap.items_done)} items"
    pct = snap.items_done / snap.items_total if snap.items_total else 1.0
    return f"{pct:.0%} {format_count(snap.items_done)}/{format_count(snap.items_total)} items"


def run_checkpoint_age(run: RunProgress, now_wall: float) -> str:
    """``last checkpoint 12 s ago`` of one shard, or ``no checkpoint yet``."""
    if run.checkpoint_wall is None:
        return "no checkpoint yet"
    return f"last checkpoint {format_duration(max(now_wall - run.checkpoint_wall, 0.0), whole=True)} ago"


def map_progress_line(snap: MapSnapshot) -> str:
    """``running 45% 90/200 items | 1/4 shards done, 2 running | 12.3 it/s | ETA 8 s | oldest checkpoint 3 s ago``."""
    running = snap.running
    parts = [
        f"running {map_items_text(snap)}",
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


def map_summary_line(snap: MapSnapshot) -> str:
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
            f"{map_items_text(snap)}; the checkpoints are kept: call again to resume"
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
