"""Behaviours that need a real kernel: signals, cell ids, fresh processes, hash randomisation.

Each test drives an IPython kernel through jupyter_client (see kernels.py) and checks real files.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from checkpoints import newest_position

from resumable_magic.store.keys import key_to_relpath

pytestmark = pytest.mark.kernel

# One iteration = one line in log.txt, written as the iteration's last statement, so the test can
# count completed iterations independently of the library.
SLOW_LOOP = """\
%%resumable total --name slow --dir {ck} --every 100000it
import time
total = 0
for i in range({n}):
    if i == 3:
        print("running", flush=True)
    time.sleep({pause})
    total += i
    with open("log.txt", "a") as log:
        log.write(f"{{i}}\\n")
print("total", total)
"""


def logged(cwd: Path) -> list[int]:
    path = cwd / "log.txt"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def load_ext(k) -> None:
    k.run("%load_ext resumable_magic")


def test_interrupt_finishes_the_iteration_checkpoints_and_resumes_without_redoing(kernel, tmp_path):
    load_ext(kernel)
    cell = SLOW_LOOP.format(ck=tmp_path / "ck", n=40, pause=0.05)
    msg = kernel.execute_async(cell)
    kernel.wait_for_output(msg, "running")
    kernel.interrupt()
    result = kernel.result(msg)
    # The cell fails (the kernel skips what was queued after it) but shows no error: one summary
    # line, orange, in stdout; the transient "Interrupt received" only in the widget, replaced.
    assert result.error is not None and result.error.ename == "RunInterrupted", result.describe()
    assert "checkpoint saved" in result.error.evalue
    assert not [m for m in result.messages if m["msg_type"] == "error"], result.describe()
    assert result.stderr == "" and "Interrupt received" not in result.stdout, result.describe()
    stream = [m["content"]["text"] for m in result.messages if m["msg_type"] == "stream"]
    orange = [text for text in stream if "\x1b[38;5;208m" in text]
    assert len(orange) == 1 and orange[0].startswith("\x1b[38;5;208minterrupted at iteration"), orange
    done = logged(tmp_path)
    assert newest_position(tmp_path / "ck" / "slow") == len(done) > 3  # the interrupted iteration finished
    resumed = kernel.run(cell)
    assert f"from the checkpoint at iteration {len(done)} of 40" in resumed.stdout
    assert logged(tmp_path) == list(range(40))  # every iteration exactly once: nothing redone
    assert "total 780" in resumed.stdout


def test_second_interrupt_stops_at_once_and_keeps_the_last_checkpoint(kernel, tmp_path):
    load_ext(kernel)
    # Iteration 3 takes "forever" (in short sleeps, so the signal is seen promptly).
    cell = SLOW_LOOP.format(ck=tmp_path / "ck", n=10, pause="0.01 if i != 3 else 0").replace(
        '        print("running", flush=True)\n',
        '        print("running", flush=True)\n        while True:\n            time.sleep(0.01)\n',
    )
    msg = kernel.execute_async(cell)
    kernel.wait_for_output(msg, "running")
    kernel.interrupt()
    # the first interrupt is being honoured: the widget says so (a transient message, not in stdout)
    kernel.wait_for(
        lambda: any("Interrupt received" in str(m["content"]) for m in kernel.partial(msg).messages)
    )
    kernel.interrupt()
    result = kernel.result(msg)
    assert result.error is not None and result.error.ename == "KeyboardInterrupt", result.describe()
    assert kernel.alive
    assert newest_position(tmp_path / "ck" / "slow") == 0 and logged(tmp_path) == [0, 1, 2]
    assert kernel.eval("total") == "3"  # the namespace is the user's, as left by the stop


def test_sigterm_checkpoints_at_the_boundary_then_lets_the_kernel_terminate(kernel, tmp_path):
    load_ext(kernel)
    cell = SLOW_LOOP.format(ck=tmp_path / "ck", n=60, pause=0.05)
    msg = kernel.execute_async(cell)
    kernel.wait_for_output(msg, "running")
    kernel.send_signal(signal.SIGTERM)
    kernel.wait_for(lambda: not kernel.alive, timeout=30, allow_death=True)
    assert kernel.returncode == -signal.SIGTERM
    done = logged(tmp_path)
    assert newest_position(tmp_path / "ck" / "slow") == len(done) > 3
    kernel.restart()
    load_ext(kernel)
    resumed = kernel.run(cell.replace("--every", "--every"))
    assert logged(tmp_path) == list(range(60)) and "total 1770" in resumed.stdout


@pytest.mark.parametrize("iteration_seconds", [0.2, 30])
def test_jupyter_shutdown_sequence_int_term_kill(kernel, tmp_path, iteration_seconds):
    """SIGINT, SIGTERM 2.5 s later, SIGKILL at 5 s. The SIGTERM is not a 'second interrupt'."""
    load_ext(kernel)
    cell = (
        SLOW_LOOP.format(ck=tmp_path / "ck", n=200, pause=0.02)
        .replace("time.sleep(0.02)", f"time.sleep(0.02 if i < 5 else {iteration_seconds})")
        .replace("--every 100000it", "--every 2it")
    )
    msg = kernel.execute_async(cell)
    kernel.wait_for(lambda: len(logged(tmp_path)) >= 5, timeout=30)
    before = newest_position(tmp_path / "ck" / "slow")
    kernel.send_signal(signal.SIGINT)
    start = time.monotonic()
    # Jupyter's timings, as its shutdown does them; the checks between are the test.
    kernel.wait_for(lambda: time.monotonic() - start >= 2.5, timeout=10, allow_death=True)
    partial = kernel.partial(msg)
    if iteration_seconds < 1:
        assert partial.error is not None and partial.error.ename == "RunInterrupted", partial.describe()
    else:
        assert partial.error is None, "SIGTERM must not be taken for a second interrupt"
    kernel.send_signal(signal.SIGTERM)
    kernel.wait_for(lambda: time.monotonic() - start >= 5 or not kernel.alive, timeout=10, allow_death=True)
    if kernel.alive:
        kernel.kill()
    done = logged(tmp_path)
    position = newest_position(tmp_path / "ck" / "slow")
    if iteration_seconds < 1:
        assert position == len(done)  # checkpoint at the boundary after the SIGINT
    else:
        assert position == before  # cut off mid-iteration: the previous checkpoint stands, readable
    kernel.restart()
    load_ext(kernel)
    finished = kernel.run(cell.replace(f"else {iteration_seconds}", "else 0"))
    assert "total 19900" in finished.stdout
    assert sorted(set(logged(tmp_path))) == list(range(200))


def test_keys_follow_cell_ids_and_the_notebook(kernel_factory, tmp_path):
    k = kernel_factory(env={"JPY_SESSION_NAME": str(tmp_path / "Analysis.ipynb")})
    load_ext(k)
    cell = "%%resumable acc\nacc = 0\nfor i in range(N):\n    acc += i\n"
    k.run("N = 10")
    k.run(cell, cell_id="cell-aaa")
    k.run(cell, cell_id="cell-bbb")  # same text, another cell: its own checkpoint, not a replay
    # The notebook's name has a capital: its folder name carries a digest (two keys never share one,
    # even on a disk that ignores case; see store/keys.py).
    [base] = (tmp_path / ".resumable").iterdir()
    assert base.name.startswith("Analysis.ipynb~") and base == tmp_path / ".resumable" / key_to_relpath(
        "Analysis.ipynb"
    )
    assert sorted(p.name for p in base.iterdir()) == ["cell-cell-aaa", "cell-cell-bbb"]
    edited = k.run(cell.replace("acc += i", "acc += 2 * i"), cell_id="cell-aaa")
    assert "code changed since the checkpoint" in edited.stderr and "Replayed" in edited.stdout
    rerun = k.run(cell.replace("acc += i", "acc += 2 * i") + "acc\n", cell_id="cell-aaa")
    assert rerun.execute_result == "45"  # replay of the finished run: its result, said so


def test_fallback_key_without_cell_id_is_stable_across_restarts(kernel, tmp_path):
    load_ext(kernel)
    cell = "%%resumable acc\nimport time\nacc = 0\nfor i in range(300):\n    acc += i\n    time.sleep(0.01)\n"
    msg = kernel.execute_async(cell.replace("%%resumable acc", "%%resumable acc --every 10it"))
    kernel.wait_for(lambda: list((tmp_path / ".resumable").rglob("manifest.*.json")), timeout=30)
    kernel.wait_for(
        lambda: (newest_position(next((tmp_path / ".resumable" / "ipython").iterdir())) or 0) >= 20
    )
    kernel.kill()
    assert kernel.partial(msg).error is None
    kernel.restart()
    load_ext(kernel)
    resumed = kernel.run(cell.replace("%%resumable acc", "%%resumable acc --every 10it"))
    assert "Resumed acc from the checkpoint" in resumed.stdout and "acc" in kernel.eval("'acc'")
    assert kernel.eval("acc") == str(sum(range(300)))
    assert next((tmp_path / ".resumable" / "ipython").iterdir()).name.startswith("acc-")


DEFINE = """\
class Accumulator:
    def __init__(self):
        self.items = []
    def add(self, x):
        self.items.append(x)
    def total(self):
        return sum(self.items)
