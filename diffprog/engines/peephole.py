"""NumPy-engine lowering of small-array patterns to cheaper NumPy calls.

Loops over tiny arrays (W3 in bench/: an RK4 integrator on 2-element states) are
dominated by per-call overhead, and two patterns from ``np.stack`` and scalar indexing
cost several calls each where one does:

* ``concatenate([reshape(s0, (1,)), reshape(s1, (1,)), ...])`` of 0-d values (what
  ``np.stack([s0, s1])`` traces to) becomes ``np.array([s0, s1], dtype)``: 1.5 us -> 0.26 us.
* ``reshape(x[k:k+1], ())`` (the forward of a cotangent's slice) becomes ``x[k]``.
* ``a @ b`` of an ``(n, 1)`` and a ``(1, m)`` real matrix (an outer product: reverse mode
  writes one for every ``h @ w`` with a one-column ``w``) becomes ``a * b + 0.0``: BLAS
  sums one product per element, so the result is that product, and adding ``+0.0`` turns
  a ``-0.0`` into ``0.0`` as BLAS's zero-started sum does (checked once per process,
  :func:`outer_product_is_exact`). A broadcast multiply is cheaper than a BLAS call
  (W2: 106 -> 71 us on 256 x 256), and the two elementwise steps can join a fused block.
  (A NumPy warning for such a product, as for ``inf * 0``, then names ``multiply``.)
* a Python int operand of ``+ - * /`` with a real floating-point result (``2 * x``, which
  reverse mode writes for ``x ** 2``) becomes the equal float (``2.0 * x``): NumPy converts
  the int to the array's float type either way, but takes 0.1 us longer to work out the
  types of an int (W1: 0.69 -> 0.59 us per such operation). Only ints of at most 2**53,
  which the float holds exactly.

The rewrite happens on a copy of the equation list just before code generation, for
the numpy engine only; the IR users see and the other engines are untouched. Values
are the same: ``np.array`` of 0-d values of one dtype, and integer indexing, produce
the same numbers as the calls they replace.
"""
from __future__ import annotations

import functools

import numpy as np

from ..ir import Aval, Eqn, Graph, Lit, Var
from ..primitives.elementwise import add, mul
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


@functools.lru_cache(maxsize=None)
def outer_product_is_exact() -> bool:
    """Does NumPy's matmul of an (n, 1) by a (1, m) matrix give ``a * b + 0.0`` bit for
    bit here (signed zeros, infinities times zero, NaN), in float64 and float32, through
    both of the BLAS routines NumPy picks (gemm, and gemv for one-row results)?"""
    a = np.array([[-0.0], [1.5], [np.inf], [-3.0], [np.nan], [1e-310], [2.0 ** 600]])
    b = np.array([[0.0, -0.0, 2.0, -np.inf, 1e300, 3.0 ** -5, 7.0]])
    with np.errstate(all="ignore"):
        for dtype in (np.float64, np.float32):
            x, y = a.astype(dtype), b.astype(dtype)
            for left, right in ((x, y), (x[:1], y), (x, y[:, :1]), (x[:1], y[:, :1])):
                got, want = left @ right, left * right + dtype(0.0)
                if got.tobytes() != want.tobytes():
                    return False
    return True


def _outer_products(graph: Graph) -> Graph:
    """Each real outer product written as a matmul rewritten (see the module's docstring)."""
    eqns, changed = [], False
    for eqn in graph.eqns:
        if eqn.prim.name == "matmul" and not eqn.params and len(eqn.inputs) == 2:
            (a, b), out = eqn.inputs, eqn.outputs[0]
            if len(a.aval.shape) == 2 and len(b.aval.shape) == 2 and a.aval.shape[1] == 1 \
                    and b.aval.shape[0] == 1 and out.aval.dtype in _REAL \
                    and a.aval.dtype == b.aval.dtype == out.aval.dtype and outer_product_is_exact():
                product = Var(Aval(out.aval.shape, out.aval.dtype))
                eqns += [Eqn(mul, [a, b], [product], {}), Eqn(add, [product, Lit(0.0)], [out], {})]
                changed = True
                continue
        eqns.append(eqn)
    return Graph(graph.invars, eqns, graph.outvars) if changed else graph


_REAL = (np.dtype(np.float64), np.dtype(np.float32))


_ARITHMETIC = frozenset({"add", "sub", "mul", "div"})


def _float_literals(graph: Graph) -> Graph:
    """Python int operands of real floating-point arithmetic written as floats (above)."""
    eqns = None  # a copy of the equation list, once one is rewritten
    for k, eqn in enumerate(graph.eqns):
        if eqn.prim.name not in _ARITHMETIC or eqn.outputs[0].aval.dtype.kind != "f":
            continue
        inputs = [Lit(float(a.value)) if a.__class__ is Lit and type(a.value) is int
                  and abs(a.value) <= 2 ** 53 else a for a in eqn.inputs]
        if any(new is not old for new, old in zip(inputs, eqn.inputs)):
            if eqns is None:
                eqns = list(graph.eqns)
            eqns[k] = Eqn(eqn.prim, inputs, list(eqn.outputs), eqn.params)
    return graph if eqns is None else Graph(graph.invars, eqns, graph.outvars)


def lower(graph: Graph) -> Graph:
    """The graph with the patterns above rewritten (unchanged when none occurs)."""
    graph = _float_literals(_outer_products(graph))
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
