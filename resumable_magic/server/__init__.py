"""The Jupyter server extension: the board of runs at ``<base_url>/resumable/`` and its JSON API.

Handlers only; runs are read through :mod:`resumable_magic.store.catalog`. jupyter_server is imported
when the server loads the extension, never by ``import resumable_magic``.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """The extension point jupyter_server looks up when ``resumable_magic.server`` is enabled."""
    from .app import ResumableServerApp

    return [{"module": "resumable_magic.server", "app": ResumableServerApp}]
