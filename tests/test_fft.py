"""np.fft on traced values (diffprog/primitives/fft.py): NumPy's values bit for bit on the
numpy engine for every function and parameter combination (n/s padding and truncation,
axes in any order, negative and repeated, every norm, every dtype), NumPy's errors and
warnings, derivatives of every function to second order in both modes on real and
complex inputs, dp.vmap, and the Julia spellings. The entries' own rules are checked by
the generated tests (tests/primitives/test_fft.py)."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import diffprog as dp
from diffprog.errors import ArgumentError, DiffprogError
from diffprog.testing import check_grads

F = np.fft
NORMS = (None, "backward", "ortho", "forward")


def _data(dtype, shape=(4, 6), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    if np.dtype(dtype).kind == "i":
        x = rng.integers(-5, 5, shape)
    return x.astype(dtype)


def _traced(fn, x, kwargs):
    """``fn(x, **kwargs)`` traced, compiled and run on the numpy engine."""
    return np.asarray(dp.differentiable(lambda a: fn(a, **kwargs))(x))


def _assert_bits(fn, x, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        want = fn(x, **kwargs)
        got = _traced(fn, x, kwargs)
    what = f"np.fft.{fn.__name__}({x.dtype}{x.shape}, {kwargs})"
    assert (got.dtype, got.shape) == (want.dtype, want.shape), what
    assert got.tobytes() == want.tobytes(), what


# ------------------------------------------------------------------ NumPy's values, bit for bit

REAL_DTYPES = (np.float64, np.float32, np.int64)
ALL_DTYPES = REAL_DTYPES + (np.complex128, np.complex64)
ONE_D = {F.fft: ALL_DTYPES, F.ifft: ALL_DTYPES, F.rfft: REAL_DTYPES, F.irfft: ALL_DTYPES,
         F.hfft: ALL_DTYPES, F.ihfft: REAL_DTYPES}


@pytest.mark.parametrize("fn,dtype", [(fn, dt) for fn, dts in ONE_D.items() for dt in dts],
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_one_axis_functions_give_numpys_bits(fn, dtype):
    x = _data(dtype)
    for n, axis, norm in itertools.product((None, 1, 3, 6, 9, 12), (-1, 0, 1, -2), NORMS):
        if n is None and fn in (F.irfft, F.hfft) and x.shape[axis] == 1:
            continue
        _assert_bits(fn, x, {"n": n, "axis": axis, "norm": norm})


SEVERAL = {F.fft2: ALL_DTYPES, F.ifft2: ALL_DTYPES, F.fftn: ALL_DTYPES, F.ifftn: ALL_DTYPES,
           F.rfft2: REAL_DTYPES, F.irfft2: ALL_DTYPES, F.rfftn: REAL_DTYPES,
           F.irfftn: ALL_DTYPES}
# (s, axes) on a (3, 4, 6) array: defaults, padding and truncation, -1 in s, axes out of
# order, negative and repeated
S_AXES = [(None, None), (None, (0, 1)), (None, (-1, 0)), ((5, 3), (0, 2)), ((2, 8), (2, 1)),
          ((7, -1), (1, -1)), ((4, 5), (1, 1)), ((3, 6, 5), (2, 0, 2)), ((5,), (-2,)),
          (None, (2, 2)), ((4, 4, 4), None)]


@pytest.mark.parametrize("fn,dtype", [(fn, dt) for fn, dts in SEVERAL.items() for dt in dts],
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_several_axes_functions_give_numpys_bits(fn, dtype):
    x = _data(dtype, (3, 4, 6))
    two_d = fn in (F.fft2, F.ifft2, F.rfft2, F.irfft2)
    for (s, axes), norm in itertools.product(S_AXES, NORMS):
        if two_d and axes is None:
            axes = (-2, -1)
            s = s if s is None or len(s) == 2 else None
        _assert_bits(fn, x, {"s": s, "axes": axes, "norm": norm})
    if not two_d:  # the defaults, and NumPy's deprecated s without axes
        _assert_bits(fn, x, {})
        _assert_bits(fn, x, {"s": (3, 5)})


@pytest.mark.parametrize("fn", [F.fftshift, F.ifftshift])
def test_shifts_give_numpys_bits(fn):
    for shape in ((7,), (4, 5), (2, 3, 6)):
        x = _data(np.complex128, shape)
        for axes in (None, 0, -1, (0,), tuple(range(len(shape))), (-1, 0)):
            if isinstance(axes, int) or axes is None or max(axes) < len(shape):
                _assert_bits(fn, x, {"axes": axes})


def test_frequencies_of_a_traced_spacing():
    """fftfreq/rfftfreq are NumPy's own code: on a traced spacing d they trace as
    arithmetic, bit for bit, with a derivative in d."""
    for fn in (F.fftfreq, F.rfftfreq):
        for n in (1, 6, 7):
            got = dp.differentiable(lambda d: fn(n, d))(0.3)
            assert np.asarray(got).tobytes() == fn(n, 0.3).tobytes()
            grad = dp.grad(lambda d: np.sum(fn(n, d) ** 2))(0.3)
            np.testing.assert_allclose(grad, -2 * np.sum(fn(n, 0.3) ** 2) / 0.3, rtol=1e-12)


def test_no_axes_returns_the_input_as_numpy_does():
    x = _data(np.float64)
    for fn in (F.fftn, F.ifftn):
        _assert_bits(fn, x, {"axes": ()})


# ------------------------------------------------------------------ errors and warnings

BAD_CALLS = [
    (F.fft, (4,), {"n": 0}), (F.ifft, (4,), {"n": -3}), (F.rfft, (4,), {"n": 0}),
    (F.fft, (4,), {"norm": "bad"}), (F.irfft, (4,), {"norm": "Ortho"}),
    (F.hfft, (4,), {"norm": "x"}), (F.ihfft, (4,), {"norm": "x"}),
    (F.fft, (3, 4), {"axis": 2}), (F.fft, (3, 4), {"axis": -3, "n": 4}),
    (F.irfft, (1,), {}), (F.hfft, (3, 1), {}),
    (F.fftn, (3, 4), {"s": (3, 4), "axes": (0,)}), (F.fftn, (3, 4), {"axes": (0, 5)}),
    (F.rfftn, (3, 4), {"axes": ()}), (F.fft2, (4,), {}), (F.irfft2, (3, 4), {"s": (0, 4)}),
    (F.fftshift, (3,), {"axes": 2}),
]


@pytest.mark.parametrize("fn,shape,kwargs", BAD_CALLS,
                         ids=[f"{fn.__name__}-{kw}" for fn, _, kw in BAD_CALLS])
def test_bad_arguments_raise_numpys_exception_classes(fn, shape, kwargs):
    x = np.ones(shape)
    with pytest.raises(Exception) as numpys:
        fn(x, **kwargs)
    with pytest.raises(type(numpys.value)) as ours:
        _traced(fn, x, kwargs)
    assert isinstance(ours.value, DiffprogError), ours.value
    if isinstance(numpys.value, ValueError) and "Invalid" in str(numpys.value):
        assert str(ours.value) == str(numpys.value)


def test_complex_input_to_the_real_transforms_is_refused_as_numpy_does():
    z = _data(np.complex128)
    for fn in (F.rfft, F.rfft2, F.rfftn, F.ihfft):
        with pytest.raises(TypeError):
            fn(z)
        with pytest.raises(ArgumentError, match="take real input"):
            _traced(fn, z, {})


def test_out_is_refused():
    with pytest.raises(ArgumentError, match="out="):
        _traced(F.fft, np.ones(4), {"out": np.empty(4, complex)})


def test_numpys_deprecation_warnings_point_at_the_call():
    x = np.ones((3, 4))
    for kwargs in ({"s": (3, 4)}, {"s": (None, 4), "axes": (0, 1)}):
        with warnings.catch_warnings(record=True) as numpys:
            warnings.simplefilter("always")
            F.fftn(x, **kwargs)
        with warnings.catch_warnings(record=True) as ours:
            warnings.simplefilter("always")
            dp.differentiable(lambda a: F.fftn(a, **kwargs))(x)
        assert [str(w.message) for w in ours] == [str(w.message) for w in numpys]
        assert all(w.category is DeprecationWarning and w.filename == __file__ for w in ours)


# ------------------------------------------------------------------ derivatives

def _scalar(fn, kwargs):
    """A smooth nonlinear scalar of fn(x): its second derivatives are not zero."""
    def f(x):
        y = fn(x, **kwargs)
        rng = np.random.default_rng(3)  # the same weights at every call
        w = rng.standard_normal(np.shape(y))
        if np.dtype(y.dtype).kind == "c":
            w = w + 1j * rng.standard_normal(np.shape(y))
        return np.sum(np.real(np.sin(y) * w))
    return f


GRAD_CALLS = [
    (F.fft, {}), (F.fft, {"n": 9, "axis": 0, "norm": "ortho"}), (F.fft, {"n": 4}),
    (F.ifft, {"n": 8, "norm": "forward"}), (F.ifft, {"axis": 0}),
    (F.rfft, {}), (F.rfft, {"n": 7, "norm": "ortho"}), (F.rfft, {"n": 4, "axis": 0}),
    (F.irfft, {}), (F.irfft, {"n": 7}), (F.irfft, {"n": 15, "axis": 0, "norm": "ortho"}),
    (F.irfft, {"n": 4, "norm": "forward"}),
    (F.hfft, {}), (F.hfft, {"n": 5, "norm": "ortho"}), (F.ihfft, {}), (F.ihfft, {"n": 7}),
    (F.fft2, {}), (F.fft2, {"s": (5, 3), "norm": "ortho"}), (F.ifft2, {"axes": (1, 0)}),
    (F.fftn, {"s": (3, 8), "axes": (1, 0)}), (F.fftn, {"s": (5, 3), "axes": (1, 1)}),
    (F.ifftn, {"norm": "forward"}), (F.rfft2, {}), (F.rfft2, {"s": (5, 5)}),
    (F.rfftn, {"axes": (1, 0), "norm": "ortho"}), (F.rfftn, {"s": (6, 4), "axes": (0, 0)}),
    (F.irfft2, {}), (F.irfft2, {"s": (3, 7), "norm": "ortho"}),
    (F.irfftn, {"s": (5, 4), "axes": (1, 0)}), (F.irfftn, {"s": (5, 6), "axes": (1, 1)}),
    (F.fftshift, {}), (F.ifftshift, {"axes": 1}),
]
REAL_ONLY = (F.rfft, F.rfft2, F.rfftn, F.ihfft)


@pytest.mark.parametrize("fn,kwargs", GRAD_CALLS,
                         ids=[f"{fn.__name__}-{kw}" for fn, kw in GRAD_CALLS])
@pytest.mark.parametrize("kind", ["real", "complex"])
def test_derivatives_of_every_function_to_second_order(fn, kwargs, kind):
    if kind == "complex" and fn in REAL_ONLY:
        pytest.skip("NumPy refuses complex input to the real-input transforms")
    x = _data(np.complex128 if kind == "complex" else np.float64, (4, 5), seed=1)
    check_grads(_scalar(fn, kwargs), (x,), order=2, modes=("rev", "fwd"))


def test_irfft_gives_no_sensitivity_to_what_it_ignores():
    """irfft reads Re(x_0), Re(x_{n/2}) (n even) and the first n // 2 + 1 entries only."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(7) + 1j * rng.standard_normal(7)
    w = rng.standard_normal(8)
    g = dp.grad(lambda z: np.sum(np.fft.irfft(z, n=8) * w))(x)
    assert g[0].imag == 0 and g[4].imag == 0 and np.all(g[5:] == 0)
    assert np.all(g[1:4].imag != 0)


