"""``resumable run``: the command line of the supervisor (:mod:`resumable_magic.supervise`).

``resumable run NOTEBOOK.ipynb [-p NAME VALUE ...] [--output OUT.ipynb] [--report R.json]
[--max-restarts N] [--dir DIR]``, or ``resumable run [options] SCRIPT.py [ARGS ...]`` (a script's own
arguments follow it, so the options come first). This line is stable: the board's Resubmit runs it
as ``python -m resumable_magic run ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_run_parser", "cmd_run"]

DESCRIPTION = (
    "Execute a notebook headless (or a Python script), and when its kernel or process dies of a crash "
    "(SIGKILL, as the OOM killer sends; SIGSEGV, SIGBUS, SIGABRT) start it again from the top: "
    "finished %%resumable cells replay, the interrupted one resumes from its checkpoint. It stops on an "
    "ordinary exception, when a restart made no progress, or after --max-restarts. Exit status: 0 "
    "finished, 1 an error, 2 usage, 3 gave up, 130/143 interrupted (SIGINT/SIGTERM)."
)


def _options(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """The options, on the main parser and again (``default=SUPPRESS``) for those after a notebook."""
    parser.add_argument(
        "-p",
        "--parameters",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        default=default,
        help="a notebook parameter, as papermill's -p (injected after the cell tagged 'parameters')",
    )
    parser.add_argument(
        "--output",
        default=default,
        help="the executed notebook (default: NOTEBOOK.run.ipynb beside it, or "
        "NOTEBOOK.run-<digest of the parameters>.ipynb)",
    )
    parser.add_argument("--report", default=default, help="the JSON report (default: beside --output)")
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=default if default is not None else 5,
        help="restarts allowed after crashes (default 5)",
    )
    parser.add_argument(
        "--dir",
        default=default,
        help="checkpoint folder or fsspec URL, given to the kernel or script as $RESUMABLE_DIR "
        "(default: theirs, else .resumable in their working folder)",
    )


def add_run_parser(sub: Any) -> None:
    """The ``run`` subcommand on the ``resumable`` command's subparsers."""
    p = sub.add_parser(
        "run", help="execute a notebook or script, restarting it after crashes", description=DESCRIPTION
    )
    _options(p)
    p.add_argument("target", metavar="NOTEBOOK.ipynb|SCRIPT.py")
    p.add_argument(
        "rest", nargs=argparse.REMAINDER, metavar="...", help="a notebook's options, or a script's arguments"
    )
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from resumable_magic.errors import SupervisorUsageError
    from resumable_magic.supervise.supervisor import EXIT_USAGE, supervise

    try:
        _check_installed()
        return supervise(_request(args))
    except SupervisorUsageError as exc:
        print(f"resumable run: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _check_installed() -> None:
    from importlib.util import find_spec

    from resumable_magic.errors import SupervisorUsageError

    missing = [name for name in ("nbclient", "nbformat") if find_spec(name) is None]
    if missing:
        raise SupervisorUsageError(
            missing[0],
            f"resumable run needs {' and '.join(missing)}: pip install 'resumable_magic[run]'",
        )


def _request(args: argparse.Namespace) -> Any:
    from resumable_magic.errors import SupervisorUsageError
    from resumable_magic.supervise.supervisor import RunRequest

    target = Path(args.target).absolute()
    if not target.is_file():
        raise SupervisorUsageError(args.target, f"no file {args.target!r} to run")
    notebook = target.suffix == ".ipynb"
    if notebook and args.rest:
        after = argparse.ArgumentParser(prog="resumable run NOTEBOOK", add_help=False)
        _options(after, default=argparse.SUPPRESS)
        extra, unknown = after.parse_known_args(args.rest)
        if unknown:
            raise SupervisorUsageError(
                unknown[0], f"unknown argument {unknown[0]!r} after the notebook (see resumable run --help)"
            )
        if getattr(extra, "parameters", None):
            args.parameters = (args.parameters or []) + extra.parameters
        for name in ("output", "report", "max_restarts", "dir"):
            if hasattr(extra, name):
                setattr(args, name, getattr(extra, name))
    if args.max_restarts < 0:
        raise SupervisorUsageError("--max-restarts", f"--max-restarts {args.max_restarts}: give 0 or more")
    if not notebook and (args.parameters or args.output):
        raise SupervisorUsageError(
            args.target, "-p and --output are for notebooks; a script takes its own arguments after its name"
        )
    directory = args.dir
    if directory and "://" not in directory:
        directory = str(Path(directory).absolute())  # the kernel runs elsewhere: its cwd is the notebook's
    if not notebook:
        report = (
            Path(args.report) if args.report else _beside(target, ".run" + _tag(args.rest), ".report.json")
        )
        return RunRequest(
            target, report.absolute(), args=list(args.rest), dir=directory, max_restarts=args.max_restarts
        )
    from resumable_magic.supervise.notebook import kernel_name, read_notebook
    from resumable_magic.supervise.params import inject_parameters, parse_parameters

    parameters = parse_parameters(args.parameters or [])
    try:
        nb = read_notebook(target)
    except Exception as exc:  # nbformat's reader: not JSON, not a notebook
        raise SupervisorUsageError(
            args.target, f"{args.target!r} is not a readable notebook: {exc}"
        ) from None
    inject_parameters(nb, parameters, args.target)
    kernel_name(nb, args.target)  # an uninstalled kernel is refused now, not after the report is begun
    output = Path(args.output) if args.output else _beside(target, ".run" + _tag(parameters), ".ipynb")
    report = (
        Path(args.report)
        if args.report
        else output.with_name(output.name.removesuffix(".ipynb") + ".report.json")
    )
    return RunRequest(
        target,
        report.absolute(),
        notebook=nb,
        parameters=parameters,
        output=output.absolute(),
        dir=directory,
        max_restarts=args.max_restarts,
    )


def _tag(values: Any) -> str:
    """``-<8 hex>`` naming a parameter set or argument list in default file names; ``""`` for none."""
    if not values:
        return ""
    from resumable_magic.storage.blobs import digest

    return "-" + digest(json.dumps(values, sort_keys=True).encode())[:8]


def _beside(target: Path, middle: str, suffix: str) -> Path:
    return target.with_name(target.stem + middle + suffix)
