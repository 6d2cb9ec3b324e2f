"""``%%resumable``: parse the line, derive the key, hand the cell to :func:`~resumable_magic.core.cellrun.run_cell`.

The only module that imports IPython.
"""

from __future__ import annotations

import keyword
import os
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Unicode

from resumable_magic.core.cellrun import run_cell
from resumable_magic.core.cellsplit import split_cell
from resumable_magic.core.resume import default_directory
from resumable_magic.errors import CellStructureError
from resumable_magic.progress.model import ProgressModel
from resumable_magic.storage.blobs import digest
from resumable_magic.store.runstore import RunStore


def derive_key(names: list[str], header: str, notebook: str | None, cell_id: str | None) -> str:
    """The checkpoint key when ``--name`` is not given.

    ``<notebook file>/cell-<cell id>`` where the frontend sends a cell id (JupyterLab, Notebook 7):
    stable across edits and kernel restarts, unique per cell. Otherwise (nbclient, terminal IPython)
    ``<notebook file or 'ipython'>/<names>-<hash of names and loop header>``.
    """
    where = Path(notebook).name if notebook else "ipython"
    if cell_id:
        return f"{where}/cell-{cell_id}"
    return f"{where}/{'+'.join(names)[:60]}-{digest((' '.join(names) + '|' + header).encode())[:10]}"


def _split_names(tokens: list[str]) -> list[str]:
    names: list[str] = []
    for token in tokens:
        names.extend(part for part in token.split(",") if part.strip())
    return [n.strip() for n in names]


