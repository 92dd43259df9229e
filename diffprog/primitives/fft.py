"""The discrete Fourier transforms of np.fft: four entries, ``fftn``, ``ifftn``, ``rfftn``
and ``irfftn``, each with NumPy's ``s`` (points per transformed axis: the input is
zero-padded or truncated to them), ``axes`` (in NumPy's order, repeats allowed) and
``norm``. The 1-D and 2-D functions (``fft``, ``ifft2``, ``rfft``, ...) bind them with one
or two axes; ``hfft``/``ihfft`` are ``irfft``/``rfft`` of conjugates, ``fftshift`` and
``ifftshift`` are ``np.roll``, as in NumPy's own code.

Values: the impl calls ``xp.fft`` itself, with the arguments NumPy's functions pass on
(NumPy's ``fft`` and ``fftn(s=(n,), axes=(axis,))`` run the same 1-D transform), so the
numpy engine gives NumPy's values bit for bit.

Derivatives (JAX's convention, see :mod:`.core`): the transforms are linear, so a
tangent goes through the same transform. The DFT matrix (scaled by any ``norm``) is
symmetric, so the cotangent of a complex transform is the same transform of the
cotangent, then the transpose of the padding/truncation (truncation/zero-padding back to
the input's length). ``rfftn`` and ``irfftn`` transpose their real-to-complex and
complex-to-real stage with the half-spectrum weights ``w`` (1 for the zero frequency and
the Nyquist frequency of an even length, 2 between): the cotangent of ``x`` in
``rfft(x)`` is ``irfft(conj(g) / w)``, and that of ``x`` in ``irfft(x)`` is
``w * conj(rfft(g))`` (both with the norm of the other direction), real at the two
frequencies whose imaginary parts ``irfft`` ignores. Every rule is written with these four entries, so
derivatives of any order exist.
"""
from __future__ import annotations

import functools
import operator
import warnings

import numpy as np

from ..errors import ArgumentError, ArgumentValueError, ShapeError
from ..ir import Aval
from ..tracing import user_stacklevel
from ..transforms.batch import by, reduce_axes
from .core import Case, Primitive, is_inexact, normal
from .rules import in_dtype_of, shape_of, slice_axis

_NORMS = ("backward", "ortho", "forward")
#: the norm of the transform in the other direction with the same scale
_SWAPPED = {"backward": "forward", "ortho": "ortho", "forward": "backward"}


class FFTAxisError(ShapeError, np.exceptions.AxisError):
    """An axis out of range for an np.fft function: NumPy raises its ``AxisError`` (a
    ``ValueError`` and an ``IndexError``) or an ``IndexError`` there."""


# ------------------------------------------------------------------ the stages

def _stages(kind: str, s: tuple, axes: tuple) -> list:
    """The 1-D transforms NumPy runs, in the order it runs them: ``(axis, n, what)``
    with ``what`` "c2c", "r2c" or "c2r". ``fftn`` runs the last axis first; ``rfftn``
    its real-to-complex stage on ``axes[-1]`` first, then the others from the back;
    ``irfftn`` the others from the front, then its complex-to-real stage on ``axes[-1]``."""
    pairs = list(zip(axes, s))
    if kind == "c2c":
        return [(a, n, "c2c") for a, n in reversed(pairs)]
    if kind == "r2c":
        return [pairs[-1] + ("r2c",)] + [(a, n, "c2c") for a, n in reversed(pairs[:-1])]
    return [(a, n, "c2c") for a, n in pairs[:-1]] + [pairs[-1] + ("c2r",)]


def _length_after(what: str, n: int) -> int:
    return n // 2 + 1 if what == "r2c" else n


@functools.lru_cache(maxsize=256)
def _stage_dtype(what: str, dtype: np.dtype) -> np.dtype:
    """The dtype NumPy's 1-D transform gives for ``dtype`` (complex64 for float32 and
    float16, complex128 for ints, ...): found by running it on two points."""
    function = {"c2c": np.fft.fft, "r2c": np.fft.rfft, "c2r": np.fft.irfft}[what]
    try:
        return np.result_type(function(np.zeros(2, dtype)))
    except TypeError:
        if what != "r2c":
            raise
        raise ArgumentError(
            f"np.fft.rfft/rfftn/rfft2/ihfft take real input, got {dtype.name} (NumPy refuses "
            f"it too). Fix: np.fft.fft/fftn for complex input, or np.real(x) first.") from None


