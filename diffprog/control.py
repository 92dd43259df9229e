"""Structured control flow that stays inside one program: cond, scan, fori_loop,
while_loop, checkpoint.

Python ``if``/``for`` on traced values work too (see :mod:`diffprog.guards`) but they
specialise the program to one path: a loop of N steps is unrolled into N copies of its
body, and every new branch outcome costs a retrace. The functions here record *one*
equation holding the traced body as a sub-graph (a :class:`Closed`), run by a Python
loop around the body's compiled code. Their derivative rules build new sub-graphs with
:func:`~diffprog.transforms.vjp_graph` / :func:`~diffprog.transforms.jvp_graph` and bind
these same primitives again, so derivatives of any order work and stay structured.

Bodies are traced *without* concrete values (they run many times with different
values), so Python ``if`` on a traced value inside a body raises a clear error: nest
``dp.cond`` there instead.

Reverse mode through ``scan`` re-runs the forward loop keeping every carry (one per
step). ``scan(..., checkpoint=True)`` keeps only every k-th carry (k = ceil(sqrt(N)))
and recomputes each segment during the backward pass: memory O(sqrt N) carries for
about one extra forward pass. It is built as a scan over segments whose body is a scan
over k steps, so nothing else is special.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .errors import ArgumentError, NotDifferentiableError, ShapeError
from .ir import Aval, Graph, Lit, aval_of
from .primitives import Case, Primitive, Unsupported
from .tracing import Tracer, eval_graph, new_trace
from .transforms import jvp_graph, simplify, vjp_graph
from .tree import LEAF, TreeDef, flatten, unflatten

_JULIA = ("{} exists only in derivative programs the Python engines build; the julia "
          "engine differentiates the forward loop with Zygote instead")


def _jl_operands(jl, positions) -> str:
    """A Julia tuple of the equation's operands at ``positions``: ``({2}, {3})``."""
    return jl.tuple([f"{{{i}}}" for i in positions])


# Julia spellings of the structured primitives: the bodies become local Julia functions
# (``{body}``), run by DiffProg.npscan / npcond / npwhile / npremat (julia/src/control.jl).

def _scan_julia(eqn, jl):
    p, n = eqn.params, len(eqn.inputs)
    if p["length"] == 0:
        return Unsupported("a scan of length 0 has no steps to stack outputs from in Julia")
    nc, nx = p["n_carry"], p["n_x"]
    return (f"DiffProg.npscan({{body}}, {_jl_operands(jl, range(nc))}, "
            f"{_jl_operands(jl, range(nc, nc + nx))}, {_jl_operands(jl, range(nc + nx, n))}, "
            f"{int(p['length'])}, {'true' if p['reverse'] else 'false'}, Val({nc}))")


def _cond_julia(eqn, jl):
    return (f"DiffProg.npcond({{0}}, {{true_body}}, {{false_body}}, "
            f"{_jl_operands(jl, range(1, len(eqn.inputs)))})")


def _while_julia(eqn, jl):
    nc, ncc, n = eqn.params["n_carry"], eqn.params["n_cc"], len(eqn.inputs)
    return (f"DiffProg.npwhile({{cond_body}}, {{body}}, {_jl_operands(jl, range(nc))}, "
            f"{_jl_operands(jl, range(nc, nc + ncc))}, {_jl_operands(jl, range(nc + ncc, n))})")


def _remat_julia(eqn, jl):
    return f"DiffProg.npremat({{body}}, {_jl_operands(jl, range(len(eqn.inputs)))})"


# =========================================================================== sub-graphs

class Closed:
    """A traced sub-program held in an equation's params.

    Compared and hashed by identity (two bodies are the same only if they are the same
    object), so equations holding it can be cached and CSE'd. The compiled code is
    cached per array module on the object.
    """

    __slots__ = ("graph", "extends", "_compiled", "__weakref__")

    def __init__(self, graph: Graph, extends: "Closed | None" = None):
        self.graph = graph
        #: a body whose outputs are this body's leading outputs, on the same inputs
        #: (see transforms.simplify.merge_extended_loops)
        self.extends = extends
        self._compiled: dict = {}

    @property
    def in_avals(self) -> list:
        return [v.aval for v in self.graph.invars]

    @property
    def out_avals(self) -> list:
        return [o.aval for o in self.graph.outvars]

    def fn(self, xp) -> Callable:
        """The body compiled for array module ``xp`` (once per module)."""
        hit = self._compiled.get(id(xp))
        if hit is None:
            from .engines import peephole
            from .engines.numpy import generate_source
            if xp is np:  # the numpy engine's cheaper small-array spellings, as for programs
                source, namespace = generate_source(peephole.lower(self.graph), xp, "body",
                                                    host_fast=True)
            else:
                source, namespace = generate_source(self.graph, xp, "body",
                                                    placement=_placement_for(xp))
            exec(compile(source, "<diffprog body>", "exec"), namespace)
            hit = self._compiled[id(xp)] = namespace["body"]
        return hit

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return id(self)

    def __repr__(self) -> str:
        ins = ",".join(str(a) for a in self.in_avals)
        outs = ",".join(str(a) for a in self.out_avals)
        return f"<body ({ins}) -> ({outs}), {len(self.graph.eqns)} eqns>"


def _placement_for(xp):
    """Where a body's constants live: as they are for NumPy; for another array module
    (CuPy) they are copied to its device once, when the body is compiled (derivative
    bodies hold host constants such as zero cotangents), as the cupy engine does for
    whole programs."""
    from .engines.numpy import HOST
    if xp is np:
        return HOST
    from .engines.cupy import DevicePlacement
    return DevicePlacement(xp.asarray)


