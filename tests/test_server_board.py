"""The board's server extension, for real: a ``jupyter server`` process on loopback with the extension
enabled as the wheel enables it, over runs made by real processes (tests/boardruns.py).

The runs live in ``project/.resumable`` under the server's root (found by the bounded walk) and in a
folder outside the root named by the ``ResumableServerApp.folders`` setting.
"""

from __future__ import annotations

import http.cookies
import json
import subprocess
import sys
import urllib.parse

import pytest
from boardruns import Runs, wait_for
from checkpoints import newest_position
from servers import jupyter_env, running_server

from resumable_magic.core.origin import ORIGIN_ENV

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    base = tmp_path_factory.mktemp("board")
    root = base / "root"
    in_root = root / "project" / ".resumable"
    outside = base / "elsewhere"
    in_root.mkdir(parents=True)
    runs = Runs(in_root, jupyter_env(base), base / "scripts")
    other = Runs(outside, runs.env, base / "scripts")
    try:
        live = runs.make_five_states()
        assert other.start("other/lr=0.1", "finish", 20).wait(60) == 0
        with running_server(base, root, [f"--ResumableServerApp.folders={outside}"]) as server:
            yield server, in_root, outside, live, runs
    finally:
        runs.stop()
        other.stop()


def _rows(answer: dict) -> dict[str, dict]:
    rows = {row["key"]: row for row in answer["runs"]}
    rows.update({row["key"]: row for group in answer["groups"] for row in group["rows"]})
    return rows


def test_every_state_of_real_runs_is_on_the_board(board):
    server, in_root, outside, _, _ = board
    answer = server.api("/resumable/api/runs?" + urllib.parse.urlencode({"open": f"{outside}\nother"}))
    assert [f["folder"] for f in answer["folders"]] == [str(in_root), str(outside)]
    rows = _rows(answer)
    assert {key: row["state"] for key, row in rows.items()} == {
        "finished": "finished",
        "failing": "failed",
        "crashed": "crashed",
        "interrupted": "interrupted",
        "live": "running",
        "other/lr=0.1": "finished",
    }
    assert rows["failing"]["error"] == "ValueError: bad item 25"
    assert "pid" in rows["live"]["owner"]
    assert rows["crashed"]["position"] >= 30 and rows["crashed"]["total"] == 100_000
    assert rows["finished"]["position"] == 100 and rows["finished"]["size"] > 0
    assert answer["counts"] == {"finished": 2, "failed": 1, "crashed": 1, "interrupted": 1, "running": 1}
    # the sweep member is grouped under its sweep; its rows are sent only while the group is open
    closed = server.api("/resumable/api/runs")
    assert [(g["key"], g["counts"], g["rows"]) for g in closed["groups"]] == [("other", {"finished": 1}, [])]


def test_a_runs_history_comes_on_request(board):
    server, in_root, _, _, _ = board
    query = urllib.parse.urlencode({"folder": str(in_root), "key": "interrupted"})
    row = server.api(f"/resumable/api/run?{query}")
    assert row["state"] == "interrupted"
    assert [e["event"] for e in row["history"]][:1] == ["started"], row["history"]
    status, _, _ = server.request(
        "/resumable/api/run?" + urllib.parse.urlencode({"folder": "/etc", "key": "x"})
    )
    assert status == 404


def test_the_board_follows_a_run_that_dies(board):
    """A live run SIGKILLed: no file changes, yet the next listing says crashed (within the poll)."""
    server, _, _, _, runs = board
    other = runs.start("dies", "loop", 10_000_000)
    wait_for(
        lambda: _rows(server.api("/resumable/api/runs")).get("dies", {}).get("state") == "running", "running"
    )
    other.kill()
    other.wait()
    wait_for(
        lambda: _rows(server.api("/resumable/api/runs"))["dies"]["state"] == "crashed", "crashed", timeout=10
    )


def test_unauthenticated_requests_are_refused(board):
    server = board[0]
    status, headers, _ = server.request("/resumable/", token=False)
    assert status == 302 and "/login" in headers["Location"]
    for path in ("/resumable/api/runs", "/resumable/api/run?folder=x&key=y"):
        assert server.request(path, token=False)[0] == 403
    status, _, _ = server.request("/resumable/api/resubmit", "POST", {"all_crashed": True}, token=False)
    assert status == 403


