"""The board over checkpoints on object storage: a real ``jupyter server`` whose ``folders`` setting
names an ``s3://`` URL on moto's S3 server (loopback), and runs written there by real processes."""

from __future__ import annotations

import pytest
from boardruns import Runs, wait_for
from servers import jupyter_env, running_server

pytestmark = pytest.mark.timeout(240)


def test_runs_on_s3_are_on_the_board(s3_server, s3_bucket, tmp_path):
    url = f"s3://{s3_bucket}/runs"
    (tmp_path / "root").mkdir()
    runs = Runs(url, jupyter_env(tmp_path), tmp_path / "scripts")
    try:
        assert runs.start("done", "finish", 30).wait(120) == 0
        crashing = runs.start("crashed", "loop", 100_000)
        with running_server(tmp_path, tmp_path / "root", [f"--ResumableServerApp.folders={url}"]) as server:

            def states() -> dict[str, str]:
                answer = server.api("/resumable/api/runs")
                assert [(f["folder"], f["error"]) for f in answer["folders"]] == [(url, None)]
                return {row["key"]: row["state"] for row in answer["runs"]}

            wait_for(
                lambda: states() == {"done": "finished", "crashed": "running"}, "the runs on S3", crashing
            )
            crashing.kill()
            crashing.wait()
            # the lease on S3 names a process of this host: gone at the next listing (at most 15 s on
            # object storage)
            wait_for(lambda: states()["crashed"] == "crashed", "the crash on the board", timeout=60)
    finally:
        runs.stop()
