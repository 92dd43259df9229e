"""scipy.signal.convolve, correlate and fftconvolve on traced values.

The direct sum, written with the table's entries: for a small kernel, one shifted slice
of the zero-padded volume per kernel element (``sum_j k[j] * P[j:j+n]``); for a larger
one, one gather of every window and one contraction. Exact (both operands
differentiable); the ``method`` (direct or FFT) only changes SciPy's rounding. Memory is
``size(output) * size(kernel)`` for large kernels: very large 2-D convolutions are refused
with the fix rather than exhausting memory.
"""
from __future__ import annotations

import numpy as np

from .. import numpy_api as npa
from ..errors import ArgumentError, ShapeError
from . import divert, operand, refuse

#: kernels up to this many elements are summed slice by slice
_SLICES_MAX = 64
#: windows gathered at most (output size times kernel size)
_WINDOWS_MAX = 50_000_000


def _full(volume, kernel):
    """The full convolution of same-rank arrays."""
    kshape, vshape = npa.shape(kernel), npa.shape(volume)
    full = tuple(v + k - 1 for v, k in zip(vshape, kshape))
    padded = npa.pad(volume, [(k - 1, k - 1) for k in kshape])
    flipped = npa.flip(kernel)
    count = int(np.prod(kshape, dtype=np.int64))
    if count <= _SLICES_MAX:
        total = None
        for j in np.ndindex(*kshape):
            window = padded[tuple(slice(a, a + n) for a, n in zip(j, full))]
            term = window * flipped[j]
            total = term if total is None else total + term
        return total
    if int(np.prod(full, dtype=np.int64)) * count > _WINDOWS_MAX:
        raise refuse("scipy.signal.convolve of these sizes", "the direct sum would gather "
                     f"{int(np.prod(full)) * count} window elements",
                     "convolve smaller pieces, or use plain values (dp.stop_gradient)")()
    pshape = npa.shape(padded)
    strides = np.cumprod((1,) + pshape[::-1][:-1])[::-1]
    out_idx = np.indices(full).reshape(len(full), -1)  # (d, F)
    ker_idx = np.indices(kshape).reshape(len(kshape), -1)  # (d, K)
    flat = np.tensordot(strides, out_idx, 1)[:, None] + np.tensordot(strides, ker_idx, 1)[None, :]
    windows = npa.take(npa.ravel(padded), flat)  # (F, K)
    return npa.reshape(windows @ npa.ravel(flipped), full)


def _centered(arr, shape):
    start = [(c - n) // 2 for c, n in zip(npa.shape(arr), shape)]
    return arr[tuple(slice(s, s + n) for s, n in zip(start, shape))]


def convolve(in1, in2, mode="full", method="auto"):
    in1, in2 = operand(in1), operand(in2)
    if npa.ndim(in1) != npa.ndim(in2):
        raise ValueError("in1 and in2 should have the same dimensionality")
    if mode not in ("full", "same", "valid"):
        raise ValueError("acceptable mode flags are 'valid', 'same', or 'full'")
    if method not in ("auto", "direct", "fft"):
        raise ValueError("acceptable method flags are 'auto', 'direct', or 'fft'")
    if npa.ndim(in1) == 0:
        return in1 * in2
    s1, s2 = npa.shape(in1), npa.shape(in2)
    if 0 in s1 or 0 in s2:
        raise ShapeError("scipy.signal.convolve of an empty array on traced values")
    if mode == "valid":
        ok1 = all(a >= b for a, b in zip(s1, s2))
        ok2 = all(b >= a for a, b in zip(s1, s2))
        if not (ok1 or ok2):
            raise ValueError("For 'valid' mode, one must be at least as large as the other "
                             "in every dimension")
    # the smaller operand is the kernel (convolution commutes)
    big, small = (in1, in2) if np.prod(s1) >= np.prod(s2) else (in2, in1)
    out = _full(big, small)
    if mode == "full":
        return out
    if mode == "same":
        return _centered(out, s1)
    return _centered(out, tuple(abs(a - b) + 1 for a, b in zip(s1, s2)))


def correlate(in1, in2, mode="full", method="auto"):
    """correlate(in1, in2) = convolve(in1, conj(in2) reversed); in 'valid' mode with in2
    the larger operand SciPy swaps them, which reverses (and conjugates) the result."""
    in1, in2 = operand(in1), operand(in2)
    if npa.ndim(in1) != npa.ndim(in2):
        raise ValueError("in1 and in2 should have the same dimensionality")
    if npa.ndim(in1) == 0:
        return in1 * in2
    s1, s2 = npa.shape(in1), npa.shape(in2)
    # SciPy (and np.correlate) conjugate the second operand: sum in1[n + k] * conj(in2[n])
    if mode == "valid" and not all(a >= b for a, b in zip(s1, s2)) and \
            all(b >= a for a, b in zip(s1, s2)):
        return npa.flip(convolve(_conj(in2), npa.flip(in1), mode, method))
    return convolve(in1, _conj(npa.flip(in2)), mode, method)


def _conj(x):
    """The complex conjugate of a complex operand; a real one as it is (no copy)."""
    return np.conj(x) if npa.dtype_of(x).kind == "c" else x


def fftconvolve(in1, in2, mode="full", axes=None):
    if axes is not None:
        raise ArgumentError("scipy.signal.fftconvolve(..., axes=...) on traced values: "
                            "convolve over every axis (axes=None)")
    return convolve(in1, in2, mode)


def install(module) -> None:
    from scipy.signal import _signaltools
    for name, fn in (("convolve", convolve), ("correlate", correlate),
                     ("fftconvolve", fftconvolve)):
        divert(getattr(_signaltools, name), fn, f"scipy.signal.{name}",
               "the direct sum, composed of diffprog operations")
