"""A resumable map whose checkpoints are on S3 (moto's server on loopback): the workers reach the
bucket by URL, the result equals a serial run, a second call replays every shard from the bucket,
and the catalog and the map's progress model read the shards there."""

from __future__ import annotations

from pathlib import Path

import distributed
import pytest
from test_shards import calls, logged, serial

from resumable_magic.distributed.client import resumable_map
from resumable_magic.distributed.progress import MapProgress
from resumable_magic.store.catalog import list_runs


def test_map_on_s3_runs_replays_and_is_listed(
    s3_bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", "3c" * 32)  # the workers inherit the key and AWS_*
    ck, log, items = f"s3://{s3_bucket}/map", tmp_path / "calls.log", range(30)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        first = resumable_map(
            logged(log), items, key="m", dir=ck, shards=3, every="5it", client=client, progress=False
        )
        assert first == serial(items) and len(calls(log)) == 30
        again = resumable_map(logged(log), items, key="m", dir=ck, client=client, reduce=sum, progress=False)
        assert again == sum(serial(items)) and len(calls(log)) == 30  # replayed: found 3 shards in the bucket
    runs = list_runs(ck)
    assert sorted((r.key, r.state) for r in runs) == [
        (f"m/shard-{i:04d}-of-0003", "finished") for i in range(3)
    ]
    model = MapProgress("m", ck, [(f"shard-{i}", f"m/shard-{i:04d}-of-0003", 10) for i in range(3)])
    model.poll()
    assert {run.state for run in model.runs.values()} == {"done"}
