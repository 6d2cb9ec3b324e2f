"""The progress model and its text view: arithmetic, formatting, output. No IPython needed."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest

from resumable_magic.progress.model import ProgressModel
from resumable_magic.progress.snapshots import CheckpointStats, ResumeInfo, StartInfo
from resumable_magic.progress.text import (
    format_clock,
    format_count,
    format_duration,
    format_rate,
    format_size,
    progress_line,
    summary_line,
)
from resumable_magic.progress.textview import TextProgress

T0 = 1_700_000_000.0  # a wall-clock instant


class Clock:
    """Monotonic and wall clocks that move only when told."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return T0 + self.t

    def tick(self, dt: float) -> None:
        self.t += dt


def start(total=1000, start_position=0, resumed=None, replayed=False) -> StartInfo:
    return StartInfo(
        key="k", names=("x",), total=total, start_position=start_position, policy="every 30s",
        resumed=resumed, replayed=replayed,
    )  # fmt: skip


def stats(position, seconds=0.1, nbytes=2048, gen=1, wall=T0) -> CheckpointStats:
    return CheckpointStats(generation=gen, position=position, wall_time=wall, nbytes=nbytes, seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def model(clock) -> ProgressModel:
    return ProgressModel(clock=clock, wall=clock.wall)


# -- formatting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0.00 s"),
        (0.349, "0.35 s"),
        (4.24, "4.2 s"),
        (42.4, "42 s"),
        (59.6, "1 min 00 s"),
        (185, "3 min 05 s"),
        (3599.6, "1 h 00 min"),
        (2 * 3600 + 4 * 60 + 10, "2 h 04 min"),
        (47 * 3600, "47 h 00 min"),
        (3 * 86400 + 4 * 3600 + 59, "3 d 04 h"),
        (-3, "0.00 s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.2, "0 s"), (4.9, "4 s"), (12.7, "12 s"), (65, "1 min 05 s")]
)
def test_format_duration_whole_seconds_for_ticking_labels(seconds, text):
    assert format_duration(seconds, whole=True) == text


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [(0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 2**20, "5.0 MiB"),
     (2 * 2**30, "2.0 GiB"), (1.5 * 2**40, "1.5 TiB"), (3 * 2**50, "3072.0 TiB")],
)  # fmt: skip
def test_format_size(nbytes, text):
    assert format_size(nbytes) == text


@pytest.mark.parametrize(
    ("rate", "text"),
    [(None, "- it/s"), (0, "0 it/s"), (12345.6, "12,346 it/s"), (45.62, "45.6 it/s"), (3.214, "3.21 it/s"),
     (0.08, "12.5 s/it"), (1 / 185, "3 min 05 s/it")],
)  # fmt: skip
def test_format_rate(rate, text):
    assert format_rate(rate) == text


def test_format_count():
    assert format_count(1234567) == "1,234,567"


def test_format_clock_today_and_another_day():
    now = time.mktime((2024, 5, 1, 15, 0, 0, 0, 0, -1))
    assert format_clock(time.mktime((2024, 5, 1, 14, 3, 22, 0, 0, -1)), now) == "14:03:22"
    assert format_clock(time.mktime((2024, 4, 29, 9, 5, 0, 0, 0, -1)), now) == "2024-04-29 09:05"


# -- the model -----------------------------------------------------------------------------------


def test_rate_is_smoothed_and_ignores_short_samples(model, clock):
    model.run_started(start())
    assert model.snapshot().rate is None
    clock.tick(0.1)
    model.advanced(10)  # shorter than a sample: no rate yet
    assert model.snapshot().rate is None
    clock.tick(0.9)
    model.advanced(100)  # first sample: 100 it in 1 s
    assert model.snapshot().rate == pytest.approx(100)
    clock.tick(1.0)
    model.advanced(300)  # sample of 200 it/s moves the average 30% of the way
    assert model.snapshot().rate == pytest.approx(100 + 0.3 * 100)
    clock.tick(1.0)
    model.advanced(300)  # a stalled second pulls it down, smoothly
    assert model.snapshot().rate == pytest.approx(130 * 0.7)


