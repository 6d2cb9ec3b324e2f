"""``%resumable_status [DIR]``: the table of runs under a checkpoint folder, in the notebook.

Displays an HTML table (state by colour: green finished, yellow running, red crashed or failed, grey
interrupted) whose ``text/plain`` form is the same table as ``resumable status``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from resumable_magic.frontends.cli import COLUMNS, STATE, plain_table, table_rows
from resumable_magic.store.catalog import RunInfo, list_runs

_HTML_COLOURS = {
    "finished": "#1a7f37",
    "running": "#b08800",
    "crashed": "#cf222e",
    "failed": "#cf222e",
    "interrupted": "#6e7781",
}


class StatusTable:
    """The runs of one folder, shown as HTML in a notebook and as text elsewhere."""

    def __init__(self, directory: Path | Any, runs: Sequence[RunInfo]) -> None:
        self.directory = directory
        self.runs = list(runs)

    def __repr__(self) -> str:
        if not self.runs:
            return f"No runs in {str(self.directory)!r}."
        return plain_table(self.runs)

    def _repr_html_(self) -> str:
        if not self.runs:
            return f"<p>No runs in <code>{html.escape(str(self.directory))}</code>.</p>"
        head = "".join(f'<th style="text-align:left">{html.escape(c)}</th>' for c in COLUMNS)
        body = []
        for row in table_rows(self.runs):
            state = html.escape(row[STATE])
            colour = _HTML_COLOURS.get(row[STATE], "inherit")
            cells = [f"<td>{html.escape(cell)}</td>" for cell in row]
            cells[STATE] = (
                f'<td class="resumable-{state}" style="color:{colour};font-weight:bold">{state}</td>'
            )
            body.append(f"<tr>{''.join(cells)}</tr>")
        return (
            f'<table class="resumable-status"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>"
        )


@magics_class
class StatusMagics(Magics):
    @line_magic
    def resumable_status(self, line: str = "") -> StatusTable:
        """%resumable_status [DIR]: every run under DIR (default as %%resumable) and its state."""
        from resumable_magic.core.resume import default_directory
        from resumable_magic.storage.base import location

        directory = location(line.strip() if line.strip() else default_directory())
        return StatusTable(directory, list_runs(directory))
