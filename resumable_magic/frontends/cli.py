"""The ``resumable`` command: status, show, rm and gc over a checkpoint folder; ``run`` (its own module).

Exit codes: 0 ok, 1 failure (a missing run, a refused deletion), 2 usage. Errors go to stderr as one
line. Heavy modules (dill, the run machinery) are imported only by the subcommands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resumable_magic.progress.text import format_size

_COLOURS = {"finished": "32", "running": "33", "crashed": "31", "failed": "31", "interrupted": "90"}
COLUMNS = ("KEY", "PARAMS", "STATE", "PROGRESS", "LAST CHECKPOINT", "SIZE", "NOTE")
STATE = COLUMNS.index("STATE")


class _Failure(Exception):
    """A failure to report as one line on stderr, exit code 1."""


def when(wall_time: Any) -> str:
    if wall_time is None:
        return "-"
    import time

    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(wall_time)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"


def table_rows(runs: Sequence[Any]) -> list[tuple[str, ...]]:
    """The status table's cells, one tuple per run (shared with ``%resumable_status``)."""
    rows: list[tuple[str, ...]] = []
    for run in runs:
        note = run.error or run.note or ""
        if run.problems and not note:
            note = f"{len(run.problems)} damaged file(s) skipped"
        rows.append(
            (run.key, run.params(), run.state, run.progress(), when(run.created), format_size(run.size), note)
        )
    return rows


def plain_table(runs: Sequence[Any], colour: bool = False) -> str:
    rows = table_rows(runs)
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = []
    for index, row in enumerate([COLUMNS, *rows]):
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
        if colour and index > 0:
            code = _COLOURS.get(row[STATE], "0")
            cells[STATE] = f"\x1b[{code}m{cells[STATE]}\x1b[0m"
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def history_lines(manifest: dict[str, Any], info: Any) -> list[str]:
    """The run's history, one line an event: started, each resume, and how it ended."""
    lines = []
    for event in manifest.get("history") or []:
        if not isinstance(event, dict):
            continue
        where = f"pid {event.get('pid')} on {event.get('host')}"
        text = f"{when(event.get('time'))}  {event.get('event')}  ({where})"
        if event.get("event") == "resumed":
            text += (
                f" from iteration {event.get('from', 0):,} after the previous attempt {event.get('after')}"
            )
            if event.get("redone"):
                text += f", redoing {event['redone']:,} iterations (~{event.get('redone_seconds', 0):.0f} s)"
            if event.get("cause"):
                text += f"; restarted by resumable run: {event['cause']}"
        elif event.get("event") == "finished":
            text += f" at iteration {event.get('position', 0):,}"
        lines.append(text)
    if info.state in ("interrupted", "failed") and info.outcome:
        detail = f": {info.error}" if info.error else ""
        lines.append(f"{when(info.outcome.get('time'))}  {info.state}{detail}")
    elif info.state == "crashed":
        lines.append("-  crashed (no word from the process after its last checkpoint)")
    return lines or ["(not recorded)"]


def _directory(args: argparse.Namespace) -> Any:
    """The checkpoint folder: a local :class:`~pathlib.Path` or a ``storage.RemotePath`` (a URL)."""
    from resumable_magic.storage.base import location

    if args.dir is not None:
        return location(args.dir)
    from resumable_magic.core.resume import default_directory

    return location(default_directory())


def _is_folder(directory: Any) -> bool:
    """A local folder that exists; a URL always counts (an empty prefix simply holds no runs)."""
    from resumable_magic.storage.base import open_backend

    return open_backend(directory).is_folder()


def _find(directory: Any, key: str) -> Any:
    from resumable_magic.store.catalog import find_run

    info = find_run(directory, key)
    if info is None:
        raise _Failure(f"no run {key!r} in {str(directory)!r} (see `resumable status --dir {directory}`)")
    return info


