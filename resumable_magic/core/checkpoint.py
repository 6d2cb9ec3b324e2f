"""Taking a checkpoint: capture the state at a boundary, write it (here, or in a forked child), and
account for it (policy, progress, size warnings).

A mixin of :class:`~resumable_magic.core.run.Resumable`, which owns the attributes used here (the store,
its lease, the policy, the progress model, the namespace and names); kept apart because writing a
checkpoint is one job and running a loop is another.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from resumable_magic.core import messages
from resumable_magic.core.forked_writer import FORK_MIN_BYTES, Snapshot, fork_refusal
from resumable_magic.core.iteration import MISSING as _MISSING
from resumable_magic.errors import (
    CheckpointWriteError,
    NotSerializableError,
    OwnershipLostError,
    StateVariableError,
)
from resumable_magic.progress.model import CheckpointStats, format_duration, format_size
from resumable_magic.state import rng
from resumable_magic.state.fingerprint import fingerprint_item
from resumable_magic.state.serialize import encode_state
from resumable_magic.storage.crashpoints import crash_point
from resumable_magic.store.runstore import digest

RNG_KEY = "__resumable_rng__"
SNAPSHOT_WAIT = 600.0  # seconds to wait for a background writer before killing it


def _versions() -> dict[str, str]:
    import dill

    from resumable_magic._version import __version__

    return {"python": sys.version.split()[0], "dill": dill.__version__, "resumable_magic": __version__}


class Checkpointing:
    """The checkpoint-writing half of a run (see the module doc)."""

    def _take_checkpoint(
        self, item: Any = _MISSING, *, first: bool = False, final: bool = False, sync: bool = False
    ) -> int:
        """Checkpoint now: synchronously, or by a forked child when the state is large (snapshot.py).

        The first and final checkpoints, and the one taken on a stop request, are synchronous (the
        run must not go on, or end, before they are durable). Returns the newest committed generation.
        """
        sync = sync or first or final
        if self._snapshot is not None:
            if not sync:
                return self._last_generation or 0  # one background writer at a time: due again later
            self._collect_snapshot(wait=True)
        position = self.position
        with self.store.fence():  # a writer that lost the run stops before writing anything
            pass
        state, manifest = self._capture(item, final)
        refusal = "synchronous checkpoint" if sync else fork_refusal(self._last_size, self.store.can_fork)
        self.progress.checkpoint_started(position)
        if refusal is None:
            self._snapshot = Snapshot.start(lambda: self._write(state, manifest, final, child=True), position)
            self._last_time = time.monotonic()
            if not self._said_mode:
                self._said_mode = True
                self._info(
                    f"The state is {format_size(self._last_size)}: checkpoints are written by a background "
                    f"process (fork), so the loop stalls for {format_duration(self._snapshot.stall)} instead "
                    f"of the whole write."
                )
            return self._last_generation or 0
        if not sync and not self._said_mode and self._last_size >= FORK_MIN_BYTES:
            self._said_mode = True
            self._info(f"Checkpoints are written synchronously: {refusal}.")
        started = time.monotonic()
        try:
            result = self._write(state, manifest, final)
        except OwnershipLostError:
            raise
        except OSError as exc:
            if first or final:
                what = (
                    "first checkpoint (before the loop)"
                    if first
                    else "final checkpoint (the loop has finished)"
                )
                raise CheckpointWriteError(self.store.path, what, exc, self._kept()) from None
            self._checkpoint_failed(position, str(exc))
            return self._last_generation or 0
        return self._committed(result, position, time.monotonic() - started, background=False)

    def _capture(self, item: Any, final: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """The state to save (references, not copies) and the manifest's metadata, at this instant."""
        names = self.names + (self.final_names if final else ())
        gone = [n for n in self.names if n not in self.namespace]
        if gone:
            raise StateVariableError(
                gone[0],
                f"State variable {gone[0]!r} no longer exists at iteration {self.position:,}: the loop "
                f"deleted it. The checkpoint at iteration {self._last_position:,} is kept; keep the "
                f"variable defined, or remove it from the names.",
            )
        state = {n: self.namespace[n] for n in names if n in self.namespace}
        state[RNG_KEY] = rng.capture()
        manifest: dict[str, Any] = {
            "created": time.time(),
            "position": self.position,
            "total": self.total,
            "names": [n for n in names if n in state],
            "item": fingerprint_item(item) if item is not _MISSING else None,
            "inputs": self.inputs,
            "params": self.params,
            "code": self.code,
            "code_digest": digest(self.code.encode()) if self.code is not None else None,
            "header": self.header,
            "final": final,
            "versions": _versions(),
            "history": self._history(final),
        }
        return state, manifest

    def _write(
        self, state: dict[str, Any], manifest: dict[str, Any], final: bool, child: bool = False
    ) -> dict[str, Any]:
        """Serialise, store and commit one checkpoint (in this process, or in a forked child)."""
        if child:
            crash_point("background")
            self.store.fence = self.lease.in_child().fenced
            self.store.for_forked_child()  # its own S3 connections
        try:
            encoded = encode_state(state)
        except NotSerializableError:
            if not final or not self.final_names:
                raise
            encoded = encode_state({n: v for n, v in state.items() if n not in self.final_names})
            manifest["names"] = [n for n in manifest["names"] if n not in self.final_names]
        crash_point("serialized")
        # The stream, then each large buffer as its own content-addressed blob, written straight
        # from the objects' memory: an unchanged array keeps its digest and is not written again.
        blob, written = self.store.put_blob(encoded.stream)
        manifest["state"] = {"digest": blob, "size": len(encoded.stream)}
        manifest["buffers"] = []
        for buffer in encoded.buffers:
            name, count = self.store.put_blob(buffer)
            manifest["buffers"].append({"digest": name, "size": buffer.nbytes})
            written += count
        generation = self.store.commit(manifest, keep=self._last_generation)
        result = {
            "generation": generation,
            "written": written,
            "size": encoded.nbytes,
            "created": manifest["created"],
        }
        if child:  # the parent need not store these again (on object storage: upload)
            result["verified"] = [entry["digest"] for entry in [manifest["state"], *manifest["buffers"]]]
        return result

    def _committed(self, result: dict[str, Any], position: int, blocked: float, *, background: bool) -> int:
        generation = int(result["generation"])
        self.store.accept_verified(result.get("verified") or ())  # what a forked writer stored
        self.store.seen_generation = max(self.store.seen_generation, generation)
        self._last_generation, self._last_position, self._last_size = (
            generation,
            position,
            int(result["size"]),
        )
        self._last_time = time.monotonic()
        if self.policy.iterations:
            self._next_at = max(self._next_at, position + self.policy.iterations)
        self.policy.checkpoint_done(blocked)
        if self.policy.over_budget_note:
            self._warn(self.policy.over_budget_note)
            self.policy.over_budget_note = None
        self._check_size(self._last_size, position)
        self.progress.checkpoint_finished(
            CheckpointStats(
                generation,
                position,
                float(result["created"]),
                self._last_size,
                blocked,
                int(result["written"]),
                "background" if background else "sync",
            )
        )
        return generation

    def _checkpoint_failed(self, position: int, reason: str) -> None:
        self.progress.checkpoint_failed(f"checkpoint at iteration {position:,} failed: {reason}")
        self._warn(
            f"The checkpoint at iteration {position:,} could not be written ({reason}); the loop goes "
            f"on and the previous checkpoint (iteration {self._last_position:,}) stays."
        )
        self._last_time = time.monotonic()

    def _collect_snapshot(self, wait: bool, timeout: float = SNAPSHOT_WAIT) -> None:
        """Take in a background writer's result: a committed checkpoint, or an error raised or reported."""
        snapshot = self._snapshot
        if snapshot is None:
            return
        result = snapshot.wait(timeout) if wait else snapshot.poll()
        if result is None:
            return
        self._snapshot = None
        if "ok" in result:
            self.background_writes.append(
                {"stall": snapshot.stall, "seconds": result.get("seconds"), "private": result.get("private")}
            )
            self._committed(result["ok"], snapshot.position, snapshot.stall, background=True)
            return
        attrs = result.get("attrs") or {}
        if result.get("error") == "NotSerializableError":
            raise NotSerializableError(
                str(attrs.get("name")), str(attrs.get("path")), str(attrs.get("reason"))
            )
        if result.get("error") == "OwnershipLostError":
            raise OwnershipLostError(self.key, str(attrs.get("owner")))
        self._checkpoint_failed(snapshot.position, f"{result.get('error')}: {result.get('message')}")

    def _check_size(self, size: int, position: int) -> None:
        """Warn once when the state outgrows ``max_size``, and once when the disk is about to fill."""
        if self.max_size is not None and size > self.max_size and "limit" not in self._size_warned:
            self._size_warned.add("limit")
            self._warn(messages.size_limit_text(position, size, self.max_size))
        free = self.store.free_space()
        if free is None:  # an object store
            return
        if free < 2 * size and "disk" not in self._size_warned:
            self._size_warned.add("disk")
            self._warn(messages.disk_space_text(free, str(self.store.path), size))