def scale(x):
    return 3 * x
"""


def test_notebook_classes_and_functions_restore_in_a_fresh_kernel(kernel, tmp_path):
    load_ext(kernel)
    kernel.run(DEFINE)
    cell = (
        "%%resumable acc fn --name cls --dir ck --every 5it\nimport time\nacc, fn = Accumulator(), scale\n"
        "for i in range(100):\n    acc.add(fn(i))\n    time.sleep(0.01)\n"
    )
    kernel.execute_async(cell)
    kernel.wait_for(lambda: (newest_position(tmp_path / "ck" / "cls") or 0) >= 10)
    kernel.kill()
    kernel.restart()
    # Without re-running the defining cell: the checkpoint carries class and function by value.
    kernel.run("from resumable_magic import load\nsaved = load('cls', dir='ck')")
    assert kernel.eval("saved['fn'](2)") == "6"
    assert int(kernel.eval("saved['acc'].total()")) == 3 * sum(
        range(len(eval(kernel.eval("saved['acc'].items"))))
    )
    # After re-running it, restored instances are instances of the live class.
    kernel.run(DEFINE)
    load_ext(kernel)
    kernel.run(cell)
    assert kernel.eval("isinstance(acc, Accumulator), acc.total()") == f"(True, {3 * sum(range(100))})"


WORDS = [f"word{i}" for i in range(40)]


def set_order(seed: int) -> list[str]:
    code = f"print(list({set(WORDS)!r}))"
    out = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONHASHSEED": str(seed)}, capture_output=True, text=True
    )
    return eval(out.stdout)


def test_iteration_order_that_changes_across_restarts_is_refused(kernel_factory, tmp_path):
    # Two hash seeds under which the set yields a different item at the checkpoint's position.
    position = 10
    seeds = next(
        (a, b)
        for a in range(1, 20)
        for b in range(a + 1, 20)
        if set_order(a)[position - 1] != set_order(b)[position - 1]
    )
    cell = (
        "%%resumable seen --name words --dir ck --every 10it\nimport time\nseen = []\n"
        f"for w in {set(WORDS)!r}:\n    seen.append(w)\n    time.sleep(0.02)\n"
    )
    k = kernel_factory(env={"PYTHONHASHSEED": str(seeds[0])})
    load_ext(k)
    k.execute_async(cell)
    k.wait_for(lambda: (newest_position(tmp_path / "ck" / "words") or 0) >= position)
    k.kill()
    k.restart(env={"PYTHONHASHSEED": str(seeds[1])})
    load_ext(k)
    k.run("seen = 'untouched'")
    refused = k.execute(cell)
    assert refused.error is not None and refused.error.ename == "IterationMismatchError", refused.describe()
    assert "does not yield the same items" in refused.error.evalue and "sorted(" in refused.error.evalue
    assert k.alive and k.eval("seen") == "[]"  # setup ran; the checkpoint was not restored over it
    assert newest_position(tmp_path / "ck" / "words") >= position  # the last good checkpoint stays
    # The same seed as the checkpoint's resumes fine.
    k.restart(env={"PYTHONHASHSEED": str(seeds[0])})
    load_ext(k)
    assert k.run(cell + "len(seen)\n").execute_result == "40"


# A loop over objects that hold sets of strings: each item's fingerprint must not depend on the order
# in which its sets iterate, which is the kernel's hash seed's.
JOBS_CELL = """\
%%resumable seen --name jobs --dir ck --every 5it
import time
class Job:
    def __init__(self, i):
        self.i = i
        self.tags = {f"tag{i}-{j}" for j in range(16)}
        self.meta = {"owners": frozenset({"ann", "bob", "cy", "dee"}), "n": i}
