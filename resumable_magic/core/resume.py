"""What a run starts from: the newest good checkpoint, checked against this run, and read back.

:func:`find_start` reads a run's store on opening and decides: start from the beginning, resume from
a checkpoint, or replay a finished run; it refuses (raises) when resuming would be wrong, before
anything runs. :func:`skip_completed` advances the loop's iterator past the completed iterations and
checks the item there against the checkpoint's; :func:`put_back` restores the variables and RNG
states. :func:`load` and :func:`variables_of` read a run's variables back, for scripts and other
notebooks.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from resumable_magic.core import messages
from resumable_magic.core.checkpoint import RNG_KEY
from resumable_magic.core.iteration import MISSING
from resumable_magic.core.nested import INNER_KEY
from resumable_magic.errors import (
    CheckpointFormatError,
    InputsChangedError,
    IterationMismatchError,
    NoCheckpointError,
    ResumableError,
    UntrustedCheckpointError,
    ValuesDroppedError,
)
from resumable_magic.progress.model import ProgressModel
from resumable_magic.progress.snapshots import ResumeInfo
from resumable_magic.state import rng
from resumable_magic.state.fingerprint import inputs_changed, item_matches
from resumable_magic.state.reach import align_recorded, split_code
from resumable_magic.state.serialize import decode_state
from resumable_magic.state.tensors import check_devices
from resumable_magic.storage.base import location
from resumable_magic.storage.paths import Where
from resumable_magic.store.layout import MANIFEST_RE, Checkpoint, ReadResult
from resumable_magic.store.runstore import RunStore

__all__ = [
    "Start",
    "check_rng",
    "default_directory",
    "find_start",
    "load",
    "put_back",
    "resume_info",
    "skip_completed",
    "variables_of",
]


def default_directory() -> Where:
    """``$RESUMABLE_DIR`` (a folder, or a URL such as ``s3://bucket/prefix``), else ``.resumable`` in
    the current working directory."""
    return location(os.environ.get("RESUMABLE_DIR") or ".resumable")


@dataclass
class Start:
    """Where a run starts, as :func:`find_start` decided."""

    checkpoint: Checkpoint | None = None  # what to resume (or replay) from; None: the beginning
    # The newest good generation found, also under --fresh: kept until the run's first commit lands.
    generation: int | None = None
    done: dict[str, Any] | None = None  # the DONE record when the run had finished
    history: list[dict[str, Any]] = field(default_factory=list)  # the checkpoint's events
    previous_end: str | None = None  # how the attempt before this one ended (from outcome.json)
    replayed: bool = False  # a finished run: restore its final values, do not run the loop


def find_start(
    store: RunStore,
    key: str,
    progress: ProgressModel,
    *,
    names: Sequence[str],
    inputs: Mapping[str, Any],
    code: str | None,
    fresh: bool = False,
    accept_changes: bool = False,
    map_location: str | None = None,
) -> Start:
    """Read the newest good checkpoint of ``store`` and decide where the run starts; change nothing.

    Damage found on the way is reported to ``progress`` (an older checkpoint is used). Raises when
    resuming would be wrong: the inputs changed (unless ``accept_changes``), the only checkpoints are
    untrusted, another version's format, or the final values were deleted.
    """
    try:
        result = store.read_latest()
    except CheckpointFormatError:
        if not fresh:
            raise
        result = ReadResult(None, [])  # --fresh: another version's checkpoint is not read at all
    untrusted = [p for p in result.problems if isinstance(p, UntrustedCheckpointError)]
    if untrusted and result.checkpoint is None and not fresh:
        # Not "start over": that would delete what a lost key makes unreadable. Name the newest
        # manifest (the checkpoint), else what there is (DONE, a folder).
        raise next((p for p in untrusted if MANIFEST_RE.match(p.path.name)), untrusted[0])
    for problem in result.problems:
        progress.message("warning", f"{problem} It is ignored; an older checkpoint is used if there is one.")
    checkpoint = result.checkpoint
    if result.problems and checkpoint is None:
        progress.message(
            "warning", "No readable checkpoint is left for this run, so it starts from the beginning."
        )
    start = Start(generation=checkpoint.generation if checkpoint else None)
    if checkpoint is None and not fresh:
        dropped = store.dropped_values()
        if dropped is not None:
            raise ValuesDroppedError(key, messages.when(float(dropped.get("finished") or 0)))
    if checkpoint is None or fresh:
        return start
    done = store.finished(checkpoint.generation)
    # The loop had ended (its final checkpoint holds the state after it, also after a `break`) and
    # the process died before the DONE record: the run is finished. Resuming the loop from that
    # checkpoint's position would run again the iteration that broke out of it.
    finished = done is not None or bool(checkpoint.manifest.get("final"))
    check_devices(checkpoint.manifest.get("devices") or (), map_location)
    _check_inputs(checkpoint, inputs, progress, accept_changes=accept_changes, finished=finished)
    old_code = checkpoint.manifest.get("code")
    if code is not None and old_code is not None and old_code != code:
        _warn_code_change(old_code, code, checkpoint.created, finished, progress)
    start.checkpoint, start.done = checkpoint, done
    start.history = list(checkpoint.manifest.get("history") or [])
    outcome = store.read_outcome() or {}
    if outcome.get("state") in ("interrupted", "failed"):
        error = outcome.get("error")
        start.previous_end = f"{outcome['state']}: {error}" if error else str(outcome["state"])
    start.replayed = finished and not accept_changes
    missing = [n for n in names if n not in checkpoint.manifest.get("names", [])]
    if missing:
        progress.message(
            "warning",
            f"{_quote(missing)} {'is' if len(missing) == 1 else 'are'} not in the checkpoint (named "
            f"since it was written) and keep{'s' if len(missing) == 1 else ''} the value setup gave.",
        )
    return start


def _check_inputs(
    checkpoint: Checkpoint,
    inputs: Mapping[str, Any],
    progress: ProgressModel,
    *,
    accept_changes: bool,
    finished: bool,
) -> None:
    # A global recorded as read by one function is compared under the key it has now.
    changes = inputs_changed(align_recorded(checkpoint.manifest.get("inputs") or {}, inputs), inputs)
    if changes and not accept_changes:
        raise InputsChangedError(changes, finished)
    if changes:
        progress.message("info", messages.accepted_changes_text(changes))


def _warn_code_change(old: str, new: str, created: float, finished: bool, progress: ProgressModel) -> None:
    """Warn about the cell's edits and, separately, about the code it calls; a
    checkpoint that recorded no code the loop calls (an older version's) is compared on the cell."""
    old_cell, old_called = split_code(old)
    new_cell, new_called = split_code(new)
    if old_cell != new_cell:
        progress.message("warning", messages.code_change_text(old_cell, new_cell, created, finished))
    if old_called is not None and old_called != (new_called or {}):
        text = messages.called_code_change_text(old_called, new_called or {}, created, finished)
        progress.message("warning", text)


def skip_completed(
    iterable: Iterable[Any], iterator: Iterator[Any], skip: int, expected: str | None, header: str
) -> Iterator[Any]:
    """``iterator`` (over ``iterable``) advanced past ``skip`` completed iterations, the item at the
    checkpoint's position checked against the fingerprint ``expected`` (None: not recorded)."""
    last: Any = MISSING
    if isinstance(iterable, (list, tuple, range)) and hasattr(iterator, "__setstate__"):
        if len(iterable) >= skip:
            last = iterable[skip - 1]
            iterator.__setstate__(skip)
    else:
        deque(islice(iterator, skip - 1), maxlen=0)
        last = next(iterator, MISSING)
    if last is MISSING or not item_matches(expected, last):
        raise IterationMismatchError(skip, header)
    return iterator


def resume_info(checkpoint: Checkpoint, previous_lease: Mapping[str, Any] | None) -> ResumeInfo:
    """Where a resumed run picks up, and how much work the attempt that ended had done past it (from
    its lease's last heartbeat: how far it got, and when). A nested loop's heartbeat counts inner
    iterations, as its checkpoints' ``steps`` do."""
    beat = previous_lease or {}
    at = int(checkpoint.manifest.get("steps", checkpoint.position))
    reached, seen, began = beat.get("position"), beat.get("heartbeat"), beat.get("acquired")
    redone: int | None = None
    redone_seconds: float | None = None
    if isinstance(reached, int) and isinstance(seen, (int, float)):
        redone = max(0, reached - at)
        # The attempt's own work began when it took the lease: when it wrote no checkpoint of its own
        # (it resumed from this one and died), the time before it started is no work of its.
        start = max(checkpoint.created, began) if isinstance(began, (int, float)) else checkpoint.created
        redone_seconds = max(0.0, seen - start) if redone else 0.0
    return ResumeInfo(checkpoint.position, checkpoint.created, checkpoint.generation, redone, redone_seconds)


def load_payload(checkpoint: Checkpoint, key: str, map_location: str | None = None) -> dict[str, Any]:
    """The checkpoint's variables and (under :data:`RNG_KEY`) RNG states, unpickled; nothing is put
    in place. A checkpoint that verified but cannot be loaded is a one-paragraph error. (Its devices
    were checked by :func:`find_start`, before anything ran.)"""
    try:
        return decode_state(checkpoint.state, checkpoint.buffers, map_location)
    except Exception as exc:
        raise ResumableError(
            f"The checkpoint of {key!r} (generation {checkpoint.generation}, iteration "
            f"{checkpoint.position:,}) verified but could not be loaded: {type(exc).__name__}: {exc}. "
            f"Nothing was changed. Make what it needs importable, or start over with --fresh."
        ) from None


def put_back(payload: dict[str, Any], namespace: MutableMapping[str, Any], names: Sequence[str]) -> None:
    """Put a loaded checkpoint's variables (those of ``names`` it holds) in place, then its RNG states
    (last: whatever ran before, such as a loop's iterable, drew from the states it found)."""
    namespace.update({n: payload[n] for n in names if n in payload})
    rng.restore(payload.get(RNG_KEY, {}))


def check_rng(
    manifest: Mapping[str, Any], progress: ProgressModel, *, accept_changes: bool, finished: bool
) -> None:
    """Before the loop resumes: refuse when a setting that decides reproducibility changed since the
    checkpoint (torch's deterministic algorithms...), like a changed input; warn once when a library
    whose random streams the checkpoint holds has another version now."""
    recorded = manifest.get("rng_settings") or {}
    now = rng.settings()
    changes = {k: (str(v), str(now[k])) for k, v in recorded.items() if k in now and now[k] != v}
    if changes and not accept_changes:
        raise InputsChangedError(changes, finished)
    if changes:
        progress.message("info", messages.accepted_changes_text(changes))
    then = manifest.get("versions") or {}
    versions = rng.versions()
    moved = [
        f"{name} {then[name]} then, {versions[name]} now"
        for name in versions
        if then.get(name, versions[name]) != versions[name]
    ]
    if moved:
        progress.message("warning", messages.versions_changed_text(moved))


def _quote(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def variables_of(checkpoint: Checkpoint, map_location: str | None = None) -> dict[str, Any]:
    """The named variables a verified checkpoint holds (its RNG states left out)."""
    check_devices(checkpoint.manifest.get("devices") or (), map_location)
    payload = decode_state(checkpoint.state, checkpoint.buffers, map_location)
    payload.pop(RNG_KEY, None)
    payload.pop(INNER_KEY, None)
    return payload


def load(
    key: str, dir: str | os.PathLike[str] | None = None, map_location: str | None = None
) -> dict[str, Any]:
    """The variables saved by the newest good checkpoint of run ``key``, as a dict.

    For scripts and other notebooks: ``load("train", dir=".resumable")["model"]``. PyTorch tensors
    go back to the device they were saved from; ``map_location="cpu"`` puts them all in the CPU's
    memory (a checkpoint from a GPU that this machine lacks is refused without it).
    """
    store = RunStore(dir if dir is not None else default_directory(), key)
    result = store.read_latest()
    if result.checkpoint is None:
        detail = " ".join(str(p) for p in result.problems)
        if store.dropped_values() is not None:
            detail = "The run finished, but `resumable gc --final-values` deleted its final values."
        raise NoCheckpointError(key, store.directory, detail)
    return variables_of(result.checkpoint, map_location)
