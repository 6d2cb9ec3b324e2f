"""A real browser against a real JupyterLab: fixtures and helpers for the browser tests.

- ``lab``: a JupyterLab server on 127.0.0.1 with a random free port and token, every Jupyter
  directory (config, data, runtime, settings, workspaces, IPython) in a temp dir, the news pop-up
  off. The kernel is the venv's ``python3`` kernelspec (found under ``sys.prefix/share/jupyter``,
  which Jupyter searches besides ``JUPYTER_DATA_DIR``); the repository is on the kernels'
  ``PYTHONPATH`` so they import this checkout of ``resumable_magic``.
- ``page``: a Playwright page in headless Debian Chromium (``/usr/bin/chromium``; Playwright cannot
  download its own browser here). Missing Chromium is a failure with the install command, not a skip.
- ``lab.write_notebook`` / ``lab.open`` / ``lab.run_cell`` / ``lab.outputs`` / ``lab.screenshot``.

Screenshots go to ``$RESUMABLE_ARTIFACTS`` (default ``ci-artifacts/`` in the repository), folder
``browser/``; the folder is printed at the end of the run. A failing test leaves a screenshot too.

Waiting is always for a condition in the DOM or on the server (Playwright's auto-waiting
locators, ``wait_for_function``, polling with a deadline), never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KERNEL_NAME = "python3"
KERNEL_DISPLAY_NAME = "Python 3 (ipykernel)"
SERVER_START_TIMEOUT = 60.0
KERNEL_READY_TIMEOUT = 60_000  # ms, Playwright's unit

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.browser)


# -- artifacts -----------------------------------------------------------------------------------


def artifacts_dir() -> Path:
    base = Path(os.environ.get("RESUMABLE_ARTIFACTS") or REPO / "ci-artifacts")
    return base / "browser"


_written_artifacts: list[Path] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _written_artifacts:
        terminalreporter.write_line(f"browser screenshots ({len(_written_artifacts)}) in: {artifacts_dir()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        page = item.funcargs.get("page") if hasattr(item, "funcargs") else None
        if page is not None and not page.is_closed():
            try:
                _shoot(page, f"FAILED-{item.name}")
            except Exception as exc:  # the page may be wedged; the failure itself matters more
                print(f"(could not screenshot the failure: {exc})", file=sys.stderr)


def _shoot(page: Any, name: str, locator: Any = None) -> Path:
    folder = artifacts_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (re.sub(r"[^\w.-]+", "_", name) + ".png")
    (locator or page).screenshot(path=str(path))
    _written_artifacts.append(path)
    print(f"screenshot: {path}")
    return path


# -- processes -----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Pids of all live descendants of ``pid`` (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent:
                found.append(child)
                frontier.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the server ----------------------------------------------------------------------------------


class Lab:
    """A running JupyterLab and the helpers the tests drive it with."""

    def __init__(self, root: Path, port: int, token: str, proc: subprocess.Popen, log: Path) -> None:
        self.root, self.port, self.token, self.proc, self.log = root, port, token, proc, log
        self.url = f"http://127.0.0.1:{port}"
        self.tree = "/lab/tree/"  # where a notebook opens

    # server side
    def api(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def kernel_pids(self) -> list[int]:
        """Pids of the kernels this server started (its ``ipykernel_launcher`` children)."""
        return [pid for pid in _children(self.proc.pid) if "ipykernel_launcher" in _cmdline(pid)]

    def kernel_pid(self, notebook: str) -> int:
        """Pid of the kernel of ``notebook``'s session (its command line names the kernel's id)."""
        sessions = [s for s in self.api("/api/sessions") if s.get("path") == notebook]
        assert len(sessions) == 1, f"expected one session for {notebook}: {sessions}"
        kernel_id = sessions[0]["kernel"]["id"]
        pids = [pid for pid in self.kernel_pids() if kernel_id in _cmdline(pid)]
        assert len(pids) == 1, f"kernel {kernel_id} of {notebook}: pids {pids}"
        return pids[0]

    def shutdown_kernels(self) -> None:
        try:
            for kernel in self.api("/api/kernels"):
                self.api(f"/api/kernels/{kernel['id']}", method="DELETE")
        except (urllib.error.URLError, OSError):
            pass

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # notebooks
    def write_notebook(self, name: str, cells: list[str]) -> str:
        """Write code cells into the root dir as ``name`` (``.ipynb`` added); returns the file name."""
        if not name.endswith(".ipynb"):
            name += ".ipynb"
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {
            "name": KERNEL_NAME,
            "display_name": KERNEL_DISPLAY_NAME,
            "language": "python",
        }
        nb.metadata["language_info"] = {"name": "python"}
        nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
        nbformat.write(nb, self.root / name)
        return name

    def open(self, page: Any, name: str) -> None:
        """Open a notebook (in Lab, ``?reset``: no restored tabs) and wait for a ready kernel."""
        page.goto(f"{self.url}{self.tree}{name}?reset&token={self.token}")
        page.locator(".jp-Cell:visible").first.wait_for(state="visible", timeout=KERNEL_READY_TIMEOUT)
        self.wait_kernel_ready(page)

    def wait_kernel_ready(self, page: Any, timeout: float = KERNEL_READY_TIMEOUT) -> None:
        """Idle indicator AND the kernel's name in the toolbar: Lab shows 'idle' briefly before a
        kernel is attached, and Shift+Enter is silently dropped then."""
        page.wait_for_function(
            """([name]) => {
                const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
                if (!panel) return false;
                const ind = panel.querySelector('.jp-Notebook-ExecutionIndicator');
                const kn = panel.querySelector('.jp-KernelName, .jp-Toolbar-kernelName');
                return !!ind && ind.getAttribute('data-status') === 'idle'
                    && !!kn && kn.textContent.includes(name);
            }""",
            arg=[KERNEL_DISPLAY_NAME],
            timeout=timeout,
            polling=100,
        )

    def cell(self, page: Any, index: int) -> Any:
        return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(index)

    def run_cell(self, page: Any, index: int, wait: bool = True, timeout: float = 60_000) -> None:
        """Click into cell ``index`` and press Shift+Enter; waits until the kernel took it and, with
        ``wait``, until it finished. "Took it" is the prompt turning ``[*]``, seen by a
        MutationObserver (a quick cell may be ``[*]`` for less than a polling interval, and after a
        kernel restart it may end with the same number it had before)."""
        cell = self.cell(page, index)
        handle = cell.element_handle()
        before = cell.locator(".jp-InputPrompt").inner_text().strip()
        handle.evaluate(
            """cell => {
                if (cell.__rmObserver) cell.__rmObserver.disconnect();
                cell.__rmStarted = false;
                const seen = () => {
                    const prompt = cell.querySelector('.jp-InputPrompt');
                    if (prompt && prompt.textContent.includes('*')) cell.__rmStarted = true;
                };
                cell.__rmObserver = new MutationObserver(seen);
                cell.__rmObserver.observe(cell, {subtree: true, childList: true, characterData: true});
            }"""
        )
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        page.wait_for_function(
            """([cell, before]) => {
                const t = cell.querySelector('.jp-InputPrompt').textContent.trim();
                return cell.__rmStarted || t.includes('*') || (/\\[\\d+\\]/.test(t) && t !== before);
            }""",
            arg=[handle, before],
            timeout=timeout,
            polling=50,
        )
        handle.evaluate("cell => cell.__rmObserver && cell.__rmObserver.disconnect()")
        if wait:
            self.wait_cell_done(page, index, timeout=timeout)

    def wait_cell_done(self, page: Any, index: int, timeout: float = 60_000) -> None:
        handle = self.cell(page, index).element_handle()
        page.wait_for_function(
            """(cell) => /\\[\\d+\\]/.test(cell.querySelector('.jp-InputPrompt').textContent)""",
            arg=handle,
            timeout=timeout,
            polling=50,
        )

    def wait_text(
        self, page: Any, index: int, selector: str, predicate: str, arg: Any = None, timeout: float = 30_000
    ) -> str:
        """Wait until the text of ``selector`` inside cell ``index`` satisfies the JavaScript
        ``predicate`` ``(text, arg) => bool``; returns that text. The element is looked up afresh at
        every poll: widgets such as ``HTML`` replace their DOM on each update."""
        handle = page.wait_for_function(
            """([cell, selector, predicate, arg]) => {
                const el = cell.querySelector(selector);
                if (!el) return false;
                const text = el.textContent.trim();
                return eval(predicate)(text, arg) ? text : false;
            }""",
            arg=[self.cell(page, index).element_handle(), selector, predicate, arg],
            timeout=timeout,
            polling=100,
        )
        return handle.json_value()

    def outputs(self, page: Any, index: int) -> list[str]:
        """The texts of cell ``index``'s outputs (``.jp-OutputArea-output``)."""
        return self.cell(page, index).locator(".jp-OutputArea-output").all_inner_texts()

    def screenshot(self, page: Any, name: str, locator: Any = None) -> Path:
        """Save ``name.png`` (of ``locator`` when given, else the page) under the artifacts dir."""
        return _shoot(page, name, locator)


