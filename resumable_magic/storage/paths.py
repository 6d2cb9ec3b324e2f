"""Names of places: a local :class:`~pathlib.Path` or a :class:`RemotePath` on an fsspec file system.

Pure path arithmetic, no I/O: what a run folder is called, which folders lie between a checkpoint
folder and a nested key's run folder, and which run folder a checkpoint file belongs to.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Union

__all__ = [
    "TMP_PREFIX",
    "RemotePath",
    "Where",
    "absolute",
    "as_where",
    "folders_down",
    "is_url",
    "run_folder",
]

TMP_PREFIX = ".tmp-"  # a file being written (local disk): <TMP_PREFIX><pid>-<random>
URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)


class RemotePath:
    """A location on an fsspec file system: a protocol and a ``/``-separated path.

    ``str()`` is the URL (``s3://bucket/prefix/key``); ``/``, ``name``, ``parent`` and ``relative_to``
    work as on a :class:`~pathlib.PurePosixPath`, which is enough for the store, the lease and the
    messages. Not a ``PathLike``: nothing can open it as a local file by mistake.
    """

    __slots__ = ("path", "protocol")

    def __init__(self, protocol: str, path: str | PurePosixPath) -> None:
        self.protocol = protocol
        self.path = PurePosixPath(str(path).strip("/") or ".")

    def __truediv__(self, other: str | os.PathLike[str]) -> RemotePath:
        return RemotePath(self.protocol, self.path / PurePosixPath(os.fspath(other)).as_posix())

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.protocol, self.path.parent)

    @property
    def parents(self) -> list[RemotePath]:
        return [RemotePath(self.protocol, p) for p in self.path.parents]

    def relative_to(self, other: RemotePath | Path) -> PurePosixPath:
        if not isinstance(other, RemotePath) or other.protocol != self.protocol:
            raise ValueError(f"{self} is not under {other}")
        return self.path.relative_to(other.path)

    def as_posix(self) -> str:
        return str(self)

    @property
    def fs_path(self) -> str:
        """The path as the file system names it (``bucket/prefix/key``, or ``/key`` in memory)."""
        text = "" if str(self.path) == "." else str(self.path)
        return f"/{text}" if self.protocol == "memory" else text

    def __str__(self) -> str:
        return f"{self.protocol}://{'' if str(self.path) == '.' else self.path}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and (self.protocol, self.path) == (other.protocol, other.path)

    def __hash__(self) -> int:
        return hash((self.protocol, self.path))


Where = Union[Path, RemotePath]  # noqa: UP007 (a runtime alias: Python 3.10 has no `type` statement)


def is_url(value: object) -> bool:
    """True for ``proto://...`` (``file://`` included); local paths are not URLs."""
    return isinstance(value, str) and URL_RE.match(value) is not None


def as_where(path: Where | str | os.PathLike[str]) -> Where:
    """``path`` as a :data:`Where`: a :class:`RemotePath` stays one, anything else is a local Path."""
    return path if isinstance(path, (Path, RemotePath)) else Path(path)


def absolute(where: Where) -> Where:
    """``where`` independent of the working folder: a local path made absolute (so that an
    ``os.chdir``, or a worker started elsewhere, still finds it); a URL as it is."""
    return Path(os.path.abspath(where)) if isinstance(where, Path) else where


def folders_down(top: Where, path: Where) -> list[Where]:
    """The folders below ``top`` down to ``path`` (a nested key's), ``path`` included."""
    try:
        parts = _relative(path, top).parts
    except ValueError:
        return [path]
    found: list[Where] = []
    current = top
    for part in parts:
        current = current / part
        found.append(current)
    return found or [path]


def _relative(path: Where, top: Where) -> PurePosixPath | Path:
    """``path`` relative to ``top``; ValueError when it is not below it (or of another kind)."""
    if isinstance(path, RemotePath):
        return path.relative_to(top)
    if isinstance(top, RemotePath):
        raise ValueError(f"{path} is not under {top}")
    return path.relative_to(top)


def relative_posix(path: Where, top: Where) -> str:
    """``path`` relative to ``top``, ``/``-separated; ValueError when it is not below it."""
    return _relative(path, top).as_posix()


def run_folder(path: Where) -> Where:
    """The run folder a checkpoint file belongs to (a blob's is above ``objects/``)."""
    folder = path.parent
    return folder.parent if folder.name == "objects" else folder
