"""Issue 14.4: the code the loop calls is fingerprinted. A simple value a notebook function reads that
changed since the checkpoint refuses the resume (as the cell's own inputs do); changed code warns with
a diff naming the function. Through the magic and ``run_cell`` (the ``runner`` fixture), the walk
itself (``state.reach``), and one real kernel killed with SIGKILL.
"""

from __future__ import annotations

import itertools
import linecache
import signal
import sys
import types

import pytest
from kernels import KernelDied
from test_magic import runner  # noqa: F401  (the fixture running cells both ways)

from resumable_magic.errors import InputsChangedError
from resumable_magic.state.reach import align_recorded, code_block, reach, split_code

_cells = itertools.count()


def define(runner, source: str) -> None:  # noqa: F811
    """Run ``source`` as a notebook cell: through IPython (which keeps its text for inspect), or exec'd
    under a cell-like file name registered in linecache, as IPython does."""
    if runner.mode == "magic":
        assert runner.shell.run_cell(source).success
    else:
        name = f"<cell-{next(_cells)}>"
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        exec(compile(source, name, "exec"), runner.ns)


LOOP = """\
total = 0
for i in range(10):
    total += CALL
    if i == stop.at:
        raise ValueError("boom")
"""


def fail_then_rerun(runner, call: str, change: str, options: str = ""):  # noqa: F811
    """Run the loop calling ``call`` until it fails at iteration 5 (checkpoints every 2), apply
    ``change`` (a notebook cell), and run it again (not failing). Returns the second outcome."""
    runner.ns["stop"] = types.SimpleNamespace(at=5)  # not plain data: not an input
    cell = LOOP.replace("CALL", call)
    failed = runner("total", cell, "--every 2it")
    assert isinstance(failed.error, ValueError), failed
    runner.ns["stop"].at = -1
    if change:
        define(runner, change)
    runner.before_rerun = len(runner.manifests())
    return runner("total", cell, "--every 2it " + options)


F = "def f(x):\n    return x * scale\n"


def test_a_global_a_function_reads_changed_refuses_naming_it_and_accept_changes_resumes(runner):  # noqa: F811
    define(runner, "scale = 2\n" + F)
    refused = fail_then_rerun(runner, "f(i)", "scale = 3\n")
    assert isinstance(refused.error, InputsChangedError), refused
    assert "scale (read by f): 2 then, 3 now" in str(refused.error)
    assert len(runner.manifests()) == runner.before_rerun and runner.ns["total"] == 2 * sum(
        range(6)
    )  # nothing ran
    resumed = runner("total", LOOP.replace("CALL", "f(i)"), "--every 2it --accept-changes")
    assert resumed.error is None and "from the checkpoint at iteration 4" in resumed.out
    assert runner.ns["total"] == 2 * sum(range(4)) + 3 * sum(range(4, 10))  # as accepted: mixed


def test_an_unchanged_function_redefined_elsewhere_neither_warns_nor_refuses(runner):  # noqa: F811
    define(runner, "scale = 2\n" + F)
    moved = "\n\n# the same function, in another cell, further down\nscale = 2\n\n\n" + F.replace(
        "    return", "    # a comment is no change\n    return"
    )
    outcome = fail_then_rerun(runner, "f(i)", moved)
    assert outcome.error is None and "changed" not in outcome.out, outcome.out
    assert runner.ns["total"] == 2 * sum(range(10))


def test_a_changed_function_warns_with_a_diff_naming_it_and_resumes(runner):  # noqa: F811
    define(runner, "scale = 2\n" + F)
    outcome = fail_then_rerun(runner, "f(i)", F.replace("x * scale", "x * scale + 1"))
    assert outcome.error is None, outcome
    assert "code the loop calls changed since the checkpoint" in outcome.out
    assert "f:" in outcome.out and "+    return x * scale + 1" in outcome.out
    assert "-    return x * scale" in outcome.out and "from the checkpoint at iteration 4" in outcome.out