def close(fn: Callable, in_avals: list) -> Closed:
    """Trace ``fn(*flat tracers) -> flat outputs`` (no values, no captures) into a Closed."""
    with new_trace(concrete=False) as trace:
        args = [trace.new_input(a) for a in in_avals]
        outs = fn(*args)
        graph = trace.to_graph(list(outs))
    if trace.captured:  # pragma: no cover - rule bodies get every value as an argument
        raise AssertionError("internal: a derivative body captured an outer value")
    return Closed(simplify(graph))


def _strong(aval: Aval) -> Aval:
    return Aval(aval.shape, aval.dtype)


def _avals(values) -> list:
    return [_strong(v.aval) if isinstance(v, Tracer) else aval_of(_as_leaf(v)) for v in values]


def _is_float(aval) -> bool:
    return np.issubdtype(aval.dtype, np.inexact)


def _zeros(aval):
    return np.zeros(aval.shape, aval.dtype)


def _or_zeros(t, aval):
    return t if t is not None else _zeros(aval)


def trace_user(fn: Callable, in_tree, in_avals: list, what: str):
    """Trace a user body on abstract inputs shaped ``in_avals`` (pytree ``in_tree``).

    Returns ``(graph, out_tree, captured outer tracers)``; the graph's inputs are the
    flat arguments followed by the captured values. ``what`` names the body in errors.
    """
    with new_trace(concrete=False) as trace:
        trace.purpose = what  # named by errors on bool()/int() in the body (diffprog.guards)
        args = [trace.new_input(a) for a in in_avals]
        out = fn(*unflatten(in_tree, args))
        flat, out_tree = flatten(out)
        graph = trace.to_graph(flat)
    return simplify(graph), out_tree, [o for o, _ in trace.captured]


def _cast_to(value, aval: Aval, what: str):
    shape = tuple(np.shape(value)) if not isinstance(value, Tracer) else value.shape
    if shape != aval.shape:
        raise ShapeError(f"{what}: expected shape {aval.shape}, the body returned shape {shape}. "
                         f"Fix: the loop carry must keep its shape from step to step.")
    dtype = value.dtype if hasattr(value, "dtype") else np.result_type(value)
    if dtype != aval.dtype:
        if not np.can_cast(dtype, aval.dtype, "same_kind"):
            raise ArgumentError(f"{what}: expected dtype {aval.dtype}, the body returned {dtype}. "
                                f"Fix: start the carry with the dtype the body produces.")
        return _as_leaf(value).astype(aval.dtype) if not isinstance(value, Tracer) \
            else value.astype(aval.dtype)
    return value


def _as_leaf(x):
    # device arrays (CuPy) stay where they are: np.asarray would copy them to the host
    # (CuPy refuses); Python and NumPy scalars become NumPy arrays
    if isinstance(x, Tracer) or hasattr(x, "__cuda_array_interface__"):
        return x
    return np.asarray(x)


def _bind(prim, inputs, **params):
    """Bind a multiple-result primitive; on plain values compute it directly."""
    from .tracing import bind
    out = bind(prim, *inputs, **params)
    return list(out)


# ================================================================================ scan

def _scan_impl(xp, *args, body, n_carry, n_x, length, reverse):
    carry = list(args[:n_carry])
    xs = args[n_carry:n_carry + n_x]
    consts = args[n_carry + n_x:]
    run = body.fn(xp)
    y_avals = body.out_avals[n_carry:]
    ys = [[None] * length for _ in y_avals]
    for i in (range(length - 1, -1, -1) if reverse else range(length)):
        out = run(*carry, *[x[i] for x in xs], *consts)
        carry = list(out[:n_carry])
        for k, y in enumerate(out[n_carry:]):
            ys[k][i] = y
    stacked = [xp.stack([xp.asarray(v, dtype=a.dtype) for v in col]) if length else
               xp.zeros((0,) + a.shape, a.dtype) for col, a in zip(ys, y_avals)]
    return tuple(carry) + tuple(stacked)


def _scan_shape(*avals, body, n_carry, n_x, length, reverse):
    outs = body.out_avals
    return [_strong(a) for a in avals[:n_carry]] + \
        [Aval((length,) + a.shape, a.dtype) for a in outs[n_carry:]]


