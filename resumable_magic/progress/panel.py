"""The run panel's traitlets model, drawn by its own view (``panel.js``, ``panel.css``) through
anywidget: the only module of the package that imports anywidget.

The kernel sets the traits; the view in the browser draws them and keeps telling the truth when
the kernel cannot: it turns red when a JupyterLab extension tells it the kernel died (a
``resumable-kernel-died`` event on its root element), and amber when the kernel's ``heartbeat``
stops ticking while the run is said to be running. See ``docs/widget.md``.

The view's root element is the contract with the JupyterLab extension: class ``resumable-widget``,
``data-key``, ``data-directory`` and ``data-status`` (one of :data:`STATUSES`, ``dead`` set by the
view itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget
import traitlets

__all__ = ["STATUSES", "RunPanel", "status_of"]

_HERE = Path(__file__).resolve().parent

#: ``data-status`` values: the kernel sets the first four, the view sets ``dead``.
STATUSES = ("running", "done", "interrupted", "failed", "dead")
_STATUS_OF_STATE = {
    "starting": "running",
    "running": "running",
    "checkpointing": "running",
    "finished": "done",
    "replayed": "done",
    "interrupted": "interrupted",
    "failed": "failed",
}


def status_of(state: str) -> str:
    """The view's ``data-status`` for a progress model's state."""
    return _STATUS_OF_STATE[state]


class RunPanel(anywidget.AnyWidget):
    """One run's panel. ``text`` is its ``text/plain`` form (what nbconvert, nbclient and nbval keep)."""

    _esm = _HERE / "panel.js"
    _css = _HERE / "panel.css"

    key = traitlets.Unicode("").tag(sync=True)
    directory = traitlets.Unicode("").tag(sync=True)  # the run's folder: an absolute path or a URL
    status = traitlets.Unicode("running").tag(sync=True)  # running / done / interrupted / failed
    # What the view draws, from a snapshot: state word and colour, position, total, the count's text,
    # the details' HTML, and the newest checkpoint this kernel knows of ({"iteration", "time"} or None).
    view = traitlets.Dict().tag(sync=True)
    # time.time() of the kernel's last tick (about every second while the run goes on). The view
    # measures silence by its own clock from the moment a tick arrives.
    heartbeat = traitlets.Float(0.0).tag(sync=True)
    # Set by the view (never by the kernel) when the kernel died, so that a notebook saved with its
    # widget state reopens dead, not running.
    death = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True)

    def __init__(self, text: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._text = text

    def __repr__(self) -> str:
        return str(self._text())
