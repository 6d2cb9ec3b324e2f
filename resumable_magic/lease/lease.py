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
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from resumable_magic.errors import OwnershipLostError, ResumableError, RunFolderGoneError, RunOwnedError
from resumable_magic.lease.procs import pid_alive, process_start_time
from resumable_magic.storage.base import Backend, WriteConflict, open_backend
from resumable_magic.storage.paths import RemotePath, Where

__all__ = [
    "DEFAULT_TIMEOUT",
    "LEASE_FILE",
    "LOCK_FILE",
    "Lease",
    "ObjectLease",
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


def _backend(run: Where | Backend) -> Backend:
    """The backend of a run given as its folder, or the backend itself."""
    return open_backend(run) if isinstance(run, (Path, RemotePath)) else run


def read_lease(run: Where | Backend) -> dict[str, Any] | None:
    """The lease record of the run at ``run`` (a folder or its backend), or None (none, or unreadable)."""
    backend = _backend(run)
    found = backend.read_tagged(LEASE_FILE)
    return _parse(found[0]) if found else None


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep JSON, huge numbers: no lease we wrote
        return None
    return record if isinstance(record, dict) else None


# -- the lease -------------------------------------------------------------------------------------


def make_lease(run: Where | Backend, key: str, timeout: float | None = None) -> Lease:
    """The lease of the run at ``run`` (a folder or its backend): an :class:`ObjectLease` where the
    backend's register is compare-and-swap (sparser heartbeats), else a :class:`Lease`."""
    backend = _backend(run)
    kind = ObjectLease if backend.compare_and_swap else Lease
    return kind(backend, key, timeout)


class Lease:
    """This process's claim on one run. :meth:`acquire`, then :meth:`start_heartbeat`, finally :meth:`release`."""

    HEARTBEAT = HEARTBEAT_SECONDS

    def __init__(self, run: Where | Backend, key: str, timeout: float | None = None) -> None:
        self.backend: Backend = _backend(run)
        self.path: Where = self.backend.where()
        self.key = key
        self.timeout = timeout if timeout is not None else lease_timeout()
        self.token = uuid.uuid4().hex
        self.held = False
        self.lost: str | None = None  # description of the process that took the lease over
        self.gone = False  # ... or the lease file disappeared (a deleted run folder): nobody took it
        self.previous: dict[str, Any] | None = None  # the record found at acquire (a crashed owner's)
        # This process's threads (heartbeat, commit) take turns here; the backend's lock is between
        # processes (where it has none, every write of the record is conditional on self._tag).
        self._threads = threading.RLock()
        self._mutex = self.backend.process_lock(LOCK_FILE, LOCK_WAIT)
        self._tag: str | None = None  # the record's tag as this process last read or wrote it
        self._record: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._position: Callable[[], int] = lambda: 0
        self._on_lost: Callable[[], None] = lambda: None

    def _read_current(self) -> dict[str, Any] | None:
        found = self.backend.read_tagged(LEASE_FILE)
        self._tag = found[1] if found else None
        return _parse(found[0]) if found else None

    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats."""
        return min(self.HEARTBEAT, self.timeout / 5)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._threads.acquire(timeout=LOCK_WAIT):
            raise self._held_too_long()
        try:
            try:
                self._mutex.acquire()
            except TimeoutError:
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
        for _ in range(5):  # lost a race with another taker (compare-and-swap): read again, decide again
            try:
                return self._acquire(position)
            except WriteConflict:
                continue
        current = self._read_current() or {}
        raise RunOwnedError(self.key, describe_owner(current), float(current.get("timeout") or 0))

    def _acquire(self, position: int) -> str | None:
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
        twin = type(self)(self.backend.in_child(), self.key, self.timeout)
        twin.token, twin.held, twin._record, twin._tag = self.token, self.held, dict(self._record), self._tag
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
            raise self.lost_error()
        with self._locked():
            current = self._read_current()
            if current is None or current.get("token") != self.token:
                self.held = False
                self.gone = current is None
                self.lost = describe_owner(current) if current else "nobody (the lease file is gone)"
                raise self.lost_error()
            yield

    def lost_error(self) -> OwnershipLostError:
        """Why this process no longer holds the run: another process took it over, or the lease file
        (with the run folder, as a rule) disappeared."""
        if self.gone:
            return RunFolderGoneError(self.key, str(self.path / LEASE_FILE))
        return OwnershipLostError(self.key, str(self.lost))

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
        self.backend.delete(LEASE_FILE)

    def _write(self, record: dict[str, Any] | None = None) -> None:
        data = json.dumps(self._record if record is None else record).encode()
        try:
            self._tag = self.backend.write_tagged(LEASE_FILE, data, self._tag)
        except WriteConflict:
            if not self.held:
                raise  # acquire: another process got there first
            current = self._read_current()
            self.held = False
            self.lost = describe_owner(current) if current else "another process (the lease was removed)"
            raise OwnershipLostError(self.key, self.lost) from None


class ObjectLease(Lease):
    """The lease on an object store: the same record, kept by conditional writes (the backend's
    compare-and-swap). Heartbeats are sparser than on disk (every few seconds: each is a GET and a
    PUT); across machines the heartbeat timeout decides whether an owner is gone, on the same host its
    pid too."""

    HEARTBEAT = 2.0
