"""A run's record of its attempts: the started / resumed / finished events kept in its checkpoints'
metadata (the first one and the newest ones), and the banner a resumed attempt shows."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from resumable_magic.core import messages
from resumable_magic.core.origin import restart_cause
from resumable_magic.progress.snapshots import ResumeInfo
from resumable_magic.store.layout import Checkpoint

__all__ = ["HISTORY_LIMIT", "event", "resumed_event", "resumed_text", "trimmed"]

HISTORY_LIMIT = 200  # events kept in the metadata: the first one and the newest ones


def event(name: str, **details: Any) -> dict[str, Any]:
    """One event of a run, with where and when it happened (details that are None left out)."""
    record = {"event": name, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
    record.update((k, v) for k, v in details.items() if v is not None)
    return record


def trimmed(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return events if len(events) <= HISTORY_LIMIT else events[:1] + events[-(HISTORY_LIMIT - 1) :]


def resumed_event(checkpoint: Checkpoint, resumed: ResumeInfo, previous_end: str | None) -> dict[str, Any]:
    """The event of a resumed attempt; ``jupyterlab`` says whether the JupyterLab extension resumed it
    ("automatic" or "clicked") after a kernel crash."""
    return event(
        "resumed",
        **{"from": checkpoint.position},
        redone=resumed.redone_iterations,
        redone_seconds=resumed.redone_seconds,
        after=previous_end or "crashed",
        cause=restart_cause(),  # set when `resumable run` restarted a dead kernel or script
        jupyterlab=resumed.by_jupyterlab,
    )


def resumed_text(
    names: tuple[str, ...],
    checkpoint: Checkpoint,
    total: int | None,
    resumed: ResumeInfo,
) -> str:
    """The banner of a resumed attempt; the plain API learns the total only when its loop starts, so
    the checkpoint's is used until then."""
    recorded = checkpoint.manifest.get("total")
    if total is None and isinstance(recorded, int) and not isinstance(recorded, bool):
        total = recorded
    return messages.resume_text(
        names,
        checkpoint.position,
        total,
        checkpoint.created,
        resumed.redone_iterations,
        resumed.redone_seconds,
        (checkpoint.manifest.get("inner") or {"position": 0})["position"]
        if "steps" in checkpoint.manifest
        else None,
        resumed.by_jupyterlab,
    )
