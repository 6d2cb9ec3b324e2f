"""dill coverage, shared objects, live classes, out-of-band buffers, and errors that name the culprit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import types
import weakref

import numpy as np
import pytest

from resumable_magic.errors import NotSerializableError
from resumable_magic.state.serialize import (
    OUT_OF_BAND_MIN,
    buffer_digest,
    decode_state,
    dumps_state,
    encode_state,
    loads_state,
)


def test_objects_shared_between_variables_stay_shared():
    params = [1.0, 2.0]
    model = {"params": params}
    optimizer = {"params": params, "lr": 0.1}
    restored = loads_state(dumps_state({"model": model, "optimizer": optimizer}))
    restored["optimizer"]["params"][0] = 42.0
    assert restored["model"]["params"][0] == 42.0


def test_unpicklable_object_named_with_its_path():
    class Holder:
        pass

    holder = Holder()
    holder.conn = {"sock": socket.socket()}
    try:
        with pytest.raises(NotSerializableError) as info:
            dumps_state({"fine": 1, "model": holder})
    finally:
        holder.conn["sock"].close()
    assert info.value.name == "model"
    assert info.value.path == "model.conn['sock']"
    assert "socket" in str(info.value) and "Name fewer variables" in str(info.value)


def test_generator_culprit():
    with pytest.raises(NotSerializableError, match=r"state\[1\]"):
        dumps_state({"state": [1, (i for i in range(3))]})


def test_locks_and_lambdas_survive():
    restored = loads_state(dumps_state({"lock": threading.Lock(), "f": lambda x: x + 1}))
    assert restored["f"](1) == 2 and restored["lock"].acquire()


MAIN_CODE = """
import sys
from resumable_magic.state.serialize import dumps_state
class Point:
    def __init__(self, x): self.x = x
    def norm(self): return abs(self.x)
def double(v): return 2 * v
sys.stdout.buffer.write(dumps_state({"p": Point(-3), "f": double, "g": lambda v: v + 1}))
"""


def test_main_classes_and_functions_load_in_a_fresh_process_without_their_definitions():
    data = subprocess.run([sys.executable, "-c", MAIN_CODE], capture_output=True, check=True).stdout
    check = (
        "import sys\nfrom resumable_magic.state.serialize import loads_state\n"
        "s = loads_state(sys.stdin.buffer.read())\nprint(s['p'].norm(), s['f'](4), s['g'](4))\n"
    )
    out = subprocess.run([sys.executable, "-c", check], input=data, capture_output=True, check=True).stdout
    assert out.split() == [b"3", b"8", b"5"]


def test_restored_instances_use_the_live_main_class_when_it_was_redefined():
    data = subprocess.run([sys.executable, "-c", MAIN_CODE], capture_output=True, check=True).stdout
    check = (
        "import sys\nfrom resumable_magic.state.serialize import loads_state\n"
        "class Point:\n    def norm(self): return 'live'\n"
        "s = loads_state(sys.stdin.buffer.read())\nprint(isinstance(s['p'], Point), s['p'].norm(), s['p'].x)\n"
    )
    out = subprocess.run([sys.executable, "-c", check], input=data, capture_output=True, check=True).stdout
    assert out.split() == [b"True", b"live", b"-3"]


# -- the C pickler: by value what must be, dill for what only dill does ------------------------------

FRESH_CODE = """
import enum, dataclasses, pickle, sys
from resumable_magic.state.serialize import encode_state
SCALE = 10
def make_counter(start):
    count = [start]
    def step(by=1):
        count[0] += by
        return count[0]
    return step
class Base:
    def hello(self): return "base"
class Child(Base):
    def __init__(self): self.items = [1, 2]
    def hello(self): return "child+" + super().hello()
@dataclasses.dataclass
class Trial:
    seed: int
    tags: list = dataclasses.field(default_factory=list)
class Colour(enum.Enum):
    RED = 1
    BLUE = 2
def scaled(x): return x * SCALE
def make_appender(target): return lambda: target.append(3)
shared = [1, 2]
encoded = encode_state({
    "counter": make_counter(5), "child": Child(), "trial": Trial(3, ["a"]), "colour": Colour.BLUE,
    "scaled": scaled, "lam": lambda v: v - 1, "cls": Child, "shared": shared,
    "closure_on_shared": make_appender(shared),
})
sys.stdout.buffer.write(pickle.dumps((encoded.stream, [bytes(b) for b in encoded.buffers])))
"""

FRESH_CHECK = """
import pickle, sys
from resumable_magic.state.serialize import decode_state
SCALE = 3  # the restored function reads the loading namespace's globals, as dill's do
stream, buffers = pickle.loads(sys.stdin.buffer.read())
s = decode_state(stream, buffers)
s["closure_on_shared"]()
print(s["counter"](), s["counter"](2), s["child"].hello(), s["child"].items, s["trial"].seed, s["trial"].tags,
      s["colour"].name, type(s["colour"]).RED.value, s["scaled"](2), s["lam"](1), isinstance(s["child"], s["cls"]),
      s["shared"], s["trial"])
