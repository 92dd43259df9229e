"""scipy.linalg on traced values: sqrtm, solve_triangular, cholesky, cho_factor,
cho_solve, solve_banded, solve, inv, det.

Each reads exactly what SciPy's LAPACK call reads (the triangle named by ``lower``, the
bands of banded storage), so the derivative with respect to the entries SciPy ignores is
zero, as finite differences of SciPy's function say. They are built from the table's
entries (np.linalg.solve, cholesky, slogdet): triangular and banded systems are solved as
dense ones (O(n^3) instead of O(n^2) or O(n); exact, the same to rounding). ``sqrtm`` is a
custom rule: SciPy's Schur method computes the value and its derivative solves the
Sylvester equation ``X Z + Z X = dA`` as one linear system of size n^2 (meant for
matrices up to a few dozen rows).
"""
from __future__ import annotations

import numpy as np

from .. import numpy_api as npa
from ..custom import custom_vjp
from ..errors import ArgumentError, NotDifferentiableError, ShapeError
from . import divert, floating_operand, original

_TRANSPOSED = (1, 2, "T", "C")


def _square(a, what):
    s = npa.shape(a)
    if len(s) < 2 or s[-1] != s[-2]:
        raise ShapeError(f"scipy.linalg.{what}: expected square matrix, got shape {s}")


def _triangle(a, lower: bool):
    return np.tril(a) if lower else np.triu(a)


def _conj(x):
    """The complex conjugate of a complex operand; a real one as it is (no copy)."""
    return np.conj(x) if npa.dtype_of(x).kind == "c" else x


def _adjoint(x):
    """The conjugate transpose of (a stack of) matrices."""
    return _conj(np.swapaxes(x, -1, -2))


def _symmetric_from(a, lower: bool, hermitian: bool = True):
    """The matrix LAPACK reads from one triangle of ``a``: Hermitian (the other triangle
    the conjugate mirror, the diagonal's imaginary part ignored, as ?potrf/?hetrf do) or,
    with ``hermitian=False``, complex symmetric (?sytrf: the plain mirror)."""
    strict = np.tril(a, -1) if lower else np.triu(a, 1)
    if not hermitian or npa.dtype_of(a).kind != "c":
        return _triangle(a, lower) + np.swapaxes(strict, -1, -2)
    n = npa.shape(a)[-1]
    diagonal = np.real(a) * np.eye(n)
    return strict + diagonal + _adjoint(strict)


def solve_triangular(a, b, trans=0, lower=False, unit_diagonal=False, overwrite_b=False,
                     check_finite=True):
    a, b = floating_operand(a), floating_operand(b)
    _square(a, "solve_triangular")
    tri = _triangle(a, lower)
    if unit_diagonal:
        n = npa.shape(a)[-1]
        tri = tri * (1.0 - np.eye(n)) + np.eye(n)
    if trans in (2, "C"):
        tri = _adjoint(tri)
    elif trans in _TRANSPOSED:
        tri = np.swapaxes(tri, -1, -2)
    elif trans not in (0, "N"):
        raise ArgumentError(f"scipy.linalg.solve_triangular: invalid trans {trans!r}")
    return np.linalg.solve(tri, b)


def cholesky(a, lower=False, overwrite_a=False, check_finite=True):
    a = floating_operand(a)
    _square(a, "cholesky")
    factor = np.linalg.cholesky(_symmetric_from(a, lower))  # A = L L^H
    return factor if lower else _adjoint(factor)  # (upper: U = L^H, A = U^H U)


def cho_factor(a, lower=False, overwrite_a=False, check_finite=True):
    """(c, lower): the factor in the triangle SciPy fills (zeros in the other, where
    SciPy leaves unspecified data)."""
    return cholesky(a, lower=lower), lower


def cho_solve(c_and_lower, b, overwrite_b=False, check_finite=True):
    c, lower = c_and_lower
    c, b = floating_operand(c), floating_operand(b)
    tri = _triangle(c, lower)
    factor = tri if lower else _adjoint(tri)  # A = L L^H
    return np.linalg.solve(_adjoint(factor), np.linalg.solve(factor, b))


def solve_banded(l_and_u, ab, b, overwrite_ab=False, overwrite_b=False, check_finite=True):
    """The dense matrix of the banded storage (``a[i, j] = ab[u + i - j, j]``), solved."""
    lower, upper = (int(v) for v in l_and_u)
    ab, b = floating_operand(ab), floating_operand(b)
    rows, n = npa.shape(ab)
    if rows != lower + upper + 1:
        raise ValueError(f"invalid values for the number of lower and upper diagonals: "
                         f"l+u+1 ({lower + upper + 1}) does not equal ab.shape[0] ({rows})")
    i, j = np.indices((n, n))
    band = upper + i - j
    inside = (band >= 0) & (band < rows)
    dense = ab[np.where(inside, band, 0), j] * inside.astype(npa.dtype_of(ab))
    return np.linalg.solve(dense, b)


