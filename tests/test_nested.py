"""Nested loops (epoch x batch) in one process: a run that fails at a chosen inner step and is run
again ends exactly as an uninterrupted run, for range, list, generator and DataLoader inner iterables,
through a cell and through the plain API; what cannot be resumed inside the inner loop is said once
and resumed between outer iterations; a changed inner iterable or torch setting is refused before
anything runs. The crashes here are exceptions; tests/test_kernel_torch.py kills real kernels."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch

from resumable_magic import Resumable
from resumable_magic.core.cellrun import run_cell
from resumable_magic.errors import InputsChangedError, IterationMismatchError, ResumableError
from resumable_magic.progress.model import ProgressModel
from resumable_magic.state import rng
from resumable_magic.store.runstore import RunStore


class Crash(Exception):
    pass


# The inner loop over each kind of iterable; `os.environ["CRASH_AT"]` names the (epoch, item) to fail
# at: the environment is not one of the cell's inputs, so the run after the crash resumes.
INNER = {
    "range": "range(5)",
    "list": "[random.random() for _ in range(5)]",
    "generator": "(k * k for k in range(5))",
    "loader": "loader",
}
CELL = """\
import os, random, torch
random.seed(3)
torch.manual_seed(3)
ds = torch.utils.data.TensorDataset(torch.arange(20.0))
loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)
for epoch in range(3):
    order = torch.randperm(4).tolist()
    for n, x in enumerate({inner}):
        if os.environ.get("CRASH_AT") == f"{{epoch}},{{n}}":
            raise Crash()
        seen.append((epoch, order, n, repr(x), random.random(), torch.rand(1).item()))
