"""Pure ``ast`` work on a nested loop: find the one inner ``for`` a cell's outer ``for`` holds, and
what the statements before it build up that the inner loop changes.

A loop is *nested* (checkpointed between inner iterations, :mod:`.nested`) when its body holds exactly
one loop at its own top level, a ``for``: ``for epoch in range(E): <before>; for x in loader: <body>;
<after>``. Any other shape (no inner loop, a ``while``, two loops, one inside ``with``/``if``) is
checkpointed between outer iterations only, and :func:`find_inner` says why.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from resumable_magic.core.cellsplit import CellPlan, bound_names, unnamed_changes

__all__ = ["INNER_VAR", "Nesting", "find_inner", "rewrite_inner"]

INNER_VAR = "_resumable_inner_"  # the run's Nest.inner_loop, which the rewritten inner `for` calls
_LOOPS = (ast.For, ast.While, ast.AsyncFor)


@dataclass(frozen=True)
class Nesting:
    """Where a cell's inner loop is, or why it has none that can be entered."""

    index: int | None  # the inner `for`'s place in the outer body (None: not nested)
    why_not: str  # said when one outer iteration outlasts the checkpoint interval
    header: str = "the inner loop"
    persistent: bool = True  # its iterable is built before the outer loop (not rebuilt per iteration)


def find_inner(plan: CellPlan) -> Nesting:
    """The cell's inner ``for``, if its outer ``for`` has exactly one at the top of its body."""
    if not isinstance(plan.loop, ast.For):
        return Nesting(None, "A `while` loop is checkpointed between its iterations only.")
    body = plan.loop.body
    direct = [i for i, node in enumerate(body) if isinstance(node, _LOOPS)]
    deeper = [
        n for node in body if not isinstance(node, _LOOPS) for n in ast.walk(node) if isinstance(n, _LOOPS)
    ]
    if len(direct) == 1 and not deeper and isinstance(body[direct[0]], ast.For):
        index = direct[0]
        inner = body[index]
        assert isinstance(inner, ast.For)
        lines = plan.source.splitlines()
        header = lines[inner.lineno - 1].strip() if inner.lineno <= len(lines) else "the inner loop"
        rebuilt = {n.id for n in ast.walk(inner.iter) if isinstance(n, ast.Name)} & bound_names(body[:index])
        return Nesting(index, "", header, persistent=not rebuilt)
    if direct and isinstance(body[direct[0]], ast.While) and len(direct) == 1 and not deeper:
        why = "Its inner loop is a `while` loop: resumes start at an outer iteration."
    elif len(direct) + len(deeper) > 1:
        why = "Its body holds several loops: only one inner `for` at the top of the body is entered."
    elif deeper:
        why = (
            "Its inner loop is inside another statement (`with`, `if`, `try`): put it at the top of the body."
        )
    else:
        why = "Split its work into an inner `for` loop (epoch x batch) to checkpoint inside an iteration."
    return Nesting(None, why)


def rewrite_inner(plan: CellPlan, nesting: Nesting) -> list[ast.stmt] | None:
    """The outer body with its inner ``for T in EXPR:`` iterating ``_resumable_inner_(EXPR)`` (None:
    not nested); ``enumerate(X, start)`` becomes ``_resumable_inner_(X, start)``, which numbers the items
    itself, so that a ``DataLoader`` under it is seen and the numbering goes on from a resume."""
    if nesting.index is None or not isinstance(plan.loop, ast.For):
        return None
    body = list(plan.loop.body)
    inner = body[nesting.index]
    assert isinstance(inner, ast.For)
    args = [inner.iter]
    source = inner.iter
    if (
        isinstance(source, ast.Call)
        and isinstance(source.func, ast.Name)
        and source.func.id == "enumerate"
        and len(source.args) + len(source.keywords) in (1, 2)
        and len(source.args) >= 1
    ):
        # enumerate(loader): the run sees the loader itself, and counts on from where it resumes.
        start = source.args[1] if len(source.args) == 2 else next((k.value for k in source.keywords), None)
        args = [source.args[0], start if start is not None else ast.Constant(0)]
    call = ast.Call(func=ast.Name(id=INNER_VAR, ctx=ast.Load()), args=args, keywords=[])
    new = ast.For(
        target=inner.target,
        iter=ast.copy_location(call, inner.iter),
        body=inner.body,
        orelse=inner.orelse,
        type_comment=None,
    )
    body[nesting.index] = ast.copy_location(new, inner)
    return body


def inner_accumulators(plan: CellPlan, nesting: Nesting, state: set[str]) -> dict[str, int]:
    """Names the statements before the inner loop bind (``epoch_loss = 0``) and the inner loop changes
    (``epoch_loss += loss``), not named: a resume inside the inner loop would restart them from there."""
    if nesting.index is None:
        return {}
    assert isinstance(plan.loop, ast.For)
    inner = plan.loop.body[nesting.index]
    assert isinstance(inner, ast.For)
    sub = CellPlan(plan.source, plan.loop.body[: nesting.index], inner, [])
    return unnamed_changes(sub, set(), state)
