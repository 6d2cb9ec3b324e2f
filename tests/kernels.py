"""Real IPython kernels for tests, driven through jupyter_client.

A small harness that starts a kernel of *this* interpreter (the venv the tests
run from), runs cells in it, collects their outputs, and can kill, interrupt
and restart it. It never hangs on a dead kernel: every wait polls
``KernelManager.is_alive()`` and raises :class:`KernelDied` (with the outputs
received so far) when the kernel process is gone.

Typical use::

    from kernels import start_kernel

    k = start_kernel(tmp_path)
    r = k.execute("print(1 + 1)")
    assert r.stdout == "2\\n"
    msg_id = k.execute_async("import time\\nwhile True: time.sleep(0.01)")
    k.wait_for(lambda: some_file.exists(), timeout=10)
    k.kill()                                  # SIGKILL, returns once the process is gone
    k.restart(env={"SOME_VAR": None})         # fresh kernel, same cwd, env var removed
    k.shutdown()

or the pytest fixtures ``kernel`` and ``kernel_factory`` (imported into
``tests/conftest.py``), which always clean up.

Notes
-----
- Transport is ``ipc`` with socket files in a private temp dir (no TCP ports, no
  "running over TCP without encryption" warning).
- The kernel's own stdout/stderr (startup chatter, C-level prints, crash output)
  goes to a log file, readable with :meth:`KernelHandle.log`; it is quoted in
  :class:`KernelDied` messages.
- The environment is ``os.environ`` plus the caller's extras, except that
  ``PYTHONHASHSEED``, ``JPY_SESSION_NAME`` and every ``RESUMABLE_*`` variable of
  the test process are *not* inherited (pass them explicitly to set them); a
  value of ``None`` in the extras removes a variable. The repository root is
  prepended to ``PYTHONPATH`` so ``resumable_magic`` imports without being
  installed, and ``IPYTHONDIR`` points to a private directory (no user profile,
  no shared history database) unless the caller sets it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
from jupyter_client import KernelManager

from resumable_magic.lease.procs import pid_alive

__all__ = [
    "DEFAULT_TIMEOUT",
    "REPO_ROOT",
    "CellError",
    "ErrorInfo",
    "KernelDied",
    "KernelError",
    "KernelHandle",
    "KernelTimeout",
    "Result",
    "kernel",
    "kernel_factory",
    "live_kernel_pids",
    "start_kernel",
    "strip_ansi",
    "wait_for",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT = 60.0
STARTUP_TIMEOUT = 60.0

# Environment variables of the test process that a kernel does not inherit unless asked.
_NOT_INHERITED_PREFIXES = ("RESUMABLE_",)
_NOT_INHERITED = ("PYTHONHASHSEED", "JPY_SESSION_NAME")

_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")

T = TypeVar("T")


def strip_ansi(text: str) -> str:
    """Remove ANSI colour/cursor escape sequences."""
    return _ANSI_RE.sub("", text)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class KernelError(RuntimeError):
    """Base class of the harness's errors."""


class KernelDied(KernelError):
    """The kernel process ended while we were waiting for it.

    ``result`` holds what the cell produced before the death (may be ``None`` when
    no cell was running), ``returncode`` the process's exit status (negative: killed
    by that signal).
    """

    def __init__(self, message: str, *, pid: int | None, returncode: int | None, result: Result | None):
        super().__init__(message)
        self.pid = pid
        self.returncode = returncode
        self.result = result

    @property
    def signal(self) -> int | None:
        rc = self.returncode
        return -rc if rc is not None and rc < 0 else None


class KernelTimeout(KernelError, TimeoutError):
    """A cell (or a wait) did not finish in time; the kernel is still alive."""

    def __init__(self, message: str, *, result: Result | None = None):
        super().__init__(message)
        self.result = result


class CellError(KernelError, AssertionError):
    """A cell raised (``execute(..., check=True)`` / ``Result.check()``)."""

    def __init__(self, result: Result):
        super().__init__(f"cell failed:\n{result.describe()}")
        self.result = result


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass
class ErrorInfo:
    ename: str
    evalue: str
    traceback: str  # the traceback lines joined with newlines, ANSI codes stripped

    def __str__(self) -> str:
        return f"{self.ename}: {self.evalue}"