def test_rate_counts_from_the_restored_position(model, clock):
    model.run_started(start(total=1000, start_position=600))
    clock.tick(2)
    model.advanced(640)
    snap = model.snapshot()
    assert snap.rate == pytest.approx(20)
    assert snap.done == 40 and snap.position == 640


def test_eta_from_rate_and_counting_down_through_a_slow_iteration(model, clock):
    model.run_started(start(total=10))
    clock.tick(10)
    model.advanced(1)  # 10 s per iteration, 9 to go
    assert model.snapshot().eta == pytest.approx(90)
    clock.tick(4)  # 4 s into the next iteration
    assert model.snapshot().eta == pytest.approx(86)
    clock.tick(30)  # the iteration overruns: never below the 8 still to come after it
    assert model.snapshot().eta == pytest.approx(80)


def test_no_eta_without_total_or_rate_or_after_the_end(model, clock):
    model.run_started(start(total=None))
    clock.tick(1)
    model.advanced(50)
    assert model.snapshot().eta is None and model.snapshot().rate == pytest.approx(50)
    other = ProgressModel(clock=clock, wall=clock.wall)
    other.run_started(start(total=100))
    assert other.snapshot().eta is None  # no rate yet
    clock.tick(1)
    other.advanced(100)
    other.run_ended("finished")
    assert other.snapshot().eta is None


def test_overhead_share_and_checkpoint_stats(model, clock):
    model.run_started(start(total=100))
    model.checkpoint_started(0)
    assert model.snapshot().state == "checkpointing"
    clock.tick(0.5)
    model.checkpoint_finished(stats(0, seconds=0.5, nbytes=1000, gen=1))
    clock.tick(9.5)
    model.checkpoint_started(50)
    clock.tick(1.0)
    model.checkpoint_finished(stats(50, seconds=1.0, nbytes=3000, gen=2))
    clock.tick(9.0)
    model.advanced(90)
    snap = model.snapshot()
    assert snap.state == "running"
    assert snap.elapsed == pytest.approx(20)
    assert snap.checkpoints == 2 and snap.checkpoint_seconds == pytest.approx(1.5)
    assert snap.overhead == pytest.approx(1.5 / 20)
    assert snap.last_checkpoint.nbytes == 3000
    assert snap.since_checkpoint == pytest.approx(9.0)
    assert snap.unsaved == 40
    assert model.overhead == pytest.approx(1.5 / 20)


def test_a_checkpoint_boundary_also_advances_the_rate(model, clock):
    model.run_started(start(total=100))
    clock.tick(1)
    model.checkpoint_started(10)  # the run reports no separate advance at a checkpoint's boundary
    assert model.snapshot().rate == pytest.approx(10) and model.snapshot().position == 10


def test_events_are_reentrant_for_signal_handlers(model):
    # the run reports from SIGINT handlers, which may run while the main thread is inside an event
    model.run_started(start())
    with model._lock:
        model.message("info", "Interrupt received")
        model.advanced(3)
    assert model.snapshot().messages[-1] == ("info", "Interrupt received")


def test_time_since_checkpoint_before_the_first_counts_from_the_start(model, clock):
    model.run_started(start())
    clock.tick(7)
    assert model.snapshot().since_checkpoint == pytest.approx(7)


def test_elapsed_freezes_at_the_end(model, clock):
    model.run_started(start(total=10))
    clock.tick(5)
    model.advanced(10)
    model.run_ended("finished")
    clock.tick(100)
    assert model.snapshot().elapsed == pytest.approx(5)
    assert model.elapsed == pytest.approx(5)


def test_checkpoint_failure_and_messages_are_kept(model, clock):
    model.run_started(start())
    model.checkpoint_started(10)
    model.checkpoint_failed("disk full")
    assert model.last_error == "disk full"
    for i in range(7):
        model.message("info", f"m{i}")
    snap = model.snapshot()
    assert snap.state == "running" and snap.failed_checkpoints == 1
    assert len(snap.messages) == 5 and snap.messages[-1] == ("info", "m6")
    assert "1 failed" in progress_line(snap)


# -- lines ---------------------------------------------------------------------------------------


