"""Sparse matrix times dense array: the entry behind scipy.sparse matrices used with traced
values (diffprog/scipy_api/sparse.py is its front end).

``sparse_matmul(data, rows, indices, indptr, x, shape=(m, n), transpose=False)`` is
``S @ x`` for the CSR matrix ``S`` of ``shape`` held by ``data, indices, indptr``
(``S.T @ x`` with ``transpose``), ``x`` a vector or a matrix; ``rows`` is the row of every
stored entry (:func:`rows_of`; the rules read it, so that they are NumPy code on operands
and trace like any other). Differentiable in ``x`` (the cotangent is
``S^T @ g``, the same entry transposed) and in ``data`` (the cotangent of the nonzero at
row i, column j is ``g[i] . x[j]``); the index arrays are constants of the program. It
runs SciPy's (``scipy.sparse``) or, on the CuPy engine, CuPy's (``cupyx.scipy.sparse``)
sparse product; neither is imported before it first runs, and the entry is defined only
where SciPy is importable.
"""
from __future__ import annotations

import threading

import numpy as np

from ..errors import ArgumentError
from ..ir import Aval
from ..tracing import Tracer
from .core import Case, Primitive, Unsupported
from .rules import add_all, in_dtype_of, shape_of
from .special import AVAILABLE

_LOCK = threading.Lock()
_CACHE: list = []  # the last few matrices made from (data, indices, indptr), strong refs
_CACHE_SIZE = 8


def _module(xp):
    if getattr(xp, "__name__", "numpy") == "cupy":
        import cupyx.scipy.sparse as module
    else:
        import scipy.sparse as module
    return module


def _matrix(xp, data, indices, indptr, shape):
    """The CSR matrix of the three arrays, made once per triple of array objects (a
    constant matrix is made once per program, not per call; its arrays are held, so
    their ids stay theirs, and in-place changes of the data are read as they are)."""
    for held, matrix in list(_CACHE):
        if held[0] is data and held[1] is indices and held[2] is indptr and \
                matrix.shape == tuple(shape):
            return matrix
    matrix = _module(xp).csr_matrix((data, indices, indptr), shape=tuple(shape))
    with _LOCK:
        _CACHE.insert(0, ((data, indices, indptr), matrix))
        del _CACHE[_CACHE_SIZE:]
    return matrix


def _impl(xp, data, rows, indices, indptr, x, *, shape, transpose):
    matrix = _matrix(xp, data, indices, indptr, shape)
    return (matrix.T if transpose else matrix) @ x


def _shape(data, rows, indices, indptr, x, *, shape, transpose):
    inner, outer = (shape[0], shape[1]) if transpose else (shape[1], shape[0])
    if x.ndim not in (1, 2) or x.shape[0] != inner:
        raise ArgumentError(f"sparse matrix of shape {tuple(shape)}{'.T' if transpose else ''} "
                            f"times an array of shape {x.shape}: expected ({inner},) or "
                            f"({inner}, k)")
    return Aval((outer,) + tuple(x.shape[1:]), np.result_type(data.dtype, x.dtype))


def rows_of(indptr) -> np.ndarray:
    """The row of every stored entry of a CSR matrix, from its ``indptr``."""
    indptr = np.asarray(indptr)
    return np.repeat(np.arange(len(indptr) - 1, dtype=indptr.dtype), np.diff(indptr))


def _data_cotangent(g, rows, cols, x, transpose):
    """d(S @ x)/d data[p] against g: g[row] . x[col] (rows and columns swapped for S.T)."""
    out_at, in_at = (cols, rows) if transpose else (rows, cols)
    product = g[out_at] * x[in_at]
    return np.sum(product, axis=-1) if len(shape_of(x)) == 2 else product


def _vjp(g, data, rows, indices, indptr, x, *, out, shape, transpose):
    ct_x = sparse_matmul(data, rows, indices, indptr, g, shape=shape, transpose=not transpose) \
        if np.issubdtype(np.result_type(x), np.inexact) else None
    ct_data = _data_cotangent(g, rows, indices, x, transpose) \
        if isinstance(data, Tracer) and np.issubdtype(data.dtype, np.inexact) else None
    return (in_dtype_of(ct_data, data) if ct_data is not None else None, None, None, None,
            in_dtype_of(ct_x, x) if ct_x is not None else None)


def _jvp(ts, data, rows, indices, indptr, x, *, out, shape, transpose):
    t_data, t_x = ts[0], ts[4]
    terms = [None if t_x is None else
             sparse_matmul(data, rows, indices, indptr, t_x, shape=shape, transpose=transpose),
             None if t_data is None else
             sparse_matmul(t_data, rows, indices, indptr, x, shape=shape, transpose=transpose)]
    total = add_all(terms)
    return None if total is None else in_dtype_of(total, out)


def _batch(values, dims, size, *, shape, transpose):
    """Only the dense operand batched: its examples become more columns of one product."""
    from ..transforms.batch import moved, per_example
    if any(d is not None for d in dims[:4]):
        return per_example(sparse_matmul)(values, dims, size, shape=shape, transpose=transpose)
    data, rows, indices, indptr, x = values
    x = moved(x, dims[4], len(shape_of(x)) - 1)  # examples last: (n, [k,] B)
    lead = shape_of(x)[:-1]
    flat = np.reshape(x, (lead[0], -1))
    out = sparse_matmul(data, rows, indices, indptr, flat, shape=shape, transpose=transpose)
    return np.reshape(out, (shape_of(out)[0],) + tuple(lead[1:]) + (size,)), len(lead)


def _example(rng, m=5, n=4, k=None, nnz=9, transpose=False):
    """A CSR matrix with ``nnz`` stored entries at random places (int32 indices), and an
    operand for it (or for its transpose)."""
    flat = np.sort(rng.choice(m * n, size=nnz, replace=False))
    rows, cols = flat // n, flat % n
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m))]).astype(np.int32)
    inner = m if transpose else n
    x = rng.standard_normal((inner,) if k is None else (inner, k))
    return [rng.standard_normal(nnz), rows.astype(np.int32), cols.astype(np.int32), indptr, x]


if AVAILABLE:
    sparse_matmul = Primitive(
        "sparse_matmul", _impl, _shape, vjp=_vjp, jvp=_jvp, batch=_batch,
        julia=Unsupported("sparse_matmul multiplies a scipy.sparse matrix; the julia engine "
                          "has no SparseArrays spelling yet (run on the numpy or cupy engine)"),
        cases=[Case(lambda rng: _example(rng), {"shape": (5, 4), "transpose": False}),
               Case(lambda rng: _example(rng, k=3), {"shape": (5, 4), "transpose": False}),
               Case(lambda rng: _example(rng, m=4, n=5, k=2, transpose=True), {"shape": (4, 5), "transpose": True})])