def _login(server) -> dict[str, str]:
    """Cookies of a browser that opened the page with the token in its URL (as the server's link does)."""
    status, headers, page = server.request(f"/resumable/?token={server.token}", token=False)
    assert status == 200, page[:300]
    jar = http.cookies.SimpleCookie()
    for value in headers.get_all("Set-Cookie") or []:
        jar.load(value)
    return {name: morsel.value for name, morsel in jar.items()}


def test_a_cross_site_post_is_refused(board):
    """A logged-in browser's cookies alone (what another site's form sends) do not resubmit: the XSRF
    token the page holds is required too."""
    server, in_root, *_ = board
    cookies = _login(server)
    assert "_xsrf" in cookies, cookies
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    body = {"runs": [{"folder": str(in_root), "key": "crashed"}]}
    status, _, text = server.request("/resumable/api/resubmit", "POST", body, {"Cookie": cookie}, token=False)
    assert status == 403 and b"_xsrf" in text, text[:300]
    # nor do they with a token guessed (another site cannot read the cookie)
    forged = {"Cookie": cookie, "X-XSRFToken": "2|00000000|" + "0" * 32 + "|1"}
    status, _, text = server.request("/resumable/api/resubmit", "POST", body, forged, token=False)
    assert status == 403 and b"XSRF" in text, text[:300]
    # the same request from the page (header = cookie) passes XSRF and reaches the checks
    xsrf = {"Cookie": cookie, "X-XSRFToken": cookies["_xsrf"]}
    status, _, text = server.request("/resumable/api/resubmit", "POST", {"runs": []}, xsrf, token=False)
    assert status == 200 and json.loads(text) == {"results": []}


def test_resubmit_refuses_what_it_must_not_start(board):
    server, in_root, *_ = board

    def resubmit(folder: str, key: str, confirm: bool = False) -> str:
        body = {"runs": [{"folder": folder, "key": key}], "confirm": confirm}
        [result] = server.api("/resumable/api/resubmit", "POST", body)["results"]
        assert result["started"] is False, result
        return result["reason"]

    assert "it is running: pid" in resubmit(str(in_root), "live")
    assert resubmit(str(in_root), "finished") == "it is finished"
    assert "failed with 'ValueError: bad item 25'" in resubmit(str(in_root), "failing")
    assert "records no notebook or script" in resubmit(str(in_root), "crashed")
    assert "not a folder this board shows" in resubmit("/tmp", "crashed")
    assert "no checkpoint" in resubmit(str(in_root), "no-such-run")


def test_a_sweeps_members_not_started_are_planned(board):
    """A sweep on a one-worker Dask cluster records its plan before any member runs: while the first
    member waits, the other three are on the board as planned (blue); then all finish."""
    server, in_root, _, _, runs = board
    sweep, gate = runs.start_sweep(4)
    group = {"open": f"{in_root}\nsweep"}

    def states() -> dict[str, str]:
        answer = server.api("/resumable/api/runs?" + urllib.parse.urlencode(group))
        return {key: row["state"] for key, row in _rows(answer).items() if key.startswith("sweep/")}

    wait_for(
        lambda: sorted(states().values()) == ["planned"] * 3 + ["running"], "3 planned, 1 running", sweep, 120
    )
    assert set(states()) == {f"sweep/i={i}" for i in range(4)}
    gate.touch()
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == "[0, 1, 4, 9]"
    wait_for(
        lambda: sorted(states().values()) == ["finished"] * 4, "the sweep finished on the board", timeout=30
    )


def _resubmit(server, folder, key: str, confirm: bool = False) -> dict:
    body = {"runs": [{"folder": str(folder), "key": key}], "confirm": confirm}
    [result] = server.api("/resumable/api/resubmit", "POST", body)["results"]
    return result


def _crash(runs: Runs, key: str, origin: dict, env: dict[str, str] | None = None) -> None:
    """A worker on ``key`` that records ``origin`` (as `resumable run` passes it), SIGKILLed mid-loop."""
    proc = runs.start(key, "loop", 100_000, {ORIGIN_ENV: json.dumps(origin), **(env or {})})
    wait_for(lambda: newest_position(runs.folder / key) is not None, f"a checkpoint of {key!r}", proc)
    proc.kill()
    proc.wait()


