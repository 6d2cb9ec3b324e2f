"""The board: a page of every run at ``<base_url>/resumable/`` and its JSON API under ``/resumable/api/``.

- ``GET  /resumable/``                    the page (static HTML, JS and CSS from ``static/``; no build step)
- ``GET  /resumable/api/runs?open=ID...`` every run's row, maps and sweeps as groups (rows of open ones)
- ``GET  /resumable/api/run?folder=F&key=K`` one run's row with its history
- ``POST /resumable/api/resubmit``        ``{"runs": [{"folder", "key"}], "confirm": bool}`` or
  ``{"all_crashed": true}``: starts ``resumable run`` for each (:mod:`.resubmit`)

Every handler is behind the server's authentication (``@web.authenticated``) and its authorizer
(resource ``resumable``); the POST is checked against XSRF by jupyter_server, as its own API is.
"""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from tornado import web

from resumable_magic.errors import ResubmitRefusedError
from resumable_magic.server.rows import board_json, run_row

if TYPE_CHECKING:
    from resumable_magic.server.app import ResumableServerApp
    from resumable_magic.server.folders import BoardFolder

PAGE = Path(__file__).resolve().parent / "static" / "board.html"
AUTH_RESOURCE = "resumable"


class _BoardHandler(JupyterHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def board(self) -> ResumableServerApp:
        app: ResumableServerApp = self.settings["resumable"]  # ExtensionApp puts itself under its name
        return app

    async def folders(self) -> list[BoardFolder]:
        """The folders, listed again where due, off the event loop (a listing reads files)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.board.board_folders.refresh)

    def launches(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {where: launch.to_json() for where, launch in self.board.launcher.launches.items()}


class BoardPageHandler(_BoardHandler):
    """The page: its HTML with the base URL and the XSRF token filled in."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        html = PAGE.read_text()
        for name, value in (("base_url", self.base_url), ("xsrf_token", self.xsrf_token.decode())):
            html = html.replace("{{" + name + "}}", json.dumps(value)[1:-1])
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(html)


class RunsHandler(_BoardHandler, APIHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        folders = await self.folders()
        answer = board_json(
            [(str(f.where), f.error, f.runs) for f in folders],
            self.board.root,
            set(self.get_arguments("open")),
            self.launches(),
        )
        answer["poll_seconds"] = self.board.poll_seconds
        answer["resubmit_enabled"] = self.board.resubmit_enabled
        self.finish(answer)


class RunHandler(_BoardHandler, APIHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        name, key = self.get_argument("folder"), self.get_argument("key")
        for folder in await self.folders():
            if str(folder.where) == name:
                for info in folder.runs:
                    if info.key == key:
                        launch = self.launches().get((name, key))
                        self.finish(run_row(info, self.board.root, name, launch, history=True))
                        return
        raise web.HTTPError(404, f"no run {key!r} in {name!r}")


class ResubmitHandler(_BoardHandler, APIHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        if not self.board.resubmit_enabled:
            raise web.HTTPError(403, "Resubmit is turned off (ResumableServerApp.resubmit_enabled)")
        body = self.get_json_body() or {}
        if not isinstance(body, dict):
            raise web.HTTPError(400, "send a JSON object")
        if body.get("all_crashed"):
            wanted = [
                (str(f.where), info.key)
                for f in await self.folders()
                for info in f.runs
                if info.state == "crashed"
            ]
        else:
            runs = body.get("runs")
            if not isinstance(runs, list) or not all(
                isinstance(r, dict) and isinstance(r.get("folder"), str) and isinstance(r.get("key"), str)
                for r in runs
            ):
                raise web.HTTPError(400, 'send {"runs": [{"folder": ..., "key": ...}, ...]}')
            wanted = [(r["folder"], r["key"]) for r in runs]
        confirmed = body.get("confirm") is True
        results = []
        for name, key in wanted:
            result: dict[str, Any] = {"folder": name, "key": key}
            folder = self.board.board_folders.get(name)
            try:
                if folder is None:
                    raise ResubmitRefusedError(key, f"{name!r} is not a folder this board shows")
                start = functools.partial(self.board.launcher.launch, folder.where, key, confirmed=confirmed)
                launch = await asyncio.get_running_loop().run_in_executor(None, start)
                result.update(started=True, launch=launch.to_json())
                folder.next_refresh = 0.0  # show it yellow at the next poll
            except ResubmitRefusedError as exc:
                result.update(started=False, reason=exc.reason)
            results.append(result)
        self.finish({"results": results})


def handlers(app: ResumableServerApp) -> list[tuple[str, type]]:
    """The board's page and API handlers (its static files are the app's ``static_paths``)."""
    return [
        (r"/resumable/?", BoardPageHandler),
        (r"/resumable/api/runs", RunsHandler),
        (r"/resumable/api/run", RunHandler),
        (r"/resumable/api/resubmit", ResubmitHandler),
    ]
