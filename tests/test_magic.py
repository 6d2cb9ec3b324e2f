"""%%resumable in an in-process IPython shell, and the same behaviours through the plain API.

The ``runner`` fixture runs a cell either through the magic (``shell.run_cell``) or through
``resumable_magic.core.cellrun.run_cell`` on a plain dict, as ipytest does, so that the core is tested
without IPython and the magic is shown to be a thin layer over it.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from IPython.core.getipython import get_ipython as current_shell
from IPython.testing import globalipapp

from resumable_magic import load
from resumable_magic.core.cellrun import run_cell
from resumable_magic.errors import CellStructureError, ResumableError
from resumable_magic.frontends.magic import derive_key
from resumable_magic.progress.textview import TextProgress
from resumable_magic.state import rng

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def get_ipython() -> Any:
    """The in-process test shell (globalipapp starts it once per process)."""
    return current_shell() or globalipapp.get_ipython()


@dataclass
class Outcome:
    error: BaseException | None
    out: str


class Runner:
    def __init__(self, mode: str, directory: Path, capsys: Any) -> None:
        self.mode, self.directory, self.capsys = mode, directory, capsys
        self.shell = get_ipython()
        if "resumable" not in self.shell.magics_manager.magics["cell"]:
            self.shell.run_line_magic("load_ext", "resumable_magic")
        self.ns: dict[str, Any] = self.shell.user_ns if mode == "magic" else {"__name__": "__main__"}

    def __call__(self, names: str, body: str, options: str = "") -> Outcome:
        self.capsys.readouterr()
        if self.mode == "magic":
            result = self.shell.run_cell(
                f"%%resumable {names} --name t --dir {self.directory} {options}\n{body}"
            )
            error = result.error_before_exec or result.error_in_exec
        else:
            error = None
            flags = options.split()
            every = flags[flags.index("--every") + 1] if "--every" in flags else None
            params: list[str] = []
            if "--params" in flags:
                for token in flags[flags.index("--params") + 1 :]:
                    if token.startswith("--"):
                        break
                    params.extend(p for p in token.split(",") if p)
            try:
                run_cell(
                    body,
                    names.replace(",", " ").split(),
                    self.ns,
                    key="t",
                    dir=self.directory,
                    every=every,
                    fresh="--fresh" in flags,
                    params=params,
                    accept_changes="--accept-changes" in flags,
                    progress=TextProgress(),
                    max_size=flags[flags.index("--max-size") + 1] if "--max-size" in flags else None,
                )
            except BaseException as exc:
                error = exc
        captured = self.capsys.readouterr()
        return Outcome(error, ANSI.sub("", captured.out + captured.err))

    def manifests(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.directory / "t").glob("manifest.*.json"))]


@pytest.fixture(params=["magic", "api"])
def runner(request, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = Runner(request.param, tmp_path / "ck", capsys)
    before = set(r.ns)
    yield r
    for name in set(r.ns) - before:
        r.ns.pop(name, None)


LOOP = """\
import random
total, seen = 0, []
for i in range(N):
    total += i
    seen.append(random.random())
    if i == fail_at:
        raise ValueError(f"boom at {i}")
