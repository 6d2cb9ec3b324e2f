"""Canonical digests, item fingerprints and parameter keys: equal for equal content in every process,
whatever its hash seed; different for different content, even where the reprs are equal."""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
import textwrap
from collections import OrderedDict, namedtuple
from pathlib import Path

import numpy as np
import pytest
import xxhash

from resumable_magic.errors import NoContentIdentityError, OptionError
from resumable_magic.state.canonical import canonical_digest
from resumable_magic.state.fingerprint import (
    fingerprint_inputs,
    fingerprint_item,
    inputs_changed,
    item_matches,
    param_record,
    param_text,
)

REPO = Path(__file__).resolve().parent.parent

# Run in fresh interpreters with other hash seeds: an object holding sets of strings (in its __dict__,
# its __slots__, a frozenset inside a dict inside a list), and a lambda with a closure.
IN_A_SUBPROCESS = textwrap.dedent(
    """
    import json, pickle, sys, xxhash
    from resumable_magic.state.canonical import canonical_digest
    from resumable_magic.state.fingerprint import fingerprint_item, param_text

    class Job:
        def __init__(self, i):
            self.i = i
            self.tags = {f"tag{i}-{j}" for j in range(20)}
            self.nested = [{"words": frozenset({"alpha", "beta", "gamma", "delta"}), i: {"x", "y", "z"}}]

    class Slotted:
        __slots__ = ("names",)
        def __init__(self):
            self.names = {"ann", "bob", "cy", "dee", "eve"}

    k = 3
    scale = lambda x: x * k
    job, slotted = Job(7), Slotted()
    print(json.dumps({
        "digest": canonical_digest(job),
        "item": fingerprint_item(job),
        "slots": canonical_digest(slotted),
        "key": param_text("job", job),
        "function": canonical_digest(scale),
        "pickle": xxhash.xxh3_128_hexdigest(pickle.dumps(job, protocol=5)),
        "order": list(job.tags),
    }))
    """
)


def _in_subprocess(seed: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", IN_A_SUBPROCESS],
        capture_output=True,
        text=True,
        env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)},
        check=True,
    )
    return json.loads(out.stdout)


def test_objects_holding_sets_of_strings_digest_the_same_under_every_hash_seed() -> None:
    runs = [_in_subprocess(seed) for seed in ("1", "2", "3")]
    # The seeds matter: the sets iterate, and so pickle, in another order in each process ...
    assert len({json.dumps(r["order"]) for r in runs}) == 3
    assert len({r["pickle"] for r in runs}) == 3
    # ... and the canonical digest, the item fingerprint and the run key do not.
    for field in ("digest", "item", "slots", "key", "function"):
        assert len({r[field] for r in runs}) == 1, field
    assert runs[0]["item"].startswith("c1:")


def test_containers_are_ordered_canonically_and_keep_their_kinds() -> None:
    d = canonical_digest
    assert d({"a": 1, "b": 2}) == d({"b": 2, "a": 1})
    assert d({frozenset({"x", "y"}), frozenset({"z"})}) == d({frozenset({"z"}), frozenset({"y", "x"})})
    assert d([{"k": {1, 2}}, ({"s"},)]) == d([{"k": {2, 1}}, ({"s"},)])
    # Different content or kinds, different digests.
    assert len({d([1, 2]), d((1, 2)), d({1, 2}), d(frozenset({1, 2})), d([2, 1]), d({1: 2})}) == 6
    assert d(OrderedDict(a=1, b=2)) != d(OrderedDict(b=2, a=1))  # an OrderedDict compares its order
    assert d(3) != d(3.0) and d(True) != d(1) and d("1") != d(1) and d(b"a") != d("a")
    point = namedtuple("point", "x y")
    assert d(point(1, 2)) != d((1, 2))
    # A cycle is encoded by its shape.
    a: list[object] = [1]
    a.append(a)
    b: list[object] = [1]
    b.append(b)
    assert d(a) == d(b) != d([1, [1]])


@dataclasses.dataclass
class Config:
    layers: tuple[int, ...]
    tags: set[str]