seen = []
for job in [Job(i) for i in range(40)]:
    seen.append((job.i, min(job.tags), len(job.meta["owners"])))
    with open("log.txt", "a") as log:
        log.write(f"{job.i}\\n")
    time.sleep(0.03)
"""
TAG_ORDERS = "[list({f'tag{i}-{j}' for j in range(16)}) for i in range(40)]"


def test_items_holding_sets_of_strings_resume_in_a_kernel_with_another_hash_seed(kernel_factory, tmp_path):
    k = kernel_factory(env={"PYTHONHASHSEED": "1"})
    orders_before = eval(k.eval(TAG_ORDERS))
    load_ext(k)
    k.execute_async(JOBS_CELL)
    k.wait_for(lambda: (newest_position(tmp_path / "ck" / "jobs") or 0) >= 10)
    k.kill()
    position = newest_position(tmp_path / "ck" / "jobs")
    assert position is not None and 10 <= position < 40
    done_before = logged(tmp_path)

    k.restart(env={"PYTHONHASHSEED": "2"})
    # The new kernel's sets iterate in another order: the item at the checkpoint pickles differently.
    assert eval(k.eval(TAG_ORDERS))[position - 1] != orders_before[position - 1]
    load_ext(k)
    resumed = k.execute(JOBS_CELL)
    assert resumed.error is None and resumed.stderr == "", resumed.describe()
    assert f"from the checkpoint at iteration {position} of 40" in resumed.stdout
    assert k.eval("len(seen), seen == [(i, f'tag{i}-0', 4) for i in range(40)]") == "(40, True)"
    # Every iteration ran; those after the checkpoint again, none before it.
    assert logged(tmp_path)[len(done_before) :] == list(range(position, 40))


def test_a_file_open_for_writing_is_refused_before_the_loop_runs(kernel, tmp_path):
    """Issue 14, class 5, through the magic in a real kernel: setup runs, the loop does not."""
    load_ext(kernel)
    cell = (
        "%%resumable log total --name log --dir ck\n"
        "log = open('out.txt', 'a')\ntotal = 0\nprint('setup ran')\n"
        "for i in range(5):\n    log.write(f'{i}\\n')\n    total += i\n"
    )
    result = kernel.execute(cell)
    assert result.error is not None and result.error.ename == "ExternalResourceError", result.describe()
    assert (
        "Cannot checkpoint 'log': it is a file open for writing ('out.txt', mode 'a')" in result.error.evalue
    )
    assert "Traceback" not in result.output  # one paragraph, as every error of the library
    assert "setup ran" in result.stdout and kernel.eval("total") == "0"  # the loop never ran
    kernel.run("log.close()")
    assert (tmp_path / "out.txt").read_text() == ""
    assert not list((tmp_path / "ck" / "log").glob("manifest.*"))


NAMED_LATER = """\
%%resumable total{more} --name later --dir ck --every 1it
import time
total = 0{setup}
for i in range(200):
    total += i
    with open("done.txt", "a") as done:
        done.write(f"{{i}}\\n")
    time.sleep(0.02)