def _scan_vjp(gs, *ins, out, body, n_carry, n_x, length, reverse):
    n_c = len(ins) - n_carry - n_x
    carry_avals, x_avals = body.in_avals[:n_carry], body.in_avals[n_carry:n_carry + n_x]
    c_avals = body.in_avals[n_carry + n_x:]
    init, xs, consts = ins[:n_carry], ins[n_carry:n_carry + n_x], ins[n_carry + n_x:]
    n_y = len(body.out_avals) - n_carry

    # 1. re-run the loop keeping the carry *entering* each step, after every primal
    # output, so that a program needing the primal loop too runs this one loop only
    # (simplify merges the two)
    def keep_carries(*a):
        outs = eval_graph(body.graph, list(a))
        return list(outs) + list(a[:n_carry])
    collect = Closed(close(keep_carries, body.in_avals).graph, extends=body)
    carries = _bind(scan, list(init) + list(xs) + list(consts), body=collect, n_carry=n_carry,
                    n_x=n_x, length=length, reverse=reverse)[n_carry + n_y:]
    # 2. scan backwards: carry = (d carry, accumulated d consts), xs = (carry_i, x_i, d y_i)
    fc = [i for i, a in enumerate(carry_avals) if _is_float(a)]
    fx = [i for i, a in enumerate(x_avals) if _is_float(a)]
    fk = [i for i, a in enumerate(c_avals) if _is_float(a)]
    wrt = fc + [n_carry + i for i in fx] + [n_carry + n_x + i for i in fk]
    vg = vjp_graph(body.graph, wrt, seed="input")
    n_out = len(body.out_avals)
    out_avals = [_strong(a) for a in body.out_avals]

    def backward_step(*a):
        pos = 0
        g_carry = list(a[pos:pos + len(fc)]); pos += len(fc)
        g_acc = list(a[pos:pos + len(fk)]); pos += len(fk)
        carry = list(a[pos:pos + n_carry]); pos += n_carry
        x = list(a[pos:pos + n_x]); pos += n_x
        g_y = list(a[pos:pos + n_y]); pos += n_y
        kc = list(a[pos:])
        cts = [_zeros(out_avals[i]) for i in range(n_carry)] + g_y
        for j, i in enumerate(fc):
            cts[i] = g_carry[j]
        grads = eval_graph(vg, carry + x + kc + cts)[n_out:]
        gc, gx, gk = grads[:len(fc)], grads[len(fc):len(fc) + len(fx)], grads[len(fc) + len(fx):]
        return list(gc) + [acc + g for acc, g in zip(g_acc, gk)] + list(gx)

    bwd_avals = ([carry_avals[i] for i in fc] + [c_avals[i] for i in fk] + carry_avals + x_avals
                 + out_avals[n_carry:] + c_avals)
    bwd = close(backward_step, bwd_avals)
    g_final = [_or_zeros(gs[i], carry_avals[i]) for i in fc]
    g_ys = [_or_zeros(g, Aval((length,) + a.shape, a.dtype)) for g, a in
            zip(gs[n_carry:], out_avals[n_carry:])]
    res = _bind(scan, g_final + [_zeros(c_avals[i]) for i in fk] + carries + list(xs) + g_ys
                + list(consts), body=bwd, n_carry=len(fc) + len(fk),
                n_x=n_carry + n_x + n_y, length=length, reverse=not reverse)
    g_init, g_consts, g_xs = res[:len(fc)], res[len(fc):len(fc) + len(fk)], res[len(fc) + len(fk):]
    cts = [None] * len(ins)
    for j, i in enumerate(fc):
        cts[i] = g_init[j]
    for j, i in enumerate(fx):
        cts[n_carry + i] = g_xs[j]
    for j, i in enumerate(fk):
        cts[n_carry + n_x + i] = g_consts[j]
    assert len(cts) == n_carry + n_x + n_c
    return cts


def _scan_jvp(ts, *ins, out, body, n_carry, n_x, length, reverse):
    avals = body.in_avals
    wrt = [i for i, a in enumerate(avals) if _is_float(a)]
    jg = jvp_graph(body.graph, wrt)
    n_out = len(body.out_avals)
    f_out = [k for k, a in enumerate(body.out_avals) if _is_float(a)]
    groups = [range(0, n_carry), range(n_carry, n_carry + n_x), range(n_carry + n_x, len(avals))]
    # new layout per group: primals of the group, then tangents of its float members
    layout = [list(g) + [("t", i) for i in g if i in wrt] for g in groups]
    t_carry_out = [k for k in f_out if k < n_carry]
    t_y_out = [k for k in f_out if k >= n_carry]

    def step(*a):
        named = {}
        for key, v in zip([k for grp in layout for k in grp], a):
            named[key] = v
        res = eval_graph(jg, [named[i] for i in range(len(avals))] + [named[("t", i)] for i in wrt])
        outs, touts = res[:n_out], res[n_out:]
        return (outs[:n_carry] + [touts[k] for k in t_carry_out] + outs[n_carry:]
                + [touts[k] for k in t_y_out])

    def aval_of_key(k):
        return avals[k] if not isinstance(k, tuple) else avals[k[1]]
    new_body = close(step, [aval_of_key(k) for grp in layout for k in grp])
    lengthed = [lambda a: a, lambda a: Aval((length,) + a.shape, a.dtype), lambda a: a]
    new_ins = []
    for gi, grp in enumerate(layout):
        for k in grp:
            if isinstance(k, tuple):
                new_ins.append(_or_zeros(ts[k[1]], lengthed[gi](avals[k[1]])))
            else:
                new_ins.append(ins[k])
    res = _bind(scan, new_ins, body=new_body, n_carry=len(layout[0]), n_x=len(layout[1]),
                length=length, reverse=reverse)
    nc = n_carry + len(t_carry_out)
    tangents = [None] * len(out)
    for j, k in enumerate(t_carry_out):
        tangents[k] = res[n_carry + j]
    for j, k in enumerate(t_y_out):
        tangents[k] = res[nc + (n_out - n_carry) + j]
    return tangents


def _example_scan_body():
    f64 = Aval((3,), np.dtype(float))

    def step(c, x, k):  # carry (3,), x (3,), const (3,): a smooth nonlinear recurrence
        new = np.tanh(c * k) + x * c
        return [new, np.sum(new * x)]
    return close(step, [f64, f64, f64])


scan = Primitive(
    "scan", _scan_impl, _scan_shape, vjp=_scan_vjp, jvp=_scan_jvp,
    julia=_scan_julia, multiple_results=True,
    cases=[Case(lambda rng: [rng.standard_normal(3) * 0.5, rng.standard_normal((4, 3)) * 0.5,
                             rng.standard_normal(3)],
                {"body": _example_scan_body(), "n_carry": 1, "n_x": 1, "length": 4,
                 "reverse": False})])


