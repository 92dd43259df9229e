"""scipy.sparse matrices with traced dense arrays.

A sparse matrix ``S`` (csr, csc, coo, ... matrix or array classes) used as a constant with a
traced dense ``x``: ``S @ x``, ``x @ S``, ``S.dot(x)``, ``S.multiply(x)`` and, for the
matrix classes, ``S * x`` (a matrix product there; for the sparse array classes ``*`` is
elementwise, as in SciPy) are one ``sparse_matmul`` entry
(diffprog/primitives/sparse.py) or an elementwise product on the stored entries:
differentiable in ``x``, to any order, in every transform. The products run SciPy's
sparse kernels (``cupyx.scipy.sparse`` on the CuPy engine). A CSR matrix is used as it
is (its arrays are the program's constants: changing ``S.data`` in place between calls
is seen); CSC is used as the CSR matrix of its transpose (no copy); other formats are
converted when traced. A matrix read from outside the function (a global, an attribute)
is guarded (diffprog.externals): rebinding it, giving it new arrays (``S.data = ...``,
``S[i, j] = v``) or changing a converted format's entries traces again.

Differentiating with respect to the nonzero values: :func:`with_data` gives the matrix
with traced values in place of ``S.data``,

    A = dp.scipy_api.sparse.with_data(S, weights)   # weights traced, S.nnz of them
    loss = np.sum((A @ x - y) ** 2)                 # d loss / d weights

whose products are the same entry (a :class:`TracedSparse`, with ``.T``, ``@``, ``dot``,
``multiply`` and ``toarray``; other SciPy methods are refused, naming them).

Anything else that meets a traced value (``S + x``, ``np.add(S, x)``, products of two
sparse matrices) is refused with the fix (``S.toarray()``); so is ``np.dot(S, x)``, which
NumPy itself does not compute as a product (see :func:`numpy_call`).
"""
from __future__ import annotations

import numpy as np

from .. import numpy_api as npa
from ..errors import ArgumentError, UnsupportedFunctionError
from ..primitives.sparse import rows_of, sparse_matmul
from . import caller_line, divert, operand

_BASE = None  # scipy.sparse's _spbase, once installed


def is_sparse(x) -> bool:
    return _BASE is not None and isinstance(x, (_BASE, TracedSparse))


class _Csr:
    """A CSR view of a sparse matrix: ``data, rows, indices, indptr`` of the matrix (or of
    its transpose, ``transposed``) and the matrix's ``shape``."""

    __slots__ = ("data", "rows", "indices", "indptr", "csr_shape", "transposed")

    def __init__(self, data, rows, indices, indptr, csr_shape, transposed):
        self.data, self.rows, self.indices, self.indptr = data, rows, indices, indptr
        self.csr_shape, self.transposed = tuple(csr_shape), transposed

    @property
    def shape(self) -> tuple:
        return self.csr_shape[::-1] if self.transposed else self.csr_shape

    def T(self) -> "_Csr":
        return _Csr(self.data, self.rows, self.indices, self.indptr, self.csr_shape,
                    not self.transposed)

    def with_data(self, data) -> "_Csr":
        return _Csr(data, self.rows, self.indices, self.indptr, self.csr_shape, self.transposed)

    def matmul(self, x):
        """``self @ x`` for a vector or matrix ``x``."""
        x = operand(x)
        if npa.ndim(x) not in (1, 2):
            raise ArgumentError(f"a sparse matrix times an array of shape {npa.shape(x)}: "
                                f"diffprog multiplies vectors and matrices")
        return sparse_matmul(self.data, self.rows, self.indices, self.indptr, x,
                             shape=self.csr_shape, transpose=self.transposed)

    def rmatmul(self, x):
        """``x @ self`` = (self.T @ x.T).T."""
        x = operand(x)
        if npa.ndim(x) == 1:
            return self.T().matmul(x)
        return npa.transpose(self.T().matmul(npa.transpose(x)))

    def at_entries(self, x):
        """``x`` (broadcast to the matrix's shape) at the stored entries, in their order."""
        x = operand(x)
        x = npa.broadcast_to(x, self.shape) if npa.ndim(x) else x
        if npa.ndim(x) == 0:
            return x
        rows, cols = (self.indices, self.rows) if self.transposed else (self.rows, self.indices)
        return x[rows, cols]


def _index(a):
    return np.asarray(a, dtype=np.int32 if a.size == 0 or a.max() < 2 ** 31 - 1 else np.int64)


