"""The JupyterLab extension's API: the auto-resume lock, the crash-loop count, the true last checkpoint.

``GET  /resumable/api/checkpoint?directory=D&key=K``: the newest good checkpoint of run ``K`` in folder
``D``, read from disk (the widget's figure can lag: a forked writer commits before the kernel says so).

``POST /resumable/api/resume``: a tab asks to run a crashed ``%%resumable`` cell again. Granted once
per dead kernel process (two tabs, or two users of one notebook, see the same crash: the first asks
wins); automatic resumes are counted in the run's folder and refused past :data:`AUTO_RESUME_LIMIT`
an hour (:mod:`resumable_magic.store.autoresume`), so a cell that kills its kernel cannot spin.

Both behind the server's authentication; the POST also behind its XSRF check (JupyterLab's
``ServerConnection`` sends the token and the XSRF header).
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from jupyter_server.base.handlers import APIHandler
from tornado import web

from resumable_magic.errors import ResumableError
from resumable_magic.storage.base import location
from resumable_magic.store.autoresume import claim
from resumable_magic.store.keys import key_to_relpath
from resumable_magic.store.runstore import RunStore

if TYPE_CHECKING:
    from .app import ResumableServerApp

AUTO_RESUME_LIMIT = 3  # automatic resumes of one cell per hour
_CLAIMS_KEPT = 1000  # dead kernels remembered (one entry each, a few bytes)
_CLAIMS = "resumable_resume_claims"  # the web app's settings entry holding them


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise web.HTTPError(400, f"The request's '{name}' must be a non-empty string, not {value!r}.")
    return value


def _optional_text(body: dict[str, Any], name: str) -> str | None:
    return None if body.get(name) is None else _text(body, name)


class _Handler(APIHandler):
    def folder(self, directory: str) -> Any:
        """A folder named by the client: a URL as it is, a path relative to the server's root."""
        if "://" in directory:
            return location(directory)
        return location(Path(self.settings["server_root_dir"]).expanduser() / directory)

    def run_store(self, directory: str, key: str) -> RunStore:
        """Run ``key`` in the checkpoint folder ``directory``, or in the folder above it when
        ``directory`` is the run's own folder (the widget names that one)."""
        store = RunStore(self.folder(directory), key)
        tail = "/" + key_to_relpath(key).as_posix()
        trimmed = directory.rstrip("/")
        if not store.folder_exists() and trimmed.endswith(tail):
            return RunStore(self.folder(trimmed[: -len(tail)]), key)
        return store

    def reply(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.finish(json.dumps(body))


class CheckpointHandler(_Handler):
    """The newest good checkpoint of one run, as the disk has it."""

    @web.authenticated
    def get(self) -> None:
        directory = self.get_query_argument("directory", "")
        key = self.get_query_argument("key", "")
        if not directory or not key:
            raise web.HTTPError(400, "Name the run: ?directory=<its checkpoint folder>&key=<its key>.")
        try:
            store = self.run_store(directory, key)
            exists = store.folder_exists()
            checkpoint = store.read_latest(load_state=False).checkpoint if exists else None
        except ResumableError as exc:
            raise web.HTTPError(400, str(exc)) from None
        manifest = checkpoint.manifest if checkpoint else {}
        total = manifest.get("total")
        self.reply(
            200,
            {
                "iteration": checkpoint.position if checkpoint else None,
                "position": manifest.get("position"),
                "total": total if isinstance(total, int) else None,
                "time": _iso(checkpoint.created) if checkpoint else None,
                "folder_exists": exists,
            },
        )


class ResumeHandler(_Handler):
    """One tab's request to run a crashed cell again: the lock and the crash-loop count."""

    @web.authenticated
    def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "The request's body is not JSON.") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "The request's body must be a JSON object.")
        kernel_id, session, tab = _text(body, "kernel_id"), _text(body, "kernel_session"), _text(body, "tab")
        notebook, cell_id = _text(body, "notebook"), _text(body, "cell_id")
        automatic = body.get("automatic")
        if not isinstance(automatic, bool):
            raise web.HTTPError(400, f"The request's 'automatic' must be true or false, not {automatic!r}.")

        # One grant per dead kernel process (its session id changes with each process).
        claims: OrderedDict[tuple[str, str], str] = self.settings.setdefault(_CLAIMS, OrderedDict())
        holder = claims.get((kernel_id, session))
        if holder is not None and holder != tab:
            self.reply(409, {"granted": False, "reason": "Another tab is already resuming these cells."})
            return

        try:
            store = self.run_of(body, notebook, cell_id)
            exists = store.folder_exists()
        except ResumableError as exc:
            raise web.HTTPError(400, str(exc)) from None
        if not exists and automatic:
            self.reply(
                404,
                {
                    "granted": False,
                    "reason": "Not resuming automatically: the cell saved no checkpoint, so it would "
                    "start over. Run it again yourself.",
                },
            )
            return
        grant = None
        if exists:
            details = {"notebook": notebook, "cell_id": cell_id, "kernel_id": kernel_id}
            grant = claim(
                store, automatic=automatic, limit=AUTO_RESUME_LIMIT, now=time.time(), details=details
            )
            if not grant.granted:
                self.reply(429, {"granted": False, "reason": grant.reason})
                return
        claims[(kernel_id, session)] = tab
        while len(claims) > _CLAIMS_KEPT:
            claims.popitem(last=False)
        self.reply(
            200,
            {
                "granted": True,
                "directory": str(store.directory),
                "key": store.key,
                "automatic_resumes": grant.automatic_in_window if grant else 0,
                "limit": AUTO_RESUME_LIMIT,
            },
        )

    def run_of(self, body: dict[str, Any], notebook: str, cell_id: str) -> RunStore:
        """The crashed cell's run: as its widget names it, else as the magic derives it from its
        line (``--name``, ``--dir``), the notebook and the cell's id."""
        directory, key = _optional_text(body, "directory"), _optional_text(body, "key")
        if directory and key:
            return self.run_store(directory, key)
        options = _options(_optional_text(body, "magic_line") or "")
        notebook_folder = Path(self.settings["server_root_dir"]).expanduser() / PurePosixPath(notebook).parent
        where = options.get("--dir") or os.environ.get("RESUMABLE_DIR") or ".resumable"
        folder = location(where if "://" in where else notebook_folder / where)
        return RunStore(folder, options.get("--name") or f"{PurePosixPath(notebook).name}/cell-{cell_id}")


def _options(line: str) -> dict[str, str]:
    """``--name`` and ``--dir`` of a ``%%resumable`` line (``--opt value`` or ``--opt=value``)."""
    try:
        words = shlex.split(line)
    except ValueError:
        return {}
    found: dict[str, str] = {}
    for i, word in enumerate(words):
        name, _, value = word.partition("=")
        if name in ("--name", "--dir"):
            if not value and i + 1 < len(words):
                value = words[i + 1]
            if value:
                found[name] = value
    return found


def handlers(app: ResumableServerApp) -> list[tuple[str, type]]:
    """The resume API's handlers."""
    return [
        (r"/resumable/api/checkpoint", CheckpointHandler),
        (r"/resumable/api/resume", ResumeHandler),
    ]