"""


def test_run_then_replay_then_fresh(runner):
    runner.ns.update(N=50, fail_at=-1)
    first = runner("total seen", LOOP, "--every 7it")
    assert first.error is None and runner.ns["total"] == sum(range(50))
    values = (runner.ns["total"], list(runner.ns["seen"]))
    runner.ns["seen"] = "clobbered"
    replay = runner("total seen", LOOP, "--every 7it")
    assert replay.error is None and "Replayed the finished run" in replay.out
    assert (runner.ns["total"], runner.ns["seen"]) == values and runner.ns["i"] == 49
    fresh = runner("total seen", LOOP, "--every 7it --fresh")
    assert fresh.error is None and "Replayed" not in fresh.out
    assert runner.ns["total"] == sum(range(50)) and runner.ns["seen"] != values[1]  # the RNG moved on


def test_exception_keeps_the_checkpoint_and_the_next_run_resumes_exactly(runner):
    import random

    random.seed(5)
    runner.ns.update(N=40, fail_at=23)
    failed = runner("total, seen", LOOP, "--every 5it")
    assert isinstance(failed.error, ValueError) and "boom at 23" in str(failed.error)
    assert max(m["position"] for m in runner.manifests()) == 20
    outcome = json.loads((runner.directory / "t" / "outcome.json").read_text())
    assert (
        outcome["state"] == "failed"
        and outcome["error"] == "ValueError: boom at 23"
        and outcome["position"] == 23
    )
    runner.ns["fail_at"] = -1  # not read by the loop's inputs check? it is: accept the change
    resumed = runner("total, seen", LOOP, "--every 5it --accept-changes")
    assert resumed.error is None and "from the checkpoint at iteration 20 of 40" in resumed.out
    assert not (runner.directory / "t" / "outcome.json").exists()
    random.seed(5)
    expected = [random.random() for _ in range(40)]
    assert runner.ns["seen"] == expected and runner.ns["total"] == sum(range(40))


def test_changed_inputs_refuse_before_running(runner):
    runner.ns.update(N=10, fail_at=-1)
    runner("total seen", LOOP)
    runner.ns["N"] = 20
    files_before = {p.name: p.read_bytes() for p in (runner.directory / "t").rglob("*") if p.is_file()}
    refused = runner("total seen", LOOP)
    assert type(refused.error).__name__ == "InputsChangedError"
    files_after = {p.name: p.read_bytes() for p in (runner.directory / "t").rglob("*") if p.is_file()}
    assert files_after == files_before  # the finished run's checkpoint and DONE are untouched
    assert "N: 10 then, 20 now" in str(refused.error) and "--fresh" in str(refused.error)
    extended = runner("total seen", LOOP, "--accept-changes")
    assert extended.error is None and runner.ns["total"] == sum(range(20))
    assert "from the checkpoint at iteration 10 of 20" in extended.out


def test_code_change_warns_and_resumes(runner):
    runner.ns.update(N=30, fail_at=12)
    runner("total seen", LOOP, "--every 4it")
    edited = LOOP.replace("total += i", "total += i  # an edit")
    runner.ns["fail_at"] = -1
    outcome = runner("total seen", edited, "--every 4it --accept-changes")
    assert outcome.error is None
    assert "code changed since the checkpoint" in outcome.out and "+    total += i  # an edit" in outcome.out
    assert "from the checkpoint at iteration 12" in outcome.out and runner.ns["total"] == sum(range(30))


WHILE = """\
todo = list(range(25))
done = []
while todo:
    item = todo.pop()
    if item == fail_at:
        raise RuntimeError("transient")
    done.append(item * item)
else:
    finished_cleanly = True
