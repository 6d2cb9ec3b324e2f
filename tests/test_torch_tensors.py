"""PyTorch tensors out of band (issue 15, part 3): one blob per storage, shared storages stay shared,
every dtype, Parameters and requires_grad kept, unchanged tensors not rewritten, no torch call in a
forked writer, a GPU's checkpoint refused where that GPU is absent unless mapped to the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from resumable_magic import DeviceMissingError, Resumable, load
from resumable_magic.progress.model import ProgressModel
from resumable_magic.state import tensors
from resumable_magic.state.serialize import buffer_digest

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)  # bit-reproducible runs on this machine's cores
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none"
)


class Net(nn.Module):
    """Trained float32 layers, an output layer tied to the embedding, and tensors of other dtypes:
    a frozen float16 Parameter, a bfloat16 Parameter, int8 and bool buffers, a buffer that is a view."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(500, 64)  # 128 KB: out of band
        self.hidden = nn.Linear(64, 64)
        self.out = nn.Linear(64, 500, bias=False)
        self.out.weight = self.embed.weight  # tied
        self.frozen = nn.Parameter(torch.randn(256, 256).half(), requires_grad=False)
        self.scale = nn.Parameter(torch.randn(40_000).bfloat16())
        self.register_buffer("codes", torch.randint(-128, 127, (100_000,), dtype=torch.int8))
        self.register_buffer("mask", torch.rand(70_000) > 0.5)
        self.register_buffer("window", self.codes[100:200])  # a view of another buffer

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.embed(tokens))))


def _step(model: Net, opt: torch.optim.Optimizer, i: int) -> float:
    batch = torch.Generator().manual_seed(i)  # the data depends on i only
    tokens = torch.randint(0, 500, (32,), generator=batch)
    loss = nn.functional.cross_entropy(model(tokens), (tokens + 1) % 500)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.codes[i] += 1  # a buffer changed in place (and through it, for i in 100..199, the window)
    return loss.item()


class Stop(Exception):
    pass


class Recorder(ProgressModel):
    def __init__(self) -> None:
        super().__init__()
        self.stats: list = []

    def checkpoint_finished(self, stats) -> None:  # type: ignore[override]
        super().checkpoint_finished(stats)
        self.stats.append(stats)


def _train(ckpt: Path, key: str, n: int, seed: int, stop_at: int | None = None, checks=None, **options):
    """Run (or resume) ``n`` steps of a fresh Net(seed) with Adam; raise Stop at ``stop_at``."""
    model = Net(seed)
    state = {
        "model": model,
        "opt": torch.optim.Adam([p for p in model.parameters() if p.requires_grad]),
        "losses": [],
    }
    progress = Recorder()
    with Resumable(key, state, dir=ckpt, every="1it", progress=progress, **options) as run:
        for i in run.iterate(range(n)):
            if checks is not None:
                checks(state)
            if i == stop_at:
                raise Stop
            state["losses"].append(_step(state["model"], state["opt"], i))
    return state, progress


def _assert_same_training(a: dict, b: dict) -> None:
    assert a["losses"] == b["losses"]
    for one, two in ((a["model"], b["model"]), (a["opt"], b["opt"])):
        left, right = one.state_dict(), two.state_dict()
        flat_left, flat_right = _flatten(left), _flatten(right)
        assert flat_left.keys() == flat_right.keys()
        for name, value in flat_left.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == flat_right[name].dtype, name
                assert torch.equal(value, flat_right[name]), name
            else:
                assert value == flat_right[name], name


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{prefix}{i}.").items()}
    return {prefix: value}


def _assert_one_object_graph(state: dict) -> None:
    """Views, tied weights, Parameters, requires_grad, and the optimizer's hold on the model's params."""
    model, opt = state["model"], state["opt"]
    assert model.out.weight is model.embed.weight
    assert model.window.untyped_storage().data_ptr() == model.codes.untyped_storage().data_ptr()
    assert model.window.data_ptr() == model.codes.data_ptr() + 100
    assert type(model.frozen) is nn.Parameter and not model.frozen.requires_grad
    assert model.frozen.dtype == torch.float16 and model.scale.dtype == torch.bfloat16
    assert type(model.scale) is nn.Parameter and model.scale.requires_grad
    assert model.codes.dtype == torch.int8 and model.mask.dtype == torch.bool
    trained = [p for p in model.parameters() if p.requires_grad]
    held = [p for group in opt.param_groups for p in group["params"]]
    assert len(held) == len(trained) and all(p is q for p, q in zip(held, trained, strict=True))
    assert all(any(key is p for p in held) for key in opt.state)  # Adam's state is keyed by them


