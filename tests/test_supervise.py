"""`resumable run` with real processes: kernels and scripts SIGKILLed from outside, the supervisor
interrupted and killed, a run begun the way JupyterLab runs a notebook resumed by the supervisor.

Each test waits for conditions (a checkpoint at a position, a new child pid), never for time."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from kernels import REPO_ROOT, start_kernel, wait_for
from supervise_helpers import Supervisor, loop_notebook, position, runs, uninterrupted, write_notebook

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(300)]


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


def _cli(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESUMABLE_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "resumable_magic", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


def test_kernel_killed_twice_at_random_points_finishes_with_the_uninterrupted_result(tmp_path: Path) -> None:
    n = 50
    notebook = loop_notebook(tmp_path / "nb.ipynb", n=n)
    report = tmp_path / "nb.run.report.json"
    checkpoints = tmp_path / ".resumable"
    chooser = random.Random()
    with Supervisor(tmp_path, "nb.ipynb") as supervisor:
        killed: tuple[int, ...] = ()
        reached = 0
        for _ in range(2):
            pid = supervisor.child_pid(report, other_than=killed)
            # A random point in the loop, after at least one checkpoint of this attempt.
            target = chooser.randint(reached + 1, reached + (n - reached) // 3)
            wait_for(lambda t=target: position(checkpoints) >= t, timeout=60)
            os.kill(pid, signal.SIGKILL)
            killed += (pid,)
            reached = position(checkpoints)
        assert supervisor.wait() == 0, supervisor.output()
    assert _result(tmp_path) == uninterrupted(n)
    data = _report(report)
    assert data["status"] == "finished" and data["exit_status"] == 0
    assert [r["cause"] for r in data["restarts"]] == [
        "kernel killed by SIGKILL (restart 1 of 5)",
        "kernel killed by SIGKILL (restart 2 of 5)",
    ]
    for restart in data["restarts"]:
        assert restart["checkpoint"]["key"] == "nb.ipynb/cell-loop"
        assert restart["redone_iterations"] is not None and restart["redone_iterations"] >= 0
    assert [a["how"] for a in data["attempts"]] == ["died", "died", "finished"]
    assert (tmp_path / "nb.run.ipynb").is_file()
    # The causes show in `resumable status` and `resumable show`.
    status = _cli(tmp_path, "status")
    assert "restarted 2x by resumable run, last: kernel killed by SIGKILL (restart 2 of 5)" in status
    show = _cli(tmp_path, "show", "nb.ipynb/cell-loop")
    assert "restarted by resumable run: kernel killed by SIGKILL (restart 1 of 5)" in show
    assert "restarted by resumable run: kernel killed by SIGKILL (restart 2 of 5)" in show
    assert json.loads(_cli(tmp_path, "status", "--json"))[0]["origin"] == {"notebook": str(notebook)}


def test_a_crash_at_the_same_point_every_time_stops_by_the_no_progress_rule(tmp_path: Path) -> None:
    crash = "import ctypes\nif i == 6:\n    ctypes.string_at(0)  # SIGSEGV, in every attempt\n"
    write_notebook(
        tmp_path / "nb.ipynb",
        [
            ("load", "%load_ext resumable_magic"),
            (
                "loop",
                f"%%resumable total --every 1it\ntotal = 0\nfor i in range(20):\n{_indent(crash)}    total += i\n",
            ),
        ],
    )
    with Supervisor(tmp_path, "nb.ipynb", "--max-restarts", "4") as supervisor:
        assert supervisor.wait() == 3, supervisor.output()
        output = supervisor.output()
    data = _report(tmp_path / "nb.run.report.json")
    assert data["status"] == "gave up" and data["exit_status"] == 3
    assert [r["cause"] for r in data["restarts"]] == ["kernel killed by SIGSEGV (restart 1 of 4)"]
    assert data["message"].startswith(
        "kernel killed by SIGSEGV again with no progress since the restart before"
    )
    assert "the checkpoint at iteration 6 of nb.ipynb/cell-loop" in data["message"]
    assert data["message"] in output and "exit status 3" in output


def _indent(code: str) -> str:
    return "".join(f"    {line}\n" for line in code.splitlines())


def test_an_exception_in_a_cell_stops_without_a_restart(tmp_path: Path) -> None:
    write_notebook(
        tmp_path / "nb.ipynb",
        [("load", "%load_ext resumable_magic"), ("bug", "values = [1, 2]\nvalues[5]")],
    )
    with Supervisor(tmp_path, "nb.ipynb") as supervisor:
        assert supervisor.wait() == 1, supervisor.output()
    data = _report(tmp_path / "nb.run.report.json")
    assert data["status"] == "error" and data["restarts"] == []
    assert data["message"].endswith("IndexError: list index out of range")


def test_a_papermill_parameterised_notebook_runs_with_p(tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "nb.ipynb",
        [
            ("load", "%load_ext resumable_magic"),
            ("params", "n = 3\nlabel = 'default'\nscale = 1.0", ["parameters"]),
            (
                "loop",
                "%%resumable total --every 1it --params label\ntotal = 0\nfor i in range(n):\n    total += i * scale",
            ),
            ("save", "import json\njson.dump({'total': total, 'label': label}, open('result.json', 'w'))"),
        ],
    )
    args = (
        "nb.ipynb",
        "-p",
        "n",
        "10",
        "-p",
        "label",
        "run 7",
        "-p",
        "scale",
        "0.5",
        "--output",
        "out.ipynb",
    )
    with Supervisor(tmp_path, *args) as supervisor:
        assert supervisor.wait() == 0, supervisor.output()
    assert _result(tmp_path) == {"total": sum(range(10)) * 0.5, "label": "run 7"}
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert [c.get("id") for c in executed.cells] == ["load", "params", "injected-parameters", "loop", "save"]
    assert executed.cells[2].metadata["tags"] == ["injected-parameters"]
    assert executed.metadata["papermill"]["parameters"] == {"n": 10, "label": "run 7", "scale": 0.5}
    (run,) = runs(tmp_path / ".resumable").values()
    assert run.manifest["origin"] == {
        "notebook": str(notebook),
        "parameters": {"n": 10, "label": "run 7", "scale": 0.5},
    }
    assert _report(tmp_path / "out.report.json")["parameters"] == {"n": 10, "label": "run 7", "scale": 0.5}


def test_p_without_a_parameters_cell_is_refused_before_anything_runs(tmp_path: Path) -> None:
    write_notebook(tmp_path / "nb.ipynb", [("one", "open('ran', 'w')")])
    with Supervisor(tmp_path, "nb.ipynb", "-p", "n", "3") as supervisor:
        assert supervisor.wait() == 2
        output = supervisor.output()
    assert output.startswith("resumable run: nb.ipynb has no cell tagged 'parameters'")
    assert len(output.strip().splitlines()) == 1 and "Traceback" not in output
    assert not (tmp_path / "ran").exists() and not list(tmp_path.glob("*.report.json"))


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_or_sigterm_to_the_supervisor_stops_with_a_checkpoint_and_no_restart(
    tmp_path: Path, sig: int, status: int
) -> None:
    n = 40
    loop_notebook(tmp_path / "nb.ipynb", n=n)
    report = tmp_path / "nb.run.report.json"
    checkpoints = tmp_path / ".resumable"
    with Supervisor(tmp_path, "nb.ipynb") as supervisor:
        kernel_pid = supervisor.child_pid(report)
        wait_for(lambda: position(checkpoints) >= 5, timeout=60)
        supervisor.kill(sig)  # to the supervisor only, as a terminal's Ctrl-C reaches it
        assert supervisor.wait() == status, supervisor.output()
    wait_for(lambda: not _alive(kernel_pid), timeout=30)
    data = _report(report)
    assert data["status"] == "interrupted" and data["restarts"] == [] and len(data["attempts"]) == 1
    (run,) = runs(checkpoints).values()
    assert run.state == "interrupted" and 5 <= run.position < n
    # Run again: it continues from that checkpoint and ends as an uninterrupted run would.
    with Supervisor(tmp_path, "nb.ipynb") as again:
        assert again.wait() == 0, again.output()
    assert _result(tmp_path) == uninterrupted(n)
    (run,) = runs(checkpoints).values()
    events = [e["event"] for e in run.manifest["history"]]
    assert events == ["started", "resumed", "finished"]


def _alive(pid: int) -> bool:
    from resumable_magic.lease.procs import pid_alive

    return pid_alive(pid)


def test_a_run_begun_as_jupyterlab_runs_it_resumes_under_the_supervisor(tmp_path: Path) -> None:
    """A kernel started as jupyter_server starts it (in the notebook's folder, JPY_SESSION_NAME set to
    the notebook's path), cells sent with their ids as JupyterLab sends them; SIGKILL; then
    `resumable run` resumes the same run (same key) instead of starting over."""
    n = 40
    notebook = loop_notebook(tmp_path / "nb.ipynb", n=n)
    checkpoints = tmp_path / ".resumable"
    nb = nbformat.read(notebook, as_version=4)
    lab = start_kernel(tmp_path, env={"JPY_SESSION_NAME": str(notebook)})
    try:
        for cell in nb.cells[:3]:
            lab.run(cell.source, cell_id=cell.id)
        lab.execute_async(nb.cells[3].source, cell_id=nb.cells[3].id)
        wait_for(lambda: position(checkpoints) >= 8, timeout=60)
        lab.kill()
    finally:
        lab.shutdown()
    (before,) = runs(checkpoints).values()
    assert before.key == "nb.ipynb/cell-loop" and before.state == "crashed"
    with Supervisor(tmp_path, "nb.ipynb") as supervisor:
        assert supervisor.wait() == 0, supervisor.output()
    assert _result(tmp_path) == uninterrupted(n)
    (after,) = runs(checkpoints).values()
    assert after.key == before.key
    resumed = [e for e in after.manifest["history"] if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["from"] >= 8


SCRIPT = """\
import json, sys, time
from resumable_magic import Resumable

n, out = int(sys.argv[1]), sys.argv[2]
state = {"total": 0}
with Resumable("script-sum", state, every="1it") as run:
    for i in run.iterate(range(n)):
        state["total"] += i
        time.sleep(0.05)
json.dump(state, open(out, "w"))
"""


def test_a_script_killed_from_outside_is_restarted_and_finishes(tmp_path: Path) -> None:
    (tmp_path / "work.py").write_text(SCRIPT)
    checkpoints = tmp_path / ".resumable"
    with Supervisor(tmp_path, "--max-restarts", "2", "work.py", "60", "out.json") as supervisor:
        report = wait_for(lambda: next(tmp_path.glob("work.run-*.report.json"), None), timeout=30)
        pid = supervisor.child_pid(report)
        wait_for(lambda: position(checkpoints) >= 10, timeout=60)
        os.kill(pid, signal.SIGKILL)
        assert supervisor.wait() == 0, supervisor.output()
    assert json.loads((tmp_path / "out.json").read_text()) == {"total": sum(range(60))}
    data = _report(report)
    assert [r["cause"] for r in data["restarts"]] == ["script killed by SIGKILL (restart 1 of 2)"]
    assert data["args"] == ["60", "out.json"]
    (run,) = runs(checkpoints).values()
    assert run.manifest["origin"] == {"script": str(tmp_path / "work.py"), "args": ["60", "out.json"]}


def test_the_supervisor_killed_and_run_again_picks_up(tmp_path: Path) -> None:
    n = 40
    loop_notebook(tmp_path / "nb.ipynb", n=n)
    report = tmp_path / "nb.run.report.json"
    checkpoints = tmp_path / ".resumable"
    with Supervisor(tmp_path, "nb.ipynb") as first:
        kernel_pid = first.child_pid(report)
        wait_for(lambda: position(checkpoints) >= 6, timeout=60)
        first.kill(signal.SIGKILL)
        first.wait()
    assert _report(report)["status"] == "running"  # what the dead supervisor left
    with Supervisor(tmp_path, "nb.ipynb") as second:
        assert second.wait() == 0, second.output()
    assert not _alive(kernel_pid)
    assert _result(tmp_path) == uninterrupted(n)
    data = _report(report)
    assert data["status"] == "finished" and len(data["pickups"]) == 1
    (run,) = runs(checkpoints).values()
    resumed = [e for e in run.manifest["history"] if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["from"] >= 6


def test_a_second_supervisor_of_the_same_run_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    (tmp_path / "wait.py").write_text(
        "import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.05)\n"
    )
    report = tmp_path / "wait.run.report.json"
    with Supervisor(tmp_path, "wait.py") as first:
        first.child_pid(report)
        with Supervisor(tmp_path, "wait.py") as second:
            assert second.wait() == 2
            output = second.output()
        assert output.startswith(
            f"resumable run: this run is being executed by another `resumable run` (pid {first.pid})"
        )
        assert len(output.strip().splitlines()) == 1
        (tmp_path / "go").touch()
        assert first.wait() == 0, first.output()
    assert _report(report)["status"] == "finished"
