"""odeint against scipy.integrate.solve_ivp and finite-difference gradients."""
from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

import diffprog as dp
from diffprog.sciml import odeint
from diffprog.testing import check_grads

from ..helpers import assert_close

scipy_integrate = pytest.importorskip("scipy.integrate")

P = np.array([1.5, 1.0, 3.0, 1.0])
Y0 = np.array([1.0, 1.0])
T = np.linspace(0.0, 5.0, 11)


def lotka_volterra(y, t, p):
    return np.stack([p[0] * y[0] - p[1] * y[0] * y[1], -p[2] * y[1] + p[3] * y[0] * y[1]])


def _reference(y0=Y0, p=P):
    sol = scipy_integrate.solve_ivp(lambda t, y: lotka_volterra(y, t, p), (T[0], T[-1]), y0,
                                    t_eval=T, rtol=1e-11, atol=1e-12)
    return sol.y.T


@pytest.mark.parametrize("method,kw,tol", [("rk4", {"steps_per_interval": 20}, 2e-6),
                                           ("dopri5", {"rtol": 1e-8, "atol": 1e-10}, 1e-6)])
def test_matches_solve_ivp(method, kw, tol):
    ys = odeint(lotka_volterra, Y0, T, P, method=method, **kw)
    assert ys.shape == (len(T), 2)
    assert_close(ys, _reference(), rtol=tol, atol=tol)


def test_time_dependent_rhs_and_traced_call():
    f = lambda y, t, w: np.cos(w * t) * y  # noqa: E731  y = exp(sin(w t) / w)
    w = np.array(2.0)
    expected = np.exp(np.sin(w * T) / w)
    for method in ("rk4", "dopri5"):
        ys = dp.differentiable(lambda w: odeint(f, np.array([1.0]), T, w, method=method))(w)
        assert_close(ys[:, 0], expected, rtol=1e-5, atol=1e-6)


def _loss(method, **kw):
    return lambda y0, p: np.sum(odeint(lotka_volterra, y0, T, p, method=method, **kw) ** 2)


def test_rk4_gradients_match_finite_differences():
    check_grads(_loss("rk4"), (Y0, P))


def test_dopri5_gradients_match_finite_differences():
    """Step sizes are constants for the gradient: it is the gradient of the discrete
    solution. Finite differences also see the controller move the steps, an effect of
    the order of the tolerance: at rtol=1e-9 the two agree to 1e-5."""
    check_grads(_loss("dopri5", rtol=1e-9, atol=1e-12), (Y0, P), rtol=1e-5)


def test_dopri5_bounded_steps_is_differentiable_twice():
    f = lambda k: odeint(lambda y, t, k: -k * y, np.array([1.0]), np.array([0.0, 1.0]), k,  # noqa
                         method="dopri5", max_steps=30, rtol=1e-10, atol=1e-12)[-1, 0]
    k = np.array(0.7)
    assert_close(dp.grad(f)(k), -np.exp(-k), rtol=1e-7)
    assert_close(dp.grad(dp.grad(f))(k), np.exp(-k), rtol=1e-6)


def test_gradient_with_respect_to_initial_state_matches_solve_ivp_sensitivity():
    eps = 1e-6
    loss = lambda y0: np.sum(odeint(lotka_volterra, y0, T, P, method="rk4",  # noqa: E731
                                    steps_per_interval=40)[-1])
    g = dp.grad(loss)(Y0)
    fd = [(np.sum(_reference(Y0 + eps * e)[-1]) - np.sum(_reference(Y0 - eps * e)[-1])) / (2 * eps)
          for e in np.eye(2)]
    assert_close(g, np.array(fd), rtol=1e-4)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_float32_state_stays_float32(method):
    """float64 times must not promote a float32 state (values, then gradients)."""
    decay = lambda y, t, k: -k * y  # noqa: E731
    t = np.linspace(0.0, 1.0, 5)
    ys = odeint(decay, np.ones(2, np.float32), t, np.float32(1.0), method=method, rtol=1e-4,
                atol=1e-6)
    assert ys.dtype == np.float32
    assert_close(ys[:, 0], np.exp(-t), rtol=1e-5)
    g = dp.grad(lambda k: np.sum(odeint(decay, np.ones(2, np.float32), t, k, method=method,
                                        rtol=1e-4, atol=1e-6)))(np.float32(1.0))
    assert np.asarray(g).dtype == np.float32
    assert_close(g, -2 * np.sum(t * np.exp(-t)), rtol=1e-5)


