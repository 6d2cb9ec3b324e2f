"""resumable_magic: notebook loops that survive kernel crashes.

``%load_ext resumable_magic`` registers the ``%%resumable`` cell magic. From plain Python, use
:class:`Resumable` and :func:`load`; :func:`register_rng` adds a library's global random generator to
what every checkpoint saves. Importing this package stays light: IPython is imported only
when the extension is loaded.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .errors import (
    CellStructureError,
    CheckpointCorruptError,
    CheckpointFormatError,
    CheckpointWriteError,
    DeviceMissingError,
    ExternalResourceError,
    InputsChangedError,
    IterationMismatchError,
    KeyMismatchError,
    LegacyFolderError,
    NoCheckpointError,
    NotSerializableError,
    OptionError,
    OwnershipLostError,
    ResumableError,
    ResumableWarning,
    ResumeRefusedError,
    RunInterrupted,
    RunOwnedError,
    StateVariableError,
    ValuesDroppedError,
)

__all__ = [
    "CellStructureError",
    "CheckpointCorruptError",
    "CheckpointFormatError",
    "CheckpointWriteError",
    "DeviceMissingError",
    "ExternalResourceError",
    "InputsChangedError",
    "IterationMismatchError",
    "KeyMismatchError",
    "LegacyFolderError",
    "NoCheckpointError",
    "NotSerializableError",
    "OptionError",
    "OwnershipLostError",
    "Resumable",
    "ResumableError",
    "ResumableWarning",
    "ResumeRefusedError",
    "RunInterrupted",
    "RunOwnedError",
    "StateVariableError",
    "ValuesDroppedError",
    "__version__",
    "load",
    "load_ipython_extension",
    "register_rng",
    "resumable_map",
    "resumable_sweep",
    "unload_ipython_extension",
]


def __getattr__(name: str) -> Any:
    # Lazy: `import resumable_magic` and `resumable --help` stay fast; dill loads on first use.
    if name == "Resumable":
        from .core.run import Resumable

        return Resumable
    if name == "load":
        from .core.resume import load

        return load
    if name == "register_rng":  # a library's global random generator, saved with every checkpoint
        from .state.rng import register_rng

        return register_rng
    if name in ("resumable_map", "resumable_sweep"):  # Dask itself is imported only when a map runs
        from .distributed import client

        return getattr(client, name)
    raise AttributeError(f"module 'resumable_magic' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """Called by ``%load_ext resumable_magic``."""
    from .frontends.magic import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .frontends.magic import unload_ipython_extension as unload

    unload(ipython)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the prebuilt JupyterLab extension is, for ``jupyter labextension develop`` (a wheel
    installs it to ``share/jupyter/labextensions`` itself)."""
    return [{"src": "labextension", "dest": "resumable-magic"}]
