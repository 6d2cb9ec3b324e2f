"""The code a loop can reach, and the simple values that code reads: what a resume compares besides the
cell's own text and inputs.

Starting from the objects a cell reads (and the state it restores), :func:`reach` walks the user's own
code: functions and classes defined in the notebook (``__module__`` ``"__main__"`` or the namespace's
``__name__``) or in the user's modules (a file under the working folder, outside any
``site-packages``). Through each function it follows the globals its code actually loads
(``LOAD_GLOBAL``/``LOAD_NAME`` in its bytecode and its nested code, not every name in ``co_names``,
which holds attribute names too), its closure's cells, its defaults and keyword defaults and its
``__wrapped__`` chain; through a ``functools.partial`` its function and bound arguments; through a
bound method its function and its instance's class; through a class its methods (restored instances
use the live class), its simple attributes and its user-defined bases; through a user module every
function and class it defines.

It returns the code as normalised source (``ast.unparse`` of the parsed source: moving a cell, adding
blank lines or comments is not a change; a code-object digest without line numbers when the source is
not available) and the values the code reads that are not code, keyed by what reads them
(``scale (read by f)``), for the run's inputs: the run fingerprints the plain ones
(:func:`~resumable_magic.state.fingerprint.fingerprint_inputs`). :func:`code_block` and
:func:`split_code` put the code into, and take it out of, the text a checkpoint records as ``code``.
"""

from __future__ import annotations

import ast
import dis
import functools
import inspect
import os
import re
import sys
import textwrap
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import xxhash

__all__ = ["MARKER", "Reached", "align_recorded", "code_block", "reach", "split_code"]

