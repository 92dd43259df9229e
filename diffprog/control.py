"""Structured control flow that stays inside one program: cond, scan, fori_loop,
while_loop, checkpoint (the user-facing functions; their primitives, with the derivative
rules, are in :mod:`diffprog.primitives.control`).

Python ``if``/``for`` on traced values work too (see :mod:`diffprog.guards`) but they
specialise the program to one path: a loop of N steps is unrolled into N copies of its
body, and every new branch outcome costs a retrace. The functions here record *one*
equation holding the traced body as a sub-graph (a
:class:`~diffprog.transforms.closed.Closed`), which the engine compiles with the program;
derivatives of any order work and stay structured.

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
from typing import Callable

import numpy as np

from . import externals
from .errors import ArgumentError, ShapeError
from .ir import Aval, Graph, aval_of
from .primitives import control as entries  # the control-flow entries of the table
from .primitives.control import bind_all, strong
from .tracing import Tracer, call_user, eval_graph, new_trace, trace_stack, tracing_active
from .transforms.closed import Closed, close
from .transforms.simplify import simplify
from .tree import LEAF, TreeDef, flatten, unflatten


def _avals(values) -> list:
    return [strong(v.aval) if isinstance(v, Tracer) else aval_of(_as_leaf(v)) for v in values]


def _eager_predicate(value):
    if np.shape(value) != ():
        raise ShapeError(f"dp.while_loop: cond_fn must return a scalar, got shape "
                         f"{np.shape(value)}. Fix: reduce it (np.any / np.all).")
    return value


def _same_carry(new, old) -> None:
    """A while_loop body run as Python keeps its carry's structure, shapes and dtypes, as
    the traced loop requires (the same code must not pass here and fail under dp.grad)."""
    new_leaves, new_tree = flatten(new)
    old_leaves, old_tree = flatten(old)
    if new_tree != old_tree:
        raise ArgumentError(f"dp.while_loop: body_fn returned structure {new_tree}, the carry "
                            f"has {old_tree}. Fix: return the carry's structure.")
    for n, o in zip(new_leaves, old_leaves):
        if np.shape(n) != np.shape(o):
            raise ShapeError(f"dp.while_loop: body_fn changed a carry's shape from "
                             f"{np.shape(o)} to {np.shape(n)}. Fix: the loop carry must keep "
                             f"its shape from step to step.")
        old_dtype, new_dtype = np.result_type(o), np.result_type(n)
        if new_dtype != old_dtype and not np.can_cast(new_dtype, old_dtype, "same_kind"):
            raise ArgumentError(f"dp.while_loop: body_fn changed a carry's dtype from "
                                f"{old_dtype} to {new_dtype}. Fix: keep its dtype "
                                f"(.astype({old_dtype.name})).")


def _callable(fn, where: str) -> None:
    """Refuse a body that is not a function (dp.scan(3, ...) failed deep inside)."""
    if not callable(fn):
        raise ArgumentError(f"{where} must be a function, got {type(fn).__name__} {fn!r}. "
                            f"Fix: pass the function itself (a def or a lambda).")


def trace_user(fn: Callable, in_tree, in_avals: list, what: str):
    """Trace a user body on abstract inputs shaped ``in_avals`` (pytree ``in_tree``).

    Returns ``(graph, out_tree, captured outer tracers)``; the graph's inputs are the
    flat arguments followed by the captured values. ``what`` names the body in errors.
    """
    with new_trace(concrete=False) as trace:
        trace.purpose = what  # named by errors on bool()/int() in the body (diffprog.guards)
        trace.owns_inputs = True  # (carry += x changes the loop's value, not the caller's)
        args = [trace.new_input(a) for a in in_avals]
        fn = externals.for_nested_call(fn, trace_stack())  # what it reads: the root call's
        with externals.draws_refused_in(what):  # one draw would serve every step
            out = call_user(fn, *unflatten(in_tree, args))
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


def scan(f: Callable, init, xs=None, length: int | None = None, reverse: bool = False,
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
    _callable(f, "dp.scan: f")
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
    outs = bind_all(entries.scan, c_leaves + x_leaves + captured, body=Closed(graph), n_carry=n_carry,
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
    _callable(body_fn, "dp.fori_loop: body_fn")
    lower, upper = int(lower), int(upper)
    idx = np.arange(lower, max(lower, upper))
    carry, _ = scan(lambda c, i: (body_fn(i, c), None), init_val, idx, checkpoint=checkpoint)
    return carry


# ================================================================================ cond

def cond(pred, true_fn: Callable, false_fn: Callable, *operands):
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
    _callable(true_fn, "dp.cond: true_fn")
    _callable(false_fn, "dp.cond: false_fn")
    if not isinstance(pred, Tracer):
        if np.shape(pred) != ():  # (the same refusal as for a traced predicate, below)
            raise ShapeError(f"dp.cond: the predicate must be a scalar, got shape "
                             f"{np.shape(pred)}. Fix: reduce it (np.any / np.all), or use "
                             f"np.where for elementwise choices.")
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
    outs_t, outs_f = [strong(o.aval) for o in g_t.outvars], [strong(o.aval) for o in g_f.outvars]
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
    res = bind_all(entries.cond, [pred] + leaves + cap_t + cap_f,
                true_body=unify(g_t, 0, nt), false_body=unify(g_f, nt, nt + len(cap_f)))
    return unflatten(t_tree, res)


# =============================================================================== error_if

def error_if(x, pred, message: str, *info):
    """``x``, unchanged, after checking at run time that ``pred`` is false; otherwise raise
    :class:`~diffprog.errors.SolverError` with ``message.format(*info)`` (``info``:
    scalar values such as the time a solver stopped at). An identity for derivatives.
    For diffprog's own solvers: the check is compiled into the program, so a failure deep
    inside a loop body raises instead of returning a silently wrong value.
    """
    return entries.error_if.bind(x, pred, *info, message=message)


# =============================================================================== checkpoint

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
    _callable(fn, "dp.checkpoint: fn")
    def wrapped(*args):
        leaves, tree = flatten(tuple(args))
        if not any(isinstance(x, Tracer) for x in leaves) and not tracing_active():
            return fn(*args)
        leaves = [_as_leaf(x) for x in leaves]
        # fn itself (not a lambda of ours around it): trace_user reads what it reads
        # (globals, cells, attributes) at every call, as the root function's own reads
        graph, out_tree, captured = trace_user(fn, tree, _avals(leaves), "a dp.checkpoint block")
        res = bind_all(entries.remat, leaves + captured, body=Closed(graph))
        return unflatten(out_tree, res)
    wrapped.__wrapped__ = fn
    return wrapped


# =============================================================================== while

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
    _callable(cond_fn, "dp.while_loop: cond_fn")
    _callable(body_fn, "dp.while_loop: body_fn")
    if max_steps is not None:
        return _bounded_while(cond_fn, body_fn, init_val, int(max_steps))
    leaves, tree = flatten(init_val)
    leaves = [_as_leaf(x) for x in leaves]
    avals = _avals(leaves)
    if not any(isinstance(x, Tracer) for x in leaves) and not tracing_active():
        val = init_val  # (run as Python, with the checks the traced loop makes)
        while bool(_eager_predicate(cond_fn(val))):
            new = body_fn(val)
            _same_carry(new, val)
            val = new
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
    res = bind_all(entries.while_loop, leaves + cap_c + cap_b, cond_body=Closed(g_c), body=Closed(g_b),
                n_carry=len(leaves), n_cond_consts=len(cap_c))
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
        new = cond(keep, body_fn, lambda v: v, val)
        return (keep, new), None
    (_, val), _ = scan(step, (np.array(True), init_val), None, length=max_steps,
                        checkpoint=True)
    return val
