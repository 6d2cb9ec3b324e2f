"""Pure ``ast`` work on a resumable cell: split it, rewrite its loop, find what it reads and changes.

The cell splits into setup / loop / teardown; the loop is rewritten so that each iteration boundary
reaches the run; and the cell's free names and the changes it makes outside its named state are found.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterator
from dataclasses import dataclass
from types import CodeType

from resumable_magic.errors import CellStructureError

LOOP_VAR = "_resumable_loop_"
COUNTER_VAR = "_resumable_n_"
_LOOPS = (ast.For, ast.While)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)

# Methods that change their object in place: calling one on an unnamed variable inside the loop loses
# the change after a crash. Deliberately the common ones, not every method call.
MUTATING_METHODS = frozenset(
    {
        "append",
        "extend",
        "update",
        "add",
        "insert",
        "pop",
        "remove",
        "clear",
        "setdefault",
        "sort",
        "popitem",
        "discard",
        "appendleft",
        "extendleft",
        "popleft",
        "reverse",
    }
)


@dataclass(frozen=True)
class CellPlan:
    """A cell split at its single top-level loop."""

    source: str
    setup: list[ast.stmt]
    loop: ast.For | ast.While
    teardown: list[ast.stmt]

    @property
    def kind(self) -> str:
        return "for" if isinstance(self.loop, ast.For) else "while"

    @property
    def header(self) -> str:
        """The loop's first line as written, e.g. ``for i in range(N):``."""
        lines = self.source.splitlines()
        return lines[self.loop.lineno - 1].strip() if self.loop.lineno <= len(lines) else self.kind

    @property
    def target_names(self) -> tuple[str, ...]:
        """Plain names the ``for`` statement assigns (``i, (x, y)`` -> i, x, y)."""
        if not isinstance(self.loop, ast.For):
            return ()
        return tuple(_bound_names(self.loop.target))


def split_cell(source: str, *, line_offset: int = 0) -> CellPlan:
    """Parse ``source`` (plain Python) and split it at its one top-level ``for``/``while`` loop.

    ``line_offset`` shifts line numbers, so tracebacks point at the user's lines when the source is a
    cell body below a ``%%magic`` line.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise CellStructureError(
            f"The cell has a syntax error at line {(exc.lineno or 0) + line_offset}: {exc.msg}."
        ) from None
    if line_offset:
        ast.increment_lineno(tree, line_offset)
    loops = [i for i, node in enumerate(tree.body) if isinstance(node, _LOOPS)]
    if any(isinstance(node, (ast.AsyncFor,)) for node in tree.body):
        raise CellStructureError("`async for` loops cannot be resumed; use a plain `for` or `while` loop.")
    if not loops:
        raise CellStructureError(
            "A %%resumable cell needs one top-level `for` or `while` loop (not indented inside "
            "`if`/`with`/`def`): its iterations are what gets checkpointed. Put the loop at the top "
            "level of the cell, or run the cell without %%resumable."
        )
    if len(loops) > 1:
        lines = ", ".join(str(tree.body[i].lineno) for i in loops)
        raise CellStructureError(
            f"A %%resumable cell has exactly one top-level loop; this one has {len(loops)} (lines {lines}). "
            f"Split the cell so each loop has its own %%resumable cell, or move the other loops into a "
            f"function or another cell."
        )
    index = loops[0]
    # ast.increment_lineno moved line numbers; the header lookup needs the unshifted source lines.
    padded = "\n" * line_offset + source
    return CellPlan(padded, tree.body[:index], tree.body[index], tree.body[index + 1 :])  # type: ignore[arg-type]


def compile_block(statements: list[ast.stmt], filename: str) -> CodeType:
    return compile(ast.Module(body=statements, type_ignores=[]), filename, "exec")


def compile_iterable(plan: CellPlan, filename: str) -> CodeType:
    """The ``for`` loop's iterable expression, evaluated on its own before the state is restored."""
    assert isinstance(plan.loop, ast.For)
    return compile(ast.Expression(body=plan.loop.iter), filename, "eval")


