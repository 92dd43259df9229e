"""Shapes and indexing: reshape, transpose, broadcast_to, concatenate, pad, basic slicing,
gather and its transpose scatter_add."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ir import Aval
from ..transforms.batch import (broadcast_to_rule, by, concatenate_rule, gather_rule,
                               pad_rule, reshape_rule, scatter_add_rule, slice_rule,
                               transpose_rule)
from .core import Case, Primitive, Unsupported, broadcast_shapes, is_inexact, normal
from .rules import slice_axis, sum_to

# ------------------------------------------------------------------ Julia helpers


def julia_scalar(operand: str, dtype) -> str:
    """A one-element array as a Julia number: NumPy 0-d values are numbers in Julia."""
    if np.issubdtype(np.dtype(dtype), np.floating):
        return f"sum({operand})"  # differentiable (twice) and no scalar GPU indexing
    return f"DiffProg.npscalar({operand})"  # sum would turn Bool/Int32 into Int64


# ------------------------------------------------------------------ shape ops

def _reshape_shape(x, *, shape):
    if int(np.prod(shape, dtype=np.int64)) != x.size:
        raise ShapeError(f"cannot reshape an array of shape {x.shape} (size {x.size}) into "
                         f"shape {shape}. Fix: the new shape must have the same number of elements.")
    return Aval(tuple(shape), x.dtype, x.weak)


def _julia_reshape(eqn, jl):
    out = eqn.outputs[0].aval
    return julia_scalar("{0}", out.dtype) if out.shape == () else "DiffProg.npreshape({0}, {jshape})"


reshape = Primitive(
    "reshape", "xp.reshape({0}, {shape})", _reshape_shape,
    vjp=lambda g, x, *, out, shape: (np.reshape(g, np.shape(x)),),
    jvp=lambda ts, x, *, out, shape: None if ts[0] is None else np.reshape(ts[0], shape),
    julia=_julia_reshape,
    cases=[Case(normal(3, 4), {"shape": (2, 6)}), Case(normal(3, 4), {"shape": (12,)})],
    batch=by(reshape_rule, lambda: reshape), complex=True)

transpose = Primitive(
    "transpose", "xp.transpose({0}, {axes})",
    lambda x, *, axes: Aval(tuple(x.shape[a] for a in axes), x.dtype, x.weak),
    vjp=lambda g, x, *, out, axes: (np.transpose(g, tuple(np.argsort(axes))),),
    jvp=lambda ts, x, *, out, axes: None if ts[0] is None else np.transpose(ts[0], axes),
    julia="permutedims({0}, {jperm})",
    cases=[Case(normal(3, 4), {"axes": (1, 0)}), Case(normal(2, 3, 4), {"axes": (2, 0, 1)})],
    batch=by(transpose_rule, lambda: transpose), complex=True)


def _broadcast_to_shape(x, *, shape):
    if broadcast_shapes(x.shape, shape) != tuple(shape):
        raise ShapeError(f"cannot broadcast an array of shape {x.shape} to shape {shape}")
    return Aval(tuple(shape), x.dtype, x.weak)


broadcast_to = Primitive(
    "broadcast_to", "xp.broadcast_to({0}, {shape})", _broadcast_to_shape,
    vjp=lambda g, x, *, out, shape: (sum_to(g, np.shape(x)),),
    jvp=lambda ts, x, *, out, shape: None if ts[0] is None else np.broadcast_to(ts[0], shape),
    julia="DiffProg.npbroadcast_to({0}, {jshape})",
    cases=[Case(normal(4), {"shape": (3, 4)}), Case(normal(3, 1), {"shape": (2, 3, 4)})],
    batch=by(broadcast_to_rule, lambda: broadcast_to), complex=True)


def _concatenate_shape(*xs, axis):
    base = xs[0].shape
    for x in xs[1:]:
        if len(x.shape) != len(base) or any(a != b for i, (a, b) in enumerate(zip(x.shape, base))
                                            if i != axis):
            raise ShapeError(f"concatenate: all shapes must match except on axis {axis}; got "
                             f"{' and '.join(str(v.shape) for v in xs)}")
    shape = list(base)
    shape[axis] = sum(x.shape[axis] for x in xs)
    return Aval(tuple(shape), np.result_type(*[x.dtype for x in xs]))


def _concatenate_vjp(g, *xs, out, axis):
    cts, start = [], 0
    for x in xs:
        n = np.shape(x)[axis]
        cts.append(slice_axis(g, axis, start, start + n) if is_inexact(np.result_type(x)) else None)
        start += n
    return tuple(cts)


def _concatenate_jvp(ts, *xs, out, axis):
    if all(t is None for t in ts):
        return None
    parts = [t if t is not None else np.zeros(np.shape(x), out.dtype) for t, x in zip(ts, xs)]
    return np.concatenate(parts, axis=axis)


concatenate = Primitive(
    "concatenate", "xp.concatenate(({args},), axis={axis})", _concatenate_shape,
    vjp=_concatenate_vjp, jvp=_concatenate_jvp, julia="cat({args}; dims = {jaxis})",
    cases=[Case(lambda rng: [rng.standard_normal((2, 3)), rng.standard_normal((4, 3))], {"axis": 0}),
           Case(lambda rng: [rng.standard_normal((2, 3)), rng.standard_normal((2, 1))], {"axis": 1})],
    batch=by(concatenate_rule, lambda: concatenate), complex=True)


def _pack_scalars_jvp(ts, *xs, out, dtype):
    if all(t is None for t in ts):
        return None
    return pack_scalars(*[t if t is not None else np.zeros((), dtype) for t in ts], dtype=dtype)


# np.array([s0, s1, ...]) of 0-d values of one dtype: the numpy engine's spelling of what
# np.stack of scalars traces to (a concatenate of reshapes; diffprog.engines.peephole)
pack_scalars = Primitive(
    "pack_scalars", "xp.array([{args}], dtype={dtype})",
    lambda *xs, dtype: Aval((len(xs),), np.dtype(dtype)),
    vjp=lambda g, *xs, out, dtype: tuple(g[i] if is_inexact(np.result_type(x)) else None
                                         for i, x in enumerate(xs)),
    jvp=_pack_scalars_jvp,
    julia=Unsupported("pack_scalars is the numpy engine's own spelling of np.stack of scalars "
                      "(diffprog.engines.peephole); other engines run the concatenate it "
                      "replaces"),
    cases=[Case(lambda rng: [rng.standard_normal(()), rng.standard_normal(()),
                             rng.standard_normal(())], {"dtype": np.dtype(np.float64)},
                complex=False),
           Case(lambda rng: [rng.standard_normal(()) + 1j * rng.standard_normal(()),
                             rng.standard_normal(())], {"dtype": np.dtype(np.complex128)})],
    complex=True)


def _pad_shape(x, *, pad_width, value):
    return Aval(tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, pad_width)), x.dtype)


def _unpad(g, x_shape, pad_width):
    return g[tuple(slice(lo, lo + d) for d, (lo, hi) in zip(x_shape, pad_width))]


pad = Primitive(
    "pad", "xp.pad({0}, {pad_width}, constant_values={value})", _pad_shape,
    vjp=lambda g, x, *, out, pad_width, value: (_unpad(g, np.shape(x), pad_width),),
    jvp=lambda ts, x, *, out, pad_width, value: None if ts[0] is None else
    np.pad(ts[0], pad_width, constant_values=0.0),
    julia="DiffProg.nppad({0}, {jpad_width}, {value})",
    cases=[Case(normal(3, 4), {"pad_width": ((1, 2), (0, 3)), "value": 0.0})],
    batch=by(pad_rule, lambda: pad), complex=True)


# ------------------------------------------------------------------ indexing

class ArraySlot:
    """Placeholder for an index-array operand inside a ``gather``/``scatter_add`` index."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ArraySlot()"

    def __eq__(self, other):
        return isinstance(other, ArraySlot)

    def __hash__(self):
        return 7


