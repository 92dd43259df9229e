"""What the entries' rules share: NumPy code that works on traced and plain values alike.

Calls on traced values go through the NumPy protocol to the front end and record
primitives, so these helpers trace into IR like the rules that use them; on plain arrays
they compute directly.
"""
from __future__ import annotations

import numpy as np

from .core import is_inexact


def shape_of(x) -> tuple:
    """The shape of an array, a traced value or a Python number."""
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else tuple(np.shape(x))


def sum_to(g, shape):
    """``g`` summed down to ``shape`` (undoing broadcasting): the VJP of broadcasting."""
    shape = tuple(shape)
    g_shape = shape_of(g)
    if g_shape == shape:
        return g
    lead = len(g_shape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, d in enumerate(shape) if d == 1 and g_shape[i + lead] != 1)
    out = np.sum(g, axis=axes) if axes else g
    return np.reshape(out, shape) if shape_of(out) != shape else out


def swap_last_axes(x):
    """``x`` with its last two axes swapped (the transpose of a stack of matrices)."""
    return np.swapaxes(x, -1, -2)


def slice_axis(x, axis: int, start, stop, step=None):
    """``x[..., start:stop:step, ...]`` on one axis."""
    index = [slice(None)] * len(shape_of(x))
    index[axis] = slice(start, stop, step)
    return x[tuple(index)]


def shift_right(x, axis: int, fill):
    """``x`` shifted by one along ``axis``, ``fill`` first (for exclusive scans)."""
    shape = list(shape_of(x))
    n = shape[axis]
    shape[axis] = 1
    head = np.full(tuple(shape), fill, dtype=x.dtype)
    return np.concatenate([head, slice_axis(x, axis, 0, n - 1)], axis=axis)


def add_all(terms):
    """The sum of tangent terms, skipping symbolic zeros (None); None when all are."""
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def in_dtype_of(x, like):
    """``x`` in ``like``'s float dtype: derivatives keep the primal's dtype (float32
    stays float32). A complex derivative of a real value is its real part: in JAX's
    convention the covector ``dx -> Re(c dx)`` restricted to real ``dx`` is ``Re(c)``
    (a real input promoted to complex gets the real part of the complex cotangent)."""
    dtype = getattr(like, "dtype", None)
    if dtype is not None and hasattr(x, "dtype") and x.dtype != dtype and is_inexact(dtype):
        return as_dtype(x, dtype)
    return x


def as_dtype(x, dtype):
    """``x.astype(dtype)``, taking the real part where a complex value becomes real
    (astype would warn and drop it the same way; saying so keeps the intent visible). A
    Python number (a folded constant cotangent) becomes a NumPy scalar of ``dtype``."""
    dtype = np.dtype(dtype)
    if not hasattr(x, "dtype"):
        x = np.asarray(x)[()]
    if np.dtype(x.dtype).kind == "c" and dtype.kind != "c":
        x = np.real(x)
        if x.dtype == dtype:
            return x
    return x.astype(dtype)


def lower_triangle(x, diagonal: float):
    """``x`` on its lower triangle (of the last two axes), the diagonal scaled by
    ``diagonal``, zeros above."""
    n = shape_of(x)[-1]
    weights = np.tril(np.ones((n, n))) - (1.0 - diagonal) * np.eye(n)
    return x * weights.astype(np.result_type(x))


def symmetric_from_lower(x):
    """The symmetric matrix NumPy's Hermitian routines read from ``x`` (cholesky,
    eigvalsh: the lower triangle): ``tril(x) + tril(x, -1)^T``."""
    return lower_triangle(x, 1.0) + swap_last_axes(lower_triangle(x, 0.0))


def onto_lower(s):
    """The cotangent of ``x`` for a symmetric cotangent-like ``s`` of the matrix
    :func:`symmetric_from_lower` builds: each entry below the diagonal is read twice,
    so it gets ``s + s^T`` there, the diagonal ``s`` once, nothing above."""
    return lower_triangle(s + swap_last_axes(s), 0.5)


def vjp_by_transposing(jvp):
    """A VJP rule from an entry's JVP rule, which is linear in the tangents: the JVP traced
    as a function of the tangents of the floating inputs (inputs and outputs held), then
    transposed by reverse mode. The result is written in primitives like any rule, so it
    is differentiable again. For entries whose cotangent formula is long to derive and
    easy to get wrong (svd, qr, pinv): one formula, checked by the generated tests."""
    def vjp(gs, *xs, out, **params):
        from ..ir import aval_of
        from ..tracing import Tracer, eval_graph, new_trace
        from ..transforms.vjp import vjp_graph
        multiple = isinstance(out, (list, tuple))
        outs = list(out) if multiple else [out]
        gs = list(gs) if multiple else [gs]
        floats = [i for i, x in enumerate(xs) if is_inexact(np.result_type(x))]
        out_avals = [o.aval if isinstance(o, Tracer) else aval_of(o) for o in outs]
        with new_trace(concrete=False) as trace:
            tangents = [None] * len(xs)
            for i in floats:
                x = xs[i]
                aval = x.aval if isinstance(x, Tracer) else aval_of(x)
                tangents[i] = trace.new_input(aval.__class__(aval.shape, aval.dtype))
            res = jvp(tangents, *xs, out=out, **params)
            res = list(res) if multiple else [res]
            # only the results with a cotangent: the others' tangents (eigenvectors' at a
            # repeated eigenvalue: inf) must not meet a zero seed (0 * inf = NaN)
            wanted = [i for i, g in enumerate(gs) if g is not None] or list(range(len(res)))
            res = [res[i] if res[i] is not None else np.zeros(out_avals[i].shape, out_avals[i].dtype)
                   for i in wanted]
            graph = trace.to_graph(res)
        vg = vjp_graph(graph, list(range(len(floats))), seed="input")
        placeholders = [np.zeros(np.shape(xs[i]), np.result_type(xs[i])) for i in floats]
        seeds = [gs[i] if gs[i] is not None else np.zeros(out_avals[i].shape, out_avals[i].dtype)
                 for i in wanted]
        flat = eval_graph(vg, placeholders + [o for o, _ in trace.captured] + seeds)
        grads = flat[len(graph.outvars):]
        cts = [None] * len(xs)
        for i, g in zip(floats, grads):
            cts[i] = in_dtype_of(g, xs[i])
        return tuple(cts)
    return vjp


def batch_stacked(prim_of):
    """dp.vmap's rule for an entry acting on the last two axes of its operands (stacks
    of matrices, as NumPy's linalg functions): the batch is one more stack axis, in front.
    ``prim_of()`` gives the entry (it is made after its rule)."""
    def rule(values, dims, size, **params):
        from ..tracing import bind
        args = [v if d is None else np.moveaxis(v, d, 0) for v, d in zip(values, dims)]
        if any(d is None for d in dims):  # a shared operand: the same for every example
            args = [np.broadcast_to(a, (size,) + tuple(np.shape(a))) if d is None else a
                    for a, d in zip(args, dims)]
        out = bind(prim_of(), *args, **params)
        return out, ([0] * len(out) if isinstance(out, (list, tuple)) else 0)
    return rule
