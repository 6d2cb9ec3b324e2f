"""Who is executing a run: a lease with heartbeats from a thread, takeover of dead owners, fencing.

One process at a time executes a run. It holds the run's lease, ``<run>/owner.json``::

    {"token": "...", "host": "...", "pid": 1234, "process_started": ..., "acquired": ...,
     "heartbeat": ..., "position": 5000, "timeout": 120.0, "released": null}

A daemon thread renews ``heartbeat`` (and the loop's ``position``) 4 times a second, so the lease stays
fresh while the loop body runs, even a body that never returns to the loop for hours. Another
process that wants the run takes the lease over only when the owner is gone: its pid no longer
exists on this host (or belongs to a newer process), or its heartbeat is older than the owner's
``timeout`` (another machine, a suspended process). Otherwise it gets :class:`RunOwnedError`.

Every read-modify-write of ``owner.json`` and every commit of the run's files happens under a short
``filelock`` mutex (``owner.lock``) and after checking that the lease still holds this process's
token (:meth:`Lease.fenced`): an owner that was taken over, or a writer it left behind, can never
commit again. The mutex is held for microseconds; waiting for it is bounded by :data:`LOCK_WAIT`. It is
never broken: a holder stopped inside it may be in the middle of a commit, and breaking the lock would
let that commit land after a takeover; the others wait, then report the stopped holder.

On object storage there is no file lock: :class:`~resumable_magic.storage.fsspec.ObjectLease` keeps the
same record with conditional writes instead (:func:`make_lease` picks the kind for a run's folder).

A thread holds the GIL between bytecodes only; a single C call that keeps the GIL for longer than
the lease timeout (default :data:`DEFAULT_TIMEOUT`, ``$RESUMABLE_LEASE_TIMEOUT``) stalls the
heartbeat, and a second process started on the same run in that window would take it over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from resumable_magic.errors import OwnershipLostError, ResumableError, RunOwnedError
from resumable_magic.storage.local import RemotePath
from resumable_magic.store.runstore import TMP_PREFIX, pid_alive

if TYPE_CHECKING:
    from resumable_magic.storage.local import Where

__all__ = [
    "DEFAULT_TIMEOUT",
    "LEASE_FILE",
    "LOCK_FILE",
    "Lease",
    "describe_owner",
    "lease_timeout",
    "make_lease",
    "owner_state",
    "process_start_time",
    "read_lease",
]

LEASE_FILE = "owner.json"
LOCK_FILE = "owner.lock"
DEFAULT_TIMEOUT = 120.0  # seconds without a heartbeat before an owner counts as gone
HEARTBEAT_SECONDS = 0.25  # ~100 us of work each: fresh enough to say how much work a crash lost
# The live leases of this process, by run folder: a second run object of the same process (another
# thread) is refused like another process; an abandoned one (garbage-collected) is taken over.
_HELD: weakref.WeakValueDictionary[str, Lease] = weakref.WeakValueDictionary()
LOCK_WAIT = 30.0  # the mutex is held for microseconds; only a process stopped inside it holds it longer


def lease_timeout() -> float:
    """``$RESUMABLE_LEASE_TIMEOUT`` seconds, else :data:`DEFAULT_TIMEOUT`."""
    text = os.environ.get("RESUMABLE_LEASE_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        value = DEFAULT_TIMEOUT
    return value if value > 0 else DEFAULT_TIMEOUT


# -- processes -------------------------------------------------------------------------------------


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def process_start_time(pid: int) -> float | None:
    """Wall time at which process ``pid`` started (Linux ``/proc``), or None where unknown."""
    boot = _boot_time()
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5): starttime, counted from ')' + 1 = field 3
    except (OSError, IndexError, ValueError):
        return None
    if boot is None:
        return None
    return round(boot + ticks / os.sysconf("SC_CLK_TCK"), 2)


def owner_state(record: dict[str, Any], now: float | None = None) -> str:
    """``"released"``, ``"live"``, ``"gone"`` (process dead on this host) or ``"stale"`` (no heartbeat)."""
    try:
        return _owner_state(record, now)
    except (OverflowError, TypeError, ValueError):  # numbers no live process wrote
        return "stale"


def _owner_state(record: dict[str, Any], now: float | None) -> str:
    if record.get("released"):
        return "released"
    now = time.time() if now is None else now
    try:
        beat, timeout = float(record["heartbeat"]), float(record.get("timeout") or DEFAULT_TIMEOUT)
    except (KeyError, TypeError, ValueError):
        return "stale"
    if record.get("host") == socket.gethostname():
        try:
            pid = int(record["pid"])
        except (KeyError, TypeError, ValueError):
            return "stale"
        if not pid_alive(pid):
            return "gone"
        started, recorded = process_start_time(pid), record.get("process_started")
        if started is not None and isinstance(recorded, (int, float)) and abs(started - recorded) > 1:
            return "gone"  # the pid was reused by a newer process
    return "stale" if now - beat > timeout else "live"


def _clock(wall_time: Any) -> str:
    try:
        return datetime.fromtimestamp(float(wall_time)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "unknown"


def describe_owner(record: dict[str, Any], now: float | None = None) -> str:
    """``pid 1234 on host h (process started 2026-11-23 12:00:01, last heartbeat 3 s ago)``."""
    now = time.time() if now is None else now
    try:
        ago = f"{max(0.0, now - float(record['heartbeat'])):.0f} s ago"
    except (KeyError, TypeError, ValueError, OverflowError):
        ago = "never"
    return (
        f"pid {record.get('pid')} on host {record.get('host')} (process started "
        f"{_clock(record.get('process_started'))}, last heartbeat {ago})"
    )


def read_lease(run_path: Where) -> dict[str, Any] | None:
    """The lease record of the run at ``run_path``, or None (no lease, or unreadable)."""
    if not isinstance(run_path, Path):  # a run on object storage (storage.RemotePath)
        from resumable_magic.storage.fsspec import read_lease as read_remote_lease

        return read_remote_lease(run_path)
    try:  # O_NONBLOCK: a FIFO planted as owner.json must not hang a listing
        fd = os.open(run_path / LEASE_FILE, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            record = json.loads(f.read())
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


# -- the lease -------------------------------------------------------------------------------------


def make_lease(run_path: Where, key: str, timeout: float | None = None) -> Lease:
    """The lease of the run at ``run_path``: :class:`Lease` on disk, an
    :class:`~resumable_magic.storage.fsspec.ObjectLease` on object storage."""
    if isinstance(run_path, Path):
        return Lease(run_path, key, timeout)
    from resumable_magic.storage.fsspec import ObjectLease

    return ObjectLease(run_path, key, timeout)


class Lease:
    """This process's claim on one run. :meth:`acquire`, then :meth:`start_heartbeat`, finally :meth:`release`."""

    def __init__(self, run_path: Path, key: str, timeout: float | None = None) -> None:
        self.path: Any = run_path if isinstance(run_path, RemotePath) else Path(run_path)
        self.key = key
        self.timeout = timeout if timeout is not None else lease_timeout()
        self.token = uuid.uuid4().hex
        self.held = False
        self.lost: str | None = None  # description of the process that took the lease over
        self.previous: dict[str, Any] | None = None  # the record found at acquire (a crashed owner's)
        # This process's threads (heartbeat, commit) take turns here; the file lock is between processes.
        self._threads = threading.RLock()
        self._mutex = self._make_mutex()
        self._record: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._position: Callable[[], int] = lambda: 0
        self._on_lost: Callable[[], None] = lambda: None

    def _make_mutex(self) -> Any:
        # Not thread-local: a thread-local FileLock holds a threading.local, and a run's objects end in
        # reference cycles; on Python 3.11 the cyclic GC freeing a threading.local inside
        # sys._current_frames() (which Dask's profiler calls every 10 ms) deadlocks the process
        # (CPython gh-106883). self._threads gives the exclusion between threads instead.
        return FileLock(self.path / LOCK_FILE, timeout=LOCK_WAIT, mode=0o600, thread_local=False)

    def _read_current(self) -> dict[str, Any] | None:
        return read_lease(self.path)

    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats."""
        return min(HEARTBEAT_SECONDS, self.timeout / 5)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._threads.acquire(timeout=LOCK_WAIT):
            raise self._held_too_long()
        try:
            try:
                self._mutex.acquire()
            except Timeout:
                raise self._held_too_long() from None
            try:
                yield
            finally:
                self._mutex.release()
        finally:
            self._threads.release()

    def _held_too_long(self) -> ResumableError:
        return ResumableError(
            f"Run {self.key!r}: the lock {str(self.path / LOCK_FILE)!r} was held for over "
            f"{LOCK_WAIT:g} s. A process holding it is stopped (SIGSTOP) or hung; resume or end it."
        )

    def acquire(self, position: int = 0) -> str | None:
        """Take the lease; returns a note when a previous owner was taken over.

        Raises :class:`RunOwnedError` when a live owner holds it.
        """
        now = time.time()
        with self._locked():
            current = self._read_current()
            note = None
            if current is not None:
                state = owner_state(current, now)
                same_process = (
                    current.get("host") == socket.gethostname() and current.get("pid") == os.getpid()
                )
                holder = _HELD.get(str(self.path))
                if (
                    same_process
                    and holder is not None
                    and holder.held
                    and holder.token == current.get("token")
                ):
                    same_process = False  # another live run object of this process (a thread) holds it
                if state == "live" and not same_process:
                    raise RunOwnedError(
                        self.key, describe_owner(current, now), float(current.get("timeout") or 0)
                    )
                if state == "gone":
                    note = f"its process is gone ({describe_owner(current, now)})"
                elif state == "stale" and not same_process:
                    note = (
                        f"its heartbeat stopped longer ago than its lease timeout "
                        f"({describe_owner(current, now)})"
                    )
                self.previous = current
            self._record = {
                "token": self.token,
                "key": self.key,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "process_started": process_start_time(os.getpid()),
                "acquired": now,
                "heartbeat": now,
                "position": position,
                "timeout": self.timeout,
                "released": None,
            }
            self._write()
            self.held = True
            _HELD[str(self.path)] = self
        return note

    def start_heartbeat(self, position: Callable[[], int], on_lost: Callable[[], None]) -> None:
        """Renew the lease from a daemon thread; ``on_lost`` is called (from it) if it is taken over."""
        self._position, self._on_lost = position, on_lost
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="resumable-lease", daemon=True)
        self._thread.start()

    def in_child(self) -> Lease:
        """This lease for a forked child writing a checkpoint: same token, a fresh mutex (a lock object
        must not cross a fork), no heartbeat thread (the parent keeps beating)."""
        twin = Lease(self.path, self.key, self.timeout)
        twin.token, twin.held, twin._record = self.token, self.held, dict(self._record)
        return twin

    def _beat(self) -> None:
        interval = self.heartbeat_interval()
        while not self._stop.wait(interval):
            try:
                self.renew()
            except OwnershipLostError:
                self._on_lost()
                return
            except (OSError, ResumableError):
                continue  # a full disk or a stopped lock holder: try again at the next beat

    def renew(self) -> None:
        """Write a fresh heartbeat and position (fenced)."""
        with self.fenced():
            self._record.update(heartbeat=time.time(), position=self._position())
            self._write()

    @contextlib.contextmanager
    def fenced(self) -> Iterator[None]:
        """Hold the mutex and make sure the lease is still ours; raise :class:`OwnershipLostError` if not."""
        if self.lost is not None:
            raise OwnershipLostError(self.key, self.lost)
        with self._locked():
            current = self._read_current()
            if current is None or current.get("token") != self.token:
                self.held = False
                self.lost = describe_owner(current) if current else "another process (the lease was removed)"
                raise OwnershipLostError(self.key, self.lost)
            yield

    def release(self, position: int | None = None, *, undo: bool = False) -> None:
        """Stop the heartbeat and mark the lease released (kept: it says how far the run got).

        ``undo``: this process changed nothing (a refused or replayed run): put back the record it
        found, so that what a crashed owner had reached is still known to the next attempt.
        """
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        if not self.held:
            return
        with contextlib.suppress(OwnershipLostError, OSError, ResumableError), self.fenced():
            now = time.time()
            self._record.update(heartbeat=now, released=now)
            if position is not None:
                self._record["position"] = position
            if undo and self.previous is None:
                self._remove()
            else:
                self._write(self.previous if undo else self._record)
        self.held = False

    def _remove(self) -> None:
        os.unlink(self.path / LEASE_FILE)

    def _write(self, record: dict[str, Any] | None = None) -> None:
        # Not fsynced: a lease only has to outlive its process, not the machine.
        tmp = self.path / f"{TMP_PREFIX}{os.getpid()}-lease-{threading.get_ident()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(self._record if record is None else record).encode())
        finally:
            os.close(fd)
        os.replace(tmp, self.path / LEASE_FILE)
