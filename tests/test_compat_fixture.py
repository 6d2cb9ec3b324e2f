"""Checkpoints written by an earlier version still replay and resume: ``tests/fixtures/compat_v1/``.

The fixture was written by ``tests/fixtures/make_compat_v1.py`` with the code of f3f0f84, before the
package was split into sub-packages; its pickle streams name the serializer's reconstructors by their
module path then (``compat_v1.json`` lists them). It is never regenerated: these tests check that
today's code still loads what users wrote with that version. They use only the public API (names in
``resumable_magic.__all__``, and ``resumable_magic.errors``), so that they test the move rather than
follow it.

How the fixture is made loadable here:

* the signing key: both runs were signed with the fixed test key ``compat_loop.SIGNING_KEY``; the
  tests set it as ``$RESUMABLE_SIGNING_KEY`` (which comes before any key file), and one test checks
  that another key is refused, so the signature is really checked;
* owners and modes: git keeps neither, and a reader loads only files that are the user's own and
  writable by nobody else; the tests copy the fixture into ``tmp_path`` (the copy is the test user's)
  and make it private, folders 0700 and files 0600, as ``resumable trust`` would;
* the lease: the generator removed the dead writer's ``owner.json`` (and ``owner.lock``), so there is
  no owner whose pid or host depends on the machine: the runs are simply free to acquire.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import resumable_magic
from resumable_magic import load
from resumable_magic.errors import NoCheckpointError, UntrustedCheckpointError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))

import compat_loop  # noqa: E402  (tests/fixtures: the loop that wrote the fixture)

OTHER_KEY = "0123456789abcdef" * 4
# What the generator recorded: the Python and libraries that wrote the fixture, the globals its streams name.
INFO = json.loads((FIXTURES / "compat_v1.json").read_text())


def _generator() -> ModuleType:
    """The generator's definitions (the class, function and lambda it pickled from its __main__),
    imported under its own name: for the reference run only, which pickles nothing."""
    name = "make_compat_v1"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, FIXTURES / "make_compat_v1.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def _reference(iterations: int = compat_loop.N) -> tuple[dict[str, Any], Any, Any]:
    """The state after ``iterations`` of the loop run plainly (no checkpoints), and the global RNG
    states then."""
    compat_loop.seed_globals()
    state = _generator().initial_state()
    for i in range(iterations):
        compat_loop.step(state, i)
    return state, random.getstate(), np.random.get_state(legacy=False)


@pytest.fixture(autouse=True)
def _keep_global_rngs():
    """Restoring a checkpoint sets the global generators: give the other tests theirs back."""
    saved = random.getstate(), np.random.get_state()
    yield
    random.setstate(saved[0])
    np.random.set_state(saved[1])


@pytest.fixture
def compat_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the fixture, and the key it was signed with."""
    written_with = tuple(int(part) for part in INFO["python"].split(".")[:2])
    assert sys.version_info[:2] == written_with, (
        f"compat_v1 was written by CPython {INFO['python']}: the code objects it holds by value (a class's "
        f"methods, a function, a lambda) load only on that minor version, and this is "
        f"{sys.version.split()[0]}. Keep CI on {INFO['python'].rsplit('.', 1)[0]} for this fixture, or "
        f"write one more fixture for this version with the code of {INFO['written_by']}."
    )
    source = FIXTURES / "compat_v1"
    assert (source / compat_loop.FINISHED_KEY).is_dir() and (source / compat_loop.CRASHED_KEY).is_dir()
    links = [p for p in source.rglob("*") if p.is_symlink()]
    assert not links, f"the fixture must hold no symbolic links: {links}"
    copy = tmp_path / "compat_v1"
    shutil.copytree(source, copy, symlinks=True)
    for path in [copy, *copy.rglob("*")]:
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", compat_loop.SIGNING_KEY)
    for name in ("RESUMABLE_SIGNING_KEY_FILE", "RESUMABLE_DIR", "RESUMABLE_LEASE_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RESUMABLE_BACKGROUND", "0")
    return copy