"""


def run(tmp_path, source, crash_at=None, every="2it", progress=None, **kw):
    namespace = {"seen": [], "Crash": Crash}
    os.environ["CRASH_AT"] = crash_at or ""
    try:
        run_cell(
            source, ["seen"], namespace, key="k", dir=tmp_path / "ck", every=every, progress=progress, **kw
        )
    except Crash:
        return None
    finally:
        del os.environ["CRASH_AT"]
    return namespace


@pytest.mark.parametrize("inner", list(INNER))
@pytest.mark.parametrize("crash_at", ["1,3", "0,4", "2,0"])
def test_a_cell_resumed_inside_its_inner_loop_ends_as_uninterrupted(inner, crash_at, tmp_path):
    source = CELL.format(inner=INNER[inner])
    want = run(tmp_path / "ref", source)
    progress = ProgressModel()
    assert run(tmp_path, source, crash_at=crash_at) is None
    got = run(tmp_path, source, progress=progress)
    assert got is not None and got["seen"] == want["seen"]
    said = " ".join(text for _, text in progress.messages)
    if crash_at == "1,3":  # 5 items an epoch, a checkpoint every 2: the last at step 8, (1, 3)
        assert "at position (1, 3) (outer of 3, inner)" in said and "first 3 items were skipped" in said, said


def test_the_plain_api_nests_with_a_second_iterate(tmp_path):
    def attempt(folder, crash_after=None):
        state = {"seen": []}
        random.seed(5)
        with Resumable("api", state, dir=tmp_path / folder, every="3it", nested=True) as r:
            for epoch in r.iterate(range(3)):
                for k in r.iterate([random.random() for _ in range(4)]):
                    if len(state["seen"]) == crash_after:
                        raise Crash()
                    state["seen"].append((epoch, k, random.random()))
        return state["seen"]

    want = attempt("ref")
    with pytest.raises(Crash):
        attempt("run", crash_after=7)  # the checkpoint after 6 steps: (1, 2)
    assert RunStore(tmp_path / "run", "api").read_latest().checkpoint.manifest["inner"]["position"] == 2
    assert attempt("run") == want


def test_a_generator_drawing_with_the_body_is_refused_before_anything_runs(tmp_path):
    # Its items interleave draws with the body's: skipping them draws them in another order.
    source = CELL.format(inner="(random.random() * k for k in range(5))")
    assert run(tmp_path, source, crash_at="1,3") is None
    with pytest.raises(IterationMismatchError) as refused:
        run(tmp_path, source)
    assert "a random.Random of its own, and start over with --fresh" in str(refused.value)
    assert RunStore(tmp_path / "ck", "k").read_latest().checkpoint.manifest["inner"]["position"] == 3


def test_an_inner_iterable_that_changed_is_refused_before_anything_runs(tmp_path):
    source = CELL.format(inner="[random.random() + float(os.environ.get('SHIFT', 0)) for _ in range(5)]")
    assert run(tmp_path, source, crash_at="1,3") is None
    os.environ["SHIFT"] = "1"
    try:
        with pytest.raises(IterationMismatchError) as refused:
            run(tmp_path, source)
    finally:
        del os.environ["SHIFT"]
    assert "for n, x in enumerate(" in str(refused.value)


def test_a_dataloader_fast_forwards_without_loading_the_skipped_batches(tmp_path):
    source = CELL.format(inner="loader").replace("ds = ", "ds = Counted(); _ = ")
    loaded: list[int] = []

    class Counted(torch.utils.data.Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, i):
            loaded.append(i)
            return torch.tensor(float(i))

    def attempt(crash_at=None):
        namespace = {"seen": [], "Crash": Crash, "Counted": Counted}
        os.environ["CRASH_AT"] = crash_at or ""
        try:
            run_cell(source, ["seen"], namespace, key="k", dir=tmp_path, every="2it")
        except Crash:
            pass
        finally:
            del os.environ["CRASH_AT"]
        return namespace["seen"]

    attempt("1,4")  # 5 batches an epoch, a checkpoint every 2: the last at step 8, (1, 3)
    loaded.clear()
    attempt()
    # Epoch 1: its 3rd batch (to check it), the 4th and 5th; epoch 2: all five. Not the first two.
    assert len(loaded) == 4 * (1 + 2 + 5), len(loaded)


def test_workers_are_said_once_and_checkpoints_fall_between_epochs(tmp_path):
    source = CELL.format(inner="loader").replace("shuffle=True", "shuffle=True, num_workers=1")
    progress = ProgressModel()
    assert run(tmp_path, source, crash_at="1,3", progress=progress) is None
    said = [text for _, text in progress.messages if "worker processes" in text]
    assert len(said) == 1 and "between outer iterations only" in said[0], said
    manifests = RunStore(tmp_path / "ck", "k").read_latest().checkpoint
    assert manifests is not None and manifests.manifest.get("inner") is None
    assert manifests.position == 1  # epoch 0 done, nothing of epoch 1


def test_what_the_outer_loop_resets_and_the_inner_loop_accumulates_is_warned_about(tmp_path):
    source = "for epoch in range(2):\n    total = 0\n    for b in range(3):\n        total += b\n    seen.append(total)\n"
    progress = ProgressModel()
    run(tmp_path, source, progress=progress)
    warned = [text for level, text in progress.messages if level == "warning"]
    assert len(warned) == 1 and "'total' (line 4)" in warned[0] and "Add it to the names" in warned[0], warned


def test_a_while_inside_a_for_resumes_between_outer_iterations(tmp_path):
    source = (
        "import os\nfor epoch in range(3):\n    n = 0\n    while n < 3:\n"
        "        if os.environ.get('CRASH_AT') == f'{epoch},{n}':\n            raise Crash()\n"
        "        n += 1\n        seen.append((epoch, n))\n"
    )
    want = run(tmp_path / "ref", source, every="1it")
    assert run(tmp_path, source, crash_at="1,1", every="1it") is None
    assert RunStore(tmp_path / "ck", "k").read_latest().checkpoint.position == 1
    assert run(tmp_path, source, every="1it")["seen"] == want["seen"]


def test_one_iteration_longer_than_the_interval_is_said_once_with_why(tmp_path):
    source = "import time\nfor epoch in range(3):\n    time.sleep(0.35)\n    seen.append(epoch)\n"
    progress = ProgressModel()
    run(tmp_path, source, every="0.1s", progress=progress)
    said = [text for _, text in progress.messages if "longer than" in text]
    assert len(said) == 1 and "inner `for` loop" in said[0], said


def test_a_changed_torch_determinism_setting_is_refused_before_running(tmp_path):
    source = CELL.format(inner="range(5)")
    assert run(tmp_path, source, crash_at="1,3") is None
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(InputsChangedError) as refused:
            run(tmp_path, source)
    finally:
        torch.use_deterministic_algorithms(False)
    assert "torch: deterministic algorithms: False then, True now" in str(refused.value)


def test_a_registered_rng_is_restored_and_its_version_change_warned_about(tmp_path):
    generator = random.Random(7)
    version = ["1.0"]
    rng.register_rng(
        "testlib", generator.getstate, generator.setstate, lambda: True, version=lambda: version[0]
    )
    try:
        source = "for epoch in range(2):\n    for k in range(4):\n        if os.environ.get('CRASH_AT') == f'{epoch},{k}':\n            raise Crash()\n        seen.append(draw())\n"
        source = "import os\n" + source

        def attempt(crash_at=None, folder="ck", progress=None):
            generator.seed(7)
            namespace = {"seen": [], "Crash": Crash, "draw": generator.random}
            os.environ["CRASH_AT"] = crash_at or ""
            try:
                run_cell(
                    source,
                    ["seen"],
                    namespace,
                    key="k",
                    dir=tmp_path / folder,
                    every="1it",
                    progress=progress,
                )
            except Crash:
                return None
            finally:
                del os.environ["CRASH_AT"]
            return namespace["seen"]

        want = attempt(folder="ref")
        attempt("1,2")
        version[0] = "2.0"
        progress = ProgressModel()
        assert attempt(progress=progress) == want
        said = [text for _, text in progress.messages if "testlib 1.0 then, 2.0 now" in text]
        assert len(said) == 1, progress.messages
    finally:
        rng._PROVIDERS.pop("testlib")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_stateful_dataloader_resumes_from_its_own_state_dict(workers, tmp_path):
    source = CELL.format(inner="loader").replace(
        "loader = torch.utils.data.DataLoader(",
        f"from torchdata.stateful_dataloader import StatefulDataLoader\nloader = StatefulDataLoader(num_workers={workers}, dataset=",
    )
    want = run(tmp_path / "ref", source)
    assert run(tmp_path, source, crash_at="1,3") is None
    inner = RunStore(tmp_path / "ck", "k").read_latest().checkpoint.manifest["inner"]
    assert inner["position"] == 3  # inside the epoch, with worker processes too
    assert run(tmp_path, source)["seen"] == want["seen"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_each_cuda_devices_generator_is_restored(tmp_path):
    source = CELL.format(inner="range(5)").replace(
        "random.random(), torch.rand(1).item()", "torch.rand(1, device='cuda').item()"
    )
    want = run(tmp_path / "ref", source)
    assert run(tmp_path, source, crash_at="1,3") is None
    assert run(tmp_path, source)["seen"] == want["seen"]


NO_TORCH = """\
import os, random
random.seed(3)
for epoch in range(3):
    for n, x in enumerate([1, 2, 3]):
        if os.environ.get("CRASH_AT") == f"{epoch},{n}":
            raise KeyError()
        seen.append((epoch, n, random.random()))
