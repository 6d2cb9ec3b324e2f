"""Notebook parameters the way papermill takes and injects them.

``-p NAME VALUE``: the value is read as papermill's command line reads it (``True``, ``False``,
``None``, an int, a float, else the text). The values become a cell tagged ``injected-parameters``
right after the cell tagged ``parameters`` (replacing an earlier injected cell), so a notebook written
for papermill runs unchanged and its parameters cell keeps the defaults.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from resumable_magic.errors import SupervisorUsageError

__all__ = ["inject_parameters", "parameters_source", "parse_parameters", "parse_value"]

INJECTED_TAG = "injected-parameters"
PARAMETERS_TAG = "parameters"
# A stable id: the injected cell gets the same key in every attempt (nbformat's own would be random).
INJECTED_CELL_ID = "injected-parameters"


def parse_value(text: str) -> Any:
    """``"0.1"`` -> 0.1, ``"3"`` -> 3, ``"True"`` -> True, ``"None"`` -> None, else the text (papermill's rule)."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _literal(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"  # nan, inf, -inf have no literal
    return repr(value)


def parameters_source(parameters: dict[str, Any]) -> str:
    """The injected cell's source: ``# Parameters`` then one assignment a parameter."""
    return "# Parameters\n" + "".join(f"{name} = {_literal(v)}\n" for name, v in parameters.items())


def parse_parameters(pairs: Sequence[Sequence[str]]) -> dict[str, Any]:
    """``[["lr", "0.1"], ...]`` (argparse's ``-p NAME VALUE``) as ``{"lr": 0.1}``; a bad name is refused."""
    parameters: dict[str, Any] = {}
    for name, text in pairs:
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise SupervisorUsageError(
                name, f"-p {name!r}: a parameter's name must be a Python variable name"
            )
        parameters[name] = parse_value(text)
    return parameters


def _tagged(cell: Any, tag: str) -> bool:
    return tag in (cell.get("metadata", {}).get("tags") or [])


def inject_parameters(nb: Any, parameters: dict[str, Any], path: str) -> None:
    """Put the parameters cell in ``nb`` (an nbformat v4 notebook), in place; nothing when none."""
    if not parameters:
        return
    import nbformat

    cells = nb.cells
    injected = next((i for i, c in enumerate(cells) if _tagged(c, INJECTED_TAG)), None)
    tagged = next((i for i, c in enumerate(cells) if _tagged(c, PARAMETERS_TAG)), None)
    if injected is None and tagged is None:
        raise SupervisorUsageError(
            path,
            f"{path} has no cell tagged 'parameters', so -p has nowhere to go: tag the cell that sets "
            f"the parameters' defaults (in JupyterLab: the cell's property inspector, Common Tools, "
            f"Cell Tags), as for papermill",
        )
    cell = nbformat.v4.new_code_cell(source=parameters_source(parameters))
    cell.id = INJECTED_CELL_ID
    cell.metadata["tags"] = [INJECTED_TAG]
    if injected is not None:
        cells[injected] = cell
    else:
        assert tagged is not None
        cells.insert(tagged + 1, cell)
    nb.metadata.setdefault("papermill", {})["parameters"] = parameters
