"""scipy.special on traced values.

Its ufuncs (erf, gammaln, xlogy, ...) need nothing here beyond their bindings: they reach
the entries of :mod:`diffprog.primitives.special` through the NumPy protocol. Its Python
functions are diverted to the implementations below, which follow SciPy's own algorithms
(same shifts, same treatment of infinities, zero weights and signs) so that values agree
to rounding, and whose derivatives are exact everywhere logsumexp is smooth (a shift is
a constant for the derivative, so ties between maxima do not matter).
"""
from __future__ import annotations

import numpy as np

from .. import numpy_api as npa
from ..primitives import special as entries
from . import divert, floating_operand

_NUMBER = "uses diffprog's implementation"


def _axes(axis, ndim):
    return tuple(range(ndim)) if axis is None else npa._axes(axis, ndim)


def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False):
    """scipy.special.logsumexp: SciPy's algorithm (shift by the maximum, the maxima kept
    out of the sum, ``log1p`` of the rest), the maxima's terms written ``expm1(a - max)``
    (0 in value, 1 in derivative) so that gradients are exact at ties too."""
    a = floating_operand(a)
    if b is not None:
        b = floating_operand(b)
        dtype = np.result_type(npa.dtype_of(a), npa.dtype_of(b))
        a, b = npa.broadcast_arrays(npa.astype(a, dtype), npa.astype(b, dtype))
    a = npa.atleast_1d(a)
    b = npa.atleast_1d(b) if b is not None else None
    axes = _axes(axis, npa.ndim(a))
    if np.prod(npa.shape(a), dtype=np.int64) == 0:
        shape = tuple(1 if i in axes else d for i, d in enumerate(npa.shape(a)))
        out = np.full(shape, -np.inf, npa.dtype_of(a))
        sgn = np.sign(out)
    else:
        out, sgn = _shifted(a, b, axes, return_sign)
        finite = np.isfinite(out)
        # SciPy's direct formula where the shifted one is not finite; computed on 0 where
        # it is not used, so that exp(a) overflowing there cannot reach the derivatives
        a_direct = np.where(finite, 0.0, a)
        b_exp_a = np.exp(a_direct) if b is None else b * np.exp(a_direct)
        total = np.sum(b_exp_a, axis=axes, keepdims=True)
        sgn_inf = np.sign(total) if return_sign else None
        out_inf = np.log(np.abs(total) if return_sign else total)
        out = np.where(finite, out, out_inf)
        sgn = np.where(finite, sgn, sgn_inf) if return_sign else sgn
    if not keepdims:
        out = npa.squeeze(out, axis=axes)
        sgn = npa.squeeze(sgn, axis=axes) if sgn is not None else sgn
    return (out, sgn) if return_sign else out


def _shifted(a, b, axes, return_sign):
    """SciPy's ``_logsumexp`` (real floats): ``log1p(s) + log(m) + max``."""
    if b is not None:
        a = np.where(b == 0, -np.inf, a)  # a zero weight adds nothing, even to an infinite a
    a_max = np.max(a, axis=axes, keepdims=True)
    at_max = a == a_max
    shift = npa.stop_gradient(np.where(np.isfinite(a_max), a_max, 0.0))
    weight = np.ones((), npa.dtype_of(a)) if b is None else b
    m = np.sum(np.where(at_max, weight, 0.0), axis=axes, keepdims=True)
    z = np.where(at_max, 0.0, a - shift)
    terms = np.where(at_max, np.expm1(a - shift), np.exp(z))
    s = np.sum(terms if b is None else b * terms, axis=axes, keepdims=True)
    s = s / np.where(m == 0, 1.0, m)  # SciPy: s / m where s != 0 (m == 0 ends non-finite)
    sgn = np.sign(s + 1) * np.sign(m)
    s = np.where(s < -1, -s - 2, s)
    out = np.log1p(s) + np.log(np.abs(m)) + np.where(np.isfinite(a_max), shift, a_max)
    if not return_sign:
        out = np.where(sgn < 0, np.nan, out)
    return out, sgn


def softmax(x, axis=None):
    """scipy.special.softmax: exp(x - max) / sum (the shift a constant)."""
    x = floating_operand(x)
    shifted = x - npa.stop_gradient(np.max(x, axis=axis, keepdims=True))
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis=None):
    """scipy.special.log_softmax: x - max - log(sum(exp(x - max))), a non-finite maximum
    replaced by 0 as SciPy does."""
    x = floating_operand(x)
    x_max = np.max(x, axis=axis, keepdims=True)
    tmp = x - npa.stop_gradient(np.where(np.isfinite(x_max), x_max, 0.0))
    return tmp - np.log(np.sum(np.exp(tmp), axis=axis, keepdims=True))


def polygamma(n, x):
    """scipy.special.polygamma(n, x): the polygamma entry (n an integer, not differentiated)."""
    return entries.polygamma(n, x)


def multigammaln(a, d):
    """scipy.special.multigammaln: log of the multivariate gamma function of dimension d."""
    d = int(d)
    j = np.arange(1, d + 1, dtype=np.float64)
    a = floating_operand(a)
    terms = entries.gammaln(np.expand_dims(a, -1) + (1.0 - j) / 2.0)
    return d * (d - 1) / 4.0 * np.log(np.pi) + np.sum(terms, axis=-1)


def install(module) -> None:
    entries.bind_scipy_ufuncs()
    for name, replacement in (("logsumexp", logsumexp), ("softmax", softmax),
                              ("log_softmax", log_softmax), ("polygamma", polygamma),
                              ("multigammaln", multigammaln)):
        fn = getattr(module, name, None)
        if fn is not None:
            divert(fn, replacement, f"scipy.special.{name}", _NUMBER)
