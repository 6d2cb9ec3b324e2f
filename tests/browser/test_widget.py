"""The progress widget in JupyterLab, driven through the progress model's events from a cell."""

from __future__ import annotations

import re

DRIVE_MODEL = """\
import time
from resumable_magic.progress.snapshots import CheckpointStats, StartInfo
from resumable_magic.progress.widget import WidgetProgress

p = WidgetProgress()
p.run_started(StartInfo(key="demo", names=("total",), total=40, start_position=0, policy="every 10it"))

def checkpoint(position):
    p.checkpoint_started(position)
    t = time.monotonic()
    time.sleep(0.05)
    p.checkpoint_finished(CheckpointStats(generation=position // 10 + 1, position=position,
                                          wall_time=time.time(), nbytes=1_234_567,
                                          seconds=time.monotonic() - t))

checkpoint(0)
for i in range(40):
    time.sleep(3.2 if i == 20 else 0.1)  # iteration 21 is slow: the time since the checkpoint ticks
    p.advanced(i + 1)
    if (i + 1) % 10 == 0:
        checkpoint(i + 1)
p.run_ended("finished")
"""


def text(locator) -> str:
    return locator.inner_text().strip()


def test_widget_renders_advances_ticks_and_finishes(lab, page):
    name = lab.write_notebook("widget_model", [DRIVE_MODEL, "print(repr(p.panel))"])
    lab.open(page, name)
    lab.run_cell(page, 0, wait=False)

    cell = lab.cell(page, 0)
    panel = cell.locator(".resumable-widget")
    panel.wait_for(state="visible", timeout=30_000)
    outputs = " ".join(lab.outputs(page, 0))
    assert "Loading widget" not in outputs and "VBox(" not in outputs

    # advances: the count and the bar move while the cell runs
    count = r"t => { const m = t.match(/(\d+) \/ 40/); return m ? +m[1] : -1; }"
    first = lab.wait_text(page, 0, ".rm-position", f"(t) => ({count})(t) > 0")
    n = int(re.search(r"(\d+) / 40", first).group(1))
    lab.wait_text(page, 0, ".rm-position", f"(t, n) => ({count})(t) > n", n)
    bar = panel.locator(".rm-bar-fill")
    assert float(bar.evaluate("el => parseFloat(el.style.width)")) > 0
    assert text(panel.locator(".rm-state")) in ("running", "checkpointing")

    # the slow iteration: the position stays at 20 while "time since the last checkpoint" ticks
    lab.wait_text(page, 0, ".rm-position", "t => t.endsWith('20 / 40')")
    seen = [text(panel.locator(".rm-since"))]
    for _ in range(2):
        seen.append(lab.wait_text(page, 0, ".rm-since", "(t, prev) => t !== prev", seen[-1], timeout=5000))
    assert text(panel.locator(".rm-position")).endswith("20 / 40"), (
        "the label must tick within one slow iteration"
    )
    assert all(re.fullmatch(r"\d+ s", s) for s in seen) and len(set(seen)) == 3, seen
    assert re.fullmatch(r"\d\d:\d\d:\d\d", text(panel.locator(".rm-last-clock")))
    assert text(panel.locator(".rm-checkpoints")) == "3 written"
    assert text(panel.locator(".rm-size")) == "1.2 MiB"
    assert text(panel.locator(".rm-unsaved")) == "0 iterations unsaved"
    lab.screenshot(page, "widget-running", panel)

    # finished
    lab.wait_text(page, 0, ".rm-state", "t => t === 'finished'")
    lab.wait_cell_done(page, 0)
    panel = cell.locator(".resumable-widget")
    assert panel.count() == 1, "re-sending the display must not duplicate the panel"
    summary = text(panel.locator(".rm-summary"))
    assert summary.startswith("finished: 40 iterations in "), summary
    assert "5 checkpoints" in summary
    assert text(panel.locator(".rm-position")) == "100% · 40 / 40"
    assert bar.evaluate("el => parseFloat(el.style.width)") == 100
    lab.screenshot(page, "widget-finished", panel)

    # the text/plain that nbconvert/nbclient/nbval see is the summary line, not VBox(...)
    lab.run_cell(page, 1)
    assert lab.outputs(page, 1)[0].strip() == summary
