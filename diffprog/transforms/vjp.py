"""Reverse mode: Graph -> Graph computing outputs and vector-Jacobian products.

The forward equations start a new trace (the same equations and variables, each
variable given a traced value), then each primitive's ``vjp`` rule runs backwards. Rules are NumPy code on traced values, so the backward pass is
recorded as ordinary equations: the result is a Graph like any other, which is why
grad-of-grad (hessians) needs no extra machinery.
"""
from __future__ import annotations

import numpy as np

from ..errors import DiffprogError
from ..ir import Graph, Lit, gc_paused
from ..tracing import Tracer, derivative_rule, new_trace, trace_stack
from .simplify import simplify
from .templates import Templates


def _is_float(aval) -> bool:
    return aval.dtype.kind in "fc"  # np.issubdtype(dtype, np.inexact), cheaper


def vjp_graph(graph: Graph, wrt: list[int], seed: str = "input") -> Graph:
    """Build ``(*inputs[, *cotangents]) -> (*outputs, *grads for inputs in wrt)``.

    ``seed="input"``: one cotangent input per output. ``seed="ones"``: the single
    output is a scalar and its cotangent is the constant 1 (plain ``grad``).
    """
    with gc_paused():
        with new_trace(concrete=False) as trace:
            templates = _templates()
            primals, env, tape = adopt_forward(graph, trace)
            outs = [_read(env, o) for o in graph.outvars]
            if seed == "ones":
                first = graph.outvars[0].aval  # a scalar, or a one-element array
                cts_out = [np.ones(first.shape, first.dtype)]
            else:
                cts_out = [trace.new_input(o.aval) for o in graph.outvars]
            grads = backward_pass(graph, env, tape, cts_out, [graph.invars[i] for i in wrt],
                                  templates)
            result = trace.to_graph(outs + grads)
        # the traced values (a tracer per value) go before simplify's maps come
        del env, tape, primals, outs, grads, cts_out, templates, trace
        return simplify(result)


def _read(env, atom):
    return atom.value if isinstance(atom, Lit) else env[id(atom)]


def _templates() -> Templates | None:
    """Rule templates for the innermost trace (the transform's), when it computes no
    values (see :mod:`diffprog.transforms.templates`)."""
    trace = trace_stack()[-1]
    return None if trace.concrete else Templates(trace)


#: entries whose rule only passes a Python number operand on, into the equations it
#: records (``g * c``, or nothing): their templates hold for any such number
#: (templates.Templates.key); positions among the rule's operands (g, x, y, out)
_NUMBERS_AT = {"add": (1, 2), "sub": (1, 2), "mul": (1, 2)}


def _table_entry(prim) -> bool:
    """Is ``prim`` an entry of the table (its rules NumPy code over what they are given)?"""
    from ..primitives.core import PRIMITIVES
    return PRIMITIVES.get(prim.name) is prim


def adopt_forward(graph: Graph, trace) -> tuple[list, dict, list]:
    """``graph``'s inputs and equations as the start of ``trace`` (the same variables and
    equations: graphs are never changed, so the transform's graph may share them), with a
    traced value for each of its variables: ``(primals, env, tape)``, without running
    every equation through bind again (the tape: the equations; each one's operands and
    results are in env)."""
    trace.invars.extend(graph.invars)
    trace.eqns.extend(graph.eqns)
    primals = [Tracer(trace, v, None) for v in graph.invars]
    env = {id(v): p for v, p in zip(graph.invars, primals)}
    for eqn in graph.eqns:
        for o in eqn.outputs:
            env[id(o)] = Tracer(trace, o, None)
    return primals, env, graph.eqns


def backward_pass(graph, env, tape, cts_out, wrt_vars, templates: Templates | None = None):
    ct: dict[int, object] = {}
    entries: dict = {}
    # the variables computed from a differentiated input: cotangents of the others never
    # reach one (a constant lifted as an input, an input not in wrt), so none is made
    # (floating variables only: a cotangent never passes through another one)
    active = {id(v) for v in wrt_vars if _is_float(v.aval)}
    for eqn in tape:
        for a in eqn.inputs:
            if id(a) in active:
                for o in eqn.outputs:
                    if _is_float(o.aval):
                        active.add(id(o))
                break

    def accumulate(var, value):
        if value is None or id(var) not in active:  # (a constant's id is no variable's)
            return
        if type(value) is not Tracer or value._var.aval.shape != var.aval.shape or \
                value._var.aval.dtype != var.aval.dtype:  # (else fit_to returns it as it is)
            value = fit_to(value, var)
        prev = ct.get(id(var))
        if prev is None:
            ct[id(var)] = value
        elif templates is None:
            ct[id(var)] = prev + value
        else:
            ct[id(var)] = templates.call(templates.key(("+",), {}, (prev, value)),
                                         lambda: [prev + value])[0]

    for o, c in zip(graph.outvars, cts_out):
        accumulate(o, c)
    for eqn in reversed(tape):
        if len(eqn.outputs) == 1:
            g = ct.pop(id(eqn.outputs[0]), None)
            if g is None:
                continue
            gs = [g]
        else:
            gs = [ct.pop(id(o), None) for o in eqn.outputs]
            if all(g is None for g in gs):
                continue
        if not eqn.prim.differentiable:
            continue
        ins = [_read(env, a) for a in eqn.inputs]
        outs = [env[id(o)] for o in eqn.outputs]
        prim = eqn.prim
        if prim.multiple_results:
            if not prim.missing_cotangents:
                gs = [g if g is not None else np.zeros(o.aval.shape, o.aval.dtype)
                      for g, o in zip(gs, eqn.outputs)]

            def rule():
                with derivative_rule():
                    return list(prim.vjp(gs, *ins, out=outs, **eqn.params))
        else:
            def rule():
                with derivative_rule():
                    return list(prim.vjp(gs[0], *ins, out=outs[0], **eqn.params))
        keyed = None
        if templates is not None:
            entry = entries.get(prim)
            if entry is None:
                entry = entries[prim] = _table_entry(prim)
            if entry:
                # the cotangents accumulate keeps: those of floating variables
                needed = tuple([id(a) in active for a in eqn.inputs])
                keyed = templates.key(("vjp", prim, len(gs), needed), eqn.params,
                                      gs + ins + outs,
                                      _NUMBERS_AT.get(prim.name, ()) if len(gs) == 1 else ())
        cts = templates.call(keyed, rule, needed) if keyed is not None else rule()
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
