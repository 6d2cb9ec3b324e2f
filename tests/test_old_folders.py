"""Runs in the folders earlier versions gave their keys (issue 14, existing checkpoints): a crashed run
whose key's folder changed resumes from its old folder instead of silently starting over; an old
folder that may not be this run's is refused, naming it, before anything runs.

The old folder is made as the earlier versions made it: a run written by today's code, its folder
then renamed to :func:`~resumable_magic.store.keys.legacy_relpath` of its key (the earlier rule, kept).
"""

from __future__ import annotations

import os
import shutil
import unicodedata
import uuid
from pathlib import Path

import pytest
from test_keys import LONG, count, expected, run_cli, shell

from resumable_magic import load
from resumable_magic.distributed.plan import plan_map
from resumable_magic.errors import LegacyFolderError, ResumableWarning, ShardingChangedError
from resumable_magic.storage.base import location
from resumable_magic.store.catalog import list_runs
from resumable_magic.store.keys import key_to_relpath, legacy_relpath
from resumable_magic.store.runstore import RunStore


def to_old_folder(directory: Path, key: str, as_key: str | None = None) -> Path:
    """Move run ``key``'s folder to where earlier versions kept ``as_key`` (default: ``key``) and
    return that folder."""
    new, old = directory / key_to_relpath(key), directory / legacy_relpath(as_key or key)
    assert new != old
    if old.exists():  # the old folder of a nested key is in it already: move the run's files
        for entry in new.iterdir():
            os.rename(entry, old / entry.name)
        new.rmdir()
        return old
    old.parent.mkdir(parents=True, exist_ok=True)
    os.rename(new, old)
    return old


def listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


@pytest.mark.parametrize("key", ["exp/α", LONG + "a" * 10, "Analysis.ipynb/cell-1"])
def test_a_crashed_run_in_its_old_folder_resumes_and_moves_to_its_own(tmp_path: Path, key: str) -> None:
    count(key, tmp_path, stop_at=4)
    old = to_old_folder(tmp_path, key)
    with pytest.warns(ResumableWarning, match=r"was moved to .*its own folder from now on") as told:
        state, ran = count(key, tmp_path)
    assert ran == [4, 5, 6, 7] and state == expected(key)  # resumed, not started over
    assert len(told) == 1 and str(old) in str(told[0].message)
    assert not old.exists() and (tmp_path / key_to_relpath(key) / "DONE").exists()
    assert not (tmp_path / "Analysis.ipynb").exists()  # an old nested key's emptied folders go too
    assert count(key, tmp_path) == (expected(key), [])  # replayed from its own folder, silently


def test_load_and_show_find_a_run_in_its_old_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    count("exp/α", tmp_path)
    to_old_folder(tmp_path, "exp/α")
    assert [(r.key, r.path.name) for r in list_runs(tmp_path)] == [("exp/α", "_")]  # status: the real key
    with pytest.warns(ResumableWarning, match="was moved"):
        code, out, err = run_cli(capsys, "show", "exp/α", "--dir", str(tmp_path))
    assert code == 0, err
    assert "key:         exp/α\n" in out and f"folder:      {tmp_path / key_to_relpath('exp/α')}\n" in out
    to_old_folder(tmp_path, "exp/α")
    with pytest.warns(ResumableWarning, match="was moved"):
        assert load("exp/α", dir=tmp_path) == expected("exp/α")


def test_an_old_folder_holding_another_key_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    count("exp/β", tmp_path, stop_at=4)
    old = to_old_folder(tmp_path, "exp/β")  # exp/_ : where earlier versions kept exp/α and exp/β alike
    before = listing(old)
    for attempt in (lambda: count("exp/α", tmp_path), lambda: load("exp/α", dir=tmp_path)):
        with pytest.raises(LegacyFolderError) as refused:
            attempt()
        assert (refused.value.folder, refused.value.recorded) == (old, "exp/β")
        assert (
            f"{str(old)!r}, the folder earlier versions of resumable_magic gave it, holds run 'exp/β'"
            in str(refused.value)
        )
    code, _, err = run_cli(capsys, "show", "exp/α", "--dir", str(tmp_path))
    assert code == 1 and "LegacyFolderError" in err
    assert listing(old) == before and not (tmp_path / key_to_relpath("exp/α")).exists()
    # What the message says to do: open exp/β, which moves it to its own folder; then exp/α starts.
    with pytest.warns(ResumableWarning, match="was moved"):
        assert count("exp/β", tmp_path) == (expected("exp/β"), [4, 5, 6, 7])
    assert count("exp/α", tmp_path) == (expected("exp/α"), list(range(8)))


