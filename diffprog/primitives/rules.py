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
    stays float32)."""
    dtype = getattr(like, "dtype", None)
    if dtype is not None and hasattr(x, "dtype") and x.dtype != dtype and is_inexact(dtype):
        return x.astype(dtype)
    return x


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