def test_float32_gradients_keep_float32():
    x = _data(np.float32, (8,))
    for fn in (F.fft, F.rfft, F.ihfft):
        g = dp.grad(_scalar(fn, {}))(x)
        assert g.dtype == np.float32
    z = _data(np.complex64, (8,))
    assert dp.grad(_scalar(F.irfft, {}))(z).dtype == np.complex64


def test_hessian_of_a_spectral_energy():
    """E(x) = sum |rfft(x)|^2 / n = x^T Re(D^H D) x / n for the rfft matrix D: its
    Hessian is 2 Re(D^H D) / n, whatever x."""
    n = 8
    x = _data(np.float64, (n,))
    dft = np.fft.rfft(np.eye(n), axis=0)  # column j: rfft of the unit vector j
    hess = dp.hessian(lambda v: np.sum(np.abs(np.fft.rfft(v)) ** 2) / n)(x)
    np.testing.assert_allclose(hess, 2 * np.real(dft.conj().T @ dft) / n, atol=1e-12)


def test_a_spectral_derivative_and_its_gradient():
    """du/dx of a periodic u by rfft -> multiply by ik -> irfft, inside a loss whose
    gradient in the grid values and in a wave speed is checked."""
    n, length = 16, 2 * np.pi
    grid = np.arange(n) * length / n
    k = 2 * np.pi * np.fft.rfftfreq(n, length / n)

    def loss(u, c):
        du = np.fft.irfft(1j * k * np.fft.rfft(u), n=n)
        return np.sum((u - c * du) ** 2) + np.sum(np.sin(du))

    u = np.sin(grid) + 0.3 * np.cos(3 * grid)
    du = np.fft.irfft(1j * k * np.fft.rfft(u), n=n)
    np.testing.assert_allclose(du, np.cos(grid) - 0.9 * np.sin(3 * grid), atol=1e-12)
    check_grads(loss, (u, 0.7), order=2)