def compile_loop(plan: CellPlan, filename: str, body: list[ast.stmt] | None = None) -> CodeType:
    """The loop, rewritten so that its iteration boundaries call into the run.

    ``for T in EXPR:`` becomes ``for T in _resumable_loop_:`` (an iterator the run provides, which
    sees every boundary). ``while COND: BODY else: ELSE`` becomes::

        for _resumable_n_ in _resumable_loop_:   # iteration numbers, in chunks
            if not (COND):
                ELSE
                break
            BODY

    which is the same loop: ``ELSE`` runs exactly when the condition turns false, and a top-level
    loop's ``else`` cannot hold a ``break`` or ``continue`` of its own. Body, ``break`` and
    ``continue`` are untouched, so they behave exactly as written. ``body`` replaces a ``for`` loop's
    body (a nested loop's, with its inner loop rewritten: :mod:`.nestsplit`).
    """
    loop = plan.loop
    new: ast.stmt
    iterator = ast.copy_location(ast.Name(id=LOOP_VAR, ctx=ast.Load()), loop)
    if isinstance(loop, ast.For):
        new = ast.For(
            target=loop.target, iter=iterator, body=body or loop.body, orelse=loop.orelse, type_comment=None
        )
    else:
        if loop.orelse:  # a stray break/continue in `else` is a SyntaxError: keep it one
            compile(ast.fix_missing_locations(ast.Module(body=[loop], type_ignores=[])), filename, "exec")
        ended = ast.copy_location(
            ast.If(
                test=ast.UnaryOp(op=ast.Not(), operand=loop.test), body=[*loop.orelse, ast.Break()], orelse=[]
            ),
            loop.test,
        )
        counter = ast.copy_location(ast.Name(id=COUNTER_VAR, ctx=ast.Store()), loop)
        new = ast.For(target=counter, iter=iterator, body=[ended, *loop.body], orelse=[], type_comment=None)
    ast.copy_location(new, loop)
    module = ast.Module(body=[new], type_ignores=[])
    ast.fix_missing_locations(module)
    return compile(module, filename, "exec")


@dataclass(frozen=True)
class CompiledCell:
    """Every part of a cell, compiled before any of it runs."""

    setup: CodeType
    iterable: CodeType | None  # a ``for`` loop's iterable expression
    loop: CodeType
    teardown: CodeType  # teardown without a final bare expression
    display: CodeType | None  # that expression, shown as the cell's value


def compile_cell(plan: CellPlan, filename: str, loop_body: list[ast.stmt] | None = None) -> CompiledCell:
    """Compile setup, loop and teardown at once, so that a statement Python refuses where it stands
    (``return``, ``yield`` or ``nonlocal`` outside a function, ``await`` outside IPython's own
    top-level runner) is a one-line :class:`CellStructureError` naming its line, raised before the
    setup has run."""
    _refuse_await(plan)
    teardown, last = split_last_expression(plan.teardown)
    try:
        return CompiledCell(
            setup=compile_block(plan.setup, filename),
            iterable=compile_iterable(plan, filename) if plan.kind == "for" else None,
            loop=compile_loop(plan, filename, loop_body),
            teardown=compile_block(teardown, filename),
            display=compile_display(last, filename) if last is not None else None,
        )
    except SyntaxError as exc:
        raise CellStructureError(
            f"Line {exc.lineno} of the cell: {exc.msg}. A %%resumable cell's code runs at the top level "
            f"of the notebook, outside any function, so this statement cannot stand there; nothing was run."
        ) from None


def _refuse_await(plan: CellPlan) -> None:
    for node in _in_scope([*plan.setup, plan.loop, *plan.teardown]):
        if isinstance(node, (ast.Await, ast.AsyncFor, ast.AsyncWith)):
            raise CellStructureError(
                f"Line {node.lineno} of the cell: `await` (or `async for`/`async with`) cannot be used "
                f"in a %%resumable cell, whose code the magic runs itself, outside IPython's event "
                f"loop; run the awaited work with asyncio.run(...) inside the loop, or in a plain "
                f"cell. Nothing was run."
            )


