"""Checkpoints on object storage, in process: ``memory://`` through the plain API (quick), and a real
S3 API (moto's server on loopback, ``s3server.py``) for damage in the bucket, the lease's conditional
writes, create-only manifests and the ``resumable`` command on ``s3://`` URLs.

Kernels killed mid-run and resumed from S3 are in ``test_kernel_s3.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import loops
import pytest
from loops import Recorder

from resumable_magic import Resumable, load
from resumable_magic.errors import OwnershipLostError, ResumableError, RunOwnedError
from resumable_magic.frontends import cli
from resumable_magic.lease.lease import ObjectLease, make_lease, read_lease
from resumable_magic.progress.model import ProgressModel
from resumable_magic.storage.base import location
from resumable_magic.storage.paths import RemotePath
from resumable_magic.store.catalog import list_runs
from resumable_magic.store.runstore import RunStore

KEY = "obj"
N = 12
STOP = 7  # the interrupted run raises here: checkpoints at positions 7 (newest) and 6 remain


def run_loop(ckpt: str | Path, stop_at: int | None = None) -> tuple[tuple, Recorder]:
    return loops.run_loop(ckpt, KEY, N, stop_at)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple:
    final, _ = run_loop(tmp_path_factory.mktemp("reference"))
    return final


@pytest.fixture
def memory_dir() -> str:
    return f"memory://t-{uuid.uuid4().hex[:10]}/ckpt"


def state_blobs(ckpt: str) -> list[tuple[str, str]]:
    """(manifest name, state blob name) of the run's manifests, newest first, read without our reader."""
    store = RunStore(ckpt, KEY)
    names = sorted((n for n in store.backend.list("") if n.startswith("manifest.")), reverse=True)
    return [(n, json.loads(store.backend.read_plain(n))["state"]["digest"]) for n in names]


# -- memory:// through the plain API ---------------------------------------------------------------


def test_memory_run_crashes_and_resumes_like_an_uninterrupted_run(memory_dir, reference):
    assert run_loop(memory_dir, stop_at=STOP)[0] == ()
    assert [n for n, _ in state_blobs(memory_dir)] == ["manifest.00000008.json", "manifest.00000007.json"]
    final, progress = run_loop(memory_dir)
    assert final == reference
    assert "Resumed" in progress.text("info") and "iteration 7" in progress.text("info")
    assert load(KEY, dir=memory_dir)["seen"] == list(range(N))
    [info] = list_runs(memory_dir)
    assert (info.key, info.state, info.position, str(info.path)) == (
        KEY,
        "finished",
        N,
        f"{memory_dir}/{KEY}",
    )
    assert info.size > 0