@dataclass
class Result:
    """What one ``execute_request`` produced.

    ``stdout`` and ``stderr`` are the concatenated stream texts (ANSI stripped);
    ``results`` the ``text/plain`` of every ``execute_result`` and ``display_data``
    (and ``update_display_data``) in order; ``execute_result`` the ``text/plain`` of
    the cell's value, if any; ``status`` the ``execute_reply`` status (``"ok"``,
    ``"error"``, ``"aborted"``, or ``None`` if no reply arrived).
    """

    msg_id: str
    code: str = ""
    status: str | None = None
    stdout: str = ""
    stderr: str = ""
    error: ErrorInfo | None = None
    results: list[str] = field(default_factory=list)
    execute_result: str | None = None
    displays: list[dict[str, Any]] = field(default_factory=list)
    execution_count: int | None = None
    reply: dict[str, Any] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)  # raw iopub {msg_type, content}
    busy: bool = False
    idle: bool = False

    @property
    def done(self) -> bool:
        return self.idle and self.reply is not None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.error is None

    @property
    def text(self) -> str:
        """stdout followed by the text/plain results: roughly what a user sees."""
        return self.stdout + "".join(r if r.endswith("\n") else r + "\n" for r in self.results)

    @property
    def output(self) -> str:
        """Everything textual: stdout, stderr, results and the error, for `in` checks."""
        parts = [self.stdout, self.stderr, *self.results]
        if self.error is not None:
            parts.append(self.error.traceback or str(self.error))
        return "\n".join(p for p in parts if p)

    def check(self) -> Result:
        """Raise :class:`CellError` unless the cell succeeded; return self."""
        if not self.ok:
            raise CellError(self)
        return self

    def describe(self, limit: int = 4000) -> str:
        def cut(s: str) -> str:
            return s if len(s) <= limit else "..." + s[-limit:]

        lines = [f"status={self.status!r} msg_id={self.msg_id}"]
        if self.stdout:
            lines.append("--- stdout ---\n" + cut(self.stdout))
        if self.stderr:
            lines.append("--- stderr ---\n" + cut(self.stderr))
        if self.results:
            lines.append("--- results ---\n" + cut("\n".join(self.results)))
        if self.error is not None:
            lines.append("--- error ---\n" + cut(self.error.traceback or str(self.error)))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()

    # -- accumulation -------------------------------------------------------

    def _add_iopub(self, msg: dict[str, Any]) -> None:
        mtype = msg["header"]["msg_type"]
        content = msg.get("content", {})
        self.messages.append({"msg_type": mtype, "content": content})
        if mtype == "status":
            state = content.get("execution_state")
            if state == "busy":
                self.busy = True
            elif state == "idle":
                self.idle = True
        elif mtype == "stream":
            text = strip_ansi(content.get("text", ""))
            if content.get("name") == "stderr":
                self.stderr += text
            else:
                self.stdout += text
        elif mtype in ("execute_result", "display_data", "update_display_data"):
            self.displays.append({"msg_type": mtype, **content})
            plain = content.get("data", {}).get("text/plain")
            if plain is not None:
                plain = strip_ansi(plain)
                self.results.append(plain)
                if mtype == "execute_result":
                    self.execute_result = plain
        elif mtype == "error":
            self.error = ErrorInfo(
                ename=content.get("ename", ""),
                evalue=content.get("evalue", ""),
                traceback=strip_ansi("\n".join(content.get("traceback", []))),
            )
        elif mtype == "execute_input":
            self.execution_count = content.get("execution_count", self.execution_count)

    def _add_reply(self, msg: dict[str, Any]) -> None:
        content = msg.get("content", {})
        self.reply = content
        self.status = content.get("status")
        self.execution_count = content.get("execution_count", self.execution_count)
        if self.status == "error" and self.error is None:
            self.error = ErrorInfo(
                ename=content.get("ename", ""),
                evalue=content.get("evalue", ""),
                traceback=strip_ansi("\n".join(content.get("traceback", []))),
            )