"""


def test_a_resource_named_since_the_checkpoint_is_refused_before_the_loop_resumes(kernel, tmp_path):
    """Issue 14, class 5, after a crash: the checkpoint does not hold a variable named since, so the
    resume checks it as the first checkpoint would, before any iteration runs again."""
    load_ext(kernel)
    kernel.execute_async(NAMED_LATER.format(more="", setup=""))
    kernel.wait_for(lambda: (newest_position(tmp_path / "ck" / "later") or 0) >= 5)
    kernel.kill()
    position = newest_position(tmp_path / "ck" / "later")
    done = (tmp_path / "done.txt").read_text()

    kernel.restart()
    load_ext(kernel)
    cell = NAMED_LATER.format(more=" log", setup="\nlog = open('out.txt', 'a')\nprint('setup ran')")
    result = kernel.execute(cell)
    assert result.error is not None and result.error.ename == "ExternalResourceError", result.describe()
    assert (
        "Cannot checkpoint 'log': it is a file open for writing ('out.txt', mode 'a')" in result.error.evalue
    )
    assert "Traceback" not in result.output
    assert "setup ran" in result.stdout
    # no iteration ran again, nothing was restored over setup's values, no checkpoint was written
    assert (tmp_path / "done.txt").read_text() == done
    assert kernel.eval("total") == "0"
    assert newest_position(tmp_path / "ck" / "later") == position


BYTES_LOOP = """\
%%resumable data views total --name bytes --dir ck --every 3it
import hashlib, time
data = bytearray(8 << 20)
views = [memoryview(data)[i * 4096 : (i + 1) * 4096] for i in range(8)]
total = 0
for i in range(60):
    views[i % 8][i] = i % 251
    data[-1 - i] = 7
    total += sum(views[i % 8][:64])
    time.sleep(0.02)
print("FINAL", hashlib.sha256(data).hexdigest(), total, all(v.obj is data for v in views))
"""


def test_a_bytearray_and_its_views_resume_exactly_after_a_kill(kernel, tmp_path):
    """A bytearray of the state (out of band, restored into a bytearray, not copied) and memoryviews of
    it: after SIGKILL and a restart, the resumed run ends where an uninterrupted one does."""
    load_ext(kernel)
    msg = kernel.execute_async(BYTES_LOOP)
    kernel.wait_for(lambda: (newest_position(tmp_path / "ck" / "bytes") or 0) >= 12)
    assert not kernel.partial(msg).done
    kernel.kill()
    kernel.restart()
    load_ext(kernel)
    resumed = kernel.run(BYTES_LOOP)
    assert "Resumed" in resumed.stdout or "from the checkpoint" in resumed.stdout, resumed.describe()
    expected = bytearray(8 << 20)
    views = [memoryview(expected)[i * 4096 : (i + 1) * 4096] for i in range(8)]
    total = 0
    for i in range(60):
        views[i % 8][i] = i % 251
        expected[-1 - i] = 7
        total += sum(views[i % 8][:64])
    import hashlib

    assert f"FINAL {hashlib.sha256(expected).hexdigest()} {total} True" in resumed.stdout
