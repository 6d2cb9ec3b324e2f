"""Parameter sweeps, for real: a papermill run per parameter set, a sweep in one resumable cell killed
with SIGKILL, and the crash demo of the plain-API sweep (notebooks/sweep_*.ipynb).

Every expected value comes from :func:`descend`, written here independently of the notebooks.
"""

from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from kernels import KernelHandle
from traitlets.config import Config

import resumable_magic
from resumable_magic.store.catalog import find_run, list_runs

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MEMBER = NOTEBOOKS / "sweep_member.ipynb"
A, B = {"lr": 0.1, "seed": 0}, {"lr": 0.03, "seed": 1}
MEMBER_STEPS = 500  # the member's default `steps`


def descend(lr: float, seed: int, steps: int) -> tuple[float, list[float]]:
    """The notebooks' computation: noisy gradient descent on (w - 3)^2 from w = 0, seeded per run."""
    rng = random.Random(seed)
    w, losses = 0.0, []
    for _ in range(steps):
        w -= lr * (2 * (w - 3.0) + rng.gauss(0, 1))
        losses.append((w - 3.0) ** 2)
    return w, losses


def cell_text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


@pytest.fixture
def papermill_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The kernels papermill starts inherit this process's environment: a private checkpoint folder
    and IPython directory for them. Returns the checkpoint folder."""
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("RESUMABLE_DIR", str(checkpoints))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    return checkpoints


def run_member(notebook: Path, params: dict, out: Path) -> nbformat.NotebookNode:
    out.mkdir(parents=True, exist_ok=True)
    ipc = Config({"KernelManager": {"transport": "ipc", "ip": str(out / "k")}})
    return papermill.execute_notebook(
        str(notebook),
        str(out / "executed.ipynb"),
        parameters=params,
        kernel_name="python3",
        progress_bar=False,
        config=ipc,
        cwd=str(NOTEBOOKS),
    )


def resumable_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("%%resumable"))


@pytest.mark.kernel
def test_papermill_runs_get_a_checkpoint_per_parameter_set(tmp_path, papermill_env):
    first = run_member(MEMBER, A, tmp_path / "a")
    run_member(MEMBER, B, tmp_path / "b")

    runs = {run.key: run for run in list_runs(papermill_env)}
    key_a, key_b = "member/lr=0.1,seed=0", "member/lr=0.03,seed=1"
    assert set(runs) == {key_a, key_b}
    for key, params in ((key_a, A), (key_b, B)):
        assert runs[key].state == "finished" and runs[key].position == MEMBER_STEPS
        saved = resumable_magic.load(key, dir=papermill_env)
        w, losses = descend(params["lr"], params["seed"], MEMBER_STEPS)
        assert saved["w"] == w and saved["losses"] == losses
    assert descend(**A, steps=MEMBER_STEPS)[0] != descend(**B, steps=MEMBER_STEPS)[0]
    assert f"w={descend(**A, steps=MEMBER_STEPS)[0]:.6f}" in cell_text(resumable_cell(first))

    # The first set again, after the second: it replays its own result, not the newest run's.
    generation = runs[key_a].generation
    again = run_member(MEMBER, A, tmp_path / "a-again")
    text = cell_text(resumable_cell(again))
    assert text.startswith("replayed:"), text
    assert f"w={descend(**A, steps=MEMBER_STEPS)[0]:.6f}" in text
    assert find_run(papermill_env, key_a).generation == generation  # nothing was written
    assert "identical to a plain run: True" in cell_text(again.cells[-1])


@pytest.mark.kernel
def test_without_params_the_second_parameter_set_is_refused(tmp_path, papermill_env):
    member = nbformat.read(MEMBER, as_version=4)
    cell = resumable_cell(member)
    assert " --params lr seed" in cell.source
    cell.source = cell.source.replace(" --params lr seed", "")
    one_key = tmp_path / "member_one_key.ipynb"
    nbformat.write(member, one_key)

    run_member(one_key, A, tmp_path / "a")
    before = find_run(papermill_env, "member")
    assert before is not None and before.state == "finished"

    with pytest.raises(papermill.PapermillExecutionError) as refused:
        run_member(one_key, B, tmp_path / "b")
    assert refused.value.ename == "InputsChangedError"
    assert "lr: 0.1 then, 0.03 now" in refused.value.evalue
    # Nothing ran: the cell printed no result, and the checkpoint still holds the first set's.
    executed = nbformat.read(tmp_path / "b" / "executed.ipynb", as_version=4)
    assert "w=" not in cell_text(resumable_cell(executed))
    after = find_run(papermill_env, "member")
    assert (after.generation, after.position) == (before.generation, before.position)
    saved = resumable_magic.load("member", dir=papermill_env)
    assert (saved["w"], saved["losses"]) == descend(**A, steps=MEMBER_STEPS)


SETUP = """
%load_ext resumable_magic
import os
import random
import time