"""


def test_while_loop_resumes_by_reevaluating_the_condition(runner):
    runner.ns.update(fail_at=9)
    failed = runner("todo done", WHILE, "--every 3it")
    assert isinstance(failed.error, RuntimeError)
    assert [m["position"] for m in runner.manifests()][-1] == 15  # items 24..10 done; 9 raised
    runner.ns["fail_at"] = -1
    resumed = runner("todo done", WHILE, "--every 3it --accept-changes")
    assert resumed.error is None and "from the checkpoint at iteration 15" in resumed.out
    assert "the loop changes" not in resumed.out  # `item` is a temporary, not unnamed state
    assert runner.ns["done"] == [i * i for i in reversed(range(25))] and runner.ns["finished_cleanly"]


def test_break_continue_else_behave_as_plain_python(runner):
    body = "out = []\nfor i in range(10):\n    if i % 2:\n        continue\n    if i == 6:\n        break\n    out.append(i)\nelse:\n    out.append('else')\n"
    assert runner("out", body).error is None
    assert runner.ns["out"] == [0, 2, 4]


def test_missing_variable_named_before_the_loop(runner):
    outcome = runner("total totl", "total = 0\nfor i in range(3):\n    total += i\n")
    assert type(outcome.error).__name__ == "StateVariableError"
    assert "'totl' is not defined" in str(outcome.error) and "Did you mean 'total'" in str(outcome.error)
    assert runner.manifests() == []


def test_unpicklable_state_fails_at_position_zero_naming_the_path(runner):
    outcome = runner(
        "state", "state = {'ok': 1, 'gen': (x for x in [1])}\nfor i in range(3):\n    ran = True\n"
    )
    assert type(outcome.error).__name__ == "NotSerializableError"
    assert "state['gen']" in str(outcome.error) and "ran" not in runner.ns


def test_state_that_becomes_unpicklable_stops_the_loop_and_keeps_the_last_checkpoint(runner):
    body = "box = {'v': 0}\nfor i in range(10):\n    box['v'] = i\n    if i == 5:\n        box['gen'] = (x for x in [1])\n"
    outcome = runner("box", body, "--every 2it")
    assert type(outcome.error).__name__ == "NotSerializableError" and "box['gen']" in str(outcome.error)
    assert [m["position"] for m in runner.manifests()][-1] == 4
    assert load("t", dir=runner.directory)["box"] == {"v": 3}


def test_state_deleted_by_the_loop_is_named(runner):
    outcome = runner(
        "a b", "a, b = 0, 0\nfor i in range(6):\n    a += 1\n    if i == 3:\n        del b\n", "--every 2it"
    )
    assert type(outcome.error).__name__ == "StateVariableError"
    assert "'b' no longer exists at iteration 4" in str(outcome.error) and "iteration 2 is kept" in str(
        outcome.error
    )


SWEEP = """\
import random
random.seed(seed)
acc = []
for i in range(20):
    acc.append(lr * random.random())
    if i == fail_at:
        raise ValueError("boom")
"""


def test_params_give_each_parameter_set_its_own_checkpoint(runner):
    import random

    runner.ns.update(lr=0.5, seed=1, fail_at=7)
    assert isinstance(runner("acc", SWEEP, "--every 3it --params lr seed").error, ValueError)
    runner.ns.update(lr=2.0, fail_at=-1)
    other = runner("acc", SWEEP, "--every 3it --params lr,seed")
    assert other.error is None and "Resumed" not in other.out  # its own run, not lr=0.5's checkpoint
    runner.ns["lr"] = 0.5
    resumed = runner("acc", SWEEP, "--every 3it --accept-changes --params lr seed")
    assert resumed.error is None and "from the checkpoint at iteration 6 of 20" in resumed.out
    random.seed(1)
    assert runner.ns["acc"] == [0.5 * random.random() for _ in range(20)]
    runs = sorted(p.name for p in (runner.directory / "t").iterdir())
    assert runs == ["lr=0.5,seed=1", "lr=2.0,seed=1"]
    manifest = json.loads(next((runner.directory / "t" / "lr=2.0,seed=1").glob("manifest.*")).read_text())
    assert manifest["params"] == {"lr": {"text": "2.0", "json": 2.0}, "seed": {"text": "1", "json": 1}}


def test_params_from_setup_and_values_without_a_short_text(runner):
    body = "mode = 'fast'\ntag = 'a b/c'\nn = 0\nfor i in range(3):\n    n += 1\n"
    assert runner("n", body, "--params mode tag").error is None
    (run,) = (runner.directory / "t").iterdir()
    assert re.fullmatch(r"mode=fast,tag=h[0-9a-f]{10}", run.name)
    missing = runner("n", body, "--params nope")
    assert type(missing.error).__name__ == "OptionError" and "--params 'nope'" in str(missing.error)


def test_params_are_keyed_by_the_content_of_their_values(runner):
    import numpy as np

    body = "total = 0.0\nfor i in range(3):\n    total += float(data.sum()) * lr\n"
    a = np.zeros(10_000)
    b = a.copy()
    b[5_000] = 1.0
    assert repr(a) == repr(b)
    runner.ns.update(data=a, lr=0.5)
    assert runner("total", body, "--params data lr").error is None and runner.ns["total"] == 0.0
    runner.ns["data"] = b  # equal repr, other data: another run, not a.'s result replayed
    assert runner("total", body, "--params data lr").error is None and runner.ns["total"] == 1.5
    assert len(list((runner.directory / "t").iterdir())) == 2
    runner.ns["lr"] = np.float64(0.5)  # equal in value: the same run, replayed
    replayed = runner("total", body, "--params data lr")
    assert replayed.error is None and "Replayed" in replayed.out and runner.ns["total"] == 1.5
    runner.ns["lr"] = (x for x in [0.5])
    refused = runner("total", body, "--params data lr")
    assert type(refused.error).__name__ == "OptionError"
    assert "--params 'lr' is not valid: its value cannot key a run: lr is a generator" in str(refused.error)
    assert len(list((runner.directory / "t").iterdir())) == 2


DRAIN = """\
todo, done = [0, 1, 2], []
for x in todo:
    done.append(x)
    if x < 40:
        todo.append(x + 7)
    if x == fail_at:
        raise ValueError(f"boom at {x}")
