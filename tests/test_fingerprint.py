"""Fingerprints of the values a cell reads: equal exactly when the values are, across processes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from resumable_magic import InputsChangedError, Resumable
from resumable_magic.state.fingerprint import MAX_ITEMS, fingerprint_inputs


def test_plain_data_of_every_shape_is_fingerprinted_and_other_objects_are_not():
    values = {
        "n": 3,
        "grid": [(0.01, 0), (0.01, 1)],
        "cfg": {"lr": 0.1, "layers": [64, 64]},
        "tags": {"b", "a"},
        "arr": np.arange(6.0).reshape(2, 3),
        "model": object(),
        "huge": list(range(MAX_ITEMS + 1)),
    }
    found = fingerprint_inputs(values)
    assert set(found) == {"n", "grid", "cfg", "tags", "arr"}
    assert found["grid"] == "[(0.01, 0), (0.01, 1)]" and found["tags"] == "set({'a', 'b'})"
    assert found["arr"].startswith("array(2, 3) float64, digest ")
    changed = fingerprint_inputs({**values, "grid": [(0.5, 0)], "arr": values["arr"] + 1})
    assert changed["grid"] != found["grid"] and changed["arr"] != found["arr"]
    long = fingerprint_inputs({"xs": list(range(1000))})["xs"]
    assert long.startswith("list of 1000 items, digest ")


def test_sets_fingerprint_the_same_in_processes_with_other_hash_seeds():
    code = (
        "from resumable_magic.state.fingerprint import fingerprint_inputs, fingerprint_item\n"
        "s = frozenset(f'word{i}' for i in range(50))\n"
        "print(fingerprint_inputs({'s': s})['s'], fingerprint_item(s))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONHASHSEED": seed}
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1 and outputs != {""}


def test_a_changed_list_input_refuses_to_replay(tmp_path):
    state = {"results": {}}
    grid = [(0.01, 0), (0.01, 1)]
    with Resumable("sweep", state, dir=tmp_path, inputs={"GRID": grid}) as run:
        for lr, seed in run.iterate(grid):
            state["results"][lr, seed] = lr * 10 + seed
    with pytest.raises(InputsChangedError, match=r"GRID: \[\(0\.01, 0\), \(0\.01, 1\)\] then") as refused:
        Resumable("sweep", {"results": {}}, dir=tmp_path, inputs={"GRID": [(0.5, 0)]}).open()
    assert "--params" in str(refused.value)
