"""The JupyterLab extension's API: the auto-resume lock, the crash-loop count, the true last checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import ResumableServerApp


def handlers(app: ResumableServerApp) -> list[tuple[str, type]]:
    """The resume API's handlers (none yet)."""
    return []