def csr_of(matrix) -> _Csr:
    """The CSR view of a SciPy sparse matrix (or of a TracedSparse)."""
    if isinstance(matrix, TracedSparse):
        return matrix._csr
    if getattr(matrix, "ndim", 2) != 2:
        raise ArgumentError("diffprog multiplies 2-d sparse matrices only")
    fmt = matrix.format
    if fmt in ("csr", "csc"):
        indices, indptr = matrix.indices, matrix.indptr
        shape = matrix.shape if fmt == "csr" else matrix.shape[::-1]
        return _Csr(matrix.data, rows_of(indptr), indices, indptr, shape, fmt == "csc")
    csr = matrix.tocsr()
    return _Csr(csr.data, rows_of(csr.indptr), csr.indices, csr.indptr, csr.shape, False)


class TracedSparse:
    """A sparse matrix whose stored values are traced (see :func:`with_data`)."""

    def __init__(self, csr: _Csr, name: str):
        self._csr = csr
        self._name = name

    shape = property(lambda self: self._csr.shape)
    ndim = 2
    nnz = property(lambda self: int(npa.shape(self._csr.data)[0]))
    dtype = property(lambda self: npa.dtype_of(self._csr.data))
    data = property(lambda self: self._csr.data)

    @property
    def T(self):
        return TracedSparse(self._csr.T(), self._name)

    def transpose(self, axes=None, copy=False):
        return self.T

    def __matmul__(self, other):
        if is_sparse(other):
            raise _refused(f"{self._name} @ a sparse matrix")
        return self._csr.matmul(other)

    def __rmatmul__(self, other):
        return self._csr.rmatmul(other)

    dot = __matmul__

    def multiply(self, other):
        if is_sparse(other):
            raise _refused(f"{self._name}.multiply(a sparse matrix)")
        return TracedSparse(self._csr.with_data(self._csr.data * self._csr.at_entries(other)),
                            self._name)

    def toarray(self, order=None, out=None):
        n = self.shape[1]
        return self._csr.matmul(np.eye(n, dtype=self.dtype))  # (its dtype, as SciPy's)

    todense = toarray

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise _refused(f"{self._name}.{name}")

    def __repr__(self) -> str:
        return f"TracedSparse(shape={self.shape}, nnz={self.nnz})"


def with_data(matrix, data) -> TracedSparse:
    """``matrix`` (a SciPy sparse matrix) with ``data`` (traced, one value per stored
    entry, in ``matrix.data``'s order) as its values: products with it are differentiable
    in ``data``. COO matrices keep their entries (duplicates are summed by products, as
    SciPy does)."""
    if not is_sparse(matrix):
        raise ArgumentError(f"with_data: expected a scipy.sparse matrix, got {type(matrix).__name__}")
    n = int(matrix.nnz)
    if npa.shape(data) != (n,):
        raise ArgumentError(f"with_data: the matrix stores {n} values; data has shape "
                            f"{npa.shape(data)} (expected ({n},))")
    fmt = matrix.format
    if fmt in ("csr", "csc"):
        return TracedSparse(csr_of(matrix).with_data(data), f"scipy.sparse {fmt} matrix")
    if fmt != "coo":
        matrix = matrix.tocoo()
        if int(matrix.nnz) != n:
            raise ArgumentError(f"with_data: a {fmt} matrix's stored values are not in one "
                                f"order with its COO form; convert it first (tocsr())")
    row, col = np.asarray(matrix.coords[0]), np.asarray(matrix.coords[1])
    order = np.lexsort((col, row))  # CSR order, duplicates kept
    m = matrix.shape[0]
    indptr = _index(np.concatenate([[0], np.cumsum(np.bincount(row, minlength=m))]))
    csr = _Csr(data[order], rows_of(indptr), _index(col[order]), indptr, matrix.shape, False)
    return TracedSparse(csr, "scipy.sparse coo matrix")


def _refused(what: str) -> UnsupportedFunctionError:
    return UnsupportedFunctionError(
        f"{what} with traced values is not supported by diffprog (called at {caller_line()}). "
        f"Sparse matrices are differentiable as factors of products with dense arrays (@, "
        f"dot, np.dot, np.matmul, multiply; with_data for traced values).\nFix: use "
        f"S.toarray() (a dense constant) for other operations.")


# ---------------------------------------------------------------------- SciPy's methods

def _matmul(self, other):
    if is_sparse(other):
        raise _refused("a product of two sparse matrices")
    return csr_of(self).matmul(other)


def _rmatmul(self, other):
    return csr_of(self).rmatmul(other)


