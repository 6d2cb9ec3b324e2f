"""Test-only crash points: SIGKILL this process at an exact step of a checkpoint's commit.

``RESUMABLE_CRASH_AT="<step>:<n>"`` kills the process the n-th time it reaches ``<step>``, so that
tests can crash a real kernel at an exact point of a commit (the torture tests). A no-op otherwise.
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_STEPS", "crash_point"]

_crash_spec = os.environ.get("RESUMABLE_CRASH_AT", "")
_crash_counts: dict[str, int] = {}
CRASH_STEPS = (
    "serialized",  # state pickled, nothing written
    "blob-written",  # blob's temporary file written, not fsynced
    "blob-synced",  # ... fsynced, not renamed
    "manifest-written",  # manifest's temporary file written, not fsynced
    "manifest-synced",  # ... fsynced, not renamed
    "manifest-renamed",  # renamed into place, directory not fsynced
    "committed",  # directory fsynced, old generations not yet collected
    "collecting",  # old manifests deleted, unreferenced blobs not yet
)
# Also "background": a forked background writer (core/forked_writer.py) has started, nothing written yet.


def crash_point(step: str) -> None:
    """A test hook: SIGKILL this process at ``step`` when ``$RESUMABLE_CRASH_AT`` asks; else a no-op."""
    if not _crash_spec:
        return
    target, _, nth = _crash_spec.partition(":")
    if target != step:
        return
    _crash_counts[step] = _crash_counts.get(step, 0) + 1
    if _crash_counts[step] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
