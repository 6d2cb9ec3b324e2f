"""Helpers of the `resumable run` tests: notebooks built with nbformat, the supervisor as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
from kernels import REPO_ROOT, wait_for

from resumable_magic.store.catalog import list_runs

__all__ = ["Supervisor", "loop_notebook", "runs", "write_notebook"]


def write_notebook(path: Path, cells: list[tuple[str, str] | tuple[str, str, list[str]]]) -> Path:
    """A notebook of code cells ``(id, source[, tags])``, with the venv's kernel."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for cell_id, source, *tags in cells:
        cell = nbformat.v4.new_code_cell(source)
        cell.id = cell_id
        if tags:
            cell.metadata["tags"] = tags[0]
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


LOOP = """\
%%resumable total values --every 1it
import random, time
total, values = 0.0, []
for i in range(n):
    x = random.random() * i
    total += x
    values.append(x)
    time.sleep(pause)
"""


def loop_notebook(path: Path, n: int = 40, pause: float = 0.05, extra: str = "") -> Path:
    """Setup (seeded RNG), one resumable loop, then a cell that writes the result beside the notebook."""
    return write_notebook(
        path,
        [
            ("load", "%load_ext resumable_magic"),
            ("params", f"n = {n}\npause = {pause}", ["parameters"]),
            ("seed", "import random\nrandom.seed(7)"),
            ("loop", extra + LOOP),
            ("save", "import json\njson.dump({'total': total, 'values': values}, open('result.json', 'w'))"),
        ],
    )


def uninterrupted(n: int) -> dict[str, Any]:
    """The loop's result without any crash, computed here."""
    import random

    rng = random.Random(7)
    values = [rng.random() * i for i in range(n)]
    total = 0.0
    for x in values:
        total += x
    return {"total": total, "values": values}


def runs(folder: Path) -> dict[str, Any]:
    """The runs under a checkpoint folder by key (``{}`` when there is none yet)."""
    return {r.key: r for r in list_runs(folder)} if folder.is_dir() else {}


def position(folder: Path) -> int:
    return max((r.position or 0 for r in runs(folder).values()), default=0)


class Supervisor:
    """``python -m resumable_magic run ARGS`` as a real process, with this worktree on its path."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RESUMABLE_")}
        environment.pop("JPY_SESSION_NAME", None)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
        )
        environment["IPYTHONDIR"] = str(cwd / ".ipython")
        environment.update(env or {})
        self.stderr_path = cwd / f"supervisor-{len(list(cwd.glob('supervisor-*')))}.err"
        self.stderr = open(self.stderr_path, "wb")  # noqa: SIM115  (closed by wait() or __exit__)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "resumable_magic", "run", *args],
            cwd=cwd,
            env=environment,
            stdout=self.stderr,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.stderr.close()

    def output(self) -> str:
        return self.stderr_path.read_text()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.process.send_signal(sig)

    def child_pid(self, report: Path, other_than: tuple[int, ...] = (), timeout: float = 60) -> int:
        """The pid of the kernel or script the supervisor runs now (from its report)."""

        def current() -> int | None:
            try:
                pid = json.loads(report.read_text()).get("child_pid")
            except (OSError, ValueError):
                return None
            return pid if isinstance(pid, int) and pid not in other_than else None

        return wait_for(current, timeout=timeout, message=f"no child in {report}:\n{self._tail()}")

    def _tail(self) -> str:
        self.stderr.flush()
        return self.output()[-3000:]

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stderr.close()
