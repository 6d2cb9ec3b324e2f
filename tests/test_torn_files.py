"""Torn, bit-flipped, zero-length and missing files of every kind a run writes, and other format versions.

``test_store.py`` checks the store's reader on a damaged newest manifest or blob. Here every kind of
file (manifests, state blobs, DONE, the lease ``owner.json`` and ``owner.lock``, ``outcome.json``,
temporaries) is damaged in each of four ways in a run made by the plain API, and the damage is
followed through everything that reads it: the next run (it names the damaged file, resumes from
the older generation or starts over as the README says, and ends exactly as an uninterrupted run),
``load()``, the catalog, and ``resumable status`` / ``show``. Then every single-bit flip of a
manifest and of a DONE record is shown to be detected, and a checkpoint of another format version
to be refused with a clear :class:`CheckpointFormatError`, never an unpickling crash.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import loops
import pytest
from loops import Recorder

from resumable_magic import Resumable, load
from resumable_magic.errors import CheckpointFormatError, NoCheckpointError, ResumableError
from resumable_magic.frontends import cli
from resumable_magic.store.catalog import find_run, list_runs
from resumable_magic.store.records import seal as _sealed
from resumable_magic.store.runstore import FORMAT_VERSION, RunStore

KEY = "torn"
N = 12
STOP = 7  # the interrupted run raises at this item: checkpoints at positions 7 (newest) and 6 remain
HOW = ("truncated", "bit-flipped", "zero-length", "missing")


def run_loop(ckpt: Path, stop_at: int | None = None) -> tuple[tuple, Recorder]:
    return loops.run_loop(ckpt, KEY, N, stop_at)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple:
    final, _ = run_loop(tmp_path_factory.mktemp("reference"))
    return final


def damage(path: Path, how: str) -> None:
    data = path.read_bytes() or b"\x00"  # (a lock file is empty: flipping means writing a byte)
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bit-flipped":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x04
        path.write_bytes(bytes(flipped))
    elif how == "zero-length":
        path.write_bytes(b"")
    else:
        path.unlink()


def newest_two(ckpt: Path) -> tuple[Path, Path, Path, Path]:
    """(newest manifest, its blob, older manifest, its blob)."""
    run_dir = RunStore(ckpt, KEY).path
    paths = sorted(run_dir.glob("manifest.*.json"), reverse=True)
    assert len(paths) == 2, paths
    blobs = [run_dir / "objects" / json.loads(p.read_bytes())["state"]["digest"] for p in paths]
    return paths[0], blobs[0], paths[1], blobs[1]


def cli_run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def check_readers(
    capsys, ckpt: Path, *, position: int | None, damaged: str | None, listed: int | None = -1
) -> None:
    """load(), the catalog, `resumable status` and `show` on the damaged folder: no crash, the damage named.

    ``listed``: the position the catalog shows, when it differs from ``position``: a listing checks
    only that blobs exist with their recorded size (it does not read gigabytes), so a bit flip in a
    blob is found by the readers that load the state, not by ``status``.
    """
    listed = position if listed == -1 else listed
    info = find_run(ckpt, KEY)
    assert info is not None and info.position == listed, info
    assert [run.key for run in list_runs(ckpt)] == [KEY]
    if damaged and listed == position:
        assert any(damaged in problem for problem in info.problems), info.problems
    code, out, err = cli_run(capsys, "status", "--dir", str(ckpt))
    assert code == 0 and KEY in out and not err, (out, err)
    code, out, err = cli_run(capsys, "status", "--json", "--dir", str(ckpt))
    assert code == 0 and json.loads(out)[0]["position"] == listed
    code, out, err = cli_run(capsys, "show", KEY, "--dir", str(ckpt))
    if position is None:
        assert code == 1 and "no readable checkpoint" in err and len(err.splitlines()) == 1, err
        with pytest.raises(NoCheckpointError):
            load(KEY, dir=ckpt)
    else:
        assert code == 0 and f"progress:    {position:,}/{N}" in out, (out, err)
        if damaged and listed == position:
            assert "damaged (skipped)" in out and damaged in out
        assert load(KEY, dir=ckpt)["seen"] == list(range(position))


# -- the checkpoint files of an interrupted run ------------------------------------------------------


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("which", ["manifest", "blob"])
def test_damaged_newest_checkpoint_resumes_from_the_one_before(tmp_path, capsys, reference, which, how):
    ckpt = tmp_path / "ck"
    run_loop(ckpt, stop_at=STOP)
    manifest, blob, _, _ = newest_two(ckpt)
    target = manifest if which == "manifest" else blob
    damage(target, how)
    # a missing manifest is indistinguishable from a checkpoint never written: nothing to report
    named = None if (which, how) == ("manifest", "missing") else target.name
    listed = STOP if (which, how) == ("blob", "bit-flipped") else STOP - 1
    check_readers(capsys, ckpt, position=STOP - 1, damaged=named, listed=listed)

    final, said = run_loop(ckpt)
    assert final == reference
    assert f"from the checkpoint at iteration {STOP - 1:,}" in said.text("info")
    if named:
        assert named in said.text("warning") and "is damaged" in said.text("warning")
    else:
        assert not said.text("warning")
    assert find_run(ckpt, KEY).state == "finished"


@pytest.mark.parametrize("how", HOW)
def test_every_checkpoint_damaged_starts_over_and_says_so(tmp_path, capsys, reference, how):
    ckpt = tmp_path / "ck"
    run_loop(ckpt, stop_at=STOP)
    for path in newest_two(ckpt)[1::2]:  # both blobs
        damage(path, how)
    listed = STOP if how == "bit-flipped" else None  # a listing does not read blobs (see check_readers)
    check_readers(capsys, ckpt, position=None, damaged=None, listed=listed)
    assert len(find_run(ckpt, KEY).problems) == (0 if how == "bit-flipped" else 2)

    final, said = run_loop(ckpt)
    assert final == reference
    assert "No readable checkpoint is left for this run, so it starts from the beginning" in said.text(
        "warning"
    )


def test_every_single_bit_flip_of_a_manifest_is_detected(tmp_path):
    """Detected, or harmless: a flip in the last digit of a float can spell the same double
    (``...399.7686126`` and ``...399.7686127``), which reads back exactly as written."""
    ckpt = tmp_path / "ck"
    run_loop(ckpt, stop_at=STOP)
    manifest, _, older, _ = newest_two(ckpt)
    store = RunStore(ckpt, KEY)
    good = manifest.read_bytes()
    original = store.read_latest(load_state=False).checkpoint
    older_generation = int(older.name.split(".")[1])
    undetected, harmless = [], 0
    for bit in range(len(good) * 8):
        flipped = bytearray(good)
        flipped[bit // 8] ^= 1 << (bit % 8)
        manifest.write_bytes(bytes(flipped))
        result = store.read_latest(load_state=False)
        if result.checkpoint.generation == older_generation and len(result.problems) == 1:
            continue
        if result.checkpoint == original and not result.problems:
            harmless += 1
            continue
        undetected.append(bit)
    assert not undetected, f"{len(undetected)} of {len(good) * 8} single-bit flips were not detected"
    assert harmless < 16, f"{harmless} flips read back unchanged"


def test_bit_flips_in_a_state_blob_are_detected(tmp_path):
    ckpt = tmp_path / "ck"
    run_loop(ckpt, stop_at=STOP)
    _, blob, _, older_blob = newest_two(ckpt)
    store = RunStore(ckpt, KEY)
    good = blob.read_bytes()
    rng = random.Random(3)
    for bit in [0, 7, len(good) * 8 - 1, *rng.sample(range(len(good) * 8), 64)]:
        flipped = bytearray(good)
        flipped[bit // 8] ^= 1 << (bit % 8)
        blob.write_bytes(bytes(flipped))
        result = store.read_latest()
        assert result.checkpoint.state == older_blob.read_bytes(), f"bit {bit}"
        assert [p.path.name for p in result.problems] == [blob.name]


# -- the completion record ------------------------------------------------------------------------


@pytest.mark.parametrize("how", HOW)
def test_damaged_done_record_resumes_from_the_final_checkpoint(tmp_path, capsys, reference, how):
    """Without a readable DONE, the final checkpoint still says the loop ended: the next run replays
    it (the loop does not run again, which after a `break` would redo the breaking iteration), ends
    with the same values, and writes DONE again."""
    ckpt = tmp_path / "ck"
    run_loop(ckpt)
    done = RunStore(ckpt, KEY).path / "DONE"
    damage(done, how)
    named = None if how == "missing" else "DONE"
    check_readers(capsys, ckpt, position=N, damaged=named)
    assert find_run(ckpt, KEY).state != "finished"

    final, said = run_loop(ckpt)
    assert final == reference
    if named:
        assert "DONE" in said.text("warning") and "is damaged" in said.text("warning")
    else:
        assert not said.text("warning")
    assert "Replayed the finished run" in said.text("info") and f"after {N:,} iterations" in said.text("info")
    assert find_run(ckpt, KEY).state == "finished" and not find_run(ckpt, KEY).problems
    final, said = run_loop(ckpt)  # and now it replays
    assert final == reference and "Replayed the finished run" in said.text("info")


def test_every_single_bit_flip_of_a_done_record_is_detected(tmp_path):
    ckpt = tmp_path / "ck"
    run_loop(ckpt)
    store = RunStore(ckpt, KEY)
    generation = store.read_latest().checkpoint.generation
    done = store.path / "DONE"
    good = done.read_bytes()
    original = store.finished(generation)
    assert original is not None
    for bit in range(len(good) * 8):
        flipped = bytearray(good)
        flipped[bit // 8] ^= 1 << (bit % 8)
        done.write_bytes(bytes(flipped))
        result = store.read_latest(load_state=False)
        if not result.problems and store.finished(generation) == original:
            continue  # the same value spelt differently (a float's last digit): read back as written
        assert [p.path.name for p in result.problems] == ["DONE"], f"bit {bit}"
        assert store.finished(generation) is None, f"bit {bit}"


# -- the lease, the outcome, temporaries ----------------------------------------------------------


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", ["owner.json", "owner.lock", "outcome.json"])
def test_damaged_lease_or_outcome_is_ignored(tmp_path, capsys, reference, name, how):
    """Neither is a checkpoint: damage to them loses nothing; the catalog reads what it can."""
    ckpt = tmp_path / "ck"
    run_loop(ckpt, stop_at=STOP)
    path = RunStore(ckpt, KEY).path / name
    assert path.exists(), sorted(p.name for p in path.parent.iterdir())
    damage(path, how)
    check_readers(capsys, ckpt, position=STOP, damaged=None)
    info = find_run(ckpt, KEY)
    # The attempt failed; its outcome says so unless the outcome itself is what was damaged. The
    # outcome and the lease carry no checksum (what they say is advisory: nothing resumed depends on
    # them), so a flip that leaves valid JSON may pass unnoticed: it may show the state or not.
    if name != "outcome.json":
        assert info.state == "failed", info
    elif how == "bit-flipped":
        assert info.state in ("failed", "crashed"), info
    else:
        assert info.state == "crashed", info

    final, said = run_loop(ckpt)
    assert final == reference and not said.text("warning")
    assert f"from the checkpoint at iteration {STOP:,}" in said.text("info")


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


@pytest.mark.parametrize("how", ["truncated", "zero-length"])
def test_temporaries_left_by_a_dead_writer_are_ignored_then_removed(tmp_path, capsys, reference, how):
    ckpt = tmp_path / "ck"
    run_loop(ckpt, stop_at=STOP)
    manifest, blob, _, _ = newest_two(ckpt)
    pid = dead_pid()
    left = []
    for source in (manifest, blob):
        tmp = source.with_name(f".tmp-{pid}-{source.name[:8]}")
        tmp.write_bytes(source.read_bytes())
        damage(tmp, how)
        left.append(tmp)
    odd = manifest.with_name(".tmp-not-a-pid")  # a name no writer of ours makes: also stale
    odd.write_bytes(b"\x00" * 10)
    left.append(odd)
    check_readers(capsys, ckpt, position=STOP, damaged=None)
    code, out, _ = cli_run(capsys, "gc", "--dry-run", "--dir", str(ckpt))
    assert code == 0 and "would free" in out, out
    assert all(tmp.exists() for tmp in left)
    assert sorted(RunStore(ckpt, KEY).stale_temporaries()) == sorted(left)

    final, said = run_loop(ckpt)
    assert final == reference and not said.text("warning")
    assert not any(tmp.exists() for tmp in left)


# -- other format versions -----------------------------------------------------------------------------


def reseal(path: Path, **changes) -> None:
    """Rewrite a sealed record with ``changes``, sealed properly: only those fields differ."""
    record = json.loads(path.read_bytes())
    record.pop("checksum", None)
    path.write_bytes(_sealed({**record, **changes}))


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, FORMAT_VERSION - 1, "2.0", None])
def test_a_checkpoint_of_another_format_version_is_refused_clearly(tmp_path, capsys, version):
    ckpt = tmp_path / "ck"
    run_loop(ckpt, stop_at=STOP)
    manifest, blob, _, _ = newest_two(ckpt)
    before = {p: p.read_bytes() for p in (blob, *manifest.parent.glob("manifest.*.json"))}
    reseal(manifest, format=version)
    expected = f"uses format version {version!r}; this resumable_magic reads version {FORMAT_VERSION}"

    with pytest.raises(CheckpointFormatError, match="format version") as refused:
        run_loop(ckpt)
    assert expected in str(refused.value) and manifest.name in str(refused.value)
    with pytest.raises(CheckpointFormatError, match="format version"):
        load(KEY, dir=ckpt)
    code, out, err = cli_run(capsys, "show", KEY, "--dir", str(ckpt))
    assert code == 1 and expected in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    # the listing goes on, naming the problem, rather than failing for the whole folder
    code, out, err = cli_run(capsys, "status", "--dir", str(ckpt))
    assert code == 0 and KEY in out, (out, err)
    assert any(expected in problem for problem in find_run(ckpt, KEY).problems)
    # nothing was overwritten or collected: the version that wrote it can still open it
    assert {p: p.read_bytes() for p in before} == {**before, manifest: manifest.read_bytes()}


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, FORMAT_VERSION - 1])
def test_a_done_record_of_another_format_version_is_refused_clearly(tmp_path, capsys, version):
    ckpt = tmp_path / "ck"
    run_loop(ckpt)
    done = RunStore(ckpt, KEY).path / "DONE"
    reseal(done, format=version)
    with pytest.raises(CheckpointFormatError, match=f"format version {version!r}"):
        run_loop(ckpt)
    code, out, err = cli_run(capsys, "status", "--dir", str(ckpt))
    assert code == 0 and KEY in out, (out, err)
    assert any("format version" in problem for problem in find_run(ckpt, KEY).problems)


def test_a_well_sealed_checkpoint_with_an_unloadable_state_is_a_clear_error(tmp_path):
    """A blob that verifies but does not unpickle (written by a newer pickle protocol, say): the run
    refuses with a message, not an unpickling traceback, and changes nothing."""
    ckpt = tmp_path / "ck"
    run_loop(ckpt, stop_at=STOP)
    store = RunStore(ckpt, KEY)
    manifest = newest_two(ckpt)[0]
    name, _ = store.put_blob(b"\x80\x09 not a pickle of this version")
    record = json.loads(manifest.read_bytes())
    reseal(manifest, state={**record["state"], "digest": name})
    with pytest.raises(ResumableError, match="verified but could not be loaded"):
        run_loop(ckpt)


def test_fresh_starts_over_past_a_checkpoint_of_another_format_version(tmp_path):
    import json

    from resumable_magic.errors import CheckpointFormatError
    from resumable_magic.store.records import seal as _sealed

    state = {"total": 0}
    with Resumable("v", state, dir=tmp_path) as run:
        for i in run.iterate(range(5)):
            state["total"] += i
    for path in (tmp_path / "v").glob("manifest.*.json"):
        record = json.loads(path.read_bytes())
        record.pop("checksum"), record.pop("signature")
        path.write_bytes(_sealed({**record, "format": 99}))
    with pytest.raises(CheckpointFormatError):
        Resumable("v", {"total": 0}, dir=tmp_path).open()
    fresh = {"total": 0}
    with Resumable("v", fresh, dir=tmp_path, fresh=True) as run:
        for i in run.iterate(range(7)):
            fresh["total"] += i
    assert fresh["total"] == 21