# -- subcommands -------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from resumable_magic.store.catalog import list_runs

    directory = _directory(args)
    if not _is_folder(directory):
        raise _Failure(f"no checkpoint folder {str(directory)!r}")
    runs = list_runs(directory)
    if args.json:
        print(json.dumps([r.to_json() for r in runs], indent=1))
    elif not runs:
        print(f"No runs in {str(directory)!r}.")
    else:
        print(plain_table(runs, colour=sys.stdout.isatty() and "NO_COLOR" not in os.environ))
    return 0


def _value_size(value: Any) -> str:
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return format_size(nbytes)
    try:
        import dill

        return format_size(len(dill.dumps(value)))
    except Exception:
        return "?"


def cmd_show(args: argparse.Namespace) -> int:
    from resumable_magic.core.resume import variables_of
    from resumable_magic.store.runstore import RunStore

    directory = _directory(args)
    info = _find(directory, args.key)
    store = RunStore(directory, args.key)
    result = store.read_latest()  # read once: the variables and the manifest of one generation
    if result.checkpoint is None:
        raise _Failure(f"run {args.key!r} has no readable checkpoint: {' '.join(map(str, result.problems))}")
    checkpoint = result.checkpoint
    manifest = checkpoint.manifest
    variables = variables_of(checkpoint)
    out = [
        f"key:         {info.key}",
        f"folder:      {info.path}",
        f"state:       {info.state}" + (f" ({info.error})" if info.error else ""),
        f"progress:    {checkpoint.position:,}"
        + (f"/{manifest['total']:,}" if isinstance(manifest.get("total"), int) else ""),
        f"checkpoint:  generation {checkpoint.generation}, written {when(checkpoint.created)}"
        + (" (final)" if manifest.get("final") else ""),
        f"size:        {format_size(info.size)} on disk, state {format_size(len(checkpoint.state))}",
        "variables:",
    ]
    width = max((len(n) for n in variables), default=0)
    for name, value in variables.items():
        kind = type(value)
        out.append(f"  {name.ljust(width)}  {kind.__module__}.{kind.__qualname__}  {_value_size(value)}")
    out.append("metadata:")
    for field in ("header", "names", "inputs", "item", "code_digest", "versions", "origin"):
        if manifest.get(field) not in (None, {}, []):
            out.append(f"  {field}: {json.dumps(manifest[field], ensure_ascii=False)}")
    for problem in info.problems:
        out.append(f"  damaged (skipped): {problem}")
    out.append("history:")
    out.extend(f"  {line}" for line in history_lines(manifest, info))
    code = manifest.get("code")
    out.append("cell source:" if code else "cell source: (not recorded)")
    if code:
        out.extend(f"  {line}" for line in str(code).splitlines())
    print("\n".join(out))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from resumable_magic.lease.lease import describe_owner
    from resumable_magic.store import housekeeping
    from resumable_magic.store.runstore import RunStore

    directory = _directory(args)
    status = 0
    for key in args.keys:
        try:
            info = _find(directory, key)
            if info.state == "running":
                raise _Failure(
                    f"run {key!r} is running ({describe_owner(info.owner or {})}); "
                    f"stop it first: nothing was deleted"
                )
            housekeeping.remove(RunStore.at(info.path, info.key, directory))
            print(f"removed {key} ({format_size(info.size)})")
        except _Failure as exc:
            print(f"resumable rm: {exc}", file=sys.stderr)
            status = 1
    return status


