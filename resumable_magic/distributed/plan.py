"""Everything a map or sweep checks before a cluster starts or any work runs: the arguments, the folder
and its sharding, and the plan of runs (one :class:`RunSpec` per shard or sweep member).

A bad argument, another sharding on disk (:class:`~resumable_magic.errors.ShardingChangedError`) or a
run on disk made from other items or parameter values
(:class:`~resumable_magic.errors.ShardFailedError`) is refused here, before any shard starts: a
worker would refuse it too, but only after other shards had started.
"""

from __future__ import annotations

import inspect
import numbers
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from resumable_magic.errors import (
    OptionError,
    ResumableError,
    ResumeRefusedError,
    ShardFailedError,
    ShardingChangedError,
)
from resumable_magic.storage.base import location
from resumable_magic.storage.paths import Where, absolute
from resumable_magic.store.catalog import names_under

__all__ = [
    "SHARD_RE",
    "SPLITS",
    "Plan",
    "RunSpec",
    "check_common",
    "check_existing_inputs",
    "fill_map",
    "map_directory",
    "plan_map",
    "plan_sweep",
    "shard_indices",
]

SPLITS = ("mod", "blocks")
SHARD_RE = re.compile(r"^shard-(\d{4,})-of-(\d{4,})$")


def shard_indices(n_items: int, shards: int, split: str = "mod") -> list[range]:
    """The item indices of each shard: ``"mod"`` gives shard ``i`` the items ``i, i+n, i+2n, ...``
    (Batchelder's ``id mod N``: shards stay balanced when items grow harder along the list);
    ``"blocks"`` gives it a contiguous block (neighbouring items together, e.g. for locality)."""
    if split == "mod":
        return [range(i, n_items, shards) for i in range(shards)]
    if split == "blocks":
        bounds = [i * n_items // shards for i in range(shards + 1)]
        return [range(bounds[i], bounds[i + 1]) for i in range(shards)]
    raise OptionError("split", split, "use 'mod' (item i goes to shard i mod N) or 'blocks' (contiguous)")


@dataclass
class RunSpec:
    """What one Dask task needs: a run key, its items (by global index) and how to check them."""

    name: str  # the run's name under the map's key: "shard-0003-of-0008", "lr=0.01,seed=3"
    run_key: str
    indices: list[int]
    items: list[Any]
    inputs: dict[str, Any]
    params: dict[str, Any]  # recorded in the manifest: text, or a parameter's record (param_record)
    header: str
    directory: str
    every: str | int | None
    kind: str = (
        "shard"  # "shard": func(item) per item; "member": func(**params); "member-loop": with checkpoint=
    )


@dataclass
class Plan:
    """The runs of one map or sweep, in the order of their results."""

    key: str
    directory: Any  # a local Path, or a storage.RemotePath
    what: str  # "shard" or "member"
    specs: list[RunSpec] = field(default_factory=list)
    n_items: int = 0


def _check_items(items: Any) -> None:
    if isinstance(items, (str, bytes, bytearray, Mapping)) or not (
        hasattr(items, "__len__") and hasattr(items, "__getitem__")
    ):
        kind = type(items).__name__
        raise OptionError(
            "items",
            f"a {kind}",
            "pass a sequence (a list, tuple, range, or an array): a resumed shard must find the same "
            "items by index; make a generator a list, a set sorted(...), a dict list(d.items())",
        )


def check_common(func: Callable[..., Any], key: str, every: Any, reduce: Any) -> None:
    from resumable_magic.core.policy import parse_every
    from resumable_magic.store.keys import key_to_relpath

    if not callable(func):
        raise OptionError("func", f"a {type(func).__name__}", "pass a function (or any callable)")
    if not isinstance(key, str):
        raise OptionError("key", key, "a key is a name like 'squares' or 'maps/squares'")
    try:
        key_to_relpath(key)
    except OptionError:
        raise OptionError(
            "key", key, "a key is one or more '/'-separated names, none of them '.' or '..'"
        ) from None
    parse_every(every)  # OptionError for '5x'
    if reduce is not None and not callable(reduce):
        raise OptionError("reduce", f"a {type(reduce).__name__}", "pass a function of the results list")


def map_directory(dir: str | os.PathLike[str] | None) -> Where:
    """Absolute, so that workers in other folders (or on other machines, on a shared file system
    mounted at the same path) find it; an fsspec URL (``s3://bucket/prefix``) as it is, which every
    worker reaches the same way."""
    from resumable_magic.core.resume import default_directory

    return absolute(location(dir if dir is not None else default_directory()))


def _existing_shard_counts(directory: Where, key: str) -> list[int]:
    """The shard counts of the shard folders already in the map's folder (normally one, or none)."""
    counts = {int(match.group(2)) for match in map(SHARD_RE.match, names_under(directory, key)) if match}
    return sorted(counts)


def _items_digest(items: list[Any]) -> str:
    from resumable_magic.state.fingerprint import fingerprint_item

    return fingerprint_item(items)[:16]


def _adopt_items_digest(spec: RunSpec, recorded: Mapping[str, Any]) -> None:
    """A shard written before items had canonical fingerprints recorded its items' digest in the old
    format (a digest of their pickle, for items that are not plain data): when that digest is these
    items', the shard keeps comparing against it, rather than being refused as made of other items."""
    from resumable_magic.state.fingerprint import item_fingerprints

    then = recorded.get("items")
    if not isinstance(then, str) or then == repr(spec.inputs["items"]):
        return
    for fingerprint in item_fingerprints(spec.items)[1:]:
        if repr(fingerprint[:16]) == then:
            spec.inputs["items"] = fingerprint[:16]
            return


def plan_map(
    items: Sequence[Any], key: str, directory: Where, shards: int | None, split: str
) -> tuple[Plan, int | None]:
    """Checks the arguments and the folder. Returns the plan (its specs not filled yet) and the shard
    count when it is known without a cluster (given, or found on disk)."""

    _check_items(items)
    if split not in SPLITS:
        raise OptionError("split", split, "use 'mod' (item i goes to shard i mod N) or 'blocks' (contiguous)")
    if shards is not None:
        if not isinstance(shards, numbers.Integral) or isinstance(shards, bool) or shards < 1:
            raise OptionError(
                "shards", shards, "use a whole number of shards, 1 or more (or None: 4 per worker thread)"
            )
        shards = int(shards)
    found = _existing_shard_counts(directory, key)
    if len(found) > 1 or (found and shards is not None and found != [shards]):
        raise ShardingChangedError(key, directory, found, shards)
    plan = Plan(key, directory, "shard", n_items=len(items))
    return plan, shards if shards is not None else (found[0] if found else None)


def fill_map(plan: Plan, items: Sequence[Any], shards: int, split: str, every: Any) -> None:
    width = max(4, len(str(shards)))
    for i, indices in enumerate(shard_indices(plan.n_items, shards, split)):
        chunk = [items[j] for j in indices]
        name = f"shard-{i:0{width}d}-of-{shards:0{width}d}"
        plan.specs.append(
            RunSpec(
                name=name,
                run_key=f"{plan.key}/{name}",
                indices=list(indices),
                items=chunk,
                # The sharding and the items: a different one is refused, never mixed in.
                inputs={
                    "shards": shards,
                    "split": split,
                    "n_items": plan.n_items,
                    "items": _items_digest(chunk),
                },
                params={"shard": f"{i}/{shards}", "split": split},
                header=f"shard {i} of {shards} of map {plan.key!r}",
                directory=str(plan.directory),
                every=every,
            )
        )


def plan_sweep(
    func: Callable[..., Any], param_sets: Sequence[Mapping[str, Any]], key: str, directory: Where, every: Any
) -> Plan:
    """One member run per parameter set, keyed ``lr=0.01,seed=3`` as ``--params`` keys a cell
    (:func:`~resumable_magic.state.fingerprint.param_text`): a value with no content to key a run by is
    refused here, naming its set and parameter."""
    from resumable_magic.state.fingerprint import param_record, param_text

    _check_items(param_sets)
    try:
        wants_checkpoint = "checkpoint" in inspect.signature(func).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        wants_checkpoint = False
    plan = Plan(key, directory, "member", n_items=len(param_sets))
    seen: dict[str, int] = {}
    for i in range(len(param_sets)):
        params = param_sets[i]
        if not isinstance(params, Mapping) or not params or not all(isinstance(n, str) for n in params):
            raise OptionError(
                f"param_sets[{i}]",
                f"a {type(params).__name__}",
                "each parameter set is a non-empty dict of name: value",
            )
        name = ",".join(f"{n}={param_text(n, v, f'param_sets[{i}]')}" for n, v in params.items())
        if name in seen:
            raise OptionError(
                f"param_sets[{i}]",
                dict(params),
                f"it makes the same run key {name!r} as param_sets[{seen[name]}]: give each set its own values",
            )
        seen[name] = i
        plan.specs.append(
            RunSpec(
                name=name,
                run_key=f"{key}/{name}",
                indices=[i],
                items=[dict(params)],
                inputs=dict(params),
                params={n: param_record(v) for n, v in params.items()},
                header=f"sweep member {name} of {key!r}",
                directory=str(directory),
                every=every,
                kind="member-loop" if wants_checkpoint else "member",
            )
        )
    return plan


def check_existing_inputs(plan: Plan) -> None:
    """Refuse before any work when a run already on disk was made from other inputs (items, sharding,
    parameter values): the worker would refuse it too, but only after other shards started."""
    from resumable_magic.errors import InputsChangedError
    from resumable_magic.state.fingerprint import inputs_changed
    from resumable_magic.store.runstore import RunStore

    for spec in plan.specs:
        store = RunStore(plan.directory, spec.run_key)
        if not store.folder_exists():
            continue
        try:
            result = store.read_latest(load_state=False)
        except ResumableError:
            continue  # the worker reports it, with its own message
        checkpoint = result.checkpoint
        if checkpoint is None:
            continue
        recorded = checkpoint.manifest.get("inputs") or {}
        if spec.kind == "shard":
            _adopt_items_digest(spec, recorded)
        changes = inputs_changed(recorded, spec.inputs)
        if changes:
            error = InputsChangedError(changes, store.finished(checkpoint.generation) is not None)
            raise ShardFailedError(
                spec.run_key,
                ResumeRefusedError(
                    f"{error} (For a map: the items or the sharding changed since this run was written; "
                    f"use another key for other items.)"
                ),
            ) from None
