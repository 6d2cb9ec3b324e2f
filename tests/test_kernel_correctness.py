"""Nothing silently wrong, in real kernels killed with SIGKILL: a loop over a named list the body
extends, a working folder changed by the body, the honest banner, and the refusals that come before
anything runs (a statement that cannot stand in the loop, a checkpoint folder that is not the user's).
"""

from __future__ import annotations

import os

import pytest
from checkpoints import newest_position

pytestmark = pytest.mark.kernel

DRAIN = """\
%%resumable todo done --name drain --dir {ck} --every 1it
import time
todo, done = [0, 1, 2], []
for x in todo:
    done.append(x)
    if x < 300:
        todo.append(x + 7)
    time.sleep(0.004)
print("done", len(done), sum(done))
"""


def reference_drain() -> tuple[list[int], list[int]]:
    todo, done = [0, 1, 2], []
    for x in todo:
        done.append(x)
        if x < 300:
            todo.append(x + 7)
    return todo, done


def test_a_loop_over_a_named_list_resumes_over_the_restored_list_after_sigkill(kernel, tmp_path):
    ck = tmp_path / "ck"
    kernel.run("%load_ext resumable_magic").check()
    cell = DRAIN.format(ck=ck)
    kernel.execute_async(cell)
    kernel.wait_for(lambda: (newest_position(ck / "drain") or 0) >= 20, timeout=60)
    kernel.kill()
    kernel.restart()
    kernel.run("%load_ext resumable_magic").check()
    result = kernel.run(cell)
    assert result.ok, result.describe()
    assert "Resumed todo, done from the checkpoint at iteration" in result.stdout
    todo, done = reference_drain()
    assert f"done {len(done)} {sum(done)}" in result.stdout, result.describe()
    assert kernel.eval("todo == " + repr(todo)) == "True"


