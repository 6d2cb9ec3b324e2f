"""What a checkpoint to S3 costs against a plain upload of the same bytes.

Starts moto's S3 server on loopback (``moto_server``, from the ``test`` extra), makes a bucket, and
times, interleaved round-robin in one run (``_common.measure``):

* ``fs.pipe (baseline)``: ``s3fs`` uploading the array's bytes in one ``pipe_file``;
* ``checkpoint, array changed``: one synchronous checkpoint of ``{"a": array}`` through the plain API
  (:class:`~resumable_magic.Resumable` with ``dir="s3://..."``): serialise, PUT the stream and the
  array's buffer, re-read the lease, PUT the manifest create-only, collect the old generation;
* ``checkpoint, array unchanged``: the same with the array untouched: its blob is not uploaded again;
* ``checkpoint to a local folder``: the same changed-array checkpoint on disk, for scale;
* ``background (fork): loop stall``: the changed-array checkpoint to S3 written by a forked
  writer (states of 64 MiB and more); timed is what the loop waits for (the fork), while the writer's
  own upload is waited for outside the timed part.

moto keeps objects in its own process's memory, so the figures are of the protocol and the client's
work, not of a network or a disk; the ratio is what carries over.

    .venv/bin/python benchmarks/bench_storage.py [--mib 64] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MIB, measure, per_round, print_table, ratio_headline, ratios, versions, write_json  # noqa: E402


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(exe) if exe.exists() else "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # ready when it answers
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                return process, endpoint
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit("moto_server did not start") from None
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="size of the float64 array")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 MiB, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.mib, args.rounds = 4, 1
    process, endpoint = start_moto()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        RESUMABLE_SIGNING_KEY=os.environ.get("RESUMABLE_SIGNING_KEY") or "be" * 32,
    )
    try:
        return run(args)
    finally:
        process.terminate()
        process.wait(10)


def run(args: argparse.Namespace) -> int:
    import boto3
    import fsspec

    from resumable_magic import Resumable
    from resumable_magic.progress.model import ProgressModel

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bench-bucket")
    fs = fsspec.filesystem("s3")
    array = np.random.default_rng(0).random(args.mib * MIB // 8)
    raw = array.tobytes()
    changed = {"a": array.copy()}
    unchanged = {"a": array.copy()}
    local = {"a": array.copy()}
    forked = {"a": array.copy()}
    with tempfile.TemporaryDirectory() as folder:
        runs = {
            "changed": Resumable("changed", changed, dir="s3://bench-bucket/ck", progress=ProgressModel()),
            "unchanged": Resumable(
                "unchanged", unchanged, dir="s3://bench-bucket/ck", progress=ProgressModel()
            ),
            "local": Resumable("local", local, dir=folder, progress=ProgressModel()),
            "forked": Resumable("forked", forked, dir="s3://bench-bucket/ck", progress=ProgressModel()),
        }
        for resumable in runs.values():
            resumable.open()
            resumable.restore()  # the first checkpoint: blobs uploaded once

        def checkpoint(name: str, state: dict | None, sync: bool = True) -> None:
            if state is not None:
                state["a"][0] += 1.0  # a new digest: the whole buffer is written again
            runs[name]._take_checkpoint(sync=sync)

        def settle(name: str, _result: object) -> None:
            if name.startswith("background"):  # the forked writer's upload: not the loop's time
                runs["forked"].checkpoints.collect(wait=True)

        try:
            results = measure(
                {
                    "fs.pipe (baseline)": lambda: fs.pipe_file("bench-bucket/raw/blob", raw),
                    "checkpoint, array changed": lambda: checkpoint("changed", changed),
                    "checkpoint, array unchanged": lambda: checkpoint("unchanged", None),
                    "checkpoint to a local folder": lambda: checkpoint("local", local),
                    "background (fork): loop stall": lambda: checkpoint("forked", forked, sync=False),
                },
                args.rounds,
                after=settle,
            )
            forked_writes = len(runs["forked"].checkpoints.background_writes)
        finally:
            for resumable in runs.values():
                resumable.close()
    if not forked_writes:  # a state under 64 MiB (--quick), or too little memory: written in the loop
        results["background (fork): loop stall"]["note"] = "sync: the fork was refused"
    ratios(results, "fs.pipe (baseline)")
    ratios(results, "fs.pipe (baseline)", key="cpu_s")
    print_table(
        f"One checkpoint of a {args.mib} MiB float64 array to moto S3 on loopback ("
        f"{args.rounds} rounds, medians)",
        results,
        "fs.pipe (baseline)",
    )
    write_json(
        "storage.json",
        {
            "mib": args.mib,
            "rounds": args.rounds,
            "results": results,
            "versions": versions("s3fs", "moto", "fsspec"),
            "headlines": [
                ratio_headline(
                    f"S3 (moto): {name}, {args.mib} MiB",
                    per_round(results, name, "fs.pipe (baseline)"),
                    baseline="fs.pipe of the same bytes",
                    note=str(results[name].get("note", "")),
                )
                for name in results
                if name != "fs.pipe (baseline)"
            ],
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