def _multiply(self, other):
    if is_sparse(other):
        raise _refused("the elementwise product of two sparse matrices")
    csr = csr_of(self)
    return TracedSparse(csr.with_data(csr.data * csr.at_entries(other)),
                        f"scipy.sparse {self.format} matrix")


def _spmatrix_mul(self, other):
    """``*`` of the sparse *matrix* classes: a matrix product (elementwise by scalars)."""
    if npa.ndim(other) == 0:
        return _multiply(self, other)
    return _matmul(self, other)


def _spmatrix_rmul(self, other):
    return _multiply(self, other) if npa.ndim(other) == 0 else _rmatmul(self, other)


def _sparray_mul(self, other):
    """``*`` of the sparse *array* classes: elementwise, as for NumPy arrays."""
    return _multiply(self, other)


def _dot(self, other):
    if npa.ndim(other) == 0:
        return _multiply(self, other)
    return _matmul(self, other)


# ---------------------------------------------------------------------- NumPy's functions

def numpy_call(func, args, kwargs):
    """A NumPy function or ufunc called with a sparse matrix and a traced value (the front
    end's foreign-operand hook); NotImplemented when no operand is sparse.

    A traced ``x`` reaches NumPy's ufuncs through its operators: ``x @ S`` is
    ``np.matmul(x, S)`` and ``x * S`` is ``np.multiply(x, S)`` here, where plain NumPy
    would have handed the operator to SciPy (``S.__rmatmul__``, ``S.__rmul__``): they get
    SciPy's meaning (``*`` a matrix product for the sparse matrix classes, elementwise for
    the sparse array classes). ``np.dot(S, x)`` is refused: NumPy does not multiply SciPy's
    matrices (it returns an array of objects), so no traced result could match it."""
    if not any(is_sparse(a) for a in args):
        return NotImplemented
    if kwargs.get("out") is not None:
        raise ArgumentError("out= with a sparse operand cannot be traced")
    name = getattr(func, "__name__", str(func))
    if name in ("matmul", "multiply") and len(args) == 2:
        a, b = args
        if is_sparse(a) and is_sparse(b):
            raise _refused(f"np.{name} of two sparse matrices")
        if name == "matmul":
            return _matmul(a, b) if is_sparse(a) else _rmatmul(b, a)
        sparse, dense = (a, b) if is_sparse(a) else (b, a)
        if isinstance(sparse, TracedSparse):
            return sparse.multiply(dense)
        if sparse.__class__.__mul__ is _BASE.__mul__:  # a sparse array: elementwise
            return _multiply(sparse, dense)
        return _spmatrix_mul(sparse, dense) if sparse is a else _spmatrix_rmul(sparse, dense)
    if name == "dot":
        raise UnsupportedFunctionError(
            f"np.dot with a scipy.sparse matrix (called at {caller_line()}): NumPy does not "
            f"multiply SciPy's sparse matrices (without tracing it returns an array of "
            f"objects).\nFix: write S @ x or S.dot(x).")
    raise _refused(f"np.{name} with a scipy.sparse operand")


def install(module) -> None:
    global _BASE
    from scipy.sparse import _base, _coo, _matrix

    from .. import numpy_api
    _BASE = _base._spbase
    base = _base._spbase
    divert(base.__matmul__, _matmul, "scipy.sparse matrix @ x",
           "sparse_matmul entry (SciPy's kernels)")
    divert(base.__rmatmul__, _rmatmul, "x @ scipy.sparse matrix",
           "sparse_matmul entry (SciPy's kernels)")
    divert(base.dot, _dot, "scipy.sparse matrix .dot", "sparse_matmul entry")
    divert(_coo._coo_base.dot, _dot, "scipy.sparse coo matrix .dot", "sparse_matmul entry")
    divert(base.multiply, _multiply, "scipy.sparse matrix .multiply",
           "the stored entries times x at their places")
    divert(base.__mul__, _sparray_mul, "scipy.sparse array * x", "elementwise")
    divert(base.__rmul__, _sparray_mul, "x * scipy.sparse array", "elementwise")
    divert(_matrix.spmatrix.__mul__, _spmatrix_mul, "scipy.sparse matrix * x",
           "a matrix product (spmatrix)")
    divert(_matrix.spmatrix.__rmul__, _spmatrix_rmul, "x * scipy.sparse matrix",
           "a matrix product (spmatrix)")
    if numpy_call not in numpy_api.FOREIGN_OPERANDS:
        numpy_api.FOREIGN_OPERANDS.append(numpy_call)
