"""Optimizers: convergence on known minima, pytrees, no mutation, clear errors."""
from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

import diffprog as dp

from .helpers import assert_close


def _quadratic(p):
    return np.sum((p["w"] - np.array([1.0, -2.0])) ** 2) + np.sum((p["b"] - 0.5) ** 2)


@pytest.mark.parametrize("opt,steps", [(dp.optim.SGD(lr=0.1), 200),
                                       (dp.optim.SGD(lr=0.05, momentum=0.9), 300),
                                       (dp.optim.Adam(lr=0.05), 800)])
def test_first_order_optimizers_converge_on_pytrees(opt, steps):
    params = {"w": np.zeros(2), "b": np.zeros(1)}
    before = {k: v.copy() for k, v in params.items()}
    state = opt.init(params)
    grad = dp.grad(_quadratic)
    p = params
    for _ in range(steps):
        p, state = opt.update(grad(p), state, p)
    assert_close(p["w"], np.array([1.0, -2.0]), atol=1e-3)
    assert_close(p["b"], np.array([0.5]), atol=1e-3)
    assert all(np.array_equal(params[k], before[k]) for k in params)  # nothing mutated


def test_adam_first_step_has_size_lr():
    opt = dp.optim.Adam(lr=0.1)
    p, _ = opt.update(np.array([10.0, -0.001]), opt.init(np.zeros(2)), np.zeros(2))
    assert_close(p, np.array([-0.1, 0.1]), rtol=1e-4)


def test_lbfgs_minimizes_rosenbrock_with_extra_args():
    def rosen(p, a):
        x, y = p[0], p[1]
        return (a - x) ** 2 + 100 * (y - x ** 2) ** 2
    res = dp.optim.minimize_lbfgs(rosen, np.array([-1.2, 1.0]), 1.0)
    assert res.success
    assert_close(res.params, np.array([1.0, 1.0]), atol=1e-4)


@pytest.mark.parametrize("opt", [dp.optim.SGD(lr=0.1, momentum=0.5), dp.optim.Adam(lr=0.1)])
def test_float32_parameters_stay_float32(opt):
    """State has the parameters' dtype: a float32 model is not silently promoted (which
    would also retrace the loss for float64 on the next step)."""
    p = {"w": np.zeros(2, np.float32), "b": 0.0}
    state = opt.init(p)
    for _ in range(3):
        p, state = opt.update(dp.grad(lambda q: np.sum((q["w"] - 1.0) ** 2) + q["b"] ** 2)(p),
                              state, p)
    assert p["w"].dtype == np.float32 and np.all(p["w"] > 0)


def test_lbfgs_evaluates_the_loss_in_the_parameters_dtype():
    seen = []

    def loss(w):
        seen.append(w.dtype)
        return np.sum((w - np.array([1.0, 2.0], np.float32)) ** 2)
    res = dp.optim.minimize_lbfgs(loss, np.zeros(2, np.float32))
    assert res.params.dtype == np.float32 and set(seen) == {np.dtype(np.float32)}
    assert_close(res.params, np.array([1.0, 2.0]), rtol=1e-4)


def test_mismatched_grads_are_explained():
    opt = dp.optim.SGD()
    with pytest.raises(dp.ArgumentError, match="structure"):
        opt.update({"a": np.ones(1)}, opt.init({"b": np.ones(1)}), {"b": np.ones(1)})


def test_docstring_examples_run():
    failures, tried = doctest.testmod(importlib.import_module("diffprog.optim"), verbose=False)
    assert tried >= 12 and failures == 0


def test_an_optimiser_step_keeps_the_parameter_dicts_key_order():
    # key order is part of a transformed function's cache key: a reordered dict retraced
    opt = dp.optim.Adam(lr=0.1)
    params = {"w": np.ones(2), "b": np.zeros(1)}
    state = opt.init(params)
    grad = dp.grad(lambda p: np.sum(p["w"] ** 2) + np.sum(p["b"]))
    for _ in range(3):
        params, state = opt.update(grad(params), state, params)
        assert list(params) == ["w", "b"] and list(state[1]) == ["w", "b"]
