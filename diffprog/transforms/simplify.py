"""Simplification: common-subexpression elimination and dead-code elimination.

Constant folding happens earlier, in :func:`diffprog.tracing.bind`: an equation
whose inputs are all constants is computed on the spot and never recorded.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Lit, Var


def simplify(graph: Graph) -> Graph:
    return dead_code_elimination(merge_extended_loops(common_subexpressions(graph)))


def dead_code_elimination(graph: Graph) -> Graph:
    live = {id(v) for v in graph.outvars if isinstance(v, Var)}
    kept = []
    for eqn in reversed(graph.eqns):
        # effectful equations (guards) have no outputs to keep them alive
        if any(id(o) in live for o in eqn.outputs) or getattr(eqn.prim, "effectful", False):
            kept.append(eqn)
            live.update(id(a) for a in eqn.inputs if isinstance(a, Var))
    kept.reverse()
    return Graph(graph.invars, kept, graph.outvars)


def _param_key(v):
    if isinstance(v, np.ndarray):
        return ("nd", id(v))
    if isinstance(v, np.dtype):
        return ("dtype", v.str)
    try:
        hash(v)
        return v
    except TypeError:
        return ("obj", id(v))


def _literal_key(v):
    """Equal keys for constants that are the same value *and* type, bit for bit: an
    int8 100 is not an int64 100 (different results), and -0.0 is not 0.0 (arctan2)."""
    if isinstance(v, (np.ndarray, np.generic)):
        if v.ndim:
            return ("lit", id(v))
        return ("lit", v.dtype.str, type(v).__name__, v.tobytes())
    return ("lit", type(v).__name__, repr(v))


# Binary primitives whose result does not depend on operand order, bit for bit.
_COMMUTATIVE = frozenset({"add", "mul"})


def common_subexpressions(graph: Graph) -> Graph:
    """Replace an equation by an earlier identical one (same primitive, inputs, params)."""
    rename: dict[int, Var] = {}
    seen: dict[tuple, list] = {}
    eqns = []

    def ref(a):
        if isinstance(a, Lit):
            return _literal_key(a.value)
        return id(rename.get(id(a), a))

    for eqn in graph.eqns:
        eqn.inputs = [rename.get(id(a), a) if isinstance(a, Var) else a for a in eqn.inputs]
        try:
            refs = tuple(ref(a) for a in eqn.inputs)
            if eqn.prim.name in _COMMUTATIVE:  # a*b == b*a exactly (IEEE), so one of them
                refs = tuple(sorted(refs, key=repr))
            key = (eqn.prim.name, refs,
                   tuple((k, _param_key(v)) for k, v in eqn.params.items()))
            hash(key)
        except TypeError:
            key = None
        if key is not None and key in seen:
            for o, prev in zip(eqn.outputs, seen[key]):
                rename[id(o)] = prev
            continue
        if key is not None:
            seen[key] = eqn.outputs
        eqns.append(eqn)
    outvars = [rename.get(id(v), v) if isinstance(v, Var) else v for v in graph.outvars]
    return Graph(graph.invars, eqns, outvars)


def merge_extended_loops(graph: Graph) -> Graph:
    """Run a loop once when a later equation runs an *extension* of it.

    A loop body (``params["body"]``) may declare ``extends = other body``: on the same
    inputs it computes all of ``other``'s outputs first, then more. Reverse mode of
    ``dp.scan`` builds such a body (the primal step that also keeps each step's carry),
    so a value-and-gradient program would otherwise run the forward loop twice. When
    equation B extends an earlier equation A (same primitive, inputs and other params),
    B moves to A's place (its inputs are all defined there) and A's outputs become B's
    leading outputs.
    """
    def loop_key(eqn, body):
        others = tuple((k, _param_key(v)) for k, v in eqn.params.items() if k != "body")
        return (eqn.prim.name, id(body), tuple(_input_ref(a) for a in eqn.inputs), others)

    extenders = {}
    for idx, eqn in enumerate(graph.eqns):
        base = getattr(eqn.params.get("body"), "extends", None)
        if base is not None:
            extenders.setdefault(loop_key(eqn, base), idx)
    if not extenders:
        return graph
    rename: dict[int, Var] = {}
    moved: set[int] = set()
    eqns = []
    for idx, eqn in enumerate(graph.eqns):
        if idx in moved:
            continue
        body = eqn.params.get("body")
        hit = extenders.get(loop_key(eqn, body)) if body is not None else None
        if hit is not None and hit > idx and hit not in moved:
            extension = graph.eqns[hit]
            for o, new in zip(eqn.outputs, extension.outputs):
                rename[id(o)] = new
            moved.add(hit)
            eqn = extension
        eqn.inputs = [rename.get(id(a), a) if isinstance(a, Var) else a for a in eqn.inputs]
        eqns.append(eqn)
    outvars = [rename.get(id(v), v) if isinstance(v, Var) else v for v in graph.outvars]
    return Graph(graph.invars, eqns, outvars)


def _input_ref(a):
    return ("var", id(a)) if isinstance(a, Var) else _literal_key(a.value)