def split_last_expression(statements: list[ast.stmt]) -> tuple[list[ast.stmt], ast.Expr | None]:
    """Teardown minus a final bare expression, and that expression (to display as a cell's value)."""
    if statements and isinstance(statements[-1], ast.Expr):
        return statements[:-1], statements[-1]
    return statements, None


def compile_display(expr: ast.Expr, filename: str) -> CodeType:
    """Compile a bare expression in 'single' mode, so the displayhook shows its value as IPython does."""
    return compile(ast.Interactive(body=[expr]), filename, "single")


# -- what the cell reads and changes ------------------------------------------------------------------


def _bound_names(target: ast.AST) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for elt in target.elts for n in _bound_names(elt)]
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    return []


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def bound_names(statements: list[ast.stmt]) -> set[str]:
    """Every name the statements bind at any depth (assignments, defs, imports, targets, arguments)."""
    names: set[str] = set()
    for node in ast.walk(ast.Module(body=statements, type_ignores=[])):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def free_names(plan: CellPlan) -> set[str]:
    """Names the cell reads but never binds: what it takes from the notebook (builtins excluded)."""
    statements = [*plan.setup, plan.loop, *plan.teardown]
    loaded = {
        node.id
        for node in ast.walk(ast.Module(body=statements, type_ignores=[]))
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    }
    return loaded - bound_names(statements) - set(dir(builtins))


def iterable_names(plan: CellPlan) -> set[str]:
    """Names a ``for`` loop's iterable expression reads (none for a ``while`` loop)."""
    if not isinstance(plan.loop, ast.For):
        return set()
    return {n.id for n in ast.walk(plan.loop.iter) if isinstance(n, ast.Name)}


def loop_reads(plan: CellPlan) -> set[str]:
    """Names the loop's body (and a ``while`` loop's condition) reads, outside nested functions and
    classes; not a ``for`` loop's iterable, whose position the resume reproduces itself."""
    return {
        node.id
        for node in _in_scope(_loop_parts(plan))
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    }


def _loop_parts(plan: CellPlan) -> list[ast.AST]:
    """What runs at every iteration: the body, ``else``, and a ``while`` loop's condition."""
    parts: list[ast.AST] = [*plan.loop.body, *plan.loop.orelse]
    if isinstance(plan.loop, ast.While):
        parts.append(plan.loop.test)
    return parts


def _in_scope(nodes: list[ast.AST]) -> Iterator[ast.AST]:
    """``nodes`` and everything below them, but not inside nested functions, classes and lambdas
    (scopes of their own)."""
    stack = list(reversed(nodes))
    while stack:
        node = stack.pop()
        if isinstance(node, _SCOPES):
            continue
        yield node
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def unnamed_changes(plan: CellPlan, existing: set[str], state: set[str]) -> dict[str, int]:
    """Variables defined before the loop, not named as state, that the loop body changes.

    Returns name -> first line. ``existing`` holds the names the notebook has when the cell starts.
    A plain assignment (also annotated, tuple and nested-loop targets) counts when setup assigns the
    name: a loop temporary that merely survives from an earlier run is not state. Changes that need
    the old value count for names setup assigns or the notebook has: augmented assignments, item
    and attribute stores and deletes, and calls of :data:`MUTATING_METHODS`. Nested function and
    class bodies are their own scopes and are not searched.
    """
    ignore = state | set(plan.target_names)
    from_setup = bound_names(plan.setup)
    before = from_setup | existing
    found: dict[str, int] = {}

    def note(name: str | None, node: ast.AST, defined: set[str]) -> None:
        if name and name in defined and name not in ignore:
            found.setdefault(name, getattr(node, "lineno", 0))

    for node in _in_scope(_loop_parts(plan)):
        if isinstance(node, ast.AugAssign):
            note(_root_name(node.target), node, before)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            note(node.id, node, from_setup)
        elif isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.ctx, (ast.Store, ast.Del)):
            note(_root_name(node), node, before)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in MUTATING_METHODS
        ):
            note(_root_name(node.func.value), node, before)
    return dict(sorted(found.items(), key=lambda item: item[1]))
