"""Resubmit: start ``resumable run`` on the server for a run that crashed, failed or was interrupted.

A checkpoint folder may be writable by others, and Resubmit runs the code it names: so a run is
started again only when its newest checkpoint passes the store's checks (signed with the user's key;
on a local disk also the user's own private files), its state read afresh says it is not running
(the lease names who owns a live one), and the notebook or script it recorded lies inside the
server's root. Parameters are passed as ``-p NAME VALUE`` only when the text gives the value back
exactly (as ``resumable run`` reads it); a run whose parameters cannot be is refused, never started
with other values. A failed run is started again only when the request confirms it (the same code
fails the same way unless it changed).

The command runs detached (a session of its own, so it outlives the server), its output in
``RESUBMIT.log`` in the run's folder (in the server's runtime folder for a run on object storage).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resumable_magic.errors import ResubmitRefusedError
from resumable_magic.lease.lease import describe_owner
from resumable_magic.storage.paths import Where
from resumable_magic.store.catalog import RunInfo, find_run

__all__ = ["LOG_FILE", "Launch", "Launcher", "resubmit_command"]

LOG_FILE = "RESUBMIT.log"  # upper case: no key's folder can be named so (store/keys.py)
RESUBMITTABLE = ("crashed", "failed", "interrupted")


@dataclass
class Launch:
    """A ``resumable run`` the board started."""

    key: str
    command: list[str]
    process: subprocess.Popen[bytes]
    log: Path
    started: float

    def returncode(self) -> int | None:
        """None while it runs (polled, so that a finished one is reaped)."""
        return self.process.poll()

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.process.pid,
            "started": self.started,
            "exit_status": self.returncode(),
            "log": str(self.log),
            "last_line": _last_line(self.log) if self.returncode() not in (None, 0) else None,
        }


def _last_line(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return None
    return lines[-1] if lines else None


def _inside(path: Path, root: Path) -> bool:
    return os.path.commonpath([path, root]) == str(root)


def _parameter_text(key: str, name: str, value: Any) -> str:
    """``value`` as ``-p`` text that ``resumable run`` reads back as exactly ``value``."""
    from resumable_magic.supervise.params import parse_value

    text = value if isinstance(value, str) else repr(value)
    back = parse_value(text)
    if type(back) is not type(value) or repr(back) != repr(value):  # repr: nan is nan, -0.0 is not 0.0
        raise ResubmitRefusedError(
            key,
            f"its parameter {name} = {value!r} cannot be passed on the command line exactly "
            f"(resumable run -p would read it as {back!r}). Run the notebook yourself with that value.",
        )
    return text


def resubmit_command(info: RunInfo, directory: Where, root: Path) -> tuple[list[str], Path]:
    """The command that starts ``info``'s run again and the folder it runs in, or
    :class:`ResubmitRefusedError` saying why it may not be started."""
    origin = info.manifest.get("origin")
    origin = origin if isinstance(origin, dict) else {}
    target = origin.get("notebook") or origin.get("script")
    if not isinstance(target, str) or not target:
        raise ResubmitRefusedError(
            info.key, "it records no notebook or script it ran from (it ran in a console or an older version)"
        )
    path = Path(os.path.realpath(root / target))  # root / an absolute path is that path
    if not _inside(path, root):
        raise ResubmitRefusedError(info.key, f"its {target!r} is outside the server's root {str(root)!r}")
    notebook = "notebook" in origin
    if not path.is_file() or path.suffix != (".ipynb" if notebook else ".py"):
        kind = "notebook" if notebook else "Python script"
        raise ResubmitRefusedError(info.key, f"{str(path)!r} is no {kind} (moved or deleted?)")
    command = [sys.executable, "-m", "resumable_magic", "run", "--dir", str(directory)]
    parameters = origin.get("parameters") if notebook else None
    for name, value in (parameters if isinstance(parameters, dict) else {}).items():
        command += ["-p", str(name), _parameter_text(info.key, str(name), value)]
    command.append(str(path))
    args = origin.get("args") if not notebook else None
    command += [str(a) for a in args] if isinstance(args, list) else []
    return command, path.parent


class Launcher:
    """Checks and starts resubmitted runs, and remembers them (one at a time per run)."""

    def __init__(self, root: Path, log_folder: Path) -> None:
        self.root = Path(os.path.realpath(root))
        self.log_folder = log_folder
        self.launches: dict[tuple[str, str], Launch] = {}
        self._lock = threading.Lock()  # two clicks at once: one check-and-start after the other

    def launch(self, directory: Where, key: str, *, confirmed: bool = False) -> Launch:
        """Start run ``key`` of the checkpoint folder ``directory`` again, after the checks (module doc)."""
        with self._lock:
            return self._launch(directory, key, confirmed)

    def _launch(self, directory: Where, key: str, confirmed: bool) -> Launch:
        running = self.launches.get((str(directory), key))
        if running is not None and running.returncode() is None:
            raise ResubmitRefusedError(
                key, f"it was resubmitted already and is starting (pid {running.process.pid})"
            )
        info = find_run(directory, key)  # read afresh, its newest checkpoint verified
        if info is None or info.generation is None:
            why = info.problems[0] if info is not None and info.problems else "no checkpoint of it verifies"
            raise ResubmitRefusedError(key, why)
        if info.state == "running" and info.owner is not None:
            raise ResubmitRefusedError(key, f"it is running: {describe_owner(info.owner)}")
        if info.state not in RESUBMITTABLE:
            raise ResubmitRefusedError(key, f"it is {info.state}")
        if info.state == "failed" and not confirmed:
            raise ResubmitRefusedError(
                key,
                f"it failed with {info.error!r}: the same code fails the same way; confirm to run it again",
            )
        command, cwd = resubmit_command(info, directory, self.root)
        log = (
            Path(str(info.path)) / LOG_FILE
            if isinstance(info.path, Path)
            else self.log_folder / f"{os.getpid()}-{time.time_ns()}.log"
        )
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(
                f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} resubmitted from the board: {' '.join(command)}\n".encode()
            )
            out.flush()
            process = subprocess.Popen(
                command,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        launch = Launch(key, command, process, log, time.time())
        self.launches[(str(directory), key)] = launch
        return launch
