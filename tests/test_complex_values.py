"""Complex inputs through every NumPy function diffprog supports: NumPy's value, or an
error, never a silently different value (issue 16).

The sweep walks the registries the front end dispatches with (the entries' NumPy
bindings, the front end's handlers and ufunc composites, the methods of traced arrays),
so a function added later is swept too: every one needs a recipe here (ufuncs get theirs
automatically). Each recipe runs once on plain arrays with NumPy and once through
``dp.differentiable``; the traced call must give NumPy's value, shape and dtype, or raise
(a diffprog error, or the error NumPy raises itself where NumPy refuses complex values).
Complex inputs have tied real parts, so ordering (sort, max, clip) must be NumPy's
lexicographic order, not an order of the real parts.

Then a few derivatives of composites on complex values against finite differences in
JAX's convention (tests/helpers.numeric_grad).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

import diffprog as dp
from diffprog import numpy_api
from diffprog.errors import DiffprogError
from diffprog.primitives import core

from .helpers import assert_close, numeric_grad

# scipy.special's ufuncs join the table's bindings once SciPy is loaded: sweep them too
from diffprog.primitives import special as _special  # noqa: E402

_special.bind_scipy_ufuncs()  # nothing without SciPy

RNG = np.random.default_rng(16)


def _complex(*shape, ties=True):
    """Complex values whose real parts repeat (ties) and whose imaginary parts do not."""
    real = RNG.choice([-1.0, -0.5, 0.5, 1.0], shape) if ties else RNG.standard_normal(shape)
    return real + 1j * RNG.standard_normal(shape)


Z = _complex(3, 4)
Z2 = _complex(3, 4)
ZV = _complex(5)
ZV3 = _complex(3)
R = RNG.standard_normal((3, 4))
RV = np.sort(RNG.standard_normal(5))
M = _complex(3, 3, ties=False) + 3.0 * np.eye(3)
M2 = _complex(3, 3, ties=False)
WIDE = _complex(3, 5, ties=False)
_X = _complex(3, 3, ties=False)
HPD = _X @ _X.conj().T + 3.0 * np.eye(3) + np.triu(_complex(3, 3), 1)  # lower triangle read
NAN = np.array([complex(1.0, 2.0), complex(np.nan, 1.0), complex(3.0, np.nan),
                complex(np.inf, -1.0), complex(-np.inf, np.inf), complex(2.0, -0.5)])


@dataclass
class Recipe:
    """One call: ``traced(*inputs)`` through dp.differentiable against ``numpy(*inputs)``
    (the same callable unless given: methods traced arrays have and ndarrays lack)."""

    key: Any  # the function (np.var, np.add) or "method:name"
    traced: Callable
    inputs: tuple
    numpy: Callable | None = None
    name: str = ""
    #: the traced result's dtype differs from NumPy's on purpose (documented where the
    #: entry is); the values still agree
    dtype: Any = None
    rtol: float = 1e-10

    @property
    def id(self) -> str:
        base = self.name or getattr(self.key, "__name__", str(self.key))
        return base


def _r(key, fn, *inputs, **kw):
    return Recipe(key, fn, inputs, **kw)


def _in_place(z, change):
    """``change`` (an in-place method) applied to a copy of ``z``, which is returned."""
    y = z.copy()
    change(y)
    return y


def _m(method, fn, *inputs, **kw):
    kw.setdefault("name", f".{method}")
    return Recipe(f"method:{method}", fn, inputs, **kw)


# -------------------------------------------------------------------- hand-written recipes
# (ufuncs are generated below from their number of operands)

RECIPES = [
    # reductions and statistics
    _r(np.sum, lambda z: np.sum(z, axis=0), Z),
    _r(np.prod, lambda z: np.prod(z, axis=1), Z),
    _r(np.max, lambda z: np.max(z, axis=1), Z),
    _r(np.amax, lambda z: np.amax(z), Z),
    _r(np.min, lambda z: np.min(z, axis=0), Z),
    _r(np.amin, lambda z: np.amin(z), Z),
    _r(np.any, lambda z: np.any(z - z[0], axis=0), Z),
    _r(np.all, lambda z: np.all(z, axis=1), Z),
    _r(np.mean, lambda z: np.mean(z, axis=1), Z),
    _r(np.var, lambda z: np.var(z), Z, name="var"),
    _r(np.var, lambda z: np.var(z, axis=0, ddof=1), Z, name="var-axis-ddof"),
    _r(np.std, lambda z: np.std(z, axis=1, keepdims=True), Z),
    _r(np.argmax, lambda z: np.argmax(z, axis=1), Z),
    _r(np.argmin, lambda z: np.argmin(z), Z),
    _r(np.argsort, lambda z: np.argsort(z, axis=1), Z),
    _r(np.sort, lambda z: np.sort(z, axis=1), Z),
    _r(np.median, lambda z: np.median(z, axis=1), Z),
    _r(np.median, lambda z: np.median(z), Z, name="median-all"),
    _r(np.cumsum, lambda z: np.cumsum(z, axis=1), Z),
    _r(np.cumprod, lambda z: np.cumprod(z), Z),
    _r(np.argpartition, lambda z: np.argpartition(z, 2, axis=1), Z),
    _r(np.partition, lambda z: np.partition(z, 1, axis=1), Z),
    _r(np.nansum, lambda z: np.nansum(z), NAN),
    _r(np.nanmean, lambda z: np.nanmean(z), NAN),
    _r(np.nanmax, lambda z: np.nanmax(z, axis=1), Z),
    _r(np.nanmin, lambda z: np.nanmin(z, axis=0), Z),
    _r(np.ptp, lambda z: np.ptp(z, axis=1), Z),
    _r(np.average, lambda z, w: np.average(z, axis=1, weights=w), Z, Z2),
    _r(np.average, lambda z: np.average(z, axis=0, returned=True), Z, name="average-returned"),
    _r(np.cov, lambda z: np.cov(z), Z),
    _r(np.cov, lambda z, w: np.cov(z, w), ZV, ZV[::-1], name="cov-y"),
    _r(np.cov, lambda z: np.cov(z, rowvar=False, aweights=np.arange(1.0, 4.0)), Z,
       name="cov-weights"),
    _r(np.corrcoef, lambda z: np.corrcoef(z), Z),
    _r(np.diff, lambda z: np.diff(z, axis=1), Z),
    _r(np.gradient, lambda z: np.gradient(z, 0.5, axis=1), Z),
    _r(np.interp, lambda x, f: np.interp(x, RV, f), R, ZV, name="interp-complex-fp"),
    _r(np.interp, lambda x: np.interp(x, RV, RV), Z, name="interp-complex-x"),
    _r(np.trace, lambda z: np.trace(z), M),
    # products
    _r(np.dot, lambda a, b: np.dot(a, b), Z, Z2.T),
    _r(np.vdot, lambda a, b: np.vdot(a, b), Z, Z2),
    _r(np.vdot, lambda a, b: np.vdot(a, b), R, Z2, name="vdot-real-first"),
    _r(np.inner, lambda a, b: np.inner(a, b), Z, Z2),
    _r(np.outer, lambda a, b: np.outer(a, b), ZV, ZV3),
    _r(np.vander, lambda a: np.vander(a, 4), ZV3),
    _r(np.quantile, lambda z: np.quantile(z, 0.3), Z),
    _r(np.percentile, lambda z: np.percentile(z, 30), Z),
    _r(np.astype, lambda z: np.astype(z, np.complex64), Z),
    _r(np.tensordot, lambda a, b: np.tensordot(a, b, axes=([1], [1])), Z, Z2),
    _r(np.kron, lambda a, b: np.kron(a, b), ZV3, M2),
    _r(np.cross, lambda a, b: np.cross(a, b), Z[:, :3], Z2[:, :3]),
    _r(np.einsum, lambda a, b: np.einsum("ij,kj->ik", a, b), Z, Z2),
    _r(np.diag, lambda z: np.diag(z), M),
    _r(np.diag, lambda z: np.diag(z, 1), ZV3, name="diag-vector"),
    _r(np.diagonal, lambda z: np.diagonal(z, 1), Z),
    _r(np.triu, lambda z: np.triu(z), Z),
    _r(np.tril, lambda z: np.tril(z, -1), Z),
    # linear algebra
    _r(np.linalg.norm, lambda z: np.linalg.norm(z), Z, name="norm"),
    _r(np.linalg.norm, lambda z: np.linalg.norm(z), ZV, name="norm-vector"),
    _r(np.linalg.norm, lambda z: np.linalg.norm(z, axis=1), Z, name="norm-axis"),
    _r(np.linalg.norm, lambda z: np.linalg.norm(z, 3, axis=0), Z, name="norm-ord3"),
    _r(np.linalg.norm, lambda z: np.linalg.norm(z, -1, axis=0), Z, name="norm-ord-1"),
    _r(np.linalg.norm, lambda z: np.linalg.norm(z, np.inf), ZV, name="norm-inf"),
    _r(np.linalg.norm, lambda z: np.linalg.norm(z, 0), ZV, name="norm-0"),
    _r(np.linalg.norm, lambda z: np.linalg.norm(z, "fro"), Z, name="norm-fro"),
    _r(np.linalg.norm, lambda z: np.linalg.norm(z, 1), Z, name="norm-matrix-1"),
    _r(np.linalg.norm, lambda z: np.linalg.norm(z, 2), Z, name="norm-matrix-2"),
    _r(np.linalg.norm, lambda z: np.linalg.norm(z, "nuc"), Z, name="norm-nuc"),
    _r(np.linalg.solve, lambda a, b: np.linalg.solve(a, b), M, Z),
    _r(np.linalg.inv, lambda a: np.linalg.inv(a), M),
    _r(np.linalg.det, lambda a: np.linalg.det(a), M),
    _r(np.linalg.slogdet, lambda a: np.linalg.slogdet(a), M),
    _r(np.linalg.cholesky, lambda a: np.linalg.cholesky(a), HPD),
    _r(np.linalg.cholesky, lambda a: np.linalg.cholesky(a.T, upper=True), HPD,
       name="cholesky-upper"),
    _r(np.linalg.eigh, lambda a: np.linalg.eigh(a), HPD),
    _r(np.linalg.eigh, lambda a: np.linalg.eigh(a, UPLO="U"), HPD.T, name="eigh-U"),
    _r(np.linalg.eigvalsh, lambda a: np.linalg.eigvalsh(a), HPD, rtol=1e-12),
    _r(np.linalg.eigvalsh, lambda a: np.linalg.eigvalsh(a, UPLO="U"), HPD.T, rtol=1e-12,
       name="eigvalsh-U"),
    _r(np.linalg.eig, lambda a: np.linalg.eig(a), M),
    _r(np.linalg.eig, lambda a: np.linalg.eig(a), np.triu(R[:, :3]) + np.diag([1.0, 2, 3]),
       name="eig-real-spectrum", dtype=np.complex128),
    _r(np.linalg.eigvals, lambda a: np.linalg.eigvals(a), M),
    _r(np.linalg.svd, lambda a: np.linalg.svd(a), WIDE),
    _r(np.linalg.svd, lambda a: np.linalg.svd(a, full_matrices=False), WIDE.T,
       name="svd-reduced"),
    _r(np.linalg.svd, lambda a: np.linalg.svd(a, compute_uv=False), WIDE, name="svdvals"),
    _r(np.linalg.svd, lambda a: np.linalg.svd(a, hermitian=True), HPD, name="svd-hermitian"),
    _r(np.linalg.qr, lambda a: np.linalg.qr(a), WIDE.T),
    _r(np.linalg.qr, lambda a: np.linalg.qr(a, mode="complete"), WIDE.T, name="qr-complete"),
    _r(np.linalg.qr, lambda a: np.linalg.qr(a, mode="r"), WIDE, name="qr-r"),
    _r(np.linalg.pinv, lambda a: np.linalg.pinv(a), WIDE),
    _r(np.linalg.pinv, lambda a: np.linalg.pinv(a, hermitian=True), HPD, rtol=1e-8,
       name="pinv-hermitian"),
    _r(np.linalg.lstsq, lambda a, b: np.linalg.lstsq(a, b), WIDE.T, ZV, rtol=1e-8),
    _r(np.linalg.lstsq, lambda a, b: np.linalg.lstsq(a, b), WIDE.T, Z2[:, :2].repeat(2, 0)[:5],
       rtol=1e-8, name="lstsq-matrix"),
    _r(np.linalg.matrix_power, lambda a: np.linalg.matrix_power(a, 5), M),
    _r(np.linalg.matrix_power, lambda a: np.linalg.matrix_power(a, -2), M, name="matrix_power-neg"),
    _r(np.searchsorted, lambda a, v: np.searchsorted(a, v), np.sort(ZV), Z),
    # elementwise handlers
    _r(np.real, lambda z: np.real(z), Z),
    _r(np.imag, lambda z: np.imag(z), Z),
    _r(np.angle, lambda z: np.angle(z, deg=True), Z),
    _r(np.isreal, lambda z: np.isreal(z * (np.abs(z) > 1)), Z),
    _r(np.isreal, lambda x: np.isreal(x), R, name="isreal-real"),
    _r(np.iscomplex, lambda z: np.iscomplex(z * (np.abs(z) > 1)), Z),
    _r(np.iscomplex, lambda x: np.iscomplex(x), R, name="iscomplex-real"),
    _r(np.iscomplexobj, lambda z: np.zeros(2) + np.iscomplexobj(z), Z),
    _r(np.isrealobj, lambda z: np.zeros(2) + np.isrealobj(z), Z),
    _r(np.sort_complex, lambda z: np.sort_complex(z), Z),
    _r(np.sort_complex, lambda x: np.sort_complex(x), R, name="sort_complex-real"),
    _r(np.sort_complex, lambda x: np.sort_complex(x.astype(np.float32)), R,
       name="sort_complex-float32"),
    _r(np.real_if_close, lambda z: np.real_if_close(z), Z),
    _r(np.clip, lambda z: np.clip(z, -0.5 + 0j, 0.5 + 1j), Z),
    _r(np.clip, lambda z: np.clip(z, -0.5, 0.5), Z, name="clip-real-bounds"),
    _r(np.round, lambda z: np.round(z), Z * 3.7),
    _r(np.round, lambda z: np.round(z, 2), Z * 3.7, name="round-decimals"),
    _r(np.around, lambda z: np.around(z, 1), Z * 3.7),
    _r(np.where, lambda z, w: np.where(np.abs(z) > 1, z, w), Z, Z2),
    _r(np.nan_to_num, lambda z: np.nan_to_num(z), NAN),
    _r(np.nan_to_num, lambda z: np.nan_to_num(z, nan=1.5, posinf=9.0, neginf=-9.0), NAN,
       name="nan_to_num-values"),
    _r(np.select, lambda z, w: np.select([np.abs(z) > 1, np.abs(w) > 1], [z, w], 0.5j), Z, Z2),
    _r(np.linspace, lambda a, b: np.linspace(a, b, 5), ZV3, ZV3[::-1]),
    # creation and dtypes
    _r(np.zeros_like, lambda z: np.zeros_like(z), Z),
    _r(np.ones_like, lambda z: np.ones_like(z), Z),
    _r(np.empty_like, lambda z: np.empty_like(z) * 0, Z),
    _r(np.full_like, lambda z: np.full_like(z, 2.5 - 1j), Z),
    _r(np.full_like, lambda z, w: np.full_like(z, w[0, 0]), Z, Z2, name="full_like-traced"),
    _r(np.copy, lambda z: np.copy(z), Z),
    _r(np.shape, lambda z: np.zeros(np.shape(z)), Z),
    _r(np.ndim, lambda z: np.zeros(np.ndim(z)), Z),
    _r(np.size, lambda z: np.zeros(np.size(z)), Z),
    _r(np.result_type, lambda z: np.zeros(2, np.result_type(z, 1.0)), Z),
    # shapes and indexing
    _r(np.reshape, lambda z: np.reshape(z, (4, 3)), Z),
    _r(np.ravel, lambda z: np.ravel(z), Z),
    _r(np.transpose, lambda z: np.transpose(z), Z),
    _r(np.swapaxes, lambda z: np.swapaxes(z, 0, 1), Z),
    _r(np.moveaxis, lambda z: np.moveaxis(z, 0, -1), Z),
    _r(np.rollaxis, lambda z: np.rollaxis(z, 1), Z),
    _r(np.expand_dims, lambda z: np.expand_dims(z, 1), Z),
    _r(np.squeeze, lambda z: np.squeeze(z[None]), Z),
    _r(np.broadcast_to, lambda z: np.broadcast_to(z, (2, 3, 4)), Z),
    _r(np.broadcast_arrays, lambda z, w: np.broadcast_arrays(z, w[0]), Z, Z2),
    _r(np.atleast_1d, lambda z: np.atleast_1d(z[0, 0]), Z),
    _r(np.atleast_2d, lambda z: np.atleast_2d(z[0]), Z),
    _r(np.atleast_3d, lambda z: np.atleast_3d(z), Z),
    _r(np.concatenate, lambda z, w: np.concatenate([z, w], axis=1), Z, Z2),
    _r(np.append, lambda z, w: np.append(z, w), Z, Z2),
    _r(np.stack, lambda z, w: np.stack([z, w]), Z, Z2),
    _r(np.hstack, lambda z, w: np.hstack([z, w]), Z, Z2),
    _r(np.vstack, lambda z, w: np.vstack([z, w]), Z, Z2),
    _r(np.column_stack, lambda z, w: np.column_stack([z[0], w[0]]), Z, Z2),
    _r(np.split, lambda z: np.split(z, 2, axis=1), Z),
    _r(np.array_split, lambda z: np.array_split(z, 3, axis=1), Z),
    _r(np.hsplit, lambda z: np.hsplit(z, 2), Z),
    _r(np.vsplit, lambda z: np.vsplit(z, 3), Z),
    _r(np.dsplit, lambda z: np.dsplit(z[..., None].repeat(2, 2), 2), Z),
    _r(np.flip, lambda z: np.flip(z), Z),
    _r(np.fliplr, lambda z: np.fliplr(z), Z),
    _r(np.flipud, lambda z: np.flipud(z), Z),
    _r(np.rot90, lambda z: np.rot90(z), Z),
    _r(np.roll, lambda z: np.roll(z, 2), Z),
    _r(np.tile, lambda z: np.tile(z, (2, 1)), Z),
    _r(np.repeat, lambda z: np.repeat(z, 2, axis=0), Z),
    _r(np.pad, lambda z: np.pad(z, 1), Z),
    _r(np.pad, lambda z: np.pad(z, ((1, 0), (0, 2)), constant_values=2.0 - 1.5j), Z,
       name="pad-complex-constant"),
    _r(np.pad, lambda x: np.pad(x, 1, constant_values=-1.0 + 1.0j), R, name="pad-real-x"),
    _r(np.interp, lambda x, f: np.interp(x - 1.0, RV, f, left=1.0j, right=-2.0), R, ZV,
       name="interp-complex-left"),
    _r(np.interp, lambda x: np.interp(x, RV, RV, left=1.0j), R, name="interp-real-fp-complex-left"),
    _r(np.take, lambda z: np.take(z, [0, 2], axis=1), Z),
    _r(np.take_along_axis, lambda z: np.take_along_axis(z, np.argsort(z, axis=1), 1), Z),
]

# np.fft (complex by nature; the r2c transforms refuse complex input, as NumPy does)
RECIPES += [
    _r(np.fft.fft, lambda z: np.fft.fft(z), Z), _r(np.fft.ifft, lambda z: np.fft.ifft(z, 6), Z),
    _r(np.fft.fft2, lambda z: np.fft.fft2(z), Z),
    _r(np.fft.ifft2, lambda z: np.fft.ifft2(z, norm="ortho"), Z),
    _r(np.fft.fftn, lambda z: np.fft.fftn(z, axes=(0,)), Z), _r(np.fft.ifftn, np.fft.ifftn, Z),
    _r(np.fft.rfft, lambda z: np.fft.rfft(z), Z),
    _r(np.fft.rfft, lambda x: np.fft.rfft(x), R, name="rfft-real"),
    _r(np.fft.irfft, lambda z: np.fft.irfft(z), Z), _r(np.fft.rfft2, np.fft.rfft2, Z),
    _r(np.fft.irfft2, np.fft.irfft2, Z), _r(np.fft.rfftn, np.fft.rfftn, Z),
    _r(np.fft.irfftn, lambda z: np.fft.irfftn(z, axes=(1,)), Z),
    _r(np.fft.hfft, lambda z: np.fft.hfft(z), Z), _r(np.fft.ihfft, np.fft.ihfft, Z),
    _r(np.fft.ihfft, np.fft.ihfft, R, name="ihfft-real"),
    _r(np.fft.fftshift, np.fft.fftshift, Z), _r(np.fft.ifftshift, np.fft.ifftshift, Z),
    _r(np.fft.fftfreq, lambda z: np.fft.fftfreq(6, z[0, 0]), Z),
    _r(np.fft.rfftfreq, lambda z: np.fft.rfftfreq(6, z[0, 0]), Z),
    _r(np.sinc, np.sinc, Z),
]

_EXTRA_HANDLERS = {"row_stack": lambda z, w: np.row_stack([z, w])}
for _name, _fn in _EXTRA_HANDLERS.items():
    if hasattr(np, _name):
        RECIPES.append(_r(getattr(np, _name), _fn, Z, Z2))
if hasattr(np, "stop_gradient"):
    RECIPES.append(_r(np.stop_gradient, lambda z: np.stop_gradient(z), Z))

# methods and properties of traced arrays (those of ndarrays run on NumPy as they are)
RECIPES += [
    _m("T", lambda z: z.T, Z), _m("mT", lambda z: z.mT, Z),
    _m("real", lambda z: z.real, Z), _m("imag", lambda z: z.imag, Z),
    _m("conj", lambda z: z.conj(), Z), _m("conjugate", lambda z: z.conjugate(), Z),
    _m("astype", lambda z: z.astype(np.complex64), Z),
    _m("astype", lambda z: z.astype(np.float64), Z, name=".astype-real"),
    _m("copy", lambda z: z.copy(), Z),
    _m("sum", lambda z: z.sum(axis=1), Z), _m("prod", lambda z: z.prod(), Z),
    _m("mean", lambda z: z.mean(axis=0), Z), _m("var", lambda z: z.var(), Z),
    _m("std", lambda z: z.std(axis=0), Z), _m("max", lambda z: z.max(axis=1), Z),
    _m("min", lambda z: z.min(), Z), _m("ptp", lambda z: np.ptp(z, axis=0), Z),
    _m("all", lambda z: z.all(), Z), _m("any", lambda z: z.any(axis=0), Z),
    _m("argmax", lambda z: z.argmax(axis=0), Z), _m("argmin", lambda z: z.argmin(), Z),
    _m("argsort", lambda z: z.argsort(axis=0), Z),
    _m("argpartition", lambda z: z.argpartition(1, axis=1), Z),
    _m("sort", lambda z: _in_place(z, lambda y: y.sort(axis=0)), Z),  # sorts y itself
    _m("fill", lambda z: _in_place(z, lambda y: y.fill(0.5 - 2j)), Z),
    _m("cumsum", lambda z: z.cumsum(axis=0), Z), _m("cumprod", lambda z: z.cumprod(axis=1), Z),
    _m("clip", lambda z: z.clip(-0.5 + 0j, 0.5 + 0j), Z),
    _m("round", lambda z: (z * 3.7).round(1), Z),
    _m("dot", lambda z, w: z.dot(w.T), Z, Z2),
    _m("trace", lambda z: z.trace(), M), _m("diagonal", lambda z: z.diagonal(), Z),
    _m("reshape", lambda z: z.reshape(2, 6), Z), _m("ravel", lambda z: z.ravel(), Z),
    _m("flatten", lambda z: z.flatten(), Z), _m("transpose", lambda z: z.transpose(), Z),
    _m("swapaxes", lambda z: z.swapaxes(0, 1), Z), _m("squeeze", lambda z: z[None].squeeze(), Z),
    _m("repeat", lambda z: z.repeat(2), Z), _m("take", lambda z: z.take([1, 0]), Z),
]

#: methods traced arrays have and ndarrays lack: those named after math ufuncs (object
#: arrays of traced values call them, see numpy_api._ufunc_methods); NumPy's value is the ufunc's
_UFUNC_METHODS = {name for name in numpy_api.TRACER_METHODS
                  if not hasattr(np.ndarray, name) and isinstance(getattr(np, name, None), np.ufunc)}


def _ufunc_recipes() -> list:
    """Every ufunc the front end supports (an entry's binding or a composite), on complex
    operands, and two-operand ones also on a complex and a real operand."""
    ufuncs = {u for u in list(core.NUMPY_BINDINGS) + list(numpy_api._UFUNC_COMPOSITES)
              if isinstance(u, np.ufunc)}
    out = []
    for u in sorted(ufuncs, key=lambda u: u.__name__):
        if u.nin == 1:
            out.append(_r(u, lambda z, u=u: u(z), Z))
        elif u.nin == 2:
            out.append(_r(u, lambda z, w, u=u: u(z, w), Z, Z2))
            out.append(_r(u, lambda z, x, u=u: u(z, x), Z, R, name=f"{u.__name__}-mixed"))
        elif u.nin == 3:
            out.append(_r(u, lambda z, w, x, u=u: u(z, w, x), Z, Z2, R))
    for name in sorted(_UFUNC_METHODS):
        u = getattr(np, name)
        out.append(Recipe(f"method:{name}", lambda z, name=name: getattr(z, name)(), (Z,),
                          numpy=lambda z, u=u: u(z), name=f".{name}"))
    return out


RECIPES += _ufunc_recipes()
RECIPES += [  # operators
    _r("operator:+", lambda z, w: z + w, Z, Z2, name="z + w"),
    _r("operator:*", lambda z, x: z * x - 1j, Z, R, name="z * x - 1j"),
    _r("operator:/", lambda z, w: z / w, Z, Z2, name="z / w"),
    _r("operator:**", lambda z: z ** 3 + z ** -2 + z ** 0.5 + 2.0 ** z, Z, name="powers"),
    _r("operator:@", lambda a, b: a @ b, M, Z, name="a @ b"),
    _r("operator:abs", lambda z: abs(z), Z, name="abs(z)"),
    _r("operator:<", lambda z, w: z < w, Z, Z2, name="z < w"),
    _r("operator:==", lambda z, w: z == w[0, 0], Z, Z, name="z == w"),
    _r("operator://", lambda z, w: z // w, Z, Z2, name="z // w"),
    _r("operator:%", lambda z, w: z % w, Z, Z2, name="z % w"),
    _r("operator:getitem", lambda z: z[np.argsort(z[:, 0])], Z, name="z[argsort]"),
]


#: Z with NaN and infinite parts: every recipe on Z alone runs on it too (NumPy's complex
#: NaN sorts last, isnan sees either part, products of infinities give NaN parts)
ZN = Z.copy()
ZN[0, 1], ZN[1, 2] = complex(np.nan, 1.0), complex(1.0, np.inf)
ZN[2, 0], ZN[2, 3] = complex(-np.inf, 0.5), complex(0.5, np.nan)
_ON_Z = [r for r in RECIPES if len(r.inputs) == 1 and r.inputs[0] is Z]
RECIPES += [Recipe(r.key, r.traced, (ZN,), r.numpy, r.id + "-nan", r.dtype, r.rtol)
            for r in _ON_Z]
#: and in single precision (complex64: real results in float32)
RECIPES += [Recipe(r.key, r.traced, (Z.astype(np.complex64),), r.numpy, r.id + "-complex64",
                   r.dtype, max(r.rtol, 2e-6)) for r in _ON_Z]
RECIPES += [Recipe(r.key, r.traced, (M.astype(np.complex64),), r.numpy, r.id + "-complex64",
                   r.dtype, max(r.rtol, 1e-4))
            for r in RECIPES if len(r.inputs) == 1 and r.inputs[0] is M]


# ------------------------------------------------------------------------------- the sweep

def _numpy_value(recipe):
    fn = recipe.numpy or recipe.traced
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*[np.array(x) for x in recipe.inputs])


def _flat(value) -> list:
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in _flat(v)]
    return [value]


def _assert_same(got, expected, recipe):
    got_leaves, expected_leaves = _flat(got), _flat(expected)
    assert len(got_leaves) == len(expected_leaves), f"{recipe.id}: {len(got_leaves)} results"
    for g, e in zip(got_leaves, expected_leaves):
        g, e = np.asarray(g), np.asarray(e)
        assert g.shape == e.shape, f"{recipe.id}: shape {g.shape}, NumPy's {e.shape}"
        dtype = np.dtype(recipe.dtype) if recipe.dtype is not None and e.dtype.kind == "f" \
            else e.dtype
        if e.dtype.kind in "iu":  # lstsq's rank: a Python int here, LAPACK's int32 there
            assert g.dtype.kind in "iu", f"{recipe.id}: dtype {g.dtype}, NumPy's {e.dtype}"
        else:
            assert g.dtype == dtype, f"{recipe.id}: dtype {g.dtype}, NumPy's {e.dtype}"
        if e.dtype.kind in "fc":
            np.testing.assert_allclose(g, e.astype(g.dtype), rtol=recipe.rtol, atol=1e-12,
                                       equal_nan=True, err_msg=recipe.id)
        else:
            np.testing.assert_array_equal(g, e, err_msg=recipe.id)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.id for r in RECIPES])
def test_complex_values_are_numpys_or_refused(recipe):
    try:
        expected = _numpy_value(recipe)
    except Exception as numpy_error:  # NumPy refuses complex values: so must the trace
        with warnings.catch_warnings(), pytest.raises(Exception) as info:
            warnings.simplefilter("ignore")
            dp.differentiable(recipe.traced)(*recipe.inputs)
        assert isinstance(info.value, (DiffprogError, type(numpy_error))), info.value
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = dp.differentiable(recipe.traced)(*recipe.inputs)
    except DiffprogError as refused:  # refused by name: fine, never a wrong value
        assert "complex" in str(refused) or "np." in str(refused), refused
        return
    _assert_same(got, expected, recipe)


def _supported() -> set:
    keys = set(core.NUMPY_BINDINGS) | set(numpy_api.HANDLERS) | set(numpy_api._UFUNC_COMPOSITES)
    keys = {k for k in keys if callable(k)}  # np.stop_gradient's stand-in key when absent
    return keys | {f"method:{m}" for m in numpy_api.TRACER_METHODS}


def test_every_supported_function_is_swept():
    """A function added to the front end needs a recipe here (ufuncs get one)."""
    covered = {r.key for r in RECIPES}
    missing = sorted(getattr(k, "__name__", str(k)) for k in _supported() - covered)
    assert not missing, f"no complex-value recipe in tests/test_complex_values.py for {missing}"


# --------------------------------------------------------- derivatives of composites

def _grad_check(f, *args, rtol=1e-6):
    g = dp.grad(f)(*args)
    assert_close(g, numeric_grad(f, list(args), 0), rtol=rtol, atol=1e-8)


@pytest.mark.parametrize("name,f", [
    ("var", lambda z: np.var(z)),
    ("std-axis", lambda z: np.sum(np.std(z, axis=1) * np.arange(1.0, 4.0))),
    ("norm", lambda z: np.linalg.norm(z)),
    ("norm-axis", lambda z: np.sum(np.linalg.norm(z, axis=0) ** 3)),
    ("norm-fro", lambda z: np.linalg.norm(z, "fro")),
    ("norm-nuc", lambda z: np.linalg.norm(z, "nuc")),
    ("vdot", lambda z: np.real(np.vdot(z, z[::-1] * 1j))),
    ("cov", lambda z: np.real(np.sum(np.cov(z) * (1.0 + 2.0j)))),
    ("corrcoef", lambda z: np.real(np.sum(np.corrcoef(z) * np.arange(9.0).reshape(3, 3)))),
    ("abs-mean", lambda z: np.mean(np.abs(z - np.mean(z)) ** 2)),
    ("nan_to_num", lambda z: np.real(np.sum(np.nan_to_num(z) * (2.0 - 1.0j)))),
    ("interp", lambda z: np.real(np.sum(np.interp(RV[1:4] + 0.1, RV, z[0, :5] if z.shape[1] >= 5
                                                   else np.concatenate([z[0], z[1, :1]])) * 1j))),
])
def test_derivatives_of_composites_on_complex_values(name, f):
    _grad_check(f, _complex(3, 4, ties=False))


def test_lstsq_residuals_and_their_gradient():
    a, b = _complex(5, 3, ties=False), _complex(5, ties=False)
    f = lambda a: np.sum(np.linalg.lstsq(a, b)[1])  # noqa: E731
    assert_close(dp.differentiable(f)(a), f(a), rtol=1e-10)
    _grad_check(f, a, rtol=1e-5)


# ------------------------------------------- non-finite values (found by the sweep's ZN)

@pytest.mark.parametrize("name,f", [
    ("median", lambda x: np.median(x, axis=1)),
    ("median-all", lambda x: np.median(x)),
    ("median-keepdims", lambda x: np.median(x, axis=0, keepdims=True)),
    ("triu", lambda x: np.triu(x)), ("tril", lambda x: np.tril(x, 1)),
    ("diagonal", lambda x: np.diagonal(x)), ("trace", lambda x: np.trace(x)),
    ("diag", lambda x: np.diag(x[0])),
    ("einsum-diagonal", lambda x: np.einsum("ii->i", x[:, :3])),
    ("einsum-trace", lambda x: np.einsum("ii", x[:, :3])),
    ("einsum-repeat", lambda x: np.einsum("iij->ji", np.stack([x[:, :3]] * 3))),
])
@pytest.mark.parametrize("kind", ["real", "complex"])
def test_non_finite_entries_stay_where_numpy_puts_them(name, f, kind):
    """inf * 0 is NaN, and a complex product with 1 turns an infinite or NaN part into NaN
    parts: masks select (np.where), a NaN makes the median NaN, as in NumPy."""
    x = np.array([[1.0, np.inf, 2.0, 3.0], [np.nan, 4.0, -np.inf, 5.0], [6.0, 7.0, 8.0, 9.0]])
    if kind == "complex":
        x = x.astype(complex)  # parts set one by one (1j * inf has a NaN real part)
        x.imag = [[1.0, 0.5, np.inf, 0.0], [2.0, -1.0, 3.0, np.nan], [0.0, 1.0, 2.0, -3.0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = f(x)
        got = dp.differentiable(f)(x)
    np.testing.assert_array_equal(got, expected)
    assert np.result_type(got) == np.result_type(expected)


def test_gradients_through_the_selecting_masks():
    z = _complex(3, 3, ties=False)
    for f in (lambda z: np.real(np.sum(np.triu(z) * (1 + 2j))),
              lambda z: np.abs(np.trace(z)) + np.sum(np.abs(np.diag(np.diagonal(z, 1)))),
              lambda z: np.real(np.einsum("ii->", z * z)),
              lambda z: np.sum(np.abs(np.median(z, axis=0)))):
        _grad_check(f, z)