def _assert_state(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert set(compat_loop.NAMES) <= set(actual)
    for name in ("weights", "stamps"):
        assert type(actual[name]) is np.ndarray, name
        assert actual[name].dtype == expected[name].dtype, name
        assert actual[name].shape == expected[name].shape, name
        assert np.array_equal(actual[name], expected[name]), name
    assert actual["counts"] == expected["counts"]
    assert actual["log"] == expected["log"]
    assert actual["last"] == expected["last"]

    # The notebook class comes back by value: a class of its own (not the generator's, which this
    # process imported under another module name), with the attributes and methods it had.
    acc, reference = actual["acc"], expected["acc"]
    cls = type(acc)
    assert cls is not type(reference)
    assert (cls.__module__, cls.__qualname__) == ("__main__", "CompatAccumulator")
    assert vars(acc) == vars(reference)
    assert acc.mean() == reference.mean()
    assert acc.add(0.5) == reference.add(0.5)
    assert vars(acc) == vars(reference)

    # The __main__ function and the lambda with its closure, by value.
    assert actual["transform"].__name__ == "transform"
    assert actual["scale"].__name__ == "<lambda>"
    for x in (0.0, 0.375, 1.5, -2.0):
        assert actual["transform"](x) == expected["transform"](x)
        assert actual["scale"](x) == expected["scale"](x)

    # The lock went through dill: a working lock, unlocked.
    guard = actual["guard"]
    assert type(guard) is type(threading.Lock())
    assert guard.acquire(blocking=False)
    guard.release()


def _assert_rngs(expected_random: Any, expected_numpy: Any) -> None:
    assert random.getstate() == expected_random
    state = np.random.get_state(legacy=False)
    assert state["state"]["pos"] == expected_numpy["state"]["pos"]
    assert np.array_equal(state["state"]["key"], expected_numpy["state"]["key"])


def _rerun(key: str, directory: Path) -> tuple[dict[str, Any], list[int]]:
    """Run the loop on ``key`` as a notebook's cell would after a restart: setup, then the loop."""
    compat_loop.seed_globals()
    state = _generator().initial_state()
    executed: list[int] = []
    compat_loop.run_loop(key, directory, state, executed.append)
    return state, executed


def test_public_names_only() -> None:
    """What this file uses from resumable_magic is public: in ``__all__``, or its ``errors`` module."""
    assert {"Resumable", "load"} <= set(resumable_magic.__all__)


def test_finished_run_replays(compat_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected, expected_random, expected_numpy = _reference()
    assert expected["last"] == compat_loop.N - 1

    _assert_state(load(compat_loop.FINISHED_KEY, dir=compat_dir), _reference()[0])

    state, executed = _rerun(compat_loop.FINISHED_KEY, compat_dir)
    assert executed == []  # replayed: no iteration ran
    _assert_state(state, expected)
    _assert_rngs(expected_random, expected_numpy)
    captured = capsys.readouterr()
    assert captured.err == ""  # no warning: no checkpoint passed over, no changed loop, no stale owner


def test_crashed_run_resumes(compat_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # What the crash left: the state after the iterations before the checkpoint.
    at_checkpoint, _, _ = _reference(compat_loop.CRASH_CHECKPOINT)
    assert at_checkpoint["last"] == compat_loop.CRASH_CHECKPOINT - 1
    _assert_state(load(compat_loop.CRASHED_KEY, dir=compat_dir), at_checkpoint)

    expected, expected_random, expected_numpy = _reference()
    state, executed = _rerun(compat_loop.CRASHED_KEY, compat_dir)
    assert executed == list(range(compat_loop.CRASH_CHECKPOINT, compat_loop.N))  # from 20, not from 0
    _assert_state(state, expected)
    _assert_rngs(expected_random, expected_numpy)
    captured = capsys.readouterr()
    assert captured.err == ""  # no warning: resumed from the newest checkpoint, no stale owner

    # The resumed run finished: running it again replays the result.
    expected, _, _ = _reference()
    state, executed = _rerun(compat_loop.CRASHED_KEY, compat_dir)
    assert executed == []
    _assert_state(state, expected)


def test_another_key_is_refused(compat_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture's signatures are checked: with another key nothing is unpickled or run."""
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", OTHER_KEY)
    for key in (compat_loop.FINISHED_KEY, compat_loop.CRASHED_KEY):
        with pytest.raises((UntrustedCheckpointError, NoCheckpointError)):
            load(key, dir=compat_dir)
        with pytest.raises(UntrustedCheckpointError):
            _rerun(key, compat_dir)