"""


def test_a_nested_loop_without_torch_never_imports_it(tmp_path):
    script = f"""
import os, sys
from resumable_magic.core.cellrun import run_cell
for crash in ("1,2", ""):
    os.environ["CRASH_AT"] = crash
    try:
        run_cell({NO_TORCH!r}, ["seen"], {{"seen": []}}, key="k", dir={str(tmp_path)!r}, every="1it")
    except KeyError:
        pass
print("torch" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert "Resumed inside" in out.stdout and out.stdout.split()[-1] == "False", out.stdout


def test_a_checkpoint_inside_an_inner_loop_is_refused_by_a_run_without_one(tmp_path):
    source = CELL.format(inner="range(5)")
    assert run(tmp_path, source, crash_at="1,3") is None
    flat = source.replace(
        "    for n, x in enumerate(range(5)):",
        "    with open(os.devnull):\n      for n, x in enumerate(range(5)):",
    )
    before = []
    namespace = {"seen": before, "Crash": Crash}
    with pytest.raises(ResumableError) as refused:
        run_cell(flat, ["seen"], namespace, key="k", dir=tmp_path / "ck", every="2it")
    assert "inside the inner loop `for n, x in enumerate(range(5)):`, after 3 of its items" in str(
        refused.value
    )
    assert namespace["seen"] is before and before == []  # nothing restored, nothing run


def test_a_second_level_of_the_plain_api_needs_nested_true(tmp_path):
    state = {"n": 0}
    with Resumable("flat", state, dir=tmp_path, every="2it") as r:
        for _ in r.iterate(range(2)):  # one loop after another is fine
            state["n"] += 1
    needs = r"open the run with Resumable\(\.\.\., nested=True\)"
    with (
        pytest.raises(ResumableError, match=needs),
        Resumable("flat2", state, dir=tmp_path, every="2it") as r,
    ):
        for _ in r.iterate(range(2)):
            for _ in r.iterate(range(2)):
                pass


def test_a_batch_of_tensors_is_fingerprinted_by_content_and_inputs_are_not():
    from resumable_magic.state.fingerprint import fingerprint_inputs, fingerprint_item, item_matches

    batch = (torch.randn(4, 3).to(torch.bfloat16), torch.arange(4), "label")
    recorded = fingerprint_item(batch)
    assert item_matches(recorded, tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in batch))
    assert not item_matches(recorded, (batch[0] + 1, batch[1], "label"))
    assert not item_matches(recorded, (batch[0].to(torch.float16), batch[1], "label"))  # dtype counts
    assert fingerprint_inputs({"t": torch.zeros(2), "b": [torch.zeros(1)]}) == {}  # as before