def _fft_shape(kind: str):
    def shape(x, *, s, axes, norm):
        _check_params(x.ndim, s, axes, norm)
        out, dtype = list(x.shape), np.dtype(x.dtype)
        for a, n, what in _stages(kind, s, axes):
            out[a] = _length_after(what, n)
            dtype = _stage_dtype(what, dtype)
        return Aval(tuple(out), dtype)
    return shape


def _check_params(ndim, s, axes, norm):
    """What an entry bound directly (not through a NumPy binding) must hold."""
    if norm not in _NORMS:
        raise ArgumentValueError(f"np.fft: norm must be one of {_NORMS}, got {norm!r}")
    if not axes or len(s) != len(axes):
        raise ArgumentValueError(f"np.fft: s {s} and axes {axes} must be as long, and not empty")
    for a in axes:
        if not 0 <= a < ndim:
            raise FFTAxisError(f"axis {a} is out of bounds for array of dimension {ndim}")
    for n in s:
        if n < 1:
            raise ArgumentValueError(f"Invalid number of FFT data points ({n}) specified.")


def _impl(name: str, kind: str, inverse: bool):
    """``xp.fft.<name>(x, s, axes, norm)``: NumPy's function itself (its bits). Another
    array library (CuPy) gets an axis transformed twice as NumPy's 1-D stages, one call
    each (CuPy's n-d transforms want distinct axes)."""
    def impl(xp, x, *, s, axes, norm):
        if xp is np or len(set(axes)) == len(axes):
            return getattr(xp.fft, name)(x, s=s, axes=axes, norm=norm)
        one_d = {"c2c": xp.fft.ifft if inverse else xp.fft.fft, "r2c": xp.fft.rfft,
                 "c2r": xp.fft.irfft}
        for a, n, what in _stages(kind, s, axes):
            x = one_d[what](x, n=n, axis=a, norm=norm)
        return x
    return impl


# ------------------------------------------------------------------ rules

def _fit(x, axis: int, n: int):
    """``x`` zero-padded or truncated along ``axis`` to ``n`` points (the transpose of
    one is the other)."""
    m = shape_of(x)[axis]
    if m == n:
        return x
    if m > n:
        return slice_axis(x, axis, 0, n)
    width = [(0, 0)] * len(shape_of(x))
    width[axis] = (0, n - m)
    return np.pad(x, width)


def _c2c_transpose(g, in_shape, stages, norm: str, inverse: bool):
    """The cotangent of the input of complex 1-D ``stages`` ((axis, n) in the order run,
    each padding/truncating its axis to n first) on an input of ``in_shape``."""
    if not stages:
        return g
    prim = ifftn if inverse else fftn
    axes = [a for a, _ in stages]
    if len(set(axes)) == len(axes):  # the stages commute: one transform
        g = prim(g, s=tuple(n for _, n in stages), axes=tuple(axes), norm=norm)
        for a in axes:
            g = _fit(g, a, in_shape[a])
        return g
    lengths, shape = [], list(in_shape)
    for a, n in stages:  # an axis transformed twice: one stage at a time, the last first
        lengths.append(shape[a])
        shape[a] = n
    for (a, n), m in zip(reversed(stages), reversed(lengths)):
        g = _fit(prim(g, s=(n,), axes=(a,), norm=norm), a, m)
    return g


