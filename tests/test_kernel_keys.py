"""A run with a non-ASCII key in real kernels (issue 14): SIGKILLed, it resumes in a new kernel from its
own folder; SIGKILLed again and its folder put where an earlier version kept that key (as if the crash
had happened before an upgrade), it resumes from there and moves to its own folder. The final state
equals an uninterrupted run's, bit for bit, and no iteration is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kernels import KernelHandle
from test_kernel_crash import Attempt, check_attempts, check_checkpoints, final_of, for_cell, read_log

from resumable_magic.store.keys import key_to_relpath, legacy_relpath
from resumable_magic.store.runstore import RunStore

pytestmark = pytest.mark.kernel

KEY = "expériences/α-β"  # earlier versions: exp_riences/_-_, a folder it shared with any look-alike
N, EVERY = 1500, 50


def test_a_non_ascii_key_killed_resumes_in_a_new_kernel_also_from_its_old_folder(
    kernel: KernelHandle, tmp_path: Path
) -> None:
    ckpt, log = tmp_path / "ck", tmp_path / "iterations.log"
    reference = final_of(
        kernel.run(
            for_cell(ckpt, tmp_path / "ref.log", n=N, every=EVERY, key=KEY, sleep=0, magic=False)
        ).stdout
    )
    run_dir, old_dir = ckpt / key_to_relpath(KEY), ckpt / legacy_relpath(KEY)
    assert run_dir != old_dir and old_dir.relative_to(ckpt).as_posix() == "exp_riences/_-_"
    cell = for_cell(ckpt, log, n=N, every=EVERY, key=KEY, sleep=0.002)

    def position() -> int:
        return RunStore(ckpt, KEY).glance().position or 0

    attempts: list[Attempt] = []
    for kill_after in (300, 800):  # two kernels die mid-loop
        kernel.run("%load_ext resumable_magic")
        attempt = Attempt(start_line=len(read_log(log)))
        attempts.append(attempt)
        kernel.execute_async(cell)
        kernel.wait_for(lambda at=kill_after: position() >= at, timeout=60)  # type: ignore[misc]
        kernel.kill()
        attempt.killed, attempt.iterations = "SIGKILL", read_log(log)[attempt.start_line :]
        attempt.resumable_from = check_checkpoints(run_dir, ckpt, KEY)[1]
        kernel.restart()
    # The crashed run's folder as an earlier version named it: the next kernel must find it there.
    old_dir.parent.mkdir(parents=True)
    os.rename(run_dir, old_dir)

    kernel.run("%load_ext resumable_magic")
    last = Attempt(start_line=len(read_log(log)))
    attempts.append(last)
    result = kernel.run(cell, timeout=120)
    last.iterations = read_log(log)[last.start_line :]
    assert final_of(result.stdout) == reference
    check_attempts(attempts, N, EVERY)
    assert [a.iterations[0] for a in attempts][1:] == [a.resumable_from for a in attempts[:-1]]
    assert all(a.resumable_from for a in attempts[:-1])  # each kernel resumed; none started over
    assert result.stderr.count("was moved to") == 1 and str(old_dir) in result.stderr
    assert not old_dir.exists() and (run_dir / "DONE").exists()
    assert RunStore(ckpt, KEY).read_latest().checkpoint.manifest["key"] == KEY  # type: ignore[union-attr]