def test_a_model_and_adam_resume_as_one_object_graph_equal_to_an_uninterrupted_run(tmp_path):
    whole, _ = _train(tmp_path / "a", "whole", 6, seed=1)
    with pytest.raises(Stop):
        _train(tmp_path / "b", "cut", 6, seed=1, stop_at=3)
    seen = []

    def check_after_restore(state):  # inside the resumed run: the restored objects, before any step
        if not seen:
            _assert_one_object_graph(state)
            assert len(state["losses"]) == 3 and len(state["opt"].state) == 3  # scale gets no gradient
        seen.append(1)

    # A different seed: every value the resumed run ends with must come from the checkpoint.
    resumed, _ = _train(tmp_path / "b", "cut", 6, seed=2, checks=check_after_restore)
    assert len(seen) == 3  # resumed at item 3
    _assert_same_training(whole, resumed)
    _assert_one_object_graph(resumed)
    loaded = load("cut", dir=tmp_path / "b")
    _assert_same_training(whole, loaded)
    _assert_one_object_graph(loaded)
    loaded["model"].codes[0] = 5  # restored tensors are writable, and the view sees its base
    loaded["model"].codes[150] = 7
    assert loaded["model"].window[50] == 7


def test_unchanged_tensors_keep_their_blob_and_are_not_written_again(tmp_path):
    _, progress = _train(tmp_path, "frozen", 4, seed=1)
    first, *rest = progress.stats
    state = load("frozen", dir=tmp_path)
    model = state["model"]
    unchanged = [model.frozen, model.scale, model.mask]  # never trained, never changed in place
    assert first.written > sum(t.nbytes for t in unchanged)  # the first checkpoint writes them
    # The later ones write what changed (the trained weights, Adam's moments, the int8 buffer), not them.
    assert all(0 < s.written <= s.nbytes - sum(t.nbytes for t in unchanged) for s in rest[:-1])
    assert rest[-1].written == 0  # the final checkpoint: nothing changed since the last one
    for manifest in (tmp_path / "frozen").glob("manifest.*.json"):
        digests = [b["digest"] for b in json.loads(manifest.read_bytes())["buffers"]]
        for tensor in unchanged:
            assert buffer_digest(tensor.detach().view(torch.uint8).numpy()) in digests
    sizes = [p.stat().st_size for p in (tmp_path / "frozen" / "objects").iterdir()]
    assert sizes.count(model.frozen.nbytes) == 1  # one blob per storage, not per view


def test_one_blob_per_storage_for_views_and_tied_weights(tmp_path):
    base = torch.arange(100_000, dtype=torch.float32)
    state = {"base": base, "views": [base[10:], base.view(1000, 100).t(), base[::2]], "tied": {"b": base}}
    with Resumable("views", state, dir=tmp_path) as run:
        for _ in run.iterate(range(1)):
            pass
    manifest = json.loads(max((tmp_path / "views").glob("manifest.*.json")).read_bytes())
    assert [b["size"] for b in manifest["buffers"]] == [base.nbytes]
    saved = load("views", dir=tmp_path)
    restored = saved["base"]
    assert saved["tied"]["b"] is restored
    for original, view in zip(state["views"], saved["views"], strict=True):
        assert torch.equal(original, view) and view.stride() == original.stride()
        assert view.untyped_storage().data_ptr() == restored.untyped_storage().data_ptr()
    restored[20] = -1.0
    assert saved["views"][0][10] == -1.0 and saved["views"][2][10] == -1.0


def test_a_checkpoint_from_an_absent_gpu_is_refused_unless_mapped_to_the_cpu(tmp_path, monkeypatch):
    absent = f"cuda:{torch.cuda.device_count()}"  # cuda:0 here; a device index no machine here has
    # The storages are recorded as that device's, as a checkpoint written on a GPU machine records them.
    monkeypatch.setattr(tensors, "_device_of", lambda storage: absent)
    written, _ = _train(tmp_path, "gpu", 2, seed=1)
    monkeypatch.undo()
    manifest = json.loads(max((tmp_path / "gpu").glob("manifest.*.json")).read_bytes())
    assert manifest["devices"] == [absent]

    with pytest.raises(DeviceMissingError) as refused:
        load("gpu", dir=tmp_path)
    message = str(refused.value)
    assert absent in message and 'map_location="cpu"' in message and "\n" not in message
    fresh = {"model": Net(3), "opt": None, "losses": []}
    before = fresh["model"].hidden.weight.clone()
    with pytest.raises(DeviceMissingError):
        Resumable("gpu", fresh, dir=tmp_path, every="1it").open()
    assert torch.equal(fresh["model"].hidden.weight, before) and fresh["losses"] == []  # nothing changed

    mapped = load("gpu", dir=tmp_path, map_location="cpu")
    _assert_same_training(written, mapped)
    assert all(p.device.type == "cpu" for p in mapped["model"].parameters())
    replayed = {"model": None, "opt": None, "losses": []}
    with Resumable("gpu", replayed, dir=tmp_path, map_location="cpu") as run:
        for _ in run.iterate(range(2)):
            raise AssertionError("a finished run is replayed, not run again")
    _assert_same_training(written, replayed)


