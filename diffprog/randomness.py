"""Random draws inside traced code.

A traced function runs once, on concrete values, and its program is then reused: a
random draw made while tracing would become a constant of the program, and every later
call would return the same "random" numbers (and their gradient). diffprog notices a
draw by comparing the states of the random generators the function can reach before and
after its trace: NumPy's global generator (``np.random.normal``, ...), Python's
``random`` module, and every ``Generator``/``RandomState``/``random.Random`` the function
reads while it is traced (diffprog.externals registers each one when it is read: in an
argument, a global, a dict, an attribute, a closure cell, a partial). A function that
drew is traced anew at every call (see :mod:`diffprog.api`), so each call draws fresh
numbers from the same generator, exactly as plain NumPy would, and its gradient is that
of the numbers drawn in that call. A draw inside a body traced once for many steps or
examples (``dp.scan``, ``dp.vmap``) would be reused by all of them: refused.

Not seen: a generator created inside the function from fresh entropy
(``np.random.default_rng()`` with no seed), which is frozen like any constant.
"""
from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np

_GENERATORS = (np.random.Generator, np.random.RandomState, np.random.BitGenerator,
               random.Random)


def is_generator(value) -> bool:
    return isinstance(value, _GENERATORS)


def _state_of(gen) -> Any:
    if isinstance(gen, random.Random):
        return gen.getstate()
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


class RandomWatch:
    """Snapshots of the generators a traced function reaches; :meth:`drawn` names the ones
    whose state moved since, :meth:`drawn_in_bodies` those first read inside a body."""

    def __init__(self, fn: Callable, leaves: list):
        self.generators: dict = {}  # id -> (name, generator, state before, read in a body)
        #: the process-wide generators: any thread may draw from them
        self.shared_names = {"np.random (the global generator)", "Python's random module"}
        self.add(np.random.mtrand._rand, "np.random (the global generator)")
        self.add(random._inst, "Python's random module")
        for i, leaf in enumerate(leaves):  # the others are added as the function reads them
            if isinstance(leaf, _GENERATORS):
                self.add(leaf, f"argument leaf {i}")

    def add(self, gen, name: str, body: str | None = None) -> None:
        """Watch ``gen`` from now on (its state now is before any draw the trace makes
        from it: a generator is read before it is drawn from)."""
        if id(gen) not in self.generators:
            self.generators[id(gen)] = (name, gen, _state_of(gen), body)

    def states(self) -> dict:
        return {key: _state_of(gen) for key, (_, gen, _, _) in self.generators.items()}

    def moved_since(self, states: dict) -> list[str]:
        """Names of the generators whose state changed since ``states`` (of :meth:`states`)."""
        return [self.generators[key][0] for key, before in states.items()
                if not _same(before, _state_of(self.generators[key][1]))]

    def drawn(self) -> list[str]:
        return [name for name, gen, before, body in self.generators.values()
                if body is None and not _same(before, _state_of(gen))]

    def drawn_in_bodies(self) -> list[tuple[str, str]]:
        """(body, generator) for each generator first read inside a body that drew."""
        return [(body, name) for name, gen, before, body in self.generators.values()
                if body is not None and not _same(before, _state_of(gen))]