@pytest.fixture(scope="session")
def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium "
            "(apt-get update && apt-get install -y chromium); Playwright cannot download a browser here.",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with _jupyter_server(tmp_path_factory, "jupyterlab") as server:
        yield server


@pytest.fixture(scope="session")
def notebook7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Notebook 7 (``jupyter notebook``), set up as ``lab``; notebooks open at ``/notebooks/NAME``."""
    with _jupyter_server(tmp_path_factory, "notebook") as server:
        server.tree = "/notebooks/"
        yield server


@contextlib.contextmanager
def _jupyter_server(tmp_path_factory: pytest.TempPathFactory, app: str) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp(app)
    root = base / "root"
    dirs = {
        "JUPYTER_CONFIG_DIR": base / "config",
        "JUPYTER_DATA_DIR": base / "data",
        "JUPYTER_RUNTIME_DIR": base / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": base / "settings",
        "JUPYTERLAB_WORKSPACES_DIR": base / "workspaces",
        "IPYTHONDIR": base / "ipython",
    }
    for path in (root, *dirs.values()):
        path.mkdir(parents=True, exist_ok=True)
    notification = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
    env.update({k: str(v) for k, v in dirs.items()})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["RESUMABLE_DIR"] = str(base / "checkpoints")
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    use_this_checkouts_extensions(base, env)

    port, token = _free_port(), secrets.token_hex(16)
    log = base / "jupyterlab.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", app, "--allow-root", "--no-browser",
                "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                "--LanguageServerManager.autodetect=False",
            ],
            env=env, cwd=root, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    server = Lab(root, port, token, proc, log)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{server.log_tail()}", pytrace=False)
            try:
                server.api("/api/status")
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab not up in {SERVER_START_TIMEOUT:.0f} s:\n{server.log_tail()}")
                time.sleep(0.1)  # polling interval for the server to answer, not a wait for a race
        yield server
    finally:
        _stop_server(server)


def use_this_checkouts_extensions(base: Path, env: dict[str, str]) -> None:
    """The server extension and the built JupyterLab extension of this checkout, whatever the venv
    has installed (as the kernels import this checkout's package): the server extension enabled in
    the temp config dir, the JupyterLab extension's build linked first on ``JUPYTER_PATH``."""
    built = REPO / "resumable_magic" / "labextension"
    if not (built / "package.json").exists():
        pytest.fail(
            f"The JupyterLab extension is not built ({built} is missing): run "
            "`npm ci && npm run build` in labextension/ (bash .ci/run does).",
            pytrace=False,
        )
    config = {"ServerApp": {"jpserver_extensions": {"resumable_magic.server": True}}}
    (Path(env["JUPYTER_CONFIG_DIR"]) / "jupyter_server_config.json").write_text(json.dumps(config))
    labextensions = base / "jupyter-path" / "labextensions"
    labextensions.mkdir(parents=True)
    (labextensions / "resumable-magic").symlink_to(built, target_is_directory=True)
    env["JUPYTER_PATH"] = str(base / "jupyter-path")


def _stop_server(server: Lab) -> None:
    proc = server.proc
    if proc.poll() is None:
        server.shutdown_kernels()
    descendants = _children(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    # Kernels run in their own sessions: make sure none outlives the server.
    for pid in descendants:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Chromium's crash reporter and caches go under XDG dirs: keep them out of the home directory too.
    home = tmp_path_factory.mktemp("chromium")
    env = {**os.environ, "XDG_CONFIG_HOME": str(home / "config"), "XDG_CACHE_HOME": str(home / "cache")}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS, env=env
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any, lab: Lab) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        if errors:
            print("page errors:", *errors, sep="\n  ")
        context.close()
        # Each test gets fresh kernels: shut down whatever the last one left running.
        lab.shutdown_kernels()
