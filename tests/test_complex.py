"""Complex values through every transform, in JAX's convention, against finite
differences along the real and the imaginary direction of each element.

The convention (diffprog/primitives/core.py): a cotangent c of a complex z is the covector
dz -> Re(sum(c * dz)); grad of a real f(x + iy) is df/dx - i df/dy; grad(holomorphic=True)
is f'(z). Per-entry rules are checked by the generated tests (tests/primitives); this
module checks the API around them: transforms, pytrees, loops, vmap, the engines' fused
kernels, check_grads.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import diffprog as dp
from diffprog.testing import check_grads

from .helpers import assert_close, numeric_grad, numeric_jvp

RNG = np.random.default_rng(3)
Z = RNG.standard_normal(4) + 1j * RNG.standard_normal(4)
X = RNG.standard_normal(4)
A = np.eye(3) * 3 + RNG.standard_normal((3, 3)) + 1j * RNG.standard_normal((3, 3))


def _crandn(*shape):
    return RNG.standard_normal(shape) + 1j * RNG.standard_normal(shape)


REAL_VALUED = {
    "abs2": lambda z, x: np.sum(np.abs(z) ** 2 * x),
    "polynomial": lambda z, x: np.real(np.sum(z ** 3 - 2j * z * x + 1.5)),
    "exp-log": lambda z, x: np.sum(np.imag(np.exp(z) * np.log(z + 3.0)) + x),
    "angle": lambda z, x: np.sum(np.angle(z) * x),
    "parts": lambda z, x: np.sum(np.real(z) * np.imag(z) * x + np.conj(z).imag),
    "phasor": lambda z, x: np.sum(np.real(np.exp(1j * x) * z) ** 2),
    "matrix": lambda z, x: np.abs(np.sum(np.linalg.solve(A + np.diag(z[:3]), x[:3] + 0j))),
    "det": lambda z, x: np.real(np.linalg.det(A + np.outer(z[:3], x[:3]))),
    "slogdet": lambda z, x: np.linalg.slogdet(A * z[0])[1] + np.angle(np.linalg.slogdet(A + z[1])[0]),
    "indexing": lambda z, x: np.sum(np.abs(np.concatenate([z[::-1], z[1:3] * x[:2]])) ** 2),
    "matmul": lambda z, x: np.real(np.sum((np.outer(z, x) @ np.conj(z)) * z[::-1])),
}


@pytest.mark.parametrize("name", sorted(REAL_VALUED))
def test_grad_of_a_real_function_of_complex_values(name):
    f = REAL_VALUED[name]
    gz, gx = dp.grad(f, argnums=(0, 1))(Z, X)
    assert gz.dtype == Z.dtype and gx.dtype == X.dtype
    assert_close(gz, numeric_grad(f, [Z, X], 0), rtol=1e-6, atol=1e-8, what=f"{name} d/dz")
    assert_close(gx, numeric_grad(f, [Z, X], 1), rtol=1e-6, atol=1e-8, what=f"{name} d/dx")


@pytest.mark.parametrize("name", sorted(REAL_VALUED))
def test_jvp_with_complex_tangents(name):
    f = REAL_VALUED[name]
    tz, tx = _crandn(4), RNG.standard_normal(4)
    value, tangent = dp.jvp(f, (Z, X), (tz, tx))
    assert_close(value, f(Z, X), rtol=1e-12)
    assert_close(tangent, numeric_jvp(f, [Z, X], [tz, tx]), rtol=1e-6, atol=1e-8)


def test_vjp_and_jvp_of_a_complex_output_are_transposes():
    def f(z, x):  # neither holomorphic nor real: conj, abs and a real input mixed in
        return np.exp(z) * x + np.conj(z) ** 2 + np.abs(z) * 1j
    out, pullback = dp.vjp(f, Z, X)
    c = _crandn(4)
    gz, gx = pullback(c)
    tz, tx = _crandn(4), RNG.standard_normal(4)
    _, t_out = dp.jvp(f, (Z, X), (tz, tx))
    # <c, J t> = <J^T c, t> with the pairing Re(sum(a * b))
    left = np.real(np.sum(c * t_out))
    right = np.real(np.sum(gz * tz)) + np.real(np.sum(gx * tx))
    assert left == pytest.approx(right, rel=1e-12)
    assert_close(t_out, numeric_jvp(f, [Z, X], [tz, tx]), rtol=1e-6, atol=1e-8)
    assert gx.dtype == np.float64


def test_holomorphic_derivatives():
    f = lambda z: np.sin(z) * z ** 2 + np.exp(2j * z)  # noqa: E731
    df = lambda z: np.cos(z) * z ** 2 + 2 * z * np.sin(z) + 2j * np.exp(2j * z)  # noqa: E731
    z0 = 0.3 - 0.7j
    assert dp.grad(f, holomorphic=True)(z0) == pytest.approx(df(z0), rel=1e-12)
    value, g = dp.value_and_grad(f, holomorphic=True)(z0)
    assert value == pytest.approx(f(z0)) and g == pytest.approx(df(z0), rel=1e-12)
    assert_close(dp.jacobian(f, holomorphic=True)(Z), np.diag(df(Z)), rtol=1e-12)
    assert_close(dp.jacobian(f, mode="fwd", holomorphic=True)(Z), np.diag(df(Z)), rtol=1e-12)
    h = dp.hessian(lambda z: np.sum(z ** 4), holomorphic=True)(Z)
    assert_close(h, np.diag(12 * Z ** 2), rtol=1e-12)


def test_jacobians_follow_jacrev_and_jacfwd():
    f = lambda z: np.abs(z) ** 2 + np.real(z[::-1])  # noqa: E731  real outputs of complex z
    J = dp.jacobian(f)(Z)
    for i in range(4):  # each row is the gradient of one output
        assert_close(J[i], numeric_grad(lambda z: f(z)[i], [Z], 0), rtol=1e-6, atol=1e-8)
    g = lambda x: np.exp(1j * x) * x  # noqa: E731  complex outputs of real x
    assert_close(dp.jacobian(g, mode="fwd")(X), np.diag(np.exp(1j * X) * (1 + 1j * X)), rtol=1e-12)


def test_complex64_stays_single_precision():
    z = Z.astype(np.complex64)
    g = dp.grad(lambda z: np.sum(np.abs(z * z)))(z)
    assert g.dtype == np.complex64
    assert_close(g, 2 * np.conj(z), rtol=1e-5)  # |z z| = |z|^2


def test_python_complex_scalars_are_traced_arguments():
    f = dp.differentiable(lambda z, w: z * w)
    assert f(1 + 2j, 2.0) == (1 + 2j) * 2.0
    assert f(3j, 2.0) == 6j  # traced, not baked in: a new value reuses the program
    assert dp.grad(lambda z: np.real(z * np.conj(z)))(3 + 4j) == 6 - 8j


def test_pytrees_of_complex_and_real_leaves():
    params = {"z": Z, "x": X, "name": "cubic"}  # a string leaf: static
    def f(p):
        return np.sum(np.abs(p["z"] * p["x"]) ** 3)
    g = dp.grad(f)(params)
    assert g["name"] is None
    assert g["z"].dtype == np.complex128 and g["x"].dtype == np.float64
    assert_close(g["z"], numeric_grad(lambda z: f({**params, "z": z}), [Z], 0), rtol=1e-6)


# ------------------------------------------------------------------ loops and branches

def _rotate(z, w, steps=20):
    def step(carry, _):
        carry = carry * np.exp(1j * w * 0.1) - 0.05 * carry * np.abs(carry) ** 2
        return carry, np.real(carry)
    final, trace = dp.scan(step, z, None, length=steps)
    return np.sum(np.abs(final) ** 2) + np.sum(trace ** 2)


def test_scan_with_a_complex_carry():
    w = np.array([0.5, -1.0, 2.0, 0.1])
    gz, gw = dp.grad(_rotate, argnums=(0, 1))(Z, w)
    assert_close(gz, numeric_grad(_rotate, [Z, w], 0), rtol=1e-6, atol=1e-8)
    assert_close(gw, numeric_grad(_rotate, [Z, w], 1), rtol=1e-6, atol=1e-8)
    tz = _crandn(4)
    _, t = dp.jvp(_rotate, (Z, w), (tz, np.zeros(4)))
    assert t == pytest.approx(numeric_jvp(_rotate, [Z, w], [tz, None]), rel=1e-6)


def test_cond_and_while_loop_with_complex_values():
    def f(z, flag):
        z = dp.cond(flag > 0, lambda v: v * (1 + 1j), lambda v: np.conj(v), z)
        z = dp.while_loop(lambda v: np.sum(np.abs(v)) < 50.0, lambda v: v * (1.5 - 0.5j), z)
        return np.sum(np.real(z) ** 2 - np.imag(z))
    for flag in (1.0, -1.0):
        g = dp.grad(f)(Z, flag)
        assert_close(g, numeric_grad(lambda z: f(z, flag), [Z], 0), rtol=1e-6, atol=1e-8)


def test_vmap_over_complex_values():
    zs = _crandn(5, 3)
    f = lambda z, x: np.sum(np.abs(np.exp(z) * x) ** 2)  # noqa: E731
    got = dp.vmap(dp.grad(f), in_axes=(0, None))(zs, X[:3])
    for k in range(5):
        assert_close(got[k], dp.grad(f)(zs[k], X[:3]), rtol=1e-12)
    assert_close(dp.vmap(lambda z: np.conj(z) * z)(zs), np.conj(zs) * zs, rtol=0, atol=0)


# ------------------------------------------------------------------ engines and checks

def test_large_complex_arrays_through_fused_blocks_equal_numpy():
    # 1e5 elements: the numpy engine fuses elementwise runs into blocks; complex values
    # stay out of its compiled C kernels (float64 only) and must equal NumPy bit for bit
    z = RNG.standard_normal(100_000) + 1j * RNG.standard_normal(100_000)
    f = lambda z: np.sin(z) * z + np.exp(-z) * 2.0 - np.conj(z)  # noqa: E731
    np.testing.assert_array_equal(dp.differentiable(f)(z), f(z))
    loss = lambda z: np.sum(np.abs(f(z)) ** 2)  # noqa: E731
    g = dp.grad(loss)(z)
    small = z[:3]
    assert_close(dp.grad(loss)(small), numeric_grad(loss, [small], 0), rtol=1e-6)
    assert_close(g[:3], dp.grad(loss)(small), rtol=1e-12)


def test_check_grads_understands_complex_arguments_and_outputs():
    report = check_grads(lambda z, x: np.exp(z) * x + np.conj(z) * np.abs(z), (Z, X), order=2)
    assert report.passed and len(report.results) == 12


def test_check_grads_names_a_conjugated_rule():
    wrong = dp.custom_vjp(lambda z: np.real(z * z))
    wrong.defvjp(lambda g, z: (2 * np.conj(z) * g,))  # PyTorch's convention, not JAX's
    report = check_grads(lambda z: np.sum(wrong(z)), (Z,), modes=("rev",), raise_=False)
    assert not report.passed
    assert "conjugate of the expected gradient" in str(report)
    right = dp.custom_vjp(lambda z: np.real(z * z))
    right.defvjp(lambda g, z: (2 * z * g,))
    assert check_grads(lambda z: np.sum(right(z)), (Z,), modes=("rev",)).passed


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_odeint_of_a_complex_state(method):
    # a two-level Schrodinger equation, dy/dt = -i w H y: the transition probability
    from diffprog.sciml import odeint
    H = np.array([[1.0, 0.3], [0.3, -1.0]])

    def loss(y0, w):
        ys = odeint(lambda y, t, w: -1j * w * (H @ y), y0, np.linspace(0.0, 1.0, 5), w,
                    method=method)
        return np.abs(ys[-1, 1]) ** 2

    y0, w = np.array([1.0 + 0.2j, 0.1 - 0.3j]), 0.7
    gy, gw = dp.grad(loss, argnums=(0, 1))(y0, w)
    rtol = 1e-6 if method == "rk4" else 1e-5  # dopri5: the step controller is held fixed
    assert_close(gy, numeric_grad(loss, [y0, w], 0), rtol=rtol, atol=1e-8)
    assert gw == pytest.approx(float(numeric_grad(loss, [y0, w], 1)), rel=rtol)


def test_complex_products_by_one_are_numpys():
    # x * 1 is no identity on complex values: NumPy multiplies by 1+0j, so an infinite
    # part gives a NaN part ((inf+0j) * 1 is inf+nanj); tracing must not drop the product
    z = np.array([np.inf + 0j, 1.0 - 0.0j, complex(np.nan, np.inf)])
    with np.errstate(invalid="ignore"):
        for f in (lambda z: z * 1, lambda z: 1.0 * z, lambda z: z / 1):
            np.testing.assert_array_equal(dp.differentiable(f)(z), f(z))


# ------------------------------------------------------------------ review findings

def test_a_complex_cotangent_for_a_real_output_is_refused():
    _, pullback = dp.vjp(lambda x: x ** 2, X[:2])
    with pytest.raises(dp.ArgumentError, match="complex cotangent for a real output"):
        pullback(np.array([1j, 2 + 1j]))


def test_parts_of_a_complex_scalar_with_constant_cotangents():
    assert dp.grad(lambda z: np.imag(z) * 2.0)(1 + 2j) == -2j
    assert dp.grad(lambda z: np.real(z) + np.imag(z))(1 + 2j) == 1 - 1j
    g = dp.grad(lambda z: np.imag(np.sum(z)) + np.real(np.sum(z)))(np.array([1 + 2j, 3j]))
    np.testing.assert_array_equal(g, [1 - 1j, 1 - 1j])


def test_a_negative_real_base_with_a_complex_exponent():
    b, e = np.array([-2.0, 1.5]), np.array([0.3 + 0.2j, 1.1 - 0.4j])
    g = dp.grad(lambda e: np.real(np.sum(b ** e)))(e)
    assert_close(g, b ** e * np.log(b + 0j), rtol=1e-12)  # JAX's value
    _, t = dp.jvp(lambda b, e: b ** e, (b, e), (np.ones(2), np.zeros(2, complex)))
    assert np.all(np.isfinite(t))


def test_python_and_numpy_scalars_do_not_share_a_program():
    # a Python complex is weakly typed (float32 * 1j is complex64), np.complex128 is not
    def f(x, c):
        y = x * c
        return np.sum(y) if y.dtype == np.complex64 else -np.sum(y)
    F = dp.differentiable(f)
    x32 = np.array([1.0, 2.0], np.float32)
    for c in (1j, np.complex128(1j), 1j, 2.0, np.float64(2.0)):
        assert F(x32, c) == f(x32, c)


def _same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if not np.array_equal(a, b, equal_nan=True):
        return False
    parts = (np.real, np.imag) if np.iscomplexobj(a) else (np.real,)
    return all(np.array_equal(np.signbit(p(a)), np.signbit(p(b))) for p in parts)


SIGNED = np.array([complex(-0.0, -0.0), complex(np.inf, 0.0), complex(np.nan, -np.inf),
                   complex(1.0, -0.0), 3 - 4j])


@pytest.mark.parametrize("f", [
    lambda v: v + 0, lambda v: v + 0.0, lambda v: v + (-0.0), lambda v: v - 0.0, lambda v: v * 1,
    lambda v: v / 1, lambda v: v ** 1, np.reciprocal, np.nan_to_num,
    lambda v: np.pad(v, 1, constant_values=1 + 2j),
    lambda v: np.interp(np.array([0.5, 2.5]), np.arange(5.0), v),
    lambda v: np.diagonal(np.outer(v, v)), lambda v: np.diag(np.diag(v)),
], ids=["+0", "+0.0", "+-0.0", "-0.0", "*1", "/1", "**1", "reciprocal", "nan_to_num", "pad",
        "interp", "diagonal", "diag"])
def test_signed_zeros_and_special_parts_are_numpys(f):
    for v in (SIGNED, SIGNED.real.copy()):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", np.exceptions.ComplexWarning)  # pad of a real v
            expected = f(v)
            got = dp.differentiable(f)(v)
        assert _same_bits(got, expected), (got, expected)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, np.float16, np.float32])
@pytest.mark.parametrize("name", ["mean", "var", "std"])
def test_mean_and_var_divide_as_numpy_does(dtype, name):
    # NumPy divides by an intp count: complex64 in the complex128 loop; np.mean sums
    # float16 in float32, np.var does not
    rng = np.random.default_rng(5)
    for _ in range(5):
        x = rng.standard_normal((7, 13)) + (1j * rng.standard_normal((7, 13))
                                            if np.dtype(dtype).kind == "c" else 0)
        x = x.astype(dtype)
        f = getattr(np, name)
        for axis in (None, 0, 1):
            got, expected = dp.differentiable(lambda v: f(v, axis=axis))(x), f(x, axis=axis)
            assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_round_of_complex_values_rounds_each_part():
    z = np.random.default_rng(0).standard_normal(500) * 100 * (1 + 1j)
    for decimals in (0, 1, 3, -1):
        np.testing.assert_array_equal(dp.differentiable(lambda v: np.round(v, decimals))(z),
                                      np.round(z, decimals))


def test_entries_without_complex_rules_are_refused_inside_loop_bodies():
    special = pytest.importorskip("scipy.special")

    def f(z):
        def step(c, _):
            return special.erf(c * 0.5), None
        final, _ = dp.scan(step, z, None, length=3)
        return np.sum(np.abs(final))
    with pytest.raises(dp.NotDifferentiableError, match="'erf'"):
        dp.grad(f)(Z)
