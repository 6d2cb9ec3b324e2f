"""Files open for reading: reopened on restore at the position they were at.

dill pickles an open file as its name and mode and, by default (its ``HANDLE_FMODE``), reopens it at
the start: a loop reading a file line by line would read its first lines again after a resume. A
file open for reading on a regular file is pickled here instead as its name, mode, encoding and
position (``tell()``), and reopened there on restore; a file that is no longer there is an error
when the checkpoint is loaded (dill would hand an empty temporary file instead). Files open for
writing are refused before this runs (:mod:`.resources`); closed files, the standard streams and
files without a name (an ``os.fdopen``) go to dill as before.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from typing import Any

__all__ = ["is_standard_stream", "reduce_file"]


def is_standard_stream(handle: Any) -> bool:
    """True for ``sys.stdin``/``stdout``/``stderr`` (as they are now, and as they were at start up),
    the buffers and raw files under them, and files on descriptors 0, 1 and 2."""
    for name in ("stdin", "stdout", "stderr", "__stdin__", "__stdout__", "__stderr__"):
        stream = getattr(sys, name, None)
        for _ in range(3):  # the text stream, its buffer, the raw file
            if stream is None:
                break
            if stream is handle:
                return True
            stream = getattr(stream, "buffer", None) or getattr(stream, "raw", None)
    try:
        return handle.fileno() in (0, 1, 2)
    except (ValueError, OSError):
        return False


def reduce_file(handle: Any) -> Any:
    """A readable regular file with a path as its name: reopened at its position on restore; anything
    else: None (dill's reduction, as before)."""
    name = getattr(handle, "name", None)
    try:
        if handle.closed or handle.writable() or not isinstance(name, str) or is_standard_stream(handle):
            return None
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        position = handle.tell()  # OSError while `for line in f` iterates a text file: as dill does
    except (ValueError, io.UnsupportedOperation):
        return None
    if isinstance(handle, io.TextIOWrapper):
        return _reopen_file, (name, "text", position, handle.encoding, handle.errors)
    return _reopen_file, (name, "raw" if isinstance(handle, io.FileIO) else "binary", position, None, None)


def _reopen_file(name: str, kind: str, position: int, encoding: str | None, errors: str | None) -> Any:
    if kind == "text":
        handle: Any = open(name, encoding=encoding, errors=errors)  # noqa: SIM115 (the restored object)
    else:
        handle = open(name, "rb", buffering=0 if kind == "raw" else -1)  # noqa: SIM115
    try:
        handle.seek(position)
    except BaseException:
        handle.close()
        raise
    return handle
