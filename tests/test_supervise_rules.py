"""`resumable run`'s rules without kernels: parameters as papermill reads and injects them, the
restart policy, and the command line's refusals (real processes, one line each, before anything runs)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from kernels import REPO_ROOT
from papermill.cli import _resolve_type
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook
from supervise_helpers import write_notebook

from resumable_magic.supervise.notebook import read_notebook
from resumable_magic.supervise.params import inject_parameters, parse_value
from resumable_magic.supervise.restarts import Ended, Mark, decide

TEXTS = [
    "3",
    "-4",
    "0.5",
    "1e-3",
    "nan",
    "inf",
    "-inf",
    "True",
    "False",
    "None",
    "true",
    "run 7",
    "",
    "0x10",
    "1_000",
]


@pytest.mark.parametrize("text", TEXTS)
def test_p_values_are_read_as_papermill_reads_them(text: str) -> None:
    ours, theirs = parse_value(text), _resolve_type(text)
    assert type(ours) is type(theirs)
    assert ours == theirs or (isinstance(ours, float) and math.isnan(ours) and math.isnan(theirs))


def _values(source: str) -> dict[str, object]:
    namespace: dict[str, object] = {}
    exec(source, namespace)
    namespace.pop("__builtins__")
    return namespace


def test_the_injected_cell_is_where_papermill_puts_it_and_sets_the_same_values(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "nb.ipynb",
        [("a", "x = 1"), ("params", "n = 3\nlabel = 'x'", ["parameters"]), ("b", "print(n)")],
    )
    parameters = {f"p{i}": parse_value(text) for i, text in enumerate(TEXTS) if text != "nan"}  # nan != nan
    ours = read_notebook(path)
    inject_parameters(ours, parameters, str(path))
    theirs = parameterize_notebook(load_notebook_node(str(path)), parameters)
    assert [c.metadata.get("tags") or [] for c in ours.cells] == [c.metadata.tags for c in theirs.cells]
    assert _values(ours.cells[2].source) == _values(theirs.cells[2].source)
    # Injected again (a notebook papermill already ran): the injected cell is replaced, not added.
    inject_parameters(theirs, {"n": 5}, str(path))
    assert [c.metadata.get("tags") for c in theirs.cells].count(["injected-parameters"]) == 1
    assert _values(theirs.cells[2].source) == {"n": 5}


def test_a_notebook_without_cell_ids_gets_the_same_ids_in_every_read(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1"), nbformat.v4.new_code_cell("2")])
    nb.nbformat_minor = 4
    for cell in nb.cells:
        del cell["id"]
    path = tmp_path / "old.ipynb"
    path.write_text(nbformat.writes(nb, version=4))
    first, second = read_notebook(path), read_notebook(path)
    assert [c.id for c in first.cells] == [c.id for c in second.cells] == ["cell0", "cell1"]


KILLED = Ended("died", pid=1, returncode=-signal.SIGKILL)
AT_5 = Mark(key="nb.ipynb/cell-x", generation=4, position=5)


def test_crash_signals_are_restarted_and_counted() -> None:
    for sig in (signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT):
        decision = decide(Ended("died", 1, -sig), "kernel", AT_5, None, 0, 5)
        assert decision.restart and decision.reason == f"kernel killed by {sig.name} (restart 1 of 5)"


def test_other_deaths_are_not_restarted() -> None:
    for ended, text in [
        (Ended("died", 1, -signal.SIGTERM), "kernel killed by SIGTERM"),
        (Ended("died", 1, 3), "kernel exited with status 3"),
        (Ended("died", 1, 0), "kernel exited with status 0"),
    ]:
        decision = decide(ended, "kernel", AT_5, None, 0, 5)
        assert not decision.restart and decision.reason.startswith(f"{text}: not a crash")


def test_the_same_newest_checkpoint_as_the_restart_before_is_no_progress() -> None:
    previous = {"key": AT_5.key, "generation": AT_5.generation, "position": 5}
    stuck = decide(KILLED, "kernel", AT_5, previous, 1, 5)
    assert not stuck.restart and "no progress since the restart before" in stuck.reason
    moved = decide(KILLED, "kernel", Mark(key=AT_5.key, generation=5, position=6), previous, 1, 5)
    assert moved.restart and moved.reason == "kernel killed by SIGKILL (restart 2 of 5)"
    # Two deaths before any checkpoint: no progress either.
    nothing = decide(KILLED, "kernel", Mark(), {"key": None, "generation": None, "position": None}, 1, 5)
    assert not nothing.restart and "(no checkpoint)" in nothing.reason


def test_max_restarts_is_the_most_restarts() -> None:
    assert not decide(KILLED, "script", AT_5, None, 2, 2).restart
    assert decide(KILLED, "script", AT_5, None, 1, 2).restart
    assert not decide(KILLED, "script", AT_5, None, 0, 0).restart


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "resumable_magic", "run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.ipynb"], "no file 'missing.ipynb' to run"),
        (["nb.ipynb", "-p", "2x", "1"], "-p '2x': a parameter's name must be a Python variable name"),
        (["nb.ipynb", "--colour"], "unknown argument '--colour' after the notebook"),
        (["nb.ipynb", "--max-restarts", "-1"], "--max-restarts -1: give 0 or more"),
        (["-p", "n", "1", "work.py"], "-p and --output are for notebooks"),
        (["bad.ipynb"], "'bad.ipynb' is not a readable notebook"),
        (["other.ipynb"], "other.ipynb asks for the kernel 'julia-1.99', which is not installed here"),
    ],
)
def test_bad_input_is_refused_in_one_line_before_anything_runs(
    tmp_path: Path, args: list[str], message: str
) -> None:
    write_notebook(tmp_path / "nb.ipynb", [("params", "n = 1\nopen('ran', 'w')", ["parameters"])])
    (tmp_path / "work.py").write_text("open('ran', 'w')\n")
    (tmp_path / "bad.ipynb").write_text("{not json")
    other = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("open('ran', 'w')")])
    other.metadata["kernelspec"] = {"name": "julia-1.99", "display_name": "Julia", "language": "julia"}
    nbformat.write(other, tmp_path / "other.ipynb")
    done = _run(tmp_path, *args)
    assert done.returncode == 2
    assert done.stderr.startswith(f"resumable run: {message}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ran").exists() and not list(tmp_path.glob("*.report.json"))
