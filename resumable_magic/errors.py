"""Errors and warnings, as data: each carries its culprit as attributes and says what to do next.

IPython shows an exception that has ``_render_traceback_`` by calling it instead of printing a
traceback, so every error here reaches a notebook user as its one-paragraph message, and the cell
still fails (later cells of a "Run all" do not run). Nothing here imports IPython.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CellStructureError",
    "CheckpointCorruptError",
    "CheckpointFormatError",
    "CheckpointWriteError",
    "DaskMissingError",
    "DeviceMissingError",
    "ExternalResourceError",
    "InputsChangedError",
    "IterationMismatchError",
    "KeyMismatchError",
    "LegacyFolderError",
    "NoCheckpointError",
    "NoContentIdentityError",
    "NotSerializableError",
    "OptionError",
    "OwnershipLostError",
    "ResubmitRefusedError",
    "ResumableError",
    "ResumableWarning",
    "ResumeRefusedError",
    "RunFolderGoneError",
    "RunInterrupted",
    "RunOwnedError",
    "ShardFailedError",
    "ShardingChangedError",
    "StateVariableError",
    "SupervisorUsageError",
    "UntrustedCheckpointError",
    "ValuesDroppedError",
]


def _path(path: object) -> Path:
    """A local path as a :class:`~pathlib.Path`; a location on object storage (``s3://...``, a
    ``storage.RemotePath``) is kept as it is, so that its URL survives."""
    if isinstance(path, (str, Path)) and "://" not in str(path):
        return Path(path)
    return path  # type: ignore[return-value]


def _render(exc: BaseException) -> list[str]:
    # Red name, then the message: the look of an IPython error line, without the traceback.
    return [f"\x1b[0;31m{type(exc).__name__}\x1b[0m: {exc}"]


def _rebuild(cls: type[BaseException], message: str, attributes: dict[str, object]) -> BaseException:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(attributes)
    return error


class ResumableError(Exception):
    """Base class of every error this library raises on purpose."""

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross process boundaries (Dask workers, a forked writer): rebuild them from their
        # message and attributes, whatever their constructor takes.
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))

    def _render_traceback_(self) -> list[str]:
        return _render(self)


class OptionError(ResumableError, ValueError):
    """An option's value is malformed (``--every 5x``, a key with ``..``)."""

    def __init__(self, option: str, value: object, expected: str) -> None:
        self.option, self.value = option, value
        super().__init__(f"{option} {value!r} is not valid: {expected}.")


class SupervisorUsageError(ResumableError, ValueError):
    """`resumable run` was given something it cannot run (a missing notebook, ``-p`` without a
    parameters cell, a run another supervisor is executing): refused before anything runs."""

    def __init__(self, culprit: str, message: str) -> None:
        self.culprit = culprit
        super().__init__(message)


class NoContentIdentityError(ResumableError, TypeError):
    """A value has nothing but its identity to tell it apart (a generator, an open file, a lock), so no
    digest of it can be the same in another process: it cannot key a run."""

    def __init__(self, path: str, what: str) -> None:
        self.path, self.what = path, what
        super().__init__(
            f"{path} is {what}, which has no content that identifies it in another process (only its "
            f"identity, which changes with each kernel)."
        )


class CellStructureError(ResumableError, ValueError):
    """The cell is not setup, one top-level loop, then teardown."""


