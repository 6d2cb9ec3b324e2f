"""Resumes after a kernel crash granted to JupyterLab, counted in the run's folder.

JupyterLab's extension asks the server before it runs a crashed ``%%resumable`` cell again; the server
records each grant in ``autoresume.json`` in the run's folder (on disk, so a reloaded page or a second
tab counts the same resumes). Automatic resumes (the ``autoResume`` setting) are limited per hour: a
cell that kills its kernel at the same point every time stops being resumed and says why. A resume the
user clicks is recorded but not limited: the user decided.

The resumed run reads the newest grant (:func:`jupyterlab_resume`) and records in its history that
JupyterLab resumed it after a crash (the "resumed" event's ``jupyterlab`` field), which the widget says
once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from resumable_magic.lease.lease import LOCK_FILE
from resumable_magic.store.layout import AUTORESUME_FILE
from resumable_magic.store.runstore import RunStore

__all__ = ["AUTORESUME_FILE", "WINDOW_SECONDS", "Grant", "claim", "jupyterlab_resume", "read_grants"]

WINDOW_SECONDS = 3600.0  # automatic resumes are counted over the last hour
_KEPT = 50  # grants kept in the file: more than any limit needs, few enough to stay small
_LOCK_TIMEOUT = 10.0


@dataclass(frozen=True)
class Grant:
    """The server's answer to one request to resume a crashed cell."""

    granted: bool
    automatic_in_window: int  # automatic resumes within the window, this one included if granted
    reason: str | None = None  # why not, in plain words


def read_grants(store: RunStore) -> list[dict[str, Any]]:
    """The grants recorded for the run, oldest first (``[]`` when none or unreadable)."""
    raw = store.backend.read_plain(AUTORESUME_FILE)
    try:
        record = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):
        return []
    grants = record.get("grants") if isinstance(record, dict) else None
    if not isinstance(grants, list):
        return []
    return [g for g in grants if isinstance(g, dict) and isinstance(g.get("time"), (int, float))]


def claim(store: RunStore, *, automatic: bool, limit: int, now: float, details: dict[str, Any]) -> Grant:
    """Record a resume of the run after a kernel crash, unless it is automatic and the run has had
    ``limit`` automatic resumes in the last hour. ``details`` (notebook, cell) are kept with it."""
    with _locked(store):
        grants = read_grants(store)
        recent = [g for g in grants if g.get("automatic") and now - g["time"] < WINDOW_SECONDS]
        if automatic and len(recent) >= limit:
            # Short enough for a notification toast (140 characters); the docs say when it clears.
            reason = (
                f"Not resuming automatically: this cell crashed its kernel {len(recent)} times in the "
                "last hour (the limit). Fix the cause, then run it yourself."
            )
            return Grant(False, len(recent), reason)
        grants.append({**details, "time": now, "automatic": automatic})
        body = {"key": store.key, "grants": grants[-_KEPT:]}
        store.backend.put_record(AUTORESUME_FILE, json.dumps(body, ensure_ascii=False).encode())
        return Grant(True, len(recent) + (1 if automatic else 0))


def jupyterlab_resume(store: RunStore, history: list[dict[str, Any]], created: float) -> str | None:
    """How JupyterLab resumed this attempt after a kernel crash, for the run's "resumed" event:
    ``"automatic"`` (the ``autoResume`` setting), ``"clicked"`` (the Resume button), or None (the
    user ran the cell). A grant counts when it is newer than the run's last recorded event."""
    times = [e["time"] for e in history if isinstance(e, dict) and isinstance(e.get("time"), (int, float))]
    since = max([created, *times])
    grants = [g for g in read_grants(store) if g["time"] > since]
    if not grants:
        return None
    return "automatic" if grants[-1].get("automatic") else "clicked"


@contextlib.contextmanager
def _locked(store: RunStore) -> Iterator[None]:
    """The run's short cross-process mutex (the lease's), held while the grants are read and written."""
    lock = store.backend.process_lock(LOCK_FILE, _LOCK_TIMEOUT)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()
