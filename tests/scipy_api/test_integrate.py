"""scipy.integrate.odeint / solve_ivp inside differentiated functions: routed to
diffprog.sciml.odeint (dopri5 at SciPy's tolerances)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import odeint, solve_ivp

import diffprog as dp
from diffprog.errors import UnsupportedFunctionError

from .helpers import scipy_grad

dp.scipy_api.install_all()

T = np.linspace(0.0, 2.0, 9)


def rhs(y, t, k):
    return np.stack([-k * y[0] + np.sin(t), k * y[0] - 0.5 * y[1]])


def test_odeint_matches_scipy_and_its_gradient():
    y0 = np.array([1.0, 0.5])
    fn = lambda k, y0: odeint(rhs, y0, T, args=(k,))
    got = dp.differentiable(fn)(0.7, y0)
    assert got.shape == (9, 2)
    np.testing.assert_allclose(got, fn(0.7, y0), rtol=1e-6, atol=1e-7)
    g_k, g_y0 = dp.grad(lambda k, y0: np.sum(fn(k, y0) ** 2), argnums=(0, 1))(0.7, y0)
    np.testing.assert_allclose(g_k, scipy_grad(lambda k: np.sum(fn(k, y0) ** 2), (0.7,), 0),
                               rtol=1e-5)
    np.testing.assert_allclose(g_y0, scipy_grad(lambda y: np.sum(fn(0.7, y) ** 2), (y0,), 0),
                               rtol=1e-5)


def test_odeint_tfirst_and_scalar_state():
    fn = lambda k: odeint(lambda t, y, k: -k * y, 1.0, T, args=(k,), tfirst=True,
                          rtol=1e-10, atol=1e-12)
    got = dp.differentiable(fn)(1.3)
    np.testing.assert_allclose(got, fn(1.3), rtol=1e-8)
    np.testing.assert_allclose(got[:, 0], np.exp(-1.3 * T), rtol=1e-8)


def test_solve_ivp_matches_scipy_at_t_eval():
    y0 = np.array([1.0, 0.5])

    def fn(k, t_eval=T):
        sol = solve_ivp(lambda t, y, k: rhs(y, t, k), (0.0, 2.0), y0, t_eval=t_eval,
                        args=(k,), rtol=1e-9, atol=1e-11)
        return sol.y
    got = dp.differentiable(fn)(0.7)
    assert got.shape == (2, 9)
    np.testing.assert_allclose(got, fn(0.7), rtol=1e-6, atol=1e-8)
    late = np.array([0.5, 1.0, 2.0])  # t_eval not starting at t0
    np.testing.assert_allclose(dp.differentiable(lambda k: fn(k, late))(0.7), fn(0.7, late),
                               rtol=1e-6, atol=1e-8)
    g = dp.grad(lambda k: np.sum(fn(k)))(0.7)
    np.testing.assert_allclose(g, scipy_grad(lambda k: np.sum(fn(k)), (0.7,), 0), rtol=1e-5)


def test_solve_ivp_backward_in_time():
    fn = lambda k: solve_ivp(lambda t, y: -k * y, (2.0, 0.0), np.array([1.0]),
                             t_eval=np.array([2.0, 1.0, 0.0]), rtol=1e-10, atol=1e-12).y
    np.testing.assert_allclose(dp.differentiable(fn)(0.8), fn(0.8), rtol=1e-7)


def test_what_cannot_be_reproduced_names_the_fix():
    y0 = np.array([1.0])
    with pytest.raises(UnsupportedFunctionError, match=r"(?s)solve_ivp without t_eval.*diffprog\.sciml\.odeint"):
        dp.differentiable(lambda k: solve_ivp(lambda t, y: -k * y, (0, 1), y0).y)(1.0)
    with pytest.raises(UnsupportedFunctionError, match=r"(?s)full_output.*diffprog\.sciml\.odeint"):
        dp.differentiable(lambda k: odeint(lambda y, t: -k * y, y0, T, full_output=True)[0])(1.0)
