"""The real-kernel harness (tests/kernels.py) itself: these must pass before any
crash test's failure means anything."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from kernels import KernelDied, KernelTimeout, live_kernel_pids, start_kernel, wait_for

pytestmark = pytest.mark.kernel


def test_execute_collects_outputs(kernel, tmp_path):
    r = kernel.execute("import sys, os\nprint('hello')\nprint('oops', file=sys.stderr)\n40 + 2")
    assert r.ok, r
    assert r.status == "ok"
    assert r.stdout == "hello\n"
    assert "oops" in r.stderr
    assert r.execute_result == "42"
    assert r.results == ["42"]
    assert r.execution_count == 1
    # the same interpreter and the requested cwd
    assert kernel.eval("sys.executable") == repr(sys.executable)
    assert kernel.eval("sys.prefix") == repr(sys.prefix)
    assert kernel.eval("os.getcwd()") == repr(str(tmp_path))
    assert int(kernel.eval("os.getpid()")) == kernel.pid


def test_display_data_and_state_persists(kernel):
    kernel.run("x = [1, 2]\nfrom IPython.display import display\ndisplay('shown')")
    r = kernel.run("x.append(3)\nx")
    assert r.execute_result == "[1, 2, 3]"
    r = kernel.run("display({'a': 1})\nNone")
    assert r.results == ["{'a': 1}"]
    assert r.execute_result is None


def test_error_capture(kernel):
    r = kernel.execute("def f():\n    raise ValueError('bad value')\nf()")
    assert not r.ok
    assert r.status == "error"
    assert r.error.ename == "ValueError"
    assert r.error.evalue == "bad value"
    assert "\x1b[" not in r.error.traceback
    assert "raise ValueError('bad value')" in r.error.traceback
    with pytest.raises(AssertionError, match="bad value"):
        r.check()
    # the kernel keeps working after an error
    assert kernel.eval("1 + 1") == "2"


def test_usage_error_of_a_magic(kernel):
    r = kernel.execute("%timeit -badflag")
    assert not r.ok
    assert "UsageError" in r.output


def test_cell_id_reaches_the_kernel(kernel):
    code = (
        "from IPython import get_ipython\n"
        "k = get_ipython().kernel\n"
        "md = k.get_parent()['metadata']\n"
        "print(md.get('cellId'))"
    )
    assert kernel.run(code, cell_id="cell-abc-123").stdout == "cell-abc-123\n"
    assert kernel.run(code).stdout == "None\n"


def test_env_extras_and_hash_seed(kernel_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "7")
    monkeypatch.setenv("RESUMABLE_CRASH_AT", "serialized:1")
    monkeypatch.setenv("HARNESS_INHERITED", "yes")
    k = kernel_factory(env={"HARNESS_EXTRA": "1"})
    env = k.run(
        "import os\nprint(sorted((k, v) for k, v in os.environ.items() if k.startswith(('HARNESS', 'PYTHONHASH', 'RESUMABLE'))))"
    ).stdout
    # inherited, extras added; the test process's hash seed and RESUMABLE_* are not passed on
    assert env.strip() == "[('HARNESS_EXTRA', '1'), ('HARNESS_INHERITED', 'yes')]"
    k2 = kernel_factory(env={"PYTHONHASHSEED": "0"})
    k3 = kernel_factory(env={"PYTHONHASHSEED": "0"})
    h = "hash('resumable')"
    assert k2.eval(h) == k3.eval(h)
    # the package is importable in the kernel from any cwd (repo root on PYTHONPATH)
    assert str(tmp_path) not in k2.eval("__import__('sys').path[0]")
    k2.run("import importlib.util\nassert importlib.util.find_spec('resumable_magic') is not None")


def test_sigkill_mid_cell_is_detected_quickly(kernel, tmp_path):
    marker = tmp_path / "progress.txt"
    msg_id = kernel.execute_async(
        "import time\n"
        "for i in range(10_000):\n"
        f"    open({str(marker)!r}, 'w').write(str(i))\n"
        "    print(i, flush=True)\n"
        "    time.sleep(0.01)\n"
    )
    # wait until the loop demonstrably runs, then kill it
    kernel.wait_for(lambda: marker.exists() and int(marker.read_text() or 0) >= 5, timeout=30)
    pid = kernel.pid
    kernel.kill()
    assert not kernel.alive
    assert kernel.returncode == -signal.SIGKILL
    t0 = time.monotonic()
    with pytest.raises(KernelDied) as info:
        kernel.result(msg_id, timeout=60)
    assert time.monotonic() - t0 < 2.0
    died = info.value
    assert died.pid == pid
    assert died.signal == signal.SIGKILL
    assert "SIGKILL" in str(died)
    assert died.result is not None and "3\n" in died.result.stdout  # partial output kept


def test_death_during_execute_raises(kernel):
    # the kernel kills itself mid-cell: execute() must raise, not hang
    t0 = time.monotonic()
    with pytest.raises(KernelDied) as info:
        kernel.execute(
            "import os, signal, time\nprint('before', flush=True)\ntime.sleep(0.2)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\ntime.sleep(60)",
            timeout=120,
        )
    assert time.monotonic() - t0 < 10
    assert info.value.signal == signal.SIGKILL
    assert "before" in info.value.result.stdout


def test_timeout_leaves_kernel_usable(kernel):
    msg_id = kernel.execute_async("import time\ntime.sleep(30)")
    with pytest.raises(KernelTimeout):
        kernel.result(msg_id, timeout=0.5)
    kernel.interrupt()
    r = kernel.result(msg_id, timeout=30)
    assert r.error is not None and r.error.ename == "KeyboardInterrupt"
    assert kernel.eval("'still here'") == "'still here'"


def test_restart_gives_fresh_kernel_same_cwd(kernel, tmp_path):
    kernel.run("x = 1\nopen('f.txt', 'w').write('hi')")
    first = kernel.pid
    kernel.kill()
    kernel.restart(env={"HARNESS_AFTER": "2"})
    assert kernel.alive and kernel.pid != first
    assert not any(p == first for p in live_kernel_pids())
    r = kernel.execute("x")
    assert r.error is not None and r.error.ename == "NameError"
    assert kernel.eval("open('f.txt').read()") == "'hi'"
    assert kernel.eval("__import__('os').environ['HARNESS_AFTER']") == "'2'"
    # restart of a live kernel kills it first
    second = kernel.pid
    kernel.restart(env={"HARNESS_AFTER": None})
    wait_for(lambda: second not in live_kernel_pids(), timeout=5)
    assert kernel.eval("'HARNESS_AFTER' in __import__('os').environ") == "False"
    assert kernel.eval("1") == "1"


def test_wait_for_raises_when_kernel_dies(kernel, tmp_path):
    kernel.execute_async("import os, signal, time\ntime.sleep(0.3)\nos.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(KernelDied):
        kernel.wait_for(lambda: (tmp_path / "never").exists(), timeout=30)


def test_wait_for_output(kernel):
    msg_id = kernel.execute_async(
        "import time\nfor i in range(1000):\n    print(f'step {i}', flush=True)\n    time.sleep(0.01)"
    )
    kernel.wait_for_output(msg_id, "step 3", timeout=30)
    kernel.interrupt()
    r = kernel.result(msg_id)
    assert r.error.ename == "KeyboardInterrupt"


def test_no_orphans_after_shutdown(tmp_path):
    k = start_kernel(tmp_path)
    # a grandchild process in the kernel's session must not outlive shutdown either
    k.run(
        "import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])"
    )
    child = int(k.eval("p.pid"))
    pids = list(k.pids)
    k.kill()
    k.restart()
    pids += k.pids[len(pids) :]
    k.shutdown()
    k.shutdown()  # idempotent
    assert not any(p in live_kernel_pids() for p in pids)
    wait_for(lambda: not _alive(child), timeout=5)
    assert not k.tmpdir.exists()


def _alive(pid: int) -> bool:
    out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(out) and not out.startswith("Z")


def test_kernel_startup_does_not_inherit_our_stdio(kernel):
    # the kernel's own stderr (ipykernel startup chatter) goes to the log file
    kernel.run("import os\nos.write(2, b'fd-level stderr\\n')")
    wait_for(lambda: "fd-level stderr" in kernel.log(), timeout=5)


def test_kill_with_sigterm(kernel):
    kernel.kill(signal.SIGTERM)
    assert not kernel.alive
    assert kernel.returncode is not None
