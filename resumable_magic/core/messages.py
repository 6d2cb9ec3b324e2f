"""What a run tells its user: the texts of banners, warnings and refusals, built from plain values.

Pure functions (no I/O), so that every message is testable and the run's code reads as what it does.
"""

from __future__ import annotations

import difflib
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from resumable_magic.errors import StateVariableError
from resumable_magic.progress.text import format_duration, format_size

__all__ = [
    "INTERRUPT_TEXT",
    "accepted_changes_text",
    "called_code_change_text",
    "code_change_text",
    "disk_space_text",
    "inner_accumulators_text",
    "long_iteration_text",
    "replay_text",
    "resume_text",
    "size_limit_text",
    "stopped_text",
    "takeover_text",
    "undefined_name_error",
    "unnamed_change_text",
    "versions_changed_text",
    "when",
]


def when(wall_time: float) -> str:
    """``2026-11-23 12:00:01, 5 min ago``."""
    ago = format_duration(max(0.0, time.time() - wall_time))
    return f"{datetime.fromtimestamp(wall_time).strftime('%Y-%m-%d %H:%M:%S')}, {ago} ago"


def undefined_name_error(name: str, namespace: Mapping[str, Any]) -> StateVariableError:
    close = difflib.get_close_matches(name, [k for k in namespace if not k.startswith("_")], 1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return StateVariableError(
        name,
        f"State variable {name!r} is not defined when the loop starts: assign it before the "
        f"loop (in the cell's setup or an earlier cell), or remove it from the names.{hint}",
    )


def accepted_changes_text(changes: Mapping[str, tuple[str, str]]) -> str:
    return "Accepted changed inputs: " + "; ".join(
        f"{n}: {old} -> {new}" for n, (old, new) in sorted(changes.items())
    )


def _changed_lines(old: str, new: str) -> list[str]:
    """The removed (``-``) and added (``+``) lines from ``old`` to ``new``, without context."""
    return [
        line
        for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def code_change_text(old: str, new: str, created: float, finished: bool) -> str:
    diff = _changed_lines(old, new)
    shown = "\n    ".join(diff[:8]) + ("\n    ..." if len(diff) > 8 else "")
    then = "replaying the finished run's result" if finished else "resuming with the new code"
    return (
        f"the cell's code changed since the checkpoint was written ({when(created)}); "
        f"{then}. Changes:\n    {shown}\n  Use --fresh to start over with the new code."
    )


def unnamed_change_text(names: Sequence[str]) -> str:
    listed = ", ".join(repr(n) for n in names)
    it, they = ("it", "it") if len(names) == 1 else ("them", "they")
    return (
        f"the loop changed {listed} (through a method call or an attribute, not an assignment the "
        f"code shows), defined before the loop but not named as state: after a crash {they} would "
        f"come back as the loop found {it}, not as it left {it}. Add {it} to the names if the "
        f"result depends on {it}."
    )


def called_code_change_text(
    old: Mapping[str, str], new: Mapping[str, str], created: float, finished: bool
) -> str:
    """The functions the loop calls whose code changed, each with the lines that did."""
    changed = sorted(n for n in {*old, *new} if old.get(n) != new.get(n))
    parts = []
    for name in changed[:5]:
        diff = _changed_lines(old.get(name, ""), new.get(name, ""))
        state = " (no longer called)" if name not in new else " (newly called)" if name not in old else ""
        shown = "\n      ".join(diff[:8]) + ("\n      ..." if len(diff) > 8 else "")
        parts.append(f"{name}{state}:\n      {shown}")
    more = f"\n    ... and {len(changed) - 5} more" if len(changed) > 5 else ""
    then = "replaying the finished run's result" if finished else "resuming with the new code"
    return (
        f"code the loop calls changed since the checkpoint was written ({when(created)}): "
        f"{', '.join(changed)}; {then}. Changes:\n    "
        + "\n    ".join(parts)
        + more
        + "\n  Use --fresh to start over with the new code."
    )


def size_limit_text(position: int, size: int, limit: int) -> str:
    return (
        f"The checkpoint at iteration {position:,} holds {format_size(size)} of state, over the "
        f"{format_size(limit)} limit (--max-size): a state variable may be growing "
        f"without bound. Checkpointing goes on; raise the limit if this is expected."
    )


def disk_space_text(free: int, path: str, size: int) -> str:
    return (
        f"Only {format_size(free)} is free on the disk holding {path!r}, and a "
        f"checkpoint holds {format_size(size)}: the next checkpoints may fail for lack of space. "
        f"Free some space, or checkpoint less state."
    )


def resume_text(
    names: Sequence[str],
    position: int,
    total: int | None,
    created: float,
    redone: int | None,
    redone_seconds: float | None,
    inner: int | None = None,
    by_jupyterlab: str | None = None,
) -> str:
    """``inner``: a nested loop's checkpoint, taken after that many inner iterations of the outer
    iteration ``position`` (``redone`` then counts inner iterations). ``by_jupyterlab``: the
    JupyterLab extension ran the cells again after a kernel crash, by itself ("automatic") or on a
    click of Resume ("clicked")."""
    of = f" of {total:,}" if total is not None else ""
    at = (
        f"iteration {position:,}{of}"
        if inner is None
        else f"position ({position:,}, {inner:,}) (outer{of}, inner)"
    )
    how = {"automatic": " automatically after a kernel crash:", "clicked": " after a kernel crash:"}
    text = (
        f"Resumed{how.get(by_jupyterlab or '', '')} {', '.join(names)} from the checkpoint at {at} "
        f"(written {when(created)})."
    )
    if redone and inner is not None:
        return text + (
            f" Redoing the work after it: {redone:,} inner iteration{'' if redone == 1 else 's'}, about "
            f"{format_duration(redone_seconds or 0)} of work."
        )
    if redone:
        return text + (
            f" Redoing the work after it: the interrupted run had reached iteration "
            f"{position + redone:,} ({redone:,} iteration{'' if redone == 1 else 's'}, about "
            f"{format_duration(redone_seconds or 0)} of work)."
        )
    if redone == 0:
        return text + " Nothing is redone: the run before had not gone past it."
    return text + " Work done after that checkpoint, if any, is redone."


#: Shown while an interrupt is honoured, and replaced when the run has stopped (a transient message).
INTERRUPT_TEXT = (
    "Interrupt received: finishing this iteration, then saving a checkpoint (interrupt again to stop now)."
)


def takeover_text(previous: Mapping[str, Any], gone: bool, now: float | None = None) -> str:
    """Who ran the run before this process, in plain words: ``The previous kernel (pid 17549) died;
    this kernel takes the run over.`` (its host is named when it is not this one)."""
    who = f"pid {previous.get('pid')}"
    if previous.get("host") != socket.gethostname():
        who += f" on host {previous.get('host')}"
    if gone:
        return f"The previous kernel ({who}) died; this kernel takes the run over."
    try:
        silent = f" for {format_duration(max(0.0, (time.time() if now is None else now) - float(previous['heartbeat'])))}"
    except (KeyError, TypeError, ValueError, OverflowError):
        silent = ""
    return (
        f"The previous kernel ({who}) has not renewed its hold on the run{silent}, longer than its "
        f"lease allows: it is stopped or cut off. This kernel takes the run over."
    )


def stopped_text(signal_name: str, position: int) -> str:
    return (
        f"Stopped by {signal_name} after iteration {position:,}; checkpoint saved. "
        f"Run the cell again to resume."
    )


def replay_text(key: str, finished_at: float, position: int, restored: Sequence[str]) -> str:
    return (
        f"Replayed the finished run {key!r} (finished {when(finished_at)} after "
        f"{position:,} iterations): restored {', '.join(restored)}; the loop was skipped. "
        f"Use --fresh to run it again."
    )


def versions_changed_text(moved: Sequence[str]) -> str:
    return (
        f"The checkpoint was written with other library versions ({'; '.join(moved)}). Random streams "
        f"and numerical kernels may differ between versions, so the resumed run may not end bit for bit "
        f"as an uninterrupted run would; it does continue from the checkpoint's state."
    )


def long_iteration_text(header: str, took: float, why: str) -> str:
    return (
        f"One iteration of `{header}` took {format_duration(took)}, longer than the interval between "
        f"checkpoints, and a checkpoint can only be taken between iterations: a crash can lose a whole "
        f"iteration. {why}"
    )


def inner_accumulators_text(names: Mapping[str, int], header: str) -> str:
    listed = ", ".join(f"{n!r} (line {line})" for n, line in names.items())
    they, them = ("it", "it") if len(names) == 1 else ("they", "them")
    return (
        f"`{header}` changes {listed}, which the outer loop sets before it and which is not named as "
        f"state: a resume inside this inner loop runs that statement again, so {they} would restart "
        f"from there, losing what the iterations before the checkpoint added. Add {them} to the names."
    )
