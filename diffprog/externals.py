"""Values a traced function reads that are not its arguments.

Ordinary Python reads globals, closure cells and attributes freely, and users change
them between calls: ``W = new_weights`` in a notebook, ``c += 1`` on a closed-over
array, ``model.W = ...`` on an object passed in. A compiled program that kept the
values seen while tracing would silently compute with stale data, so while the root
trace of a call runs (see :func:`diffprog.api.trace_call`):

* **float arrays and Python floats** that the function reads from its globals or
  closure cells (and those of the plain Python functions it calls, a few levels deep)
  become *inputs* of the program, read again at every call: rebinding the name or
  mutating the array in place is seen, and everything computed from them is traced.
  The function runs on a copy of its globals with those names bound to tracers
  (``types.FunctionType`` over the same code), never on the module itself.
* **float arrays held by attributes** of objects passed as (static) arguments become
  inputs where the function uses them directly in an operation with a traced value
  (matched by identity), and every such attribute is *guarded*: binding it to another
  array retraces.
* **ints, bools, strings, None and tuples of them** (sizes, flags, modes) and integer
  or boolean arrays (index arrays, masks) are guarded by value: a changed value
  retraces, as torch.compile's guards do. So are floats read from attributes.
* If tracing fails because a lifted value is traced (``float(W[0])`` of a lifted array
  would drop its gradient), the function is traced again with every read guarded
  instead (by content up to ``CONTENT_GUARD_MAX`` elements, by identity above).

What is not seen (documented in the README): in-place changes to an attribute's array
that only reach the result through values computed from it without a traced operand,
state behind other objects (a dict or list of arrays held in a global, module
attributes of other modules), and functions that assign globals (``global x``) which
run on the real module and are guarded only.
"""
from __future__ import annotations

import dis
import os
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .ir import Aval, aval_of

#: reads through plain Python functions the traced function calls, this many levels
MAX_DEPTH = 4
#: guarded (not lifted) arrays up to this many elements are compared by content at each
#: call, bigger ones by identity (a copy and a comparison per call would cost too much)
CONTENT_GUARD_MAX = 1 << 16

_STATIC_TYPES = (int, bool, str, bytes, type(None))
_LIBRARY_DIRS = tuple({os.path.dirname(os.path.dirname(os.__file__)), sys.prefix,
                       sys.base_prefix, os.path.dirname(os.path.abspath(__file__))})


class ExternalChanged(Exception):
    """A value read at call time no longer fits the program (private: the API turns it
    into a retrace, like a failed guard). ``line`` says which value, for warnings."""

    def __init__(self, where: str):
        super().__init__(f"{where} changed since the program was traced")
        self.line = where


@dataclass
class External:
    """One value read from outside the function's arguments.

    ``read(leaves)`` returns its current value (``leaves``: the call's flat argument
    leaves, for attributes of arguments); ``lifted`` values are program inputs (checked
    against ``aval``), the others are guarded: ``expected`` must still hold.
    """

    where: str
    read: Callable
    lifted: bool
    aval: Aval | None = None
    expected: Any = None
    by_identity: bool = False
    attribute: tuple | None = None  # (argument leaf, name) for attributes of arguments


def _is_static(value) -> bool:
    if isinstance(value, tuple):
        return len(value) <= 64 and all(_is_static(v) for v in value)
    return type(value) in _STATIC_TYPES or isinstance(value, (np.dtype, type))


def _liftable(value) -> bool:
    """Data the program takes as an input: plain float arrays, NumPy and Python floats."""
    if type(value) is float:
        return True
    if type(value) is np.ndarray or isinstance(value, np.floating):
        return value.dtype.kind == "f"
    return False


def _guardable_array(value) -> bool:
    return type(value) is np.ndarray and value.dtype.kind in "biufc"