def cmd_gc(args: argparse.Namespace) -> int:
    from resumable_magic.errors import RunOwnedError
    from resumable_magic.store import housekeeping
    from resumable_magic.store.catalog import list_runs
    from resumable_magic.store.runstore import RunStore

    directory = _directory(args)
    if not _is_folder(directory):
        raise _Failure(f"no checkpoint folder {str(directory)!r}")
    runs = list_runs(directory)
    total = sum(r.size for r in runs)
    freed = 0
    verb = "would free" if args.dry_run else "freed"
    for run in runs:
        store = RunStore.at(run.path, run.key)
        lease = store.new_lease()
        try:
            lease.acquire()  # a run being executed is never touched
        except RunOwnedError:
            print(f"{run.key}: running, skipped")
            continue
        store.fence = lease.fenced
        try:
            pruned = housekeeping.prune(store, args.dry_run)
            dropped = housekeeping.drop_values(store, args.dry_run) if args.final_values else 0
        finally:
            lease.release(undo=True)
        if pruned:
            print(f"{run.key}: old generations and stale files, {verb} {format_size(pruned)}")
        if dropped:
            print(f"{run.key}: finished run's final values, {verb} {format_size(dropped)} (DONE kept)")
        freed += pruned + dropped
    print(f"{len(runs)} run(s), {format_size(total)} in {str(directory)!r}; {verb} {format_size(freed)}")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    from resumable_magic.errors import ResumableError
    from resumable_magic.storage.base import location, open_backend
    from resumable_magic.store.resign import find_runs, trust_run
    from resumable_magic.trust.keys import key_source

    status = 0
    for given in args.paths:
        top = location(given)
        if not open_backend(top).checks_permissions:
            print(
                f"resumable trust: {given!r} is on object storage, where there are no file owners to "
                f"fix and checkpoints are trusted by their signature alone: set $RESUMABLE_SIGNING_KEY "
                f"or $RESUMABLE_SIGNING_KEY_FILE to the key that wrote them",
                file=sys.stderr,
            )
            status = 1
            continue
        assert isinstance(top, Path)  # a location whose files have owners is a local folder
        runs = find_runs(top) if top.is_dir() else []
        if not runs:
            what = "no checkpoints in" if top.is_dir() else "no folder"
            print(f"resumable trust: {what} {given!r} (a run folder holds manifest.*.json)", file=sys.stderr)
            status = 1
        for run in runs:
            try:
                report = trust_run(run, top=top)
            except (ResumableError, OSError) as exc:
                print(f"resumable trust: {' '.join(str(exc).split())}", file=sys.stderr)
                status = 1
                continue
            private = f"; made {report.modes_fixed} file(s) private" if report.modes_fixed else ""
            if report.signed:
                print(f"trusted {run}: signed {', '.join(report.signed)} with {key_source()}{private}")
            else:
                print(f"resumable trust: nothing in {str(run)!r} could be signed{private}", file=sys.stderr)
                status = 1
            for line in report.skipped:
                print(f"  not signed (damaged): {line}")
            for line in report.notes:
                print(f"  note: {line}")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resumable", description="Inspect and clean up %%resumable checkpoint folders."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        default=None,
        help="checkpoint folder or fsspec URL, e.g. s3://bucket/prefix (default: $RESUMABLE_DIR, else .resumable)",
    )

    p = sub.add_parser("status", parents=[common], help="a table of every run and its state")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("show", parents=[common], help="one run's variables, position, metadata, cell")
    p.add_argument("key")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("rm", parents=[common], help="delete runs (never a running one)")
    p.add_argument("keys", nargs="+", metavar="KEY")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser(
        "gc", parents=[common], help="delete old generations and stale files (never a running run's)"
    )
    p.add_argument("--dry-run", action="store_true", help="report only, delete nothing")
    p.add_argument(
        "--final-values",
        action="store_true",
        help="also delete finished runs' final values (their DONE record stays: never re-run by accident)",
    )
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser(
        "trust",
        help="sign checkpoints you vouch for with your key (a copy from a colleague, another machine)",
        description="Verify the checksums of the runs at each PATH (a run folder, or a checkpoint "
        "folder: every run under it), sign their checkpoints with your key, and make their files "
        "private. Files owned by someone else are refused: copy them first (cp -r), which makes the "
        "copy yours.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(func=cmd_trust)

    from resumable_magic.frontends.run_command import add_run_parser

    add_run_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``resumable`` and ``python -m resumable_magic``."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    try:
        return int(args.func(args))
    except _Failure as exc:
        print(f"resumable {args.command}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"resumable {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # ResumableError, OSError, or a checkpoint that cannot be unpickled
        from resumable_magic.errors import ResumableError

        if not isinstance(exc, (ResumableError, OSError)) and args.command != "show":
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"resumable {args.command}: {type(exc).__name__}: {message}", file=sys.stderr)
    return 1