def test_progress_line_with_total(model, clock):
    model.run_started(start(total=200_000))
    model.checkpoint_started(0)
    model.checkpoint_finished(stats(0, seconds=0.12, nbytes=int(12.3 * 2**20), wall=clock.wall()))
    clock.tick(10)
    model.advanced(12_000)
    line = progress_line(model.snapshot())
    when = format_clock(clock.wall() - 10, clock.wall())
    assert line == (
        f"running 6% 12,000/200,000 | 1,200 it/s | ETA 2 min 37 s | last checkpoint 10 s ago ({when}), "
        "1 written, 12.3 MiB in 0.12 s, overhead 1.2%"
    )
    assert model.line() == line


def test_progress_line_without_total_shows_count_and_rate(model, clock):
    model.run_started(start(total=None))
    clock.tick(4)
    model.advanced(2)
    line = progress_line(model.snapshot())
    assert line.startswith("running 2 it | 2.0 s/it | no checkpoint yet")
    assert "ETA" not in line


def test_summary_line_finished_with_resume(model, clock):
    resumed = ResumeInfo(from_position=600, checkpoint_wall_time=T0, generation=3, redone_iterations=37)
    model.run_started(start(total=1000, start_position=600, resumed=resumed))
    model.checkpoint_started(600)
    clock.tick(1)
    model.checkpoint_finished(stats(600, seconds=1, nbytes=4096))
    clock.tick(79)
    model.advanced(1000)
    model.run_ended("finished")
    # the resume is the banner's to say (once in stdout) and the widget's resume row's, not the summary's
    assert model.summary() == (
        "finished: 1,000 iterations (400 this run) in 1 min 20 s, 1 checkpoint (last 4.0 KiB), overhead 1.2%"
    )
    assert model.line() == model.summary()


def test_summary_interrupted_and_failed_name_the_kept_checkpoint(clock):
    for outcome, words in (("interrupted", "checkpoint saved at"), ("failed", "kept the checkpoint at")):
        model = ProgressModel(clock=clock, wall=clock.wall)
        model.run_started(start(total=100))
        model.checkpoint_started(40)
        model.checkpoint_finished(stats(40, wall=clock.wall()))
        clock.tick(3)
        model.advanced(47)
        model.run_ended(outcome)
        text = model.summary()
        assert text.startswith(f"{outcome} at iteration 47 in 3.0 s, 1 checkpoint (last 2.0 KiB)")
        when = format_clock(clock.wall() - 3, clock.wall())
        assert text.endswith(f"; {words} iteration 40 ({when}): run the cell again to resume")


def test_summary_uses_the_runs_detail_when_given(model, clock):
    model.run_started(start(total=100))
    clock.tick(1)
    model.advanced(5)
    model.run_ended("failed", "ZeroDivisionError: division by zero; the checkpoint at iteration 0 is kept")
    assert model.summary() == (
        "failed at iteration 5 in 1.0 s, 0 checkpoints, overhead 0.0%: "
        "ZeroDivisionError: division by zero; the checkpoint at iteration 0 is kept"
    )


def test_summary_without_any_checkpoint(model, clock):
    model.run_started(start(total=100))
    model.run_ended("failed")
    assert model.summary().endswith("overhead 0.0%, no checkpoint written")


def test_summary_replayed(model):
    model.run_started(start(total=10, start_position=10, replayed=True))
    model.run_ended("replayed")
    snap = model.snapshot()
    assert snap.state == "replayed" and snap.since_checkpoint is None
    assert summary_line(snap) == (
        "replayed: the finished run's final values (10 iterations) were restored from its completion "
        "record; the loop was skipped (--fresh runs it again)"
    )


def test_resume_text_in_progress(model, clock):
    from resumable_magic.progress.text import resume_text

    resumed = ResumeInfo(600, T0, 3, redone_iterations=37, redone_seconds=12.0)
    model.run_started(start(total=1000, start_position=600, resumed=resumed))
    text = resume_text(model.snapshot())
    assert (
        text
        == f"resumed from iteration 600 (checkpoint of {format_clock(T0, clock.wall())}), redoing 37 iterations (12 s)"
    )
    assert "restored checkpoint of" in progress_line(model.snapshot())