class ExternalReads:
    """The externals of one root trace, in the order their inputs were created."""

    def __init__(self, trace, leaves: list, lift: bool = True):
        self.trace = trace
        self.leaves = leaves
        self.lift = lift  # False: guard everything (a retrace after lifting failed)
        self.items: list[External] = []
        self._by_key: dict = {}
        self._rebuilt: dict = {}
        self._lifted_attributes: set = set()
        self.attribute_arrays: dict = {}

    # ------------------------------------------------------------------ at trace time
    def value_for(self, key, value, where: str, read: Callable):
        """What the traced code sees instead of ``value`` (or ``value`` itself)."""
        known = self._by_key.get(key)
        if known is not None:
            return known
        if self.lift and _liftable(value):
            tracer = self.trace.new_input(aval_of(value), value)
            self.items.append(External(where, read, True, aval=tracer.aval))
            self._by_key[key] = tracer
            return tracer
        self.guard(key, value, where, read)
        return value

    def guard(self, key, value, where: str, read: Callable) -> None:
        if key in self._by_key:
            return
        if _is_static(value) or type(value) is float or isinstance(value, np.generic):
            self.items.append(External(where, read, False, expected=value))
        elif _guardable_array(value) and value.size <= CONTENT_GUARD_MAX:
            self.items.append(External(where, read, False, expected=value.copy()))
        elif type(value) is np.ndarray or _liftable(value):
            self.items.append(External(where, read, False, expected=value, by_identity=True))
        else:
            return
        self._by_key[key] = value

    def rebuilt(self, fn: Callable, depth: int = 0) -> Callable:
        """``fn`` running on tracers for the arrays and floats it reads (see module doc)."""
        if not isinstance(fn, types.FunctionType) or depth > MAX_DEPTH or _is_library(fn):
            return fn
        known = self._rebuilt.get(id(fn))
        if known is not None:
            return known[1]
        self._rebuilt[id(fn)] = (fn, fn)  # recursion (and mutual recursion) ends here
        new = self._rebuild(fn, depth)
        self._rebuilt[id(fn)] = (fn, new)
        return new

    def _rebuild(self, fn: types.FunctionType, depth: int) -> Callable:
        code, glob = fn.__code__, fn.__globals__
        module = glob.get("__name__", "?")
        written = _written_names(code)
        writes = any(kind == "global" for kind, _ in written)
        replaced = {}
        for name in _global_names(code):
            if name not in glob or ("global", name) in written:
                continue  # a name the function assigns is its output, not an input
            value = glob[name]
            where = f"global {name!r} of module {module}"
            key = ("global", id(glob), name)
            read = _global_reader(glob, name)
            if writes:  # runs on the real module: guard only
                self.guard(key, value, where, read)
                continue
            seen = self.value_for(key, value, where, read)
            if seen is not value:
                replaced[name] = seen
            elif isinstance(value, types.FunctionType):
                inner = self.rebuilt(value, depth + 1)
                if inner is not value:
                    replaced[name] = inner
        cells = self._cells(fn, depth, writes, written)
        if not replaced and cells is None:
            return fn
        proxy = glob if not replaced else {**glob, **replaced}
        new = types.FunctionType(code, proxy, fn.__name__, fn.__defaults__,
                                 cells if cells is not None else fn.__closure__)
        new.__kwdefaults__ = fn.__kwdefaults__
        new.__qualname__ = fn.__qualname__
        new.__dict__.update(fn.__dict__)
        return new

    def _cells(self, fn: types.FunctionType, depth: int, writes: bool, written: set):
        """New closure cells where a cell holds a liftable value (None: keep them all)."""
        if not fn.__closure__:
            return None
        new_cells, changed = [], False
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__):
            try:
                value = cell.cell_contents
            except ValueError:  # not assigned yet
                new_cells.append(cell)
                continue
            if ("cell", name) in written:  # nonlocal state the function updates: its own
                new_cells.append(cell)
                continue
            where = f"variable {name!r} closed over by {fn.__qualname__}"
            key, read = ("cell", id(cell)), _cell_reader(cell)
            seen = value if writes else self.value_for(key, value, where, read)
            if writes:
                self.guard(key, value, where, read)
            if seen is value and isinstance(value, types.FunctionType):
                seen = self.rebuilt(value, depth + 1)
            changed = changed or seen is not value
            new_cells.append(types.CellType(seen) if seen is not value else cell)
        return tuple(new_cells) if changed else None

    def guard_attributes(self, static_leaves: dict) -> None:
        """Guard the array/scalar attributes of objects passed as static arguments, and
        remember their float arrays for lifting where used directly (see lift_constant)."""
        for pos, obj in static_leaves.items():
            attrs = getattr(obj, "__dict__", None)
            if not isinstance(attrs, dict) or isinstance(obj, (type, types.ModuleType,
                                                               types.FunctionType)):
                continue
            for name, value in list(attrs.items()):
                where = f"attribute {name!r} of argument leaf {pos} ({type(obj).__name__})"
                read = _attribute_reader(pos, name)
                if _liftable(value) and type(value) is np.ndarray:
                    self.attribute_arrays[id(value)] = (("attr", pos, name), value, where, read)
                count = len(self.items)
                self.guard(("attr-guard", pos, name), value, where, read)
                if len(self.items) > count:
                    self.items[-1].attribute = (pos, name)

    def lift_constant(self, value):
        """An attribute's float array used as an operand: the program's input instead."""
        found = self.attribute_arrays.get(id(value))
        if found is None or found[1] is not value or not self.lift:
            return None
        key, _, where, read = found
        known = self._by_key.get(key)
        if known is not None:
            return known
        tracer = self.trace.new_input(aval_of(value), value)
        self.items.append(External(where, read, True, aval=tracer.aval))
        self._by_key[key] = tracer
        self._lifted_attributes.add(key[1:])
        return tracer

    # ------------------------------------------------------------------- at call time
    def reader(self) -> "Reader | None":
        """The call-time reader. An attribute lifted as an input is read at every call, so
        its identity guard is dropped (an optimiser rebinding model.W each step must not
        retrace each step)."""
        lifted = self._lifted_attributes
        items = tuple(i for i in self.items if i.lifted or i.attribute not in lifted)
        return Reader(items) if items else None


