"""Where checkpoints go, and what happens when that place changes under a running loop: a relative
folder survives an ``os.chdir`` in the body, ``~`` is the home folder, and a run folder deleted
mid-loop is said plainly (nobody took the run over)."""

from __future__ import annotations

import os
import shutil

import pytest

from resumable_magic import Resumable, load
from resumable_magic.errors import OwnershipLostError, RunFolderGoneError, UntrustedCheckpointError
from resumable_magic.progress.model import ProgressModel


def test_a_relative_folder_survives_a_chdir_in_the_loop(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    state = {"total": 0}
    with Resumable("moved", state, dir="ck", every="1it", progress=ProgressModel()) as run:
        for i in run.iterate(range(5)):
            state["total"] += i
            os.chdir(tmp_path / "elsewhere")  # the body changes the working folder
    assert (tmp_path / "work" / "ck" / "moved").is_dir()
    assert not (tmp_path / "elsewhere" / "ck").exists()
    assert load("moved", dir=tmp_path / "work" / "ck")["total"] == 10


def test_a_folder_under_the_home_folder_is_named_with_a_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    state = {"n": 0}
    with Resumable("tilde", state, dir="~/ck", progress=ProgressModel()) as run:
        for _ in run.iterate(range(3)):
            state["n"] += 1
    assert (tmp_path / "home" / "ck" / "tilde").is_dir()
    assert not (tmp_path / "~").exists()
    assert load("tilde", dir="~/ck")["n"] == 3


@pytest.mark.parametrize("what", ["run folder", "lease file"])
def test_a_run_folder_deleted_mid_loop_is_said_plainly(tmp_path, what):
    state = {"n": 0}
    with (
        pytest.raises(OwnershipLostError) as caught,
        Resumable("gone", state, dir=tmp_path, every="1it", progress=ProgressModel()) as run,
    ):
        for i in run.iterate(range(100)):
            state["n"] += 1
            if i == 3:
                if what == "run folder":
                    shutil.rmtree(tmp_path / "gone")
                else:
                    (tmp_path / "gone" / "owner.json").unlink()
    error = caught.value
    assert isinstance(error, RunFolderGoneError), error
    message = str(error)
    assert "disappeared while the loop ran" in message and "owner.json" in message
    assert "taken over by" not in message and "goes on in the new owner" not in message
    assert state["n"] <= 5  # it stopped at the next boundary


def _loop_in(folder, ran: list[int]) -> None:
    state = {"n": 0}
    with Resumable("own", state, dir=folder, progress=ProgressModel()) as run:
        for i in run.iterate(range(3)):
            ran.append(i)


@pytest.mark.parametrize("kind", ["another user's folder", "group-writable folder", "another user's symlink"])
def test_a_folder_a_resume_would_refuse_is_refused_before_the_first_write(tmp_path, kind):
    if os.geteuid() != 0 and kind != "group-writable folder":
        pytest.fail("giving a folder to another user needs root, which these tests run as")
    folder = tmp_path / "ck"
    folder.mkdir(mode=0o700)
    if kind == "another user's folder":
        os.chown(folder, 65534, 65534)
    elif kind == "group-writable folder":
        folder.chmod(0o770)
    else:
        target, folder = folder, tmp_path / "link"
        folder.symlink_to(target)
        os.lchown(folder, 65534, 65534)
    ran: list[int] = []
    with pytest.raises(UntrustedCheckpointError) as caught:
        _loop_in(folder, ran)
    message = str(caught.value)
    assert ran == []  # refused before the loop ran
    assert str(folder) in message
    assert ("uid 65534" in message) == (kind != "group-writable folder"), message
    assert not list(tmp_path.rglob("manifest.*.json"))  # nothing was written
