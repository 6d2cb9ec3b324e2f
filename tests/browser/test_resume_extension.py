"""End to end: the JupyterLab / Notebook 7 extension resumes a ``%%resumable`` cell after its kernel is
SIGKILLed (issue 17 part 2): the Resume notification, the ``autoResume`` setting, the crash-loop limit,
and the events the progress widget's dead-kernel view listens to.

The kernel is killed from outside (its pid from the server's kernel id), or kills itself at the same
point every time; the result is checked in a cell against the uninterrupted result; the run's folder
on disk says how far the loop got and how it was resumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nbformat
import pytest

from resumable_magic import Resumable
from resumable_magic.store.autoresume import read_grants
from resumable_magic.store.catalog import RunInfo, find_run
from resumable_magic.store.keys import key_to_relpath
from resumable_magic.store.runstore import RunStore

SETUP = "%load_ext resumable_magic\nimport os, signal, time"
OFFSET = "offset = 7"
STEPS = 60
LOOP = f"""\
%%resumable total --every 1it
total = 0
for i in range({STEPS}):
    total += i * offset
    time.sleep(0.1)
"""
CHECK = 'print("RESULT", total)'
EXPECTED = sum(i * 7 for i in range(STEPS))

# Kills its own kernel at iteration 5, every time it is resumed: a crash loop.
CRASH_LOOP = """\
%%resumable total --every 1it
total = 0
for i in range(30):
    if i == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    total += i
