"""Reductions and scans along axes: sum, prod, max, min, argmax/argmin/argsort,
cumsum, cumprod."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ir import Aval
from ..transforms.batch import along_axis, by, reduce_axes
from .core import PRIMITIVES, Case, Primitive, Unsupported, dtype_by_example, normal, positive
from .rules import in_dtype_of, shift_right


def _reduction_shape(name, integer_result=False):
    def rule(x, *, axes, keepdims):
        shape = tuple((1 if i in axes else d) for i, d in enumerate(x.shape)
                      if keepdims or i not in axes)
        if integer_result:
            return Aval(shape, np.dtype(np.intp))
        dtype = dtype_by_example(PRIMITIVES[name], ((x.dtype, False),),
                                 (("axes", ()), ("keepdims", False)))
        return Aval(shape, np.dtype(dtype))
    return rule


def _kept(g, x_shape, axes, keepdims):
    """A reduced value reshaped to broadcast against the input (the reduced axes as 1)."""
    if keepdims:
        return g
    return np.reshape(g, tuple(1 if i in axes else d for i, d in enumerate(x_shape)))


def _sum_vjp(g, x, *, out, axes, keepdims):
    return (np.broadcast_to(_kept(g, np.shape(x), axes, keepdims), np.shape(x)),)


def _reduction_cases(order=2):
    return [Case(normal(3, 4), {"axes": (1,), "keepdims": False}, order=order),
            Case(normal(3, 4), {"axes": (0, 1), "keepdims": False}, order=order),
            Case(normal(2, 3, 4), {"axes": (0, 2), "keepdims": True}, order=order)]


reduce_sum = Primitive(
    "reduce_sum", "xp.sum({0}, axis={axes}, keepdims={keepdims})", _reduction_shape("reduce_sum"),
    vjp=_sum_vjp,
    jvp=lambda ts, x, *, out, axes, keepdims: None if ts[0] is None else
    np.sum(ts[0], axis=axes, keepdims=keepdims),
    julia="DiffProg.npsum({0}; dims = {jaxes}, keepdims = {keepdims})", cases=_reduction_cases(),
    batch=by(reduce_axes, lambda: reduce_sum), complex=True)


# max and min share the cotangent between tied elements (the central difference of NumPy's
# function there), as maximum/minimum split it between tied operands; on complex values
# NumPy's order is lexicographic and the rule follows the element it picks
def _extremum_vjp(g, x, *, out, axes, keepdims):
    shape = np.shape(x)
    y = _kept(out, shape, axes, keepdims)
    mask = 1.0 * (x == y)
    count = np.sum(mask, axis=axes, keepdims=True)
    return (in_dtype_of(mask * (_kept(g, shape, axes, keepdims) / count), x),)


def _extremum_jvp(ts, x, *, out, axes, keepdims):
    if ts[0] is None:
        return None
    y = _kept(out, np.shape(x), axes, keepdims)
    mask = 1.0 * (x == y)
    picked = np.sum(ts[0] * mask, axis=axes, keepdims=keepdims)
    return in_dtype_of(picked / np.sum(mask, axis=axes, keepdims=keepdims), x)


def _real_order_julia(template: str):
    """A Julia spelling for real operands only: Julia's max/min have no methods for
    complex numbers (NumPy orders them lexicographically)."""
    def spell(eqn, jl):
        if any(np.dtype(a.aval.dtype).kind == "c" for a in eqn.inputs if hasattr(a, "aval")):
            return Unsupported("Julia's maximum/minimum do not order complex numbers (NumPy "
                               "orders them lexicographically); run it on engine='numpy'")
        return template
    return spell


reduce_max = Primitive(
    "reduce_max", "xp.max({0}, axis={axes}, keepdims={keepdims})", _reduction_shape("reduce_max"),
    vjp=_extremum_vjp, jvp=_extremum_jvp,
    julia=_real_order_julia("DiffProg.npmax({0}; dims = {jaxes}, keepdims = {keepdims})"),
    cases=_reduction_cases(order=1), batch=by(reduce_axes, lambda: reduce_max), complex=True)
reduce_min = Primitive(
    "reduce_min", "xp.min({0}, axis={axes}, keepdims={keepdims})", _reduction_shape("reduce_min"),
    vjp=_extremum_vjp, jvp=_extremum_jvp,
    julia=_real_order_julia("DiffProg.npmin({0}; dims = {jaxes}, keepdims = {keepdims})"),
    cases=_reduction_cases(order=1), batch=by(reduce_axes, lambda: reduce_min), complex=True)


def _exclusive_cumprod(x, axis, reverse):
    """Product of the elements strictly before (or after) each position: exact at zeros."""
    if reverse:
        x = np.flip(x, axis)
    res = np.cumprod(shift_right(x, axis, fill=1.0), axis=axis)
    return np.flip(res, axis) if reverse else res


def _product_of_others(x, axes):
    """d prod / d x_i = the product of all other elements, exact even with zeros."""
    shape = np.shape(x)
    if 0 in shape:  # an empty product: no element, nothing to differentiate
        return np.zeros(shape, np.result_type(x))
    last = tuple(range(len(shape) - len(axes), len(shape)))
    moved = np.moveaxis(x, axes, last)
    flat = np.reshape(moved, moved.shape[:len(shape) - len(axes)] + (-1,))
    others = _exclusive_cumprod(flat, -1, False) * _exclusive_cumprod(flat, -1, True)
    return np.moveaxis(np.reshape(others, moved.shape), last, axes)


reduce_prod = Primitive(
    "reduce_prod", "xp.prod({0}, axis={axes}, keepdims={keepdims})", _reduction_shape("reduce_prod"),
    vjp=lambda g, x, *, out, axes, keepdims: (
        in_dtype_of(_kept(g, np.shape(x), axes, keepdims) * _product_of_others(x, axes), x),),
    jvp=lambda ts, x, *, out, axes, keepdims: None if ts[0] is None else in_dtype_of(
        np.sum(ts[0] * _product_of_others(x, axes), axis=axes, keepdims=keepdims), x),
    julia="DiffProg.npprod({0}; dims = {jaxes}, keepdims = {keepdims})",
    # exact with zeros, to any order (products of others via cumprod, itself exact there)
    cases=_reduction_cases() + [Case(lambda rng: [np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])],
                                     {"axes": (1,), "keepdims": False})],
    batch=by(reduce_axes, lambda: reduce_prod), complex=True)


def _indices_along(name, shape, julia):
    """An integer result along one ``axis`` (argmax, argmin, argsort): no derivative."""
    return Primitive(
        name, f"xp.{name}({{0}}, axis={{axis}})", shape,
        vjp=lambda g, x, *, out, axis: (None,), jvp=lambda ts, x, *, out, axis: None,
        julia=julia, differentiable=False, cases=[Case(normal(3, 4), {"axis": 1})],
        batch=by(along_axis, lambda: PRIMITIVES[name]))


def _axis_removed(x, *, axis):
    return Aval(tuple(d for i, d in enumerate(x.shape) if i != axis), np.dtype(np.intp))


def _same_shape_indices(x, *, axis):
    return Aval(x.shape, np.dtype(np.intp))


argmax = _indices_along("argmax", _axis_removed, "DiffProg.npargmax({0}; dim = {jaxis})")
argmin = _indices_along("argmin", _axis_removed, "DiffProg.npargmin({0}; dim = {jaxis})")
argsort = _indices_along("argsort", _same_shape_indices, "DiffProg.npargsort({0}; dim = {jaxis})")


def _reversed_cumsum(g, axis):
    return np.flip(np.cumsum(np.flip(g, axis), axis=axis), axis)


cumsum = Primitive(
    "cumsum", "xp.cumsum({0}, axis={axis})", lambda x, *, axis: Aval(x.shape, x.dtype),
    vjp=lambda g, x, *, out, axis: (_reversed_cumsum(g, axis),),
    jvp=lambda ts, x, *, out, axis: None if ts[0] is None else np.cumsum(ts[0], axis=axis),
    julia="cumsum({0}; dims = {jaxis})",
    cases=[Case(normal(3, 4), {"axis": 1}), Case(normal(3, 4), {"axis": 0})],
    batch=by(along_axis, lambda: cumsum), complex=True)


class _ZerosAlong:
    """Where the zeros of x are along ``axis``, for cumprod's derivatives.

    ``y_k = x_0 ... x_k``. The usual rule divides by x_i, which breaks at zeros. Here
    dividing is used at nonzero x_i only (exact there, derivatives included); the first
    and second zero of a slice use partial products that read that zero as 1
    (``skip[0]``, ``skip[1]``); at later zeros every term holds two other zeros, so the
    derivative is 0 and stays 0 under one more differentiation. Hence first and second
    derivatives are exact at any zeros; third and higher ones at slices with >= 3 zeros
    would miss terms (the second-order table cases check up to three zeros).
    """

    def __init__(self, x, axis):
        one, nil = np.ones_like(x), np.zeros_like(x)
        self.zero = x == 0
        self.count = np.cumsum(np.where(self.zero, one, nil), axis=axis)  # zeros up to k
        self.nth = [self.zero & (self.count == n) for n in (1, 2)]
        self.safe = np.where(self.zero, one, x)
        self.skip = [np.cumprod(np.where(nth, one, x), axis=axis) for nth in self.nth]


def _cumprod_vjp(g, x, *, out, axis):
    z, nil = _ZerosAlong(x, axis), np.zeros_like(x)
    grad = np.where(z.zero, nil, _reversed_cumsum(g * out, axis) / z.safe)
    for nth, skip in zip(z.nth, z.skip):
        grad = grad + np.where(nth, _reversed_cumsum(g * skip, axis), nil)
    return (grad,)


def _cumprod_jvp(ts, x, *, out, axis):
    if ts[0] is None:
        return None
    t, z = ts[0], _ZerosAlong(x, axis)
    nil = np.zeros_like(out)
    # terms j of d y_k = sum_j t_j prod_{i<=k, i!=j} x_i, with nonzero x_j: by division
    tan = np.where(z.count <= 1, out * np.cumsum(np.where(z.zero, nil, t) / z.safe, axis=axis), nil)
    for n, (nth, skip) in enumerate(zip(z.nth, z.skip), start=1):  # j = the n-th zero
        t_nth = np.cumsum(np.where(nth, t, nil), axis=axis)
        tan = tan + np.where((z.count >= n) & (z.count <= 2), t_nth * skip, nil)
    return tan


# exact at zeros too (no division by a zero; see _ZerosAlong), to any order
cumprod = Primitive(
    "cumprod", "xp.cumprod({0}, axis={axis})", lambda x, *, axis: Aval(x.shape, x.dtype),
    vjp=_cumprod_vjp, jvp=_cumprod_jvp,
    julia="DiffProg.npcumprod({0}; dims = {jaxis})",
    cases=[Case(positive(3, 4), {"axis": 1}), Case(positive(3, 4), {"axis": 0}),
           Case(lambda rng: [np.array([[1.5, 0.0, 2.0, -3.0], [0.0, 0.0, 3.0, 1.0],
                                       [2.0, -1.0, 0.5, 0.0], [0.0, 2.0, 0.0, 0.0]])], {"axis": 1}),
           Case(lambda rng: [np.array([[0.0, 2.0], [3.0, 0.0], [0.5, 4.0]])], {"axis": 0})],
    batch=by(along_axis, lambda: cumprod), complex=True)


def _argpartition_impl(xp, x, *, kth, axis):
    """NumPy's argpartition (introselect's arrangement); other array libraries compute it
    on the host, so that np.partition gives NumPy's values on every engine."""
    if xp is np:
        return np.argpartition(x, kth, axis=axis)
    return xp.asarray(np.argpartition(xp.asnumpy(x), kth, axis=axis))