@pytest.mark.parametrize(
    ("setup", "call", "change", "named"),
    [
        pytest.param(
            "def g(x):\n    return x * 2\ndef f(x):\n    return g(x) + 1\n",
            "f(i)",
            "def g(x):\n    return x * 3\n",
            "g:",
            id="a helper called through another",
        ),
        pytest.param(
            "class Scaler:\n    def apply(self, x):\n        return x * 2\nsc = Scaler()\n",
            "sc.apply(i)",
            "class Scaler:\n    def apply(self, x):\n        return x * 3\n",
            "Scaler.apply:",
            id="a method of a notebook class (the live class)",
        ),
        pytest.param(
            "import functools\ndef deco(fn):\n    @functools.wraps(fn)\n    def wrapper(*a):\n"
            "        return fn(*a)\n    return wrapper\n@deco\ndef h(x):\n    return x * 2\n",
            "h(i)",
            "@deco\ndef h(x):\n    return x * 3\n",
            "h:",
            id="a decorated function",
        ),
    ],
)
def test_changed_code_reached_indirectly_warns(runner, setup, call, change, named):  # noqa: F811
    define(runner, setup)
    if "Scaler" in setup:
        change += "sc = Scaler()\n"
    outcome = fail_then_rerun(runner, call, change)
    assert outcome.error is None, outcome
    assert "code the loop calls changed" in outcome.out and named in outcome.out, outcome.out


@pytest.mark.parametrize(
    ("setup", "call", "change", "named"),
    [
        pytest.param(
            "import functools\ndef f(x, k):\n    return x * k\np = functools.partial(f, k=2)\n",
            "p(i)",
            "p = functools.partial(f, k=3)\n",
            "k= (read by partial(f)): 2 then, 3 now",
            id="a partial's argument",
        ),
        pytest.param(
            "def make(s):\n    def g(x):\n        return x * s\n    return g\ng = make(2)\n",
            "g(i)",
            "g = make(3)\n",
            "s (read by make.<locals>.g, captured): 2 then, 3 now",
            id="a closure's captured value",
        ),
        pytest.param(
            "K = 2\ndef f(x, k=K):\n    return x * k\n",
            "f(i)",
            "K = 3\ndef f(x, k=K):\n    return x * k\n",
            "k= (read by f, default): 2 then, 3 now",
            id="a default argument",
        ),
        pytest.param(
            "scale = 2\nimport functools\ndef deco(fn):\n    @functools.wraps(fn)\n    def wrapper(*a):\n"
            "        return fn(*a)\n    return wrapper\n@deco\ndef h(x):\n    return x * scale\n",
            "h(i)",
            "scale = 3\n",
            "scale (read by h): 2 then, 3 now",
            id="a global a decorated function reads",
        ),
        pytest.param(
            "class Scaler:\n    factor = 2\n    def apply(self, x):\n        return x * self.factor\n",
            "Scaler().apply(i)",
            "Scaler.factor = 3\n",
            "Scaler.factor (read by Scaler): 2 then, 3 now",
            id="a notebook class's attribute",
        ),
    ],
)
def test_changed_values_reached_indirectly_refuse(runner, setup, call, change, named):  # noqa: F811
    define(runner, setup)
    outcome = fail_then_rerun(runner, call, change)
    assert isinstance(outcome.error, InputsChangedError), outcome
    assert named in str(outcome.error), outcome.error


