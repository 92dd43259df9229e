"""scipy.linalg inside differentiated functions: values as SciPy's and gradients as
finite differences of SciPy's functions (which read one triangle, or the bands)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl

import diffprog as dp

from .helpers import assert_grads_match_scipy, assert_matches_scipy

dp.scipy_api.install_all()

RNG = np.random.default_rng(0)
A = RNG.standard_normal((4, 4))
SPD = A @ A.T + 4 * np.eye(4)
B = RNG.standard_normal((4, 2))
AB = RNG.standard_normal((4, 4)) + np.array([[0.0], [0.0], [5.0], [0.0]])  # (l, u) = (1, 2)

CASES = {
    "solve_triangular_upper": (lambda a, b: sl.solve_triangular(a, b), (SPD, B)),
    "solve_triangular_lower": (lambda a, b: sl.solve_triangular(a, b, lower=True), (SPD, B)),
    "solve_triangular_trans_unit": (lambda a, b: sl.solve_triangular(a, b[:, 0], trans="T",
                                                                      unit_diagonal=True), (SPD, B)),
    "cholesky": (lambda a: sl.cholesky(a), (SPD,)),
    "cholesky_lower": (lambda a: sl.cholesky(a, lower=True), (SPD + 0.1 * A,)),
    "cho_solve": (lambda a, b: sl.cho_solve(sl.cho_factor(a), b), (SPD, B)),
    "cho_solve_lower": (lambda a, b: sl.cho_solve(sl.cho_factor(a, lower=True), b), (SPD + 0.1 * A, B)),
    "solve_banded": (lambda ab, b: sl.solve_banded((1, 2), ab, b), (AB, B)),
    "solve": (lambda a, b: sl.solve(a, b), (A + 3 * np.eye(4), B)),
    "solve_pos": (lambda a, b: sl.solve(a, b, assume_a="pos"), (SPD + 0.1 * A, B)),
    "inv": (lambda a: sl.inv(a), (A + 3 * np.eye(4),)),
    "det": (lambda a: sl.det(a), (A,)),
    "sqrtm": (lambda a: sl.sqrtm(a), (SPD,)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_scipy(name):
    fn, args = CASES[name]
    assert_matches_scipy(fn, args, rtol=1e-9, atol=1e-11)
    weights = np.cos(np.arange(np.size(fn(*args)))).reshape(np.shape(fn(*args)))
    assert_grads_match_scipy(lambda *a: fn(*a) * weights, args, list(range(len(args))), rtol=1e-5)


def test_sqrtm_second_order():
    # trace(sqrtm(a) @ sqrtm(a)) = trace(a) for every a: gradient I, Hessian 0
    f = lambda a: np.trace(sl.sqrtm(a) @ sl.sqrtm(a))
    np.testing.assert_allclose(dp.grad(f)(SPD), np.eye(4), atol=1e-9)
    np.testing.assert_allclose(dp.hessian(f)(SPD), np.zeros((4, 4, 4, 4)), atol=1e-8)
    from diffprog.testing import check_grads
    check_grads(lambda a: np.sum(np.sin(sl.sqrtm(a))), (SPD,), order=2)
