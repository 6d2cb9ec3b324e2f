"""The board: a page of every run at ``<base_url>/resumable/`` and its JSON API under ``/resumable/api/``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jupyter_server.base.handlers import JupyterHandler
from tornado import web

if TYPE_CHECKING:
    from .app import ResumableServerApp


class BoardPageHandler(JupyterHandler):
    """The board's page (a placeholder until the page is written)."""

    @web.authenticated
    def get(self) -> None:
        self.finish("<!doctype html><title>Resumable runs</title><h1>Resumable runs</h1>")


def handlers(app: ResumableServerApp) -> list[tuple[str, type]]:
    """The board's page and API handlers."""
    return [(r"/resumable/?", BoardPageHandler)]
