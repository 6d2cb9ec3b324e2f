"""A real ``jupyter server`` on loopback with the board's extension enabled, for the server tests.

Every Jupyter directory is in a temp dir; the extension is enabled the way the wheel enables it (the
repository's ``jupyter-config/server-config/resumable_magic.json`` in the config dir's
``jupyter_server_config.d``); the repository is on ``PYTHONPATH`` of the server and of what it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SERVER_CONFIG = REPO / "jupyter-config" / "server-config" / "resumable_magic.json"
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def jupyter_env(base: Path) -> dict[str, str]:
    """The environment of a server whose Jupyter directories are under ``base``, the board enabled."""
    dirs = {
        "JUPYTER_CONFIG_DIR": base / "config",
        "JUPYTER_DATA_DIR": base / "data",
        "JUPYTER_RUNTIME_DIR": base / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": base / "settings",
        "JUPYTERLAB_WORKSPACES_DIR": base / "workspaces",
        "IPYTHONDIR": base / "ipython",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    enabled = dirs["JUPYTER_CONFIG_DIR"] / "jupyter_server_config.d"
    enabled.mkdir(exist_ok=True)
    shutil.copy(SERVER_CONFIG, enabled / SERVER_CONFIG.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_", "RESUMABLE_"))}
    env.update({k: str(v) for k, v in dirs.items()})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    return env


class Server:
    """A running ``jupyter server`` (or ``jupyter lab``) and plain HTTP requests to it."""

    def __init__(self, root: Path, port: int, token: str, proc: subprocess.Popen, log: Path) -> None:
        self.root, self.port, self.token, self.proc, self.log = root, port, token, proc, log
        self.url = f"http://127.0.0.1:{port}"

    def request(
        self,
        path: str,
        method: str = "GET",
        body: Any = None,
        headers: dict[str, str] | None = None,
        token: bool = True,
    ) -> tuple[int, Message, bytes]:
        """(status, headers, body) of one request; redirects are not followed."""
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        if token:
            all_headers["Authorization"] = f"token {self.token}"
        all_headers.update(headers or {})
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=all_headers)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=30) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def api(self, path: str, method: str = "GET", body: Any = None) -> Any:
        status, _, data = self.request(path, method, body)
        assert status == 200, f"{method} {path}: {status} {data[:500]!r}\n{self.log_tail()}"
        return json.loads(data)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@contextlib.contextmanager
def running_server(
    base: Path, root: Path, args: list[str] = (), app: str = "jupyter_server"
) -> Iterator[Server]:
    """``python -m <app>`` on 127.0.0.1 with a random port and token; stopped (and its children
    killed) on exit."""
    env = jupyter_env(base)
    port, token = free_port(), secrets.token_hex(16)
    log = base / f"{app}.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", app, "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                *args,
            ],
            env=env, cwd=root, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    server = Server(root, port, token, proc, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, f"{app} exited with {proc.returncode}:\n{server.log_tail()}"
            with contextlib.suppress(OSError):
                if server.request("/api/status")[0] == 200:
                    break
            assert time.monotonic() < deadline, f"{app} not up in {START_TIMEOUT:.0f} s:\n{server.log_tail()}"
            time.sleep(0.1)  # polling interval for the server to answer, not a wait for a race
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