# -- the text view -------------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_text_view_redraws_in_place_on_a_terminal_rate_limited(clock):
    out, err = FakeTTY(), io.StringIO()
    view = TextProgress(out, clock=clock, wall=clock.wall, err_stream=err, refresh=0.5)
    view.run_started(start(total=1000))
    for i in range(1, 101):  # 100 advances over 5 s: at most ~11 redraws
        clock.tick(0.05)
        view.advanced(i * 10)
    text = out.getvalue()
    assert "\n" not in text
    assert 5 <= text.count("\r") <= 12
    assert text.split("\r")[-1].startswith("running 100% 1,000/1,000")
    view.run_ended("finished")
    final = out.getvalue()
    assert final.endswith("\n") and final.count("\n") == 1
    assert final.rstrip("\n").split("\r")[-1] == view.summary()


def test_text_view_is_sparing_in_captured_output(clock):
    out = io.StringIO()
    view = TextProgress(out, clock=clock, wall=clock.wall, first_line=10, max_interval=600)
    view.run_started(start(total=None))
    for i in range(1, 3600 * 10 + 1):  # one hour of advances, 10 a second
        clock.tick(0.1)
        view.advanced(i)
    view.run_ended("finished")
    lines = out.getvalue().splitlines()
    # after 10, 30, 70, 150, 310, 630 s, then every 600 s (1230, 1830, 2430, 3030), plus the summary
    assert len(lines) == 11
    assert "\r" not in out.getvalue()
    assert re.match(r"running 10\d it \| 10\.0 it/s \| no checkpoint yet", lines[0]), lines[0]
    assert lines[-1].startswith("finished: 36,000 iterations in 1 h 00 min")


def test_text_view_messages_and_warnings(clock):
    out, err = FakeTTY(), io.StringIO()
    view = TextProgress(out, clock=clock, wall=clock.wall, err_stream=err)
    view.run_started(start(total=10))
    view.advanced(1)
    view.message("info", "resuming from iteration 1")
    view.message("warning", "the cell changed since the checkpoint")
    view.checkpoint_failed("No space left on device")  # the run warns about it itself
    assert "resuming from iteration 1\n" in out.getvalue()
    assert err.getvalue().splitlines() == ["resumable: the cell changed since the checkpoint"]


def test_text_view_quiet_shows_only_warnings_and_the_summary(clock):
    out, err = FakeTTY(), io.StringIO()
    view = TextProgress(out, quiet=True, clock=clock, wall=clock.wall, err_stream=err)
    view.run_started(start(total=10))
    for i in range(10):
        clock.tick(1)
        view.advanced(i + 1)
    view.message("info", "banner")
    view.message("warning", "careful")
    view.run_ended("finished")
    assert out.getvalue() == view.summary() + "\n"
    assert err.getvalue() == "resumable: careful\n"


def test_text_view_defaults_to_sys_stdout(capsys):
    view = TextProgress()
    view.run_started(start(total=1))
    view.advanced(1)
    view.run_ended("finished")
    assert capsys.readouterr().out.strip().startswith("finished: 1 iterations")


# -- the widget view (ipywidgets, no kernel: its comms go nowhere) --------------------------------


class FakeDisplay:
    def __init__(self) -> None:
        self.shown: list[dict] = []

    def __call__(self, obj, display_id=None):
        assert display_id is True
        self.shown.append(obj._repr_mimebundle_())
        return self

    def update(self, obj) -> None:
        self.shown.append(obj._repr_mimebundle_())


@pytest.fixture
def widget_view(clock):
    from resumable_magic.progress.widget import WidgetProgress

    display = FakeDisplay()
    view = WidgetProgress(clock=clock, wall=clock.wall, display=display, tick=3600, err_stream=io.StringIO())
    yield view, display
    view.run_ended("finished")  # stops the timer thread


def test_widget_text_plain_says_when_it_started_then_the_summary(widget_view, clock):
    view, display = widget_view
    view.run_started(start(total=40))
    first = display.shown[0][0]  # anywidget's bundle: (data, metadata)
    since = format_clock(clock.wall(), clock.wall())
    assert first["text/plain"] == (
        f"running since {since}, from iteration 0 of 40 (the summary replaces this line when the run "
        "ends: if it is still here, the kernel stopped first)"
    )
    assert "application/vnd.jupyter.widget-view+json" in first
    view.checkpoint_started(0)
    view.checkpoint_finished(stats(0, wall=clock.wall()))
    clock.tick(2)
    view.advanced(40)
    assert repr(view.panel) == first["text/plain"]
    view.run_ended("finished")
    last = display.shown[-1][0]
    assert last["text/plain"] == view.summary() and last["text/plain"].startswith("finished: 40 iterations")
    assert (
        last["application/vnd.jupyter.widget-view+json"] == first["application/vnd.jupyter.widget-view+json"]
    )