def scan_(f: Callable, init, xs=None, length: int | None = None, reverse: bool = False,
          checkpoint: bool | int = False):
    """Loop ``carry, y = f(carry, x)`` over the leading axis of ``xs``; return
    ``(final carry, stacked ys)`` (JAX semantics; carries, xs and ys may be pytrees).

    One equation in the program whatever the number of steps; differentiable in both
    modes. ``checkpoint=True`` (or a segment length k) bounds reverse-mode memory to
    O(N/k + k) carries instead of N, for about one extra forward pass.

    >>> import numpy as np, diffprog as dp
    >>> def cumulative(c, x):
    ...     return c + x, c + x
    >>> total, partial_sums = dp.scan(cumulative, 0.0, np.arange(4.0))
    >>> float(total), partial_sums
    (6.0, array([0., 1., 3., 6.]))
    >>> dp.grad(lambda x: np.sum(dp.scan(cumulative, 0.0, x)[1]))(np.ones(4))
    array([4., 3., 2., 1.])
    """
    x_leaves, x_tree = _flatten_opt(xs)
    x_leaves = [_as_leaf(x) for x in x_leaves]
    lengths = {np.shape(x)[0] if np.ndim(x) else None for x in x_leaves}
    if None in lengths:
        raise ShapeError("dp.scan: every leaf of xs needs a leading (scanned) axis; found a 0-d leaf")
    if length is None:
        if not lengths:
            raise ArgumentError("dp.scan: pass xs, or length= when there is nothing to scan over")
        length = lengths.pop() if len(lengths) == 1 else None
        if length is None:
            raise ShapeError(f"dp.scan: the leaves of xs have different leading lengths {sorted(lengths)}")
    elif lengths and lengths != {length}:
        raise ShapeError(f"dp.scan: length={length} but xs have leading lengths {sorted(lengths)}")
    length = int(length)
    if checkpoint and length > 2:
        k = int(checkpoint) if checkpoint is not True else math.ceil(math.sqrt(length))
        if 1 < k < length:
            return _checkpointed_scan(f, init, xs, x_leaves, x_tree, length, reverse, k)
    return _plain_scan(f, init, x_leaves, x_tree, length, reverse)


_NONE = TreeDef("none", (), ())


def _flatten_opt(tree):
    """flatten, with ``None`` standing for "no values" (xs=None, y=None)."""
    return ([], _NONE) if tree is None else flatten(tree)


def _unflatten_opt(tree, leaves):
    return None if tree == _NONE else unflatten(tree, leaves)


def _plain_scan(f, init, x_leaves, x_tree, length, reverse):
    c_leaves, c_tree = flatten(init)
    c_leaves = [_as_leaf(c) for c in c_leaves]
    c_avals = _avals(c_leaves)
    x_avals = [Aval(a.shape[1:], a.dtype) for a in _avals(x_leaves)]
    n_carry, n_x = len(c_leaves), len(x_leaves)

    y_trees = []

    def body(carry, x):
        res = f(carry, _unflatten_opt(x_tree, x))
        if not isinstance(res, tuple) or len(res) != 2:
            raise ArgumentError("dp.scan: the body must return a pair (new carry, y)")
        y_leaves, y_tree = _flatten_opt(res[1])
        y_trees.append(y_tree)
        return res[0], y_leaves
    graph, out_tree, captured = trace_user(
        body, TreeDef("tuple", (), (c_tree, _list_tree(n_x))), c_avals + x_avals,
        "the body of dp.scan / dp.fori_loop")
    if out_tree.children[0] != c_tree:
        raise ArgumentError(f"dp.scan: the body returned a carry with structure "
                            f"{out_tree.children[0]}, but the initial carry has structure {c_tree}")
    graph = _fix_carry(graph, c_avals, "dp.scan")
    outs = _bind(scan, c_leaves + x_leaves + captured, body=Closed(graph), n_carry=n_carry,
                 n_x=n_x, length=length, reverse=reverse)
    return unflatten(c_tree, outs[:n_carry]), _unflatten_opt(y_trees[0], outs[n_carry:])


def _list_tree(n):
    return TreeDef("list", (), tuple(LEAF for _ in range(n)))


def _fix_carry(graph: Graph, c_avals, what) -> Graph:
    """Cast the body's carry outputs to the carry's dtype (or explain the mismatch)."""
    n = len(c_avals)
    if all(isinstance(o, type(graph.invars[0])) and o.aval == a for o, a in
           zip(graph.outvars[:n], c_avals)) if graph.invars else False:
        return graph

    def fixed(*a):
        outs = eval_graph(graph, list(a))
        return [_cast_to(o, av, f"{what} carry {i}") for i, (o, av) in
                enumerate(zip(outs[:n], c_avals))] + list(outs[n:])
    return close(fixed, [v.aval for v in graph.invars]).graph


