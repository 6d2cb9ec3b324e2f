"""The crash check of ``train_torch.ipynb``: run a ``%%resumable`` cell in a fresh kernel, SIGKILL that
kernel once a checkpoint inside the inner loop is on disk, run the cell again in a new kernel, and
return the final values it saved (``resumable_magic.load``) with what the second run said.

The kernels get a checkpoint folder of their own (not the notebook's), over ipc.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client import KernelManager

import resumable_magic
from resumable_magic.store.runstore import RunStore


def _start(folder: Path, env: dict[str, str], attempt: int) -> tuple[KernelManager, Any]:
    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(folder / f"kernel{attempt}"))
    km.start_kernel(env=env, cwd=str(folder))
    client = km.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    client.execute_interactive("%load_ext resumable_magic", timeout=60)
    return km, client


def crash_and_resume(cell: str, key: str, inner_steps: int) -> dict[str, Any]:
    """Run ``cell`` (a ``%%resumable ... --name key`` cell's text) in a fresh kernel; SIGKILL it once a
    checkpoint at least ``inner_steps`` into some epoch is committed; run it again in a new kernel.
    Returns ``{"values": ..., "said": ..., "killed_at": (epoch, batch)}``."""
    folder = Path(tempfile.mkdtemp(prefix="train-torch-crash-"))
    env = {**os.environ, "RESUMABLE_DIR": str(folder / "checkpoints")}
    store = RunStore(folder / "checkpoints", key)
    km, client = _start(folder, env, 1)
    try:
        client.execute(cell)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            latest = store.read_latest().checkpoint if store.directory.exists() else None
            inner = latest.manifest.get("inner") if latest is not None else None
            if inner is not None and inner["position"] >= inner_steps:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError("no checkpoint inside the inner loop within 120 s")
        os.kill(km.provisioner.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        killed_at = (latest.position, inner["position"])
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)
    said: list[str] = []
    km, client = _start(folder, env, 2)
    try:
        client.execute_interactive(
            cell,
            timeout=300,
            output_hook=lambda msg: said.append(
                msg["content"].get("text") or msg["content"].get("data", {}).get("text/plain", "")
            ),
        )
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)
    values = resumable_magic.load(key, dir=folder / "checkpoints")
    return {"values": values, "said": "".join(said), "killed_at": killed_at}