def test_widget_panel_carries_key_folder_status_and_heartbeat(widget_view, clock):
    view, _ = widget_view
    view.run_started(StartInfo("nb.ipynb/cell-1", ("x",), 10, 0, "every 1it", directory="/tmp/ck/nb"))
    panel = view.panel
    assert (panel.key, panel.directory, panel.status) == ("nb.ipynb/cell-1", "/tmp/ck/nb", "running")
    assert panel.heartbeat == clock.wall() and panel.death is None
    beat = panel.heartbeat
    clock.tick(0.5)
    view._render()
    assert panel.heartbeat == beat  # about once a second, not at every render
    clock.tick(0.6)
    view._render()
    assert panel.heartbeat == clock.wall()
    view.checkpoint_started(4)
    view._render()
    assert panel.status == "running" and panel.view["state"] == "checkpointing"
    for outcome, status in (("interrupted", "interrupted"), ("failed", "failed"), ("finished", "done")):
        view.run_ended(outcome)
        assert panel.status == status


def test_widget_renders_state_bar_and_details(widget_view, clock):
    view, _ = widget_view
    resumed = ResumeInfo(from_position=20, checkpoint_wall_time=T0, generation=3, redone_iterations=4)
    view.run_started(start(total=40, start_position=20, resumed=resumed))
    view.message("info", "Resumed total from the checkpoint at iteration 20 of 40 (written ...).")
    view.message("warning", "the <cell> changed")
    shown = view.panel.view
    assert (
        "restored checkpoint of" in shown["details_html"] and "no new checkpoint yet" in shown["details_html"]
    )
    assert shown["last_checkpoint"] == {"iteration": 20, "time": T0}  # the restored one
    view.checkpoint_started(25)
    view._render()
    assert view.panel.view["state"] == "checkpointing" and view.panel.view["colour"] == "#f9a825"
    view.checkpoint_finished(stats(25, nbytes=3 * 2**20, seconds=0.25, wall=clock.wall()))
    clock.tick(3)
    view.advanced(30)
    view._render()
    shown = view.panel.view
    html = shown["details_html"]
    assert (shown["position"], shown["total"], shown["count"]) == (30, 40, "75% · 30 / 40")
    assert shown["last_checkpoint"] == {"iteration": 25, "time": clock.wall() - 3}
    assert '<span class="rm-since">3 s</span>' in html
    assert '<span class="rm-checkpoints">1 written</span>' in html and "3.0 MiB" in html
    assert '<span class="rm-unsaved">5 iterations unsaved</span>' in html
    assert html.count("resumed from iteration 20") == 1 and "redoing 4 iterations" in html
    assert "Resumed total from" not in html  # the run's banner is shown as the resume row
    assert "the &lt;cell&gt; changed" in html  # escaped
    view.run_ended("failed", "ZeroDivisionError: division by zero")
    html = view.panel.view["details_html"]
    assert view.panel.view["state"] == "failed" and view.panel.status == "failed"
    assert "rm-since" not in html  # a relative time means nothing after the end
    assert "rm-summary" in html and "rm-checkpoints" not in html  # the summary says it, once
    assert html.count("overhead") == 1 and "mean rate" in html


def test_widget_shows_an_interrupt_being_honoured_until_the_run_stops(widget_view, clock, capsys):
    view, _ = widget_view
    view.run_started(start(total=40))
    view.message("transient", "Interrupt received: finishing this iteration")
    view._render()
    assert "Interrupt received" in view.panel.view["details_html"]
    view.checkpoint_started(7)
    view.checkpoint_finished(stats(7, wall=clock.wall()))
    view.run_ended("interrupted")
    assert "Interrupt received" not in view.panel.view["details_html"]  # replaced by the summary
    out = capsys.readouterr()
    assert "Interrupt received" not in out.out + out.err
    lines = out.out.splitlines()
    assert len(lines) == 1 and lines[0] == f"\x1b[38;5;208m{view.summary()}\x1b[0m", lines
    assert view.summary().startswith("interrupted at iteration 7 in ")
    assert view.panel.view["details_html"].count("interrupted at iteration 7") == 1