# ---------------------------------------------------------------------------
# Polling
# ---------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.02,
    message: str | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Raises ``TimeoutError`` after ``timeout`` seconds (the predicate is always
    evaluated once more at the deadline).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            value = predicate()
            if value:
                return value
            raise TimeoutError(message or f"condition not met within {timeout:g} s: {predicate!r}")
        time.sleep(interval)


# ---------------------------------------------------------------------------
# The kernel handle
# ---------------------------------------------------------------------------

_LIVE_HANDLES: set[KernelHandle] = set()
_ALL_PIDS: list[int] = []


def live_kernel_pids() -> list[int]:
    """Pids of kernels started by this process (any handle, any restart) that still run."""
    return [pid for pid in _ALL_PIDS if pid_alive(pid)]


class KernelHandle:
    """One kernel (and its successors after :meth:`restart`) in a fixed cwd/env."""

    def __init__(
        self,
        cwd: str | os.PathLike[str],
        env: Mapping[str, str | None] | None = None,
        *,
        pythonpath: tuple[str | os.PathLike[str], ...] = (REPO_ROOT,),
        startup_timeout: float = STARTUP_TIMEOUT,
        kernel_name: str = "python3",
    ):
        self.cwd = Path(cwd)
        self.env_extra: dict[str, str | None] = dict(env or {})
        self.pythonpath = tuple(str(p) for p in pythonpath)
        self.startup_timeout = startup_timeout
        self.kernel_name = kernel_name
        # Short path: ipc socket paths must stay under ~107 bytes.
        self.tmpdir = Path(tempfile.mkdtemp(prefix="rk-"))
        self.log_path = self.tmpdir / "kernel.log"
        self.generation = 0
        self.pids: list[int] = []
        self.km: KernelManager | None = None
        self.kc: Any = None
        self._pending: dict[str, Result] = {}
        self._poller: zmq.Poller | None = None
        self._last_returncode: int | None = None
        self._closed = False
        _LIVE_HANDLES.add(self)

    # -- environment ----------------------------------------------------------

    def build_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _NOT_INHERITED and not k.startswith(_NOT_INHERITED_PREFIXES)
        }
        paths = [*self.pythonpath]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        env["IPYTHONDIR"] = str(self.tmpdir / "ipython")
        for k, v in self.env_extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = str(v)
        return env

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> KernelHandle:
        if self._closed:
            raise KernelError("this KernelHandle was shut down")
        if self.km is not None:
            raise KernelError("kernel already started; use restart()")
        self.generation += 1
        gen = self.generation
        km = KernelManager(
            kernel_name=self.kernel_name,
            transport="ipc",
            ip=str(self.tmpdir / f"k{gen}"),
        )
        km.connection_file = str(self.tmpdir / f"k{gen}.json")
        spec = km.kernel_spec
        if spec is None:
            raise KernelError(f"no kernelspec {self.kernel_name!r}")
        # Run exactly the interpreter of the test process (the venv's python).
        if spec.argv and spec.argv[0] != sys.executable:
            spec.argv = [sys.executable, *spec.argv[1:]]
        env = self.build_env()
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"=== kernel generation {gen} ===\n".encode())
            log.flush()
            km.start_kernel(cwd=str(self.cwd), env=env, stdout=log, stderr=subprocess.STDOUT)
        self.km = km
        pid = km.provisioner.process.pid
        self.pids.append(pid)
        _ALL_PIDS.append(pid)
        kc = km.client()
        kc.start_channels()
        self.kc = kc
        try:
            kc.wait_for_ready(timeout=self.startup_timeout)
        except RuntimeError as e:
            log_tail = self.log_tail()
            self._teardown_kernel()
            raise KernelError(f"kernel did not start: {e}\n--- kernel log ---\n{log_tail}") from e
        poller = zmq.Poller()
        poller.register(kc.shell_channel.socket, zmq.POLLIN)
        poller.register(kc.iopub_channel.socket, zmq.POLLIN)
        self._poller = poller
        self._pending.clear()
        return self

    @property
    def pid(self) -> int:
        if self.km is None or self.km.provisioner is None or self.km.provisioner.process is None:
            raise KernelError("no kernel process")
        return self.km.provisioner.process.pid

    @property
    def alive(self) -> bool:
        return self._is_alive()

    def _is_alive(self) -> bool:
        km = self.km
        if km is None:
            return False
        try:
            alive = km.is_alive()
        except Exception:
            alive = False
        if not alive:
            prov = km.provisioner
            proc = getattr(prov, "process", None) if prov is not None else None
            if proc is not None and proc.returncode is not None:
                self._last_returncode = proc.returncode
        return alive

    @property
    def returncode(self) -> int | None:
        """Exit status of the last kernel process once it ended (negative: signal)."""
        self._is_alive()
        return self._last_returncode

    def send_signal(self, sig: int, group: bool = False) -> None:
        """Send ``sig`` to the kernel process (or its whole process group) and return."""
        pid = self.pid
        if group:
            os.killpg(os.getpgid(pid), sig)
        else:
            os.kill(pid, sig)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 15.0, group: bool = False) -> None:
        """Send ``sig`` to the kernel and wait until the process is gone."""
        if not self._is_alive():
            return
        with contextlib.suppress(ProcessLookupError):
            self.send_signal(sig, group=group)
        wait_for(
            lambda: not self._is_alive(),
            timeout=timeout,
            interval=0.01,
            message=f"kernel pid {self.pids[-1]} still alive {timeout:g} s after signal {sig}",
        )

    def interrupt(self) -> None:
        """Interrupt the kernel the way the stop button does (SIGINT to the process group)."""
        if self.km is None:
            raise KernelError("no kernel")
        self.km.interrupt_kernel()

    def restart(self, env: Mapping[str, str | None] | None = None) -> KernelHandle:
        """SIGKILL the kernel if it is alive, then start a fresh one in the same cwd.

        ``env`` updates the extras given at start (``None`` removes a variable).
        """
        self._teardown_kernel()
        if env:
            self.env_extra.update(env)
        return self.start()

    def shutdown(self, now: bool = True) -> None:
        """Stop the kernel (SIGKILL of its process group when ``now``, else a polite
        shutdown request) and remove the harness's temp files. Idempotent."""
        if self._closed:
            return
        if not now and self._is_alive() and self.km is not None:
            with contextlib.suppress(Exception):
                self.km.shutdown_kernel(now=False)
        self._teardown_kernel()
        self._closed = True
        _LIVE_HANDLES.discard(self)
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    close = shutdown

    def _teardown_kernel(self) -> None:
        km, kc = self.km, self.kc
        if km is None:
            return
        prov = km.provisioner
        proc = getattr(prov, "process", None) if prov is not None else None
        pgid = getattr(prov, "pgid", None) if prov is not None else None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)
        # Children of the kernel (if any) share its process group (session).
        if pgid:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.wait(timeout=15)
            if proc.returncode is not None:
                self._last_returncode = proc.returncode
        if kc is not None:
            with contextlib.suppress(Exception):
                kc.stop_channels()
        with contextlib.suppress(Exception):
            km.cleanup_resources()
        with contextlib.suppress(Exception):
            if prov is not None:
                prov.process = None
        self.km = None
        self.kc = None
        self._poller = None

    def __enter__(self) -> KernelHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("alive" if self._is_alive() else "dead")
        return f"<KernelHandle gen={self.generation} pids={self.pids} {state} cwd={self.cwd}>"

    # -- logs -----------------------------------------------------------------

    def log(self) -> str:
        """The kernel processes' own stdout/stderr (all generations)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 2000) -> str:
        text = self.log()
        return text[-n:]

    # -- messaging ------------------------------------------------------------

    def execute_async(
        self,
        code: str,
        cell_id: str | None = None,
        *,
        silent: bool = False,
        store_history: bool = True,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Send an ``execute_request`` and return its msg_id at once."""
        if self.kc is None:
            raise KernelError("no kernel running (start() or restart() first)")
        md: dict[str, Any] = dict(metadata or {})
        if cell_id is not None:
            md["cellId"] = cell_id
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        msg = self.kc.session.msg("execute_request", content, metadata=md)
        msg_id = msg["header"]["msg_id"]
        self._pending[msg_id] = Result(msg_id=msg_id, code=code)
        self.kc.shell_channel.send(msg)
        return msg_id

    def execute(
        self,
        code: str,
        cell_id: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = False,
        **kw: Any,
    ) -> Result:
        """Run ``code`` and return its :class:`Result`.

        Raises :class:`KernelDied` if the kernel dies before the cell finishes,
        :class:`KernelTimeout` after ``timeout`` seconds, and :class:`CellError`
        if ``check`` and the cell raised.
        """
        msg_id = self.execute_async(code, cell_id, **kw)
        result = self.result(msg_id, timeout=timeout)
        if check:
            result.check()
        return result

    def run(self, code: str, cell_id: str | None = None, **kw: Any) -> Result:
        """``execute(..., check=True)``."""
        return self.execute(code, cell_id, check=True, **kw)

    def eval(self, expr: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """The ``text/plain`` repr of ``expr`` evaluated in the kernel (raises on error)."""
        r = self.execute(expr, timeout=timeout, check=True, store_history=False)
        if r.execute_result is None:
            raise KernelError(f"{expr!r} produced no value:\n{r.describe()}")
        return r.execute_result

    def partial(self, msg_id: str) -> Result:
        """The outputs received so far for ``msg_id`` (pumps pending messages first)."""
        self._pump(0)
        return self._pending[msg_id]

    def result(self, msg_id: str, timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Wait until the request ``msg_id`` is finished (reply received and kernel idle)."""
        res = self._pending.get(msg_id)
        if res is None:
            raise KernelError(f"unknown msg_id {msg_id} (already collected, or sent before a restart)")
        deadline = time.monotonic() + timeout
        reply_seen_at: float | None = None
        last_alive_check = 0.0
        while not res.done:
            now = time.monotonic()
            if res.reply is not None and reply_seen_at is None:
                reply_seen_at = now
            # ipykernel publishes idle right after the reply; never wait forever on a lost idle
            if reply_seen_at is not None and now - reply_seen_at > 5.0:
                res.idle = True
                break
            if now >= deadline:
                raise KernelTimeout(
                    f"cell did not finish within {timeout:g} s (kernel alive={self._is_alive()})\n"
                    f"{res.describe()}",
                    result=res,
                )
            got = self._pump(min(0.05, max(0.0, deadline - now)))
            if res.done:
                break
            if not got or time.monotonic() - last_alive_check > 0.25:
                last_alive_check = time.monotonic()
                if not self._is_alive():
                    self._drain()
                    if res.done:
                        break
                    raise self._died(res)
        self._pending.pop(msg_id, None)
        return res

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = 30.0,
        message: str | None = None,
        *,
        allow_death: bool = False,
    ) -> T:
        """Poll ``predicate`` while pumping kernel messages; return its truthy value.

        Raises :class:`KernelDied` when the kernel dies first (unless
        ``allow_death``, then only the predicate counts) and ``TimeoutError``.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if not allow_death and not self._is_alive():
                self._drain()
                value = predicate()
                if value:
                    return value
                running = next(iter(self._pending.values()), None)
                raise self._died(running, waiting_for=message or repr(predicate))
            if time.monotonic() >= deadline:
                value = predicate()
                if value:
                    return value
                raise TimeoutError(message or f"condition not met within {timeout:g} s: {predicate!r}")
            if self._poller is not None:
                self._pump(0.02)
            else:
                time.sleep(0.02)

    def wait_for_output(self, msg_id: str, text: str, timeout: float = 30.0) -> Result:
        """Wait until the running cell ``msg_id`` has printed ``text`` (stdout or stderr)."""

        def seen() -> Result | None:
            res = self._pending[msg_id]
            return res if (text in res.stdout or text in res.stderr) else None

        return self.wait_for(seen, timeout=timeout, message=f"output {text!r} of {msg_id}")

    def _pump(self, timeout: float) -> int:
        """Receive and dispatch every ready message (waiting up to ``timeout`` s for
        the first one). Returns the number of messages handled."""
        if self._poller is None or self.kc is None:
            return 0
        n = 0
        wait_ms = int(timeout * 1000)
        while True:
            events = dict(self._poller.poll(wait_ms))
            if not events:
                return n
            wait_ms = 0
            for channel in (self.kc.iopub_channel, self.kc.shell_channel):
                if channel.socket in events:
                    try:
                        msg = channel.get_msg(timeout=0)
                    except Exception:  # Empty, or a message we cannot parse
                        continue
                    n += 1
                    self._dispatch(msg, shell=channel is self.kc.shell_channel)
            if n > 10_000:  # let the caller check its clock now and then
                return n

    def _drain(self, grace: float = 0.1) -> None:
        """Read what is still queued (after a death) for up to ``grace`` s of silence."""
        while self._pump(grace):
            pass

    def _dispatch(self, msg: dict[str, Any], shell: bool) -> None:
        parent_id = (msg.get("parent_header") or {}).get("msg_id")
        res = self._pending.get(parent_id) if parent_id else None
        if res is None:
            return  # startup chatter, kernel_info replies, other requests
        if shell:
            if msg["header"]["msg_type"] == "execute_reply":
                res._add_reply(msg)
        else:
            res._add_iopub(msg)

    def _died(self, res: Result | None, waiting_for: str | None = None) -> KernelDied:
        pid = self.pids[-1] if self.pids else None
        rc = self._last_returncode
        how = f"killed by {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exit status {rc}"
        what = f"while waiting for {waiting_for}" if waiting_for else "while running a cell"
        parts = [f"kernel pid {pid} died ({how}) {what}"]
        if res is not None:
            parts.append(res.describe(1500))
        tail = self.log_tail(1500).strip()
        if tail:
            parts.append("--- kernel log (tail) ---\n" + tail)
        return KernelDied("\n".join(parts), pid=pid, returncode=rc, result=res)


def start_kernel(
    cwd: str | os.PathLike[str],
    env: Mapping[str, str | None] | None = None,
    **kw: Any,
) -> KernelHandle:
    """Start a kernel of this interpreter in ``cwd`` (see :class:`KernelHandle`)."""
    handle = KernelHandle(cwd, env, **kw)
    try:
        return handle.start()
    except BaseException:
        handle.shutdown()
        raise


@atexit.register
def _reap_all() -> None:
    for handle in list(_LIVE_HANDLES):
        with contextlib.suppress(Exception):
            handle.shutdown()


# ---------------------------------------------------------------------------
# pytest fixtures (imported into tests/conftest.py)
# ---------------------------------------------------------------------------


@pytest.fixture
def kernel_factory(tmp_path: Path) -> Iterator[Callable[..., KernelHandle]]:
    """``kernel_factory(cwd=None, env=None, **kw)`` starts kernels that are all shut
    down after the test (cwd defaults to ``tmp_path``)."""
    handles: list[KernelHandle] = []

    def make(
        cwd: str | os.PathLike[str] | None = None, env: Mapping[str, str | None] | None = None, **kw: Any
    ):
        h = start_kernel(tmp_path if cwd is None else cwd, env, **kw)
        handles.append(h)
        return h

    yield make
    pids = [pid for h in handles for pid in h.pids]
    for h in handles:
        h.shutdown()
    leftover = [pid for pid in pids if pid_alive(pid)]
    assert not leftover, f"kernel processes still alive after shutdown: {leftover}"


@pytest.fixture
def kernel(kernel_factory: Callable[..., KernelHandle]) -> KernelHandle:
    """A fresh kernel with cwd ``tmp_path``, shut down after the test."""
    return kernel_factory()
