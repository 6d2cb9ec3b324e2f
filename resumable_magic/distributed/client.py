"""The client side of resumable maps and sweeps on Dask: :func:`resumable_map` and
:func:`resumable_sweep`, the Dask client, submitting one task per run and waiting for them.

Dask schedules, retries lost tasks and scales; what it loses when a worker dies is the progress
inside a long task. Here each task is a *shard*: a :class:`~resumable_magic.core.run.Resumable` loop over
its items that checkpoints its partial results (``{index: value}``) to a folder every worker can
reach. When a worker dies, the scheduler reruns its shard elsewhere; the rerun opens the same run,
takes over the dead worker's lease (its pid is gone, or its heartbeat stopped) and resumes from the
shard's last checkpoint. A finished shard is replayed from its completion record, never rerun::

    from resumable_magic import resumable_map

    squares = resumable_map(slow_square, range(10_000), key="squares", shards=8, every="30s")

On disk, one run per shard: ``<dir>/<key>/shard-0003-of-0008/`` (``resumable status`` lists them).
A sweep (:func:`resumable_sweep`) runs one task per parameter set, each its own run
``<dir>/<key>/lr=0.01,seed=3/``.

Dask is optional: it is imported only when a map runs (``pip install resumable_magic[dask]``). The
checks before any work are in :mod:`.plan`, what a worker runs in :mod:`.task`, the progress poller
in :mod:`.progress`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from resumable_magic.distributed.plan import (
    Plan,
    RunSpec,
    check_common,
    check_existing_inputs,
    fill_map,
    map_directory,
    plan_map,
    plan_sweep,
)
from resumable_magic.distributed.task import run_task
from resumable_magic.errors import DaskMissingError

__all__ = ["resumable_map", "resumable_sweep"]

POLL_SECONDS = 0.5  # the client refreshes the progress view this often while it waits


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise DaskMissingError(exc) from None
    return distributed


@contextlib.contextmanager
def _dask_client(client: Any) -> Iterator[Any]:
    """The given client; a client of the scheduler at an address; the current default client; else a
    ``LocalCluster`` for this call (one single-threaded worker process per core), closed after it."""
    distributed = _import_distributed()
    if isinstance(client, str):
        with distributed.Client(client, set_as_default=False) as connected:
            yield connected
        return
    if client is not None:
        yield client
        return
    try:
        current = distributed.default_client()
    except ValueError:  # no client in this process
        current = None
    if current is not None:
        yield current
        return
    cluster = distributed.LocalCluster(
        n_workers=os.cpu_count() or 1, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    try:
        with distributed.Client(cluster, set_as_default=False) as local:
            yield local
    finally:
        cluster.close()


def _worker_threads(client: Any) -> int:
    with contextlib.suppress(Exception):
        return max(1, sum(client.nthreads().values()))
    return 1


def _execute(client: Any, func: Callable[..., Any], plan: Plan, progress: bool | Any) -> list[dict[str, Any]]:
    """Submit one task per run, wait for all while the progress view follows the folder, and return
    each run's report in the order of the specs. A failure cancels what has not started."""
    from resumable_magic.distributed.progress import MapProgress, make_view
    from resumable_magic.store.plans import remove_plan, write_plan

    # Before any task: a board shows the runs not started yet as planned.
    write_plan(plan.directory, plan.key, [(spec.run_key, spec.params) for spec in plan.specs])
    model = MapProgress(
        plan.key, plan.directory, [(s.name, s.run_key, _size(s)) for s in plan.specs], plan.what
    )
    view = make_view(model, progress)
    token = uuid.uuid4().hex[:8]
    futures = [
        client.submit(run_task, func, spec, key=f"resumable-{plan.what}-{token}-{n}", pure=False)
        for n, spec in enumerate(plan.specs)
    ]
    changed = threading.Event()
    for future in futures:
        future.add_done_callback(lambda _f: changed.set())
    reports: list[dict[str, Any] | None] = [None] * len(futures)
    pending = dict(enumerate(futures))
    outcome = "failed"
    try:
        view.start()
        next_poll = time.monotonic()
        while pending:
            changed.wait(max(0.0, next_poll - time.monotonic()))
            changed.clear()
            for n, future in list(pending.items()):
                if future.done():
                    reports[n] = report = future.result()  # raises the shard's error
                    model.run_done(plan.specs[n].name, report)
                    del pending[n]
                    future.release()
            started = time.monotonic()
            if started >= next_poll:
                # Reading the folder costs ~0.2 ms a run not yet done (local disk): with many shards,
                # or on a slow shared file system, poll less often, at most ~10% of the client's time.
                model.poll()
                next_poll = started + max(POLL_SECONDS, 10 * (time.monotonic() - started))
                view.update()
        outcome = "finished"
        remove_plan(plan.directory, plan.key)
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    finally:
        if pending:
            with contextlib.suppress(Exception):
                client.cancel(list(pending.values()))
        model.end(outcome)
        view.close()
    return [r for r in reports if r is not None]