def test_widget_without_total_counts(widget_view, clock):
    view, _ = widget_view
    view.run_started(start(total=None))
    clock.tick(1)
    view.advanced(7)
    view._render()
    assert view.panel.view["total"] is None and view.panel.view["count"] == "7 iterations"
    assert "7.00 it/s" in view.panel.view["details_html"]


def test_widget_timer_ticks_from_its_thread_and_stops_at_the_end():
    from resumable_magic.progress.widget import WidgetProgress

    display = FakeDisplay()
    view = WidgetProgress(display=display, tick=0.01)
    view.run_started(start(total=10))
    deadline = time.monotonic() + 10
    while view.renders < 5 and time.monotonic() < deadline:  # polling the counter the thread bumps
        time.sleep(0.01)
    assert view.renders >= 5
    view.run_ended("finished")
    assert not view._timer.is_alive()
    renders = view.renders
    time.sleep(0.05)
    assert view.renders == renders


def test_factory_chooses_text_without_a_kernel_or_when_quiet():
    from resumable_magic.progress.widget import make_widget_progress

    assert type(make_widget_progress(quiet=False)) is TextProgress  # no kernel in this process
    quiet = make_widget_progress(quiet=True)
    assert type(quiet) is TextProgress and quiet._quiet


@pytest.mark.kernel
def test_nbclient_stores_the_summary_as_text_plain(tmp_path):
    import nbclient
    import nbformat

    source = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from resumable_magic.progress.snapshots import CheckpointStats, StartInfo\n"
        "from resumable_magic.progress.widget import make_widget_progress\n"
        "p = make_widget_progress(quiet=False)\n"
        "p.run_started(StartInfo('k', ('x',), 5, 0, 'every 1it'))\n"
        "for i in range(5):\n"
        "    p.checkpoint_started(i)\n"
        "    p.checkpoint_finished(CheckpointStats(i + 1, i, time.time(), 100, 0.001))\n"
        "    time.sleep(0.1)\n"
        "    p.advanced(i + 1)\n"
        "p.run_ended('finished')\n"
        "print(type(p).__name__)"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nbclient.NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = nb.cells[0].outputs
    displays = [o for o in outputs if o.output_type == "display_data"]
    assert len(displays) == 1
    text = displays[0].data["text/plain"]
    assert text.startswith("finished: 5 iterations in ") and "5 checkpoints" in text
    assert "application/vnd.jupyter.widget-view+json" in displays[0].data
    assert [o.text for o in outputs if o.output_type == "stream"] == ["WidgetProgress\n"]


def test_a_checkpoint_that_rewrote_nothing_says_unchanged_not_zero_bytes():
    from resumable_magic.progress.text import checkpoint_text

    model = ProgressModel()
    model.run_started(StartInfo(key="k", names=("x",), total=10, start_position=0, policy="every 1it"))
    model.checkpoint_finished(CheckpointStats(1, 0, T0, nbytes=4096, seconds=0.01, written=4096))
    model.checkpoint_finished(CheckpointStats(2, 5, T0, nbytes=4096, seconds=0.01, written=0))
    assert "4.0 KiB, unchanged in" in checkpoint_text(model.snapshot())
    model.checkpoint_finished(CheckpointStats(3, 9, T0, nbytes=4096, seconds=0.01, written=1024))
    assert "4.0 KiB, 1.0 KiB new in" in checkpoint_text(model.snapshot())


def test_resume_text_is_in_the_past_once_the_run_ended(model, clock):
    from resumable_magic.progress.text import resume_text

    model.run_started(start(total=1000, start_position=600, resumed=ResumeInfo(600, T0, 3, 37, 12.0)))
    model.run_ended("finished")
    assert resume_text(model.snapshot()).endswith(", 37 iterations (12 s) redone")