def test_the_magic_refuses_it_before_setup_runs(tmp_path: Path) -> None:
    count("exp/β", tmp_path, stop_at=4)
    to_old_folder(tmp_path, "exp/β")
    ip = shell()
    ip.user_ns.pop("setup_ran", None)
    result = ip.run_cell(
        f"%%resumable total --name exp/α --dir {tmp_path}\nsetup_ran = True\ntotal = 0\n"
        f"for i in range(3):\n    total += i\n"
    )
    assert isinstance(result.error_in_exec, LegacyFolderError)
    assert "setup_ran" not in ip.user_ns


def test_an_older_copy_of_a_run_that_has_its_own_folder_is_refused(tmp_path: Path) -> None:
    count("exp/β", tmp_path, stop_at=4)
    old = tmp_path / legacy_relpath("exp/β")
    shutil.copytree(tmp_path / key_to_relpath("exp/β"), old)  # β moved on; an old copy stayed behind
    with pytest.raises(
        LegacyFolderError, match=r"holds an older copy of run 'exp/β', which has its own folder"
    ):
        count("exp/α", tmp_path)
    shutil.rmtree(old)  # what the message says to do
    assert count("exp/α", tmp_path) == (expected("exp/α"), list(range(8)))


def test_a_run_whose_old_folder_holds_nested_keys_stays_there(tmp_path: Path) -> None:
    """Moving 'Exp' would carry along 'Exp/Inner''s old folder, where 'Exp/Inner' would not be found
    any more: 'Exp' is used where it is, and 'Exp/Inner' moves to its own folder by itself."""
    count("Exp", tmp_path, stop_at=4)
    count("Exp/Inner", tmp_path, stop_at=2)
    to_old_folder(tmp_path, "Exp/Inner")
    to_old_folder(tmp_path, "Exp")
    assert (tmp_path / "Exp" / "Inner" / "objects").is_dir()
    with pytest.warns(
        ResumableWarning, match=r"is used there rather than moved.*\(it holds the folders of other keys too"
    ):
        assert count("Exp", tmp_path) == (expected("Exp"), [4, 5, 6, 7])
    with pytest.warns(ResumableWarning, match="was moved"):
        assert count("Exp/Inner", tmp_path) == (expected("Exp/Inner"), [2, 3, 4, 5, 6, 7])
    assert (tmp_path / key_to_relpath("Exp/Inner") / "DONE").exists()
    with pytest.warns(
        ResumableWarning, match=r"is used there rather than moved.*that folder exists already, holding other"
    ):
        assert load("Exp", dir=tmp_path) == expected("Exp")  # found where it is, each time


def test_an_old_folder_that_is_another_runs_blob_folder_is_never_moved(tmp_path: Path) -> None:
    count("a", tmp_path)
    count("a/objects", tmp_path, stop_at=4)
    old = to_old_folder(tmp_path, "a/objects")  # into a/objects/, run 'a''s blobs, as before
    blobs = {p.name for p in old.iterdir() if p.is_file() and not p.name.startswith("manifest.")}
    with pytest.raises(LegacyFolderError, match=r"is also the blob folder of the run in"):
        count("a/objects", tmp_path)
    assert blobs <= {p.name for p in old.iterdir()} and load("a", dir=tmp_path) == expected("a")
    for manifest in old.glob("manifest.*.json"):  # what the message says to do
        manifest.unlink()
    assert count("a/objects", tmp_path) == (expected("a/objects"), list(range(8)))


