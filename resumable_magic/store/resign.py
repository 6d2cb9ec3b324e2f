"""``resumable trust PATH``: verify a run folder's checkpoints and sign them again with the user's key.

For checkpoints the user vouches for (their own from another machine or key, or a colleague's copy):
every checksum is verified, damaged files are skipped and reported (never signed), and the run's
files are made private. A local operation: on object storage there are no owners to fix, and a
checkpoint is trusted by its signature alone. It takes the run's lease, so a run being executed
(which writes with its own key) is refused.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from resumable_magic.errors import CheckpointCorruptError, CheckpointFormatError, ResumableError
from resumable_magic.lease.lease import Lease
from resumable_magic.storage.blobs import file_hashes
from resumable_magic.storage.local import fsync_dir, user_name, write_atomic
from resumable_magic.store.catalog import run_folders
from resumable_magic.store.layout import MANIFEST_RE
from resumable_magic.store.records import BLOB_HASHES, check_manifest, manifest_blobs, seal, unseal
from resumable_magic.trust.keys import signing_key

__all__ = ["TrustReport", "find_runs", "trust_run"]


def find_runs(path: Path) -> list[Path]:
    """``path`` if it is a run folder, else every run folder under it (nested keys included)."""
    return sorted((Path(str(folder)) for folder in run_folders(path)), key=lambda p: p.parts)


@dataclass
class TrustReport:
    """What :func:`trust_run` did to one run folder."""

    run: Path
    signed: list[str] = field(default_factory=list)  # file names re-signed
    skipped: list[str] = field(default_factory=list)  # "name: why" of damaged files left alone
    modes_fixed: int = 0
    notes: list[str] = field(default_factory=list)


def _own_files(run: Path) -> Iterator[Path]:
    yield run
    for folder in (run, run / "objects"):
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.name == "objects" or not entry.is_dir(follow_symlinks=False):
                    yield Path(entry.path)


def _folders_between(top: Path | None, run: Path) -> list[Path]:
    """``top`` and the folders below it that hold ``run`` (not ``run`` itself)."""
    if top is None or top == run or os.name != "posix":
        return []
    try:
        parts = run.relative_to(top).parts
    except ValueError:
        return []
    return [top.joinpath(*parts[:i]) for i in range(len(parts))]


def trust_run(run: Path, top: Path | None = None) -> TrustReport:
    """Re-sign the run at ``run`` with the user's key after verifying every checksum, and make its
    files private. Damaged files are skipped (and reported), never signed. ``top``: the folder the
    user named, when ``run`` was found under it; the folders from it down to ``run`` lose group and
    other write permission.

    Refuses (:class:`~resumable_magic.errors.ResumableError`) a run with files owned by someone else
    (copy it: ``cp -r`` makes the copy yours) and a run being executed (its lease is live).
    """
    report = TrustReport(run)
    signing_key()  # a missing or malformed key fails here, before anything changes
    me = os.geteuid() if os.name == "posix" else None
    for path in _own_files(run):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise ResumableError(
                f"{str(path)!r} is a symbolic link: copy the run folder (cp -rL) and trust the copy"
            )
        if me is not None and st.st_uid != me:
            raise ResumableError(
                f"{str(path)!r} is owned by {user_name(st.st_uid)} and you are {user_name(me)}: nothing in "
                f"{str(run)!r} was changed. Copy the run folder, which makes the copy yours (cp -r "
                f"{shlex.quote(str(run))} COPY), then run `resumable trust COPY`"
            )
    for folder in _folders_between(top, run):
        st = os.stat(folder)
        if st.st_mode & 0o022 and st.st_uid == me:
            os.chmod(folder, stat.S_IMODE(st.st_mode) & ~0o022)
            report.modes_fixed += 1
    lease = Lease(run, run.name)
    lease.acquire()  # RunOwnedError while a live process executes the run: it writes with its own key
    try:
        for path in _own_files(run):
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            private = 0o700 if path.is_dir() else 0o600
            if mode != private:
                os.chmod(path, private)
                report.modes_fixed += 1
        with lease.fenced():
            for path in sorted(p for p in run.iterdir() if MANIFEST_RE.match(p.name) or p.name == "DONE"):
                try:
                    body = unseal(path, verify=False)
                    if path.name != "DONE":
                        check_manifest(path, body)
                        hashes = {}
                        for name, _ in manifest_blobs(body):
                            blob = run / "objects" / name
                            try:
                                fast, strong = file_hashes(blob)
                            except OSError as exc:
                                raise CheckpointCorruptError(
                                    blob, f"cannot be read ({exc.strerror})"
                                ) from None
                            if fast != name:
                                raise CheckpointCorruptError(blob, "its checksum does not match its content")
                            hashes[name] = strong
                        body[BLOB_HASHES] = hashes
                except (CheckpointCorruptError, CheckpointFormatError) as exc:
                    report.skipped.append(f"{path.name}: {exc}")
                    continue
                write_atomic(path, seal(body))
                report.signed.append(path.name)
            fsync_dir(run)
    finally:
        lease.release(undo=True)
    parent = run.parent if top is None or top == run else top
    with contextlib.suppress(OSError):
        if os.name == "posix" and os.stat(parent).st_mode & 0o022:
            report.notes.append(
                f"the folder above it, {str(parent)!r}, is writable by others: checkpoints in it are "
                f"refused until you make it private (chmod go-w {shlex.quote(str(parent))})"
            )
    return report
