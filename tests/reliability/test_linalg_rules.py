"""Linear-algebra rules against finite differences of NumPy's own functions.

``check_grads`` perturbs every input element independently, so a rule that assumes
structure NumPy does not (a symmetric input to cholesky, an invertible input to det)
fails here even where the table's own cases, made on the assumed structure, pass.
"""
from __future__ import annotations

import numpy as np
import pytest

import diffprog as dp
from diffprog.testing import check_grads


def _spd(rng, *shape):
    x = rng.standard_normal(shape)
    n = shape[-1]
    return x @ np.swapaxes(x, -1, -2) + n * np.eye(n)


def _nonsymmetric_spd(rng, *shape):
    """SPD lower triangle, unrelated noise above the diagonal (NumPy never reads it)."""
    a = _spd(rng, *shape)
    return a + np.triu(rng.standard_normal(shape), 1)


def _projected(fn, out_shape, seed=3):
    w = np.random.default_rng(seed).standard_normal(out_shape)
    return lambda *xs: np.sum(fn(*xs) * w)


# ------------------------------------------------------------------ cholesky

@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4)])
def test_cholesky_gradient_is_numpys_lower_triangle_only(shape):
    a = _nonsymmetric_spd(np.random.default_rng(0), *shape)
    check_grads(_projected(np.linalg.cholesky, shape), (a,), order=2)


@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4)])
def test_cholesky_upper_reads_the_upper_triangle_as_numpy_does(shape):
    a = np.swapaxes(_nonsymmetric_spd(np.random.default_rng(1), *shape), -1, -2)
    f = dp.differentiable(lambda a: np.linalg.cholesky(a, upper=True))
    np.testing.assert_allclose(f(a), np.linalg.cholesky(a, upper=True), rtol=1e-12, atol=1e-12)
    check_grads(_projected(lambda a: np.linalg.cholesky(a, upper=True), shape), (a,), order=2)


def test_cholesky_gradient_ignores_the_strict_upper_triangle():
    rng = np.random.default_rng(2)
    a = _nonsymmetric_spd(rng, 4, 4)
    g = dp.grad(_projected(np.linalg.cholesky, (4, 4)))(a)
    assert np.all(np.triu(g, 1) == 0)
    upper_tangent = np.triu(rng.standard_normal((4, 4)), 1)
    _, t = dp.jvp(np.linalg.cholesky, (a,), (upper_tangent,))
    assert np.all(t == 0)


def test_cholesky_gradient_agrees_with_the_symmetric_rule_on_symmetric_perturbations():
    rng = np.random.default_rng(4)
    a = _spd(rng, 4, 4)
    s = rng.standard_normal((4, 4))
    s = s + s.T
    f = _projected(np.linalg.cholesky, (4, 4))
    along = dp.grad(lambda t: f(a + t * s))(0.0)
    np.testing.assert_allclose(along, np.sum(dp.grad(f)(a) * s), rtol=1e-12)