"""


def test_a_loop_over_a_named_list_the_body_extends_resumes_over_the_restored_list(runner):
    runner.ns.update(fail_at=-1)
    assert runner("todo done", DRAIN).error is None
    expected = (list(runner.ns["todo"]), list(runner.ns["done"]))
    runner.ns.update(fail_at=22)  # a different run key below: start afresh, fail midway
    failed = runner("todo done", DRAIN, "--every 1it --fresh")
    assert isinstance(failed.error, ValueError), failed.error
    runner.ns.update(fail_at=-1)
    resumed = runner("todo done", DRAIN, "--every 1it --accept-changes")
    assert resumed.error is None, resumed.error
    assert "Resumed" in resumed.out
    assert (runner.ns["todo"], runner.ns["done"]) == expected  # the iterator walked the restored list


def test_an_unnamed_object_changed_by_a_method_call_is_warned_about(runner):
    exec(
        "class Optimizer:\n"
        "    def __init__(self):\n        self.steps = 0\n"
        "    def step(self):\n        self.steps += 1\n",
        runner.ns,
    )
    runner.ns.update(opt=runner.ns["Optimizer"](), weights=[1, 2, 3], queue=iter(range(5)))
    body = "total = 0\nfor x in queue:\n    opt.step()\n    total += weights[x % 3] + x\n"
    outcome = runner("total", body)
    assert outcome.error is None and runner.ns["total"] == 19
    assert "the loop changed 'opt' (through a method call" in outcome.out, outcome.out
    assert "'weights'" not in outcome.out  # read, not changed
    assert "'queue'" not in outcome.out  # the loop's iterable: the resume reproduces its position


def test_unnamed_state_warning(runner):
    outcome = runner("total", "total, log = 0, []\nfor i in range(3):\n    total += i\n    log.append(i)\n")
    assert outcome.error is None and "the loop changes 'log' (line" in outcome.out


def test_shared_objects_stay_shared_after_resume(runner):
    body = (
        "if 'params' not in dir():\n    pass\nparams = [0.0]\nmodel = {'w': params}\nopt = {'w': params}\n"
        "for step in range(10):\n    opt['w'][0] += 1.0\n    if step == stop_at:\n        raise KeyError('stop')\n"
    )
    runner.ns["stop_at"] = 5
    runner("model opt", body, "--every 2it")
    runner.ns["stop_at"] = -1
    assert runner("model opt", body, "--every 2it --accept-changes").error is None
    assert runner.ns["model"]["w"] is runner.ns["opt"]["w"] and runner.ns["model"]["w"][0] == 10.0


def test_load_returns_the_saved_variables(runner):
    runner.ns.update(N=5, fail_at=-1)
    runner("total seen", LOOP)
    saved = load("t", dir=runner.directory)
    assert saved["total"] == 10 and len(saved["seen"]) == 5


def test_corrupt_newest_checkpoint_is_reported_and_the_previous_used(runner):
    runner.ns.update(N=30, fail_at=17)
    runner("total seen", LOOP, "--every 5it")
    newest = sorted((runner.directory / "t").glob("manifest.*.json"))[-1]
    newest.write_bytes(newest.read_bytes()[:-30])
    runner.ns["fail_at"] = -1
    outcome = runner("total seen", LOOP, "--every 5it --accept-changes")
    assert outcome.error is None and "is damaged" in outcome.out
    assert "from the checkpoint at iteration 10 of 30" in outcome.out and runner.ns["total"] == sum(range(30))


def test_all_checkpoints_damaged_starts_fresh_and_says_so(runner):
    runner.ns.update(N=8, fail_at=5)
    runner("total seen", LOOP, "--every 2it")
    for blob in (runner.directory / "t" / "objects").iterdir():
        blob.write_bytes(b"garbage")
    runner.ns["fail_at"] = -1
    outcome = runner("total seen", LOOP, "--every 2it --accept-changes")
    assert outcome.error is None and "No readable checkpoint is left" in outcome.out
    assert runner.ns["total"] == sum(range(8))


@pytest.mark.parametrize(
    ("statement", "said"),
    [
        ("return total", "'return' outside function"),
        ("yield i", "'yield' outside function"),
        ("nonlocal other", "nonlocal declaration not allowed at module level"),
        ("await asyncio.sleep(0)", "`await`"),
        ("async with lock:\n        pass", "`await` (or `async for`/`async with`)"),
    ],
)
def test_a_statement_that_cannot_stand_in_the_loop_is_refused_before_setup_runs(runner, statement, said):
    body = (
        f"import asyncio\nsetup_ran = True\ntotal = 0\nfor i in range(3):\n    total += i\n    {statement}\n"
    )
    outcome = runner("total", body)
    assert isinstance(outcome.error, CellStructureError), outcome.error
    message = str(outcome.error)
    assert said in message and "Line " in message and "nothing was run" in message.lower()
    assert "setup_ran" not in runner.ns  # refused before anything ran
    assert not (runner.directory / "t").exists()  # and nothing was written


def test_an_await_inside_a_function_defined_in_the_loop_is_fine(runner):
    # The coroutine is driven by hand: an event loop may already run in this process.
    body = (
        "import asyncio\ntotal = 0\n"
        "def drive(coro):\n    try:\n        while True:\n            coro.send(None)\n"
        "    except StopIteration as done:\n        return done.value\n"
        "for i in range(3):\n"
        "    async def twice(x):\n        await asyncio.sleep(0)\n        return 2 * x\n"
        "    total += drive(twice(i))\n"
    )
    outcome = runner("total", body)
    assert outcome.error is None and runner.ns["total"] == 6


# -- magic-only: the line, the key, configuration ------------------------------------------------


@pytest.fixture
def shell(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESUMABLE_DIR", str(tmp_path / "ck"))
    ip = get_ipython()
    if "resumable" not in ip.magics_manager.magics["cell"]:
        ip.run_line_magic("load_ext", "resumable_magic")
    return ip


@pytest.mark.parametrize(
    "line", ["a, b --every 2it", "a,b --every 2it", "--every 2it a b", "a --every 2it b", "a , b"]
)
def test_names_with_commas_or_spaces_before_or_after_options(shell, line, tmp_path):
    result = shell.run_cell(
        f"%%resumable {line} --name k\na, b = 0, 0\nfor i in range(5):\n    a += i\n    b -= i\n"
    )
    assert result.success
    saved = load("k", dir=tmp_path / "ck")
    assert (saved["a"], saved["b"]) == (10, -10)


@pytest.mark.parametrize(
    ("line", "message"),
    [("", "Name the state variables"), ("a-b", "not a variable name"), ("a --bogus", "unrecognized")],
)
def test_bad_lines_are_usage_errors(shell, capsys, line, message):
    capsys.readouterr()
    result = shell.run_cell(f"%%resumable {line}\nfor i in range(2): pass\n")
    assert not result.success
    out = ANSI.sub("", "".join(capsys.readouterr()))
    assert "UsageError" in out and message in out


def test_errors_render_as_one_paragraph_without_traceback(shell, capsys):
    capsys.readouterr()
    assert not shell.run_cell("%%resumable x --name e\nx = 1\n").success
    out = ANSI.sub("", "".join(capsys.readouterr()))
    assert "CellStructureError: A %%resumable cell needs one top-level" in out
    assert "Traceback" not in out and "resumable_magic" not in out


def test_teardown_value_is_displayed_and_line_magics_run(shell, capsys):
    body = (
        "%env RESUMABLE_TEST_MARK=1\nacc = 0\nfor i in range(4):\n    acc += i\n!echo from-shell\nacc * 10\n"
    )
    capsys.readouterr()
    assert shell.run_cell(f"%%resumable acc --name d\n{body}").success
    out = "".join(capsys.readouterr())
    assert "Out[" in out and "60" in out
    import os

    assert os.environ.pop("RESUMABLE_TEST_MARK") == "1"


def test_exception_traceback_points_at_the_users_line(shell, capsys):
    capsys.readouterr()
    result = shell.run_cell(
        "%%resumable acc --name tb\nacc = 0\nfor i in range(4):\n    acc += i\n    1 / (i - 2)\n"
    )
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    out = ANSI.sub("", "".join(capsys.readouterr()))
    assert "----> 5     1 / (i - 2)" in out and "cellrun.py" not in out and "run.py" not in out


def test_fallback_key_suggests_name_on_the_first_run_only(shell, capsys):
    cell = "%%resumable acc\nacc = 0\nfor i in range(3):\n    acc += i\n"
    capsys.readouterr()
    assert shell.run_cell(cell).success
    assert "Pass --name KEY" in capsys.readouterr().out
    assert shell.run_cell(cell).success
    assert "Pass --name KEY" not in capsys.readouterr().out


def test_help_is_available(shell):
    doc = shell.find_cell_magic("resumable").__doc__
    assert "--every" in doc and "Run a loop whose state survives kernel crashes" in doc


def test_config_sets_the_defaults(shell, tmp_path):
    shell.run_line_magic("config", f"ResumableMagics.dir = '{tmp_path / 'configured'}'")
    shell.run_line_magic("config", "ResumableMagics.every = '3it'")
    try:
        assert shell.run_cell("%%resumable a --name c\na = 0\nfor i in range(10):\n    a += 1\n").success
        positions = [
            json.loads(p.read_text())["position"] for p in (tmp_path / "configured" / "c").glob("manifest.*")
        ]
        assert sorted(positions) == [9, 10]  # every 3it: ..., 9, then the final one at 10
    finally:
        shell.run_line_magic("config", "ResumableMagics.dir = None")
        shell.run_line_magic("config", "ResumableMagics.every = None")


def test_derived_keys():
    assert derive_key(["a"], "for i in x:", "/nb/dir/Analysis.ipynb", "4f2a") == "Analysis.ipynb/cell-4f2a"
    same = derive_key(["a", "b"], "for i in range(N):", None, None)
    assert same == derive_key(["a", "b"], "for i in range(N):", None, None) and same.startswith(
        "ipython/a+b-"
    )
    assert derive_key(["a", "b"], "for j in range(N):", None, None) != same
    assert derive_key(["a"], "for i in x:", "/x/nb.ipynb", None).startswith("nb.ipynb/a-")


def test_library_errors_are_resumable_errors():
    from resumable_magic import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, (ResumableError, KeyboardInterrupt, UserWarning)), name


def test_a_state_outgrowing_max_size_warns_once_and_the_run_goes_on(runner):
    runner.ns.update(N=40)
    grow = "blocks = []\nfor i in range(N):\n    blocks.append(bytes([i % 256]) * 4000)\n"
    out = runner("blocks", grow, "--every 1it --max-size 50KiB")
    assert out.error is None, out.out
    assert out.out.count("over the 50.0 KiB limit (--max-size)") == 1, out.out
    warned_at = int(re.search(r"The checkpoint at iteration (\d+) holds", out.out).group(1))
    # The first one past the limit; the global RNG states are part of the state too (torch's, 5 KB, when
    # another test imported torch).
    rng_bytes = len(pickle.dumps(rng.capture()))
    assert (warned_at - 1) * 4000 < 50 * 1024 - rng_bytes < (warned_at + 1) * 4000
    assert len(load("t", dir=runner.directory)["blocks"]) == 40
    bad = runner("blocks", grow, "--fresh --max-size lots")
    assert type(bad.error).__name__ == "OptionError" and "--max-size" in str(bad.error)