MARKER = "# ---- code the loop calls (recorded by resumable_magic) ----"
_HEADER = re.compile(r"^# == (.+) ==$", re.M)
_KEY = re.compile(r"^(?P<name>[A-Za-z_]\w*) \(read by (?P<owner>[^,()]+)\)$")  # a global's key
MAX_FUNCTIONS = 2_000  # a walk stops there: a manifest stays small
_GLOBAL_LOADS = {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"}
_GLOBAL_STORES = {"STORE_GLOBAL", "DELETE_GLOBAL"}
# A global container the code changes in place (a memo cache, a log) is state, not an input.
_MUTATORS = {"append", "extend", "insert", "update", "add", "pop", "popitem", "setdefault", "clear"}
_MUTATORS |= {"remove", "discard", "sort", "reverse", "__setitem__", "__delitem__"}


@dataclass
class Reached:
    """What :func:`reach` found: ``code`` (normalised source by qualified name) and ``values`` (the
    values that code reads, by ``name (read by owner)``)."""

    code: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


def _is_user_file(path: str | None, root: str) -> bool:
    if not path:
        return False
    real = os.path.realpath(path)
    if not real.startswith(root + os.sep):
        return False
    parts = real.split(os.sep)
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return (
        "site-packages" not in parts
        and "dist-packages" not in parts
        and not any(real.startswith(p + os.sep) for p in prefixes if p != root)
    )


def _library_file(path: str) -> bool:
    """A file of Python's or of an installed package (a wrapper ``functools.wraps`` gave a notebook
    function's ``__module__`` is still library code)."""
    if path.startswith("<"):
        return False
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return (
        "site-packages" in parts
        or "dist-packages" in parts
        or any(real.startswith(p + os.sep) for p in prefixes)
    )


def _code_digest(code: types.CodeType) -> str:
    """A digest of a code object that ignores line numbers and file names."""

    def parts(c: types.CodeType) -> list[Any]:
        consts = [parts(k) if isinstance(k, types.CodeType) else repr(k) for k in c.co_consts]
        return [c.co_code.hex(), consts, c.co_names, c.co_varnames, c.co_freevars, c.co_cellvars,
                c.co_argcount, c.co_kwonlyargcount, c.co_flags]  # fmt: skip

    return xxhash.xxh3_128_hexdigest(repr(parts(code)).encode())[:16]


def _source(code: types.CodeType) -> str:
    """Normalised source of ``code`` (see the module doc)."""
    try:
        text = textwrap.dedent(inspect.getsource(code))
        tree = ast.parse(text)
        first = tree.body[0] if tree.body else None
        # A file changed on disk since the function was compiled gives another text at its old line.
        if isinstance(first, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and (
            first.name == code.co_name
        ):
            return ast.unparse(tree)
    except (OSError, TypeError, SyntaxError, IndexError):
        pass  # no source (exec'd text, a lambda inside an expression): the compiled code stands in
    return f"<source not available: compiled code {_code_digest(code)}>"


def _loads(code: types.CodeType) -> tuple[list[str], set[str], set[str]]:
    """The global names ``code`` (and its nested code) loads, in order; those it stores or deletes;
    and those it changes in place (``name.append(...)``, ``name[k] = v``)."""
    loads: list[str] = []
    stores: set[str] = set()
    mutated: set[str] = set()
    instructions = list(dis.get_instructions(code))
    for i, ins in enumerate(instructions):
        if ins.opname in _GLOBAL_LOADS and isinstance(ins.argval, str):
            loads.append(ins.argval)
            after = instructions[i + 1 : i + 4]
            if after and after[0].opname in ("LOAD_ATTR", "LOAD_METHOD") and after[0].argval in _MUTATORS:
                mutated.add(ins.argval)
            if any(a.opname in ("STORE_SUBSCR", "DELETE_SUBSCR") for a in after):
                mutated.add(ins.argval)
        elif ins.opname in _GLOBAL_STORES and isinstance(ins.argval, str):
            stores.add(ins.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            inner = _loads(const)
            loads.extend(inner[0])
            stores |= inner[1]
            mutated |= inner[2]
    return loads, stores, mutated


class _Walk:
    def __init__(self, namespace: Mapping[str, Any], exclude: Iterable[str], root: str) -> None:
        self.namespace, self.exclude, self.root = namespace, set(exclude), root
        self.modules = {"__main__", str(namespace.get("__name__", "__main__"))}
        self.seen: set[int] = set()
        self.found = Reached()
        self.written: set[str] = set()  # globals some reached code assigns or changes: state

    def is_user(self, obj: Any) -> bool:
        module = getattr(obj, "__module__", None)
        if not isinstance(module, str):
            return False
        if module in self.modules:
            return True
        return _is_user_file(getattr(sys.modules.get(module), "__file__", None), self.root)

    def is_code(self, value: Any) -> bool:
        """Code to walk rather than a value: a function, class, module, ..., or a user class's instance."""
        return isinstance(value, _CODE) or self.is_user(type(value))

    def qualname(self, obj: Any, code: types.CodeType | None = None) -> str:
        name = getattr(code, "co_qualname", None) or getattr(obj, "__qualname__", None) or repr(obj)
        module = getattr(obj, "__module__", None)
        return name if module in self.modules or not module else f"{module}.{name}"

    def value(self, key: str, value: Any) -> None:
        self.found.values.setdefault(key, value)

    def visit(self, obj: Any, label: str) -> None:
        """Walk ``obj`` (reached as ``label``) if it is code; ignore anything else."""
        if id(obj) in self.seen or len(self.found.code) >= MAX_FUNCTIONS:
            return
        if isinstance(obj, types.MethodType):
            self.seen.add(id(obj))
            self.visit(obj.__func__, label)
            self.visit(type(obj.__self__) if not isinstance(obj.__self__, type) else obj.__self__, label)
        elif isinstance(obj, functools.partial):
            self.seen.add(id(obj))
            owner = f"partial({getattr(obj.func, '__qualname__', label)})"
            for i, arg in enumerate(obj.args):
                self.value(f"argument {i} (read by {owner})", arg)
                self.visit(arg, owner)
            for name, arg in obj.keywords.items():
                self.value(f"{name}= (read by {owner})", arg)
                self.visit(arg, owner)
            self.visit(obj.func, label)
        elif isinstance(obj, (staticmethod, classmethod)):
            self.visit(obj.__func__, label)
        elif isinstance(obj, property):
            for part in (obj.fget, obj.fset, obj.fdel):
                if part is not None:
                    self.visit(part, label)
        elif isinstance(obj, types.FunctionType):
            self.function(obj)
        elif isinstance(obj, type):
            self.klass(obj)
        elif isinstance(obj, types.ModuleType):
            self.module(obj)
        elif self.is_user(type(obj)):  # an instance of a user class: the loop calls its live methods
            self.seen.add(id(obj))
            self.visit(type(obj), label)

    def function(self, fn: types.FunctionType) -> None:
        wrapped = getattr(fn, "__wrapped__", None)
        if not self.is_user(fn) or _library_file(fn.__code__.co_filename):
            self.seen.add(id(fn))
            if wrapped is not None:  # a library decorator around the user's function
                self.visit(wrapped, getattr(wrapped, "__qualname__", "?"))
            return
        self.seen.add(id(fn))
        code = fn.__code__
        owner = self.qualname(fn, code)
        self.found.code.setdefault(owner, _source(code))
        loads, stores, mutated = _loads(code)
        self.written |= stores | mutated
        scope = fn.__globals__
        for name in loads:
            if name not in scope:
                continue  # a builtin, or not defined yet
            value = scope[name]
            if self.is_code(value):
                self.visit(value, name)
            elif name not in self.exclude:
                self.value(f"{name} (read by {owner})", value)
        for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=True):
            try:
                content = cell.cell_contents
            except ValueError:
                continue  # an empty cell: the name is not bound yet
            if self.is_code(content):
                self.visit(content, name)
            else:
                self.value(f"{name} (read by {owner}, captured)", content)
        names = code.co_varnames[code.co_argcount - len(fn.__defaults__ or ()) : code.co_argcount]
        for name, default in zip(names, fn.__defaults__ or (), strict=True):
            self.value(f"{name}= (read by {owner}, default)", default)
            self.visit(default, name)
        for name, default in (fn.__kwdefaults__ or {}).items():
            self.value(f"{name}= (read by {owner}, default)", default)
            self.visit(default, name)
        if wrapped is not None:
            self.visit(wrapped, owner)

    def klass(self, cls: type) -> None:
        self.seen.add(id(cls))
        if not self.is_user(cls):
            return
        owner = self.qualname(cls)
        for base in cls.__mro__[1:]:
            self.visit(base, base.__qualname__)
        for name, member in sorted(vars(cls).items()):
            if name.startswith("__") and name.endswith("__") and not callable(member):
                continue  # __module__, __doc__, __dict__, ...
            if self.is_code(member) or isinstance(member, (staticmethod, classmethod, property)):
                self.visit(member, f"{owner}.{name}")
            elif not name.startswith("_"):
                self.value(f"{owner}.{name} (read by {owner})", member)

    def module(self, module: types.ModuleType) -> None:
        self.seen.add(id(module))
        if not _is_user_file(getattr(module, "__file__", None), self.root):
            return
        for _, member in sorted(vars(module).items()):
            if isinstance(member, (types.FunctionType, type)) and member.__module__ == module.__name__:
                self.visit(member, member.__qualname__)


_CODE = (types.FunctionType, types.MethodType, functools.partial, type, types.ModuleType)


def reach(
    names: Iterable[str],
    namespace: Mapping[str, Any],
    *,
    exclude: Iterable[str] = (),
    root: str | os.PathLike[str] | None = None,
) -> Reached:
    """Walk the code reachable from the values of ``names`` in ``namespace`` (see the module doc).

    ``exclude``: names whose values are not inputs (the cell's own inputs, its state, what it assigns).
    ``root``: the working folder (default: the current one); a module whose file is under it (outside
    ``site-packages``) is the user's. Values some reached code assigns or changes in place are left out.
    """
    walk = _Walk(namespace, exclude, os.path.realpath(root if root is not None else os.getcwd()))
    for name in sorted(names):
        if name in namespace:
            try:
                walk.visit(namespace[name], name)
            except Exception:  # an object that resists inspection: what was found until then stays
                continue
    values = {
        key: value
        for key, value in walk.found.values.items()
        if not ((m := _KEY.match(key)) and m["name"] in walk.written)
    }
    return Reached(dict(sorted(walk.found.code.items())), values)


def code_block(code: Mapping[str, str]) -> str:
    """The text appended to a cell's code to record ``code`` (empty when there is none)."""
    if not code:
        return ""
    sections = "\n".join(f"# == {name} ==\n{text}" for name, text in sorted(code.items()))
    return f"\n{MARKER}\n{sections}\n"


def split_code(text: str) -> tuple[str, dict[str, str] | None]:
    """``(cell's code, reached code by name)`` from a recorded ``code`` text; None: not recorded (a
    checkpoint written before reached code was)."""
    cell, sep, rest = text.partition(f"\n{MARKER}\n")
    if not sep:
        return text, None
    found: dict[str, str] = {}
    headers = list(_HEADER.finditer(rest))
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(rest)
        found[header[1]] = rest[header.end() + 1 : end].rstrip("\n")
    return cell, found


def align_recorded(recorded: Mapping[str, str], inputs: Mapping[str, Any]) -> dict[str, str]:
    """A checkpoint's recorded inputs re-keyed to this run's ``inputs``: a global recorded as read by
    one function and read by another now is compared under today's key; one no reached code reads
    now is dropped (the changed code says so)."""
    now_by_name = {m["name"]: key for key in inputs if (m := _KEY.match(key))}
    aligned: dict[str, str] = {}
    for key, text in recorded.items():
        m = _KEY.match(key)
        if m is None or key in inputs:
            aligned[key] = text
        elif m["name"] in now_by_name:
            aligned.setdefault(now_by_name[m["name"]], text)
    return aligned