GRID = tuple((lr, seed) for lr in (0.01, 0.03, 0.1) for seed in (0, 1))


def train(lr, seed):
    random.seed(seed)
    w, losses = 0.0, []
    for _ in range(200):
        w -= lr * (2 * (w - 3.0) + random.gauss(0, 1))
        losses.append((w - 3.0) ** 2)
    time.sleep(0.3)
    return w, losses
"""

SWEEP = """
%%resumable results --every 1it --name sweep
results = {}
for lr, seed in GRID:
    with open("computed.log", "a") as log:
        log.write(f"{os.getpid()} {lr} {seed}\\n")
    results[lr, seed] = train(lr, seed)
"""


def computed(log: Path) -> dict[int, list[tuple[float, int]]]:
    """The parameter sets each kernel process computed, in order."""
    by_pid: dict[int, list[tuple[float, int]]] = {}
    for line in log.read_text().splitlines():
        pid, lr, seed = line.split()
        by_pid.setdefault(int(pid), []).append((float(lr), int(seed)))
    return by_pid


@pytest.mark.kernel
def test_sweep_in_one_cell_survives_sigkill(tmp_path, kernel_factory):
    checkpoints = tmp_path / "checkpoints"
    kernel: KernelHandle = kernel_factory(env={"RESUMABLE_DIR": str(checkpoints)})
    grid = [(lr, seed) for lr in (0.01, 0.03, 0.1) for seed in (0, 1)]
    kernel.run(SETUP)
    kernel.execute_async(SWEEP)
    kernel.wait_for(
        lambda: (run := find_run(checkpoints, "sweep")) is not None and (run.position or 0) >= 2, timeout=30
    )
    first_pid = kernel.pid
    kernel.kill()
    at_kill = find_run(checkpoints, "sweep")
    saved = at_kill.position
    assert at_kill.state == "crashed" and 2 <= saved < len(grid)

    kernel.restart()
    kernel.run(SETUP)
    kernel.run(SWEEP, timeout=60)
    results = ast.literal_eval(kernel.eval("sorted(results.items())"))
    assert results == [((lr, seed), descend(lr, seed, 200)) for lr, seed in sorted(grid)]
    by_pid = computed(tmp_path / "computed.log")
    assert set(by_pid) == {first_pid, kernel.pid}
    # The first kernel got at least as far as the checkpoint; the second redid only what came after it.
    assert by_pid[first_pid][:saved] == grid[:saved] and len(by_pid[first_pid]) >= saved
    assert by_pid[kernel.pid] == grid[saved:]
    assert find_run(checkpoints, "sweep").state == "finished"


@pytest.mark.kernel
def test_crash_demo_resumes_the_sweep_to_the_uninterrupted_result(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESUMABLE_")}
    done = subprocess.run(
        [sys.executable, str(NOTEBOOKS / "sweep_crash_demo.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "sweep-crash-report.json").read_text())
    kill, second = report["kill"], report["second_run"]
    assert kill["killed"] and kill["finished"] and len(kill["in_progress"]) == 1 and kill["checkpoint"] > 0
    assert second["replayed"] == kill["finished"]
    assert second["resumed"] == {kill["in_progress"][0]: kill["checkpoint"]}
    assert second["ran"] == kill["not_started"]
    assert report["states_after_kill"][kill["in_progress"][0]] == "crashed"
    assert Path(second["executed"]).exists()

    checkpoints = Path(report["checkpoints"])
    keys = report["keys"]
    assert sorted(run.key for run in list_runs(checkpoints)) == sorted(keys)
    for key in keys:
        lr, seed = (part.split("=")[1] for part in key.removeprefix("sweep/").split(","))
        assert find_run(checkpoints, key).state == "finished"
        saved = resumable_magic.load(key, dir=checkpoints)
        assert (saved["w"], saved["losses"]) == descend(float(lr), int(seed), report["parameters"]["STEPS"])
