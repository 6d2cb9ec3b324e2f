"""Resumable shards on Dask, for real: a LocalCluster with two worker processes, one of them SIGKILLed
in the middle of a shard; the map completes, equals a serial run, and redoes at most one checkpoint
interval of the killed shard (counted from a log that the mapped function writes, outside the
checkpointed state). Also: finished shards are never rerun, a changed sharding or changed items are
refused before any work, sweeps and shards are runs that `resumable status` lists, bad arguments fail
before a cluster starts, and the embedded LocalCluster and the progress views work.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import distributed
import numpy as np
import pytest
import xxhash

import resumable_magic
from resumable_magic import OptionError, Resumable
from resumable_magic.distributed.client import resumable_map, resumable_sweep
from resumable_magic.distributed.plan import shard_indices
from resumable_magic.distributed.progress import MapProgress
from resumable_magic.errors import DaskMissingError, ShardFailedError, ShardingChangedError
from resumable_magic.lease.lease import owner_state
from resumable_magic.progress.widget import WidgetMapView
from resumable_magic.store.catalog import list_runs

EVERY = 5  # items per checkpoint interval in the kill test: the most a killed shard may redo


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    """Two single-threaded worker processes; not the default client (the embedded-cluster test needs none).
    The dashboard on a free port: with ``dashboard_address=None`` the scheduler still serves its HTTP
    endpoints on 8787, which other clusters on this shared machine may hold."""
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as c,
    ):
        yield c


def logged(log: Path, pause: float = 0.0) -> Callable[[int], int]:
    """The mapped function: one line in ``log`` per call (append, flushed before the work), then the work."""
    path = str(log)

    def work(x: int) -> int:
        with open(path, "a") as f:
            f.write(f"{x}\n")
        if pause:
            time.sleep(pause)  # the item's "work": long enough to kill the worker in the middle of a shard
        return x * x + 1

    return work


def calls(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def serial(items: range) -> list[int]:
    return [x * x + 1 for x in items]


def test_killed_worker_resumes_its_shard_from_the_checkpoint(
    client: distributed.Client, tmp_path: Path
) -> None:
    ck, log = tmp_path / "ck", tmp_path / "calls.log"
    items = range(120)  # 4 shards of 30 items, 30 ms each: ~1 s per shard
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = resumable_map(
                logged(log, 0.03),
                items,
                key="sq",
                dir=ck,
                shards=4,
                client=client,
                every=f"{EVERY}it",
                progress=False,
            )
        except BaseException as exc:  # reported by the assertions below
            outcome["error"] = exc

    worker_pids = set(client.run(os.getpid).values())
    mapping = threading.Thread(target=run)
    mapping.start()
    # Poll the map's folder until a running shard has a checkpoint past position 0, then kill its worker.
    victim, deadline = None, time.monotonic() + 60
    while victim is None and mapping.is_alive() and time.monotonic() < deadline:
        for info in list_runs(ck):
            owner = info.owner or {}
            if (
                info.state == "running"
                and (info.position or 0) >= EVERY
                and owner_state(owner) == "live"
                and owner.get("pid") in worker_pids
            ):
                victim = info
                break
        else:
            time.sleep(0.01)
    assert victim is not None, "no shard reached its first checkpoint while running"
    # Kill late in a checkpoint interval (not just after a checkpoint): when the log shows the shard
    # 3 items past that checkpoint (the 4th in progress).
    shard = set(shard_indices(len(items), 4)[int(victim.key.split("-")[1])])
    while sum(x in shard for x in calls(log)) < victim.position + EVERY - 1 and mapping.is_alive():
        time.sleep(0.005)
    os.kill(victim.owner["pid"], signal.SIGKILL)
    checkpoint_at_kill = victim.position
    mapping.join(timeout=120)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"] == serial(items)

    # The killed shard was taken over and resumed from a checkpoint, not started over.
    killed = next(r for r in list_runs(ck) if r.key == victim.key)
    assert killed.state == "finished"
    resumes = [e for e in killed.manifest["history"] if e["event"] == "resumed"]
    assert len(resumes) == 1 and resumes[0]["after"] == "crashed"
    assert resumes[0]["from"] >= checkpoint_at_kill >= EVERY
    assert resumes[0]["pid"] != victim.owner["pid"]

    # Work redone: every call beyond one per item. At most one checkpoint interval, for the one killed shard.
    made = calls(log)
    redone = len(made) - len(items)
    assert sorted(set(made)) == list(items)
    assert 0 <= redone <= EVERY, f"{redone} items redone"
    print(f"killed {victim.key} at checkpoint {checkpoint_at_kill}: {redone} items redone (limit {EVERY})")
    assert {x for x in made if made.count(x) > 1} <= shard  # only the killed shard's items


def test_finished_shards_are_never_rerun(client: distributed.Client, tmp_path: Path) -> None:
    ck, log = tmp_path / "ck", tmp_path / "calls.log"
    items = range(40)
    first = resumable_map(
        logged(log), items, key="m", dir=ck, shards=3, split="blocks", client=client, progress=False
    )
    assert first == serial(items) and len(calls(log)) == 40
    # Again: every shard is replayed from its completion record, func is not called; the shard count
    # is found on disk when not given.
    again = resumable_map(
        logged(log), items, key="m", dir=ck, split="blocks", client=client, reduce=sum, progress=False
    )
    assert again == sum(serial(items))
    assert len(calls(log)) == 40
    assert sorted(r.key for r in list_runs(ck)) == [f"m/shard-{i:04d}-of-0003" for i in range(3)]
    assert [len(r) for r in shard_indices(40, 3, "blocks")] == [13, 13, 14]


def test_changed_sharding_or_items_are_refused_before_any_work(
    client: distributed.Client, tmp_path: Path
) -> None:
    ck, log = tmp_path / "ck", tmp_path / "calls.log"
    resumable_map(logged(log), range(20), key="m", dir=ck, shards=4, client=client, progress=False)
    before = sorted(p.name for p in (ck / "m").iterdir())
    with pytest.raises(ShardingChangedError, match=r"started with 4 shards; this call asks for 3"):
        resumable_map(logged(log), range(20), key="m", dir=ck, shards=3, client=client, progress=False)
    with pytest.raises(ShardFailedError, match=r"Run 'm/shard-0000-of-0004'.*items"):
        resumable_map(logged(log), range(1, 21), key="m", dir=ck, shards=4, client=client, progress=False)
    with pytest.raises(ShardFailedError, match=r"split"):
        resumable_map(
            logged(log), range(20), key="m", dir=ck, shards=4, split="blocks", client=client, progress=False
        )
    assert len(calls(log)) == 20
    assert sorted(p.name for p in (ck / "m").iterdir()) == before


def test_a_map_whose_items_were_digested_by_their_pickle_is_still_resumed(
    client: distributed.Client, tmp_path: Path
) -> None:
    """Before canonical fingerprints, a shard recorded its items (here Fractions, not plain data) by a
    digest of their pickle. Such a map is made here as that version made it, half done; the map
    call must resume it (and replay the finished shard), not refuse its items as changed."""
    ck, log = tmp_path / "ck", tmp_path / "calls.log"
    items = [Fraction(i, 3) for i in range(8)]
    for i, indices in enumerate(shard_indices(len(items), 2, "mod")):
        chunk = [items[j] for j in indices]
        old_digest = xxhash.xxh3_128_hexdigest(pickle.dumps(chunk, protocol=5))[:16]
        inputs = {"shards": 2, "split": "mod", "n_items": len(items), "items": old_digest}
        state: dict[str, Any] = {"results": {}}
        with (
            contextlib.suppress(LookupError),
            Resumable(
                f"fr/shard-{i:04d}-of-0002", state, ["results"], dir=ck, every="1it", inputs=inputs
            ) as run,
        ):
            for index in run.iterate(list(indices)):
                if i == 1 and index == 5:
                    raise LookupError("stop")  # the second shard fails after two items
                state["results"][index] = float(items[index]) * 2
    assert sorted(r.state for r in list_runs(ck)) == ["failed", "finished"]

    def double(x: Fraction) -> float:
        with open(log, "a") as f:
            f.write(f"{x.numerator}\n")
        return float(x) * 2

    result = resumable_map(double, items, key="fr", dir=ck, shards=2, client=client, progress=False)
    assert result == [float(x) * 2 for x in items]
    assert sorted(calls(log)) == [5, 7]  # only the interrupted shard's items after its checkpoint


def test_a_maps_shards_in_its_old_folder_are_replayed_and_moved(
    client: distributed.Client, tmp_path: Path
) -> None:
    """A map whose key's folder changed (issue 14: 'Squares' has an upper-case letter): its shards,
    in the folder an earlier version gave the key, keep their sharding and are replayed, not rerun."""
    from resumable_magic.errors import ResumableWarning
    from resumable_magic.store.keys import key_to_relpath, legacy_relpath

    ck, log = tmp_path / "ck", tmp_path / "calls.log"
    first = resumable_map(
        logged(log), range(12), key="Squares", dir=ck, shards=3, client=client, progress=False
    )
    new, old = ck / key_to_relpath("Squares"), ck / legacy_relpath("Squares")
    assert [new.name[:8], old.name] == ["Squares~", "Squares"]
    os.rename(new, old)  # the map's folder as an earlier version named it
    with pytest.warns(ResumableWarning, match="was moved to") as told:
        again = resumable_map(logged(log), range(12), key="Squares", dir=ck, client=client, progress=False)
    assert again == first == serial(range(12)) and len(calls(log)) == 12  # the count found: 3; none rerun
    assert len(told) == 3 and not old.exists()
    assert sorted(p.name for p in new.iterdir()) == [f"shard-{i:04d}-of-0003" for i in range(3)]


def train(lr: float, seed: int, checkpoint: Callable[..., Any]) -> float:
    """A sweep member with a loop of its own, checkpointed through the sweep's ``checkpoint``."""
    state = {"w": float(seed)}
    with checkpoint(state, every="10it") as run:
        for step in run.iterate(range(40)):
            state["w"] -= lr * (state["w"] - step / 40)
    return state["w"]