def full_index(index, arrays):
    """The NumPy index of a ``gather``/``scatter_add``: ``index`` with each ArraySlot
    replaced by the next of the index-array operands ``arrays``."""
    it = iter(arrays)
    return tuple(next(it) if isinstance(i, ArraySlot) else i for i in index)


def _shape_by_dummy(x: Aval, index):
    dummy = np.broadcast_to(np.zeros((), x.dtype), x.shape)
    try:
        res = dummy[index]
    except IndexError as e:
        raise ShapeError(f"index {index!r} does not fit an array of shape {x.shape}: {e}") from None
    return Aval(tuple(np.shape(res)), x.dtype)


def _julia_slice(eqn, jl):
    """Basic indexing as Julia ranges (never scalar indexing), then the NumPy result shape."""
    x = eqn.inputs[0].aval
    ranges, _, _ = jl.ranges(eqn.params["index"], x.shape)
    if not ranges:
        return "{0}"
    out = eqn.outputs[0].aval
    picked = f"{{0}}[{', '.join(ranges)}]"
    if out.shape == ():
        return julia_scalar(picked, out.dtype)
    return f"DiffProg.npreshape({picked}, {jl.shape(out.shape)})"


def _julia_array_axis(index, ndim):
    """The NumPy axis of the single index array in ``index`` when every other entry is a
    full slice or Ellipsis (``x[idx]``, ``x[:, idx]``, ``x[..., idx]``), else None."""
    slots = [i for i, item in enumerate(index) if isinstance(item, ArraySlot)]
    full = slice(None)
    if len(slots) != 1 or any(not (item == full or item is Ellipsis)
                              for item in index if not isinstance(item, ArraySlot)):
        return None
    k = slots[0]
    if any(item is Ellipsis for item in index[:k]):
        return ndim - (len(index) - k)
    return k