def _run_script(code: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_importing_and_running_without_torch_loaded_never_imports_it(tmp_path):
    done = _run_script(
        """
        import sys
        import resumable_magic
        from resumable_magic import Resumable, load
        from resumable_magic.core import run
        state = {"total": 0, "data": bytearray(1 << 20)}
        with Resumable("plain", state, dir=".resumable", every="1it") as r:
            for i in r.iterate(range(3)):
                state["total"] += i
        assert load("plain", dir=".resumable")["total"] == 3
        print("torch" in sys.modules)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


FORKED = """
    import json, os, sys
    import torch
    from resumable_magic import Resumable, load
    torch.set_num_threads(1)
    parent, log = os.getpid(), os.open("child-calls.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def torch_name(frame, event, arg):
        if event == "call":
            return frame.f_code.co_filename if "/torch/" in frame.f_code.co_filename else None
        owner = getattr(arg, "__self__", None)
        module = getattr(arg, "__module__", None) or type(owner).__module__
        return f"{module}.{getattr(arg, '__qualname__', arg)}" if module.startswith("torch") else None

    def hook(frame, event, arg):  # in a forked writer: write down every call into torch
        if os.getpid() != parent and event in ("call", "c_call"):
            name = torch_name(frame, event, arg)
            os.write(log, (f"torch {name}" if name else "call").encode() + b"\\n")

    model = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.Linear(2048, 2048))  # 32 MiB
    opt = torch.optim.Adam(model.parameters())  # twice that in its state: 96 MiB in all, forked
    state = {"model": model, "opt": opt}
    sys.setprofile(hook)
    with Resumable("forked", state, dir=".resumable", every="1it") as run:
        for i in run.iterate(range(4)):
            model(torch.ones(8, 2048)).sum().backward()
            opt.step()
            run.checkpoints.collect(wait=True)  # each background write lands before the next step
    sys.setprofile(None)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    saved = load("forked", dir=".resumable")
    same = all(torch.equal(expected[k], v) for k, v in saved["model"].state_dict().items())
    print(json.dumps({"background": len(run.checkpoints.background_writes), "same": same}))
"""


def test_a_forked_writer_writes_a_torch_state_without_calling_torch(tmp_path):
    done = _run_script(FORKED, tmp_path)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"background": 3, "same": True}, done.stdout  # items 1-3 written by children
    calls = (tmp_path / "child-calls.txt").read_text().splitlines()
    assert calls.count("call") > 100  # the hook saw the children's work (writing, hashing, committing)
    assert [c for c in calls if c.startswith("torch")] == []


@needs_cuda
def test_cuda_tensors_resume_on_their_device(tmp_path):
    model = nn.Linear(512, 512).cuda()
    opt = torch.optim.Adam(model.parameters())
    state = {"model": model, "opt": opt, "base": torch.arange(100_000.0, device="cuda")}
    state["view"] = state["base"][5:]
    with Resumable("cuda", state, dir=tmp_path, every="1it") as run:
        for _ in run.iterate(range(3)):
            model(torch.ones(4, 512, device="cuda")).sum().backward()
            opt.step()
    manifest = json.loads(max((tmp_path / "cuda").glob("manifest.*.json")).read_bytes())
    assert manifest["devices"] == ["cuda:0"]
    saved = load("cuda", dir=tmp_path)
    assert saved["model"].weight.device.type == "cuda" and saved["view"].device.type == "cuda"
    assert torch.equal(saved["model"].weight, model.weight) and torch.equal(saved["view"], state["view"])
    assert saved["view"].untyped_storage().data_ptr() == saved["base"].untyped_storage().data_ptr()
    held = saved["opt"].param_groups[0]["params"]
    assert all(p is q for p, q in zip(held, saved["model"].parameters(), strict=True))
    assert load("cuda", dir=tmp_path, map_location="cpu")["model"].weight.device.type == "cpu"


@needs_cuda
def test_a_forked_writer_writes_cuda_tensors_from_their_host_copies(tmp_path):
    code = FORKED.replace("torch.nn.Linear(2048, 2048))", "torch.nn.Linear(2048, 2048)).cuda()")
    code = code.replace("torch.ones(8, 2048)", "torch.ones(8, 2048, device='cuda')")
    done = _run_script(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"background": 3, "same": True}
    assert [c for c in (tmp_path / "child-calls.txt").read_text().splitlines() if c.startswith("torch")] == []