class StateVariableError(ResumableError, NameError):
    """A named state variable does not exist when the loop is about to start."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class NotSerializableError(ResumableError, TypeError):
    """A named variable cannot be checkpointed; ``path`` points at the offending object."""

    def __init__(self, name: str, path: str, reason: str) -> None:
        self.name, self.path, self.reason = name, path, reason
        where = f"{path}" if path != name else "it"
        super().__init__(
            f"Cannot checkpoint {name!r}: dill cannot pickle {where} ({reason}). "
            f"Name fewer variables, or make the object picklable (define __getstate__/__reduce__, "
            f"or keep the unpicklable part outside the named state)."
        )


class ExternalResourceError(NotSerializableError):
    """A named variable holds a view of something outside the process (a file open for writing, a
    writable memory map, a socket, a database connection, a pool, a running thread or process): no
    checkpoint can capture it, and after a crash the restored value would not match it. Raised by the
    first checkpoint, before the loop runs. ``resource`` (also ``reason``) says what it is."""

    def __init__(self, name: str, path: str, resource: str, consequence: str = "", remedy: str = "") -> None:
        self.name, self.path, self.reason, self.resource = name, path, resource, resource
        subject = "it" if path == name else path
        consequence = (
            consequence
            or "no checkpoint can capture it, so after a crash it would not match the restored state"
        )
        remedy = remedy or "Create it inside the loop (or close it before the loop and reopen it in the loop)"
        ResumableError.__init__(
            self,
            f"Cannot checkpoint {name!r}: {subject} is {resource}: {consequence}. {remedy}. Name fewer "
            f"variables, or keep it out of the named ones.",
        )


class CheckpointCorruptError(ResumableError):
    """A checkpoint file failed its checksum or could not be parsed."""

    def __init__(self, path: object, reason: str) -> None:
        self.path, self.reason = _path(path), reason
        super().__init__(f"Checkpoint file {str(path)!r} is damaged: {reason}.")


class CheckpointWriteError(ResumableError, OSError):
    """A checkpoint the run cannot go on without (the first, the final) could not be written."""

    def __init__(self, path: object, what: str, cause: OSError, kept: str) -> None:
        self.path, self.cause = _path(path), cause
        super().__init__(
            f"Cannot write the {what} to {str(path)!r}: {cause.strerror or cause}. Free space or choose "
            f"another --dir, then run the cell again; {kept}. The variables in the notebook are as the "
            f"loop left them."
        )


class CheckpointFormatError(ResumableError):
    """A checkpoint was written by an incompatible version of the on-disk format."""

    def __init__(self, path: object, found: object, supported: int) -> None:
        self.path, self.found, self.supported = _path(path), found, supported
        super().__init__(
            f"Checkpoint {str(path)!r} uses format version {found!r}; this resumable_magic reads "
            f"version {supported}. Open it with the version that wrote it, or start over with --fresh."
        )


class NoCheckpointError(ResumableError, FileNotFoundError):
    """No readable checkpoint exists for a key."""

    def __init__(self, key: str, directory: object, detail: str = "") -> None:
        # A local folder as a Path; a URL's location (storage's RemotePath) as it is.
        self.key, self.directory = key, Path(directory) if isinstance(directory, str) else directory
        extra = f" {detail}" if detail else ""
        super().__init__(f"No readable checkpoint for key {key!r} in {str(directory)!r}.{extra}")


class ResumeRefusedError(ResumableError, RuntimeError):
    """Resuming would give a silently wrong result, so the run did not start."""


class IterationMismatchError(ResumeRefusedError):
    """The loop's items at the checkpoint's position differ from the ones the checkpoint saw."""

    def __init__(self, position: int, header: str, why: str | None = None) -> None:
        self.position = position
        why = why or (
            "Its order is not reproducible across kernel restarts (a set of strings, os.listdir(), "
            "a dict built from a set): iterate over sorted(...)"
        )
        super().__init__(
            f"Cannot resume: the loop `{header}` does not yield the same items as when the checkpoint "
            f"was written (item {position - 1} differs), so resuming would skip the wrong items. "
            f"{why} and start over with --fresh."
        )


class InputsChangedError(ResumeRefusedError):
    """Simple values the cell reads from outside changed since the checkpoint was written."""

    def __init__(self, changes: Mapping[str, tuple[str, str]], finished: bool) -> None:
        self.changes = dict(changes)
        lines = "; ".join(f"{n}: {old} then, {new} now" for n, (old, new) in sorted(self.changes.items()))
        what = "the finished run" if finished else "the checkpoint"
        super().__init__(
            f"Cannot {'replay' if finished else 'resume'}: values the cell reads changed since {what} "
            f"was written ({lines}). Either start over with --fresh, or accept the new values and "
            f"{'continue' if finished else 'resume'} with --accept-changes (to extend a run), or give "
            f"each parameter set its own checkpoint with --params NAME ... (or --name)."
        )


class KeyMismatchError(ResumeRefusedError):
    """A run folder's records name another key than the one it was opened for: it holds another run."""

    def __init__(self, key: str, recorded: object, folder: Any) -> None:
        # folder: a local Path or a storage.RemotePath (an s3:// URL keeps its form)
        self.key, self.recorded, self.folder = key, recorded, _path(folder)
        found = f"run {recorded!r}" if isinstance(recorded, str) else "a run whose records name no key"
        super().__init__(
            f"Folder {str(folder)!r} holds {found}, not run {key!r}, so it is not read as {key!r}: that "
            f"would give another run's values. Nothing was run or changed. If the folder was renamed or "
            f"copied by hand, give it back its own name (`resumable status` lists each run with its "
            f"folder), or delete it to start {key!r} over."
        )


