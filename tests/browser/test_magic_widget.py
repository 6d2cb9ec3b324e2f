"""End to end: ``%%resumable`` cells in JupyterLab show the live progress widget (issue 3)."""

from __future__ import annotations

import os
import re
import signal

LOAD = "%load_ext resumable_magic"

# Iteration 12 takes 6 s: the "time since the last checkpoint" must tick while the count stands still.
SLOW_ITERATION = """\
%%resumable total --every 2s
import time
total = 0
for i in range(30):
    time.sleep(6 if i == 12 else 0.1)
    total += i
print("total", total)
"""

KILLED = """\
%%resumable total --every 10it
import time
total = 0
for i in range(60):
    time.sleep(0.1)
    total += i
print("total", total)
"""

NOT_WIRED = (
    "the %%resumable cell showed no progress widget: the magic must build its progress view with "
    "resumable_magic.progress.widget.make_widget_progress(quiet)"
)

COUNT = r"t => { const m = t.match(/([\d,]+) \/ ([\d,]+)/); return m ? +m[1].replace(/,/g, '') : -1; }"


def text(locator) -> str:
    return locator.inner_text().strip()


def wait_panel(lab, page, index: int):
    cell = lab.cell(page, index)
    # the panel appears, or the cell ends without one
    page.wait_for_function(
        """(cell) => !!cell.querySelector('.resumable-widget')
            || /\\[\\d+\\]/.test(cell.querySelector('.jp-InputPrompt').textContent)""",
        arg=cell.element_handle(),
        timeout=30_000,
        polling=100,
    )
    panel = cell.locator(".resumable-widget")
    assert panel.count() == 1, f"{NOT_WIRED}; cell outputs: {lab.outputs(page, index)}"
    panel.wait_for(state="visible")
    outputs = " ".join(lab.outputs(page, index))
    assert "Loading widget" not in outputs and "VBox(" not in outputs, outputs
    return panel


def test_resumable_cell_shows_live_widget(lab, page):
    name = lab.write_notebook("magic_widget", [LOAD, SLOW_ITERATION])
    lab.open(page, name)
    lab.run_cell(page, 0)
    lab.run_cell(page, 1, wait=False)
    panel = wait_panel(lab, page, 1)

    # advances
    first = lab.wait_text(page, 1, ".rm-position", f"t => ({COUNT})(t) > 0")
    n = int(re.search(r"(\d+) / 30", first).group(1))
    lab.wait_text(page, 1, ".rm-position", f"(t, n) => ({COUNT})(t) > n", n)
    assert text(panel.locator(".rm-state")) in ("running", "checkpointing")
    assert re.search(r"\d it/s", text(panel.locator(".rm-rate"))), text(panel.locator(".rm-rate"))

    # the slow iteration: no boundary for 6 s, the label ticks from the timer thread
    since = lab.wait_text(page, 1, ".rm-since", "t => parseInt(t) >= 3", timeout=20_000)
    position = text(panel.locator(".rm-position"))
    assert position.endswith("/ 30") and int(re.search(r"(\d+) /", position).group(1)) <= 13
    ticked = lab.wait_text(page, 1, ".rm-since", "(t, prev) => t !== prev", since, timeout=3000)
    assert int(ticked.split()[0]) > int(since.split()[0])
    assert text(panel.locator(".rm-position")) == position, "the label must tick within one iteration"
    assert re.fullmatch(r"\d\d:\d\d:\d\d", text(panel.locator(".rm-last-clock")))
    lab.screenshot(page, "magic-widget-running", panel)

    # finished
    lab.wait_text(page, 1, ".rm-state", "t => t === 'finished'", timeout=30_000)
    lab.wait_cell_done(page, 1)
    summary = text(panel.locator(".rm-summary"))
    assert summary.startswith("finished: 30 iterations in "), summary
    assert re.search(r"\d+ checkpoints", summary), summary
    assert text(panel.locator(".rm-position")) == "100% · 30 / 30"
    assert any("total 435" in t for t in lab.outputs(page, 1))
    assert panel.count() == 1
    lab.screenshot(page, "magic-widget-finished", panel)


def test_killed_kernel_resumes_with_message_in_widget(lab, page):
    name = lab.write_notebook("magic_killed", [LOAD, KILLED])
    lab.open(page, name)
    lab.run_cell(page, 0)
    lab.run_cell(page, 1, wait=False)
    panel = wait_panel(lab, page, 1)
    # at least the checkpoints at iterations 0, 10 and 20 are written
    lab.wait_text(page, 1, ".rm-checkpoints", "t => parseInt(t) >= 3", timeout=30_000)

    os.kill(lab.kernel_pid(name), signal.SIGKILL)
    # Lab notices, says so in a dialog, and restarts the kernel by itself
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(state="visible", timeout=30_000)
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    dialog.wait_for(state="detached")
    lab.wait_kernel_ready(page)
    # the frontend keeps the last rendered state; the wall-clock time of the last checkpoint stays meaningful
    assert re.fullmatch(r"\d\d:\d\d:\d\d", text(panel.locator(".rm-last-clock")))
    lab.screenshot(page, "magic-widget-after-kill", panel)

    lab.run_cell(page, 0)
    lab.run_cell(page, 1, wait=False)
    panel = wait_panel(lab, page, 1)
    resumed = lab.wait_text(page, 1, ".rm-resume", "t => t.startsWith('resumed from iteration')")
    m = re.match(r"resumed from iteration (\d+) \(checkpoint of (\d\d:\d\d:\d\d)\)", resumed)
    assert m, resumed
    assert int(m.group(1)) >= 20 and int(m.group(1)) % 10 == 0
    lab.screenshot(page, "magic-widget-resumed", panel)

    lab.wait_text(page, 1, ".rm-state", "t => t === 'finished'", timeout=30_000)
    lab.wait_cell_done(page, 1)
    summary = text(panel.locator(".rm-summary"))
    assert summary.startswith("finished: 60 iterations ("), summary
    assert "resumed" not in summary, summary  # the resume row says it, once
    assert text(panel.locator(".rm-resume")).startswith(m.group(0))
    assert any("total 1770" in t for t in lab.outputs(page, 1))
    lab.screenshot(page, "magic-widget-resumed-finished", panel)
