"""Forward mode: Graph -> Graph computing outputs and Jacobian-vector products.

Tangents travel alongside primals; ``None`` is a symbolic zero so unused inputs
cost nothing.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Lit
from ..tracing import bind, derivative_rule, new_trace
from .simplify import simplify
from .vjp import fit_to


def jvp_graph(graph: Graph, wrt: list[int]) -> Graph:
    """Build ``(*inputs, *tangents for wrt) -> (*outputs, *output tangents)``."""
    with new_trace(concrete=False) as trace:
        primals = [trace.new_input(v.aval) for v in graph.invars]
        tangents = {id(graph.invars[i]): trace.new_input(graph.invars[i].aval) for i in wrt}
        env = {id(v): p for v, p in zip(graph.invars, primals)}
        tan = dict(tangents)
        for eqn in graph.eqns:
            ins = [a.value if isinstance(a, Lit) else env[id(a)] for a in eqn.inputs]
            ts = [None if isinstance(a, Lit) else tan.get(id(a)) for a in eqn.inputs]
            outs = bind(eqn.prim, *ins, **eqn.params)
            outs_l = outs if isinstance(outs, list) else [outs]
            for v, o in zip(eqn.outputs, outs_l):
                env[id(v)] = o
            if eqn.prim.differentiable and any(t is not None for t in ts):
                with derivative_rule():  # (no NumPy copies kept: tracing.IN_DERIVATIVE_RULE)
                    touts = eqn.prim.jvp(ts, *ins, out=outs, **eqn.params)
                touts = touts if isinstance(touts, list) else [touts]
                for v, t in zip(eqn.outputs, touts):
                    if t is not None and np.issubdtype(v.aval.dtype, np.inexact):
                        tan[id(v)] = fit_to(t, v)
        outs = [o.value if isinstance(o, Lit) else env[id(o)] for o in graph.outvars]
        touts = [(tan.get(id(o)) if not isinstance(o, Lit) else None) for o in graph.outvars]
        touts = [t if t is not None else np.zeros(o.aval.shape, o.aval.dtype)
                 for t, o in zip(touts, graph.outvars)]
        result = trace.to_graph(outs + touts)
    return simplify(result)

