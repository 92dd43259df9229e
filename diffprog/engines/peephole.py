"""NumPy-engine lowering of small-array patterns to cheaper NumPy calls.

Loops over tiny arrays (W3 in bench/: an RK4 integrator on 2-element states) are
dominated by per-call overhead, and two patterns from ``np.stack`` and scalar indexing
cost several calls each where one does:

* ``concatenate([reshape(s0, (1,)), reshape(s1, (1,)), ...])`` of 0-d values (what
  ``np.stack([s0, s1])`` traces to) becomes ``np.array([s0, s1], dtype)``: 1.5 us -> 0.26 us.
* ``reshape(x[k:k+1], ())`` (the forward of a cotangent's slice) becomes ``x[k]``.

The rewrite happens on a copy of the equation list just before code generation, for
the numpy engine only; the IR users see and the other engines are untouched. Values
are the same: ``np.array`` of 0-d values of one dtype, and integer indexing, produce
the same numbers as the calls they replace.
"""
from __future__ import annotations

from ..ir import Eqn, Graph, Var
from ..primitives.shapes import pack_scalars
from ..transforms.simplify import dead_code_elimination


def _unit_slice_index(index, shape):
    """``(k0, k1, ...)`` when ``index`` picks one element per axis by length-1 slices."""
    if not isinstance(index, tuple) or len(index) != len(shape):
        return None
    picked = []
    for s, n in zip(index, shape):
        if not isinstance(s, slice) or s.step not in (None, 1):
            return None
        if not isinstance(s.start, int) or not 0 <= s.start < n or s.stop != s.start + 1:
            return None
        picked.append(s.start)
    return tuple(picked)


def lower(graph: Graph) -> Graph:
    """The graph with the patterns above rewritten (unchanged when none occurs)."""
    # the values the patterns look at: operands of concatenates and of reshapes
    looked_at = set()
    for e in graph.eqns:
        name = e.prim.name
        if name == "concatenate" or name == "reshape":
            looked_at.update(id(a) for a in e.inputs if isinstance(a, Var))
    if not looked_at:
        return graph  # nothing to look at (the common case): no maps built
    # who defines them, and how often they are read (the maps, for those values only)
    defined_by, uses = {}, {}
    for e in graph.eqns:
        for o in e.outputs:
            if id(o) in looked_at:
                defined_by[id(o)] = e
        for a in e.inputs:
            if id(a) in looked_at:
                uses[id(a)] = uses.get(id(a), 0) + 1
    for o in graph.outvars:
        if isinstance(o, Var) and id(o) in looked_at:
            uses[id(o)] = uses.get(id(o), 0) + 1
    outputs = {id(o) for o in graph.outvars if isinstance(o, Var)}
    eqns, changed = [], False
    for eqn in graph.eqns:
        name = eqn.prim.name
        if name == "concatenate" and eqn.params.get("axis") == 0 and eqn.inputs:
            parts = [defined_by.get(id(a)) if isinstance(a, Var) else None for a in eqn.inputs]
            if all(p is not None and p.prim.name == "reshape" and tuple(p.params.get("shape", ())) == (1,)
                   and p.inputs[0].aval.shape == () and not p.inputs[0].aval.weak
                   and uses.get(id(p.outputs[0])) == 1 for p in parts) \
                    and len({p.inputs[0].aval.dtype for p in parts}) == 1:
                out = eqn.outputs[0]
                eqns.append(Eqn(pack_scalars, [p.inputs[0] for p in parts], [out],
                                {"dtype": out.aval.dtype}))
                changed = True
                continue
        if name == "reshape" and tuple(eqn.params.get("shape", (None,))) == () \
                and id(eqn.outputs[0]) not in outputs and isinstance(eqn.inputs[0], Var):
            src = defined_by.get(id(eqn.inputs[0]))
            if src is not None and src.prim.name == "slice" and isinstance(src.inputs[0], Var):
                picked = _unit_slice_index(src.params.get("index"), src.inputs[0].aval.shape)
                if picked is not None:
                    eqns.append(Eqn(src.prim, [src.inputs[0]], list(eqn.outputs),
                                    {"index": picked}))
                    changed = True
                    continue
        eqns.append(eqn)
    if not changed:
        return graph
    return dead_code_elimination(Graph(graph.invars, eqns, graph.outvars))