def _argpartition_batch(values, dims, size, *, kth, axis):
    from ..tracing import bind
    return bind(argpartition, np.moveaxis(values[0], dims[0], 0), kth=kth, axis=axis + 1), 0


# np.argpartition (and np.partition = take_along_axis of it): the indices have no
# derivative; the values gathered with them do (np.partition's gradient flows back to where
# each value came from). kth: a tuple of ints.
argpartition = Primitive(
    "argpartition", _argpartition_impl, lambda x, *, kth, axis: Aval(x.shape, np.dtype(np.intp)),
    vjp=lambda g, x, *, out, kth, axis: (None,), jvp=lambda ts, x, *, out, kth, axis: None,
    batch=_argpartition_batch, differentiable=False,
    julia=Unsupported("np.argpartition arranges the elements around kth as NumPy's "
                      "introselect does; no Julia function reproduces that arrangement"),
    cases=[Case(normal(3, 5), {"kth": (2,), "axis": 1}), Case(normal(4, 3), {"kth": (0, 3), "axis": 0})])


def _searchsorted_shape(a, v, *, side):
    if a.ndim != 1:
        raise ShapeError(f"searchsorted: the sorted array must be 1-d, got shape {a.shape}")
    return Aval(v.shape, np.dtype(np.intp))


def _searchsorted_batch(values, dims, size, *, side):
    from ..tracing import bind
    (a, v), (da, dv) = values, dims
    if da is None:
        return bind(searchsorted, a, v, side=side), dv
    a = np.moveaxis(a, da, 0)
    v = np.broadcast_to(v, (size,) + tuple(np.shape(v))) if dv is None else np.moveaxis(v, dv, 0)
    return np.stack([bind(searchsorted, a[b], v[b], side=side) for b in range(size)]), 0


# np.searchsorted(a, v, side): where v would be inserted into the sorted a; no derivative
# (an integer), but what is gathered with it has one (np.interp)
searchsorted = Primitive(
    "searchsorted", "xp.searchsorted({0}, {1}, side={side})", _searchsorted_shape,
    vjp=lambda g, a, v, *, out, side: (None, None), jvp=lambda ts, a, v, *, out, side: None,
    batch=_searchsorted_batch, differentiable=False,
    numpy={np.searchsorted: lambda a, v, side="left", sorter=None: _searchsorted_call(a, v, side, sorter)},
    julia=lambda eqn, jl: ("searchsortedlast.(Ref({0}), {1})" if eqn.params["side"] == "right"
                           else "searchsortedfirst.(Ref({0}), {1}) .- 1"),
    cases=[Case(lambda rng: [np.sort(rng.standard_normal(6)), rng.standard_normal((3, 4))],
                {"side": "left"}),
           Case(lambda rng: [np.array([0.0, 1.0, 1.0, 2.0]), np.array([1.0, -1.0, 0.5, 2.0, 3.0])],
                {"side": "right"})])


def _searchsorted_call(a, v, side, sorter):
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if sorter is not None:
        a = a[sorter]
    return searchsorted(a, v, side=side)