"""


def _run_fresh(code: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, check=True).stdout


def test_notebook_code_by_value_in_a_fresh_process():
    out = _run_fresh(FRESH_CHECK, _run_fresh(FRESH_CODE)).decode().split()
    assert out[:12] == ["6", "8", "child+base", "[1,", "2]", "3", "['a']", "BLUE", "1", "6", "0", "True"]
    # the closure's cell and the variable are one list after the load: the append went to both
    assert out[12:15] == ["[1,", "2,", "3]"]
    assert " ".join(out[15:]) == "Trial(seed=3, tags=['a'])"


def test_restored_function_uses_the_live_globals_of_main(monkeypatch):
    import __main__

    # No shell: __main__ is the notebook (with an in-process shell running, its user namespace is;
    # that case is the next test's).
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))

    source = "def _rm_test_uses_global(x):\n    return x * _RM_TEST_FACTOR\n"
    exec(compile(source, "<notebook>", "exec"), __main__.__dict__)
    try:
        __main__._RM_TEST_FACTOR = 2
        data = dumps_state({"f": __main__._rm_test_uses_global})
        __main__._RM_TEST_FACTOR = 7
        restored = loads_state(data)["f"]
        assert restored(1) == 7 and restored.__globals__ is __main__.__dict__
        assert b"_RM_TEST_FACTOR" in data and len(data) < 2000  # the name, not a copy of the value
    finally:
        del __main__._rm_test_uses_global, __main__._RM_TEST_FACTOR


def test_ipython_user_namespace_counts_as_main(monkeypatch):
    """In an in-process or embedded shell the user namespace is not ``sys.modules['__main__']``."""
    user_ns: dict = {"__name__": "__main__"}
    exec("K = 2\ndef f(x): return x * K\nclass Box:\n    def get(self): return 'old'\n", user_ns)
    data = dumps_state({"f": user_ns["f"], "box": user_ns["Box"]()})
    exec("K = 5\nclass Box:\n    def get(self): return 'live'\n", user_ns)
    shell = types.SimpleNamespace(user_ns=user_ns)
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    restored = loads_state(data)
    assert restored["f"](1) == 5 and restored["f"].__globals__ is user_ns
    assert isinstance(restored["box"], user_ns["Box"]) and restored["box"].get() == "live"


def test_dill_only_objects_and_shared_locks():
    lock = threading.RLock()
    assert loads_state(dumps_state({"held": threading.Lock()}))["held"].acquire(blocking=False)
    with tempfile.NamedTemporaryFile("w+", suffix=".txt", delete=False) as handle:
        handle.write("hello world")
        path = handle.name
    try:
        with open(path) as opened:
            opened.read(6)
            target = {1, 2}

            class Holder:
                pass

            holder = Holder()
            holder.ref = weakref.ref(target_obj := Holder())  # a weakref into the state: stays shared
            holder.target = target_obj
            restored = loads_state(
                dumps_state({"a": lock, "b": [lock], "f": opened, "h": holder, "t": target})
            )
            assert restored["a"] is restored["b"][0] and restored["a"].acquire(blocking=False)
            assert restored["f"].name == path and restored["f"].read().endswith("world")  # as dill does
            assert restored["h"].ref() is restored["h"].target
            restored["f"].close()
    finally:
        os.unlink(path)


def test_checkpoints_written_by_dill_still_load():
    import dill

    data = dill.dumps({"f": lambda x: x * 3, "n": [1, 2]}, protocol=5)
    restored = loads_state(data)
    assert restored["f"](2) == 6 and restored["n"] == [1, 2]


def test_rng_state_round_trip():
    import random

    from resumable_magic.state import rng

    random.seed(7)
    np.random.seed(7)
    random.random(), np.random.random()
    encoded = encode_state({"__rng__": rng.capture()})
    expected = (random.random(), np.random.random(3).tolist())
    random.seed(0)
    np.random.seed(0)
    rng.restore(decode_state(encoded.stream, encoded.buffers)["__rng__"])
    assert (random.random(), np.random.random(3).tolist()) == expected


def test_unpicklable_object_next_to_a_large_array_named_with_its_path():
    state = {"arr": np.zeros(1 << 17), "model": {"weights": np.ones(1 << 17), "gen": (i for i in range(3))}}
    with pytest.raises(NotSerializableError) as info:
        encode_state(state)
    assert info.value.name == "model" and info.value.path == "model['gen']"
    assert "generator" in str(info.value)


# -- out-of-band buffers ------------------------------------------------------------------------------


def _arrays() -> dict:
    rng = np.random.default_rng(3)
    big = rng.standard_normal((512, 256))  # 1 MiB
    nan_payloads = np.frombuffer(rng.bytes(1 << 17), dtype=np.float64).copy()  # NaNs with payloads too
    return {
        "big": big,
        "same": big,  # shared between variables
        "fortran": np.asfortranarray(rng.random((300, 400))),
        "strided": big[::2, ::3],  # not contiguous: in band
        "zero_d": np.array(2.5),
        "small": np.arange(10, dtype=np.int16),
        "objects": np.array([{"a": 1}, "text", None, 3.5] * 5000, dtype=object),  # in band
        "complex": (rng.random(20000) + 1j * rng.random(20000)).astype(np.complex128),
        "bits": nan_payloads,
        "when": np.arange(0, 20000, dtype="datetime64[s]"),
        "record": np.zeros(10000, dtype=[("x", "<f8"), ("n", "<i4"), ("s", "S7")]),
        "readonly": np.frombuffer(bytes(range(256)) * 512, dtype=np.uint8),
    }


def test_arrays_round_trip_bit_for_bit_with_large_buffers_out_of_band():
    state = _arrays()
    encoded = encode_state(state)
    sizes = sorted(b.nbytes for b in encoded.buffers)
    # datetime64 goes as an int64 view (numpy itself keeps it in band)
    oob = ["big", "fortran", "complex", "bits", "when", "record", "readonly"]
    assert sizes == sorted(state[n].nbytes for n in oob)  # "same" is the memoised "big"
    assert all(b.nbytes >= OUT_OF_BAND_MIN and b.readonly and b.contiguous for b in encoded.buffers)
    assert len(encoded.stream) < state["objects"].size * 40 + state["strided"].nbytes + 100_000
    # The store reads blobs into bytearrays; read-only ones (bytes) are copied so arrays stay writable.
    for buffers in ([bytearray(b) for b in encoded.buffers], [bytes(b) for b in encoded.buffers]):
        restored = decode_state(encoded.stream, buffers)
        assert restored["big"] is restored["same"]
        for name, original in state.items():
            got = restored[name]
            assert got.dtype == original.dtype and got.shape == original.shape, name
            assert got.tobytes(order="A") == original.tobytes(order="A") if name != "objects" else True
            assert got.flags.f_contiguous == original.flags.f_contiguous, name
            assert got.flags.writeable == original.flags.writeable, name
        assert restored["objects"].tolist() == state["objects"].tolist()
        restored["big"][0, 0] = 42.0
        assert restored["same"][0, 0] == 42.0 and state["big"][0, 0] != 42.0


def test_out_of_band_buffers_are_views_of_the_arrays_not_copies():
    array = np.zeros(1 << 18)
    encoded = encode_state({"a": array})
    (buffer,) = encoded.buffers
    array[0] = 1.5
    assert np.frombuffer(buffer, dtype=np.float64)[0] == 1.5


def test_threshold_and_in_band_wrappers():
    array = np.arange(1 << 15, dtype=np.float64)  # 256 KiB
    assert encode_state({"a": array}, out_of_band_min=1 << 20).buffers == []
    assert len(encode_state({"a": array}).buffers) == 1
    assert np.array_equal(loads_state(dumps_state({"a": array}))["a"], array)
    assert len(dumps_state({"a": array})) > array.nbytes


def test_buffer_digest_is_the_store_digest():
    from resumable_magic.store.runstore import digest

    array = np.random.default_rng(0).random(1 << 16)
    (buffer,) = encode_state({"a": array}).buffers
    assert buffer_digest(buffer) == digest(array.tobytes()) == digest(bytes(buffer))


class _OnlyDillKnows:
    """Plain pickle refuses it; a reducer registered with dill (as libraries do) handles it."""

    def __init__(self, value):
        self.value = value

    def __reduce_ex__(self, protocol):
        raise TypeError("cannot pickle '_OnlyDillKnows' object")


def _rebuild_only_dill_knows(value):
    return _OnlyDillKnows(value)


def test_what_plain_pickle_refuses_goes_to_dill_and_the_rest_stays_shared():
    import dill

    @dill.register(_OnlyDillKnows)
    def _save(pickler, obj):
        pickler.save_reduce(_rebuild_only_dill_knows, (obj.value,), obj=obj)

    try:
        shared = [1, 2]
        restored = loads_state(dumps_state({"odd": _OnlyDillKnows(5), "a": shared, "b": {"again": shared}}))
    finally:
        dill.Pickler.dispatch.pop(_OnlyDillKnows, None)
    assert restored["odd"].value == 5 and restored["b"]["again"] is restored["a"]