def test_vmap_gives_numpys_bits_per_example():
    xs = _data(np.complex128, (3, 4, 6))
    rs = _data(np.float64, (3, 4, 6))
    for fn, batch, kwargs in [(F.fft, xs, {"n": 9}), (F.ifft2, xs, {"norm": "ortho"}),
                              (F.rfftn, rs, {"axes": (1, 0)}), (F.irfft, xs, {"axis": 0}),
                              (F.fftshift, xs, {})]:
        got = np.asarray(dp.vmap(lambda a: fn(a, **kwargs))(batch))
        want = np.stack([fn(b, **kwargs) for b in batch])
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), fn.__name__
    grads = dp.vmap(dp.grad(_scalar(F.rfft, {"n": 10})))(rs[:, 0])
    for g, r in zip(grads, rs[:, 0]):
        np.testing.assert_allclose(g, dp.grad(_scalar(F.rfft, {"n": 10}))(r), rtol=1e-12)


# ------------------------------------------------------------------ Julia spellings

def test_julia_spellings_name_the_helpers_with_julia_dims_in_numpys_order():
    x = np.ones((4, 6))
    source = dp.differentiable(
        lambda a: np.fft.irfft(np.fft.rfft2(a, s=(3, 5), norm="ortho"), n=7, axis=0)
    ).source(x, engine="julia")
    # NumPy axes (0, 1) of a 2-d array are Julia dims (2, 1); ortho is one half-power
    assert "DiffProg.nprfftn(a1, (2, 1), (3, 5), 1)" in source
    assert "DiffProg.npirfftn(v1, (2,), (7,), 2)" in source  # irfft's default: 1/n
    source = dp.differentiable(
        lambda a: np.fft.ifftn(np.fft.fft(a, axis=0, norm="forward"), axes=(1, 1))
    ).source(x, engine="julia")
    assert "DiffProg.npfftn(a1, (2,), (4,), 2)" in source
    assert "DiffProg.npifftn(v1, (1, 1), (6, 6), 2)" in source
