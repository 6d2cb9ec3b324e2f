"""dill coverage, shared objects, live classes, and errors that name the culprit."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from resumable_magic.errors import NotSerializableError
from resumable_magic.serialize import dumps_state, loads_state


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
from resumable_magic.serialize import dumps_state
class Point:
    def __init__(self, x): self.x = x
    def norm(self): return abs(self.x)
def double(v): return 2 * v
sys.stdout.buffer.write(dumps_state({"p": Point(-3), "f": double, "g": lambda v: v + 1}))
"""


def test_main_classes_and_functions_load_in_a_fresh_process_without_their_definitions():
    data = subprocess.run([sys.executable, "-c", MAIN_CODE], capture_output=True, check=True).stdout
    check = (
        "import sys\nfrom resumable_magic.serialize import loads_state\n"
        "s = loads_state(sys.stdin.buffer.read())\nprint(s['p'].norm(), s['f'](4), s['g'](4))\n"
    )
    out = subprocess.run([sys.executable, "-c", check], input=data, capture_output=True, check=True).stdout
    assert out.split() == [b"3", b"8", b"5"]


def test_restored_instances_use_the_live_main_class_when_it_was_redefined():
    data = subprocess.run([sys.executable, "-c", MAIN_CODE], capture_output=True, check=True).stdout
    check = (
        "import sys\nfrom resumable_magic.serialize import loads_state\n"
        "class Point:\n    def norm(self): return 'live'\n"
        "s = loads_state(sys.stdin.buffer.read())\nprint(isinstance(s['p'], Point), s['p'].norm(), s['p'].x)\n"
    )
    out = subprocess.run([sys.executable, "-c", check], input=data, capture_output=True, check=True).stdout
    assert out.split() == [b"True", b"live", b"-3"]