def test_resubmit_acts_only_on_records_it_can_trust(board, tmp_path):
    """Resubmit runs the code a checkpoint folder names: a notebook outside the server's root, a
    parameter the command line cannot carry exactly, or a checkpoint signed with another key is
    refused, and nothing is started."""
    server, in_root, *_, runs = board
    inside = server.root / "project" / "train.ipynb"
    inside.write_text("{}")
    outside = tmp_path / "elsewhere.ipynb"
    outside.write_text("{}")
    _crash(runs, "outside", {"notebook": str(outside)})
    _crash(runs, "listed", {"notebook": str(inside), "parameters": {"sizes": [1, 2]}})
    _crash(runs, "foreign", {"notebook": str(inside)}, {"RESUMABLE_SIGNING_KEY": "0" * 64})
    wait_for(
        lambda: {"outside", "listed", "foreign"} <= set(_rows(server.api("/resumable/api/runs"))), "the runs"
    )
    assert "outside the server's root" in _resubmit(server, in_root, "outside")["reason"]
    assert (
        "sizes = [1, 2] cannot be passed on the command line exactly"
        in _resubmit(server, in_root, "listed")["reason"]
    )
    assert "signed with a different key" in _resubmit(server, in_root, "foreign")["reason"]
    assert "signed with a different key" in _rows(server.api("/resumable/api/runs"))["foreign"]["problem"]
    # "Resubmit all crashed": every crashed run on the board, each checked; here none may start
    crashed = {
        key for key, row in _rows(server.api("/resumable/api/runs")).items() if row["state"] == "crashed"
    }
    results = server.api("/resumable/api/resubmit", "POST", {"all_crashed": True})["results"]
    assert {r["key"] for r in results} == crashed >= {"crashed", "outside", "listed", "foreign"}
    assert [r for r in results if r["started"] or not r["reason"]] == []
    assert not list(in_root.rglob("RESUBMIT.log"))


FAILING_NOTEBOOK = [
    ("n = 60", ["parameters"]),
    ("%load_ext resumable_magic\nimport os", []),
    (
        "%%resumable total --every 1it\ntotal = 0\nfor i in range(n):\n"
        "    if i == 30 and os.path.exists('fail-flag'):\n        raise ValueError('flag raised at 30')\n"
        "    total += i",
        [],
    ),
    ("print('total', total)", []),
]


def test_a_failed_run_is_resubmitted_only_when_confirmed(board):
    """A notebook run that failed under `resumable run`: Resubmit says its error and asks; confirmed,
    it starts `resumable run` on the server (output in RESUBMIT.log), which finishes it."""
    import nbformat

    server, in_root, *_, runs = board
    project = server.root / "project"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for source, tags in FAILING_NOTEBOOK:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nbformat.write(nb, project / "fails.ipynb")
    (project / "fail-flag").touch()
    first = subprocess.run(
        [sys.executable, "-m", "resumable_magic", "run", "fails.ipynb", "-p", "n", "50"],
        env=runs.env, cwd=project, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert first.returncode == 1, first.stdout + first.stderr

    def row() -> dict:
        return next(
            (r for k, r in _rows(server.api("/resumable/api/runs")).items() if k.startswith("fails.ipynb/")),
            {},
        )

    wait_for(lambda: row().get("state") == "failed", "the failed run on the board")
    key = row()["key"]
    assert row()["error"] == "ValueError: flag raised at 30" and row()["params"] == "n=50"
    refused = _resubmit(server, in_root, key)
    assert (
        refused["started"] is False
        and "flag raised at 30" in refused["reason"]
        and "confirm" in refused["reason"]
    )
    (project / "fail-flag").unlink()  # the user fixed the cause
    started = _resubmit(server, in_root, key, confirm=True)
    assert started["started"] is True, started
    wait_for(lambda: row().get("state") == "finished", "the resubmitted run finished", timeout=180)
    log = (in_root / "fails.ipynb").rglob("RESUBMIT.log")
    assert "resubmitted from the board" in next(log).read_text()
    assert row()["position"] == 50
