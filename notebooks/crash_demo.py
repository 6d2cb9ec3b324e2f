"""The main demo: run the quick-start notebook headless, SIGKILL its kernel mid-loop, run it again.

    bash .ci/run demo        # sets everything up from nothing, then runs this

The second run resumes from the last checkpoint (its banner says from where, and what is redone)
and the notebook's own check cell compares the result with an uninterrupted computation, bit for
bit. The executed notebook is saved to ci-artifacts/quickstart-resumed.ipynb. Exit status 0 only if
the run was really killed, really resumed, and the results match.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
from jupyter_client import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

HERE = Path(__file__).resolve().parent
ARTIFACTS = Path(os.environ.get("RESUMABLE_ARTIFACTS", HERE.parent / "ci-artifacts"))


def newest_checkpoint(run_dir: Path) -> tuple[int, float]:
    """(position, time written) of the newest checkpoint; (-1, 0) when there is none."""
    newest = (-1, 0.0)
    for path in run_dir.glob("manifest.*.json"):
        with contextlib.suppress(OSError, ValueError):  # a manifest being replaced right now
            record = json.loads(path.read_text())
            newest = max(newest, (record["position"], record["created"]))
    return newest


def cell_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        text = output.get("text") or output.get("data", {}).get("text/plain") or ""
        parts.append(text if isinstance(text, str) else "".join(text))
        if output.get("output_type") == "error":
            parts.append(f"{output['ename']}: {output['evalue']}")
    return "".join(parts).rstrip()


def client_for(nb: nbformat.NotebookNode, workdir: Path) -> NotebookClient:
    # ipc transport: no TCP ports, no "running over TCP without encryption" warning.
    # The socket path must stay under ~107 bytes: a short temp dir, not the work dir.
    km = KernelManager(
        kernel_name="python3", transport="ipc", ip=str(Path(tempfile.mkdtemp(prefix="rd-")) / "k")
    )
    return NotebookClient(nb, km=km, timeout=600, resources={"metadata": {"path": str(workdir)}})


def main() -> int:
    workdir = ARTIFACTS / "demo"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    notebook = workdir / "quickstart.ipynb"
    shutil.copy(HERE / "quickstart.ipynb", notebook)
    os.environ.pop("RESUMABLE_DIR", None)  # checkpoints go to .resumable beside the notebook
    run_dir = workdir / ".resumable" / "quickstart"

    print(f"1. Running {notebook.name} in a headless kernel; it will be killed mid-loop.")
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(workdir)}}
    )
    killed_at = -1
    with client.setup_kernel():
        pid = client.km.provisioner.process.pid
        stop = threading.Event()

        def kill_mid_loop() -> None:
            nonlocal killed_at
            while not stop.wait(0.02):
                position, written = newest_checkpoint(run_dir)
                try:
                    reached = json.loads((run_dir / "owner.json").read_text())["position"]
                except (OSError, ValueError, KeyError):
                    reached = -1
                # Crash with work done past the newest checkpoint, as a real crash would, and well
                # before the next one is due (--every 1s), so the checkpoint read here is the last.
                if position >= 1000 and reached > position and 0.4 < time.time() - written < 0.8:
                    killed_at = position
                    os.kill(pid, signal.SIGKILL)
                    return

        killer = threading.Thread(target=kill_mid_loop, daemon=True)
        killer.start()
        try:
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    client.execute_cell(cell, index)
        except DeadKernelError:
            print(
                f"   Kernel killed with SIGKILL (newest checkpoint then: iteration {killed_at:,}; work past it is lost)."
            )
        finally:
            stop.set()
    if killed_at < 0:
        print("   The loop finished before the kernel could be killed: nothing was demonstrated.")
        return 1

    print("2. Restarting: a fresh kernel runs the same notebook again.")
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(workdir)}}
    ).execute()
    nbformat.write(nb, ARTIFACTS / "quickstart-resumed.ipynb")
    outputs = [cell_text(c) for c in nb.cells if c.cell_type == "code"]
    resumed = next((o for o in outputs if "Resumed" in o), "")
    check = next((o for o in outputs if "results identical" in o), "")
    print("   The resumable cell said:\n      " + resumed.replace("\n", "\n      "))
    print("   The check cell said:\n      " + check.replace("\n", "\n      "))
    print(f"   Executed notebook: {ARTIFACTS / 'quickstart-resumed.ipynb'}")
    ok = "Resumed total, results from the checkpoint" in resumed and check.count("True") == 3
    print("3. " + ("OK: killed, resumed, and identical to an uninterrupted run." if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
