"""odeint checks what f returns instead of broadcasting it into the state.

A right-hand side of the wrong shape used to integrate something else without a word:
SciPy's solve_ivp order f(t, y) gave 1 - t^2/2 instead of exp(-t) for y' = -y, and a
scalar or y[:1] was broadcast over the whole state.
"""
from __future__ import annotations

import numpy as np
import pytest

import diffprog as dp
from diffprog.sciml import odeint

T = np.linspace(0.0, 1.0, 3)
METHODS = [("rk4", {}), ("dopri5", {}), ("dopri5", {"max_steps": 20})]
IDS = ["rk4", "dopri5", "dopri5-max_steps"]


def decay_scipy_order(t, y):
    return -y


@pytest.mark.parametrize("method,kw", METHODS, ids=IDS)
def test_solve_ivp_argument_order_is_a_shape_error_naming_f_and_the_signature(method, kw):
    with pytest.raises(dp.ShapeError) as info:
        odeint(decay_scipy_order, np.array([1.0]), T, method=method, **kw)
    message = str(info.value)
    for part in ("decay_scipy_order", "shape ()", "shape (1,)", "f(y, t, *params)",
                 "solve_ivp", "f(t, y"):
        assert part in message, (part, message)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("method,kw", METHODS, ids=IDS)
def test_wrong_shapes_are_refused_in_values_and_gradients(method, kw):
    y0 = np.ones(2)
    cases = {"a scalar": lambda y, t, k: -k,
             "y[:1]": lambda y, t, k: -k * y[:1],
             "a column": lambda y, t, k: -k * y[:, None],
             "a batch": lambda y, t, k: -k * np.stack([y, y])}
    for what, f in cases.items():
        with pytest.raises(dp.ShapeError, match=r"shape \(2,\)"):
            odeint(f, y0, T, 1.0, method=method, **kw)
        with pytest.raises(dp.ShapeError, match=r"shape \(2,\)"):
            dp.grad(lambda k: np.sum(odeint(f, y0, T, k, method=method, **kw)))(1.0)


@pytest.mark.parametrize("method,kw", METHODS, ids=IDS)
def test_a_derivative_of_another_dtype_kind_is_refused(method, kw):
    with pytest.raises(dp.ShapeError, match="complex128"):
        odeint(lambda y, t: -1j * y, np.ones(2), T, method=method, **kw)
    with pytest.raises(dp.ShapeError, match="int64"):
        odeint(lambda y, t: np.zeros(2, dtype=np.int64), np.ones(2), T, method=method, **kw)


@pytest.mark.parametrize("method,kw", METHODS, ids=IDS)
def test_right_shapes_still_work_list_outputs_as_scipy_accepts_them(method, kw):
    ys = odeint(lambda y, t, k: [-k * y[0], -2 * k * y[1]], np.ones(2), T, 1.0, method=method,
                **kw)
    np.testing.assert_allclose(ys, np.exp(-np.outer(T, [1.0, 2.0])), rtol=1e-5)
    float32 = odeint(lambda y, t: -y, np.ones(2, np.float32), T, method=method, **kw)
    assert float32.dtype == np.float32  # a float64 t in f's output is the same kind
    scalar = odeint(lambda y, t: -y, 1.0, T, method=method, **kw)
    np.testing.assert_allclose(scalar, np.exp(-T), rtol=1e-5)


def test_a_state_that_is_not_an_array_is_refused_with_the_fix():
    with pytest.raises(dp.ArgumentError, match="y0"):
        odeint(lambda y, t: {"a": -y["a"]}, {"a": np.ones(2)}, T)