def test_memory_damaged_and_missing_blobs_fall_back_to_the_older_generation(memory_dir, reference):
    import fsspec

    fs = fsspec.filesystem("memory")
    run_loop(memory_dir, stop_at=STOP)
    (_, newest), _ = state_blobs(memory_dir)
    path = f"{location(memory_dir).path}/{KEY}/objects/{newest}"
    data = bytearray(fs.cat_file("/" + path))
    data[len(data) // 2] ^= 0x10
    fs.pipe_file("/" + path, bytes(data))
    final, progress = run_loop(memory_dir)
    assert final == reference
    warned = progress.text("warning")
    assert f"{memory_dir}/{KEY}/objects/{newest}" in warned and "checksum does not match" in warned
    assert "iteration 6" in progress.text("info")  # the older generation

    other = memory_dir + "-missing"
    run_loop(other, stop_at=STOP)
    (_, newest), _ = state_blobs(other)
    fs.rm_file(f"/{location(other).path}/{KEY}/objects/{newest}")
    final, progress = run_loop(other)
    assert final == reference
    assert f"{other}/{KEY}/objects/{newest}" in progress.text("warning")
    assert "it is missing" in progress.text("warning")


def test_memory_second_run_object_is_refused_while_the_first_holds_the_run(memory_dir):
    first = Resumable(KEY, {"x": 1}, dir=memory_dir, progress=ProgressModel())
    first.open()
    try:
        assert isinstance(first.lease, ObjectLease)
        with pytest.raises(RunOwnedError):
            Resumable(KEY, {"x": 1}, dir=memory_dir, progress=ProgressModel()).open()
    finally:
        first.close()
    assert read_lease(location(memory_dir) / KEY) is None  # nothing ran: the lease is undone


def test_unknown_protocol_and_missing_implementation_are_one_paragraph_errors():
    with pytest.raises(ResumableError, match=r"'nosuchproto://b/p'.*protocol 'nosuchproto'"):
        Resumable(KEY, {"x": 1}, dir="nosuchproto://b/p")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(ResumableError, match=r"'gcs://bucket/p'.*not installed"):
            Resumable(KEY, {"x": 1}, dir="gcs://bucket/p")


def test_without_fsspec_a_url_names_the_extra_to_install(tmp_path):
    code = (
        "import sys; sys.modules['fsspec'] = None\n"  # as if fsspec were not installed
        "from resumable_magic import Resumable\n"
        "from resumable_magic.errors import ResumableError\n"
        "try:\n"
        "    Resumable('k', {'x': 1}, dir='s3://bucket/prefix')\n"
        "except ResumableError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "'s3://bucket/prefix'" in out.stdout and "pip install 'resumable_magic[s3]'" in out.stdout, out
    assert "Traceback" not in out.stderr


def test_local_paths_and_file_urls_keep_the_local_code_path_and_never_import_fsspec(tmp_path):
    store = RunStore(f"file://{tmp_path}/ck", KEY)
    assert store.local and store.path == tmp_path / "ck" / KEY
    code = (
        "import sys\n"
        "from resumable_magic import Resumable\n"
        "from resumable_magic.progress.model import ProgressModel\n"
        "s = {'t': 0}\n"
        "with Resumable('k', s, dir='ck', progress=ProgressModel()) as run:\n"
        "    for i in run.iterate(range(5)):\n"
        "        s['t'] += i\n"
        "print(s['t'], 'fsspec' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["10", "False"], out
    assert sorted(p.name for p in (tmp_path / "ck" / "k").iterdir() if p.is_file())[:1] == ["DONE"]


def test_remote_path_behaves_like_a_posix_path():
    where = RemotePath("s3", "bucket/prefix")
    run = where / "sweep/lr=0.1"
    assert str(run) == "s3://bucket/prefix/sweep/lr=0.1" and run.name == "lr=0.1"
    assert run.parent.parent == where and run.relative_to(where).as_posix() == "sweep/lr=0.1"
    assert location("s3://bucket/prefix") == where


# -- a real S3 API ---------------------------------------------------------------------------------


def flip_bit(client, bucket: str, key: str) -> None:
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))


def test_s3_bit_flip_and_missing_blob_in_the_bucket_fall_back_to_the_older_generation(
    s3_bucket, s3_client, reference
):
    ckpt = f"s3://{s3_bucket}/flip"
    run_loop(ckpt, stop_at=STOP)
    (newest_manifest, newest), _ = state_blobs(ckpt)
    flip_bit(s3_client, s3_bucket, f"flip/{KEY}/objects/{newest}")
    final, progress = run_loop(ckpt)
    assert final == reference
    assert f"{ckpt}/{KEY}/objects/{newest}" in progress.text("warning")
    assert "checksum does not match" in progress.text("warning")
    assert "iteration 6" in progress.text("info")

    ckpt = f"s3://{s3_bucket}/gone"
    run_loop(ckpt, stop_at=STOP)
    (_, newest), _ = state_blobs(ckpt)
    s3_client.delete_object(Bucket=s3_bucket, Key=f"gone/{KEY}/objects/{newest}")
    final, progress = run_loop(ckpt)
    assert final == reference
    assert f"{ckpt}/{KEY}/objects/{newest}" in progress.text("warning") and "missing" in progress.text(
        "warning"
    )

    ckpt = f"s3://{s3_bucket}/manifest"
    run_loop(ckpt, stop_at=STOP)
    (newest_manifest, _), _ = state_blobs(ckpt)
    flip_bit(s3_client, s3_bucket, f"manifest/{KEY}/{newest_manifest}")
    final, progress = run_loop(ckpt)
    assert final == reference
    assert f"{ckpt}/{KEY}/{newest_manifest}" in progress.text("warning")


def test_s3_a_checkpoint_signed_with_another_key_is_refused(s3_bucket, monkeypatch):
    ckpt = f"s3://{s3_bucket}/keys"
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", "a" * 64)
    run_loop(ckpt, stop_at=STOP)
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", "b" * 64)
    with pytest.raises(ResumableError, match="signed with a different key") as caught:
        Resumable(KEY, {"total": 0.0, "seen": []}, dir=ckpt, progress=ProgressModel()).open()
    assert "object storage are trusted by their signature alone" in str(caught.value)


def test_s3_lease_is_a_conditional_write_a_takeover_fences_the_old_owner(s3_bucket, s3_client):
    ckpt = f"s3://{s3_bucket}/lease"
    run = Resumable(KEY, {"x": 1}, dir=ckpt, progress=ProgressModel())
    run.open()
    run.restore()  # the first checkpoint, committed under the lease
    try:
        lease = run.lease
        assert isinstance(lease, ObjectLease)
        lease.renew()  # a heartbeat: If-Match on the ETag it last read or wrote
        # Another machine takes the run over (its record, written by a plain PUT from outside).
        record = json.loads(
            s3_client.get_object(Bucket=s3_bucket, Key=f"lease/{KEY}/owner.json")["Body"].read()
        )
        record.update(token="someone-else", host="other-host", pid=1, heartbeat=time.time())
        s3_client.put_object(
            Bucket=s3_bucket, Key=f"lease/{KEY}/owner.json", Body=json.dumps(record).encode()
        )
        with pytest.raises(OwnershipLostError, match="other-host"):
            lease.renew()  # the ETag changed: the conditional PUT fails, nothing is overwritten
        with pytest.raises(OwnershipLostError):
            run.store.commit({"created": time.time(), "position": 1, "state": {"digest": "0", "size": 0}})
        owner = json.loads(
            s3_client.get_object(Bucket=s3_bucket, Key=f"lease/{KEY}/owner.json")["Body"].read()
        )
        assert owner["token"] == "someone-else"
        assert [n for n in run.store.backend.list("") if n.startswith("manifest.")] == [
            "manifest.00000001.json"
        ]
    finally:
        run.close()


def test_s3_lease_of_another_live_host_refuses_and_a_stale_one_is_taken_over(s3_bucket, s3_client):
    ckpt = f"s3://{s3_bucket}/hosts"
    where = location(ckpt) / KEY
    record = {
        "token": "t",
        "key": KEY,
        "host": "other-host",
        "pid": 1,
        "acquired": time.time(),
        "timeout": 60.0,
    }
    s3_client.put_object(
        Bucket=s3_bucket,
        Key=f"hosts/{KEY}/owner.json",
        Body=json.dumps({**record, "heartbeat": time.time(), "released": None}).encode(),
    )
    with pytest.raises(RunOwnedError, match="other-host"):
        make_lease(where, KEY).acquire()  # another machine's live heartbeat: no pid check across hosts
    s3_client.put_object(
        Bucket=s3_bucket,
        Key=f"hosts/{KEY}/owner.json",
        Body=json.dumps({**record, "heartbeat": time.time() - 3600, "released": None}).encode(),
    )
    lease = make_lease(where, KEY)
    note = lease.acquire()
    try:
        assert note is not None and "heartbeat stopped" in note
        assert read_lease(where)["token"] == lease.token
    finally:
        lease.release()


def test_s3_manifests_are_create_only(s3_bucket):
    ckpt = f"s3://{s3_bucket}/create"
    first, second = RunStore(ckpt, KEY), RunStore(ckpt, KEY)
    blob, _ = first.put_blob(b"state")
    manifest = {"created": time.time(), "position": 1, "state": {"digest": blob, "size": 5}}
    assert first.commit(manifest) == 1
    second.backend.put_record("manifest.00000002.json", b"{}", exclusive=True)  # a racing writer
    first.seen_generation = 1
    # first lists generation 2 first and refuses; a create-only PUT refuses even without that check
    with pytest.raises(OwnershipLostError, match="generation 2"):
        first.commit(manifest)
    with pytest.raises(FileExistsError):
        second.backend.put_record("manifest.00000002.json", b"{}", exclusive=True)


def test_s3_cli_status_show_gc_rm(s3_bucket, tmp_path):
    ckpt = f"s3://{s3_bucket}/cli"
    run_loop(ckpt, stop_at=STOP)

    def resumable(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "resumable_magic", *args], capture_output=True, text=True, cwd=tmp_path
        )

    out = resumable("status", "--dir", ckpt)
    assert out.returncode == 0, out.stderr
    assert KEY in out.stdout and "7/12" in out.stdout and "failed" in out.stdout, out.stdout
    listed = json.loads(resumable("status", "--dir", ckpt, "--json").stdout)
    assert [(r["key"], r["path"]) for r in listed] == [(KEY, f"{ckpt}/{KEY}")]
    out = resumable("show", "--dir", ckpt, KEY)
    assert out.returncode == 0 and "seen" in out.stdout and f"{ckpt}/{KEY}" in out.stdout, out.stderr
    out = resumable("gc", "--dir", ckpt)
    assert out.returncode == 0 and "freed" in out.stdout, out.stderr
    assert len([n for n in RunStore(ckpt, KEY).backend.list("") if n.startswith("manifest.")]) == 1
    out = resumable("rm", "--dir", ckpt, KEY)
    assert out.returncode == 0 and f"removed {KEY}" in out.stdout, out.stderr
    assert list_runs(ckpt) == []
    out = resumable("trust", ckpt)
    assert out.returncode == 1 and "trusted by their signature alone" in out.stderr, out.stderr
    out = resumable("status", "--dir", "nosuchproto://x")
    assert out.returncode == 1 and "nosuchproto" in out.stderr and "Traceback" not in out.stderr