def _half_weights(n: int, axis: int, ndim: int, like):
    """``w`` (1 at frequency 0 and at n/2 for even n, 2 between) over the n // 2 + 1
    frequencies of a real signal of length n, along ``axis``, in ``like``'s real dtype."""
    w = np.full(n // 2 + 1, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    shape = [1] * ndim
    shape[axis] = len(w)
    return w.reshape(shape).astype(np.finfo(np.result_type(like)).dtype)


def _c2c_vjp(inverse: bool):
    def vjp(g, x, *, out, s, axes, norm):
        if not is_inexact(np.result_type(x)):
            return (None,)
        stages = [(a, n) for a, n, _ in _stages("c2c", s, axes)]
        return (in_dtype_of(_c2c_transpose(g, shape_of(x), stages, norm, inverse), x),)
    return vjp


def _rfftn_vjp(g, x, *, out, s, axes, norm):
    if not is_inexact(np.result_type(x)):
        return (None,)
    stages = _stages("r2c", s, axes)
    a, n, _ = stages[0]
    mid = list(shape_of(x))
    mid[a] = n // 2 + 1
    g = _c2c_transpose(g, mid, [(b, m) for b, m, _ in stages[1:]], norm, inverse=False)
    # x_j = Re(sum_k g_k e^{-2 pi i jk/n}) * scale; irfft weighs frequency k by w_k
    scaled = np.conj(g) / _half_weights(n, a, len(mid), g)
    ct = irfftn(scaled, s=(n,), axes=(a,), norm=_SWAPPED[norm])
    return (in_dtype_of(_fit(ct, a, shape_of(x)[a]), x),)


def _irfftn_vjp(g, x, *, out, s, axes, norm):
    if not is_inexact(np.result_type(x)):
        return (None,)
    stages = _stages("c2r", s, axes)
    a, n, _ = stages[-1]
    mid = list(shape_of(x))
    for b, m, _ in stages[:-1]:
        mid[b] = m
    # y_j = Re(sum_k w_k x_k e^{2 pi i jk/n}) * scale: x_k's cotangent is
    # w_k * scale * sum_j g_j e^{2 pi i jk/n} = w_k * conj(rfft(g))_k
    c = np.conj(rfftn(g, s=(n,), axes=(a,), norm=_SWAPPED[norm]))
    c = _fit(c * _half_weights(n, a, len(mid), c), a, mid[a])
    c = _c2c_transpose(c, shape_of(x), [(b, m) for b, m, _ in stages[:-1]], norm, inverse=True)
    return (in_dtype_of(c, x),)


def _same_transform(prim_of):
    """The JVP of a linear entry (``prim_of()``): the same transform of the tangent."""
    def jvp(ts, x, *, out, **params):
        return None if ts[0] is None else prim_of()(ts[0], **params)
    return jvp


# ------------------------------------------------------------------ Julia

#: NumPy's norm as the power of 1/sqrt(n) each 1-D transform is scaled by, for the
#: unnormalized forward (FFTW's fft, rfft) and backward (bfft, brfft) transforms
_HALVES = {False: {"backward": 0, "ortho": 1, "forward": 2},
           True: {"backward": 2, "ortho": 1, "forward": 0}}


def _julia(helper: str, inverse: bool):
    """``DiffProg.<helper>(x, dims, sizes, halves)``: Julia dims in the order of NumPy's
    axes (the helper runs NumPy's stages in NumPy's order), the points per axis and the
    scaling (julia/src/fft.jl)."""
    def spell(eqn, jl):
        ndim = len(eqn.inputs[0].aval.shape)
        p = eqn.params
        dims = jl.tuple(jl.dim(a, ndim) for a in p["axes"])
        return (f"DiffProg.{helper}({{0}}, {dims}, {jl.tuple(int(n) for n in p['s'])}, "
                f"{_HALVES[inverse][p['norm']]})")
    return spell


# ------------------------------------------------------------------ NumPy's signatures

def _norm(norm, prim, swap=False) -> str:
    """``norm`` checked, None as "backward"; NumPy's message (a space more where its
    inverse transforms and hfft/ihfft swap the direction first)."""
    if norm is None:
        return "backward"
    if isinstance(norm, str) and norm in _NORMS:
        return norm
    comma = ", " if swap or prim in (ifftn, irfftn) else ","
    raise ArgumentValueError(f'Invalid norm value {norm}; should be "backward"{comma}"ortho" '
                             f'or "forward".')


def _axis(axis, ndim: int, name: str) -> int:
    try:
        axis = operator.index(axis)
    except TypeError:
        raise ArgumentError(f"np.fft.{name}: an axis must be an integer, got {axis!r}") from None
    if not -ndim <= axis < ndim:
        raise FFTAxisError(f"np.fft.{name}: axis {axis} is out of bounds for array of "
                           f"dimension {ndim}")
    return axis % ndim


def _points(n, name: str) -> int:
    try:
        n = operator.index(n)
    except TypeError:
        raise ArgumentError(f"np.fft.{name}: the number of points must be an integer, got "
                            f"{n!r}") from None
    if n < 1:
        raise ArgumentValueError(f"Invalid number of FFT data points ({n}) specified.")
    return n


def _one_axis(prim, kind: str, name: str, a, n, axis, norm, swap=False):
    """NumPy's 1-D functions (fft, ifft, rfft, irfft; hfft and ihfft with ``swap``: the
    transform in the other direction's norm)."""
    shape = shape_of(a)
    axis = _axis(axis, len(shape), name)
    if n is None:
        n = (shape[axis] - 1) * 2 if kind == "c2r" else shape[axis]
    n = _points(n, name)
    norm = _norm(norm, prim, swap)
    return prim(a, s=(n,), axes=(axis,), norm=_SWAPPED[norm] if swap else norm)


# NumPy's own words (warning filters match them)
_AXES_NONE = ("`axes` should not be `None` if `s` is not `None` (Deprecated in NumPy 2.0). In a "
              "future version of NumPy, this will raise an error and `s[i]` will correspond to "
              "the size along the transformed axis specified by `axes[i]`. To retain current "
              "behaviour, pass a sequence [0, ..., k-1] to `axes` for an array of dimension k.")
_NONE_IN_S = ("Passing an array containing `None` values to `s` is deprecated in NumPy 2.0 and "
              "will raise an error in a future version of NumPy. To use the default behaviour of "
              "the corresponding 1-D transform, pass the value matching the default for its `n` "
              "parameter. To use the default behaviour for every axis, the `s` argument can be "
              "omitted.")
def _several_axes(prim, kind: str, name: str, a, s, axes, norm):
    """NumPy's n-d functions (its ``_cook_nd_args``): the ``s`` and ``axes`` defaults, -1
    and None in ``s`` (NumPy's deprecated spellings, with its warnings), every check."""
    shape = shape_of(a)
    ndim = len(shape)
    if axes is not None:
        try:
            axes = [operator.index(ax) for ax in axes]
        except TypeError:
            raise ArgumentError(f"np.fft.{name}: axes must be a sequence of integers, got "
                                f"{axes!r}") from None
    shapeless = s is None
    if shapeless:
        s = list(shape) if axes is None else [shape[_axis(ax, ndim, name)] for ax in axes]
    s = list(s)
    if axes is None:
        if not shapeless:
            warnings.warn(_AXES_NONE, DeprecationWarning, stacklevel=user_stacklevel())
        axes = list(range(-len(s), 0))
    if len(s) != len(axes):
        raise ArgumentValueError("Shape and axes have different lengths.")
    axes = tuple(_axis(ax, ndim, name) for ax in axes)
    if not axes:
        if kind != "c2c":
            raise FFTAxisError(f"np.fft.{name} needs at least one axis")
        return a  # NumPy returns the array unchanged
    if kind == "c2r" and shapeless:
        s[-1] = (shape[axes[-1]] - 1) * 2
    if any(n is None for n in s):
        warnings.warn(_NONE_IN_S, DeprecationWarning, stacklevel=user_stacklevel())
    s = [shape[ax] if isinstance(n, (int, np.integer)) and n == -1 else n
         for n, ax in zip(s, axes)]
    s = tuple(_points(n, name) for n in _defaults_in_order(kind, s, axes, shape))
    return prim(a, s=s, axes=axes, norm=_norm(norm, prim))


def _defaults_in_order(kind: str, s: list, axes: tuple, shape: tuple) -> list:
    """``None`` in ``s`` takes the 1-D function's default: from the length the axis has
    when NumPy runs that stage (for an axis transformed twice, what the other left)."""
    if all(n is not None for n in s):
        return s
    s, current = list(s), list(shape)
    for a, k, what in _stages(kind, tuple(range(len(s))), axes):  # k: the position in s
        if s[k] is None:
            s[k] = (current[a] - 1) * 2 if what == "c2r" else current[a]
        current[a] = _length_after(what, _points(s[k], "fftn"))
    return s


def _fft_call(a, n=None, axis=-1, norm=None, out=None):
    return _one_axis(fftn, "c2c", "fft", a, n, axis, norm)


def _ifft_call(a, n=None, axis=-1, norm=None, out=None):
    return _one_axis(ifftn, "c2c", "ifft", a, n, axis, norm)


def _rfft_call(a, n=None, axis=-1, norm=None, out=None):
    return _one_axis(rfftn, "r2c", "rfft", a, n, axis, norm)


def _irfft_call(a, n=None, axis=-1, norm=None, out=None):
    return _one_axis(irfftn, "c2r", "irfft", a, n, axis, norm)


def _hfft_call(a, n=None, axis=-1, norm=None, out=None):
    """NumPy's: ``irfft(conj(a), n, axis, norm=<the other direction's>)``."""
    return _one_axis(irfftn, "c2r", "hfft", np.conj(a), n, axis, norm, swap=True)


def _ihfft_call(a, n=None, axis=-1, norm=None, out=None):
    """NumPy's: ``conj(rfft(a, n, axis, norm=<the other direction's>))``."""
    return np.conj(_one_axis(rfftn, "r2c", "ihfft", a, n, axis, norm, swap=True))


def _nd(entry: str, kind: str, name: str, default_axes=None):
    """The binding of np.fft.<name>(a, s, axes, norm) to the entry named ``entry``."""
    def call(a, s=None, axes=default_axes, norm=None, out=None):
        return _several_axes(_ENTRIES[entry], kind, name, a, s, axes, norm)
    return call


def _shift_call(sign: int, name: str):
    """np.fft.fftshift (sign 1) / ifftshift (sign -1): np.roll by half of each axis."""
    def call(x, axes=None):
        shape = shape_of(x)
        if axes is None:
            axes = tuple(range(len(shape)))
        elif isinstance(axes, (int, np.integer)):
            axis = _axis(axes, len(shape), name)
            return np.roll(x, sign * (shape[axis] // 2), axis)
        axes = tuple(_axis(ax, len(shape), name) for ax in axes)
        return np.roll(x, [sign * (shape[ax] // 2) for ax in axes], axes)
    return call


# ------------------------------------------------------------------ the entries

#: the entries by name (their rules and bindings look them up when called)
_ENTRIES: dict = {}


def _transform(name: str, kind: str, inverse: bool, vjp, numpy: dict, cases: list):
    """The entry for NumPy's ``name`` (``fftn``, ...) with its ``s``, ``axes`` and ``norm``:
    its stages ``kind``, direction, VJP, NumPy bindings and cases; the rest follows."""
    def this():
        return _ENTRIES[name]
    prim = Primitive(name, _impl(name, kind, inverse), _fft_shape(kind), vjp=vjp,
                     jvp=_same_transform(this), batch=by(reduce_axes, this),
                     julia=_julia("np" + name, inverse), numpy=numpy, cases=cases,
                     complex=True)
    _ENTRIES[name] = prim
    return prim


def _cases(make, specs, **options):
    """Cases ``(shape, s, axes, norm)`` with inputs ``make(*shape)``."""
    return [Case(make(*shape), {"s": s, "axes": axes, "norm": norm}, **options)
            for shape, s, axes, norm in specs]


def _complex(*shape):
    return lambda rng: [rng.standard_normal(shape) + 1j * rng.standard_normal(shape)]


# padding, truncation, both at once, axes out of order, an axis transformed twice
_C2C_CASES = [((8,), (8,), (0,), "backward"), ((3, 5), (2, 7), (0, 1), "ortho"),
              ((2, 3, 4), (3, 1), (2, 0), "forward"), ((4, 3), (5, 6), (0, 0), "ortho")]

fftn = _transform(
    "fftn", "c2c", False, _c2c_vjp(inverse=False),
    {np.fft.fft: _fft_call, np.fft.fftn: _nd("fftn", "c2c", "fftn"),
     np.fft.fft2: _nd("fftn", "c2c", "fft2", (-2, -1)),
     np.fft.fftshift: _shift_call(1, "fftshift"), np.fft.ifftshift: _shift_call(-1, "ifftshift")},
    _cases(normal, _C2C_CASES))

ifftn = _transform(
    "ifftn", "c2c", True, _c2c_vjp(inverse=True),
    {np.fft.ifft: _ifft_call, np.fft.ifftn: _nd("ifftn", "c2c", "ifftn"),
     np.fft.ifft2: _nd("ifftn", "c2c", "ifft2", (-2, -1))},
    _cases(normal, _C2C_CASES))

rfftn = _transform(
    "rfftn", "r2c", False, _rfftn_vjp,
    {np.fft.rfft: _rfft_call, np.fft.rfftn: _nd("rfftn", "r2c", "rfftn"),
     np.fft.rfft2: _nd("rfftn", "r2c", "rfft2", (-2, -1)), np.fft.ihfft: _ihfft_call},
    # real inputs only (NumPy refuses complex ones); even and odd lengths
    _cases(normal, [((8,), (8,), (0,), "backward"), ((7,), (7,), (0,), "ortho"),
                    ((3, 6), (4, 5), (0, 1), "ortho"), ((2, 5, 4), (6, 2), (2, 0), "forward"),
                    ((6, 3), (4, 6), (0, 0), "backward")], complex=False))

irfftn = _transform(
    "irfftn", "c2r", True, _irfftn_vjp,
    {np.fft.irfft: _irfft_call, np.fft.irfftn: _nd("irfftn", "c2r", "irfftn"),
     np.fft.irfft2: _nd("irfftn", "c2r", "irfft2", (-2, -1)), np.fft.hfft: _hfft_call},
    # as many entries as read, more (ignored), fewer (zero-padded); a real input
    _cases(_complex, [((5,), (8,), (0,), "backward"), ((5,), (9,), (0,), "ortho"),
                      ((3,), (8,), (0,), "forward"), ((3, 4), (5, 4), (0, 1), "forward"),
                      ((4, 3), (6,), (0,), "backward"), ((3, 4), (5, 6), (1, 1), "ortho")])
    + _cases(normal, [((5,), (8,), (0,), "backward")]))
