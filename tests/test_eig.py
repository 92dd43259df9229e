"""np.linalg.eig and eigvals (issue 16): NumPy's values, always complex; derivatives of
the eigenvalues and of NumPy's own eigenvectors (LAPACK's normalisation: unit 2-norm,
real largest component) against finite differences of NumPy; vmap; no derivative at a
repeated eigenvalue."""
from __future__ import annotations

import numpy as np
import pytest

import diffprog as dp
from tests.helpers import assert_close, numeric_grad


def _matrix(seed, n=4, complex_=False, batch=()):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(batch + (n, n))
    return a + 1j * rng.standard_normal(batch + (n, n)) if complex_ else a


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("batch", [(), (2,)])
def test_values_are_numpys_bit_for_bit_and_complex(complex_, batch):
    a = _matrix(0, 4, complex_, batch)
    w, v = dp.differentiable(np.linalg.eig)(a)
    w0, v0 = np.linalg.eig(a)
    assert w.dtype == v.dtype == np.complex128
    assert np.array_equal(w, w0) and np.array_equal(v, v0)
    vals = dp.differentiable(np.linalg.eigvals)(a)
    assert vals.dtype == np.complex128 and np.array_equal(vals, np.linalg.eigvals(a))


def test_a_real_spectrum_is_still_complex():
    """NumPy gives a real array where every eigenvalue is real; a traced eig cannot know
    the values, so its dtype is complex (as in JAX), with the same values."""
    a = np.diag([1.0, 2.0, 3.0]) + np.triu(np.ones((3, 3)), 1)
    w, v = dp.differentiable(np.linalg.eig)(a)
    w0, v0 = np.linalg.eig(a)
    assert w0.dtype == np.float64 and w.dtype == np.complex128
    assert np.array_equal(w, w0) and np.array_equal(v, v0)
    assert np.array_equal(np.real(w), w0)


def test_result_is_numpys_named_tuple_and_float32_gives_complex64():
    a = _matrix(1, 3).astype(np.float32)
    res = dp.differentiable(np.linalg.eig)(a)
    assert type(res) is type(np.linalg.eig(a))
    assert res.eigenvalues.dtype == res.eigenvectors.dtype == np.complex64
    assert dp.differentiable(np.linalg.eigvals)(a).dtype == np.complex64
    ints = dp.differentiable(np.linalg.eigvals)(np.array([[2, 1], [0, 3]]))
    assert ints.dtype == np.complex128


@pytest.mark.parametrize("complex_", [False, True])
def test_gradients_of_numpys_eigenvectors(complex_):
    """Any function of V (not only gauge-invariant ones): NumPy's phase convention is
    differentiated through."""
    a = _matrix(2, 4, complex_)
    rng = np.random.default_rng(9)
    weights = rng.standard_normal((4, 4)) + 1j * rng.standard_normal((4, 4))

    def f(a):
        w, v = np.linalg.eig(a)
        return np.real(np.sum(v * weights)) + np.sum(np.abs(w) ** 2)

    assert_close(dp.grad(f)(a), numeric_grad(f, [a], 0), rtol=1e-5, atol=1e-6)


def test_gauge_invariant_functions_of_the_eigenvectors():
    """|V|^2 and the projector v v^H do not depend on the eigenvectors' phases."""
    a = _matrix(3, 3)

    def f(a):
        w, v = np.linalg.eig(a)
        p = v[:, 0:1] @ np.conj(v[:, 0:1]).T  # projector onto the first eigenvector
        return np.sum(np.abs(v) ** 2 * np.arange(3.0)) + np.real(np.sum(p * p.T))

    assert_close(dp.grad(f)(a), numeric_grad(f, [a], 0), rtol=1e-5, atol=1e-6)


def test_eigenvalue_derivatives_against_the_closed_form():
    """A 2x2 real matrix with complex eigenvalues: w = t/2 +- sqrt(t^2/4 - d)."""
    a = np.array([[1.0, -2.0], [3.0, 0.5]])

    def imag_part(a):
        return np.sum(np.abs(np.imag(np.linalg.eigvals(a))))

    t, d = np.trace(a), np.linalg.det(a)
    root = np.sqrt(d - t * t / 4)  # |Im w| of both eigenvalues
    # d root = (dd - t dt / 2) / (2 root); dd = adj(a)^T : da, dt = I : da
    expected = 2 * (np.linalg.det(a) * np.linalg.inv(a).T - t / 2 * np.eye(2)) / (2 * root)
    assert_close(dp.grad(imag_part)(a), expected, rtol=1e-10, atol=1e-12)


def test_vmap_matches_the_stack():
    a = _matrix(4, 3, batch=(5,))
    w, v = dp.vmap(np.linalg.eig)(a)
    w0, v0 = np.linalg.eig(a)
    assert np.array_equal(w, w0.astype(complex)) and np.array_equal(v, v0.astype(complex))

    def f(a):
        return np.sum(np.real(np.linalg.eigvals(a)) ** 2)

    g = dp.vmap(dp.grad(f))(a)
    for i in range(5):
        assert_close(g[i], dp.grad(f)(a[i]), rtol=1e-10, atol=1e-12)


def test_jvp_of_eigvals_is_diag_of_vinv_da_v():
    a, da = _matrix(5, 4), _matrix(6, 4)
    _, dw = dp.jvp(np.linalg.eigvals, (a,), (da,))
    w, v = np.linalg.eig(a)
    assert_close(dw, np.diag(np.linalg.solve(v, da) @ v), rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_repeated_eigenvalue_has_no_eigenvector_derivative():
    """At a repeated eigenvalue dV has 1/0: not finite, never a silent number."""
    a = np.eye(3)

    def f(a):
        return np.real(np.sum(np.linalg.eig(a)[1]))

    assert not np.all(np.isfinite(dp.grad(f)(a)))
