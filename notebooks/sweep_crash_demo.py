"""A parameter sweep that survives a crash: kill the kernel mid-sweep, run the notebook again.

    .venv/bin/python notebooks/sweep_crash_demo.py [--out DIR]

1. Runs ``sweep_plain_api.ipynb`` (one ``Resumable`` run per parameter set, in a plain ``for`` loop)
   headless, slowed down a little by an injected parameter, and SIGKILLs its kernel while the second
   parameter set is in progress, past its first checkpoint.
2. Prints ``resumable status`` for the checkpoint folder: the first set finished, the second crashed.
3. Runs the same notebook again in a fresh kernel. The finished set is replayed (nothing recomputed),
   the crashed one resumes from its last checkpoint, the others run from the start; the notebook's
   check cell compares every set with a plain run.
4. Prints ``resumable status`` again: every set finished.

The executed notebook, the checkpoints and a JSON report (``sweep-crash-report.json``) go to DIR
(default: a new temporary folder, or ``$RESUMABLE_ARTIFACTS`` when set). Exit status 0 only if the
kernel was really killed mid-set, the second run replayed exactly the sets finished before the kill,
resumed exactly the set in progress from the checkpoint on disk, and every set matches a plain run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook
from traitlets.config import Config

from resumable_magic import ResumableError
from resumable_magic.store.catalog import find_run

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "sweep_plain_api.ipynb"
# Injected into the notebook's `parameters` cell, as papermill does: 4 parameter sets of 400 steps,
# each step slowed to >= 2 ms, so a set takes about a second and the kill lands inside the second one.
PARAMETERS = {"LRS": [0.01, 0.1], "SEEDS": [0, 1], "STEPS": 400, "PAUSE": 0.002}
FOLDER = "sweep_plain_api"  # the notebook's folder under $RESUMABLE_DIR
SWEEP_CELL = "a1-sweep"  # ids of the notebook's cells
CHECK_CELL = "a1-check"


def keys(parameters: dict[str, Any] = PARAMETERS) -> list[str]:
    """The notebook's run keys, in the order its loop runs them."""
    return [f"sweep/lr={lr},seed={seed}" for lr in parameters["LRS"] for seed in parameters["SEEDS"]]


def cell_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        text = output.get("text") or output.get("data", {}).get("text/plain") or ""
        parts.append(text if isinstance(text, str) else "".join(text))
        if output.get("output_type") == "error":
            parts.append(f"{output['ename']}: {output['evalue']}\n")
    return "".join(parts)


