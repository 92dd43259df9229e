"""Simplification: common-subexpression elimination, sign folding, loop merging and
dead-code elimination. Graph -> Graph: the input graph and its equations are never
changed (an equation whose inputs are renamed is a new equation).

Constant folding happens earlier, in :func:`diffprog.tracing.bind`: an equation
whose inputs are all constants is computed on the spot and never recorded.

These passes know no primitive by name: what they may do with an equation is entry data
(``commutative``, ``effectful``, the sign rules ``negation`` and ``absorb_negation``).
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import Eqn, Graph, Lit, Var, is_scalar_number
from ..tracing import makes_contiguous


def simplify(graph: Graph) -> Graph:
    # sign folding counts uses, so dead equations must be gone first
    graph, uses = _live_and_uses(common_subexpressions(graph))
    folded = fold_negations(graph, uses)
    merged = merge_extended_loops(folded)
    if merged is graph:  # nothing rewritten: every equation is still live
        return graph
    return dead_code_elimination(merged)


def dead_code_elimination(graph: Graph) -> Graph:
    return _live_and_uses(graph)[0]


def _live_and_uses(graph: Graph) -> tuple[Graph, dict]:
    """Dead-code elimination, and the kept graph's use counts (one pass), keyed by the
    variables themselves (identity: no int object per variable, as ``id()`` keys make)."""
    uses: dict = {}
    for v in graph.outvars:
        if isinstance(v, Var):
            uses[v] = uses.get(v, 0) + 1
    kept = []
    for eqn in reversed(graph.eqns):
        outputs = eqn.outputs
        # effectful equations (guards) have no outputs to keep them alive
        if (outputs[0] in uses if len(outputs) == 1 else
                any(o in uses for o in outputs)) or eqn.prim.effectful:
            kept.append(eqn)
            for a in eqn.inputs:
                if a.__class__ is Var:
                    uses[a] = uses.get(a, 0) + 1
    kept.reverse()
    return Graph(graph.invars, kept, graph.outvars), uses


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


def _renamed(eqn: Eqn, rename: dict) -> Eqn:
    """``eqn`` reading ``rename[id(v)]`` for each renamed input Var (a new equation when
    any is; the original is left as it is)."""
    if rename:
        for a in eqn.inputs:
            if id(a) in rename and isinstance(a, Var):
                inputs = [rename.get(id(a), a) if isinstance(a, Var) else a for a in eqn.inputs]
                return Eqn(eqn.prim, inputs, eqn.outputs, eqn.params)
    return eqn


def _renamed_outputs(outvars: list, rename: dict) -> list:
    return [rename.get(id(v), v) if isinstance(v, Var) else v for v in outvars]


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


def common_subexpressions(graph: Graph) -> Graph:
    """Replace an equation by an earlier identical one (same primitive, inputs, params)."""
    rename: dict[int, Var] = {}
    seen: dict[tuple, list] = {}
    eqns = []

    for eqn in graph.eqns:
        if rename:
            eqn = _renamed(eqn, rename)
        try:
            # inputs are renamed already: a Var by identity, a constant by value
            refs = tuple([a if a.__class__ is Var else _literal_key(a.value)
                          for a in eqn.inputs])
            if eqn.prim.commutative:  # a*b == b*a exactly (IEEE), so one of them
                refs = _unordered(refs)
            # one flat tuple (the entry, its params, its operands): the map holds one per
            # equation of a long program
            key = (eqn.prim, tuple([(k, _param_key(v)) for k, v in eqn.params.items()])
                   if eqn.params else ()) + refs
            earlier = seen.get(key)
        except TypeError:
            eqns.append(eqn)
            continue
        if earlier is not None:
            for o, prev in zip(eqn.outputs, earlier):
                rename[id(o)] = prev
            continue
        seen[key] = eqn.outputs
        eqns.append(eqn)
    return Graph(graph.invars, eqns, _renamed_outputs(graph.outvars, rename))


def _unordered(refs: tuple) -> tuple:
    """One order for the same operands in any order (variables first, by id)."""
    if len(refs) == 2:
        a, b = refs
        if a.__class__ is Var:
            return refs if b.__class__ is not Var or id(a) <= id(b) else (b, a)
        if b.__class__ is Var:
            return (b, a)
    return tuple(sorted(refs, key=lambda r: (0, id(r), "") if r.__class__ is Var else (1, 0, repr(r))))


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
        eqns.append(_renamed(eqn, rename))
    return Graph(graph.invars, eqns, _renamed_outputs(graph.outvars, rename))


def _input_ref(a):
    return ("var", id(a)) if isinstance(a, Var) else _literal_key(a.value)


# ============================================================================ signs

def fold_negations(graph: Graph, uses: dict[int, int] | None = None) -> Graph:
    """Move negations into constants and subtractions, where that saves an equation.

    Reverse mode writes many: d(cos) = -sin, d(-x) = g * -1.0, so gradients are full
    of ``-a`` feeding one product or sum. On real floats these rewrites are exact (IEEE
    rounding is symmetric in sign, and ``x - y`` *is* ``x + (-y)``), so results stay
    bit-identical (up to the sign of a NaN). The rewrites are the entries' own
    (``absorb_negation``: how a product or a sum takes in a negated operand, in
    :mod:`diffprog.primitives.elementwise`); here: ``--a -> a``, and the bookkeeping.

    A negation is absorbed only when its result has no other use, so the number of
    equations never grows; dead negations are left to dead-code elimination.
    """
    if uses is None:  # (given by simplify: the same, by variable)
        uses = {}
        for eqn in graph.eqns:
            for a in eqn.inputs:
                if a.__class__ is Var:
                    uses[a] = uses.get(a, 0) + 1
        for o in graph.outvars:
            if isinstance(o, Var):
                uses[o] = uses.get(o, 0) + 1
    outputs = {id(v) for v in graph.outvars if isinstance(v, Var)}
    negation_of: dict[int, Var] = {}  # id(-a) -> a, for negations of real floats
    rename: dict[int, Var] = {}
    eqns: list[Eqn] = []
    # values that may be strided or reversed (arguments, views): --a of one stays, as
    # in NumPy it is a contiguous array, and NumPy's SIMD loops (exp on AVX-512) may give
    # a strided array other bits (tracing.may_be_strided)
    may_be_strided = {id(v) for v in graph.invars}

    def negated(atom):
        """a, when atom is ``-a`` used only here; else None."""
        inner = negation_of.get(id(atom))  # (only Vars are keys: live objects, unique ids)
        if inner is not None and uses.get(atom, 0) == 1 and id(atom) not in outputs:
            return inner
        return None

    changed = False
    for eqn in graph.eqns:
        eqn = _renamed(eqn, rename)
        if not makes_contiguous(eqn.prim):
            may_be_strided.update(id(o) for o in eqn.outputs)
        if not _sign_rules_apply(eqn):
            eqns.append(eqn)
            continue
        out = eqn.outputs[0]
        if eqn.prim.negation:
            inner = negated(eqn.inputs[0])
            if inner is not None and (id(inner) not in may_be_strided
                                      or math.prod(inner.aval.shape) <= 1):  # --a
                rename[id(out)] = inner
                continue
            eqns.append(eqn)
            negation_of[id(out)] = eqn.inputs[0]
            continue
        rewritten = eqn.prim.absorb_negation(eqn, negated)
        if rewritten is None:
            eqns.append(eqn)
            continue
        changed = True
        for new in rewritten:
            eqns.append(new)
            if new is not eqn and new.prim.negation:
                negation_of[id(new.outputs[0])] = new.inputs[0]
    if not changed and not rename:
        return graph  # nothing rewritten (simplify then needs no second DCE)
    return Graph(graph.invars, eqns, _renamed_outputs(graph.outvars, rename))


def _sign_rules_apply(eqn) -> bool:
    prim = eqn.prim
    if not (prim.negation or prim.absorb_negation) or eqn.params or len(eqn.outputs) != 1:
        return False
    out = eqn.outputs[0].aval
    if out.dtype.kind != "f":  # np.issubdtype(dtype, np.floating), cheaper
        return False
    # every operand already has the result's aval (or is a scalar constant): no rewrite
    # can then change a dtype, a weak type or a broadcast
    for a in eqn.inputs:
        aval = a.aval
        if aval is not out and not (is_scalar_number(a) if a.__class__ is Lit else aval == out):
            if a.__class__ is not Lit or aval != out:
                return False
    return True