def _checkpointed_scan(f, init, xs, x_leaves, x_tree, length, reverse, k):
    """Scan over segments of k steps, each one an inner scan: reverse mode then keeps
    one carry per segment, and k carries while it recomputes one segment."""
    n_seg, rest = divmod(length, k)
    main = n_seg * k
    seg_xs = [np.reshape(x[:main] if not reverse else x[rest:], (n_seg, k) + tuple(np.shape(x)[1:]))
              for x in x_leaves]
    tail_xs = [x[main:] if not reverse else x[:rest] for x in x_leaves]

    y_trees = []

    def inner(carry, x):
        c, y = f(carry, x)
        y_leaves, y_tree = _flatten_opt(y)
        y_trees.append(y_tree)
        return c, y_leaves

    def segment(carry, xseg):
        return _plain_scan(inner, carry, flatten(xseg)[0] if xseg is not None else [],
                           x_tree, k, reverse)

    def run_main(carry):
        carry, ys = _plain_scan(segment, carry, seg_xs, x_tree, n_seg, reverse)
        y_leaves, y_tree = ys, y_trees[0]
        return carry, [np.reshape(y, (main,) + tuple(np.shape(y)[2:])) for y in y_leaves], y_tree

    def run_tail(carry):
        carry, ys = _plain_scan(inner, carry, tail_xs, x_tree, rest, reverse)
        return carry, ys, None

    if not reverse:
        carry, ys_main, y_tree = run_main(init)
        carry, ys_tail, _ = run_tail(carry) if rest else (carry, [], None)
        ys = [np.concatenate([a, b]) for a, b in zip(ys_main, ys_tail)] if rest else ys_main
    else:  # the end of xs (the main part) runs first
        carry, ys_main, y_tree = run_main(init)
        carry, ys_tail, _ = run_tail(carry) if rest else (carry, [], None)
        ys = [np.concatenate([b, a]) for a, b in zip(ys_main, ys_tail)] if rest else ys_main
    return carry, _unflatten_opt(y_tree, ys)


def fori_loop(lower: int, upper: int, body_fn: Callable, init_val, checkpoint: bool | int = False):
    """``for i in range(lower, upper): val = body_fn(i, val)`` as one structured loop.

    ``i`` is a traced integer scalar inside ``body_fn``. Bounds are Python ints (a
    traced integer bound is read through ``int()``, which guards on its value).
    Differentiable in both modes (it is a :func:`scan`); ``checkpoint`` as there.

    >>> import numpy as np, diffprog as dp
    >>> float(dp.fori_loop(0, 3, lambda i, x: x * 2.0, np.array(1.0)))
    8.0
    >>> float(dp.grad(lambda x: dp.fori_loop(0, 3, lambda i, v: np.sin(v) + i, x))(0.5))  # doctest: +ELLIPSIS
    0.0851...
    """
    lower, upper = int(lower), int(upper)
    idx = np.arange(lower, max(lower, upper))
    carry, _ = scan_(lambda c, i: (body_fn(i, c), None), init_val, idx, checkpoint=checkpoint)
    return carry


# ================================================================================ cond

def _cond_impl(xp, pred, *args, true_body, false_body):
    body = true_body if bool(pred) else false_body
    return tuple(body.fn(xp)(*args))


def _cond_shape(pred, *avals, true_body, false_body):
    if pred.shape != ():
        raise ShapeError(f"dp.cond: the predicate must be a scalar, got shape {pred.shape}")
    return [_strong(a) for a in true_body.out_avals]


def _cond_vjp(gs, pred, *ins, out, true_body, false_body):
    avals = true_body.in_avals
    wrt = [i for i, a in enumerate(avals) if _is_float(a)]
    out_avals = [_strong(a) for a in true_body.out_avals]
    gs = [_or_zeros(g, a) for g, a in zip(gs, out_avals)]
    n_out = len(out_avals)

    def grads_of(branch):
        vg = vjp_graph(branch.graph, wrt, seed="input")
        return close(lambda *a: eval_graph(vg, list(a))[n_out:], avals + out_avals)
    res = _bind(cond, [pred] + list(ins) + gs, true_body=grads_of(true_body),
                false_body=grads_of(false_body))
    cts = [None] * (1 + len(ins))
    for j, i in enumerate(wrt):
        cts[1 + i] = res[j]
    return cts


def _cond_jvp(ts, pred, *ins, out, true_body, false_body):
    avals = true_body.in_avals
    wrt = [i for i, a in enumerate(avals) if _is_float(a)]
    n_out = len(true_body.out_avals)

    def tangents_of(branch):
        jg = jvp_graph(branch.graph, wrt)
        return close(lambda *a: eval_graph(jg, list(a))[n_out:],
                     avals + [avals[i] for i in wrt])
    tans = [_or_zeros(ts[1 + i], avals[i]) for i in wrt]
    res = _bind(cond, [pred] + list(ins) + tans, true_body=tangents_of(true_body),
                false_body=tangents_of(false_body))
    return [r if _is_float(a) else None for r, a in zip(res, true_body.out_avals)]


def _example_branches():
    f64 = Aval((3,), np.dtype(float))
    return {"true_body": close(lambda x, y: [np.sin(x) * y], [f64, f64]),
            "false_body": close(lambda x, y: [x ** 3 - y], [f64, f64])}


_BRANCHES = _example_branches()
cond_p = cond = Primitive(
    "cond", _cond_impl, _cond_shape, vjp=_cond_vjp, jvp=_cond_jvp,
    julia=_cond_julia, multiple_results=True,
    cases=[Case(lambda rng: [np.array(True), rng.standard_normal(3), rng.standard_normal(3)],
                _BRANCHES),
           Case(lambda rng: [np.array(False), rng.standard_normal(3), rng.standard_normal(3)],
                _BRANCHES)])