def status(checkpoints: Path, *extra: str) -> str:
    """What ``resumable status --dir CHECKPOINTS`` prints."""
    done = subprocess.run(
        [sys.executable, "-m", "resumable_magic", "status", "--dir", str(checkpoints), *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.rstrip()


class Sweep:
    """The notebook with the demo's parameters injected, executed in kernels over ipc."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.checkpoints = out / "checkpoints" / FOLDER
        self.env = {**os.environ, "RESUMABLE_DIR": str(out / "checkpoints")}
        self.env.pop("JPY_SESSION_NAME", None)
        # ipc transport: no TCP ports, no "running over TCP without encryption" warning. The socket
        # path must stay under ~107 bytes: a short temp dir, not DIR.
        self.sockets = Path(tempfile.mkdtemp(prefix="sd-"))

    def notebook(self) -> nbformat.NotebookNode:
        nb = load_notebook_node(str(NOTEBOOK))  # as papermill reads it (every cell gets its tags list)
        return parameterize_notebook(nb, PARAMETERS, kernel_name="python3", language="python")

    def client(self, nb: nbformat.NotebookNode, attempt: int) -> NotebookClient:
        ipc = Config({"KernelManager": {"transport": "ipc", "ip": str(self.sockets / f"k{attempt}")}})
        return NotebookClient(
            nb,
            kernel_name="python3",
            timeout=600,
            config=ipc,
            record_timing=False,
            resources={"metadata": {"path": str(self.out)}},
        )


def kill_mid_set(sweep: Sweep) -> dict[str, Any]:
    """Run the notebook and SIGKILL its kernel once the first set is finished and the second has a
    checkpoint past iteration 0 and is not finished. Returns what was on disk at the kill."""
    first, target, *_ = keys()
    nb = sweep.notebook()
    client = sweep.client(nb, 1)
    at_kill: dict[str, Any] = {}
    with client.setup_kernel(env=sweep.env):
        pid = client.km.provisioner.process.pid
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.02):
                try:
                    done, running = find_run(sweep.checkpoints, first), find_run(sweep.checkpoints, target)
                except (OSError, ValueError, ResumableError):  # a file replaced while read: look again
                    continue
                if not (done and done.state == "finished" and running and (running.position or 0) > 0):
                    continue
                # Freeze the kernel, then read the disk: what is read now is exactly what the kill leaves.
                os.kill(pid, signal.SIGSTOP)
                try:
                    runs = {key: find_run(sweep.checkpoints, key) for key in keys()}
                    at_kill.update(
                        finished=[k for k, r in runs.items() if r is not None and r.state == "finished"],
                        in_progress=[k for k, r in runs.items() if r is not None and r.state != "finished"],
                        not_started=[k for k, r in runs.items() if r is None],
                        checkpoint=runs[target].position if runs[target] else None,
                    )
                finally:
                    os.kill(pid, signal.SIGKILL)
                return

        killer = threading.Thread(target=watch, daemon=True)
        killer.start()
        try:
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    client.execute_cell(cell, index)
        except DeadKernelError:
            at_kill["killed"] = True
        finally:
            stop.set()
            killer.join()
    return at_kill


def second_run(sweep: Sweep) -> tuple[nbformat.NotebookNode, dict[str, Any]]:
    """Run the notebook again in a fresh kernel; say per key whether it was replayed, resumed or run."""
    nb = sweep.notebook()
    sweep.client(nb, 2).execute(env=sweep.env)
    path = sweep.out / "sweep_plain_api-resumed.ipynb"
    nbformat.write(nb, path)
    cells = {cell.get("id"): cell for cell in nb.cells}
    text = cell_text(cells[SWEEP_CELL])
    # One block of messages per parameter set, each ending with its summary line, in loop order.
    blocks = re.split(r"(?m)^(?:finished|replayed)\b.*\n", text)[: len(keys())]
    what: dict[str, Any] = {"replayed": [], "resumed": {}, "ran": [], "executed": str(path)}
    for key, block in zip(keys(), blocks, strict=True):
        resumed = re.search(r"Resumed w, losses from the checkpoint at iteration ([\d,]+)", block)
        if f"Replayed the finished run {key!r}" in block:
            what["replayed"].append(key)
        elif resumed:
            what["resumed"][key] = int(resumed.group(1).replace(",", ""))
        else:
            what["ran"].append(key)
    what["messages"] = text
    what["check"] = cell_text(cells[CHECK_CELL])
    return nb, what


def run_demo(out: Path, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The whole demo into folder ``out``; returns the report (also written to out/sweep-crash-report.json)."""
    out.mkdir(parents=True, exist_ok=True)
    sweep = Sweep(out)
    report: dict[str, Any] = {
        "parameters": PARAMETERS,
        "keys": keys(),
        "checkpoints": str(sweep.checkpoints),
    }

    log(
        f"1. Running {NOTEBOOK.name} headless ({len(keys())} parameter sets); its kernel will be killed mid-sweep."
    )
    report["kill"] = kill_mid_set(sweep)
    if not report["kill"].get("killed"):
        log("   The sweep finished before the kernel could be killed: nothing was demonstrated.")
        report["ok"] = False
        return report
    kill = report["kill"]
    log(
        f"   Kernel killed with SIGKILL while {', '.join(kill['in_progress'])} was in progress "
        f"(its newest checkpoint: iteration {kill['checkpoint']:,})."
    )
    report["status_after_kill"] = status(sweep.checkpoints)
    report["states_after_kill"] = {
        run["key"]: run["state"] for run in json.loads(status(sweep.checkpoints, "--json"))
    }
    log("2. resumable status --dir " + str(sweep.checkpoints) + "\n" + indent(report["status_after_kill"]))

    log("3. Restarting: a fresh kernel runs the same notebook again.")
    _, report["second_run"] = second_run(sweep)
    second = report["second_run"]
    log("   The sweep cell said:\n" + indent(second["messages"].rstrip()))
    log("   The check cell said:\n" + indent(second["check"].rstrip()))
    report["status"] = status(sweep.checkpoints)
    report["states"] = {run["key"]: run["state"] for run in json.loads(status(sweep.checkpoints, "--json"))}
    log("4. resumable status --dir " + str(sweep.checkpoints) + "\n" + indent(report["status"]))

    checks = {
        "the second run replayed exactly the sets finished before the kill": second["replayed"]
        == kill["finished"]
        and len(kill["finished"]) > 0,
        "it resumed exactly the set in progress, from its checkpoint on disk": second["resumed"]
        == {key: kill["checkpoint"] for key in kill["in_progress"]}
        and len(kill["in_progress"]) == 1,
        "it ran the sets not started from the beginning": second["ran"] == kill["not_started"],
        "every set is identical to a plain run": second["check"].count("identical to a plain run: True")
        == len(keys())
        and "False" not in second["check"],
        "every set is finished": set(report["states"].values()) == {"finished"}
        and len(report["states"]) == len(keys()),
    }
    report["checks"] = checks
    report["ok"] = all(checks.values())
    for name, passed in checks.items():
        log(f"   {'ok  ' if passed else 'FAIL'} {name}")
    (out / "sweep-crash-report.json").write_text(json.dumps(report, indent=1))
    return report


def indent(text: str) -> str:
    return "      " + text.replace("\n", "\n      ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=os.environ.get("RESUMABLE_ARTIFACTS"),
        help="folder for the executed notebook, the checkpoints and the report (default: a new temp dir)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sweep-crash-"))
    report = run_demo(out, log=print)
    print(f"   Executed notebook, checkpoints and report in {out}")
    print(
        "5. "
        + (
            "OK: killed mid-sweep, resumed, identical to an uninterrupted sweep."
            if report["ok"]
            else "FAILED"
        )
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
