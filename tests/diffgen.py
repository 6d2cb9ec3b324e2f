"""The differential test's grammar: small loop programs of the kind notebooks run, drawn by hypothesis.

A :class:`Program` is one ``%%resumable`` cell: setup (seeds ``random`` and ``numpy.random``, builds
the state), one loop (``for i in range(N)``, ``for i in todo`` over a named list the body may extend,
or a ``while todo:`` drain), a few statements in its body, and no teardown. ``cell()`` renders it for
the magic, ``plain()`` without the magic line: the uninterrupted truth.

Every variable the body changes is named in the magic, except in programs drawn with ``unnamed``: one
of them is then left out on purpose, and the test accepts a different result only if a warning names
it. Some programs iterate over a set (``next(iter(s))``): their result depends on the hash seed, and
the test generates them away when two uninterrupted runs under different ``PYTHONHASHSEED`` differ.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from hypothesis import strategies as st

# Every state variable: its setup line and whether the loop kinds need it.
SETUP = {
    "acc": "acc = 0",
    "total": "total = 0.0",
    "lst": "lst = []",
    "d": "d = {}",
    "s": "s = set()",
    "box": "box = Box()",
    "nest": 'nest = {"a": [], "b": {}}',
    "steps": "steps = 0",
    "todo": "todo = list(range({m}))",
}
CLASS = textwrap.dedent(
    """\
    class Box:
        def __init__(self):
            self.seen = set()
            self.n = 0
    """
)

# Values a statement may store: the loop variable, arithmetic on it, draws from both RNGs.
EXPRS = [
    "i",
    "i * {k}",
    "(i % {k})",
    "random.random()",
    "random.randint(0, 99)",
    "round(random.gauss(0, 1), 6)",
    "int(np.random.randint(0, 1000))",
    "np.random.randint(0, 1000)",
    "float(np.random.random())",
    "len(lst)",
]

# (statement template, variables it uses). {e}: an expression, {k}: a small modulus, {r}: a remainder.
STATEMENTS = [
    ("acc += {e}", ("acc",)),
    ("total += random.random() * {k}", ("total",)),
    ("lst.append({e})", ("lst",)),
    ("if lst and i % {k} == {r}:\n    lst.pop()", ("lst",)),
    ("d[str(i % {k})] = {e}", ("d",)),
    ("d[str(i % {k})] = d.get(str(i % {k}), 0) + 1", ("d",)),
    ("s.add(str(i % 7))", ("s",)),
    ("s.discard(str(i % {k}))", ("s",)),
    ("acc += len(s)", ("acc", "s")),
    ("lst.append(sorted(s)[0] if s else '')", ("lst", "s")),
    ("box.seen.add(str(i % {k}))", ("box",)),
    ("box.n += {e}", ("box",)),
    ('nest["a"].append({e})', ("nest",)),
    ('nest["b"].setdefault(str(i % {k}), []).append({e})', ("nest",)),
    ("if i % {k} == {r}:\n    continue", ()),
    ("if i == {m}:\n    break", ()),
    ("if i == {m}:\n    raise ValueError(f'boom at {{i}}')", ()),
]
# A statement whose value depends on the hash seed: programs using it are generated away.
HASH_DEPENDENT = ("lst.append(next(iter(s)) if s else '')", ("lst", "s"))


@dataclass(frozen=True)
class Program:
    """One generated cell: its state names, setup, loop header and body."""

    names: tuple[str, ...]  # every variable the cell changes (the loop's own list included)
    setup: tuple[str, ...]
    header: str
    prologue: tuple[str, ...]  # the body's first statements, fixed by the loop kind
    body: tuple[str, ...]
    unnamed: str | None  # a changed variable deliberately left out of the magic's names
    every: str

    @property
    def named(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n != self.unnamed)

    def plain(self) -> str:
        """The cell without the magic: the uninterrupted truth."""
        inner = "\n".join(self.prologue + self.body)
        return "\n".join(self.setup) + "\n" + self.header + "\n" + textwrap.indent(inner, "    ") + "\n"

    def cell(self, key: str, directory: str) -> str:
        line = f"%%resumable {' '.join(self.named)} --every {self.every} --name {key} --dir {directory}"
        return line + "\n" + self.plain()

    def __str__(self) -> str:
        named = " ".join(self.named)
        return f"%%resumable {named} --every {self.every}\n{self.plain()}" + (
            f"# {self.unnamed!r} is changed but deliberately not named\n" if self.unnamed else ""
        )


def _fill(template: str, draw: st.DrawFn, n: int) -> str:
    k = draw(st.integers(2, 9))
    return template.format(
        e=draw(st.sampled_from(EXPRS)).format(k=k),
        k=k,
        r=draw(st.integers(0, k - 1)),
        m=draw(st.integers(0, max(0, n - 1))),
    )


@st.composite
def programs(draw: st.DrawFn) -> Program:
    """A random loop program (hypothesis shrinks towards fewer, earlier statements)."""
    kind = draw(st.sampled_from(["range", "for-todo", "while-todo"]))
    n = draw(st.integers(10, 60))
    seed = draw(st.integers(0, 2**16))
    pool = STATEMENTS + ([HASH_DEPENDENT] if draw(st.integers(0, 9)) == 0 else [])
    chosen = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=5))
    body = [_fill(template, draw, n) for template, _ in chosen]
    if HASH_DEPENDENT in pool and HASH_DEPENDENT not in chosen:
        body.append(HASH_DEPENDENT[0])
        chosen.append(HASH_DEPENDENT)
    used = {v for _, variables in chosen for v in variables} | {"acc"}
    prologue: list[str] = []
    if kind == "range":
        header = f"for i in range({n}):"
    elif kind == "for-todo":
        # the loop walks a named list its body extends, bounded by the list's length
        header = "for i in todo:"
        cap = n + draw(st.integers(0, 20))
        prologue.append(
            f"if i % {draw(st.integers(2, 6))} == 0 and len(todo) < {cap}:\n    todo.append(i + 1000)"
        )
        used.add("todo")
    else:
        # a drain: pop one item per iteration, push a bounded number back
        header = "while todo:"
        prologue.append(f"i = todo.pop({draw(st.sampled_from(['', '0']))})")
        prologue.append("steps += 1")
        prologue.append(
            f"if i % {draw(st.integers(2, 6))} == 1 and steps < {n}:\n    todo.append(i // 2 + 1)"
        )
        used |= {"todo", "steps"}
    # a deterministic order: the magic's names and the setup lines
    names = tuple(v for v in SETUP if v in used)
    setup = ["import random", "import numpy as np", f"random.seed({seed})", f"np.random.seed({seed})"]
    if "box" in names:
        setup.append(CLASS.rstrip())
    setup += [SETUP[v].replace("{m}", str(n)) for v in names]
    candidates = [v for v in names if v not in ("todo", "steps")]
    unnamed = None
    if len(candidates) > 1 and draw(st.integers(0, 9)) == 0:
        unnamed = draw(st.sampled_from(candidates))
    every = draw(st.sampled_from(["1it", "2it", "3it"]))
    return Program(names, tuple(setup), header, tuple(prologue), tuple(body), unnamed, every)
