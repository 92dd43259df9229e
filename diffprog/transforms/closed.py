"""Sub-programs held in an equation's params: the bodies of loops and branches.

A :class:`Closed` wraps a traced Graph whose every input is an argument (nothing is
captured from outside). Control-flow entries (:mod:`diffprog.primitives.control`) hold
them in their params, call them (``body(*args) -> outputs``) and build new ones in their
derivative rules with :func:`close`.

Compiling a body is an engine's work: an engine compiles each body it meets with the
program around it (``compiled_body`` in :mod:`diffprog.engines.numpy`). Called directly,
as tracing does when it evaluates a loop on concrete values, a body runs as the code the
registered compiler makes (:func:`use_compiler`; :mod:`diffprog.engines` registers the
numpy engine's), or, without one, equation by equation.
"""
from __future__ import annotations

import sys
from typing import Callable

from ..ir import Graph, Lit
from ..tracing import Tracer, bind, new_trace
from .simplify import simplify

_COMPILER: list = [None]  # compile(closed, xp) -> callable, see use_compiler


def use_compiler(compile_body: Callable | None) -> None:
    """Run bodies called on concrete values as ``compile_body(closed, xp)(*args)`` (``xp``:
    numpy, or cupy for CuPy values); None: run their equations one by one."""
    _COMPILER[0] = compile_body


def _array_module(values):
    for v in values:
        if type(v).__module__.startswith("cupy"):
            return sys.modules["cupy"]
    return sys.modules["numpy"]


class Closed:
    """A traced sub-program held in an equation's params.

    Compared and hashed by identity (two bodies are the same only if they are the same
    object), so equations holding it can be cached and CSE'd.
    """

    __slots__ = ("graph", "extends", "__weakref__")

    def __init__(self, graph: Graph, extends: "Closed | None" = None):
        self.graph = graph
        #: a body whose outputs are this body's leading outputs, on the same inputs
        #: (see transforms.simplify.merge_extended_loops)
        self.extends = extends

    @property
    def in_avals(self) -> list:
        return [v.aval for v in self.graph.invars]

    @property
    def out_avals(self) -> list:
        return [o.aval for o in self.graph.outvars]

    def __call__(self, *args):
        """The body's outputs on ``args``: computed on concrete values (NumPy or CuPy),
        recorded into the open trace on traced ones."""
        compile_body = _COMPILER[0]
        if compile_body is not None and not any(isinstance(a, Tracer) for a in args):
            return compile_body(self, _array_module(args))(*args)
        return self.run_equations(*args)

    def run_equations(self, *args) -> list:
        """The body's outputs, one equation after the other through :func:`bind`."""
        env = {id(v): a for v, a in zip(self.graph.invars, args)}

        def read(atom):
            return atom.value if isinstance(atom, Lit) else env[id(atom)]

        for eqn in self.graph.eqns:
            outs = bind(eqn.prim, *[read(a) for a in eqn.inputs], **eqn.params)
            for v, o in zip(eqn.outputs, outs if eqn.prim.multiple_results else (outs,)):
                env[id(v)] = o
        return [read(o) for o in self.graph.outvars]

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return id(self)

    def __repr__(self) -> str:
        ins = ",".join(str(a) for a in self.in_avals)
        outs = ",".join(str(a) for a in self.out_avals)
        return f"<body ({ins}) -> ({outs}), {len(self.graph.eqns)} eqns>"


def close(fn: Callable, in_avals: list) -> Closed:
    """Trace ``fn(*flat tracers) -> flat outputs`` (no values, no captures) into a Closed."""
    with new_trace(concrete=False) as trace:
        args = [trace.new_input(a) for a in in_avals]
        outs = fn(*args)
        graph = trace.to_graph(list(outs))
    if trace.captured:  # pragma: no cover - rule bodies get every value as an argument
        raise AssertionError("internal: a derivative body captured an outer value")
    return Closed(simplify(graph))


def bodies(eqn) -> list[Closed]:
    """The sub-programs ``eqn`` holds in its params (a loop's body, a branch, a checkpoint)."""
    return [v for v in eqn.params.values() if isinstance(v, Closed)]


def holds_body(eqn) -> bool:
    """Does ``eqn`` hold a sub-program in its params (a loop, a branch, a checkpoint)?"""
    return bool(bodies(eqn))
