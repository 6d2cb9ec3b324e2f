"""One resumable cell: setup, then the loop under a :class:`~resumable_magic.core.run.Resumable`, then teardown.

Plain Python (the magic hands it the cell already transformed into Python, and its namespace).
Order of a run: the checkpoint is found and checked (nothing runs if resuming would be wrong); setup
runs; a ``for`` loop's iterable is evaluated with setup's values and advanced past the completed
iterations; the state is restored; the loop continues; teardown runs.
"""

from __future__ import annotations

import os
import types
from collections import ChainMap
from collections.abc import Sequence
from typing import Any

from resumable_magic.core import messages
from resumable_magic.core.cellsplit import (
    COUNTER_VAR,
    LOOP_VAR,
    bound_names,
    compile_cell,
    free_names,
    iterable_names,
    loop_reads,
    split_cell,
    unnamed_changes,
)
from resumable_magic.core.nestsplit import INNER_VAR, find_inner, inner_accumulators, rewrite_inner
from resumable_magic.core.policy import Every
from resumable_magic.core.run import Resumable
from resumable_magic.core.unnamed import watchable
from resumable_magic.errors import OptionError
from resumable_magic.progress.model import ProgressModel
from resumable_magic.state.fingerprint import param_record, param_text
from resumable_magic.state.reach import code_block, reach


def run_cell(
    source: str,
    names: Sequence[str],
    namespace: dict[str, Any],
    *,
    key: str,
    dir: str | os.PathLike[str] | None = None,
    every: str | int | Every | None = None,
    fresh: bool = False,
    accept_changes: bool = False,
    progress: ProgressModel | None = None,
    filename: str = "<resumable-cell>",
    line_offset: int = 0,
    code: str | None = None,
    params: Sequence[str] = (),
    max_size: str | int | None = None,
) -> Resumable:
    """Run ``source`` (setup, one top-level loop, teardown) resumably in ``namespace``.

    ``code`` is the text compared across runs to warn about edits (default: ``source``; the code the
    loop can reach is appended, see :mod:`resumable_magic.state.reach`). A final bare
    expression in teardown is shown through ``sys.displayhook``, as a cell's value. ``params`` names
    variables (defined before the cell or in its setup) whose values become part of the key, so runs
    with different parameters keep separate checkpoints; setup then runs before the checkpoint is
    looked up. Returns the run.
    """
    __tracebackhide__ = True
    plan = split_cell(source, line_offset=line_offset)
    nesting = find_inner(plan)
    # A statement that cannot stand there: refused before setup.
    compiled = compile_cell(plan, filename, rewrite_inner(plan, nesting))
    free = free_names(plan)
    inputs = {n: namespace[n] for n in free if n in namespace}
    # The code the loop calls (notebook and user-module functions, classes, ...) is
    # compared as code, and the values it reads as inputs (those the cell binds or names are not).
    bound = bound_names([*plan.setup, plan.loop, *plan.teardown])
    reached = reach(free | set(names), namespace, exclude={*inputs, *names, *bound, *params})
    inputs.update(reached.values)
    if params:
        # The key depends on values setup may assign: run setup first, then find the checkpoint.
        exec(compiled.setup, namespace)
        key = f"{key}/{params_key(params, namespace)}"
    run = Resumable(
        key,
        namespace,
        names,
        dir=dir,
        every=every,
        fresh=fresh,
        accept_changes=accept_changes,
        inputs=inputs,
        params={n: param_record(namespace[n]) for n in params},
        code=(code if code is not None else source) + code_block(reached.code),
        progress=progress,
        header=plan.header,
        final_names=plan.target_names,
        max_size=max_size,
        nested=nesting.index is not None,
    )
    run.nesting_note = nesting.why_not
    if run.nest is not None:
        run.nest.header, run.nest.persistent = nesting.header, nesting.persistent
    existing = {
        k for k, v in namespace.items() if not k.startswith("_") and not isinstance(v, types.ModuleType)
    }
    accumulated = inner_accumulators(plan, nesting, set(names))
    changed = {
        n: line for n, line in unnamed_changes(plan, existing, set(names)).items() if n not in accumulated
    }
    if changed:
        listed = ", ".join(f"{n!r} (line {line})" for n, line in changed.items())
        they, them = ("it", "it") if len(changed) == 1 else ("they", "them")
        run.progress.message(
            "warning",
            f"the loop changes {listed}, defined before the loop but not named as state: after a crash "
            f"{they} would not be restored. Add {them} to the names if the result depends on {them}.",
        )
    if accumulated:
        run.progress.message("warning", messages.inner_accumulators_text(accumulated, nesting.header))

    run.open()  # from here on the run holds its lease: close() gives it back, however this ends
    try:
        if not params:
            exec(compiled.setup, namespace)
        if run.replayed:
            run.restore()
        else:
            if compiled.iterable is not None:
                # An iterable that reads named state (`for x in todo:`) must walk the objects the loop
                # will change: evaluate it over the restored ones, which restore() then binds (the
                # RNG still as setup left it, so a generator skipping ahead draws what it drew then).
                restored = run.restored_values()
                scope = ChainMap(restored, namespace) if restored else namespace
                iterable = eval(compiled.iterable, namespace, scope)
                prepared = run.prepare(iterable)
            run.restore()
            # Unnamed objects the loop reads (not its iterable, which the resume reproduces): a change
            # made to one through a method call is warned about after the first checkpoint.
            iterated = iterable_names(plan)
            run.watch_unnamed(
                {
                    n: namespace[n]
                    for n in loop_reads(plan) - set(names) - set(changed) - iterated - set(plan.target_names)
                    if n in namespace and not n.startswith("_") and watchable(namespace[n])
                }
            )
            if run.nest is not None:
                namespace[INNER_VAR] = run.nest.inner_loop
            if compiled.iterable is not None:
                namespace[LOOP_VAR] = run.iterate(prepared)
            else:
                namespace[LOOP_VAR] = run.count(namespace, COUNTER_VAR)
            exec(compiled.loop, namespace)
            run.finish()
    except BaseException as exc:
        run.close(exc)
        raise
    finally:
        namespace.pop(LOOP_VAR, None)
        namespace.pop(COUNTER_VAR, None)
        namespace.pop(INNER_VAR, None)
    run.close()

    exec(compiled.teardown, namespace)
    if compiled.display is not None:
        # 'single' mode hands the value to sys.displayhook: IPython shows it as the cell's Out[n].
        exec(compiled.display, namespace)
    return run


def params_key(params: Sequence[str], namespace: dict[str, Any]) -> str:
    """``lr=0.01,seed=3``: each parameter's value as short safe text, or ``h<digest of its content>``."""
    parts = []
    for name in params:
        if name not in namespace:
            raise OptionError("--params", name, "name variables defined before the cell or in its setup")
        parts.append(f"{name}={param_text(name, namespace[name])}")
    return ",".join(parts)