@pytest.mark.parametrize("rhs,where", [
    (lambda y, t, k: k * y ** 2, r"stopped at t=1 before reaching t=2"),     # blows up at t=1/k
    (lambda y, t, k: np.sqrt(y - 2.0 * k), r"stopped at t=0 before reaching t=0.5")])  # NaN
def test_dopri5_raises_instead_of_hanging_when_the_solution_breaks_down(rhs, where):
    import warnings
    loss = lambda k: np.sum(odeint(rhs, np.ones(1), np.array([0.0, 0.5, 2.0]), k,  # noqa: E731
                                   method="dopri5"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow / invalid sqrt on the way
        with pytest.raises(dp.SolverError, match=where):
            loss(np.array(1.0))
        with pytest.raises(dp.SolverError, match=where):
            dp.grad(loss)(np.array(1.0))  # the compiled gradient program checks it too


def test_dopri5_step_budget_is_an_error_not_a_truncated_solution():
    decay = lambda y, t: -50.0 * y  # noqa: E731
    t = np.array([0.0, 1.0])
    assert_close(odeint(decay, np.ones(1), t, method="dopri5", max_num_steps=500)[-1],
                 np.exp(-50.0), atol=1e-8)  # atol=1e-9 governs near zero
    with pytest.raises(dp.SolverError, match="budget of 5 attempted steps"):
        odeint(decay, np.ones(1), t, method="dopri5", max_num_steps=5)
    with pytest.raises(dp.SolverError, match="budget of 5 attempted steps"):
        odeint(decay, np.ones(1), t, method="dopri5", max_steps=5)


def test_bad_arguments_are_explained():
    with pytest.raises(dp.ArgumentValueError, match="method"):
        odeint(lotka_volterra, Y0, T, P, method="euler")
    with pytest.raises(dp.ArgumentValueError, match="increasing"):
        odeint(lotka_volterra, Y0, T[::-1], P)


def test_docstring_examples_run():
    failures, tried = doctest.testmod(importlib.import_module("diffprog.sciml.odeint"), verbose=False)
    assert tried >= 4 and failures == 0


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_gradients_with_respect_to_the_output_times(method):
    # dopri5 used to hold its last step h = t1 - s constant: d/dt came out wrong (or 0)
    rhs = lambda y, t: -y + np.sin(t)
    ts = np.array([0.0, 0.5, 1.0, 2.0])

    def loss(t):
        ys = odeint(rhs, np.array([1.0]), t, method=method, rtol=1e-9, atol=1e-11,
                    steps_per_interval=100)
        return np.sum(ys[:, 0] ** 2)
    eps = 1e-6
    fd = np.array([(loss(ts + eps * e) - loss(ts - eps * e)) / (2 * eps) for e in np.eye(4)])
    assert_close(dp.grad(loss)(ts), fd, rtol=1e-5, atol=1e-7)
    assert_close(dp.jvp(loss, (ts,), (np.ones(4),))[1], np.sum(fd), rtol=1e-5, atol=1e-7)
    end = lambda T: odeint(lambda y, t: -y, np.array([1.0]), np.stack([0 * T, T]),
                           method=method)[-1, 0]
    assert_close(dp.grad(end)(1.0), -np.exp(-1.0), rtol=1e-5)


def test_dopri5_decreasing_traced_times_are_an_error_not_y0():
    f = dp.differentiable(lambda T: odeint(lambda y, t: -y, np.array([1.0]), np.stack([T, 0 * T]),
                                           method="dopri5"))
    with pytest.raises(dp.SolverError, match="strictly increasing"):
        f(1.0)


@pytest.mark.parametrize("steps", [0, 2.5, -1, True, "10"])
def test_steps_per_interval_must_be_a_positive_integer(steps):
    # (a reviewer: 2.5 was truncated to 2 and 0 returned y0 for every time, silently)
    with pytest.raises(dp.errors.ArgumentValueError, match="steps_per_interval"):
        odeint(lambda y, t: -y, 1.0, np.linspace(0.0, 1.0, 3), steps_per_interval=steps)