"""
LIMIT = 3  # resumable_magic.server.resume_api.AUTO_RESUME_LIMIT
SETTINGS = "/lab/api/settings/resumable-magic:plugin"


def checkpoints(server: Any) -> Path:
    return server.root.parent / "checkpoints"  # the fixture's RESUMABLE_DIR


def key_of(server: Any, notebook: str, index: int) -> str:
    cell_id = nbformat.read(server.root / notebook, as_version=4).cells[index].id
    return f"{notebook}/cell-{cell_id}"


def wait_for(what: str, condition: Any, timeout: float = 60.0) -> Any:
    """Poll ``condition()`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)  # polling interval for a condition on disk, not a wait for a race


@contextlib.contextmanager
def servers_key(server: Any) -> Iterator[None]:
    """Read checkpoints with the signing key of the server's kernels (in its JUPYTER_DATA_DIR)."""
    before = os.environ.get("JUPYTER_DATA_DIR")
    os.environ["JUPYTER_DATA_DIR"] = str(server.root.parent / "data")
    try:
        yield
    finally:
        if before is None:
            del os.environ["JUPYTER_DATA_DIR"]
        else:
            os.environ["JUPYTER_DATA_DIR"] = before


def run_info(server: Any, key: str) -> RunInfo | None:
    with servers_key(server):
        run = find_run(checkpoints(server), key)
    assert run is None or not run.problems, run.problems
    return run


def position(server: Any, key: str) -> int:
    run = run_info(server, key)
    return run.position if run and run.position is not None else -1


def finished(server: Any, key: str) -> bool:
    run = run_info(server, key)
    return bool(run and run.state == "finished")


def resumed_events(server: Any, key: str) -> list[dict[str, Any]]:
    run = run_info(server, key)
    assert run is not None, f"no run {key} in {checkpoints(server)}"
    return [e for e in run.to_json()["history"] if e.get("event") == "resumed"]


def settings_put(server: Any, values: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{server.url}{SETTINGS}",
        method="PUT",
        data=json.dumps({"raw": json.dumps(values)}).encode(),
        headers={"Authorization": f"token {server.token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


@pytest.fixture
def auto_resume(lab: Any) -> Iterator[None]:
    """The ``autoResume`` setting on (set on the server before the page loads it), off afterwards."""
    settings_put(lab, {"autoResume": True})
    try:
        yield
    finally:
        settings_put(lab, {"autoResume": False})


@pytest.fixture
def nb7_page(browser: Any, notebook7: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    try:
        yield context.new_page()
    finally:
        context.close()
        notebook7.shutdown_kernels()


def stand_in_widget(page: Any, directory: Path, key: str) -> None:
    """A running ``.resumable-widget`` element as the widget's view marks itself, in the open notebook,
    recording the events the extension sends it (the widget helper's dead-kernel view listens)."""
    page.evaluate(
        """([directory, key]) => {
            const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
            const el = document.createElement('div');
            el.className = 'resumable-widget';
            Object.assign(el.dataset, {status: 'running', directory, key});
            window.__rmEvents = [];
            el.addEventListener('resumable-kernel-died',
                e => window.__rmEvents.push({type: e.type, detail: e.detail, at: Date.now()}));
            el.addEventListener('resumable-kernel-restarted',
                e => window.__rmEvents.push({type: e.type, at: Date.now()}));
            panel.appendChild(el);
        }""",
        [str(directory), key],
    )


def run_until_checkpointed(server: Any, page: Any, notebook: str, at_least: int = 10) -> str:
    """Run the setup, offset and loop cells; return the loop's key once a checkpoint reached
    ``at_least`` iterations on disk."""
    key = key_of(server, notebook, 2)
    server.open(page, notebook)
    server.run_cell(page, 0)
    server.run_cell(page, 1)
    server.run_cell(page, 2, wait=False)
    wait_for(f"a checkpoint at iteration {at_least} of {key}", lambda: position(server, key) >= at_least)
    return key


def settled(page: Any, toast: Any) -> None:
    """Wait until a notification has slid in (inside the window, and not moving) for a screenshot."""
    page.wait_for_function(
        """(el) => {
            const right = el.getBoundingClientRect().right, before = el.__rmRight;
            el.__rmRight = right;
            return right <= window.innerWidth && before === right;
        }""",
        arg=toast.element_handle(),
        polling=200,
    )


def close_restart_dialogs(page: Any) -> None:
    """Close Lab's own "Kernel Restarting" dialogs (one a crash), as a user does before clicking on."""
    dialogs = page.locator(".jp-Dialog .jp-mod-accept")
    while dialogs.count():
        dialogs.first.click()


def check_result(server: Any, page: Any, key: str, how: str, dead_pid: int, notebook: str) -> None:
    """The loop finished in a new kernel, resumed (not started over) as ``how`` says, and the check
    cell prints the uninterrupted result."""
    wait_for(f"{key} to finish after the resume", lambda: finished(server, key), timeout=90)
    server.wait_cell_done(page, 2)
    server.wait_kernel_ready(page)
    close_restart_dialogs(page)
    server.run_cell(page, 3)
    assert f"RESULT {EXPECTED}" in " ".join(server.outputs(page, 3))
    assert server.kernel_pid(notebook) != dead_pid
    events = resumed_events(server, key)
    assert len(events) == 1, events
    assert events[0]["from"] >= 10 and events[0].get("jupyterlab") == how, events
    # Said once in stdout (the banner) and once in the cell's widget (its resume row).
    cell = server.cell(page, 2)
    stdout = "\n".join(
        cell.locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stdout']"
        ).all_inner_texts()
    )
    banner = {
        "automatic": "Resumed automatically after a kernel crash:",
        "clicked": "Resumed after a kernel crash:",
    }
    assert stdout.count(banner[how]) == 1 and stdout.count("Resumed") == 1, stdout
    panel = cell.locator(".resumable-widget").inner_text()
    row = {
        "automatic": "resumed automatically after a kernel crash,",
        "clicked": "resumed after a kernel crash,",
    }
    assert panel.count(row[how]) == 1 and panel.count("resumed") == 1, panel


def test_resume_notification_one_click(lab: Any, page: Any) -> None:
    notebook = lab.write_notebook("resume_click", [SETUP, OFFSET, LOOP, CHECK])
    key = run_until_checkpointed(lab, page, notebook)
    stand_in_widget(page, checkpoints(lab) / key_to_relpath(key), key)  # the run's folder, as the view has it
    dead_pid = lab.kernel_pid(notebook)
    os.kill(dead_pid, signal.SIGKILL)
    killed_at = time.time() * 1000

    # The widget's view is told the true last checkpoint on disk, within seconds of the death.
    died = page.wait_for_function("() => window.__rmEvents.find(e => e.type === 'resumable-kernel-died')")
    with servers_key(lab):
        on_disk = RunStore(checkpoints(lab), key).read_latest(load_state=False).checkpoint
    assert on_disk is not None
    detail = died.json_value()
    assert detail["at"] - killed_at < 5000, detail
    assert detail["detail"]["checkpoint"]["iteration"] == on_disk.position
    assert detail["detail"]["checkpoint"]["total"] == STEPS
    assert detail["detail"]["checkpoint"]["folder_exists"] is True

    resume = page.get_by_role("button", name="Resume", exact=True)
    resume.wait_for(timeout=60_000)
    page.wait_for_function("() => window.__rmEvents.some(e => e.type === 'resumable-kernel-restarted')")
    toast = page.locator(".Toastify__toast", has=resume)
    message = toast.inner_text()
    assert message.startswith("The kernel died in cell [3]. Resume reruns [1], [2], [3]: side effects repeat")
    assert not finished(lab, key)
    close_restart_dialogs(page)
    settled(page, toast)
    lab.screenshot(page, "resume-notification")
    resume.click()
    check_result(lab, page, key, "clicked", dead_pid, notebook)
    lab.screenshot(page, "resumed-after-click")


def test_the_widget_turns_red_by_itself_with_the_checkpoint_on_disk(lab: Any, page: Any) -> None:
    """No stand-in: the run's own widget, told by the extension, within 5 s of a SIGKILL."""
    notebook = lab.write_notebook("widget_death", [SETUP, OFFSET, LOOP, CHECK])
    key = run_until_checkpointed(lab, page, notebook)
    widget = lab.cell(page, 2).locator(".resumable-widget")
    assert widget.get_attribute("data-status") == "running"
    os.kill(lab.kernel_pid(notebook), signal.SIGKILL)
    page.wait_for_function(
        "el => el.dataset.status === 'dead'", arg=widget.element_handle(), timeout=5000, polling=100
    )
    with servers_key(lab):
        on_disk = RunStore(checkpoints(lab), key).read_latest(load_state=False).checkpoint
    assert on_disk is not None
    said = widget.locator(".rm-alert").inner_text().strip()
    found = re.fullmatch(
        rf"Kernel died at about iteration (\d+) of {STEPS}\. Last checkpoint: iteration (\d+) \(\d\d:\d\d:\d\d\)\. "
        r"Run the cell again to resume \((?:(\d+) iterations? will be redone|nothing will be redone)\)\.",
        said,
    )
    assert found, said
    reached, saved, redone = int(found[1]), int(found[2]), int(found[3] or 0)
    assert saved == on_disk.position and reached >= saved and redone == reached - saved, said
    lab.screenshot(page, "widget-died-by-itself", widget)
    close_restart_dialogs(page)


def test_auto_resume_no_click(lab: Any, auto_resume: None, page: Any) -> None:
    notebook = lab.write_notebook("resume_auto", [SETUP, OFFSET, LOOP, CHECK])
    key = run_until_checkpointed(lab, page, notebook)
    dead_pid = lab.kernel_pid(notebook)
    os.kill(dead_pid, signal.SIGKILL)
    toast = page.locator(".Toastify__toast", has_text="Resuming: rerunning [1], [2], [3]")
    toast.wait_for(timeout=60_000)
    close_restart_dialogs(page)
    settled(page, toast)
    lab.screenshot(page, "auto-resume")
    assert page.get_by_role("button", name="Resume", exact=True).count() == 0
    check_result(lab, page, key, "automatic", dead_pid, notebook)


def test_crash_loop_stops_after_the_limit(lab: Any, auto_resume: None, page: Any) -> None:
    notebook = lab.write_notebook("crash_loop", [SETUP, CRASH_LOOP])
    key = key_of(lab, notebook, 1)
    lab.open(page, notebook)
    lab.run_cell(page, 0)
    lab.run_cell(page, 1, wait=False)
    refusal = page.locator(".Toastify__toast", has_text="Not resuming automatically")
    refusal.wait_for(timeout=180_000)
    close_restart_dialogs(page)
    settled(page, refusal)
    message = refusal.inner_text()
    assert message == (
        f"Not resuming automatically: this cell crashed its kernel {LIMIT} times in the last hour "
        "(the limit). Fix the cause, then run it yourself."
    )
    assert page.locator(".Toastify__toast", has_text="Could not resume").count() == 0
    lab.screenshot(page, "crash-loop-stopped")
    grants = read_grants(RunStore(checkpoints(lab), key))
    assert [g["automatic"] for g in grants] == [True] * LIMIT
    # Stopped: the kernel Lab restarted after the last crash stays idle, and the loop never got past 5.
    lab.wait_kernel_ready(page)
    assert position(lab, key) == 5 and not finished(lab, key)
    assert len(read_grants(RunStore(checkpoints(lab), key))) == LIMIT


def test_notebook7_resume_notification(notebook7: Any, nb7_page: Any) -> None:
    page = nb7_page
    notebook = notebook7.write_notebook("resume_nb7", [SETUP, OFFSET, LOOP, CHECK])
    key = run_until_checkpointed(notebook7, page, notebook)
    dead_pid = notebook7.kernel_pid(notebook)
    os.kill(dead_pid, signal.SIGKILL)
    resume = page.get_by_role("button", name="Resume", exact=True)
    resume.wait_for(timeout=60_000)
    close_restart_dialogs(page)
    settled(page, page.locator(".Toastify__toast", has=resume))
    notebook7.screenshot(page, "notebook7-resume-notification")
    resume.click()
    check_result(notebook7, page, key, "clicked", dead_pid, notebook)


def api_get(server: Any, path: str, **query: str) -> Any:
    request = urllib.request.Request(
        f"{server.url}{path}?{urllib.parse.urlencode(query)}",
        headers={"Authorization": f"token {server.token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_last_checkpoint_as_the_disk_has_it(lab: Any) -> None:
    with servers_key(lab):  # a run written with the key of the server's kernels
        state = {"total": 0}
        with Resumable("api/run", state, dir=checkpoints(lab), every="1it") as run:
            for i in run.iterate(range(4)):
                state["total"] += i
        on_disk = RunStore(checkpoints(lab), "api/run").read_latest(load_state=False).checkpoint
    assert on_disk is not None
    expected = {
        "iteration": 4,
        "position": 4,
        "total": 4,
        "time": datetime.fromtimestamp(on_disk.created, tz=timezone.utc).isoformat(),
        "folder_exists": True,
    }
    # Named by the checkpoint folder and the key, or by the run's own folder (as the widget does).
    assert (
        api_get(lab, "/resumable/api/checkpoint", directory=str(checkpoints(lab)), key="api/run") == expected
    )
    run_folder = str(checkpoints(lab) / "api" / "run")
    assert api_get(lab, "/resumable/api/checkpoint", directory=run_folder, key="api/run") == expected
    none = api_get(lab, "/resumable/api/checkpoint", directory=str(checkpoints(lab)), key="api/other")
    assert none == {"iteration": None, "position": None, "total": None, "time": None, "folder_exists": False}


def test_api_refuses_unauthenticated_and_bad_requests(lab: Any) -> None:
    for path, method, data in (
        ("/resumable/api/checkpoint?directory=x&key=y", "GET", None),
        ("/resumable/api/resume", "POST", b"{}"),
    ):
        request = urllib.request.Request(f"{lab.url}{path}", method=method, data=data)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403, (path, refused.value.code)
    request = urllib.request.Request(
        f"{lab.url}/resumable/api/resume",
        method="POST",
        data=json.dumps(
            {"kernel_id": "k", "kernel_session": "s", "tab": "t", "notebook": "n.ipynb"}
        ).encode(),
        headers={"Authorization": f"token {lab.token}"},
    )
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(request, timeout=10)
    assert bad.value.code == 400
    assert "'cell_id' must be a non-empty string" in json.loads(bad.value.read())["message"]


def test_a_cell_edited_since_it_ran_is_asked_about(lab: Any, page: Any) -> None:
    notebook = lab.write_notebook("resume_edited", [SETUP, OFFSET, LOOP, CHECK])
    key = run_until_checkpointed(lab, page, notebook)
    dead_pid = lab.kernel_pid(notebook)
    os.kill(dead_pid, signal.SIGKILL)
    resume = page.get_by_role("button", name="Resume", exact=True)
    resume.wait_for(timeout=60_000)
    close_restart_dialogs(page)
    at_death = position(lab, key)
    # Edited after the offer appeared: clicking Resume asks again instead of running.
    lab.cell(page, 1).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+End")
    page.keyboard.type("  # checked")
    resume.click()
    anyway = page.get_by_role("button", name="Resume anyway", exact=True)
    anyway.wait_for()
    message = page.locator(".Toastify__toast", has=anyway).inner_text()
    assert message.startswith("The kernel died in cell [3]. Cells were edited or deleted since they ran")
    assert read_grants(RunStore(checkpoints(lab), key)) == []
    assert position(lab, key) == at_death and not finished(lab, key)
    anyway.click()
    check_result(lab, page, key, "clicked", dead_pid, notebook)


def test_two_tabs_resume_once(lab: Any, auto_resume: None, page: Any, browser: Any) -> None:
    # The offset cell counts its runs in a file: run once, then once more by one resume.
    counted = OFFSET + '\nwith open("offset_runs.txt", "a") as f:\n    f.write("x")'
    notebook = lab.write_notebook("resume_two_tabs", [SETUP, counted, LOOP, CHECK])
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        other = context.new_page()
        lab.open(other, notebook)  # the second tab, on the same kernel
        key = run_until_checkpointed(lab, page, notebook)
        os.kill(lab.kernel_pid(notebook), signal.SIGKILL)
        wait_for(f"{key} to finish after the resume", lambda: finished(lab, key), timeout=90)
        grants = read_grants(RunStore(checkpoints(lab), key))
        assert [g["automatic"] for g in grants] == [True]
        assert len(resumed_events(lab, key)) == 1
        assert (lab.root / "offset_runs.txt").read_text() == "xx"
        lab.wait_kernel_ready(page)
        close_restart_dialogs(page)
        lab.run_cell(page, 3)
        assert f"RESULT {EXPECTED}" in " ".join(lab.outputs(page, 3))
    finally:
        context.close()


def test_resumable_runs_opens_the_board_in_a_new_tab(lab: Any, page: Any) -> None:
    page.goto(f"{lab.url}/lab?reset&token={lab.token}")
    card = page.locator(".jp-LauncherCard", has_text="Resumable runs")
    card.wait_for(timeout=60_000)
    with page.context.expect_page() as opened:
        card.click()
    board = opened.value
    board.wait_for_load_state()
    assert board.url == f"{lab.url}/resumable/"
    assert board.title() == "Resumable runs"  # the server's page, reached with the Lab tab's login
    # The same command from the command palette.
    page.keyboard.press("Control+Shift+C")
    page.locator(".lm-CommandPalette-input").fill("Resumable runs")
    with page.context.expect_page() as again:
        page.keyboard.press("Enter")
    again.value.wait_for_load_state()
    assert again.value.url == f"{lab.url}/resumable/"


# Every WebSocket the page opens, kept where the test can close it (a lost connection, as when a
# laptop sleeps or a proxy drops it: the kernel itself goes on).
KEEP_SOCKETS = """
    const Native = window.WebSocket;
    window.__sockets = [];
    window.WebSocket = class extends Native {
        constructor(...args) { super(...args); window.__sockets.push(this); }
    };
"""


def no_resume_offered(lab: Any, page: Any, notebook: str, key: str) -> None:
    """Nothing said about a crash: no notification, no event to the widget; the loop goes on."""
    wait_for(f"{key} to finish by itself", lambda: finished(lab, key), timeout=90)
    lab.wait_kernel_ready(page)
    lab.run_cell(page, 3)  # any notification of a crash would have come before this cell ran
    assert page.locator(".Toastify__toast", has_text="The kernel died").count() == 0
    assert page.evaluate("window.__rmEvents") == []


def test_a_lost_connection_is_not_a_crash(lab: Any, page: Any) -> None:
    page.add_init_script(KEEP_SOCKETS)
    notebook = lab.write_notebook("resume_offline", [SETUP, OFFSET, LOOP, CHECK])
    key = run_until_checkpointed(lab, page, notebook)
    stand_in_widget(page, checkpoints(lab) / key_to_relpath(key), key)
    pid = lab.kernel_pid(notebook)
    closed = page.evaluate(
        """() => window.__sockets.filter(s => s.url.includes('/api/kernels/') && s.readyState === 1)
                  .map(s => { s.close(); return s.url; }).length"""
    )
    assert closed >= 1
    page.wait_for_function(  # Lab reconnects by itself
        "() => window.__sockets.some(s => s.url.includes('/api/kernels/') && s.readyState === 1)"
    )
    no_resume_offered(lab, page, notebook, key)
    assert lab.kernel_pid(notebook) == pid
    assert f"RESULT {EXPECTED}" in " ".join(lab.outputs(page, 3))


def test_a_restart_the_user_asked_for_is_not_a_crash(lab: Any, page: Any) -> None:
    notebook = lab.write_notebook("resume_restart", [SETUP, OFFSET, LOOP, CHECK])
    key = run_until_checkpointed(lab, page, notebook)
    stand_in_widget(page, checkpoints(lab) / key_to_relpath(key), key)
    pid = lab.kernel_pid(notebook)
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Toolbar [data-jp-item-name='restart']").click()
    page.locator(".jp-Dialog .jp-mod-accept").click()  # "Restart Kernel?"

    def replaced() -> bool:
        try:
            return lab.kernel_pid(notebook) != pid
        except AssertionError:  # between the old kernel's exit and the new one's start: no process
            return False

    wait_for("the new kernel", replaced)
    lab.wait_kernel_ready(page)
    lab.run_cell(page, 3)  # any notification of a crash would have come before this cell ran
    assert page.locator(".Toastify__toast", has_text="The kernel died").count() == 0
    assert page.evaluate("window.__rmEvents") == []
    assert not finished(lab, key)


def test_a_run_that_crashed_in_jupyterlab_resumes_under_resumable_run(
    lab: Any, page: Any, tmp_path: Path
) -> None:
    """Issue 16: the same keys in JupyterLab and under the supervisor. The loop crashes in Lab (nobody
    clicks Resume); `resumable run` of the same notebook file resumes that run, not a new one."""
    notebook = lab.write_notebook("crashed_in_lab", [SETUP, OFFSET, LOOP, CHECK])
    key = run_until_checkpointed(lab, page, notebook)
    os.kill(lab.kernel_pid(notebook), signal.SIGKILL)
    page.get_by_role("button", name="Resume", exact=True).wait_for(timeout=60_000)  # offered, not taken
    reached = position(lab, key)
    output, report = tmp_path / "out.ipynb", tmp_path / "report.json"
    env = {
        **os.environ,
        "RESUMABLE_DIR": str(checkpoints(lab)),
        "JUPYTER_DATA_DIR": str(lab.root.parent / "data"),  # the signing key of the Lab's kernels
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "resumable_magic",
            "run",
            notebook,
            "--output",
            str(output),
            "--report",
            str(report),
        ],
        cwd=lab.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert finished(lab, key)
    events = resumed_events(lab, key)
    assert len(events) == 1 and events[0]["from"] >= reached >= 10, events
    executed = nbformat.read(output, as_version=4)
    printed = "".join(o.get("text", "") for o in executed.cells[3].outputs)
    assert f"RESULT {EXPECTED}" in printed, printed
