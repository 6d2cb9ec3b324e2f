"""The harness itself: a widget updated from a background thread renders and advances in the DOM."""

from __future__ import annotations

PROGRESS_CELL = """\
import threading, time
import ipywidgets as widgets
bar = widgets.IntProgress(min=0, max=100, value=0, description="work")
display(bar)

def work():
    for i in range(1, 101):
        bar.value = i
        time.sleep(0.04)

worker = threading.Thread(target=work, daemon=True)
worker.start()
worker.join()  # the main thread is busy, as in a long loop; updates still reach the page
print("done", bar.value)
"""


def width(page, bar) -> float:
    return float(bar.evaluate("el => parseFloat(el.querySelector('.progress-bar').style.width) || 0"))


def test_threaded_intprogress_renders_and_advances(lab, page):
    name = lab.write_notebook("harness", [PROGRESS_CELL])
    lab.open(page, name)
    lab.run_cell(page, 0, wait=False)

    bar = lab.cell(page, 0).locator(".widget-hprogress")
    bar.wait_for(state="visible", timeout=30_000)
    # The fill advances while the cell is still running: wait for two increasing widths.
    handle = bar.element_handle()
    page.wait_for_function(
        "el => parseFloat(el.querySelector('.progress-bar').style.width) > 0", arg=handle, polling=50
    )
    first = width(page, bar)
    page.wait_for_function(
        "([el, w]) => parseFloat(el.querySelector('.progress-bar').style.width) > w",
        arg=[handle, first],
        polling=50,
    )
    assert width(page, bar) > first
    lab.screenshot(page, "harness-running", lab.cell(page, 0))

    lab.wait_cell_done(page, 0)
    page.wait_for_function(
        "el => parseFloat(el.querySelector('.progress-bar').style.width) >= 100", arg=handle, polling=50
    )
    texts = lab.outputs(page, 0)
    assert any("done 100" in t for t in texts), texts
    assert not any("Loading widget" in t or "IntProgress(" in t for t in texts), texts
    lab.screenshot(page, "harness-finished", lab.cell(page, 0))