def test_an_old_folder_that_is_another_keys_own_is_left_alone(tmp_path: Path) -> None:
    count("exp/_", tmp_path)  # a plain key: its folder is exp/_, today as before
    assert count("exp/α", tmp_path) == (expected("exp/α"), list(range(8)))  # no warning, no refusal
    assert load("exp/_", dir=tmp_path) == expected("exp/_")


def test_an_unreadable_old_folder_is_refused(tmp_path: Path) -> None:
    count("exp/α", tmp_path, stop_at=4)
    old = to_old_folder(tmp_path, "exp/α")
    for manifest in old.glob("manifest.*.json"):
        manifest.write_text("{torn")
    with pytest.raises(LegacyFolderError, match=r"holds a run whose records cannot be read or name no key"):
        count("exp/α", tmp_path)


def test_the_key_composed_and_decomposed_in_two_old_folders_is_refused(tmp_path: Path) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "exp/é"), unicodedata.normalize("NFD", "exp/é")
    assert legacy_relpath(nfc) != legacy_relpath(nfd)  # earlier versions: two folders, two runs
    count(nfc, tmp_path, stop_at=4)
    old = to_old_folder(tmp_path, nfc)
    shutil.copytree(old, tmp_path / legacy_relpath(nfd))
    with pytest.raises(LegacyFolderError, match=r"one has its accents composed, the other decomposed"):
        count(nfd, tmp_path)
    shutil.rmtree(old)
    with pytest.warns(ResumableWarning, match="was moved"):  # the decomposed one's, found by the NFC key
        assert count(nfc, tmp_path)[1] == [4, 5, 6, 7]


def test_a_run_held_by_a_live_process_is_used_where_it_is(tmp_path: Path) -> None:
    count("exp/α", tmp_path, stop_at=4)
    old = to_old_folder(tmp_path, "exp/α")
    lease = RunStore.at(old, "exp/α").new_lease()
    lease.acquire()  # this process: alive
    try:
        with pytest.warns(
            ResumableWarning, match=r"is used there rather than moved.*\(a live process holds it\)"
        ):
            store = RunStore(tmp_path, "exp/α")
        assert store.path == old and store.moved_from == old
        assert store.read_latest().checkpoint.position == 4  # type: ignore[union-attr]
    finally:
        lease.release()
    with pytest.warns(ResumableWarning, match="was moved"):
        assert count("exp/α", tmp_path)[1] == [4, 5, 6, 7]


def test_on_object_storage_the_old_folder_is_used_where_it_is(tmp_path: Path) -> None:
    import fsspec

    directory = f"memory://keys-{uuid.uuid4().hex[:10]}/ckpt"
    count("exp/α", directory, stop_at=4)  # type: ignore[arg-type]
    root = location(directory).fs_path  # type: ignore[union-attr]
    fs = fsspec.filesystem("memory")
    fs.mv(f"{root}/{key_to_relpath('exp/α')}", f"{root}/exp/_", recursive=True)
    with pytest.warns(
        ResumableWarning,
        match=r"is used there rather than moved.*\(object storage cannot move a folder in one step\)",
    ):
        assert count("exp/α", directory) == (expected("exp/α"), [4, 5, 6, 7])  # type: ignore[arg-type]
    assert [(r.key, r.path.name) for r in list_runs(directory)] == [("exp/α", "_")]


def test_a_maps_shards_in_its_old_folder_keep_its_sharding(tmp_path: Path) -> None:
    """The sharding check sees the shards in the map's old folder: another shard count is refused."""
    for i in range(4):
        count(f"Maps/Squares/shard-{i:04d}-of-0004", tmp_path)
    to_old_folder(tmp_path, "Maps/Squares")
    with pytest.raises(ShardingChangedError, match="started with 4 shards; this call asks for 3"):
        plan_map(range(10), "Maps/Squares", tmp_path, 3, "mod")
    assert plan_map(range(10), "Maps/Squares", tmp_path, None, "mod")[1] == 4
