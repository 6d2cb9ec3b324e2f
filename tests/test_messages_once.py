"""Each fact said once, in plain words (issue 17, part 3), in process: the takeover, the resume, the
summary, an interrupt (a transient notice, then one orange line and no traceback), and the text view
that keeps every line its own."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
from typing import Any

from IPython.core.getipython import get_ipython as current_shell
from IPython.testing import globalipapp

from resumable_magic import Resumable
from resumable_magic.core.messages import takeover_text
from resumable_magic.errors import RunInterrupted
from resumable_magic.progress.textview import ORANGE, TextProgress

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


CRASHING = """
import os, sys
from resumable_magic import Resumable
state = {"total": 0}
with Resumable("once", state, dir=sys.argv[1], every="5it") as run:
    for i in run.iterate(range(20)):
        if i == 12:
            print(os.getpid(), flush=True)
            os._exit(1)  # a crash: no cleanup, the lease stays as the process left it
        state["total"] += i
"""


def attempt(tmp_path, stream: io.StringIO) -> None:
    """The 20-iteration loop of ``CRASHING`` through the plain API, its text view on ``stream``."""
    state = {"total": 0}
    with Resumable("once", state, dir=tmp_path, every="5it", progress=TextProgress(stream)) as run:
        for i in run.iterate(range(20)):
            state["total"] += i
    assert state["total"] == sum(range(20))


def test_takeover_in_plain_words():
    here = socket.gethostname()
    record = {"pid": 17549, "host": here, "heartbeat": 1000.0}
    assert (
        takeover_text(record, gone=True)
        == "The previous kernel (pid 17549) died; this kernel takes the run over."
    )
    elsewhere = {**record, "host": "vm2"}
    assert takeover_text(elsewhere, gone=True).startswith("The previous kernel (pid 17549 on host vm2) died;")
    stale = takeover_text(record, gone=False, now=1009.1)
    assert stale == (
        "The previous kernel (pid 17549) has not renewed its hold on the run for 9.1 s, longer than its "
        "lease allows: it is stopped or cut off. This kernel takes the run over."
    )


def test_a_resume_is_said_once_and_every_line_stands_alone(tmp_path):
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert crashed.returncode == 1, crashed.stderr
    dead = int(crashed.stdout)
    out = io.StringIO()
    attempt(tmp_path, out)
    said = out.getvalue()
    lines = said.splitlines()
    assert lines[0] == f"The previous kernel (pid {dead}) died; this kernel takes the run over.", lines
    assert lines[1].startswith("Resumed total from the checkpoint at iteration 10 of 20 (written "), lines
    assert re.fullmatch(r"finished: 20 iterations \(10 this run\) in .*, overhead \d+\.\d%", lines[-1]), lines
    assert len(lines) == 3 and said.count("resumed") + said.count("Resumed") == 1, (
        lines
    )  # the summary does not repeat it
    assert said.count("died") == 1 and "Took over" not in said and "previous owner" not in said

    replay = TTY()  # a replay drawn on a terminal: the banner and the summary each on a line of its own
    attempt(tmp_path, replay)
    lines = [line for line in re.split(r"[\r\n]", replay.getvalue()) if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("Replayed the finished run 'once'"), lines
    assert lines[0].endswith("Use --fresh to run it again.") and lines[1].startswith("replayed: "), lines


def test_an_interrupt_is_a_transient_notice_then_one_orange_line_on_a_terminal(tmp_path):
    out = TTY()
    state = {"total": 0}
    run = Resumable("stop", state, dir=tmp_path, every="1000it", progress=TextProgress(out))
    interrupted = None
    try:
        with run:
            for i in run.iterate(range(100)):
                if i == 30:
                    os.kill(os.getpid(), signal.SIGINT)  # the stop button
                    assert "Interrupt received: finishing this iteration" in out.getvalue()
                state["total"] += i
    except RunInterrupted as exc:
        interrupted = exc
    assert interrupted is not None and interrupted.position == 31
    final = out.getvalue().rsplit("\r", 1)[-1]  # what the terminal shows once the line was redrawn
    summary = run.progress.summary()
    assert final == ORANGE.format(summary) + "\n", final
    assert "Interrupt received" not in summary and summary.count("31") == 1, summary  # said once
    assert summary.startswith("interrupted at iteration 31 in ") and summary.endswith(
        "; checkpoint saved there (" + summary.rsplit("(", 1)[1]
    )


def shell() -> Any:
    ip = current_shell() or globalipapp.get_ipython()
    if "resumable" not in ip.magics_manager.magics["cell"]:
        ip.run_line_magic("load_ext", "resumable_magic")
    return ip


def test_an_interrupted_cell_ends_without_a_traceback_but_counts_as_interrupted(tmp_path, capsys):
    ip = shell()
    result = ip.run_cell(
        f"%%resumable total --name stop --dir {tmp_path} --every 1000it\n"
        "import os, signal\n"
        "total = 0\n"
        "for i in range(100):\n"
        "    if i == 30:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    total += i\n"
    )
    out = capsys.readouterr()
    assert isinstance(result.error_in_exec, RunInterrupted) and not result.success  # queued cells are skipped
    assert "Traceback" not in out.out + out.err and "RunInterrupted" not in out.out + out.err, out
    assert out.err == ""
    said = ANSI.sub("", out.out)
    assert said.count("interrupted at iteration 31") == 1 and "Interrupt received" not in said, said
    assert ip.user_ns["total"] == sum(range(31))
    resumed = ip.run_cell(
        f"%%resumable total --name stop --dir {tmp_path} --every 1000it\n"
        "total = 0\n"
        "for i in range(100):\n"
        "    total += i\n"
    )
    assert resumed.success and ip.user_ns["total"] == sum(range(100))
    assert "Nothing is redone" in capsys.readouterr().out