class LegacyFolderError(ResumeRefusedError):
    """The folder an earlier version gave a key holds a run that is not recorded as that key (or is
    found twice), so whether it is this run's cannot be told: nothing is run. ``found`` says what the
    folder holds, ``remedy`` what to do (:mod:`resumable_magic.store.oldfolders` words both)."""

    def __init__(
        self, key: str, folder: Any, recorded: object, new_folder: Any, found: str, remedy: str
    ) -> None:
        # folders: local Paths or storage.RemotePaths (an s3:// URL keeps its form)
        self.key, self.folder, self.recorded = key, _path(folder), recorded
        self.new_folder = _path(new_folder)
        super().__init__(
            f"Run {key!r} has no folder of its own yet ({str(new_folder)!r}), and {str(folder)!r}, the "
            f"folder earlier versions of resumable_magic gave it, {found}. Nothing was run or changed. "
            f"{remedy}"
        )


class DeviceMissingError(ResumeRefusedError):
    """The checkpoint holds tensors on a device (a GPU) that this process does not have."""

    def __init__(self, device: str) -> None:
        self.device = device
        super().__init__(
            f"Cannot restore: the checkpoint holds PyTorch tensors on {device}, a device this machine "
            f"does not have, so nothing was loaded. To load them into the CPU's memory instead, pass "
            f'map_location="cpu" to Resumable(...) or load(...).'
        )


class RunOwnedError(ResumableError, RuntimeError):
    """Another live process holds the run's lease: running the same key twice at once is refused."""

    def __init__(self, key: str, owner: str, timeout: float) -> None:
        self.key, self.owner, self.timeout = key, owner, timeout
        super().__init__(
            f"Run {key!r} is being executed by another process: {owner}. Two processes writing one "
            f"run's checkpoints would overwrite each other's work, so this one did not start and "
            f"nothing was changed. Wait for it to finish, stop it, or give this run another --name. "
            f"An owner whose process is gone, or whose heartbeat is older than its lease timeout "
            f"({timeout:g} s), is taken over automatically."
        )


class ResubmitRefusedError(ResumableError, RuntimeError):
    """The board refused to start a run again: ``reason`` says why (nothing was started)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key, self.reason = key, reason
        super().__init__(f"Run {key!r} was not resubmitted: {reason}")


class OwnershipLostError(ResumableError, RuntimeError):
    """This process's lease on a run was taken over; it must not write that run's checkpoints again."""

    def __init__(self, key: str, owner: str) -> None:
        self.key, self.owner = key, owner
        super().__init__(
            f"Run {key!r} was taken over by {owner} (this process sent no heartbeat for longer than "
            f"its lease timeout: suspended, or a single step held the interpreter that long). This "
            f"process no longer writes the run's checkpoints, so the loop stopped here; the run goes "
            f"on in the new owner. Its checkpoints are untouched by this process."
        )


class RunFolderGoneError(OwnershipLostError):
    """The run's lease file (or its whole folder) disappeared while the loop ran: no other process
    took the run over, the checkpoints simply have nowhere to go."""

    def __init__(self, key: str, lease_file: str) -> None:
        self.key, self.owner, self.lease_file = key, "nobody (the lease file is gone)", lease_file
        ResumableError.__init__(
            self,
            f"Run {key!r}: its lease file {lease_file!r} disappeared while the loop ran (the run folder "
            f"was deleted or moved, or the file was removed; no other process took the run over). "
            f"Checkpoints cannot be written there any more, so the loop stopped here; the variables in "
            f"this kernel keep their values. Put the folder back and run the cell again to resume from "
            f"its last checkpoint, or run it again to start over.",
        )


class ValuesDroppedError(ResumeRefusedError):
    """A finished run's final values were deleted by ``resumable gc --final-values``."""

    def __init__(self, key: str, finished: str) -> None:
        self.key = key
        super().__init__(
            f"Run {key!r} finished ({finished}), but its final values were deleted by "
            f"`resumable gc --final-values`, so they cannot be restored. It is not run again by "
            f"accident: use --fresh to run it again."
        )


