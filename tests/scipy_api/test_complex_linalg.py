"""Complex inputs to the scipy.linalg / scipy.signal front ends: Hermitian solvers read one
triangle and mirror it *conjugated*, ``trans="C"`` is the conjugate transpose, and
``correlate`` conjugates its second operand (a reviewer found each one computed with
plain transposes). Values as SciPy's; gradients of a real loss with respect to the real
and imaginary parts as finite differences of SciPy's own function."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl
import scipy.signal as sig

import diffprog as dp

from ..helpers import numeric_grad

dp.scipy_api.install_all()

RNG = np.random.default_rng(7)
M = RNG.standard_normal((3, 3)) + 1j * RNG.standard_normal((3, 3))
HPD = M @ M.conj().T + 3 * np.eye(3)
HPD_ODD_DIAGONAL = HPD + np.diag([0.3j, -0.2j, 0.1j])  # LAPACK ignores Im(diagonal)
L = np.tril(M) + 3 * np.eye(3)
B = RNG.standard_normal(3) + 1j * RNG.standard_normal(3)
SIGNAL = RNG.standard_normal(6) + 1j * RNG.standard_normal(6)
KERNEL = RNG.standard_normal(3) + 1j * RNG.standard_normal(3)

CASES = {
    "cho_solve_upper": (lambda a: sl.cho_solve(sl.cho_factor(a), B), HPD),
    "cho_solve_lower": (lambda a: sl.cho_solve(sl.cho_factor(a, lower=True), B), HPD),
    "cholesky_upper": (lambda a: sl.cholesky(a), HPD_ODD_DIAGONAL),
    "cholesky_lower": (lambda a: sl.cholesky(a, lower=True), HPD_ODD_DIAGONAL),
    "solve_pos": (lambda a: sl.solve(a, B, assume_a="pos"), HPD_ODD_DIAGONAL),
    "solve_her_lower": (lambda a: sl.solve(a, B, assume_a="her", lower=True), HPD_ODD_DIAGONAL),
    "solve_sym": (lambda a: sl.solve(a, B, assume_a="sym"), M + 3 * np.eye(3)),
    "inv_pos": (lambda a: sl.inv(a, assume_a="pos"), HPD_ODD_DIAGONAL),
    "solve_triangular_C": (lambda a: sl.solve_triangular(a, B, lower=True, trans="C"), L),
    "solve_triangular_2": (lambda a: sl.solve_triangular(a.T, B, trans=2), L),
    "solve_triangular_T": (lambda a: sl.solve_triangular(a, B, lower=True, trans="T"), L),
    "correlate_full": (lambda a: sig.correlate(a, KERNEL), SIGNAL),
    "correlate_same": (lambda a: sig.correlate(a, KERNEL, mode="same"), SIGNAL),
    "correlate_valid_swapped": (lambda a: sig.correlate(KERNEL, a, mode="valid"), SIGNAL),
    "correlate_kernel_traced": (lambda k: sig.correlate(SIGNAL, k), KERNEL),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_matches_scipy(name):
    fn, a = CASES[name]
    got, want = dp.differentiable(fn)(a), fn(a)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_of_real_and_imaginary_parts(name):
    fn, a = CASES[name]

    def loss(re, im):
        return np.sum(np.abs(fn(re + 1j * im)) ** 2)

    args = (a.real.copy(), a.imag.copy())
    got = dp.grad(loss, argnums=(0, 1))(*args)
    for i in (0, 1):
        np.testing.assert_allclose(got[i], numeric_grad(loss, args, i), rtol=1e-6, atol=1e-7)
