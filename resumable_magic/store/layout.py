"""What a run folder holds: its files' names, the folder of a key, and what is read from it.

::

    <dir>/<key's folder>/       see :mod:`resumable_magic.store.keys` (``exp/α`` is ``exp/_~<digest>``)
      objects/<xxh3_128 hex>    pickled state; the name is the checksum
      manifest.<gen>.json       position, fingerprints, metadata, the state blob's digest; self-checksummed
      DONE                      completion record: names the final generation; self-checksummed
      owner.json, owner.lock    the lease of the process executing the run (see lease/lease.py)
      outcome.json              how the last run ended when it did not finish (interrupted, failed)
      autoresume.json           resumes after a kernel crash granted to JupyterLab (store/autoresume.py)

How the files are written and read is :mod:`resumable_magic.store.runstore`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from resumable_magic.errors import CheckpointCorruptError

__all__ = [
    "AUTORESUME_FILE",
    "MANIFEST_RE",
    "OUTCOME_FILE",
    "Checkpoint",
    "Glance",
    "ReadResult",
    "holds_run",
    "manifest_name",
]

MANIFEST_RE = re.compile(r"^manifest\.(\d+)\.json$")
OUTCOME_FILE = "outcome.json"
AUTORESUME_FILE = "autoresume.json"


def manifest_name(generation: int) -> str:
    """``manifest.00000003.json``: zero-padded, so that names sort as generations do."""
    return f"manifest.{generation:08d}.json"


def holds_run(names: list[str]) -> bool:
    """True when a folder holding ``names`` is a run's: it has a manifest, or a DONE record (a finished
    run whose values were dropped keeps only that)."""
    return any(MANIFEST_RE.match(name) or name == "DONE" for name in names)


@dataclass(frozen=True)
class Checkpoint:
    """A committed, verified checkpoint: its manifest and (when loaded) its state bytes."""

    generation: int
    manifest: dict[str, Any]
    state: bytes | bytearray = field(repr=False, default=b"")
    # Out-of-band buffers, in order: writable where local (bytearray or anonymous mmap), so arrays
    # restore uncopied.
    buffers: tuple[Any, ...] = field(repr=False, default=())

    @property
    def position(self) -> int:
        return int(self.manifest["position"])

    @property
    def created(self) -> float:
        return float(self.manifest["created"])


_GLANCE_MAX = 4 << 20  # a manifest is a few KiB; a larger file is not one a run wrote


@dataclass(frozen=True)
class Glance:
    """A run's newest generation as :meth:`RunStore.glance` saw it (unverified: for display only)."""

    generation: int | None
    position: int | None
    created: float | None
    total: int | None
    final: bool
    done: bool  # a DONE record is present


@dataclass
class ReadResult:
    """The newest good checkpoint (or None) and the damage found on the way to it."""

    checkpoint: Checkpoint | None
    problems: list[CheckpointCorruptError]