def train_plain(lr: float, seed: int) -> float:
    w = float(seed)
    for step in range(40):
        w -= lr * (w - step / 40)
    return w


def test_sweep_members_are_runs(client: distributed.Client, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    grid = [{"lr": 0.01, "seed": 3}, {"lr": 0.1, "seed": 3}, {"lr": 0.1, "seed": 4}]
    results = resumable_sweep(train, grid, key="sweep", dir=ck, client=client, progress=False)
    assert results == [train_plain(**p) for p in grid]
    runs = {r.key: r for r in list_runs(ck)}
    assert sorted(runs) == ["sweep/lr=0.01,seed=3", "sweep/lr=0.1,seed=3", "sweep/lr=0.1,seed=4"]
    assert all(r.state == "finished" and r.progress() == "40/40" for r in runs.values())
    assert runs["sweep/lr=0.01,seed=3"].params() == "lr=0.01 seed=3"
    # Members without a loop of their own: one call each, replayed the second time (no new call).
    log = tmp_path / "calls.log"

    def member(lr: float, seed: int) -> float:
        with open(log, "a") as f:
            f.write(f"{seed}\n")
        return train_plain(lr, seed)

    for _ in range(2):
        assert resumable_sweep(member, grid, key="plain", dir=ck, client=client, progress=False) == results
    assert len(calls(log)) == 3
    assert len([r for r in list_runs(ck) if r.key.startswith("plain/")]) == 3


def test_sweep_members_are_keyed_by_the_content_of_their_values(
    client: distributed.Client, tmp_path: Path
) -> None:
    ck, log = tmp_path / "ck", tmp_path / "calls.log"
    a = np.zeros(10_000)
    b = a.copy()
    b[5_000] = 1.0
    assert repr(a) == repr(b)  # what keyed them before: one key, the first one's result replayed

    def weigh(data: np.ndarray, lr: float) -> float:
        with open(log, "a") as f:
            f.write("1\n")
        return float(data.sum()) * lr

    grid = [{"data": a, "lr": 0.5}, {"data": b, "lr": 0.5}]
    assert resumable_sweep(weigh, grid, key="arrays", dir=ck, client=client, progress=False) == [0.0, 0.5]
    runs = {r.key: r for r in list_runs(ck)}
    assert len(runs) == 2 and all(re.fullmatch(r"arrays/data=h[0-9a-f]{10},lr=0\.5", key) for key in runs)
    # Numbers equal in value are one parameter value: np.float64(0.5) finds the run that 0.5 made.
    again = [{"data": b.copy(), "lr": np.float64(0.5)}]
    assert resumable_sweep(weigh, again, key="arrays", dir=ck, client=client, progress=False) == [0.5]
    assert len(log.read_text().split()) == 2  # replayed, not called again
    # The manifest records each value for people, and as JSON where JSON gives the value back.
    params = next(iter(runs.values())).manifest["params"]
    assert params["lr"] == {"text": "0.5", "json": 0.5}
    assert params["data"]["text"].startswith("array([0., 0., 0.,") and "json" not in params["data"]


def test_status_lists_shards_as_runs(client: distributed.Client, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    resumable_map(
        logged(tmp_path / "log"), range(10), key="sq", dir=ck, shards=2, client=client, progress=False
    )
    done = subprocess.run(
        [sys.executable, "-m", "resumable_magic", "status", "--dir", str(ck)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["KEY", "PARAMS", "STATE", "PROGRESS"]
    shards = sorted(line.split()[:5] for line in lines[1:])
    assert shards == [
        ["sq/shard-0000-of-0002", "shard=0/2", "split=mod", "finished", "5/5"],
        ["sq/shard-0001-of-0002", "shard=1/2", "split=mod", "finished", "5/5"],
    ]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda **kw: resumable_map(abs, (x for x in range(3)), **kw), r"items 'a generator'"),
        (lambda **kw: resumable_map(abs, {1, 2, 3}, **kw), r"items 'a set'.*sorted"),
        (lambda **kw: resumable_map(abs, {1: 2}, **kw), r"items 'a dict'"),
        (lambda **kw: resumable_map(abs, "abc", **kw), r"items 'a str'"),
        (lambda **kw: resumable_map(abs, range(3), shards=0, **kw), r"shards 0 is not valid"),
        (lambda **kw: resumable_map(abs, range(3), shards=2.5, **kw), r"shards 2.5 is not valid"),
        (lambda **kw: resumable_map(abs, range(3), shards=True, **kw), r"shards True is not valid"),
        (lambda **kw: resumable_map(abs, range(3), split="random", **kw), r"split 'random' is not valid"),
        (lambda **kw: resumable_map(abs, range(3), every="5x", **kw), r"--every '5x' is not valid"),
        (lambda **kw: resumable_map(abs, range(3), reduce=3, **kw), r"reduce 'a int' is not valid"),
        (lambda **kw: resumable_map(3, range(3), **kw), r"func 'a int' is not valid"),
        (lambda **kw: resumable_sweep(abs, [{"x": 1}, {"x": 1}], **kw), r"same run key 'x=1'"),
        (lambda **kw: resumable_sweep(abs, [{"x": 1}, 5], **kw), r"param_sets\[1\] 'a int'"),
        (lambda **kw: resumable_sweep(abs, [{}], **kw), r"non-empty dict"),
        (
            lambda **kw: resumable_sweep(abs, [{"x": 1}, {"x": (i for i in "ab")}], **kw),
            r"param_sets\[1\] 'x' is not valid: its value cannot key a run: x is a generator",
        ),
    ],
)
def test_bad_arguments_fail_before_anything_starts(tmp_path: Path, call: Any, match: str) -> None:
    # client=None and no default client: a check that let this through would start a LocalCluster.
    with pytest.raises(OptionError, match=match):
        call(key="k", dir=tmp_path / "ck")
    assert not (tmp_path / "ck").exists()
    with pytest.raises(OptionError, match=r"key '\.\.'"):
        resumable_map(abs, range(3), key="..", dir=tmp_path / "ck")


def test_without_dask_the_error_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # what `import distributed` meets without dask
    with pytest.raises(DaskMissingError, match=r"pip install \"resumable_magic\[dask\]\""):
        resumable_map(abs, range(3), key="k", dir=tmp_path)


def test_embedded_local_cluster_and_text_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError):
        distributed.default_client()  # so that the map starts (and closes) a cluster of its own
    result = resumable_magic.resumable_map(lambda x: -x, range(6), key="neg", dir=tmp_path, shards=2)
    assert result == [-x for x in range(6)]
    assert capsys.readouterr().out.splitlines()[-1].startswith("finished: 6 items in 2 shards in ")
    assert resumable_magic.resumable_sweep is resumable_sweep


def test_progress_model_and_widget_read_the_map_folder(client: distributed.Client, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    resumable_map(
        logged(tmp_path / "log"), range(9), key="w", dir=ck, shards=3, client=client, progress=False
    )
    names = [(f"shard-{i:04d}-of-0003", f"w/shard-{i:04d}-of-0003", 3) for i in range(3)]
    model = MapProgress("w", ck, names)
    model.poll()  # from the folder alone: every shard's DONE record and final checkpoint
    snap = model.snapshot()
    assert (snap.done, snap.items_done, snap.items_total) == (3, 9, 9)
    shown: list[Any] = []
    view = WidgetMapView(model, display=lambda obj, **kw: shown.append(obj))
    view.start()
    model.end("finished")
    view.close()
    bundle = shown[0]._repr_mimebundle_()
    assert bundle["text/plain"].startswith("finished: 9 items in 3 shards in ")
    assert "application/vnd.jupyter.widget-view+json" in bundle
