"""Random draws inside traced code.

A traced function runs once, on concrete values, and its program is then reused: a
``np.random`` draw made while tracing would become a constant of the program, and every
later call would return the same "random" numbers (and their gradient). diffprog
notices a draw by comparing the states of the random generators the function can reach
before and after its trace: NumPy's global generator (``np.random.normal``, ...), and the
``Generator``/``RandomState`` objects among its arguments, globals, closure cells and
default values. A function that drew is traced anew at every call (see
:mod:`diffprog.api`), so each call draws fresh numbers from the same generator, exactly
as plain NumPy would, and its gradient is that of the numbers drawn in that call.
"""
from __future__ import annotations

import types
from typing import Any, Callable

import numpy as np

_GENERATORS = (np.random.Generator, np.random.RandomState, np.random.BitGenerator)


def _state_of(gen) -> Any:
    if isinstance(gen, np.random.RandomState):
        return gen.get_state(legacy=False)
    bits = gen if isinstance(gen, np.random.BitGenerator) else gen.bit_generator
    return bits.state


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


def _code_names(code: types.CodeType) -> set:
    """Global names a function's code (and the code nested in it) reads."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _reachable_generators(fn: Callable, leaves: list) -> dict:
    """name -> generator object, for the generators ``fn`` can reach directly."""
    found = {}
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, _GENERATORS):
            found[f"argument leaf {i}"] = leaf
    seen: set = set()
    stack = [fn]
    while stack:  # the function, and functions it names directly (one module deep)
        f = stack.pop()
        f = getattr(f, "__func__", f)
        code = getattr(f, "__code__", None)
        if code is None or id(f) in seen:
            continue
        seen.add(id(f))
        glob = getattr(f, "__globals__", {})
        for name in _code_names(code):
            value = glob.get(name)
            if isinstance(value, _GENERATORS):
                found[name] = value
            elif isinstance(value, types.FunctionType) and len(seen) < 64:
                stack.append(value)
        cells = zip(code.co_freevars, getattr(f, "__closure__", None) or ())
        for name, cell in cells:
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if isinstance(value, _GENERATORS):
                found[name] = value
            elif isinstance(value, types.FunctionType) and len(seen) < 64:
                stack.append(value)
        for value in (getattr(f, "__defaults__", None) or ()):
            if isinstance(value, _GENERATORS):
                found["a default argument"] = value
    return found


class RandomWatch:
    """Snapshot of the generators a traced function can reach; :meth:`drawn` names the
    ones whose state moved since."""

    def __init__(self, fn: Callable, leaves: list):
        self.generators = {"np.random (the global generator)": np.random.mtrand._rand}
        self.generators.update(_reachable_generators(fn, leaves))
        self.before = {name: _state_of(g) for name, g in self.generators.items()}

    def drawn(self) -> list[str]:
        return [name for name, g in self.generators.items()
                if not _same(self.before[name], _state_of(g))]
