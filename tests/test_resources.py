"""Views of something outside the process (issue 14, class 5): refused before the loop runs, by name.

Each case runs a real cell through the magic in an in-process shell and through the plain API (the
``runner`` fixture of test_magic.py): its setup creates the resource in a named variable, and the
first checkpoint, written before the loop starts, refuses it. Files open for reading keep dill's
behaviour (reopened at their position); ``numpy.memmap`` in mode ``r`` is reopened, in mode ``c``
saved by value.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import threading

import numpy as np
import pytest
from test_magic import Runner

from resumable_magic import ExternalResourceError, Resumable, load
from resumable_magic.errors import NotSerializableError
from resumable_magic.state.serialize import check_state, decode_state, encode_state

LOOP = "for i in range(3):\n    ran = True\n"


@pytest.fixture(params=["magic", "api"])
def runner(request, tmp_path, capsys, monkeypatch):
    """A cell through the magic in an in-process shell, or through the plain API (test_magic.py)."""
    monkeypatch.chdir(tmp_path)
    run = Runner(request.param, tmp_path / "ck", capsys)
    before = set(run.ns)
    yield run
    for name in set(run.ns) - before:
        run.ns.pop(name, None)


def refused(runner, names: str, setup: str, variable: str, *expected: str) -> ExternalResourceError:
    """Run ``setup`` + a loop naming ``names``; the loop must not run and no checkpoint be written."""
    outcome = runner(names, setup + LOOP)
    error = outcome.error
    assert isinstance(error, ExternalResourceError), (outcome.out, error)
    assert isinstance(error, NotSerializableError)  # what callers catching the older error still catch
    assert error.name == variable and str(error).startswith(f"Cannot checkpoint {variable!r}: ")
    for text in expected:
        assert text in str(error), str(error)
    assert "ran" not in runner.ns  # the loop never started
    assert runner.manifests() == []  # nothing was committed
    return error


@pytest.mark.parametrize("mode", ["w", "a", "r+", "x", "wb", "ab+", "w+b"])
def test_a_file_open_for_writing_is_refused_before_the_loop(runner, mode):
    (runner.directory.parent / "out.txt").unlink(missing_ok=True)
    if "r" in mode:
        (runner.directory.parent / "out.txt").write_text("before\n")
    setup = f"log = open('out.txt', {mode!r})\n"
    try:
        error = refused(
            runner, "log", setup, "log", "a file open for writing ('out.txt', mode ", "after a crash"
        )
        assert error.path == "log" and "Open it inside the loop" in str(error)
    finally:
        runner.ns["log"].close()


def test_the_path_to_a_nested_resource_is_named(runner):
    setup = "import socket\nclient = {'name': 'c', 'conn': [socket.socket()]}\n"
    try:
        error = refused(runner, "client", setup, "client", "client['conn'][0] is a socket", "Connect inside")
        assert error.path == "client['conn'][0]"
    finally:
        runner.ns["client"]["conn"][0].close()


CASES = {
    "socket": ("import socket\nres = socket.socket()\n", "a socket", "res.close()"),
    "sqlite3": (
        "import sqlite3\nres = sqlite3.connect('db.sqlite')\n",
        "a sqlite3 database connection",
        "res.close()",
    ),
    "sqlite3 cursor": (
        "import sqlite3\nres = sqlite3.connect(':memory:').cursor()\n",
        "a sqlite3 cursor",
        "res.connection.close()",
    ),
    "thread pool": (
        "from multiprocessing.pool import ThreadPool\nres = ThreadPool(1)\n",
        "a pool (multiprocessing.pool.ThreadPool)",
        "res.terminate()",
    ),
    "process pool": (
        "import multiprocessing\nres = multiprocessing.get_context('fork').Pool(1)\n",
        "a pool (multiprocessing.pool.Pool)",
        "res.terminate(); res.join()",
    ),
    "thread executor": (
        "from concurrent.futures import ThreadPoolExecutor\nres = ThreadPoolExecutor(1)\n",
        "an executor (concurrent.futures.thread.ThreadPoolExecutor)",
        "res.shutdown()",
    ),
    "process executor": (
        "from concurrent.futures import ProcessPoolExecutor\nres = ProcessPoolExecutor(1)\n",
        "an executor (concurrent.futures.process.ProcessPoolExecutor)",
        "res.shutdown()",
    ),
    "subprocess": (
        "import subprocess\nres = subprocess.Popen(['sleep', '30'])\n",
        "a subprocess (pid ",
        "res.kill(); res.wait()",
    ),
    "process": (
        "import multiprocessing\nres = multiprocessing.get_context('fork').Process(target=print)\n",
        "a process (multiprocessing.context.ForkProcess",
        "",
    ),
    "started thread": (
        "import threading\nres = threading.Thread(target=lambda: None)\nres.start()\nres.join()\n",
        "a thread (",
        "",
    ),
    "shared memory": (
        "from multiprocessing import shared_memory\nres = shared_memory.SharedMemory(create=True, size=4096)\n",
        "shared memory (",
        "res.close(); res.unlink()",
    ),
    "writable memmap": (
        "import numpy as np\nnp.zeros(1000).tofile('data.bin')\nres = np.memmap('data.bin', mode='r+')\n",
        "a numpy.memmap of ",
        "",
    ),
    "new memmap": (
        "import numpy as np\nres = np.memmap('new.bin', dtype='f8', mode='w+', shape=(100,))\n",
        "open for writing (mode 'w+')",
        "",
    ),
    "view of a writable memmap": (
        "import numpy as np\nnp.zeros(1000).tofile('data.bin')\n"
        "res = np.asarray(np.memmap('data.bin', dtype='f8', mode='r+'))[10:20]\n",
        "a view of a numpy.memmap of ",
        "",
    ),
    "array over a shared mmap": (
        "import mmap, numpy as np, os\nnp.zeros(1000).tofile('data.bin')\nfd = os.open('data.bin', os.O_RDWR)\n"
        "res = np.frombuffer(mmap.mmap(fd, 0), dtype='f8')\nos.close(fd)\n",
        "an array over a writable shared memory map of ",
        "",
    ),
    "memoryview of a shared mmap": (
        "import mmap, os\nopen('data.bin', 'wb').write(bytes(4096))\nfd = os.open('data.bin', os.O_RDWR)\n"
        "res = memoryview(mmap.mmap(fd, 0))\nos.close(fd)\n",
        "a memoryview over a writable shared memory map of ",
        "res.release()",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_kind_of_resource_is_refused_before_the_loop_naming_it(runner, case):
    setup, expected, cleanup = CASES[case]
    try:
        refused(runner, "res n", f"n = 0\n{setup}", "res", expected)
    finally:
        if cleanup and "res" in runner.ns:
            exec(cleanup, runner.ns)


def test_a_resource_in_an_object_only_dill_pickles_is_refused(tmp_path):
    """dill pickles an lru_cache wrapper, its function and the function's closure: the file in the
    closure is checked there too (without the check in dill's pickler it would be reopened)."""
    import functools

    def make(handle):
        @functools.lru_cache
        def cached(x):
            return handle

        return cached

    with open(tmp_path / "log.txt", "w") as log:
        with pytest.raises(ExternalResourceError, match=r"'f'.* a file open for writing") as info:
            encode_state({"f": make(log)})
        assert info.value.path.startswith("f")
        with pytest.raises(ExternalResourceError, match=r"'h'.* a file open for writing"):
            check_state({"h": (threading.Lock(), log), "ok": 1})


def test_what_stays_as_before(tmp_path):
    """Closed files, devices, anonymous maps: not refused."""
    with open(tmp_path / "c.txt", "w") as closed:
        pass
    with open(os.devnull, "w") as null:
        restored = decode_state(encode_state({"closed": closed, "null": null}).stream)
    assert restored["closed"].closed and restored["null"].name == os.devnull
    restored["null"].close()
    anonymous = np.frombuffer(mmap.mmap(-1, 1 << 20), dtype=np.uint8)  # MAP_SHARED, but of no file
    encoded = encode_state({"a": anonymous})
    assert np.array_equal(decode_state(encoded.stream, encoded.buffers)["a"], anonymous)


def test_a_socket_was_already_refused_and_is_now_named_as_one(tmp_path):
    with socket.socket() as sock, pytest.raises(ExternalResourceError) as info:
        encode_state({"s": sock})
    assert info.value.resource == "a socket" and info.value.reason == "a socket"


# -- files open for reading: reopened at their position (dill's behaviour, kept) --------------------

READER = """\
source = open('lines.txt')
got = []
for i in range(10):
    got.append(source.readline())
    if i == fail_at:
        raise ValueError('boom')
"""


# The resumed cell's setup opens the file again, and the restore replaces that handle unclosed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_file_open_for_reading_is_reopened_at_its_position_after_a_resume(runner):
    lines = [f"line {i}\n" for i in range(10)]
    (runner.directory.parent / "lines.txt").write_text("".join(lines))
    runner.ns["fail_at"] = 6
    failed = runner("source got", READER, "--every 2it")
    assert isinstance(failed.error, ValueError)
    first = runner.ns["source"]
    assert max(m["position"] for m in runner.manifests()) == 6
    runner.ns["fail_at"] = -1
    resumed = runner("source got", READER, "--every 2it --accept-changes")
    assert resumed.error is None and "from the checkpoint at iteration 6 of 10" in resumed.out
    restored = runner.ns["source"]
    # setup opened the file again at line 0; the restored handle is a new one, reopened at line 6
    assert restored is not first and restored.name == "lines.txt" and restored.mode == "r"
    assert runner.ns["got"] == lines and restored.readline() == ""
    first.close()
    restored.close()


# -- numpy.memmap: 'r' reopened, 'c' saved by value -------------------------------------------------


def test_a_read_only_memmap_is_reopened_on_restore_as_a_live_view_of_its_file(tmp_path):
    path = tmp_path / "data.bin"
    np.arange(1 << 17, dtype=np.float64).tofile(path)  # 1 MiB
    whole = np.memmap(path, dtype=np.float64, mode="r")
    state = {"whole": whole, "part": whole[100:90000:3], "back": whole[::-1], "n": 0}
    with Resumable("m", state, dir=tmp_path / "ck") as run:
        for _ in run.iterate(range(2)):
            state["n"] += 1
    manifest = json.loads(max((tmp_path / "ck" / "m").glob("manifest.*")).read_text())
    assert manifest["buffers"] == [] and manifest["state"]["size"] < 64 * 1024  # the file is not copied
    saved = load("m", dir=tmp_path / "ck")
    for name in ("whole", "part", "back"):
        got = saved[name]
        assert isinstance(got, np.memmap) and got.mode == "r" and str(got.filename) == str(path), name
        assert np.array_equal(got, state[name]) and not got.flags.writeable, name
    # A live view, as the map was: what the file holds now is what the restored map shows.
    with open(path, "r+b") as f:
        f.seek(100 * 8)
        f.write(np.float64(-1).tobytes())
    assert load("m", dir=tmp_path / "ck")["part"][0] == -1.0
    # And a restored map checkpoints again as a map of the same part of the file.
    again = load("m", dir=tmp_path / "ck")
    encoded = encode_state({"p": again["part"]})
    assert encoded.buffers == [] and np.array_equal(decode_state(encoded.stream)["p"], again["part"])


def test_a_copy_on_write_memmap_is_saved_by_value_and_its_file_left_alone(tmp_path):
    path = tmp_path / "data.bin"
    np.zeros(1 << 14, dtype=np.float64).tofile(path)  # 128 KiB: out of band
    state = {"m": np.memmap(path, dtype=np.float64, mode="c")}
    with Resumable("c", state, dir=tmp_path / "ck") as run:
        for i in run.iterate(range(3)):
            state["m"][i] = i + 1.0  # private to this process: never reaches the file
    saved = load("c", dir=tmp_path / "ck")["m"]
    assert isinstance(saved, np.memmap) and saved.filename is None and saved.flags.writeable
    assert saved[:4].tolist() == [1.0, 2.0, 3.0, 0.0]
    assert not np.fromfile(path).any()  # the file is as it was


def test_check_state_refuses_what_encode_state_refuses_and_passes_the_rest(tmp_path):
    with open(tmp_path / "x.txt", "a") as log, pytest.raises(ExternalResourceError, match=r"'log'"):
        check_state({"fine": np.zeros(1 << 20), "log": log})
    check_state({"fine": np.zeros(1 << 20), "b": bytearray(1 << 20)})
    with pytest.raises(NotSerializableError, match=r"gen"):
        check_state({"gen": (i for i in range(3))})


def test_text_binary_and_raw_files_reopen_where_they_were_and_a_missing_one_is_an_error(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("first line\nsecond line\n", encoding="latin-1")
    with (
        open(path, encoding="latin-1") as text,
        open(path, "rb") as binary,
        open(path, "rb", buffering=0) as raw,
    ):
        text.readline(), binary.read(3), raw.read(5)
        encoded = encode_state({"text": text, "binary": binary, "raw": raw})
    restored = decode_state(encoded.stream)
    try:
        assert restored["text"].read() == "second line\n" and restored["text"].encoding == "latin-1"
        assert restored["binary"].read(4) == b"st l" and restored["raw"].read(4) == b" lin"
        assert type(restored["raw"]) is type(raw) and type(restored["binary"]) is type(binary)
    finally:
        for handle in restored.values():
            handle.close()
    path.unlink()
    with pytest.raises(FileNotFoundError):  # not an empty temporary file in its place, as dill gives
        decode_state(encoded.stream)
