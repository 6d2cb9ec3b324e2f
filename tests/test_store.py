"""The on-disk format: atomic commits, checksums, fallback to older generations, collection."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest

from resumable_magic.errors import CheckpointFormatError, OptionError
from resumable_magic.storage import local as storage
from resumable_magic.store import records
from resumable_magic.store.records import seal as _sealed
from resumable_magic.store.runstore import RunStore, digest, key_to_relpath


def commit(store: RunStore, payload: bytes, position: int, keep: int | None = None) -> int:
    name, _ = store.put_blob(payload)
    return store.commit(
        {"created": 1.0, "position": position, "state": {"digest": name, "size": len(payload)}}, keep
    )


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "ck", "nb.ipynb/cell-1")
    s.ensure()
    return s


def test_commit_and_read_latest(store):
    g1 = commit(store, b"one", 10)
    g2 = commit(store, b"two", 20, keep=g1)
    result = store.read_latest()
    assert result.problems == []
    assert (result.checkpoint.generation, result.checkpoint.position, result.checkpoint.state) == (
        g2,
        20,
        b"two",
    )


def test_only_the_new_and_the_kept_generation_survive(store):
    g1 = commit(store, b"one", 1)
    g2 = commit(store, b"two", 2, keep=g1)
    g3 = commit(store, b"three", 3, keep=g2)
    manifests = sorted(p.name for p in store.path.glob("manifest.*.json"))
    assert manifests == [f"manifest.{g2:08d}.json", f"manifest.{g3:08d}.json"]
    assert sorted(p.name for p in store.objects.iterdir()) == sorted([digest(b"two"), digest(b"three")])


def test_files_are_private(store):
    commit(store, b"x", 1)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o700
    for path in [*store.path.glob("manifest.*"), *store.objects.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "damage",
    [
        "truncate-manifest",
        "empty-manifest",
        "flip-manifest",
        "delete-blob",
        "flip-blob",
        "truncate-blob",
        "garbage-manifest",
    ],
)
def test_damaged_newest_checkpoint_falls_back_to_the_previous(store, damage):
    g1 = commit(store, b"good old state", 1)
    g2 = commit(store, b"newer state", 2, keep=g1)
    manifest = store.path / f"manifest.{g2:08d}.json"
    blob = store.objects / digest(b"newer state")
    if damage == "truncate-manifest":
        manifest.write_bytes(manifest.read_bytes()[:40])
    elif damage == "empty-manifest":
        manifest.write_bytes(b"")
    elif damage == "garbage-manifest":
        manifest.write_bytes(os.urandom(200))
    elif damage == "flip-manifest":
        record = json.loads(manifest.read_bytes())
        record["position"] = 999
        manifest.write_text(json.dumps(record))
    elif damage == "delete-blob":
        blob.unlink()
    elif damage == "flip-blob":
        data = bytearray(blob.read_bytes())
        data[3] ^= 0x01
        blob.write_bytes(bytes(data))
    elif damage == "truncate-blob":
        blob.write_bytes(blob.read_bytes()[:4])
    result = store.read_latest()
    assert result.checkpoint is not None and result.checkpoint.generation == g1
    assert result.checkpoint.state == b"good old state"
    assert len(result.problems) == 1
    assert result.problems[0].path.name in (manifest.name, blob.name)


def test_nothing_readable_is_reported_not_raised(store):
    g1 = commit(store, b"a", 1)
    (store.path / f"manifest.{g1:08d}.json").write_bytes(b"{")
    result = store.read_latest()
    assert result.checkpoint is None and len(result.problems) == 1
    assert "not valid JSON" in str(result.problems[0])


def test_other_format_version_is_a_clear_error(store):
    g1 = commit(store, b"a", 1)
    path = store.path / f"manifest.{g1:08d}.json"
    record = json.loads(path.read_bytes())
    record["format"] = 99
    path.write_bytes(_sealed(record))
    with pytest.raises(CheckpointFormatError, match="format version 99"):
        store.read_latest()


def test_done_record_names_the_final_generation_and_a_newer_run_makes_it_stale(store):
    g1 = commit(store, b"final", 5)
    store.mark_finished(g1, {"finished": 2.0})
    assert store.finished(g1)["generation"] == g1
    g2 = commit(store, b"fresh start", 0, keep=g1)
    assert store.finished(g2) is None  # a later generation exists: the DONE is not about it
    g3 = commit(store, b"on", 1, keep=g2)
    assert not (store.path / "DONE").exists()  # collected once its generation is gone
    assert store.read_latest().checkpoint.generation == g3


def test_crashed_writer_temporaries_are_cleaned(store):
    leftover = store.objects / ".tmp-999999999-abc"
    leftover.write_bytes(b"half")
    mine = store.path / f".tmp-{os.getpid()}-x"
    mine.write_bytes(b"half")
    store.clean_temporaries()
    assert not leftover.exists() and not mine.exists()


def test_blob_is_not_rewritten_when_present_and_intact(store):
    _, written = store.put_blob(b"same")
    assert written == 4
    _, written = store.put_blob(b"same")
    assert written == 0
    blob = store.objects / digest(b"same")
    blob.write_bytes(b"sam")  # torn: rewritten
    _, written = store.put_blob(b"same")
    assert written == 4 and blob.read_bytes() == b"same"
    blob.write_bytes(b"sane")  # damaged, same size: a new process checks it (then trusts its identity)
    storage._VERIFIED_FILES.clear()
    records._strong_put.clear()
    _, written = store.put_blob(b"same")
    assert written == 4 and blob.read_bytes() == b"same"


def test_keys_become_safe_relative_paths():
    assert str(key_to_relpath("sweep/lr=0.01,seed=3")) == "sweep/lr=0.01,seed=3"
    # Other characters: a readable slug and a digest of the name (tests/test_keys.py has the rest).
    assert re.fullmatch(r"a_b~[0-9a-f]{12}/c_d~[0-9a-f]{12}", str(key_to_relpath("a b/c*d")))
    for bad in ["", "..", "a/../b", "/"]:
        with pytest.raises(OptionError, match="--name"):
            key_to_relpath(bad)
