"""The widget tells the truth when the kernel cannot (issue 17, parts 1 and 3), in JupyterLab.

- The kernel is SIGKILLed mid-loop and the page gets the ``resumable-kernel-died`` event the
  JupyterLab extension sends (with the newest checkpoint on disk): within 5 s of the kill the widget
  is red and says where the run died, which checkpoint is on disk and what a resume redoes; the
  cell run again resumes, and the resume is stated once in the widget and once in stdout.
- Without the extension (no event): after the kill the heartbeat stops and the widget turns amber,
  "no word from the kernel", never red.
- An interrupt ends the cell with one orange line, no red error box, no lingering "Interrupt
  received" message, and the cells queued after it do not run.
- A notebook saved with its widget state while running reopens silent, not running.
- Notebook 7 (served by the same server) renders the widget, and a killed kernel turns it amber.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

from resumable_magic.store.catalog import find_run

LOAD = "%load_ext resumable_magic"
LOOP = """\
%%resumable total --every 10it
import time
total = 0
for i in range(400):
    time.sleep(0.05)
    total += i
print("total", total)
"""
DEATH = re.compile(
    r"Kernel died at about iteration (\d+) of 400\. Last checkpoint: iteration (\d+) \((\d\d:\d\d:\d\d)\)\. "
    r"Run the cell again to resume \((?:(\d+) iterations? will be redone|nothing will be redone)\)\."
)


def widget(lab, page, index: int):
    element = lab.cell(page, index).locator(".resumable-widget")
    element.wait_for(state="visible", timeout=30_000)
    return element


def started_loop(lab, page, name: str):
    """Open ``name``, load the extension, start the loop; returns its widget once 3 checkpoints are written."""
    lab.open(page, name)
    lab.run_cell(page, 0)
    lab.run_cell(page, 1, wait=False)
    element = widget(lab, page, 1)
    lab.wait_text(page, 1, ".rm-checkpoints", "t => parseInt(t) >= 3", timeout=30_000)
    return element


def accept_restart(lab, page) -> None:
    """Lab notices the death, says so in a dialog and restarts the kernel by itself."""
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(state="visible", timeout=30_000)
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    dialog.wait_for(state="detached")
    lab.wait_kernel_ready(page)


def on_disk(lab, monkeypatch, key: str):
    """The newest checkpoint of ``key`` as the server reads it (with the kernels' signing key)."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(lab.root.parent / "data"))  # where the lab's kernels keep it
    found = find_run(lab.root.parent / "checkpoints", key)  # RESUMABLE_DIR of the lab fixture
    assert found is not None and not found.problems, found
    return found


def test_dead_kernel_turns_the_widget_red_with_the_checkpoint_on_disk_then_resume_is_said_once(
    lab, page, monkeypatch
):
    name = lab.write_notebook("truth_dead", [LOAD, LOOP, "print(total)"])
    element = started_loop(lab, page, name)
    key = element.get_attribute("data-key")
    assert key == f"{name}/cell-" + key.split("/cell-")[1], key
    assert element.get_attribute("data-status") == "running"
    assert Path(element.get_attribute("data-directory")).is_absolute()

    os.kill(lab.kernel_pid(name), signal.SIGKILL)
    killed = time.monotonic()
    disk = on_disk(lab, monkeypatch, key)  # what the extension reads through the server
    assert disk.position is not None and disk.created is not None
    assert Path(element.get_attribute("data-directory")) == Path(disk.path)
    checkpoint = {
        "iteration": disk.position,
        "position": disk.position,
        "total": disk.total,
        "time": disk.created,
        "folder_exists": True,
    }
    element.evaluate(
        "(el, checkpoint) => el.dispatchEvent(new CustomEvent('resumable-kernel-died', {detail: {checkpoint}}))",
        checkpoint,
    )
    page.wait_for_function(
        "el => el.dataset.status === 'dead'", arg=element.element_handle(), timeout=5000, polling=100
    )
    assert time.monotonic() - killed < 5
    said = element.locator(".rm-alert").inner_text().strip()
    m = DEATH.fullmatch(said)
    assert m, said
    reached, saved, clock, redone = int(m[1]), int(m[2]), m[3], int(m[4] or 0)
    assert saved == disk.position and clock == time.strftime("%H:%M:%S", time.localtime(disk.created))
    shown = int(element.locator(".rm-position").inner_text().split("/")[0].split("·")[1].replace(",", ""))
    # the widget's count lags the loop by up to half a second, and the disk can be ahead of it
    assert reached == max(shown, saved) and redone == reached - saved, (said, shown)
    assert element.locator(".rm-state").inner_text().strip() == "kernel died"
    assert element.locator(".rm-alert").evaluate("el => getComputedStyle(el).color") == "rgb(183, 28, 28)"
    lab.screenshot(page, "truth-kernel-died", element)

    accept_restart(lab, page)
    element.evaluate("el => el.dispatchEvent(new CustomEvent('resumable-kernel-restarted'))")
    assert element.get_attribute("data-status") == "dead", "a restarted kernel does not revive the old run"
    assert element.locator(".rm-alert").inner_text().strip() == said + " The kernel has restarted."

    # run again: it resumes; each fact once in the widget, once in stdout
    lab.run_cell(page, 0)
    lab.run_cell(page, 1, wait=False)
    element = widget(lab, page, 1)
    lab.wait_text(page, 1, ".rm-state", "t => t === 'finished'", timeout=60_000)
    lab.wait_cell_done(page, 1, timeout=60_000)
    assert element.get_attribute("data-status") == "done"
    panel = element.inner_text()
    stdout = "\n".join(
        lab.cell(page, 1)
        .locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stdout']")
        .all_inner_texts()
    )
    assert panel.count("resumed from iteration") == 1 and "Resumed" not in panel, panel
    assert stdout.count(f"Resumed total from the checkpoint at iteration {saved} of 400") == 1, stdout
    assert panel.count("died") == 1 and stdout.count("died") == 1, (panel, stdout)
    assert re.search(r"The previous kernel \(pid \d+\) died; this kernel takes the run over\.", stdout)
    assert "Took over" not in panel + stdout and "previous owner" not in panel + stdout
    assert "total 79800" in stdout
    lab.screenshot(page, "truth-resumed-finished", element)
    lab.run_cell(page, 2)
    assert lab.outputs(page, 2)[0].strip() == "79800"


def test_without_the_extension_a_silent_kernel_turns_the_widget_amber_not_red(lab, page):
    # JupyterLab without our extension (as VS Code or Colab show the widget): its bundle is not served
    # to this page, so nothing tells the widget that the kernel died.
    page.route("**/extensions/resumable-magic/**", lambda route: route.abort())
    name = lab.write_notebook("truth_silent", [LOAD, LOOP])
    element = started_loop(lab, page, name)
    assert element.get_attribute("data-silent") == "false"
    os.kill(lab.kernel_pid(name), signal.SIGKILL)
    killed = time.monotonic()
    page.wait_for_function(
        "el => el.dataset.silent === 'true'", arg=element.element_handle(), timeout=15_000, polling=100
    )
    silent_after = time.monotonic() - killed
    assert silent_after >= 4, (
        silent_after
    )  # not before 5 s of silence (the last beat <= ~1 s before the kill)
    said = element.locator(".rm-alert").inner_text().strip()
    assert re.fullmatch(r"No word from the kernel for \d+ s \(busy in one long call, or gone\)\.", said), said
    assert element.get_attribute("data-status") == "running", "never red without evidence"
    assert element.locator(".rm-state").inner_text().strip() == "silent"
    assert element.locator(".rm-alert").evaluate("el => getComputedStyle(el).color") == "rgb(141, 94, 0)"
    # the count goes on while the silence lasts
    first = int(said.split("for ")[1].split(" s")[0])
    lab.wait_text(page, 1, ".rm-alert", "(t, n) => parseInt(t.split('for ')[1]) > n", first, timeout=5000)
    accept_restart(lab, page)
    assert (
        element.get_attribute("data-status") == "running" and element.get_attribute("data-silent") == "true"
    )


def test_an_interrupt_ends_with_one_orange_line_and_no_error_box(lab, page, monkeypatch):
    name = lab.write_notebook("truth_interrupt", [LOAD, LOOP, "print('queued cell ran')"])
    element = started_loop(lab, page, name)
    lab.run_cell(page, 2, wait=False)  # queued behind the loop
    kernel = next(s["kernel"]["id"] for s in lab.api("/api/sessions") if s["path"] == name)
    lab.api(f"/api/kernels/{kernel}/interrupt", method="POST")  # the toolbar's stop button
    page.wait_for_function(
        "el => el.dataset.status === 'interrupted'", arg=element.element_handle(), timeout=30_000, polling=100
    )
    lab.wait_cell_done(page, 1)
    cell = lab.cell(page, 1)
    errors = cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert errors.count() == 0, errors.all_inner_texts()
    stdout = cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stdout']")
    lines = [line for text in stdout.all_inner_texts() for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    m = re.fullmatch(
        r"interrupted at iteration (\d+) in .*; checkpoint saved there \(\d\d:\d\d:\d\d\): "
        r"run the cell again to resume",
        lines[0],
    )
    assert m, lines[0]
    colour = stdout.locator("span").first.evaluate("el => getComputedStyle(el).color")
    assert colour == "rgb(255, 135, 0)", colour  # ANSI 208, orange
    disk = on_disk(lab, monkeypatch, element.get_attribute("data-key"))
    assert disk.position == int(m[1]) and disk.state == "interrupted"
    panel = element.inner_text()
    assert "Interrupt received" not in panel and panel.count("interrupted at iteration") == 1, panel
    assert "Traceback" not in panel and "KeyboardInterrupt" not in " ".join(lab.outputs(page, 1))
    lab.screenshot(page, "truth-interrupted", cell)
    # the kernel skipped the cell queued after the interrupted one, as after any interrupt
    page.wait_for_function(
        "cell => !cell.querySelector('.jp-InputPrompt').textContent.includes('*')",
        arg=lab.cell(page, 2).element_handle(),
        timeout=30_000,
    )
    assert "queued cell ran" not in " ".join(lab.outputs(page, 2))


def test_a_notebook_saved_while_running_reopens_silent_not_running(lab, page, browser):
    """Saved with its widget state (Lab's saveState, VS Code) while the loop ran, then the kernel died:
    reopened later, the widget says how long the kernel has been silent, not "running" with an ETA;
    the saved text/plain (what nbconvert and GitHub show) says only what was sure when it was saved."""
    settings = lab.root.parent / "settings" / "@jupyter-widgets" / "jupyterlab-manager"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"saveState": True}))
    try:
        name = lab.write_notebook("truth_saved", [LOAD, LOOP])
        started_loop(lab, page, name)
        page.keyboard.press("Control+s")

        def saved():
            nb = json.loads((lab.root / name).read_text())
            state = nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json")
            return nb if state and state["state"] else None

        deadline = time.monotonic() + 30
        while not saved():
            assert time.monotonic() < deadline, "the notebook was not saved with its widget state"
            time.sleep(0.1)  # polling the file for the save, not a wait for a race
        os.kill(lab.kernel_pid(name), signal.SIGKILL)
        killed = time.time()
        nb = saved()
        panels = [
            model["state"]
            for model in nb["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"][
                "state"
            ].values()
            if model["state"].get("_anywidget_id", "").endswith("RunPanel")
        ]
        assert len(panels) == 1 and panels[0]["status"] == "running", panels
        assert killed - 5 < panels[0]["heartbeat"] <= killed
        plain = [
            "".join(o["data"]["text/plain"])
            for o in nb["cells"][1]["outputs"]
            if o["output_type"] == "display_data"
        ]
        assert len(plain) == 1 and re.fullmatch(
            r"running since \d\d:\d\d:\d\d, from iteration 0 of 400 \(the summary replaces this line when "
            r"the run ends: if it is still here, the kernel stopped first\)",
            plain[0],
        ), plain
        page.context.close()

        context = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            reopened = context.new_page()
            lab.open(reopened, name)
            again = widget(lab, reopened, 1)
            reopened.wait_for_function(
                "el => el.dataset.silent === 'true'", arg=again.element_handle(), timeout=5000, polling=100
            )
            said = again.locator(".rm-alert").inner_text().strip()
            assert re.fullmatch(
                r"No word from the kernel for \d+ s \(busy in one long call, or gone\)\.", said
            )
            assert again.get_attribute("data-status") == "running"  # as saved: never red without evidence
            lab.screenshot(reopened, "truth-reopened-silent", again)
        finally:
            context.close()
    finally:
        (settings / "plugin.jupyterlab-settings").unlink()


