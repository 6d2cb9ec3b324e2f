"""Large buffers out of band: each in its own content-addressed blob, written once while unchanged."""

from __future__ import annotations

import json

import numpy as np

from resumable_magic import Resumable, load
from resumable_magic.progress.model import ProgressModel


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
