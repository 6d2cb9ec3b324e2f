"""One attempt at a notebook: a new kernel executes it from the top, headless, with nbclient.

The kernel sees what JupyterLab gives it, so a ``%%resumable`` cell gets the same key either way
(``<notebook>/cell-<id>``, :func:`resumable_magic.frontends.magic.derive_key`) and each can resume what
the other began: every ``execute_request`` carries the cell's id in its metadata (``cellId``, which
nbclient does not send), the kernel starts with ``JPY_SESSION_NAME`` set to the notebook's path (as
jupyter_server sets it) and in the notebook's folder. The kernel runs in a process group of its own
(jupyter_client starts it in a new session), so a Ctrl-C in the terminal reaches only the supervisor,
which passes it on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_client.asynchronous.client import AsyncKernelClient
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

from resumable_magic.errors import SupervisorUsageError
from resumable_magic.supervise.restarts import Ended

__all__ = ["CellIdKernelClient", "NotebookAttempt", "kernel_name", "read_notebook"]


def read_notebook(path: Path) -> Any:
    """The notebook at ``path`` as nbformat v4, every cell with an id.

    A notebook saved before nbformat 4.5 has none; its cells get ids from their position, the same in
    every attempt (nbformat's own would be random, and each attempt would get new keys)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    if nb.nbformat_minor < 5:
        nb.nbformat_minor = 5
    for index, cell in enumerate(nb.cells):
        if not cell.get("id"):
            cell["id"] = f"cell{index}"
    return nb


def kernel_name(nb: Any, path: str) -> str:
    """The kernel the notebook asks for (``python3`` when it names none); refused when not installed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    name = str((nb.metadata.get("kernelspec") or {}).get("name") or "python3")
    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise SupervisorUsageError(
            path,
            f"{path} asks for the kernel {name!r}, which is not installed here (see `jupyter kernelspec "
            f"list`): install it, or choose an installed kernel in the notebook and save it",
        ) from None
    return name


class CellIdKernelClient(AsyncKernelClient):
    """A kernel client whose ``execute_request`` carries the cell's id, as JupyterLab's does."""

    cell_id: str | None = None

    def execute(
        self,
        code: str,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool | None = None,
        stop_on_error: bool = True,
    ) -> str:
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": user_expressions or {},
            "allow_stdin": self.allow_stdin if allow_stdin is None else allow_stdin,
            "stop_on_error": stop_on_error,
        }
        metadata = {"cellId": self.cell_id} if self.cell_id else {}
        msg = self.session.msg("execute_request", content, metadata=metadata)
        self.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])


class _Stopped(Exception):
    """The supervisor was asked to stop: no further cell is sent."""


class _Client(NotebookClient):
    """nbclient's client, sending cell ids, keeping the kernel's process, stopping between cells."""

    def __init__(self, nb: Any, attempt: NotebookAttempt, **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self.attempt = attempt

    async def async_start_new_kernel(self, **kwargs: Any) -> None:
        await super().async_start_new_kernel(**kwargs)
        assert self.km is not None and self.km.provisioner is not None
        process = self.km.provisioner.process  # type: ignore[attr-defined]  # LocalProvisioner's Popen
        # nbclient's own handlers shut the kernel down at once: the supervisor's pass the signal on.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self.attempt.on_signal, signum)
        self.attempt.started(process)

    async def async_execute_cell(self, cell: Any, cell_index: int, *args: Any, **kwargs: Any) -> Any:
        if self.attempt.stop_signal is not None:
            raise _Stopped
        assert isinstance(self.kc, CellIdKernelClient)
        self.kc.cell_id = cell.get("id")
        return await super().async_execute_cell(cell, cell_index, *args, **kwargs)


class NotebookAttempt:
    """Execute ``nb`` (a copy is filled with outputs: :attr:`executed`) in a new kernel."""

    what = "kernel"

    def __init__(
        self, nb: Any, path: Path, env: dict[str, str], on_started: Callable[[int], None] = lambda pid: None
    ) -> None:
        import copy

        self.executed = copy.deepcopy(nb)
        self.path, self.env, self.on_started = path, env, on_started
        self.process: Any = None  # the kernel's Popen once it started
        self.stop_signal: int | None = None
        self.on_signal: Callable[[int], None] = self.forward  # the supervisor's, while the kernel runs

    def started(self, process: Any) -> None:
        self.process = process
        if self.stop_signal is not None:  # asked to stop while the kernel was starting
            self.forward(self.stop_signal)
        self.on_started(process.pid)

    def forward(self, signum: int) -> None:
        """Pass a signal the supervisor got to the kernel's process group (from a signal handler)."""
        self.stop_signal = signum
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.process.pid, signum)  # the kernel leads its own session's group

    def run(self) -> Ended:
        """Execute every cell; how the attempt ended."""
        from jupyter_client.manager import AsyncKernelManager

        name = kernel_name(self.executed, str(self.path))
        sockets = tempfile.mkdtemp(prefix="resumable-run-")  # ipc sockets: no TCP ports, no warning
        km = AsyncKernelManager(
            kernel_name=name,
            transport="ipc",
            ip=os.path.join(sockets, "kernel"),
            client_class="resumable_magic.supervise.notebook.CellIdKernelClient",
        )
        client = _Client(
            self.executed,
            self,
            km=km,
            kernel_name=name,
            timeout=None,  # a cell may run for days
            resources={"metadata": {"path": str(self.path.parent)}},
        )
        try:
            client.execute(env=self.env)
        except DeadKernelError:
            return Ended("interrupted" if self.stop_signal else "died", self._pid(), self._returncode())
        except CellExecutionError as exc:
            how = "interrupted" if self.stop_signal else "error"
            return Ended(how, self._pid(), error=f"{exc.ename}: {exc.evalue}".strip().rstrip(":"))
        except _Stopped:
            return Ended("interrupted", self._pid())
        finally:
            shutil.rmtree(sockets, ignore_errors=True)
        return Ended("interrupted" if self.stop_signal else "finished", self._pid())

    def _pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _returncode(self) -> int | None:
        if self.process is None:
            return None
        try:
            return int(self.process.wait(timeout=10))
        except Exception:  # still running after shutdown: reported as unknown
            return None
