"""A kill between a run's final checkpoint and its DONE record, in real kernels.

The final checkpoint holds the state after the loop (also after a ``break``, whose iteration it
includes), at a position that leaves out the iteration that broke out. Resuming the loop from it
would run that iteration again (found by the differential test's soak run): the run is finished,
and the next run of the cell replays it, and writes the DONE record the dead kernel did not."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from kernels import KernelDied

FOR_BREAK = """\
%%resumable acc --every 1it --name brk --dir {dir}
acc = 0
for i in range(10):
    acc += i
    if i == 3:
        break
"""
WHILE_DRAIN = """\
%%resumable acc todo steps --every 1it --name brk --dir {dir}
acc = 0
steps = 0
todo = list(range(10))
while todo:
    i = todo.pop(0)
    steps += 1
    acc += i
    if i == 2:
        break
"""
# (cell, the crash hook's step and commit number: the final checkpoint's, the expression, its value)
CASES = {
    "for-break": (FOR_BREAK, "committed:5", "acc", "6"),
    "while-drain": (
        WHILE_DRAIN,
        "manifest-renamed:4",
        "(acc, steps, todo)",
        repr((3, 3, list(range(3, 10)))),
    ),
}


@pytest.mark.kernel
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_kill_after_the_final_checkpoint_replays_the_finished_run(case, kernel_factory, tmp_path):
    cell, crash_at, expression, uninterrupted = CASES[case]
    cell = cell.format(dir=tmp_path / "ck")
    k = kernel_factory(env={"RESUMABLE_CRASH_AT": crash_at})
    k.run("%load_ext resumable_magic").check()
    with pytest.raises(KernelDied) as died:
        k.run(cell, timeout=60)
    assert died.value.signal == signal.SIGKILL, died.value
    run = next(Path(tmp_path / "ck").rglob("manifest.*"), None)
    assert run is not None and not (run.parent / "DONE").exists(), "the kill came before the DONE record"

    k.restart(env={"RESUMABLE_CRASH_AT": None})
    k.run("%load_ext resumable_magic").check()
    again = k.run(cell, timeout=60).check()
    assert k.eval(expression) == uninterrupted, again.describe()
    assert "replayed" in again.text.lower() or "finished" in again.text.lower(), again.text
    assert (run.parent / "DONE").exists(), "the replay completes the run's record"
    # and from now on it is an ordinary finished run
    k.run(cell, timeout=60).check()
    assert k.eval(expression) == uninterrupted