class WithState:
    def __init__(self, data: list[int]) -> None:
        self.data, self.cache = data, {"scratch": object()}

    def __getstate__(self) -> dict[str, object]:
        return {"data": self.data}  # what the object says it is: the cache is not part of it


def test_objects_by_their_state() -> None:
    d = canonical_digest
    assert d(Config((64, 32), {"a", "b"})) == d(Config((64, 32), {"b", "a"}))
    assert d(Config((64, 32), {"a"})) != d(Config((64, 16), {"a"}))
    assert d(WithState([1, 2])) == d(WithState([1, 2])) != d(WithState([1, 3]))


def test_arrays_with_equal_reprs_and_different_data() -> None:
    a = np.zeros(10_000)
    b = a.copy()
    b[5_000] = 1.0
    assert repr(a) == repr(b)
    assert canonical_digest(a) != canonical_digest(b)
    assert param_text("data", a) != param_text("data", b)
    # By dtype, shape and data: not by memory layout or byte order.
    assert canonical_digest(a) == canonical_digest(np.asfortranarray(a)) == canonical_digest(a.astype(">f8"))
    assert canonical_digest(a) != canonical_digest(a.astype(np.float32))
    assert canonical_digest(a) != canonical_digest(a.reshape(100, 100))
    objects = np.array([{"s", "t"}, None], dtype=object)
    assert canonical_digest(objects) == canonical_digest(np.array([{"t", "s"}, None], dtype=object))


def test_numbers_equal_in_value_key_the_same() -> None:
    d = canonical_digest
    assert d(0.1) == d(np.float64(0.1)) and d(3) == d(np.int64(3)) == d(np.uint8(3))
    assert d(True) == d(np.bool_(True)) and d("s") == d(np.str_("s"))
    assert d(np.float32(0.1)) == d(float(np.float32(0.1))) != d(0.1)  # a float32 holds another value
    assert d([0.1, 3]) == d([np.float64(0.1), np.int64(3)])
    assert d(-0.0) != d(0.0)  # they behave differently (1 / x)
    assert d(float("nan")) == d(-float("nan")) == d(np.float64("nan"))  # one NaN, whatever its bits
    # The key's readable part: unchanged for Python values (the folder names runs already have) ...
    for value, text in ((0.01, "0.01"), (3, "3"), (True, "True"), (1e-05, "1e-05"), ("adam", "adam")):
        assert param_text("p", value) == text
    # ... and numpy numbers read as the Python numbers they equal.
    assert param_text("lr", np.float64(0.1)) == "0.1" and param_text("seed", np.int64(3)) == "3"
    assert param_text("flag", np.bool_(False)) == "False"
    assert param_text("sizes", (64, 32)) == param_text("sizes", (np.int64(64), np.int64(32)))
    assert param_text("sizes", (64, 32)).startswith("h") and len(param_text("sizes", (64, 32))) == 11


def test_functions_are_keyed_by_their_code_and_closure_values() -> None:
    def make(k: float):
        return lambda x: x * k

    assert canonical_digest(make(2)) == canonical_digest(make(2)) != canonical_digest(make(3))
    assert canonical_digest(lambda x: x + 1) != canonical_digest(lambda x: x + 2)
    assert canonical_digest(len) != canonical_digest(abs) and canonical_digest(np.sin) != canonical_digest(
        np.cos
    )

    def count(n: int) -> int:  # refers to itself through its closure
        return count(n - 1) if n else 0

    assert len(canonical_digest(count)) == 32


def test_a_value_with_no_content_is_refused_naming_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=r"--params 'batches' is not valid: .*batches is a generator"):
        param_text("batches", (i for i in range(3)))
    with open(tmp_path / "f.txt", "w") as f, pytest.raises(OptionError) as refused:
        param_text("cfg", {"log": [f]}, option="param_sets[2]")
    assert "param_sets[2] 'cfg'" in str(refused.value) and "cfg['log'][0] is a _io.TextIOWrapper" in str(
        refused.value
    )
    with pytest.raises(NoContentIdentityError, match=r"x\.tags \(an element\) is a generator"):
        canonical_digest(Config((1,), {(i for i in ())}), "x")  # type: ignore[arg-type]