# -- sharded maps and sweeps (resumable_magic.distributed) --------------------------------------------


class DaskMissingError(ResumableError, ImportError):
    """Dask's distributed scheduler is not installed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(
            f"Sharded maps run on Dask's distributed scheduler, which is not installed ({cause}): "
            f'pip install "resumable_magic[dask]" (or "dask[distributed]").'
        )


class ShardingChangedError(ResumeRefusedError):
    """A map's folder holds shards of another sharding than the one asked for."""

    def __init__(self, key: str, directory: Any, found: Sequence[int], asked: int | None) -> None:
        # directory: a local Path or a storage.RemotePath (an s3:// URL keeps its form)
        self.key, self.directory, self.found, self.asked = key, directory, tuple(found), asked
        counts = " and ".join(str(n) for n in self.found)
        what = f"this call asks for {asked}" if asked is not None else "which one to resume is unclear"
        super().__init__(
            f"Map {key!r} in {str(directory)!r} was started with {counts} shards; {what}. Each shard "
            f"holds partial results by item index, so another sharding cannot reuse them and mixing "
            f"them would be silently wrong. Call again with shards={self.found[0]}, give this map "
            f"another key, or delete the folder {str(directory / key)!r} to start over."
        )


class ShardFailedError(ResumableError, RuntimeError):
    """A shard (or sweep member) refused to run or failed inside the library; names the run."""

    def __init__(self, run_key: str, error: BaseException) -> None:
        self.run_key, self.error_type = run_key, type(error).__name__
        super().__init__(f"Run {run_key!r}: {type(error).__name__}: {error}")

    def __reduce__(self) -> tuple[Any, ...]:  # travels back from a Dask worker
        return (_rebuild_failure, (self.run_key, self.error_type, str(self)))


def _rebuild_failure(run_key: str, error_type: str, message: str) -> ShardFailedError:
    error = ShardFailedError.__new__(ShardFailedError)
    error.run_key, error.error_type = run_key, error_type
    Exception.__init__(error, message)
    return error


class RunInterrupted(KeyboardInterrupt):
    """The loop stopped at an iteration boundary on request (SIGINT/SIGTERM), checkpoint written."""

    def __init__(self, message: str, position: int, signal_name: str) -> None:
        self.position, self.signal_name = position, signal_name
        super().__init__(message)

    def _render_traceback_(self) -> list[str]:
        return _render(self)


class ResumableWarning(UserWarning):
    """Something the user should know that does not stop the run (state that will not survive, ...)."""


class UntrustedCheckpointError(CheckpointCorruptError):
    """A checkpoint file is refused before anything in it is unpickled: someone else owns it or can
    write it, or its signature does not verify with this user's key (see ``resumable_magic.trust.keys``).

    A subclass of :class:`CheckpointCorruptError`, so readers pass over it the same way (an older
    trusted checkpoint is used; a listing reports it), but with its own message.
    """

    def __init__(self, path: object, reason: str, remedy: str = "", what: str = "checkpoint file") -> None:
        self.path, self.reason, self.remedy = _path(path), reason, remedy
        ResumableError.__init__(
            self,
            f"Refusing to load {what} {str(path)!r}: {reason}. Loading a checkpoint runs code from it, "
            f"so only checkpoints written with your key, in files that you own and nobody else can "
            f"write, are loaded (as ssh does with its keys).{' ' + remedy if remedy else ''}",
        )