def cond_(pred, true_fn: Callable, false_fn: Callable, *operands):
    """``true_fn(*operands) if pred else false_fn(*operands)`` inside one program.

    Both branches are traced (without values) and must return the same structure,
    shapes and dtypes; only the chosen one runs. Differentiable in both modes with
    respect to the operands and values the branches close over.

    >>> import numpy as np, diffprog as dp
    >>> def f(x):
    ...     return dp.cond(np.sum(x) > 0, lambda v: v * 2.0, lambda v: -v, x)
    >>> f(np.array([1.0, 2.0])), dp.grad(lambda x: np.sum(f(x)))(np.array([-1.0, -2.0]))
    (array([2., 4.]), array([-1., -1.]))
    """
    if not isinstance(pred, Tracer):
        return true_fn(*operands) if bool(pred) else false_fn(*operands)
    if pred.shape != ():
        raise ShapeError(f"dp.cond: the predicate must be a scalar, got shape {pred.shape}. "
                         f"Fix: reduce it (np.any / np.all), or use np.where for elementwise choices.")
    leaves, tree = flatten(tuple(operands))
    leaves = [_as_leaf(x) for x in leaves]
    avals = _avals(leaves)
    g_t, t_tree, cap_t = trace_user(lambda *a: true_fn(*a), tree, avals, "true_fn of dp.cond")
    g_f, f_tree, cap_f = trace_user(lambda *a: false_fn(*a), tree, avals, "false_fn of dp.cond")
    if t_tree != f_tree:
        raise ArgumentError(f"dp.cond: true_fn returned structure {t_tree} but false_fn returned "
                            f"{f_tree}; both branches must return the same structure")
    outs_t, outs_f = [_strong(o.aval) for o in g_t.outvars], [_strong(o.aval) for o in g_f.outvars]
    for i, (a, b) in enumerate(zip(outs_t, outs_f)):
        if a.shape != b.shape:
            raise ShapeError(f"dp.cond: output {i} has shape {a.shape} in true_fn but {b.shape} "
                             f"in false_fn; both branches must return the same shapes")
    dtypes = [np.result_type(a.dtype, b.dtype) for a, b in zip(outs_t, outs_f)]
    n, nt = len(leaves), len(cap_t)
    all_avals = avals + _avals(cap_t) + _avals(cap_f)

    def unify(graph, lo, hi):
        def run(*a):
            outs = eval_graph(graph, list(a[:n]) + list(a[n + lo:n + hi]))
            return [o.astype(dt) if getattr(o, "dtype", None) != dt and hasattr(o, "astype")
                    else (o if hasattr(o, "astype") else np.asarray(o, dt))
                    for o, dt in zip(outs, dtypes)]
        return close(run, all_avals)
    res = _bind(cond, [pred] + leaves + cap_t + cap_f,
                true_body=unify(g_t, 0, nt), false_body=unify(g_f, nt, nt + len(cap_f)))
    return unflatten(t_tree, res)


# =============================================================================== error_if

def _error_if_impl(xp, x, pred, *info, message):
    if bool(pred):
        from .errors import SolverError
        raise SolverError(message.format(*[float(v) for v in info]))
    return x


def _error_if_jvp(ts, x, pred, *info, out, message):
    return ts[0]


error_if_p = Primitive(
    "error_if", _error_if_impl, lambda x, pred, *info, message: _strong(x),
    vjp=lambda g, x, pred, *info, out, message: [g] + [None] * (1 + len(info)),
    jvp=_error_if_jvp,
    julia=Unsupported("error_if raises a Python exception (diffprog.errors.SolverError) from "
                      "inside a running program; only the Python engines can"),
    cases=[Case(lambda rng: [rng.standard_normal(3), np.array(False), np.array(0.5)],
                {"message": "solver failed at t={0}"})])


def error_if(x, pred, message: str, *info):
    """``x``, unchanged, after checking at run time that ``pred`` is false; otherwise raise
    :class:`~diffprog.errors.SolverError` with ``message.format(*info)`` (``info``:
    scalar values such as the time a solver stopped at). An identity for derivatives.
    For diffprog's own solvers: the check is compiled into the program, so a failure deep
    inside a loop body raises instead of returning a silently wrong value.
    """
    if not isinstance(pred, Tracer) and not any(isinstance(v, Tracer) for v in (x, *info)):
        return _error_if_impl(np, x, pred, *info, message=message)
    from .tracing import bind
    return bind(error_if_p, x, pred, *info, message=message)


# =============================================================================== checkpoint

def _remat_impl(xp, *args, body):
    return tuple(body.fn(xp)(*args))


def _remat_vjp(gs, *ins, out, body):
    avals = body.in_avals
    wrt = [i for i, a in enumerate(avals) if _is_float(a)]
    out_avals = [_strong(a) for a in body.out_avals]
    vg = vjp_graph(body.graph, wrt, seed="input")
    n_out = len(out_avals)
    bwd = close(lambda *a: eval_graph(vg, list(a))[n_out:], avals + out_avals)
    res = _bind(remat, list(ins) + [_or_zeros(g, a) for g, a in zip(gs, out_avals)], body=bwd)
    cts = [None] * len(ins)
    for j, i in enumerate(wrt):
        cts[i] = res[j]
    return cts


def _remat_jvp(ts, *ins, out, body):
    avals = body.in_avals
    wrt = [i for i, a in enumerate(avals) if _is_float(a)]
    jg = jvp_graph(body.graph, wrt)
    n_out = len(body.out_avals)
    fwd = close(lambda *a: eval_graph(jg, list(a))[n_out:], avals + [avals[i] for i in wrt])
    res = _bind(remat, list(ins) + [_or_zeros(ts[i], avals[i]) for i in wrt], body=fwd)
    return [r if _is_float(a) else None for r, a in zip(res, body.out_avals)]


remat = Primitive(
    "remat", _remat_impl, lambda *avals, body: [_strong(a) for a in body.out_avals],
    vjp=_remat_vjp, jvp=_remat_jvp, julia=_remat_julia,
    multiple_results=True,
    cases=[Case(lambda rng: [rng.standard_normal(3), rng.standard_normal(3)],
                {"body": close(lambda x, y: [np.sin(x * y), np.exp(x) * y],
                               [Aval((3,), np.dtype(float))] * 2)})])


