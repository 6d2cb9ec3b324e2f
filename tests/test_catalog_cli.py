"""`resumable status / show / rm / gc` and `%resumable_status` over a folder holding runs in every state.

Every run is made by a real process using the plain API: one finishes, one is killed with SIGKILL
mid-loop, one gets SIGINT (the library checkpoints and raises RunInterrupted), one's loop raises, and
one is still looping while the tests look at it (it is killed when the module's tests are done).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from checkpoints import newest_position

from resumable_magic.frontends import cli
from resumable_magic.store.catalog import find_run, list_runs

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import sys, time
from resumable_magic import Resumable, RunInterrupted

directory, key, mode, items = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
state = {"total": 0, "seen": []}
params = {"lr": key.split("=")[1]} if "=" in key else None
try:
    with Resumable(
        key, state, dir=directory, every="10it", code="for i in range(n): ...", params=params
    ) as run:
        for i in run.iterate(range(items)):
            if mode == "fail" and i == 25:
                raise ValueError(f"bad item {i}")
            state["total"] += i
            state["seen"].append(i)
            if mode != "finish":
                time.sleep(0.005)
except RunInterrupted:
    sys.exit(3)
except ValueError:
    sys.exit(4)
print("done", state["total"])
"""


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the worker exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling for a file, not hiding a race


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(checkpoint folder, the live worker): runs in each of the five states."""
    base = tmp_path_factory.mktemp("catalog")
    ck = base / "ck"
    script = base / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(key: str, mode: str, items: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(script), str(ck), key, mode, str(items)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    finished = start("sweep/lr=0.1", "finish", 100)
    failed = start("failing", "fail", 100)
    crashed = start("crashed", "loop", 100_000)
    interrupted = start("interrupted", "loop", 100_000)
    live = start("live", "loop", 1_000_000)
    try:
        _wait_for(lambda: (newest_position(ck / "crashed") or 0) >= 30, crashed, "crashed's checkpoint")
        crashed.send_signal(signal.SIGKILL)
        crashed.wait()
        _wait_for(lambda: newest_position(ck / "interrupted") is not None, interrupted, "a checkpoint")
        interrupted.send_signal(signal.SIGINT)
        assert interrupted.wait(60) == 3, interrupted.stderr.read()
        assert finished.wait(60) == 0, finished.stderr.read()
        assert failed.wait(60) == 4, failed.stderr.read()
        _wait_for(lambda: newest_position(ck / "live") is not None, live, "the live run's checkpoint")
        yield ck, live
    finally:
        for proc in (finished, failed, crashed, interrupted, live):
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()


def _copy_tolerant(source: Path, target: Path) -> None:
    """copytree next to the live worker, which renames and deletes its files as it goes."""

    def copy(src: str, dst: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=copy)


def _run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_runs_finds_every_state(runs):
    ck = runs[0]
    found = {r.key: r for r in list_runs(ck)}
    assert {k: r.state for k, r in found.items()} == {
        "sweep/lr=0.1": "finished",
        "failing": "failed",
        "crashed": "crashed",
        "interrupted": "interrupted",
        "live": "running",
    }
    assert found["sweep/lr=0.1"].position == found["sweep/lr=0.1"].total == 100
    assert found["failing"].error == "ValueError: bad item 25"
    assert found["failing"].position == 20 and found["failing"].total == 100
    assert found["crashed"].position >= 30 and found["crashed"].total == 100_000
    for run in found.values():
        on_disk = sum(p.stat().st_size for p in run.path.rglob("*") if p.is_file())
        assert run.size == on_disk or run.state == "running"
        assert run.created is not None and run.problems == []
    updated = [r.updated for r in list_runs(ck)]
    assert updated == sorted(updated, reverse=True)
    live = runs[1]
    # The live run's lease is renewed 4 times a second, so it soon becomes the most recently active.
    _wait_for(lambda: list_runs(ck)[0].key == "live", live, "the live run to sort first", timeout=10)


def test_listing_changes_nothing(runs):
    ck, _ = runs
    finished = ck / "sweep" / "lr=0.1"
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*")}
    list_runs(ck)
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*")} == before


def test_status_plain_when_piped(runs, capsys):
    ck, _ = runs
    code, out, err = _run_cli(capsys, "status", "--dir", str(ck))
    assert code == 0 and err == ""
    assert "\x1b[" not in out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["KEY", "PARAMS", "STATE", "PROGRESS"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"sweep/lr=0.1", "failing", "crashed", "interrupted", "live"}
    assert rows["sweep/lr=0.1"].split()[1:4] == ["lr=0.1", "finished", "100/100"]
    assert "failed" in rows["failing"] and "ValueError: bad item 25" in rows["failing"]
    assert rows["live"].split()[1] == "running"


def test_status_coloured_on_a_terminal(runs, capsys, monkeypatch):
    ck, _ = runs
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = _run_cli(capsys, "status", "--dir", str(ck))
    assert code == 0
    assert "\x1b[32mfinished" in out and "\x1b[33mrunning" in out
    assert "\x1b[31mcrashed" in out and "\x1b[31mfailed" in out and "\x1b[90minterrupted" in out


def test_status_json(runs, capsys):
    ck, _ = runs
    code, out, _ = _run_cli(capsys, "status", "--dir", str(ck), "--json")
    assert code == 0
    records = {r["key"]: r for r in json.loads(out)}
    assert (
        records["failing"]["state"] == "failed" and records["failing"]["error"] == "ValueError: bad item 25"
    )
    assert records["sweep/lr=0.1"]["total"] == 100 and records["sweep/lr=0.1"]["size"] > 0


def test_status_through_the_installed_command_and_python_m(runs):
    ck, _ = runs
    for argv in ([str(ROOT / ".venv" / "bin" / "resumable")], [sys.executable, "-m", "resumable_magic"]):
        done = subprocess.run([*argv, "status", "--dir", str(ck)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "finished" in done.stdout and "\x1b[" not in done.stdout
        usage = subprocess.run([*argv, "status", "--bogus"], capture_output=True, text=True)
        assert usage.returncode == 2 and "usage:" in usage.stderr


def test_show(runs, capsys):
    ck, _ = runs
    code, out, err = _run_cli(capsys, "show", "sweep/lr=0.1", "--dir", str(ck))
    assert code == 0, err
    assert "state:       finished" in out and "progress:    100/100" in out
    assert "  total  builtins.int" in out and "  seen   builtins.list" in out
    assert "for i in range(n): ..." in out  # the cell source
    assert '"versions"' not in out and "versions:" in out
    history = out.split("history:\n", 1)[1].split("cell source:")[0].splitlines()
    assert len(history) == 2 and "started" in history[0] and "finished" in history[1]
    assert "at iteration 100" in history[1]
    code, out, _ = _run_cli(capsys, "show", "failing", "--dir", str(ck))
    assert code == 0 and "failed: ValueError: bad item 25" in out


def test_errors_are_one_line_with_exit_code_1(runs, capsys, tmp_path):
    ck, _ = runs
    code, out, err = _run_cli(capsys, "show", "nope", "--dir", str(ck))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "no run 'nope'" in err
    code, _, err = _run_cli(capsys, "show", "../x", "--dir", str(ck))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    code, _, err = _run_cli(capsys, "status", "--dir", str(tmp_path / "missing"))
    assert code == 1 and "no checkpoint folder" in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2


def test_rm_deletes_and_refuses_a_running_run(runs, capsys, tmp_path):
    ck, _ = runs
    copy = tmp_path / "ck"
    _copy_tolerant(ck, copy)  # the live worker's heartbeat names a live pid: still "running" here
    code, out, err = _run_cli(capsys, "rm", "live", "--dir", str(copy))
    assert code == 1 and "is running" in err and "nothing was deleted" in err
    assert find_run(copy, "live") is not None
    code, out, err = _run_cli(capsys, "rm", "sweep/lr=0.1", "crashed", "nope", "--dir", str(copy))
    assert code == 1 and "no run 'nope'" in err
    assert "removed sweep/lr=0.1" in out and "removed crashed" in out
    assert not (copy / "sweep").exists() and not (copy / "crashed").exists()
    assert {r.key for r in list_runs(copy)} == {"failing", "interrupted", "live"}


def test_gc_removes_stale_temporaries_and_old_generations_never_a_running_run(runs, capsys, tmp_path):
    ck, _ = runs
    copy = tmp_path / "ck"
    _copy_tolerant(ck, copy)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    stale = copy / "crashed" / "objects" / f".tmp-{int(dead.stdout)}-abc"
    stale.write_bytes(b"x" * 1000)
    sizes = {r.key: r.size for r in list_runs(copy)}
    two_generations = [r.key for r in list_runs(copy) if len(list(r.path.glob("manifest.*"))) == 2]
    assert "sweep/lr=0.1" in two_generations and "live" in two_generations

    def files() -> dict[Path, bytes]:  # (gc takes each run's lease: its lock file may appear)
        return {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.name != "owner.lock"}

    before = files()
    code, out, _ = _run_cli(capsys, "gc", "--dir", str(copy), "--dry-run")
    assert code == 0 and "crashed: old generations and stale files, would free" in out
    assert files() == before

    code, out, _ = _run_cli(capsys, "gc", "--dir", str(copy))
    assert code == 0 and not stale.exists()
    after = {r.key: r for r in list_runs(copy)}
    assert "live: running, skipped" in out
    assert len(list(after["live"].path.glob("manifest.*"))) == 2
    for key in set(two_generations) - {"live"}:
        assert len(list(after[key].path.glob("manifest.*"))) == 1
        assert f"{key}: old generations and stale files, freed" in out
    freed = sum(sizes[k] - after[k].size for k in ("sweep/lr=0.1", "failing", "crashed", "interrupted"))
    assert f"freed {cli.format_size(freed)}" in out.splitlines()[-1]
    assert {k: r.state for k, r in after.items()} == {r.key: r.state for r in list_runs(ck)}
    code, out, _ = _run_cli(capsys, "show", "sweep/lr=0.1", "--dir", str(copy))
    assert code == 0 and "progress:    100/100" in out  # the newest generation is intact


def test_gc_final_values_keeps_the_completion_record(runs, capsys, tmp_path):
    from resumable_magic import Resumable, ValuesDroppedError, load
    from resumable_magic.errors import NoCheckpointError

    ck, _ = runs
    copy = tmp_path / "ck"
    _copy_tolerant(ck, copy)
    code, out, _ = _run_cli(capsys, "gc", "--dir", str(copy), "--final-values")
    assert code == 0 and "sweep/lr=0.1: finished run's final values, freed" in out
    assert "live: running, skipped" in out
    run_dir = copy / "sweep" / "lr=0.1"
    assert sorted(p.name for p in run_dir.iterdir() if p.is_file()) == ["DONE", "owner.json", "owner.lock"]
    assert not list((run_dir / "objects").iterdir())
    info = find_run(copy, "sweep/lr=0.1")
    assert info.state == "finished" and info.position == info.total == 100
    assert info.note and "final values deleted" in info.note
    assert find_run(copy, "failing").state == "failed"  # only finished runs lose their values

    with pytest.raises(ValuesDroppedError, match="--fresh"):
        Resumable("sweep/lr=0.1", {"total": 0, "seen": []}, dir=copy).open()
    with pytest.raises(NoCheckpointError, match="final values"):
        load("sweep/lr=0.1", dir=copy)
    state = {"total": 0, "seen": []}
    with Resumable("sweep/lr=0.1", state, dir=copy, fresh=True) as run:
        for i in run.iterate(range(100)):
            state["total"] += i
    assert load("sweep/lr=0.1", dir=copy)["total"] == sum(range(100))
    assert find_run(copy, "sweep/lr=0.1").note is None


def test_status_magic(runs):
    from IPython.core.getipython import get_ipython
    from IPython.testing.globalipapp import get_ipython as global_ipython

    from resumable_magic.frontends.status_magic import StatusMagics

    ck, _ = runs
    ip = get_ipython() or global_ipython()
    ip.register_magics(StatusMagics)
    table = ip.run_line_magic("resumable_status", str(ck))
    page = table._repr_html_()
    for state, colour in [
        ("finished", "#1a7f37"),
        ("running", "#b08800"),
        ("crashed", "#cf222e"),
        ("failed", "#cf222e"),
        ("interrupted", "#6e7781"),
    ]:
        assert f'class="resumable-{state}" style="color:{colour}' in page
    assert "ValueError: bad item 25" in page and "sweep/lr=0.1" in page
    formatted, _ = ip.display_formatter.format(table)
    assert formatted["text/plain"] == cli.plain_table(table.runs)  # the live run changes between listings
    assert {line.split()[0] for line in formatted["text/plain"].splitlines()[1:]} == {
        r.key for r in list_runs(ck)
    }
    assert "\x1b[" not in formatted["text/plain"]