_JULIA_GATHER_FORMS = ("the julia engine spells integer-array indexing with one index array "
                       "and full slices only (x[idx], x[:, idx], x[..., idx])")


def _julia_gather(eqn, jl):
    x = eqn.inputs[0].aval
    axis = _julia_array_axis(eqn.params["index"], len(x.shape))
    if axis is None or len(eqn.inputs) != 2:
        return Unsupported(f"{_JULIA_GATHER_FORMS}; got index {eqn.params['index']!r}")
    return f"DiffProg.nptake({{0}}, {{1}}; dim = {jl.dim(axis, len(x.shape))})"


def _julia_scatter_add(eqn, jl):
    shape = tuple(eqn.params["shape"])
    if len(eqn.inputs) == 1:  # adjoint of basic slicing
        ranges, kept, _ = jl.ranges(eqn.params["index"], shape)
        return (f"DiffProg.npunslice(DiffProg.npreshape({{0}}, {jl.shape(kept)}), "
                f"{jl.tuple(ranges)}, {jl.shape(shape)})")
    axis = _julia_array_axis(eqn.params["index"], len(shape))
    if axis is None or len(eqn.inputs) != 2:
        return Unsupported(f"{_JULIA_GATHER_FORMS}; got index {eqn.params['index']!r}")
    return (f"DiffProg.npscatter_add({{0}}, {{1}}, {shape[axis]}; "
            f"dim = {jl.dim(axis, len(shape))})")


slice_ = Primitive(
    "slice", "{0}[{index}]", lambda x, *, index: _shape_by_dummy(x, index),
    vjp=lambda g, x, *, out, index: (scatter_add(g, shape=np.shape(x), index=index),),
    jvp=lambda ts, x, *, out, index: None if ts[0] is None else ts[0][index],
    julia=_julia_slice,
    cases=[Case(normal(5, 4), {"index": (slice(1, 4, None), 2)}),
           Case(normal(5, 4), {"index": (slice(None, None, -2), None, Ellipsis)})],
    batch=by(slice_rule, lambda: slice_), complex=True)


def _gather_impl(xp, x, *arrays, index):
    return x[full_index(index, arrays)]


def _gather_shape(x, *arrays, index):
    dummies = [np.broadcast_to(np.zeros((), a.dtype), a.shape) for a in arrays]
    return _shape_by_dummy(x, full_index(index, dummies))


gather = Primitive(
    "gather", _gather_impl, _gather_shape,
    vjp=lambda g, x, *arrays, out, index: (scatter_add(g, *arrays, shape=np.shape(x), index=index),)
    + (None,) * len(arrays),
    jvp=lambda ts, x, *arrays, out, index: None if ts[0] is None else gather(ts[0], *arrays, index=index),
    julia=_julia_gather,
    cases=[Case(lambda rng: [rng.standard_normal((5, 4)), np.array([0, 2, 2, 4])],
                {"index": (ArraySlot(), slice(None, None, None))})],
    batch=by(gather_rule, lambda: gather), complex=True)


def _scatter_add_impl(xp, g, *arrays, shape, index):
    out = xp.zeros(shape, dtype=g.dtype)
    full = full_index(index, arrays)
    if arrays:
        # np.add.at accumulates repeated indices (x[[0, 0]] must give 2 * g at 0).
        (xp.add.at if hasattr(xp, "add") and hasattr(xp.add, "at") else xp.add_at)(out, full, g)
    else:
        out[full] = g
    return out


scatter_add = Primitive(
    "scatter_add", _scatter_add_impl,
    lambda g, *arrays, shape, index: Aval(tuple(shape), g.dtype),
    vjp=lambda gg, g, *arrays, out, shape, index: (
        (gather(gg, *arrays, index=index) if arrays else gg[index]),) + (None,) * len(arrays),
    jvp=lambda ts, g, *arrays, out, shape, index: None if ts[0] is None else
    scatter_add(ts[0], *arrays, shape=shape, index=index),
    julia=_julia_scatter_add,
    cases=[Case(lambda rng: [rng.standard_normal((4, 4)), np.array([0, 2, 2, 4])],
                {"index": (ArraySlot(), slice(None, None, None)), "shape": (5, 4)})],
    batch=by(scatter_add_rule, lambda: scatter_add), complex=True)