def checkpoint(fn: Callable) -> Callable:
    """Wrap ``fn`` so reverse mode recomputes its intermediates instead of storing them.

    The backward pass keeps only ``fn``'s inputs and runs ``fn`` again (one extra
    forward of ``fn``) when its gradient is needed: trade compute for memory in deep
    or long computations.

    >>> import numpy as np, diffprog as dp
    >>> block = dp.checkpoint(lambda x: np.tanh(np.sin(x) * 2.0))
    >>> dp.grad(lambda x: np.sum(block(x)))(np.zeros(2))
    array([2., 2.])
    """
    def wrapped(*args):
        leaves, tree = flatten(tuple(args))
        if not any(isinstance(x, Tracer) for x in leaves) and not _tracing():
            return fn(*args)
        leaves = [_as_leaf(x) for x in leaves]
        graph, out_tree, captured = trace_user(lambda *a: fn(*a), tree, _avals(leaves),
                                                "a dp.checkpoint block")
        res = _bind(remat, leaves + captured, body=Closed(graph))
        return unflatten(out_tree, res)
    wrapped.__wrapped__ = fn
    return wrapped


def _tracing() -> bool:
    from .tracing import tracing_active
    return tracing_active()


# =============================================================================== while

def _while_run(xp, carry, consts_c, consts_b, cond_body, body, keep=None):
    run_c, run_b = cond_body.fn(xp), body.fn(xp)
    while bool(run_c(*carry, *consts_c)[0]):
        if keep is not None:
            keep.append(carry)
        carry = list(run_b(*carry, *consts_b))
    return carry


def _while_impl(xp, *args, cond_body, body, n_carry, n_cc):
    carry, cc, bc = args[:n_carry], args[n_carry:n_carry + n_cc], args[n_carry + n_cc:]
    return tuple(_while_run(xp, list(carry), cc, bc, cond_body, body))


def _while_shape(*avals, cond_body, body, n_carry, n_cc):
    return [_strong(a) for a in avals[:n_carry]]


def _while_jvp(ts, *ins, out, cond_body, body, n_carry, n_cc):
    avals = body.in_avals  # (*carry, *body consts)
    n_bc = len(avals) - n_carry
    wrt = [i for i, a in enumerate(avals) if _is_float(a)]
    fcar = [i for i in wrt if i < n_carry]
    fbc = [i for i in wrt if i >= n_carry]
    jg = jvp_graph(body.graph, wrt)
    # new carry: (*carry, *carry tangents); new consts: cond consts, body consts, their tangents
    cond_avals = cond_body.in_avals

    def new_cond(*a):
        return eval_graph(cond_body.graph, list(a[:n_carry]) + list(a[n_carry + len(fcar):
                                                                     n_carry + len(fcar) + n_cc]))

    def new_body(*a):
        carry, tcar = list(a[:n_carry]), list(a[n_carry:n_carry + len(fcar)])
        bc = list(a[n_carry + len(fcar):n_carry + len(fcar) + n_bc])
        tbc = list(a[n_carry + len(fcar) + n_bc:])
        res = eval_graph(jg, carry + bc + tcar + tbc)
        return res[:n_carry] + [res[len(avals[:n_carry]) + i] for i in fcar]
    carry_avals = avals[:n_carry] + [avals[i] for i in fcar]
    c_closed = close(new_cond, carry_avals + cond_avals[n_carry:])
    b_closed = close(new_body, carry_avals + avals[n_carry:] + [avals[i] for i in fbc])
    carry = list(ins[:n_carry]) + [_or_zeros(ts[i], avals[i]) for i in fcar]
    cc = list(ins[n_carry:n_carry + n_cc])
    bc = list(ins[n_carry + n_cc:])
    tbc = [_or_zeros(ts[n_cc + i], avals[i]) for i in fbc]
    res = _bind(while_p, carry + cc + bc + tbc, cond_body=c_closed, body=b_closed,
                n_carry=len(carry), n_cc=n_cc)
    tangents = [None] * n_carry
    for j, i in enumerate(fcar):
        tangents[i] = res[n_carry + j]
    return tangents


def _while_vjp(gs, *ins, out, cond_body, body, n_carry, n_cc):
    avals = body.in_avals
    wrt = [i for i, a in enumerate(avals) if _is_float(a)]
    fcar = [i for i in wrt if i < n_carry]
    fbc = [i for i in wrt if i >= n_carry]
    vg = vjp_graph(body.graph, wrt, seed="input")
    n_out = n_carry

    def bwd_step(*a):  # (*carry, *body consts, *d new carry (float)) -> (d carry, d consts)
        carry, bc = list(a[:n_carry]), list(a[n_carry:len(avals)])
        g = list(a[len(avals):])
        cts = [_zeros(_strong(av)) for av in avals[:n_carry]]
        for j, i in enumerate(fcar):
            cts[i] = g[j]
        return eval_graph(vg, carry + bc + cts)[n_out:]
    bwd = close(bwd_step, avals + [avals[i] for i in fcar])
    g_final = [_or_zeros(gs[i], avals[i]) for i in fcar]
    res = _bind(while_grad, list(ins) + g_final, cond_body=cond_body, body=body, bwd=bwd,
                n_carry=n_carry, n_cc=n_cc)
    cts = [None] * len(ins)
    for j, i in enumerate(fcar):
        cts[i] = res[j]
    for j, i in enumerate(fbc):
        cts[n_cc + i] = res[len(fcar) + j]
    return cts


def _example_while():
    f64, scalar = Aval((2,), np.dtype(float)), Aval((), np.dtype(float))
    return {"cond_body": close(lambda x, lim: [np.sum(x) < lim], [f64, scalar]),
            "body": close(lambda x, k: [x * k + 0.1], [f64, scalar]), "n_carry": 1, "n_cc": 1}


