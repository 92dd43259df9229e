"""Simplification: common-subexpression elimination, sign folding, loop merging and
dead-code elimination.

Constant folding happens earlier, in :func:`diffprog.tracing.bind`: an equation
whose inputs are all constants is computed on the spot and never recorded.
"""
from __future__ import annotations

import numpy as np

from ..primitives.elementwise import add, mul, neg, sub
from ..ir import Eqn, Graph, Lit, Var


def simplify(graph: Graph) -> Graph:
    # sign folding counts uses, so dead equations must be gone first
    graph = dead_code_elimination(common_subexpressions(graph))
    return dead_code_elimination(merge_extended_loops(fold_negations(graph)))


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


def use_counts(graph: Graph) -> dict[int, int]:
    """``{id(var): uses}``: as an equation's input, or as one of the graph's outputs."""
    count: dict[int, int] = {}
    for eqn in graph.eqns:
        for a in eqn.inputs:
            if isinstance(a, Var):
                count[id(a)] = count.get(id(a), 0) + 1
    for o in graph.outvars:
        if isinstance(o, Var):
            count[id(o)] = count.get(id(o), 0) + 1
    return count


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


# ============================================================================ signs

def fold_negations(graph: Graph) -> Graph:
    """Move negations into constants and subtractions, where that saves an equation.

    Reverse mode writes many: d(cos) = -sin, d(-x) = g * -1.0, so gradients are full
    of ``-a`` feeding one product or sum. On real floats these rewrites are exact (IEEE
    rounding is symmetric in sign, and ``x - y`` *is* ``x + (-y)``), so results stay
    bit-identical (up to the sign of a NaN):

    ``x * -1``        -> ``-x``
    ``--a``           -> ``a``
    ``(-a) * c``      -> ``a * (-c)``     (c a scalar constant)
    ``(-a) * y``      -> ``-(a * y)``     (the negation moves on, maybe to vanish later)
    ``x + (-a)``      -> ``x - a``;  ``(-a) + y`` -> ``y - a``;  ``x - (-a)`` -> ``x + a``

    A negation is absorbed only when its result has no other use, so the number of
    equations never grows; dead negations are left to dead-code elimination.
    """
    uses = use_counts(graph)
    outputs = {id(v) for v in graph.outvars if isinstance(v, Var)}
    negation_of: dict[int, Var] = {}  # id(-a) -> a, for negations of real floats
    rename: dict[int, Var] = {}
    eqns: list[Eqn] = []

    def absorbable(atom):
        """a, when atom is ``-a`` used only here; else None."""
        if isinstance(atom, Var) and uses.get(id(atom), 0) == 1 and id(atom) not in outputs:
            return negation_of.get(id(atom))
        return None

    def emit(prim, inputs, out):
        new = Eqn(prim, inputs, [out])
        eqns.append(new)
        if prim is neg:
            negation_of[id(out)] = inputs[0]
        return new

    for eqn in graph.eqns:
        eqn.inputs = [rename.get(id(a), a) if isinstance(a, Var) else a for a in eqn.inputs]
        if not _real_float_binary_or_neg(eqn):
            eqns.append(eqn)
            continue
        out = eqn.outputs[0]
        name = eqn.prim.name
        if name == "neg":
            inner = absorbable(eqn.inputs[0])
            if inner is not None:  # --a
                rename[id(out)] = inner
                continue
            eqns.append(eqn)
            negation_of[id(out)] = eqn.inputs[0]
            continue
        x, y = eqn.inputs
        rewritten = _fold_one(name, x, y, out, absorbable, emit)
        if rewritten is None:
            eqns.append(eqn)
        else:
            for e in rewritten:
                e.line = eqn.line
    outvars = [rename.get(id(v), v) if isinstance(v, Var) else v for v in graph.outvars]
    return Graph(graph.invars, eqns, outvars)


def _fold_one(name, x, y, out, absorbable, emit):
    """The equations replacing ``out = name(x, y)``, or None to keep it."""
    if name == "mul":
        for a, b in ((x, y), (y, x)):
            if _scalar_literal(b) and b.value == -1 and a.aval == out.aval:
                return [emit(neg, [a], out)]
        for a, b in ((x, y), (y, x)):
            inner = absorbable(a)
            if inner is None:
                continue
            if _negatable_literal(b):
                return [emit(mul, [inner, Lit(-b.value)], out)]
            product = Var(out.aval)
            return [emit(mul, [inner, b] if a is x else [b, inner], product),
                    emit(neg, [product], out)]
        return None
    if name == "add":
        for a, b in ((y, x), (x, y)):
            inner = absorbable(a)
            if inner is not None:
                return [emit(sub, [b, inner], out)]
        return None
    if name == "sub":
        inner = absorbable(y)
        if inner is not None:
            return [emit(add, [x, inner], out)]
    return None


def _real_float_binary_or_neg(eqn) -> bool:
    if eqn.prim.name not in ("neg", "mul", "add", "sub") or eqn.params or len(eqn.outputs) != 1:
        return False
    out = eqn.outputs[0].aval
    if not np.issubdtype(out.dtype, np.floating):
        return False
    # every operand already has the result's aval (or is a scalar constant): no rewrite
    # can then change a dtype, a weak type or a broadcast
    return all(a.aval == out or _scalar_literal(a) for a in eqn.inputs)


def _scalar_literal(atom) -> bool:
    return (isinstance(atom, Lit) and atom.aval.shape == ()
            and isinstance(atom.value, (int, float, np.floating, np.integer))
            and not isinstance(atom.value, bool) and np.isfinite(atom.value))


def _negatable_literal(atom) -> bool:
    """-c is exact and ``a * -c == -(a * c)`` bit for bit: a float, or a nonzero Python
    int (``-a * 0`` is -0.0 for positive a, ``a * -0`` is +0.0; NumPy ints can overflow)."""
    if not _scalar_literal(atom):
        return False
    v = atom.value
    return isinstance(v, (float, np.floating)) or (type(v) is int and v != 0)
