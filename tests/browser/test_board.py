"""The board in headless Chromium, over a real ``jupyter server`` and runs made by real processes:
each of the five states shows its colour (a sweep's members not yet started in blue), a run's
history opens on click, and Resubmit on a notebook run that crashed under ``resumable run`` starts
it again on the server, and the row turns green. Screenshots go to the artifacts and docs/images/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from boardruns import Runs, wait_for
from checkpoints import newest_position
from servers import REPO, jupyter_env, running_server

pytestmark = pytest.mark.timeout(300)

COLOURS = {  # the CSS variables of static/board.css, as the browser computes them
    "finished": "rgb(46, 125, 50)",
    "running": "rgb(249, 168, 37)",
    "planned": "rgb(21, 101, 192)",
    "crashed": "rgb(198, 40, 40)",
    "failed": "rgb(198, 40, 40)",
    "interrupted": "rgb(117, 117, 117)",
}
DOCS_IMAGES = REPO / "docs" / "images"


def _write_notebook(path: Path) -> None:
    """A papermill-style notebook: ``n`` in a cell tagged ``parameters``, then a resumable loop."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("n = 10")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell("%load_ext resumable_magic\nimport time"),
        nbformat.v4.new_code_cell(
            "%%resumable total --every 1it\ntotal = 0\nfor i in range(n):\n    time.sleep(0.02)\n    total += i"
        ),
        nbformat.v4.new_code_cell("assert total == n * (n - 1) // 2\nprint('total', total)"),
    ]
    nbformat.write(nb, path)


def _crash_a_supervised_run(env: dict[str, str], notebook: Path, folder: Path) -> None:
    """``resumable run NOTEBOOK -p n 400``, then SIGKILL of the supervisor and of its kernel once a
    checkpoint is written: a crashed run that records its notebook and parameters."""
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "resumable_magic", "run", str(notebook), "-p", "n", "400"],
        env=env, cwd=notebook.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def run_folder() -> Path | None:
        found = [p.parent for p in (folder / notebook.name).rglob("manifest.*.json")]
        return found[0] if found and (newest_position(found[0]) or 0) >= 20 else None

    try:
        wait_for(run_folder, "a checkpoint of the supervised run", supervisor, timeout=120)
        kernel = json.loads((run_folder() / "owner.json").read_text())["pid"]
        os.killpg(supervisor.pid, signal.SIGKILL)  # first, so that it does not restart the kernel
        supervisor.wait(30)
        os.kill(kernel, signal.SIGKILL)
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
        supervisor.wait(30)
        supervisor.stdout.close()


def _row(page, key: str):
    return page.locator(f'tr.run[data-key="{key}"]')


def _colour(page, key: str) -> str:
    return _row(page, key).locator(".dot").evaluate("dot => getComputedStyle(dot).backgroundColor")


def test_board_colours_history_and_resubmit(browser, tmp_path):
    root = tmp_path / "root"
    folder = root / "project" / ".resumable"
    folder.mkdir(parents=True)
    env = jupyter_env(tmp_path)
    notebook = root / "project" / "train.ipynb"
    _write_notebook(notebook)
    runs = Runs(folder, env, tmp_path / "scripts")
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        runs.make_five_states()
        _crash_a_supervised_run(env, notebook, folder)
        sweep, gate = runs.start_sweep(4)
        with running_server(tmp_path, root) as server:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{server.url}/resumable/?token={server.token}")
            page.locator("tr.group[data-group='sweep']").click()  # open the sweep's group
            wait_for(
                lambda: page.locator('tr.run[data-state="planned"]').count() == 3,
                "three planned sweep members",
                sweep,
                timeout=120,
            )
            expected = {
                "finished": "finished",
                "failing": "failed",
                "crashed": "crashed",
                "interrupted": "interrupted",
                "live": "running",
                "sweep/i=1": "planned",
            }
            for key, state in expected.items():
                assert _row(page, key).get_attribute("data-state") == state, key
                assert _colour(page, key) == COLOURS[state], (key, state)
            assert "ValueError: bad item 25" in _row(page, "failing").inner_text()
            crashed_nb = page.locator('tr.run[data-state="crashed"]', has_text="train.ipynb")
            assert crashed_nb.count() == 1
            key = crashed_nb.get_attribute("data-key")
            assert "n=400" in crashed_nb.inner_text()  # the parameter resumable run was given, passed again
            page.screenshot(path=str(tmp_path / "board.png"), full_page=True)
            _save("board", tmp_path / "board.png")

            # the history, on click
            _row(page, "interrupted").click()
            page.locator("tr.details ol.history li").first.wait_for()
            assert "started" in page.locator("tr.details").inner_text()

            # Resubmit the notebook run that crashed: yellow, then green, with the right result
            crashed_nb.locator("button.resubmit").click()
            page.locator("#message", has_text="Started").wait_for()
            wait_for(
                lambda: _row(page, key).get_attribute("data-state") == "running", "the row yellow", timeout=30
            )
            wait_for(
                lambda: _row(page, key).get_attribute("data-state") == "finished",
                "the row green",
                timeout=180,
            )
            assert _colour(page, key) == COLOURS["finished"]
            page.screenshot(path=str(tmp_path / "board-resubmitted.png"), full_page=True)
            _save("board-resubmitted", tmp_path / "board-resubmitted.png")
            [executed] = notebook.parent.glob("train.run*.ipynb")  # resumable run's output, beside it
            output = nbformat.read(executed, as_version=4)
            assert "total 79800" in json.dumps(output.cells[-1].outputs)  # sum(range(400))
            gate.touch()
            assert sweep.wait(120) == 0
            assert not errors, errors
    finally:
        context.close()
        runs.stop()


def _save(name: str, shot: Path) -> None:
    """The screenshot into the artifacts (as the other browser tests) and docs/images/ (the README's)."""
    from conftest import artifacts_dir

    for target in (artifacts_dir() / f"{name}.png", DOCS_IMAGES / f"{name}.png"):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(shot.read_bytes())
    print(f"screenshot: {DOCS_IMAGES / f'{name}.png'}")