class Reader:
    """Reads a program's externals at call time: the lifted values, in input order, after
    checking every guard. Raises ExternalChanged when one no longer holds."""

    __slots__ = ("items",)

    def __init__(self, items: tuple):
        self.items = items

    def __call__(self, leaves) -> list:
        values = []
        for item in self.items:
            try:
                value = item.read(leaves)
            except (KeyError, AttributeError, ValueError, IndexError, TypeError):
                raise ExternalChanged(item.where) from None
            if item.lifted:
                if not _fits(value, item.aval):
                    raise ExternalChanged(item.where)
                values.append(value)
            elif not _holds(item, value):
                raise ExternalChanged(item.where)
        return values


def _fits(value, aval: Aval) -> bool:
    if aval.weak:
        return type(value) is float
    return (type(value) is np.ndarray or isinstance(value, np.floating)) and \
        value.shape == aval.shape and value.dtype == aval.dtype


def _holds(item: External, value) -> bool:
    expected = item.expected
    if item.by_identity:
        return value is expected
    if isinstance(expected, np.ndarray):
        return type(value) is np.ndarray and value.shape == expected.shape and \
            value.dtype == expected.dtype and np.array_equal(value, expected)
    if type(value) is not type(expected):
        return False
    if isinstance(expected, (float, np.floating)) and expected != expected:
        return value != value  # NaN guards on NaN
    return value == expected


# ------------------------------------------------------------------------ helpers

def _global_reader(glob: dict, name: str):
    return lambda leaves: glob[name]


def _cell_reader(cell):
    return lambda leaves: cell.cell_contents


def _attribute_reader(pos: int, name: str):
    return lambda leaves: leaves[pos].__dict__[name]


def _global_names(code: types.CodeType) -> set:
    """Global names the code (and code nested in it: lambdas, comprehensions) loads."""
    names = {ins.argval for ins in dis.get_instructions(code)
             if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _written_names(code: types.CodeType) -> set:
    """("global", name) for names the code assigns with ``global``, ("cell", name) for
    free variables it assigns with ``nonlocal`` (nested code included)."""
    out = set()
    for ins in dis.get_instructions(code):
        if ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL"):
            out.add(("global", ins.argval))
        elif ins.opname in ("STORE_DEREF", "DELETE_DEREF") and ins.argval in code.co_freevars:
            out.add(("cell", ins.argval))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out |= {(k, n) for k, n in _written_names(const)
                    if k == "global" or n in code.co_freevars}
    return out


def _is_library(fn: types.FunctionType) -> bool:
    """Functions of installed libraries (and of diffprog) are not user state."""
    filename = fn.__code__.co_filename
    if filename.startswith("<"):  # notebooks, exec'd code: the user's
        return False
    path = os.path.abspath(filename)
    return "site-packages" in path or "dist-packages" in path or path.startswith(_LIBRARY_DIRS)


# ----------------------------------------------------------------- the active reads

def active(stack: tuple) -> ExternalReads | None:
    """The externals of the outermost trace that collects them (the root of a call)."""
    for trace in stack:
        reads = getattr(trace, "externals", None)
        if reads is not None:
            return reads
    return None