@magics_class
class ResumableMagics(Magics):
    """The ``%%resumable`` cell magic. Defaults are configurable: ``%config ResumableMagics.every = '5m'``."""

    every = Unicode(
        None, allow_none=True, help="Default --every: '30s', '5m', '2h', '500it'; None: adaptive."
    ).tag(config=True)
    dir = Unicode(
        None,
        allow_none=True,
        help="Default --dir; None: $RESUMABLE_DIR, else .resumable in the working directory.",
    ).tag(config=True)
    quiet = Bool(False, help="Default --quiet.").tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._cell_id: str | None = None

    def pre_run_cell(self, info: Any) -> None:
        """IPython event: remember the running cell's id (JupyterLab and Notebook 7 send one)."""
        self._cell_id = getattr(info, "cell_id", None)

    @magic_arguments()
    @argument("names", nargs="*", help="State variables to checkpoint (spaces or commas between them).")
    @argument(
        "--every",
        default=None,
        help="Checkpoint interval: 30s, 5m, 2h (time) or 500it (iterations). "
        "Default: adaptive, checkpoint time under ~2%% of loop time, at most every 5 min.",
    )
    @argument("--name", default=None, help="Checkpoint key (default: from the notebook and the cell's id).")
    @argument(
        "--params",
        nargs="+",
        default=None,
        help="Variables whose values become part of the key (lr seed, or lr,seed): one checkpoint per "
        "parameter set. Put it last, or its names swallow the state names after it.",
    )
    @argument(
        "--dir",
        default=None,
        help="Checkpoint directory, or an fsspec URL such as s3://bucket/prefix (default: $RESUMABLE_DIR, "
        "else ./.resumable).",
    )
    @argument("--fresh", action="store_true", help="Ignore existing checkpoints and start over.")
    @argument(
        "--accept-changes",
        action="store_true",
        help="Resume (or extend a finished run) although values the cell reads have changed.",
    )
    @argument("--quiet", action="store_true", help="Show only warnings, errors and the final summary.")
    @argument(
        "--max-size",
        default=None,
        help="Warn when a checkpoint's state grows beyond this size (500MB, 2GiB; default "
        "$RESUMABLE_MAX_SIZE, else no limit). A disk about to fill always warns.",
    )
    @cell_magic
    def resumable(self, line: str, cell: str) -> None:
        """Run a loop whose state survives kernel crashes.

        The cell is setup, one top-level ``for``/``while`` loop, then teardown. The named variables and
        the global RNG states are checkpointed between iterations; after a crash, run the cell again:
        setup runs, the state is restored, and the loop continues from the last checkpoint. A finished
        run is replayed (final values restored, loop skipped) unless --fresh.

        Example::

            %%resumable total results --every 30s
            total, results = 0, []
            for i in range(1_000_000):
                ...
        """
        __tracebackhide__ = True
        args = self._parse(line)
        names = _split_names(args.names)
        if not names:
            raise UsageError("Name the state variables to checkpoint, e.g. %%resumable total results")
        bad = [n for n in names if not n.isidentifier() or keyword.iskeyword(n)]
        if bad:
            raise UsageError(
                f"{bad[0]!r} is not a variable name; name the state variables, e.g. %%resumable total results"
            )
        shell = self.shell
        assert shell is not None  # registered on a shell by load_ipython_extension
        source = shell.transform_cell(cell)
        progress = self._make_progress(args.quiet or self.quiet)
        directory = args.dir or self.dir
        key = args.name
        if key is None:
            try:
                header = split_cell(source).header
            except CellStructureError:
                header = ""  # run_cell reports the structure error with its full message
            cell_id = self._current_cell_id()
            key = derive_key(names, header, self._notebook_path(), cell_id)
            if cell_id is None and not RunStore(directory or default_directory(), key).folder_exists():
                progress.message(
                    "info",
                    f"Checkpoint key {key!r}: this frontend sends no cell id, so the key comes from the "
                    f"names and the loop's first line. Pass --name KEY to choose a key of your own.",
                )
        full_cell = f"%%resumable {line}\n{cell}"
        filename = shell.compile.cache(full_cell, shell.execution_count)
        try:
            run_cell(
                source,
                names,
                shell.user_ns,
                key=key,
                dir=directory,
                every=args.every or self.every,
                fresh=args.fresh,
                accept_changes=args.accept_changes,
                progress=progress,
                filename=filename,
                line_offset=1,
                code=cell,
                params=_split_names(args.params or []),
                max_size=args.max_size,
            )
        except KeyboardInterrupt as stop:
            if progress.state != "interrupted":
                raise  # not the run's stop (before it began, or after it ended): as plain Python
            _end_interrupted(shell, stop)

    # -- helpers -------------------------------------------------------------------------------------
    def _parse(self, line: str) -> Any:
        from IPython.utils.process import arg_split

        parser = self.resumable.parser  # built by @magic_arguments; its errors are UsageErrors
        return parser.parse_intermixed_args(arg_split(line))

    def _notebook_path(self) -> str | None:
        ns = self.shell.user_ns if self.shell is not None else {}
        return (
            ns.get("__session__")
            or ns.get("__vsc_ipynb_file__")
            or os.environ.get("JPY_SESSION_NAME")
            or None
        )

    def _current_cell_id(self) -> str | None:
        if self._cell_id:
            return self._cell_id
        kernel = getattr(self.shell, "kernel", None)
        try:
            return kernel.get_parent("shell").get("metadata", {}).get("cellId") if kernel else None
        except Exception:
            return None

    def _make_progress(self, quiet: bool) -> ProgressModel:
        from resumable_magic.progress.widget import (
            make_widget_progress,  # lazy: ipywidgets only when a cell runs
        )

        return make_widget_progress(quiet)


def _end_interrupted(shell: Any, stop: KeyboardInterrupt) -> None:
    """End a cell whose run stopped on request without a traceback: the view said so in one orange
    line, with the checkpoint saved. The cell still counts as failed (so the kernel skips the cells
    queued after it, as after any interrupt): IPython's result of the running cell is marked, which
    is what the kernel's reply reads; nothing is shown."""
    result = getattr(shell.displayhook, "exec_result", None)
    if result is not None:
        result.error_in_exec = stop


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext resumable_magic``."""
    from resumable_magic.frontends.status_magic import StatusMagics

    magics = ResumableMagics(shell=ipython)
    ipython.register_magics(magics)
    ipython.register_magics(StatusMagics)
    ipython.events.register("pre_run_cell", magics.pre_run_cell)


def unload_ipython_extension(ipython: Any) -> None:
    for magics in list(ipython.magics_manager.registry.values()):
        if isinstance(magics, ResumableMagics):
            ipython.events.unregister("pre_run_cell", magics.pre_run_cell)