def test_a_function_from_a_user_module_in_the_working_folder(runner, tmp_path, monkeypatch):  # noqa: F811
    (tmp_path / "helpers14.py").write_text("def f(x):\n    return x * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "helpers14", raising=False)
    define(runner, "import helpers14\n")
    try:
        # The module's own file changes and is reloaded (as autoreload would).
        change = (
            "import importlib\nwith open('helpers14.py', 'w') as out:\n"
            "    out.write('def f(x):\\n    # now triple\\n    return x * 3\\n')\n"
            "importlib.reload(helpers14)\n"
        )
        outcome = fail_then_rerun(runner, "helpers14.f(i)", change)
        assert outcome.error is None, outcome
        assert "helpers14.f:" in outcome.out and "+    return x * 3" in outcome.out, outcome.out
    finally:
        sys.modules.pop("helpers14", None)


def test_state_the_called_code_changes_is_no_input(runner):  # noqa: F811
    """A global counter and an in-place cache the function updates are state it keeps, not inputs
    that changed: the resume in the same kernel goes on."""
    define(
        runner,
        "calls = 0\ncache = {}\ndef f(x):\n    global calls\n    calls += 1\n"
        "    if x not in cache:\n        cache[x] = x * 2\n    return cache[x]\n",
    )
    outcome = fail_then_rerun(runner, "f(i)", "")
    assert outcome.error is None and "changed" not in outcome.out, outcome
    assert runner.ns["total"] == 2 * sum(range(10))


# --- the walk itself -------------------------------------------------------------------------------


def _notebook(source: str) -> dict:
    name = f"<cell-{next(_cells)}>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    ns: dict = {"__name__": "__main__"}
    exec(compile(source, name, "exec"), ns)
    return ns


def test_only_the_globals_the_code_loads_are_read_not_attribute_names():
    ns = _notebook("scale = 2\nlimit = 5\ndef f(x):\n    return x.scale + limit\n")
    found = reach(["f"], ns)
    assert found.values == {"limit (read by f)": 5}
    assert found.code == {"f": "def f(x):\n    return x.scale + limit"}


def test_library_code_and_objects_are_not_walked():
    ns = _notebook("import json, functools\nsize = 3\ndef f(x):\n    return json.dumps(x)\n")
    assert reach(["f", "json", "functools", "size"], ns, exclude={"size"}).code == {
        "f": "def f(x):\n    return json.dumps(x)"
    }


def test_exec_without_source_falls_back_to_a_digest_without_line_numbers():
    a: dict = {"__name__": "__main__"}
    b: dict = {"__name__": "__main__"}
    exec("def f(x):\n    return x + 1\n", a)
    exec("\n\n\ndef f(x):\n    return x + 1\n", b)
    assert reach(["f"], a).code == reach(["f"], b).code
    assert reach(["f"], a).code["f"].startswith("<source not available: compiled code ")


def test_recorded_code_round_trips_and_old_texts_have_none():
    block = "for i in x:\n    pass\n" + code_block({"f": "def f():\n    pass", "g": "def g():\n    return 1"})
    assert split_code(block) == (
        "for i in x:\n    pass\n",
        {"f": "def f():\n    pass", "g": "def g():\n    return 1"},
    )
    assert split_code("for i in x:\n    pass\n") == ("for i in x:\n    pass\n", None)


def test_a_global_read_by_another_function_now_is_compared_under_its_new_key():
    recorded = {"N": "3", "scale (read by f)": "2", "gone (read by f)": "1", "k= (read by f, default)": "1"}
    now = {"N": 3, "scale (read by g)": 2, "k= (read by f, default)": 1}
    assert align_recorded(recorded, now) == {
        "N": "3",
        "scale (read by g)": "2",
        "k= (read by f, default)": "1",
    }


# --- a real kernel ---------------------------------------------------------------------------------

KERNEL_CELL = """\
%%resumable total --name reach --dir {ck} --every 1it
import os, signal, time
total = 0
for i in range(20):
    total += f(i)
    if i == 6 and os.environ.get('KILL14'):
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.kernel
def test_a_global_changed_between_a_crash_and_the_rerun_is_refused_in_a_real_kernel(kernel, tmp_path):
    cell = KERNEL_CELL.format(ck=tmp_path / "ck")
    # The kill switch is an environment variable (gone with the killed process), not a notebook value.
    define_f = (
        "import os\nscale = {}\nif {}:\n    os.environ['KILL14'] = '1'\ndef f(x):\n    return x * scale\n"
    )
    kernel.run("%load_ext resumable_magic")
    kernel.run(define_f.format(2, True)).check()
    with pytest.raises(KernelDied) as died:
        kernel.run(cell)
    assert died.value.signal == signal.SIGKILL
    kernel.restart()
    kernel.run("%load_ext resumable_magic")
    kernel.run(define_f.format(3, False)).check()  # the notebook re-run, with a new scale
    refused = kernel.execute(cell, check=False)
    assert refused.error is not None and refused.error.ename == "InputsChangedError", refused.describe()
    assert "scale (read by f): 2 then, 3 now" in refused.error.evalue
    kernel.run(define_f.format(2, False)).check()  # the old value back: the resume goes on
    resumed = kernel.run(cell + "print('total', total)\n")
    assert "from the checkpoint at iteration" in resumed.stdout and "total 380" in resumed.stdout, (
        resumed.describe()
    )


def test_enums_dataclasses_and_library_wrappers_are_walked_once_and_stably():
    source = (
        "import dataclasses, enum\n@dataclasses.dataclass\nclass C:\n    a: int = 1\n"
        "    def go(self):\n        return self.a\nclass E(enum.Enum):\n    X = 1\n    Y = 2\n"
    )
    first, moved = _notebook(source), _notebook("\n\n" + source)
    found = reach(["C", "E"], first)  # an enum's members are instances of it: no endless walk
    assert found.code == reach(["C", "E"], moved).code and "C.go" in found.code
    # dataclasses' repr wrapper (functools.wraps gave it the notebook's module) is library code.
    assert not any("wrapper" in name or "repr_running" in name for name in [*found.code, *found.values])