def test_cli_status_in_process_on_s3(s3_bucket, capsys):
    ckpt = f"s3://{s3_bucket}/inproc"
    run_loop(ckpt)
    assert cli.main(["status", "--dir", ckpt]) == 0
    assert "finished" in capsys.readouterr().out


class Stats(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.stats: list = []

    def checkpoint_finished(self, stats) -> None:  # type: ignore[override]
        super().checkpoint_finished(stats)
        self.stats.append(stats)


def test_large_states_in_memory_urls_are_written_synchronously_and_say_so(memory_dir, monkeypatch):
    import numpy as np

    monkeypatch.delenv("RESUMABLE_BACKGROUND", raising=False)
    state = {"a": np.zeros(65 * 2**20 // 8)}  # over snapshot.FORK_MIN_BYTES: forked on a local disk
    progress = Stats()
    with Resumable(KEY, state, dir=memory_dir, every="1it", progress=progress) as run:
        for i in run.iterate(range(3)):
            state["a"][0] = i
    assert run.checkpoints.background_writes == []
    assert {s.mode for s in progress.stats} == {"sync"}
    assert "written synchronously: the checkpoint folder is memory://" in progress.text("info")
    assert load(KEY, dir=memory_dir)["a"][0] == 2


def test_resumable_dir_may_be_a_url(memory_dir, monkeypatch):
    monkeypatch.setenv("RESUMABLE_DIR", memory_dir)
    state = {"t": 0}
    with Resumable(KEY, state, progress=ProgressModel()) as run:
        for i in run.iterate(range(4)):
            state["t"] += i
    assert load(KEY, dir=memory_dir) == {"t": 6}
    assert [r.key for r in list_runs(memory_dir)] == [KEY]


def test_large_states_on_s3_are_written_by_a_forked_writer_with_its_own_connections(s3_bucket, monkeypatch):
    import numpy as np

    from resumable_magic.core import forked_writer as snapshot

    if snapshot.fork_refusal(65 * 2**20) is not None:  # not Linux, or too little memory here
        pytest.fail(
            f"background checkpoints are refused on this machine: {snapshot.fork_refusal(65 * 2**20)}"
        )
    monkeypatch.delenv("RESUMABLE_BACKGROUND", raising=False)
    ckpt = f"s3://{s3_bucket}/fork"
    big = np.random.default_rng(1).random(65 * 2**20 // 8)
    state = {"a": big, "n": 0}
    progress = Stats()
    other = big + 1.0
    with Resumable(KEY, state, dir=ckpt, every="1it", progress=progress) as run:
        for i in run.iterate(range(4)):
            state["n"] = i
            if i == 1:
                state["a"] = other  # uploaded by the writer forked at position 2, and only by it
            if run.checkpoints.writer is not None:
                run.checkpoints.writer.wait(120)  # each background writer finishes before the next boundary
    stats = progress.stats
    uploads = [k for k, st in enumerate(stats) if st.written >= 64 * 2**20]
    assert uploads[0] == 0 and stats[0].mode == "sync"  # the first checkpoint: the array
    assert len(uploads) == 2 and stats[uploads[1]].mode == "background", stats  # the new one, by a child
    # ... which the parent learnt: no later checkpoint (the final one is the parent's own) uploads it
    later = stats[uploads[1] + 1 :]
    assert later and later[-1].mode == "sync" and all(st.written < 2**20 for st in later), stats
    assert all(st.seconds < stats[0].seconds for st in stats if st.mode == "background")  # the loop's stall
    assert len(run.checkpoints.background_writes) == sum(st.mode == "background" for st in stats) >= 2
    assert "written by a background process" in progress.text("info")
    loaded = load(KEY, dir=ckpt)
    assert loaded["n"] == 3 and np.array_equal(loaded["a"], other)
