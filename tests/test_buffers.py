"""Large buffers out of band: each in its own content-addressed blob, written once while unchanged."""

from __future__ import annotations

import json

import numpy as np
import xxhash
from blake3 import blake3

from resumable_magic import Resumable, load
from resumable_magic.progress.model import ProgressModel
from resumable_magic.store.runstore import BLOB_HASHES, NEW_BLOB_MIN


class Recorder(ProgressModel):
    def __init__(self) -> None:
        super().__init__()
        self.stats = []

    def checkpoint_finished(self, stats) -> None:  # type: ignore[override]
        super().checkpoint_finished(stats)
        self.stats.append(stats)


def test_an_unchanged_array_is_not_written_again_and_restores_exactly(tmp_path):
    big = np.random.default_rng(1).standard_normal(2**20)  # 8 MiB, out of band
    state = {"big": big, "counter": 0, "small": np.arange(10)}
    progress = Recorder()
    with Resumable("b", state, dir=tmp_path, every="1it", progress=progress) as run:
        for _ in run.iterate(range(5)):
            state["counter"] += 1
    first, *rest = progress.stats
    assert first.written >= big.nbytes  # the first checkpoint writes the array
    assert all(s.written < 64 * 1024 for s in rest)  # later ones only the small stream
    assert all(s.nbytes >= big.nbytes for s in rest)  # while the state is still that large
    manifest = json.loads(max((tmp_path / "b").glob("manifest.*.json")).read_bytes())
    assert [b["size"] for b in manifest["buffers"]] == [big.nbytes]
    assert manifest["state"]["size"] < 64 * 1024
    saved = load("b", dir=tmp_path)
    assert np.array_equal(saved["big"], big) and saved["counter"] == 5
    saved["big"][0] = 1.0  # restored arrays are writable
    assert np.array_equal(saved["small"], np.arange(10))


def test_a_changed_array_gets_a_new_blob_and_the_old_one_is_collected(tmp_path):
    state = {"big": np.zeros(2**20)}
    with Resumable("c", state, dir=tmp_path, every="1it") as run:
        for i in run.iterate(range(4)):
            state["big"][i] = i + 1
    objects = sorted(p.stat().st_size for p in (tmp_path / "c" / "objects").iterdir())
    # Four arrays were written; the two kept generations (the last iteration's and the final one)
    # hold the same array, so one blob of it is left: the older ones were collected.
    assert objects.count(8 * 2**20) == 1
    assert load("c", dir=tmp_path)["big"][:5].tolist() == [1, 2, 3, 4, 0]


# -- bytes, bytearray, memoryview, array.array (issue 14) ----------------------------------------------

MiB = 1 << 20


