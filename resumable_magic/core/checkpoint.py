"""Taking a run's checkpoints: capture the state, write it here or by a forked writer, account for it.

:class:`Checkpointer` is composed into a :class:`~resumable_magic.core.run.Resumable` as
``run.checkpoints``. The run decides *when*: at a boundary it asks :meth:`CheckpointPolicy.due
<resumable_magic.core.policy.CheckpointPolicy.due>`, which reads the accounting kept here (the time
and position of the last checkpoint). This object does the taking, and reports each checkpoint's
cost to the policy (which learns its adaptive interval from it), to progress, and in size warnings.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from resumable_magic.core import messages
from resumable_magic.core.forked_writer import FORK_MIN_BYTES, ForkedWriter, fork_refusal
from resumable_magic.core.iteration import MISSING
from resumable_magic.core.nested import INNER_KEY
from resumable_magic.core.origin import run_origin
from resumable_magic.core.policy import CheckpointPolicy
from resumable_magic.errors import (
    CheckpointWriteError,
    ExternalResourceError,
    NotSerializableError,
    OwnershipLostError,
    RunFolderGoneError,
    StateVariableError,
)
from resumable_magic.progress.model import ProgressModel
from resumable_magic.progress.snapshots import CheckpointStats
from resumable_magic.progress.text import format_duration, format_size
from resumable_magic.state import rng
from resumable_magic.state.fingerprint import fingerprint_item
from resumable_magic.state.serialize import EncodedState, encode_state
from resumable_magic.storage.blobs import digest
from resumable_magic.storage.crashpoints import crash_point
from resumable_magic.store.runstore import RunStore

__all__ = ["RNG_KEY", "WRITER_WAIT", "Checkpointer"]

RNG_KEY = "__resumable_rng__"
WRITER_WAIT = 600.0  # seconds to wait for a background writer before killing it


def _versions() -> dict[str, str]:
    import dill

    from resumable_magic._version import __version__

    found = {"python": sys.version.split()[0], "dill": dill.__version__, "resumable_magic": __version__}
    return found | rng.versions()  # numpy's, torch's: a resume on another version is warned about


class Checkpointer:
    """Takes the checkpoints of one run (see the module doc).

    Args:
        store: the run's store; only its public methods are used.
        lease: the run's lease (a forked writer fences its commit with the lease's child copy).
        policy: learns the adaptive interval from each checkpoint's cost.
        progress: where checkpoints and their warnings are reported.
        key: the run's name, for errors.
        namespace, names: the state variables (``namespace[name]``), saved at every checkpoint.
        final_names: extra names saved with the final checkpoint only (a ``for`` loop's target).
        inputs, params, code, header: recorded in every manifest (a resume checks them).
        max_size: warn once when the state grows larger (bytes; None: no limit).
    """

    def __init__(
        self,
        store: RunStore,
        lease: Any,
        policy: CheckpointPolicy,
        progress: ProgressModel,
        *,
        key: str,
        namespace: MutableMapping[str, Any],
        names: Sequence[str],
        final_names: Sequence[str] = (),
        inputs: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        code: str | None = None,
        header: str = "loop",
        max_size: int | None = None,
    ) -> None:
        self.store, self.lease, self.policy, self.progress = store, lease, policy, progress
        self.key = key
        self.namespace = namespace
        self.names, self.final_names = tuple(names), tuple(final_names)
        self.inputs, self.params, self.code, self.header = (
            dict(inputs or {}),
            dict(params or {}),
            code,
            header,
        )
        self.max_size = max_size
        self.origin = run_origin()  # the notebook or script the run comes from, for the board's Resubmit
        self.writer: ForkedWriter | None = None  # a background writer in flight (one at a time)
        # Each background write: the loop's stall, the writer's time, the memory it ended up copying.
        self.background_writes: list[dict[str, Any]] = []
        # The accounting the policy's decision reads: the newest committed generation (None: none yet,
        # or the newest found on opening), its position, and when the last checkpoint was taken or
        # tried (monotonic; a failed one counts, so that a failing disk is not retried at every boundary).
        self.last_generation: int | None = None
        self.last_position = 0
        self.last_steps = 0  # a nested loop's inner iterations at the newest checkpoint (its --every Nit)
        self._steps_taken = 0  # ... at the checkpoint being taken
        self.last_time = time.monotonic()
        self.last_size = 0  # bytes of the newest committed state: decides whether to fork
        self._said_mode = False
        self._size_warned: set[str] = set()

    def take(
        self,
        item: Any,
        position: int,
        total: int | None,
        history: list[dict[str, Any]],
        *,
        first: bool = False,
        final: bool = False,
        sync: bool = False,
        nested: tuple[dict[str, Any], dict[str, Any]] | None = None,
    ) -> int:
        """Checkpoint now, at ``position``: synchronously, or by a forked child when the state is large.

        ``item`` is the item of the iteration just completed (:data:`~.iteration.MISSING`: none);
        ``history`` the run's events for the metadata; ``nested`` a nested loop's record (its manifest
        part, with ``steps``, and its state part: :meth:`.nested.Nest.record`). The first and final checkpoints, and the one
        taken on a stop request, are synchronous (the run must not go on, or end, before they are
        durable). Returns the newest committed generation.
        """
        sync = sync or first or final
        if self.writer is not None:
            if not sync:
                return self.last_generation or 0  # one background writer at a time: due again later
            self.collect(wait=True)
        with self.store.fence():  # a writer that lost the run stops before writing anything
            pass
        state, manifest = self._capture(item, position, total, history, final)
        if nested is not None:
            manifest.update(nested[0])
            state[INNER_KEY] = nested[1]
        self._steps_taken = int(manifest.get("steps") or 0)
        refusal = "synchronous checkpoint" if sync else fork_refusal(self.last_size, self.store.can_fork)
        self.progress.checkpoint_started(position)
        if refusal is None:
            # torch's reducers must not run in a forked child (its thread pools do not survive fork):
            # with torch loaded the state is pickled here, and the child only writes the bytes.
            encoded = self._encode(state, manifest, final) if "torch" in sys.modules else None
            self.writer = ForkedWriter.start(
                lambda: self._write(state, manifest, final, child=True, encoded=encoded), position
            )
            self.last_time = time.monotonic()
            if not self._said_mode:
                self._said_mode = True
                self._info(
                    f"The state is {format_size(self.last_size)}: checkpoints are written by a background "
                    f"process (fork), so the loop stalls for {format_duration(self.writer.stall)} instead "
                    f"of the whole write."
                )
            return self.last_generation or 0
        if not sync and not self._said_mode and self.last_size >= FORK_MIN_BYTES:
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
                raise CheckpointWriteError(self.store.path, what, exc, self.kept()) from None
            self._failed(position, str(exc))
            return self.last_generation or 0
        return self._committed(result, position, time.monotonic() - started, background=False)

    def collect(self, wait: bool, timeout: float = WRITER_WAIT) -> None:
        """Take in a background writer's result: a committed checkpoint, or an error raised or reported."""
        writer = self.writer
        if writer is None:
            return
        result = writer.wait(timeout) if wait else writer.poll()
        if result is None:
            return
        self.writer = None
        if "ok" in result:
            self.background_writes.append(
                {"stall": writer.stall, "seconds": result.get("seconds"), "private": result.get("private")}
            )
            self._committed(result["ok"], writer.position, writer.stall, background=True)
            return
        attrs = result.get("attrs") or {}
        if result.get("error") == "ExternalResourceError":
            raise ExternalResourceError(
                str(attrs.get("name")), str(attrs.get("path")), str(attrs.get("reason"))
            )
        if result.get("error") == "NotSerializableError":
            raise NotSerializableError(
                str(attrs.get("name")), str(attrs.get("path")), str(attrs.get("reason"))
            )
        if result.get("error") == "OwnershipLostError":
            raise OwnershipLostError(self.key, str(attrs.get("owner")))
        if result.get("error") == "RunFolderGoneError":
            raise RunFolderGoneError(self.key, str(attrs.get("lease_file")))
        self._failed(writer.position, f"{result.get('error')}: {result.get('message')}")

    def kept(self) -> str:
        """What is kept when the run stops now: the newest checkpoint, said for the user."""
        if self.last_generation is None:
            return "no checkpoint was written"
        return f"the checkpoint at iteration {self.last_position:,} is kept: run again to resume from it"

    # -- the steps of one checkpoint --------------------------------------------------------------------
    def _capture(
        self, item: Any, position: int, total: int | None, history: list[dict[str, Any]], final: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The state to save (references, not copies) and the manifest's metadata, at this instant."""
        names = self.names + (self.final_names if final else ())
        gone = [n for n in self.names if n not in self.namespace]
        if gone:
            raise StateVariableError(
                gone[0],
                f"State variable {gone[0]!r} no longer exists at iteration {position:,}: the loop "
                f"deleted it. The checkpoint at iteration {self.last_position:,} is kept; keep the "
                f"variable defined, or remove it from the names.",
            )
        state = {n: self.namespace[n] for n in names if n in self.namespace}
        state[RNG_KEY] = rng.capture()
        manifest: dict[str, Any] = {
            "created": time.time(),
            "position": position,
            "total": total,
            "names": [n for n in names if n in state],
            "item": fingerprint_item(item) if item is not MISSING else None,
            "inputs": self.inputs,
            "params": self.params,
            "code": self.code,
            "code_digest": digest(self.code.encode()) if self.code is not None else None,
            "header": self.header,
            "final": final,
            "versions": _versions(),
            "rng_settings": rng.settings(),  # compared on resume, like inputs
            "history": history,
            "origin": self.origin,
        }
        return state, manifest

    def _encode(self, state: dict[str, Any], manifest: dict[str, Any], final: bool) -> EncodedState:
        try:
            encoded = encode_state(state)
        except NotSerializableError:
            if not final or not self.final_names:
                raise
            encoded = encode_state({n: v for n, v in state.items() if n not in self.final_names})
            manifest["names"] = [n for n in manifest["names"] if n not in self.final_names]
        if encoded.devices:  # checked before a restore: a GPU's tensors where there is none are refused
            manifest["devices"] = list(encoded.devices)
        return encoded

    def _write(
        self,
        state: dict[str, Any],
        manifest: dict[str, Any],
        final: bool,
        child: bool = False,
        encoded: EncodedState | None = None,
    ) -> dict[str, Any]:
        """Serialise (unless ``encoded`` already), store and commit one checkpoint (in this process, or
        in a forked child)."""
        if child:
            crash_point("background")
            self.store.fence = self.lease.in_child().fenced
            self.store.for_forked_child()  # its own S3 connections
        if encoded is None:
            encoded = self._encode(state, manifest, final)
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
        generation = self.store.commit(manifest, keep=self.last_generation)
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
        self.last_generation, self.last_position, self.last_size = generation, position, int(result["size"])
        self.last_steps = self._steps_taken
        self.last_time = time.monotonic()
        self.policy.checkpoint_done(blocked)
        if self.policy.over_budget_note:
            self._warn(self.policy.over_budget_note)
            self.policy.over_budget_note = None
        self._check_size(self.last_size, position)
        self.progress.checkpoint_finished(
            CheckpointStats(
                generation,
                position,
                float(result["created"]),
                self.last_size,
                blocked,
                int(result["written"]),
                "background" if background else "sync",
            )
        )
        return generation

    def _failed(self, position: int, reason: str) -> None:
        self.progress.checkpoint_failed(f"checkpoint at iteration {position:,} failed: {reason}")
        self._warn(
            f"The checkpoint at iteration {position:,} could not be written ({reason}); the loop goes "
            f"on and the previous checkpoint (iteration {self.last_position:,}) stays."
        )
        self.last_time = time.monotonic()

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

    def _info(self, text: str) -> None:
        self.progress.message("info", text)

    def _warn(self, text: str) -> None:
        self.progress.message("warning", text)
