"""Splitting a cell and analysing what its loop reads and changes (pure ast)."""

from __future__ import annotations

import pytest

from resumable_magic.core.cellsplit import (
    free_names,
    split_cell,
    unnamed_changes,
)
from resumable_magic.errors import CellStructureError


def test_split_setup_loop_teardown():
    plan = split_cell("a = 1\nb = 2\nfor i, (x, y) in enumerate(z):\n    a += x\nprint(a)\na\n")
    assert plan.kind == "for"
    assert len(plan.setup) == 2 and len(plan.teardown) == 2
    assert plan.header == "for i, (x, y) in enumerate(z):"
    assert plan.target_names == ("i", "x", "y")


def test_line_offset_keeps_headers_and_line_numbers():
    plan = split_cell("x = 0\nwhile x < 3:\n    x += 1\n", line_offset=1)
    assert plan.kind == "while" and plan.loop.lineno == 3 and plan.header == "while x < 3:"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = 1\n", "needs one top-level"),
        ("if True:\n    for i in range(3): pass\n", "needs one top-level"),
        ("for i in range(3): pass\nfor j in range(3): pass\n", r"lines 1, 2"),
        ("for i in range(3) pass\n", "syntax error at line 1"),
    ],
)
def test_structure_errors_say_what_to_do(source, message):
    with pytest.raises(CellStructureError, match=message):
        split_cell(source)


def test_free_names_are_read_but_never_bound():
    plan = split_cell(
        "import math\ntotal = 0\nfor i in range(N):\n    total += f(i) * scale + math.pi\nprint(total, label)\n"
    )
    assert free_names(plan) == {"N", "f", "scale", "label"}


def test_unnamed_changes_found_and_lined():
    source = """\
a, b, c, d, e, o, other, p = 0, 0, [], {}, [], None, 0, 0
for i in range(3):
    a = i
    b += 1
    c.append(i)
    d[i] = 1
    o.attr.x = 2
    (p, q) = 1, 2
    e.count(i)
    total += i
    tmp = 5
    def inner():
        other = 1
"""
    plan = split_cell(source)
    changed = unnamed_changes(plan, existing={"p", "total", "tmp"}, state={"total"})
    assert changed == {"a": 3, "b": 4, "c": 5, "d": 6, "o": 7, "p": 8}


def test_notebook_variables_count_for_in_place_changes_not_for_plain_assignment():
    plan = split_cell(
        "for i in range(3):\n    item = i\n    acc += item\n    log.append(item)\n    cache[i] = 1\n"
    )
    changed = unnamed_changes(plan, existing={"item", "acc", "log", "cache"}, state=set())
    assert changed == {"acc": 3, "log": 4, "cache": 5}  # `item` is a loop temporary left by an earlier run


def test_loop_target_and_state_are_not_reported():
    plan = split_cell("for i in range(3):\n    s.add(i)\n")
    assert unnamed_changes(plan, existing={"i", "s"}, state={"s"}) == {}
