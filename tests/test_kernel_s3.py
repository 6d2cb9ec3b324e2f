"""Checkpoints on S3 from real kernels: a kernel SIGKILLed mid-loop resumes from the bucket in
another kernel with another working directory, and ends exactly as an uninterrupted run; a second
kernel is refused while the first holds the run; ``%resumable_status s3://...`` lists the runs.

The S3 API is moto's server on loopback (``s3server.py``); the kernels inherit its ``AWS_*``
environment and share a signing key through ``$RESUMABLE_SIGNING_KEY``, as machines sharing a
bucket would.
"""

from __future__ import annotations

import json

import pytest
from test_kernel_crash import final_of, for_cell

pytestmark = pytest.mark.kernel

SIGNING = {"RESUMABLE_SIGNING_KEY": "5e" * 32}


def newest_position(client, bucket: str, prefix: str) -> int:
    """The position of the newest manifest in the bucket, read with boto3 (not the code under test)."""
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    names = sorted(o["Key"] for o in listed if o["Key"].rsplit("/", 1)[-1].startswith("manifest."))
    if not names:
        return -1
    return int(json.loads(client.get_object(Bucket=bucket, Key=names[-1])["Body"].read())["position"])


def test_killed_kernel_resumes_from_s3_in_another_kernel(kernel_factory, s3_bucket, s3_client, tmp_path):
    ckpt, key = f"s3://{s3_bucket}/nb", "crash-s3"
    log = tmp_path / "iterations.log"
    first = kernel_factory(cwd=tmp_path / "first", env=SIGNING)
    plain = for_cell(tmp_path, tmp_path / "plain.log", n=2000, every=50, key=key, sleep=0, magic=False)
    reference = final_of(first.run(plain, timeout=120).stdout)
    first.run("%load_ext resumable_magic")

    cell = for_cell(ckpt, log, n=2000, every=50, key=key, sleep=0.001)  # type: ignore[arg-type]
    first.execute_async(cell)
    first.wait_for(lambda: newest_position(s3_client, s3_bucket, f"nb/{key}/") >= 500, timeout=120)
    first.kill()
    reached = newest_position(s3_client, s3_bucket, f"nb/{key}/")
    assert 500 <= reached < 2000

    second = kernel_factory(cwd=tmp_path / "second", env=SIGNING)  # another working directory
    second.run("%load_ext resumable_magic")
    result = second.run(cell, timeout=180)
    assert "Resumed" in result.output and f"{reached:,}" in result.output, result.output[-2000:]
    assert final_of(result.stdout) == reference
    ran = [int(line) for line in log.read_text().split()]
    assert sorted(set(ran)) == list(range(2000))  # nothing skipped
    assert len(ran) - 2000 <= 50 + 1  # redone: at most --every plus the iteration in flight


def test_second_kernel_is_refused_while_the_first_lives_and_status_lists_the_runs(
    kernel_factory, s3_bucket, s3_client, tmp_path
):
    ckpt, key = f"s3://{s3_bucket}/own", "owned"
    cell = for_cell(ckpt, tmp_path / "log", n=100_000, every=20, key=key, sleep=0.002)  # type: ignore[arg-type]
    first = kernel_factory(cwd=tmp_path / "first", env=SIGNING)
    first.run("%load_ext resumable_magic")
    first.execute_async(cell)
    first.wait_for(lambda: newest_position(s3_client, s3_bucket, f"own/{key}/") >= 20, timeout=120)

    second = kernel_factory(cwd=tmp_path / "second", env=SIGNING)
    second.run("%load_ext resumable_magic")
    refused = second.execute(cell, timeout=120)
    assert refused.error is not None and refused.error.ename == "RunOwnedError", refused.describe()
    assert f"pid {first.pids[-1]}" in refused.error.evalue
    assert "Traceback" not in refused.error.traceback
    assert newest_position(s3_client, s3_bucket, f"own/{key}/") < 100_000  # the first one goes on

    status = second.run(f"%resumable_status {ckpt}")
    assert key in status.output and "running" in status.output, status.output

    first.kill()
    status = second.run(f"%resumable_status {ckpt}")
    assert key in status.output and "crashed" in status.output, status.output
