"""Training loops in real kernels, killed with SIGKILL at random steps and run again: the final model,
optimizer state and losses equal (``torch.equal``) those of the same code run uninterrupted without
``%%resumable``, and each kill redoes at most ``--every`` inner steps plus the one in flight.

Each step appends its global step number to a log file outside the checkpointed state, so the test
sees which steps every kernel ran. Kills land at a random step (seeded: ``RESUMABLE_TEST_SEED``
replays a failure). Kernels run torch on one thread, which makes its results bit-reproducible.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from kernels import REPO_ROOT, KernelDied, KernelHandle, wait_for

pytestmark = pytest.mark.kernel

SEED = int(os.environ.get("RESUMABLE_TEST_SEED", "0")) or random.SystemRandom().randrange(1, 10**6)
KILLS = 3

# A dropout MLP, Adam, a shuffling DataLoader, epoch x batch: 4 epochs of 12 batches.
MLP_SETUP = """\
import os, time, torch
torch.set_num_threads(1)
torch.manual_seed(0)
X = torch.randn(96, 8)
Y = (X.sum(1) > 0).long()
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=8, shuffle=True)
model = torch.nn.Sequential(
    torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 2)
)
opt = torch.optim.Adam(model.parameters(), lr=0.01)
losses = []
log = os.open({log!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
"""
MLP_LOOP = """\
for epoch in range(4):
    model.train()
    for xb, yb in loader:
        os.write(log, b"%d\\n" % len(losses))
        time.sleep(0.03)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
"""
# torch.rand drawn in the body of a flat loop: the global torch RNG alone carries the run.
RAND_SETUP = """\
import os, time, torch
torch.set_num_threads(1)
torch.manual_seed(1)
model = torch.nn.Linear(3, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
losses = []
log = os.open({log!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
"""
RAND_LOOP = """\
for step in range(40):
    os.write(log, b"%d\\n" % len(losses))
    time.sleep(0.03)
    x = torch.rand(4, 3)
    loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.detach())
"""
SAVE = """\
torch.save({{"model": model.state_dict(), "opt": opt.state_dict(), "losses": losses,
            "rng": torch.get_rng_state(),
            "same": [p is q for p, q in zip(opt.param_groups[0]["params"], model.parameters())]}}, {out!r})
"""


def cell(setup: str, loop: str, tmp: Path, out: Path, magic: str = "") -> str:
    return magic + setup.format(log=str(tmp / "steps.log")) + loop + SAVE.format(out=str(out))


def steps_of(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def assert_same_training(got: dict, want: dict) -> None:
    for name, tensor in want["model"].items():
        assert torch.equal(got["model"][name], tensor), f"model parameter {name} differs"
    assert got["opt"]["param_groups"] == want["opt"]["param_groups"]
    for index, entry in want["opt"]["state"].items():
        for key, value in entry.items():
            assert torch.equal(got["opt"]["state"][index][key], value), (
                f"optimizer state {index}.{key} differs"
            )
    assert len(got["losses"]) == len(want["losses"])
    assert all(torch.equal(a, b) for a, b in zip(got["losses"], want["losses"], strict=True)), "losses differ"
    assert torch.equal(got["rng"], want["rng"]), "the global torch RNG ends elsewhere"


def reference(kernel_factory, setup: str, loop: str, tmp: Path) -> dict:
    """The same code, uninterrupted, without %%resumable."""
    plain = tmp / "plain"
    plain.mkdir()
    k = kernel_factory(cwd=plain)
    k.execute(cell(setup, loop, plain, plain / "final.pt"), check=True, timeout=120)
    return torch.load(plain / "final.pt", weights_only=False)


def kill_and_resume(k: KernelHandle, code: str, log: Path, every: int, rnd: random.Random) -> list[int]:
    """Run ``code``, SIGKILL the kernel at a random step and run it again, KILLS times, then let it
    finish; return the steps each kill redid (begun by the killed kernel, run again by the next)."""
    starts = []  # where each attempt's steps begin in the log
    for _ in range(KILLS):
        k.execute("%load_ext resumable_magic", check=True)
        starts.append(len(steps_of(log)))
        target = starts[-1] + rnd.randint(3, 12)
        msg_id = k.execute_async(code)
        k.wait_for(lambda m=msg_id, t=target: k.partial(m).done or len(steps_of(log)) >= t, timeout=120)
        assert not k.partial(msg_id).done, f"the run ended before step {target}: {k.partial(msg_id).text}"
        k.kill()
        with pytest.raises(KernelDied):
            k.result(msg_id, timeout=10)
        k.restart()
    k.execute("%load_ext resumable_magic", check=True)
    starts.append(len(steps_of(log)))
    result = k.execute(code, timeout=180)
    assert result.ok, result.text
    steps = steps_of(log)
    redone = [steps[end - 1] - steps[end] + 1 for end in starts[1:]]
    assert max(redone) <= every + 1, f"a kill redid {max(redone)} steps (--every {every}it): {redone}"
    return redone


@pytest.mark.parametrize(
    ("setup", "loop", "every"),
    [(MLP_SETUP, MLP_LOOP, 5), (RAND_SETUP, RAND_LOOP, 4)],
    ids=["dropout-mlp-shuffling-loader", "torch-rand-in-body"],
)
def test_training_killed_at_random_ends_as_uninterrupted(setup, loop, every, kernel_factory, tmp_path):
    rnd = random.Random(f"{SEED}-{every}")
    want = reference(kernel_factory, setup, loop, tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    magic = f"%%resumable model opt losses --every {every}it --name train --dir {run / 'ckpt'}\n"
    code = cell(setup, loop, run, run / "final.pt", magic)
    redone = kill_and_resume(kernel_factory(cwd=run), code, run / "steps.log", every, rnd)
    got = torch.load(run / "final.pt", weights_only=False)
    assert_same_training(got, want)
    assert all(got["same"]) and got["same"], "after a resume the optimizer's parameters are not the model's"
    print(f"seed {SEED}: redone per kill {redone}")


# The dropout MLP through the plain API in a script: the outer and the inner loop both run.iterate.
SCRIPT_LOOP = """\
from resumable_magic import Resumable
with Resumable("script", globals(), ["model", "opt", "losses"], dir={ckpt!r}, every="5it", nested=True) as run:
    for epoch in run.iterate(range(4)):
        model.train()
        for xb, yb in run.iterate(loader):
{body}
"""


def test_a_script_on_the_plain_api_killed_at_random_ends_as_uninterrupted(kernel_factory, tmp_path):
    rnd = random.Random(f"{SEED}-script")
    want = reference(kernel_factory, MLP_SETUP, MLP_LOOP, tmp_path)
    body = textwrap.indent(MLP_LOOP.split("for xb, yb in loader:\n", 1)[1], " " * 8)
    loop = SCRIPT_LOOP.format(ckpt=str(tmp_path / "ckpt"), body=body)
    script = tmp_path / "train.py"
    script.write_text(cell(MLP_SETUP, loop, tmp_path, tmp_path / "final.pt"))
    log = tmp_path / "steps.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    starts = []
    for _ in range(KILLS):
        starts.append(len(steps_of(log)))
        target = starts[-1] + rnd.randint(3, 12)
        process = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL)
        wait_for(lambda t=target, p=process: p.poll() is not None or len(steps_of(log)) >= t, timeout=120)
        assert process.poll() is None, f"the script ended before step {target}"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    starts.append(len(steps_of(log)))
    subprocess.run([sys.executable, str(script)], env=env, check=True, timeout=180, stdout=subprocess.DEVNULL)
    steps = steps_of(log)
    redone = [steps[end - 1] - steps[end] + 1 for end in starts[1:]]
    assert max(redone) <= 5 + 1, f"a kill redid {max(redone)} steps (every 5 steps): {redone}"
    got = torch.load(tmp_path / "final.pt", weights_only=False)
    assert_same_training(got, want)
    assert all(got["same"]) and got["same"], "after a resume the optimizer's parameters are not the model's"