def test_pandas_is_imported_only_for_a_pandas_value() -> None:
    code = (
        "import sys, numpy as np\n"
        "from resumable_magic.state.fingerprint import canonical_digest, fingerprint_item, param_text\n"
        "canonical_digest([np.zeros(3), {'a'}, object()]); fingerprint_item(object()); param_text('x', (1,))\n"
        "print('pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_item_fingerprints_of_plain_data_are_those_earlier_versions_wrote() -> None:
    # compat_v1's crashed run recorded this for its item 19; a list, a string, an array as before.
    assert fingerprint_item(19) == "478ae2549c029bc68f2c84c43a4bb670"
    assert fingerprint_item([1, "a", (2.5, None)]) == xxhash.xxh3_128_hexdigest(b"[1, 'a', (2.5, None)]")
    arr = np.arange(6.0)
    text = f"array(6,) float64, digest {xxhash.xxh3_128_hexdigest(arr.data)[:16]}"
    assert fingerprint_item(arr) == xxhash.xxh3_128_hexdigest(text.encode())


def test_item_matches_accepts_what_earlier_versions_recorded() -> None:
    job = Config((1, 2), {"a", "b"})
    assert item_matches(fingerprint_item(job), job) and item_matches(None, job)
    assert not item_matches(fingerprint_item(job), Config((1, 2), {"a"}))
    # Before canonical fingerprints: a digest of the item's pickle, or its type when it had none.
    old = xxhash.xxh3_128_hexdigest(pickle.dumps(job, protocol=5))
    assert item_matches(old, job) and not item_matches(old, Config((1,), set()))
    assert item_matches(f"type:{__name__}.Config", job)
    assert not item_matches("type:builtins.dict", job)
    assert item_matches(fingerprint_item(np.int64(4)), np.int64(4))
    assert item_matches(xxhash.xxh3_128_hexdigest(pickle.dumps(np.int64(4), protocol=5)), np.int64(4))


def test_parameter_records_hold_a_json_form_that_gives_the_value_back() -> None:
    assert param_record(0.01) == {"text": "0.01", "json": 0.01}
    assert param_record(np.float64(0.1)) == {"text": "0.1", "json": 0.1}
    assert param_record(np.int64(3)) == {"text": "3", "json": 3}
    assert param_record("adam") == {"text": "'adam'", "json": "adam"}
    assert param_record(None) == {"text": "None", "json": None}
    assert param_record({"layers": [64, 32], "act": "relu"})["json"] == {"layers": [64, 32], "act": "relu"}
    for value in ((64, 32), {1: 2}, float("nan"), np.zeros(3), {"a", "b"}, lambda: 0):
        assert "json" not in param_record(value), value  # JSON would give another value (or none)
    long = param_record(np.zeros(10_000))["text"]
    assert long.startswith("array([0., 0.") and len(long) <= 80
    for value in (0.01, np.float64(0.1), [1, {"a": None}], "x y"):
        record = param_record(value)
        assert param_text("p", json.loads(json.dumps(record["json"]))) == param_text("p", value)


def test_numpy_numbers_are_inputs_by_value_and_the_older_text_still_matches() -> None:
    assert fingerprint_inputs({"lr": np.float64(0.1), "seed": np.int64(3)}) == {"lr": "0.1", "seed": "3"}
    assert fingerprint_inputs({"lr": np.float64(0.1)}) == fingerprint_inputs({"lr": 0.1})
    # What a checkpoint written with numpy 2 and an earlier version recorded.
    assert inputs_changed({"lr": "np.float64(0.1)"}, {"lr": np.float64(0.1)}) == {}
    assert inputs_changed({"lr": "0.1"}, {"lr": np.float64(0.1)}) == {}
    assert inputs_changed({"lr": "0.1", "n": "3"}, {"lr": 0.2}) == {
        "lr": ("0.1", "0.2"),
        "n": ("3", "undefined"),
    }
