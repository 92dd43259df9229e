"""Compiled C loops for dp.scan over small values (diffprog/engines/cscan.py): the same
bits as the Python loop, floating-point errors reported as NumPy reports them, and the
Python loop kept for bodies without a C form."""
import warnings

import numpy as np
import pytest

import diffprog as dp
from diffprog.engines import ckernel, cscan

pytestmark = pytest.mark.skipif(not ckernel.enabled() or ckernel.compiler() is None,
                                reason="no C compiler (or DIFFPROG_CKERNELS=0)")


def _kernels_used():
    return sum(k.runs for k in ckernel.kernels() if isinstance(k, cscan.ScanKernel))


def _twice(f, *args):
    """f's result from the Python loop (first call, kernels not built yet), then from
    the compiled loop once the kernels are built."""
    first = f(*args)
    ckernel.wait()
    before = _kernels_used()
    second = f(*args)
    assert _kernels_used() > before, ckernel.status()
    return first, second


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(a.view(np.int64), b.view(np.int64)) or \
        np.array_equal(a, b, equal_nan=True)


def lv(p, y0, steps=30, h=0.01):
    def rhs(y):
        return np.stack([p[0] * y[0] - p[1] * y[0] * y[1], p[2] * y[0] * y[1] - p[3] * y[1]])

    def step(carry, _):
        y, loss = carry
        k1 = rhs(y)
        k2 = rhs(y + 0.5 * h * k1)
        k3 = rhs(y + 0.5 * h * k2)
        k4 = rhs(y + h * k3)
        y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        return (y, loss + np.sum(y * y)), None
    (_, loss), _ = dp.scan(step, (y0, np.zeros(())), length=steps)
    return loss


def test_rk4_value_and_grad_bit_identical():
    p, y0 = np.array([1.5, 1.0, 1.0, 3.0]), np.array([1.0, 1.0])
    f = dp.value_and_grad(lv)
    (v1, g1), (v2, g2) = _twice(f, p, y0)
    _same(v1, v2)
    _same(g1, g2)


@pytest.mark.parametrize("n", [3, 9, 20])
def test_xs_ys_reverse_and_sums(n):
    rng = np.random.default_rng(n)
    xs = rng.standard_normal((5, n))
    c0 = rng.standard_normal(n)
    w = rng.standard_normal(n)

    def f(c0, xs, w):
        def step(c, x):
            new = np.maximum(np.sin(c) * w, x) - np.where(x > 0, np.cos(x), c / 3.0)
            return new, np.sum(new * x)
        c, ys = dp.scan(step, c0, xs, reverse=True)
        return np.sum(c) + np.sum(ys * ys)

    g = dp.value_and_grad(f, argnums=(0, 1, 2))
    (v1, g1), (v2, g2) = _twice(g, c0, xs, w)
    _same(v1, v2)
    for a, b in zip(g1, g2):
        _same(a, b)


def test_floating_point_errors_reported_as_numpy_does():
    def f(x):
        def step(c, _):
            return c / (c - c), None  # 0/0 at every step: invalid
        c, _ = dp.scan(step, x, length=3)
        return c

    g = dp.differentiable(f)
    x = np.array([1.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g(x)
    ckernel.wait()
    with pytest.warns(RuntimeWarning):
        out = g(x)
    assert np.isnan(out).all()
    with np.errstate(invalid="raise"):
        with pytest.raises(FloatingPointError):
            g(x)
    with np.errstate(all="ignore"):
        before = _kernels_used()
        assert np.isnan(g(x)).all()
        assert _kernels_used() > before


def test_body_without_c_form_keeps_python_loop():
    m = np.eye(2) * 0.5

    def f(x):
        def step(c, _):
            return m @ c, None
        c, _ = dp.scan(step, x, length=3)
        return np.sum(c)

    g = dp.grad(f)
    x = np.array([1.0, 2.0])
    assert np.allclose(g(x), np.full(2, 0.125))
    ckernel.wait()
    assert np.allclose(g(x), np.full(2, 0.125))


def test_pairwise_matches_numpy_sum():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 8, 9, 16, 17, 129, 300):
        a = rng.standard_normal(n) * 10.0 ** rng.integers(-8, 8, n)
        names = {f"e{k}": v for k, v in enumerate(a)}
        expr = cscan._pairwise(list(names))
        # evaluate the C expression in Python: same IEEE double arithmetic, same order
        got = eval("0.0 + " + expr, {}, {k: float(v) for k, v in names.items()})  # noqa: S307
        assert got == np.sum(a), n