def test_a_relative_folder_and_a_chdir_in_the_body_survive_sigkill(kernel, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    cell = (
        "%%resumable total --name moved --dir ck --every 1it\n"
        "import os, time\n"
        "total = 0\n"
        "for i in range(400):\n"
        f"    os.chdir({str(tmp_path / 'elsewhere')!r})\n"
        "    total += i\n"
        "    time.sleep(0.004)\n"
        "print('total', total)\n"
    )
    kernel.run("%load_ext resumable_magic").check()
    kernel.execute_async(cell)
    kernel.wait_for(lambda: (newest_position(tmp_path / "ck" / "moved") or 0) >= 20, timeout=60)
    kernel.kill()
    assert not (tmp_path / "elsewhere" / "ck").exists()
    kernel.restart()  # in the original working folder
    kernel.run("%load_ext resumable_magic").check()
    result = kernel.run(cell)
    assert result.ok and "Resumed total" in result.stdout and "total 79800" in result.stdout, (
        result.describe()
    )


def test_the_banner_after_sigkill_names_the_total_and_the_iterations_redone(kernel, tmp_path):
    ck = tmp_path / "ck"
    cell = (
        f"%%resumable total --name banner --dir {ck} --every 50it\n"
        "import time\n"
        "total = 0\n"
        "for i in range(2000):\n"
        "    total += i\n"
        "    time.sleep(0.002)\n"
    )
    kernel.run("%load_ext resumable_magic").check()
    kernel.execute_async(cell)
    kernel.wait_for(lambda: (newest_position(ck / "banner") or 0) >= 100, timeout=60)
    kernel.kill()
    kernel.restart()
    kernel.run("%load_ext resumable_magic").check()
    result = kernel.run(cell)
    assert result.ok, result.describe()
    assert " of 2,000 (written " in result.stdout, result.stdout
    assert "Redoing the work after it" in result.stdout or "Nothing is redone" in result.stdout, result.stdout
    assert (
        "iterations, about" in result.stdout
        or "(1 iteration, about" in result.stdout
        or ("Nothing is redone" in result.stdout)
    )


def test_a_statement_that_cannot_stand_in_the_loop_is_refused_before_setup_runs(kernel, tmp_path):
    kernel.run("%load_ext resumable_magic").check()
    result = kernel.execute(
        f"%%resumable total --name bad --dir {tmp_path / 'ck'}\n"
        "open('setup-ran', 'w').close()\n"
        "total = 0\n"
        "for i in range(3):\n"
        "    total += i\n"
        "    return total\n"
    )
    assert result.error is not None and result.error.ename == "CellStructureError", result.describe()
    assert "'return' outside function" in result.error.evalue and "Traceback" not in result.output
    assert not (tmp_path / "setup-ran").exists() and not (tmp_path / "ck").exists()


def test_another_users_checkpoint_folder_is_refused_before_anything_runs(kernel, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("giving a folder to another user needs root, which these tests run as")
    ck = tmp_path / "ck"
    ck.mkdir(mode=0o700)
    os.chown(ck, 65534, 65534)
    kernel.run("%load_ext resumable_magic").check()
    result = kernel.execute(
        f"%%resumable total --name foreign --dir {ck}\n"
        "total = 0\n"
        "for i in range(3):\n"
        "    open(f'ran-{i}', 'w').close()\n"
        "    total += i\n"
    )
    assert result.error is not None and result.error.ename == "UntrustedCheckpointError", result.describe()
    assert "uid 65534" in result.error.evalue and str(ck) in result.error.evalue
    assert not list(tmp_path.glob("ran-*")) and not list(ck.rglob("manifest.*.json"))


PARAMS_CELL = """\
%%resumable total --name sweep --dir {ck} --every 1it --params weights scale
import time
total = 0.0
for i in range(300):
    total += scale(float(weights[i % len(weights)]))
    time.sleep(0.004)
print("total", round(total, 6))
"""

PARAMS_SETUP = """\
import numpy as np
weights = np.arange(5000.0)
def scale(x):
    return x * 0.5
"""


def test_parameters_keyed_by_content_resume_after_sigkill_in_a_new_kernel(kernel, tmp_path):
    """A function and a large array as --params: before, the function's repr (a memory address) made
    another key in the new kernel, and the run silently started over."""
    ck = tmp_path / "ck"
    kernel.run("%load_ext resumable_magic").check()
    kernel.run(PARAMS_SETUP).check()
    kernel.execute_async(PARAMS_CELL.format(ck=ck))
    kernel.wait_for(lambda: len(list(ck.rglob("manifest.*.json"))) > 0, timeout=60)
    run_dir = next(ck.rglob("manifest.*.json")).parent
    kernel.wait_for(lambda: (newest_position(run_dir) or 0) >= 20, timeout=60)
    kernel.kill()
    kernel.restart()
    kernel.run("%load_ext resumable_magic").check()
    kernel.run(PARAMS_SETUP).check()  # the same values, new objects at new addresses
    result = kernel.run(PARAMS_CELL.format(ck=ck))
    assert "Resumed total from the checkpoint at iteration" in result.stdout, result.describe()
    expected = sum(float(i % 5000) * 0.5 for i in range(300))
    assert f"total {round(expected, 6)}" in result.stdout, result.describe()
    assert len({p.parent for p in ck.rglob("manifest.*.json")}) == 1  # one run, not a second one


def test_an_unnamed_object_changed_by_a_method_call_is_warned_about_in_a_kernel(kernel, tmp_path):
    kernel.run("%load_ext resumable_magic").check()
    kernel.run(
        "class Optimizer:\n"
        "    def __init__(self):\n        self.steps = 0\n"
        "    def step(self):\n        self.steps += 1\n"
        "opt = Optimizer()\n"
    ).check()
    result = kernel.run(
        f"%%resumable total --name opt --dir {tmp_path / 'ck'}\n"
        "total = 0\n"
        "for i in range(20):\n"
        "    opt.step()\n"
        "    total += i\n"
    )
    assert "the loop changed 'opt' (through a method call" in result.output, result.describe()
