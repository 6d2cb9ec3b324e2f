"""Fuzzing the readers of a run's records: no input crashes them with anything but the library's errors.

Every example starts from a real run folder (two generations, their blobs, DONE, the lease
``owner.json``, ``outcome.json``) and replaces one file with arbitrary bytes, arbitrary JSON, or a
properly sealed record (valid checksum) whose fields have arbitrary values and types. Then every
reader runs on it: ``store._unseal``, ``RunStore.read_latest`` (with and without the state),
``RunStore.finished``, ``read_outcome``, ``catalog.list_runs`` (which also reads the lease
``owner.json``, the successor of ``heartbeat.json``) and ``resumable status`` / ``show``. Each must return a
valid result (a checkpoint's position an int >= 0, its time a finite float) or raise a subclass of
:class:`~resumable_magic.errors.ResumableError`; ``resumable status`` must list the folder.

Deterministic (``derandomize``) with a moderate number of examples for CI time;
``RESUMABLE_FUZZ_EXAMPLES`` raises it for a longer search.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resumable_magic import Resumable, errors
from resumable_magic.errors import CheckpointCorruptError, ResumableError
from resumable_magic.frontends import cli
from resumable_magic.progress.model import ProgressModel
from resumable_magic.store.catalog import list_runs
from resumable_magic.store.records import seal as _sealed
from resumable_magic.store.records import unseal as _unseal
from resumable_magic.store.runstore import RunStore

KEY = "fuzzed"
EXAMPLES = int(os.environ.get("RESUMABLE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same examples on every run: CI is reproducible
    database=None,  # nothing written to .hypothesis/
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIBRARY_ERRORS = {
    name
    for name in dir(errors)
    if isinstance(getattr(errors, name), type) and issubclass(getattr(errors, name), ResumableError)
}

# -- the folder every example starts from ---------------------------------------------------------


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    ckpt = tmp_path_factory.mktemp("template")
    state = {"total": 0, "seen": []}
    with (
        contextlib.suppress(Stop),
        Resumable(KEY, state, dir=ckpt, every="1it", progress=ProgressModel()) as run,
    ):
        for i in run.iterate(range(10)):
            if i == 5:
                raise Stop
            state["total"] += i
            state["seen"].append(i)
    store = RunStore(ckpt, KEY)
    newest = store.read_latest().checkpoint
    store.mark_finished(newest.generation, {"finished": newest.created, "position": newest.position})
    names = sorted(p.name for p in store.path.iterdir())
    assert {"DONE", "owner.json", "outcome.json"} <= set(names) and len(manifests(store.path)) == 2, names
    return ckpt


_counter = itertools.count()


@contextlib.contextmanager
def folder(template: Path):
    """A fresh copy of the template for one example."""
    copy = template.parent / f"{template.name}-example-{next(_counter)}"
    shutil.copytree(template, copy)
    try:
        yield copy, RunStore(copy, KEY)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def manifests(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("manifest.*.json"), reverse=True)


def target(store: RunStore, kind: str) -> Path:
    newest, older = manifests(store.path)
    return {
        "manifest": newest,
        "older manifest": older,
        "DONE": store.path / "DONE",
        "owner.json": store.path / "owner.json",
        "outcome.json": store.path / "outcome.json",
        "blob": store.objects / json.loads(newest.read_bytes())["state"]["digest"],
    }[kind]


KINDS = ["manifest", "older manifest", "DONE", "owner.json", "outcome.json", "blob"]

# -- the readers and what they may return ---------------------------------------------------------


def read_everything(ckpt: Path, store: RunStore) -> None:
    """Call every reader; anything but a valid result or a ResumableError propagates (and fails)."""
    for path in manifests(store.path):
        with contextlib.suppress(ResumableError):
            assert isinstance(_unseal(path), dict)
    generation = None
    for load_state in (True, False):
        try:
            result = store.read_latest(load_state=load_state)
        except ResumableError:
            continue
        assert all(isinstance(p, CheckpointCorruptError) for p in result.problems)
        assert all(str(p) for p in result.problems)
        checkpoint = result.checkpoint
        if checkpoint is not None:
            generation = checkpoint.generation
            assert isinstance(checkpoint.position, int) and checkpoint.position >= 0
            assert isinstance(checkpoint.created, float) and math.isfinite(checkpoint.created)
            assert isinstance(checkpoint.manifest, dict)
            if load_state:
                assert isinstance(checkpoint.state, (bytes, bytearray)) and checkpoint.state
    with contextlib.suppress(ResumableError):
        done = store.finished(generation)
        assert done is None or isinstance(done, dict)
    outcome = store.read_outcome()
    assert outcome is None or isinstance(outcome, dict)

    run = Resumable(KEY, {"total": 0, "seen": []}, dir=ckpt, progress=ProgressModel(), code="for i in x: ...")
    try:
        run.open()  # what a resume reads: the checkpoint, DONE, the outcome, the lease
    except ResumableError:
        pass
    finally:
        run.close()

    runs = list_runs(ckpt)
    assert [run.key for run in runs] in ([KEY], [])  # the key comes from the manifest or the folder
    for run in runs:
        json.dumps(run.to_json())
        run.progress()
    cli.table_rows(runs)
    code, out, err = command("status", "--dir", str(ckpt))
    assert code == 0 and not err, err
    code, out, err = command("status", "--json", "--dir", str(ckpt))
    assert code == 0 and isinstance(json.loads(out), list), err
    code, out, err = command("show", KEY, "--dir", str(ckpt))
    if code != 0:  # one line naming one of the library's errors (or the missing checkpoint)
        assert err.startswith("resumable show: ") and len(err.strip().splitlines()) == 1, err
        named = err.split(": ")[1]
        assert named in LIBRARY_ERRORS or "no readable checkpoint" in err or "no run" in err, err


def command(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


# -- strategies -------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
MANIFEST_FIELDS = [
    "position",
    "created",
    "state",
    "total",
    "names",
    "item",
    "inputs",
    "params",
    "code",
    "header",
    "final",
    "history",
    "origin",
    "versions",
    "key",
    "generation",
    "format",
]
RECORD_FIELDS = [
    "generation",
    "finished",
    "position",
    "format",
    "key",
    "values_dropped",
    "created",
    "total",
    "params",
]
LEASE_FIELDS = [
    "token",
    "host",
    "pid",
    "process_started",
    "heartbeat",
    "position",
    "timeout",
    "released",
    "key",
]
OUTCOME_FIELDS = ["state", "time", "position", "error"]
STATE_VALUES = st.one_of(
    json_values,
    st.fixed_dictionaries({"digest": json_values, "size": json_values}),
    st.fixed_dictionaries(
        {"digest": st.sampled_from(["", ".", "..", "../DONE", "/etc/hostname", "a\x00b", "A" * 300])}
    ),
)


def edits(fields: list[str]) -> st.SearchStrategy[dict]:
    """Changes to a record: known fields (and a few unknown ones) set to anything, or deleted."""
    value = st.one_of(json_values, st.just(DELETE))
    return st.dictionaries(st.sampled_from(fields) | st.text(max_size=6), value, min_size=1, max_size=4)


DELETE = object()


def edited(record: dict, changes: dict) -> dict:
    record = {k: v for k, v in record.items() if k != "checksum"}
    for name, value in changes.items():
        if value is DELETE:
            record.pop(name, None)
        else:
            record[name] = value
    return record


# -- the tests ------------------------------------------------------------------------------------------


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.binary(max_size=600))
@example(kind="manifest", data=b"")
@example(kind="manifest", data=b"[" * 100_000)
@example(kind="DONE", data=b"{" * 100_000)
@example(kind="outcome.json", data=b"[" * 100_000)
@example(kind="owner.json", data=b"[" * 100_000)
@example(kind="manifest", data=b'{"checksum": "x", "a": "\\ud800"}')
@example(kind="manifest", data=b"\xef\xbb\xbf{}")
@example(kind="owner.json", data=b'{"heartbeat": 1' + b"0" * 400 + b', "released": null}')
@example(kind="outcome.json", data=b'{"state": "failed", "time": 1' + b"0" * 400 + b"}")
def test_any_bytes(template, kind, data):
    with folder(template) as (ckpt, store):
        target(store, kind).write_bytes(data)
        read_everything(ckpt, store)


@FUZZ
@given(kind=st.sampled_from(KINDS), value=json_values)
def test_any_json(template, kind, value):
    with folder(template) as (ckpt, store):
        target(store, kind).write_text(json.dumps(value))
        read_everything(ckpt, store)


@FUZZ
@given(kind=st.sampled_from(["manifest", "older manifest", "DONE"]), changes=st.data())
@example(kind="manifest", changes={"position": "x"})
@example(kind="manifest", changes={"position": -1})
@example(kind="manifest", changes={"position": True})
@example(kind="manifest", changes={"created": None})
@example(kind="manifest", changes={"created": 10**400})
@example(kind="manifest", changes={"created": 1e300})
@example(kind="manifest", changes={"state": None})
@example(kind="manifest", changes={"state": {"digest": "a\x00b"}})
@example(kind="manifest", changes={"state": {"digest": "../DONE"}})
@example(kind="manifest", changes={"state": DELETE})
@example(kind="manifest", changes={"total": "many"})
@example(kind="manifest", changes={"params": [1, 2]})
@example(kind="DONE", changes={"generation": None})
@example(kind="DONE", changes={"values_dropped": 1.0, "created": "x"})
def test_sealed_records_with_fields_of_any_value(template, kind, changes):
    """A valid checksum over fields of the wrong type (a foreign or buggy writer) is still not a crash."""
    if not isinstance(changes, dict):  # drawn
        fields = RECORD_FIELDS if kind == "DONE" else MANIFEST_FIELDS
        changes = changes.draw(edits(fields) | st.fixed_dictionaries({"state": STATE_VALUES}))
    with folder(template) as (ckpt, store):
        path = target(store, kind)
        record = edited(json.loads(path.read_bytes()), changes)
        try:
            sealed = _sealed(record)
        except ValueError:  # (a value the writer itself cannot write: nothing to read)
            return
        path.write_bytes(sealed)
        read_everything(ckpt, store)


@FUZZ
@given(kind=st.sampled_from(["owner.json", "outcome.json"]), changes=st.data())
def test_lease_and_outcome_with_fields_of_any_value(template, kind, changes):
    changes = changes.draw(edits(LEASE_FIELDS if kind == "owner.json" else OUTCOME_FIELDS))
    with folder(template) as (ckpt, store):
        path = target(store, kind)
        path.write_text(json.dumps(edited(json.loads(path.read_bytes()), changes)))
        read_everything(ckpt, store)


@pytest.mark.parametrize("kind", ["manifest", "DONE"])
def test_a_checksum_over_text_that_cannot_be_encoded(template, kind):
    """A lone surrogate escape (``"\\ud800"``) parses, but its canonical form cannot be encoded to
    checksum it: the record is damaged, not a UnicodeEncodeError."""
    with folder(template) as (ckpt, store):
        path = target(store, kind)
        text = path.read_text().replace('"key": "fuzzed"', '"key": "fuzzed\\ud800"')
        assert "\\ud800" in text
        path.write_text(text)
        with pytest.raises(CheckpointCorruptError):
            _unseal(path)
        read_everything(ckpt, store)


def test_random_byte_damage_of_every_file(template):
    """Truncations, flips and splices at seeded random places in every record, many times."""
    rng = random.Random(20240611)
    with folder(template) as (ckpt, store):
        originals = {kind: target(store, kind).read_bytes() for kind in KINDS}
    for _ in range(EXAMPLES):
        with folder(template) as (ckpt, store):
            kind = rng.choice(KINDS)
            data = bytearray(originals[kind])
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(data) + 1)
                action = rng.choice(["flip", "cut", "insert", "delete"])
                if action == "flip" and at < len(data):
                    data[at] ^= 1 << rng.randrange(8)
                elif action == "cut":
                    del data[at:]
                elif action == "insert":
                    data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
                else:
                    del data[at : at + rng.randint(1, 8)]
            target(store, kind).write_bytes(bytes(data))
            read_everything(ckpt, store)