def _size(spec: RunSpec) -> int | None:
    return len(spec.indices) if spec.kind == "shard" else 1 if spec.kind == "member" else None


def resumable_map(
    func: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    key: str,
    dir: str | os.PathLike[str] | None = None,
    shards: int | None = None,
    split: str = "mod",
    client: Any = None,
    every: str | int | None = "30s",
    reduce: Callable[[list[Any]], Any] | None = None,
    progress: bool = True,
) -> Any:
    """``[func(x) for x in items]`` on Dask, in ``shards`` resumable runs; results in item order.

    Each shard is a Dask task running a resumable loop over its items, checkpointing its partial
    results to ``<dir>/<key>/shard-<i>-of-<n>/`` as ``every`` says. A shard rerun after its worker
    died resumes from its last checkpoint (redoing at most one checkpoint interval); a finished shard
    is replayed from its completion record without calling ``func``; calling again after a crash of
    the caller resumes the whole map.

    Args:
        func: called once per item, on a worker (Dask pickles it with cloudpickle).
        items: a sequence (list, tuple, range, array): shards address items by index.
        key: the map's name; its shards are the runs ``<key>/shard-<i>-of-<n>``.
        dir: the checkpoint folder, which every worker must reach at the same path (a local folder for
            a ``LocalCluster``, a shared file system for a real cluster); default as for the magic.
        shards: how many shards (default: as many as the map already has on disk, else 4 per worker
            thread, at most one per item). Another count than the one on disk is refused.
        split: ``"mod"`` (item ``i`` in shard ``i mod n``) or ``"blocks"`` (contiguous blocks).
        client: a ``distributed.Client``, or a scheduler address; default the current Dask client,
            else a ``LocalCluster`` started for this call and closed after it.
        every: checkpoint interval of each shard: ``"30s"``, ``"5m"``, ``"500it"``; None: adaptive.
        reduce: combines the results list (in item order) into the return value; default: the list.
        progress: show one progress view for the whole map (a widget in a notebook, text otherwise).

    Raises:
        OptionError: bad arguments, before anything runs. ShardingChangedError /
        ShardFailedError: the folder holds runs of another sharding or of other items. Whatever
        ``func`` raises, after the other shards were cancelled; their checkpoints stay.
    """
    check_common(func, key, every, reduce)
    directory = map_directory(dir)
    plan, count = plan_map(items, key, directory, shards, split)
    if plan.n_items == 0:
        return reduce([]) if reduce is not None else []
    if count is not None:  # known without a cluster: check the folder before any start
        fill_map(plan, items, count, split, every)
        check_existing_inputs(plan)
    with _dask_client(client) as dask_client:
        if count is None:
            fill_map(plan, items, min(plan.n_items, 4 * _worker_threads(dask_client)), split, every)
            check_existing_inputs(plan)
        reports = _execute(dask_client, func, plan, progress)
    results: list[Any] = [None] * plan.n_items
    for spec, report in zip(plan.specs, reports, strict=True):
        for index, value in zip(spec.indices, report["values"], strict=True):
            results[index] = value
    return reduce(results) if reduce is not None else results


def resumable_sweep(
    func: Callable[..., Any],
    param_sets: Sequence[Mapping[str, Any]],
    *,
    key: str,
    dir: str | os.PathLike[str] | None = None,
    client: Any = None,
    every: str | int | None = "30s",
    reduce: Callable[[list[Any]], Any] | None = None,
    progress: bool = True,
) -> Any:
    """``[func(**p) for p in param_sets]`` on Dask, one resumable run per parameter set.

    Each set is its own run, ``<key>/<name>=<value>,...`` (``sweep/lr=0.01,seed=3``, as
    ``--params`` makes them), one Dask task each: finished members are replayed, never rerun.
    When ``func`` has a ``checkpoint`` parameter, it is given ``checkpoint(state, names=None,
    every=None)``, which returns the member's :class:`~resumable_magic.Resumable` over ``state`` (a
    dict) for the member's own loop: a member rerun after its worker died resumes inside that loop::

        def train(lr, seed, checkpoint):
            state = {"w": 0.0}
            with checkpoint(state) as run:
                for step in run.iterate(range(1000)):
                    state["w"] -= lr * grad(state["w"], seed, step)
            return state["w"]

    Without it, a member is one call, checkpointed when it returns. The parameter values are the
    member's inputs: a set whose key text is the same but whose values differ is refused.
    Arguments as for :func:`resumable_map`; the results are in the order of ``param_sets``.
    """
    check_common(func, key, every, reduce)
    directory = map_directory(dir)
    plan = plan_sweep(func, param_sets, key, directory, every)
    if not plan.specs:
        return reduce([]) if reduce is not None else []
    check_existing_inputs(plan)
    with _dask_client(client) as dask_client:
        reports = _execute(dask_client, func, plan, progress)
    results = [report["values"][0] for report in reports]
    return reduce(results) if reduce is not None else results
