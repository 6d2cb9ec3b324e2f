"""Resumes after a kernel crash granted to JupyterLab (store/autoresume.py): the crash-loop limit
counted in the run's folder, what the resumed run records, and the file's name kept from keys. The
same through a real server and browser: tests/browser/test_resume_extension.py."""

from __future__ import annotations

import time
from pathlib import Path

from resumable_magic import Resumable
from resumable_magic.store.autoresume import (
    AUTORESUME_FILE,
    WINDOW_SECONDS,
    claim,
    jupyterlab_resume,
    read_grants,
)
from resumable_magic.store.keys import key_to_relpath
from resumable_magic.store.runstore import RunStore

DETAILS = {"notebook": "nb.ipynb", "cell_id": "c1"}


def a_run(tmp_path: Path) -> RunStore:
    """A run with checkpoints on disk, written by the plain API."""
    state = {"total": 0}
    with Resumable("nb.ipynb/cell-c1", state, dir=tmp_path, every="1it") as run:
        for i in run.iterate(range(3)):
            state["total"] += i
    return RunStore(tmp_path, "nb.ipynb/cell-c1")


def test_automatic_resumes_are_limited_per_hour_and_clicks_are_not(tmp_path: Path) -> None:
    store = a_run(tmp_path)
    now = time.time()
    counts = [claim(store, automatic=True, limit=3, now=now + i, details=DETAILS) for i in range(3)]
    assert [(g.granted, g.automatic_in_window) for g in counts] == [(True, 1), (True, 2), (True, 3)]

    refused = claim(store, automatic=True, limit=3, now=now + 10, details=DETAILS)
    assert not refused.granted
    assert refused.reason == (
        "Not resuming automatically: this cell crashed its kernel 3 times in the last hour (the "
        "limit). Fix the cause, then run it yourself."
    )
    assert claim(store, automatic=False, limit=3, now=now + 11, details=DETAILS).granted

    # An hour after the first automatic resume, one more is allowed.
    later = claim(store, automatic=True, limit=3, now=now + WINDOW_SECONDS + 0.5, details=DETAILS)
    assert later.granted and later.automatic_in_window == 3
    grants = read_grants(store)
    assert [g["automatic"] for g in grants] == [True, True, True, False, True]
    assert all(g["notebook"] == "nb.ipynb" and g["cell_id"] == "c1" for g in grants)


def test_the_resumed_run_learns_how_jupyterlab_resumed_it(tmp_path: Path) -> None:
    store = a_run(tmp_path)
    history = [{"event": "started", "time": 100.0}]
    assert jupyterlab_resume(store, history, created=100.0) is None

    claim(store, automatic=False, limit=3, now=200.0, details=DETAILS)
    assert jupyterlab_resume(store, history, created=150.0) == "clicked"
    claim(store, automatic=True, limit=3, now=300.0, details=DETAILS)
    assert jupyterlab_resume(store, history, created=150.0) == "automatic"
    # Told already: the run's history has an event after the grant, or its checkpoint is newer.
    assert jupyterlab_resume(store, [*history, {"event": "resumed", "time": 301.0}], created=150.0) is None
    assert jupyterlab_resume(store, history, created=400.0) is None


def test_a_damaged_record_counts_as_no_grants(tmp_path: Path) -> None:
    store = a_run(tmp_path)
    (store.path / AUTORESUME_FILE).write_text('{"grants": [{"time": "x"}, 3, {"time": 5, "automatic": true}')
    assert read_grants(store) == []
    (store.path / AUTORESUME_FILE).write_text(
        '{"grants": [{"time": "x"}, 3, {"time": 5, "automatic": true}]}'
    )
    assert read_grants(store) == [{"time": 5, "automatic": True}]


def test_no_key_gets_the_records_name_as_its_folder() -> None:
    assert key_to_relpath("exp/autoresume.json").parts[1] != AUTORESUME_FILE