while_p = Primitive(
    "while_loop", _while_impl, _while_shape, vjp=_while_vjp, jvp=_while_jvp,
    julia=_while_julia, multiple_results=True,
    cases=[Case(lambda rng: [np.array([0.6, 0.7]), np.array(5.0), np.array(1.5)],
                _example_while(), order=1)])


def _while_grad_impl(xp, *args, cond_body, body, bwd, n_carry, n_cc):
    """Run the loop forward keeping every carry (the trip count is known only now), then
    run the body's derivative backwards over them."""
    n_bc = len(body.in_avals) - n_carry
    carry = list(args[:n_carry])
    cc = args[n_carry:n_carry + n_cc]
    bc = args[n_carry + n_cc:n_carry + n_cc + n_bc]
    g = list(args[n_carry + n_cc + n_bc:])
    kept: list = []
    _while_run(xp, carry, cc, bc, cond_body, body, kept)
    run = bwd.fn(xp)
    n_g = len(g)
    g_bc = None
    for c in reversed(kept):
        res = run(*c, *bc, *g)
        g = list(res[:n_g])
        g_bc = list(res[n_g:]) if g_bc is None else [a + b for a, b in zip(g_bc, res[n_g:])]
    if g_bc is None:
        g_bc = [xp.zeros(a.shape, a.dtype) for a in bwd.out_avals[n_g:]]
    return tuple(g) + tuple(g_bc)


def _no_second_order(*args, **kwargs):
    raise NotDifferentiableError(
        "reverse-mode derivatives of dp.while_loop are first order only (the trip count is "
        "known only at run time). Fix: pass max_steps=... to dp.while_loop, which makes it a "
        "bounded, masked loop differentiable to any order, or use forward mode (dp.jvp).")


while_grad = Primitive(
    "while_loop_grad", _while_grad_impl,
    lambda *avals, cond_body, body, bwd, n_carry, n_cc: [_strong(a) for a in bwd.out_avals],
    vjp=_no_second_order, jvp=_no_second_order,
    julia=Unsupported(_JULIA.format("the reverse-mode while_loop_grad")),
    multiple_results=True, register=False)


def while_loop(cond_fn: Callable, body_fn: Callable, init_val, max_steps: int | None = None):
    """``while cond_fn(val): val = body_fn(val)`` inside one program.

    Forward mode (``dp.jvp``) works to any order. Reverse mode:

    * ``max_steps=None``: the trip count is recorded at run time: the backward pass runs
      the loop again keeping every carry (memory O(trip count)), then the body's
      derivative backwards over them. First order only (a second reverse derivative
      raises NotDifferentiableError).
    * ``max_steps=N``: a bounded loop, a checkpointed :func:`scan` of N masked steps
      (steps after ``cond_fn`` turns false leave the value unchanged; the loop stops after
      N steps even if ``cond_fn`` still holds). Differentiable to any order, memory
      O(sqrt N); every call costs N body evaluations.

    >>> import numpy as np, diffprog as dp
    >>> dp.while_loop(lambda x: np.sum(x) < 10.0, lambda x: x * 2.0, np.array([1.0, 1.0]))
    array([8., 8.])
    >>> dp.grad(lambda x: np.sum(dp.while_loop(lambda v: np.sum(v) < 10.0,
    ...                                        lambda v: v * 2.0, x)))(np.array([1.0, 1.0]))
    array([8., 8.])
    """
    if max_steps is not None:
        return _bounded_while(cond_fn, body_fn, init_val, int(max_steps))
    leaves, tree = flatten(init_val)
    leaves = [_as_leaf(x) for x in leaves]
    avals = _avals(leaves)
    if not any(isinstance(x, Tracer) for x in leaves) and not _tracing():
        val = init_val
        while bool(cond_fn(val)):
            val = body_fn(val)
        return val
    g_c, c_tree, cap_c = trace_user(lambda v: _as_leaf(cond_fn(v)), _single(tree), avals,
                                    "cond_fn of dp.while_loop")
    if len(g_c.outvars) != 1 or g_c.outvars[0].aval.shape != ():
        raise ArgumentError("dp.while_loop: cond_fn must return one scalar (a boolean)")
    g_b, b_tree, cap_b = trace_user(lambda v: body_fn(v), _single(tree), avals,
                                    "body_fn of dp.while_loop")
    if b_tree != tree:
        raise ArgumentError(f"dp.while_loop: body_fn returned structure {b_tree}, but the loop "
                            f"value has structure {tree}")
    g_b = _fix_carry(g_b, avals, "dp.while_loop")
    res = _bind(while_p, leaves + cap_c + cap_b, cond_body=Closed(g_c), body=Closed(g_b),
                n_carry=len(leaves), n_cc=len(cap_c))
    return unflatten(tree, res)


def _single(tree):
    return TreeDef("tuple", (), (tree,))


def _bounded_while(cond_fn, body_fn, init_val, max_steps):
    # A branch, not a mask: after cond_fn turns false the body is not evaluated at all
    # (np.where(keep, body(v), v) would still run it, and a body undefined there, such
    # as sqrt of a now-negative value, leaks NaN into the gradient through where).
    def step(carry, _):
        active, val = carry
        keep = np.logical_and(active, cond_fn(val))
        new = cond_(keep, body_fn, lambda v: v, val)
        return (keep, new), None
    (_, val), _ = scan_(step, (np.array(True), init_val), None, length=max_steps,
                        checkpoint=True)
    return val