def _buffer_state() -> dict:
    import array
    import os

    data = bytearray(os.urandom(MiB))
    frozen = os.urandom(MiB // 2)
    return {
        "data": data,
        "again": {"same": data},  # the same bytearray under a second name: one object after a restore
        "frozen": frozen,
        "window": memoryview(data)[4096:8192],  # a view of part of it: writes must still reach it
        "floats": memoryview(data).cast("d")[::2],  # a strided view of it, with a format
        "read_only": memoryview(frozen),
        "values": array.array("d", range(100_000)),
        "small": b"x" * 100,
        "text": "t" * (200 * 1024),  # a large str stays in the stream
        "n": 0,
    }


def test_bytes_bytearray_memoryview_and_array_go_out_of_band_and_come_back_as_themselves(tmp_path):
    state = _buffer_state()
    with Resumable("b", state, dir=tmp_path) as run:
        for _ in run.iterate(range(2)):
            state["n"] += 1
    manifest = json.loads(max((tmp_path / "b").glob("manifest.*.json")).read_bytes())
    sizes = sorted(entry["size"] for entry in manifest["buffers"])
    assert sizes == sorted([MiB, MiB // 2, 800_000])  # data, frozen, values; the views are references
    assert manifest["state"]["size"] < 200 * 1024 + 64 * 1024  # the str and small things only
    blobs = {p.stat().st_size for p in (tmp_path / "b" / "objects").iterdir()}
    assert {MiB, MiB // 2, 800_000} <= blobs

    saved = load("b", dir=tmp_path)
    assert type(saved["data"]) is bytearray and saved["data"] == state["data"]
    assert saved["again"]["same"] is saved["data"]
    assert type(saved["frozen"]) is bytes and saved["frozen"] == state["frozen"]
    assert type(saved["window"]) is memoryview and saved["window"].obj is saved["data"]
    assert saved["floats"].obj is saved["data"] and saved["floats"].tobytes() == state["floats"].tobytes()
    assert saved["read_only"].readonly and saved["read_only"].obj is saved["frozen"]
    assert type(saved["values"]).__name__ == "array" and saved["values"] == state["values"]
    assert saved["small"] == b"x" * 100 and saved["text"] == state["text"] and saved["n"] == 2
    saved["window"][0] = saved["data"][4096] ^ 0xFF  # writes through the restored view reach the bytearray
    assert saved["data"][4096] == state["data"][4096] ^ 0xFF
    assert saved["floats"].format == "d" and saved["floats"].shape == state["floats"].shape


def test_the_store_reads_bytes_and_bytearrays_straight_into_them_no_copy(tmp_path):
    from resumable_magic.state.serialize import buffer_kinds, decode_state
    from resumable_magic.store.runstore import RunStore

    state = {"data": bytearray(2 * MiB), "frozen": bytes(MiB), "arr": np.ones(MiB // 8)}
    with Resumable("c", state, dir=tmp_path) as run:
        for _ in run.iterate(range(1)):
            pass
    checkpoint = RunStore(tmp_path, "c").read_latest().checkpoint
    assert buffer_kinds(checkpoint.state) == ["bytearray", "bytes"]
    assert [type(b).__name__ for b in checkpoint.buffers] == ["bytearray", "bytes", "mmap"]
    restored = decode_state(checkpoint.state, checkpoint.buffers)
    assert restored["data"] is checkpoint.buffers[0] and restored["frozen"] is checkpoint.buffers[1]


def test_an_unchanged_bytearray_is_not_written_again_and_a_changed_one_is(tmp_path):
    progress = Recorder()
    state = {"data": bytearray(4 * MiB), "n": 0}
    with Resumable("u", state, dir=tmp_path, every="1it", progress=progress) as run:
        for i in run.iterate(range(4)):
            state["n"] += 1
            if i == 2:
                state["data"][0] = 1
    written = [s.written for s in progress.stats]
    assert written[0] >= 4 * MiB and written[1] < 64 * 1024 and written[2] < 64 * 1024
    assert written[3] >= 4 * MiB  # iteration 2 changed it: a new blob
    assert load("u", dir=tmp_path)["data"][0] == 1


def test_resuming_keeps_a_bytearray_and_its_views_one_object(tmp_path):
    import pytest

    def run_it(stop_at: int) -> dict:
        state = {"data": bytearray(MiB), "n": 0}
        state["view"] = memoryview(state["data"])[10:20]
        with Resumable("r", state, dir=tmp_path, every="1it") as run:
            for i in run.iterate(range(5)):
                state["view"][0] += 1
                state["n"] += 1
                if i == stop_at:
                    raise KeyError("stop")
        return state

    with pytest.raises(KeyError):
        run_it(stop_at=2)
    resumed = run_it(stop_at=-1)  # from the checkpoint at iteration 2
    assert resumed["view"].obj is resumed["data"] and type(resumed["data"]) is bytearray
    assert resumed["data"][10] == resumed["view"][0] == 5 and resumed["n"] == 5


def test_temporaries_of_reducers_are_not_taken_for_state_objects():
    """A non-contiguous array pickles through a temporary ``tobytes()``; a large str through its
    UTF-8; neither is a bytes object of the state, so neither goes out of band as one."""
    from resumable_magic.state.serialize import buffer_kinds, decode_state, encode_state

    strided = np.arange(1 << 18, dtype=np.float64)[::2]
    encoded = encode_state({"a": strided, "s": "é" * 100_000})
    assert encoded.buffers == [] and buffer_kinds(encoded.stream) == []
    restored = decode_state(encoded.stream, encoded.buffers)
    assert np.array_equal(restored["a"], strided) and restored["s"] == "é" * 100_000


def test_out_of_band_bytes_are_views_of_the_objects_not_copies():
    from resumable_magic.state.serialize import decode_state, encode_state

    data = bytearray(MiB)
    encoded = encode_state({"d": data, "twice": [data, data]})
    (buffer,) = encoded.buffers
    data[5] = 9
    assert buffer[5] == 9 and buffer.readonly
    restored = decode_state(encoded.stream, [bytes(buffer)])  # read-only given: one copy, as a bytearray
    assert type(restored["d"]) is bytearray and restored["twice"][1] is restored["d"]


def test_a_memoryview_that_cannot_be_cut_again_from_its_exporter_is_refused_not_copied():
    """A reversed view of a bytearray cannot be rebuilt by slicing the restored bytearray; a copy
    would silently stop sharing its memory, so it is refused, named. A read-only view of bytes is
    copied: nothing can write through it, so nothing is lost."""
    import pytest

    from resumable_magic.errors import NotSerializableError
    from resumable_magic.state.serialize import decode_state, encode_state

    data = bytearray(range(256)) * 1024
    with pytest.raises(NotSerializableError, match=r"'backwards'.*memoryview of part of a bytearray"):
        encode_state({"data": data, "backwards": memoryview(data)[::-1]})
    frozen = bytes(data)
    encoded = encode_state({"backwards": memoryview(frozen)[::-1]})
    restored = decode_state(encoded.stream, encoded.buffers)["backwards"]
    assert restored.readonly and restored.tobytes() == frozen[::-1]


def test_a_large_new_blob_is_named_by_the_hash_computed_while_it_is_written(tmp_path):
    """Issue 14's time target: a large buffer of a size nothing stored has is new, so no hashing pass
    runs before its write; its name and its signed BLAKE3 must still be those of its content."""
    big = np.random.default_rng(2).random(NEW_BLOB_MIN // 8)
    state = {"big": big, "n": 0}
    progress = Recorder()
    with Resumable("large", state, dir=tmp_path, every="1it", progress=progress) as run:
        for i in run.iterate(range(3)):
            state["n"] += 1
            if i == 1:
                big[0] = 7.0  # a changed buffer of a size already stored: the digest first, a new blob
    written = [s.written for s in progress.stats]
    assert written[0] >= big.nbytes and written[1] < MiB  # the new blob once, then nothing
    assert max(written[2:]) >= big.nbytes
    folder = tmp_path / "large"
    manifest = json.loads(max(folder.glob("manifest.*.json")).read_bytes())
    [entry] = manifest["buffers"]
    blob = (folder / "objects" / entry["digest"]).read_bytes()
    assert entry["digest"] == xxhash.xxh3_128_hexdigest(blob) == xxhash.xxh3_128_hexdigest(big)
    assert manifest[BLOB_HASHES][entry["digest"]] == blake3(blob).hexdigest()
    assert not list(folder.glob("objects/.tmp*"))
    saved = load("large", dir=tmp_path)  # checks every blob against the signed BLAKE3
    assert np.array_equal(saved["big"], big) and saved["n"] == 3