def test_in_notebook_7_the_widget_renders_and_a_killed_kernel_turns_it_red(lab, page):
    """Notebook 7 (served by the same server, with our extension) renders the widget's own view, and
    the extension tells it of a SIGKILLed kernel within 5 s, with the checkpoint on disk."""
    name = lab.write_notebook("truth_nb7", [LOAD, LOOP])
    page.goto(f"{lab.url}/notebooks/{name}?token={lab.token}")
    page.locator(".jp-Cell").first.wait_for(state="visible", timeout=60_000)
    lab.wait_kernel_ready(page)  # Notebook 7's panel and toolbar have Lab's classes
    lab.run_cell(page, 0)
    lab.run_cell(page, 1, wait=False)
    element = widget(lab, page, 1)
    lab.wait_text(page, 1, ".rm-checkpoints", "t => parseInt(t) >= 3", timeout=30_000)
    assert element.get_attribute("data-status") == "running" and element.get_attribute("data-key")
    os.kill(lab.kernel_pid(name), signal.SIGKILL)
    page.wait_for_function(
        "el => el.dataset.status === 'dead'", arg=element.element_handle(), timeout=5000, polling=100
    )
    said = element.locator(".rm-alert").inner_text().strip()
    assert DEATH.fullmatch(said), said
    lab.screenshot(page, "truth-notebook7-died", element)