_SYMMETRIC = ("sym", "symmetric", "her", "hermitian", "pos", "positive definite")
_COMPLEX_SYMMETRIC = ("sym", "symmetric")  # (complex a: a^T = a, not a^H = a)


def solve(a, b, lower=False, overwrite_a=False, overwrite_b=False, check_finite=True,
          assume_a=None, transposed=False):
    a, b = floating_operand(a), floating_operand(b)
    if assume_a in _SYMMETRIC:
        a = _symmetric_from(a, lower, hermitian=assume_a not in _COMPLEX_SYMMETRIC)
    elif assume_a in ("upper triangular", "lower triangular"):
        a = _triangle(a, assume_a.startswith("lower"))
    elif assume_a == "diagonal":
        a = a * np.eye(npa.shape(a)[-1])
    elif assume_a not in (None, "gen", "general"):
        raise ArgumentError(f"scipy.linalg.solve(assume_a={assume_a!r}) on traced values: "
                            f"use 'gen', 'sym', 'pos', 'diagonal' or a triangular kind")
    if transposed:
        a = np.swapaxes(a, -1, -2)
    return np.linalg.solve(a, b)


def inv(a, overwrite_a=False, check_finite=True, *, assume_a=None, lower=False):
    a = floating_operand(a)
    if assume_a in _SYMMETRIC:
        a = _symmetric_from(a, lower, hermitian=assume_a not in _COMPLEX_SYMMETRIC)
    elif assume_a not in (None, "gen", "general"):
        raise ArgumentError(f"scipy.linalg.inv(assume_a={assume_a!r}) on traced values")
    return np.linalg.inv(a)


def det(a, overwrite_a=False, check_finite=True):
    return np.linalg.det(floating_operand(a))


# ---------------------------------------------------------------------- sqrtm

def _kron(a, b):
    n, m = npa.shape(a)[0], npa.shape(b)[0]
    return npa.reshape(np.einsum("ij,kl->ikjl", a, b), (n * m, n * m))


def _sylvester(x, rhs):
    """Z with ``x Z + Z x = rhs`` (row-major vec: (x kron I + I kron x^T) vec Z)."""
    n = npa.shape(x)[0]
    eye = np.eye(n, dtype=npa.dtype_of(x))
    system = _kron(x, eye) + _kron(eye, npa.transpose(x))
    return npa.reshape(np.linalg.solve(system, npa.reshape(rhs, (n * n,))), (n, n))


def _sqrtm_value(a):
    import scipy.linalg
    value = original(scipy.linalg.sqrtm)(np.asarray(a))
    value = value[0] if isinstance(value, tuple) else value
    if np.iscomplexobj(value):
        if np.any(np.imag(value) != 0):
            raise NotDifferentiableError(
                "scipy.linalg.sqrtm of a matrix with negative real eigenvalues is complex; "
                "diffprog differentiates real values only. Fix: a positive definite matrix.")
        value = np.real(value)
    return value.astype(np.result_type(a, np.float32))


@custom_vjp
def _sqrtm(a):
    return _sqrtm_value(a)


@_sqrtm.defvjp
def _sqrtm_vjp(g, a, out):
    # X dX + dX X = dA: the cotangent of A solves X^T Z + Z X^T = G
    return _sylvester(npa.transpose(out), g)


def sqrtm(A, disp=None, blocksize=None):
    a = floating_operand(A)
    if npa.ndim(a) != 2 or npa.shape(a)[0] != npa.shape(a)[1]:
        raise ShapeError(f"scipy.linalg.sqrtm on traced values: a square matrix, got shape "
                         f"{npa.shape(a)}")
    return _sqrtm(a)


_FUNCTIONS = {"sqrtm": ("_matfuncs", sqrtm), "solve_triangular": ("_basic", solve_triangular),
              "cholesky": ("_decomp_cholesky", cholesky),
              "cho_factor": ("_decomp_cholesky", cho_factor),
              "cho_solve": ("_decomp_cholesky", cho_solve),
              "solve_banded": ("_basic", solve_banded), "solve": ("_basic", solve),
              "inv": ("_basic", inv), "det": ("_basic", det)}


def install(module) -> None:
    for name, (_, replacement) in _FUNCTIONS.items():
        fn = getattr(module, name, None)
        if fn is not None and hasattr(getattr(fn, "__func__", fn), "__code__"):
            divert(fn, replacement, f"scipy.linalg.{name}",
                   "composed of diffprog's linear algebra" if name != "sqrtm"
                   else "SciPy's value, derivative from the Sylvester equation")
