"""Reverse mode: Graph -> Graph computing outputs and vector-Jacobian products.

The forward equations are replayed into a new trace, then each primitive's ``vjp``
rule runs backwards. Rules are NumPy code on traced values, so the backward pass is
recorded as ordinary equations: the result is a Graph like any other, which is why
grad-of-grad (hessians) needs no extra machinery.
"""
from __future__ import annotations

import numpy as np

from ..errors import DiffprogError
from ..ir import Graph, Lit, Var, gc_paused
from ..tracing import Tracer, bind, new_trace
from .simplify import simplify


def _is_float(aval) -> bool:
    return aval.dtype.kind in "fc"  # np.issubdtype(dtype, np.inexact), cheaper


def vjp_graph(graph: Graph, wrt: list[int], seed: str = "input") -> Graph:
    """Build ``(*inputs[, *cotangents]) -> (*outputs, *grads for inputs in wrt)``.

    ``seed="input"``: one cotangent input per output. ``seed="ones"``: the single
    output is a scalar and its cotangent is the constant 1 (plain ``grad``).
    """
    with gc_paused():
        with new_trace(concrete=False) as trace:
            primals = [trace.new_input(v.aval) for v in graph.invars]
            env, tape = _forward(graph, primals)
            outs = [_read(env, o) for o in graph.outvars]
            if seed == "ones":
                first = graph.outvars[0].aval  # a scalar, or a one-element array
                cts_out = [np.ones(first.shape, first.dtype)]
            else:
                cts_out = [trace.new_input(o.aval) for o in graph.outvars]
            grads = backward_pass(graph, env, tape, cts_out, [graph.invars[i] for i in wrt])
            result = trace.to_graph(outs + grads)
        return simplify(result)


def _read(env, atom):
    return atom.value if isinstance(atom, Lit) else env[id(atom)]


def _forward(graph: Graph, primals):
    env = {id(v): p for v, p in zip(graph.invars, primals)}
    tape = []
    for eqn in graph.eqns:
        ins = [_read(env, a) for a in eqn.inputs]
        outs = bind(eqn.prim, *ins, **eqn.params)
        outs = outs if isinstance(outs, list) else [outs]
        for v, o in zip(eqn.outputs, outs):
            env[id(v)] = o
        tape.append((eqn, ins, outs))
    return env, tape


def backward_pass(graph, env, tape, cts_out, wrt_vars):
    ct: dict[int, object] = {}

    def accumulate(var, value):
        if value is None or not isinstance(var, Var) or not _is_float(var.aval):
            return
        value = fit_to(value, var)
        prev = ct.get(id(var))
        ct[id(var)] = value if prev is None else prev + value

    for o, c in zip(graph.outvars, cts_out):
        accumulate(o, c)
    for eqn, ins, outs in reversed(tape):
        gs = [ct.pop(id(o), None) for o in eqn.outputs]
        if all(g is None for g in gs):
            continue
        if not eqn.prim.differentiable:
            continue
        if eqn.prim.multiple_results:
            gs = [g if g is not None else np.zeros(o.aval.shape, o.aval.dtype)
                  for g, o in zip(gs, eqn.outputs)]
            cts = eqn.prim.vjp(gs, *ins, out=outs, **eqn.params)
        else:
            cts = eqn.prim.vjp(gs[0], *ins, out=outs[0], **eqn.params)
        if len(cts) != len(eqn.inputs):
            raise DiffprogError(f"internal: vjp rule of {eqn.prim.name} returned {len(cts)} "
                                f"cotangents for {len(eqn.inputs)} inputs")
        for a, c in zip(eqn.inputs, cts):
            accumulate(a, c)
    return [_grad_or_zeros(ct.get(id(v)), v) for v in wrt_vars]


def fit_to(value, var):
    """Check a rule's cotangent against its variable (shape), keep the dtype."""
    shape = tuple(np.shape(value)) if not isinstance(value, Tracer) else value.shape
    if shape != var.aval.shape:
        if int(np.prod(shape)) == 1 and var.aval.shape == ():
            value = np.reshape(value, ())
        else:
            try:
                value = np.broadcast_to(value, var.aval.shape)
            except ValueError:
                raise DiffprogError(f"internal: cotangent of shape {shape} for a variable of "
                                    f"shape {var.aval.shape}") from None
    dt = value.dtype if hasattr(value, "dtype") else None
    if dt is not None and dt != var.aval.dtype:
        from ..primitives.rules import as_dtype
        value = as_dtype(value, var.aval.dtype)  # complex onto a real value: its real part
    return value


def _grad_or_zeros(value, var):
    if value is None:
        return np.zeros(var.aval.shape, var.aval.dtype)
    return value
