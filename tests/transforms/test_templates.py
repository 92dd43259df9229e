"""Rule templates (transforms/templates.py): reverse mode copies what a rule recorded for
an earlier call of the same kind. The gradients are those of tracing every rule, bit for
bit, whatever the constants."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

import diffprog as dp

from ..helpers import sin_chain

vjp_module = importlib.import_module("diffprog.transforms.vjp")


def _no_templates(monkeypatch):
    monkeypatch.setattr(vjp_module, "_templates", lambda: None)


def _varying(n):
    def f(x):  # a different constant every step, 0 and 1 among them
        for i in range(n):
            x = np.sin(x) * (1.0 + 1e-2 * (i - 3)) - (i % 3) * x + 2.0 ** (i % 4) * x
        return np.sum(x)
    return f


def _powers(x):
    y = x
    for c in (2.0, 3.0, 2.5, -1.0, 0.5, 1.0, 2, -2, 1.5):
        y = y + x ** c * 0.1
    return np.sum(y) + np.sum(x ** 2.0) + np.sum(1.0 - x) + np.sum(-1.0 * x + 0.0)


def _mixed(x, y):
    h = x
    for k in range(6):
        h = np.where(h > 0.1 * k, h * y[k % 3], np.exp(-np.abs(h))) + np.tanh(h) * (k - 2)
        h = np.tanh(h / (1.0 + k) + np.maximum(h, 0.2 * k) - (np.abs(h) + 0.1) ** 1.5)
    return np.sum(h * h) + np.prod(y[:2]) + np.max(h)


def _rk4(p, y):
    def rhs(y):
        return np.stack([p[0] * y[0] - p[1] * y[0] * y[1], p[2] * y[0] * y[1] - p[3] * y[1]])
    loss, h = 0.0, 0.01
    for i in range(8):
        k1 = rhs(y)
        k2 = rhs(y + 0.5 * h * k1)
        k3 = rhs(y + 0.5 * h * k2)
        k4 = rhs(y + h * k3)
        y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        loss = loss + np.sum(y * y) * (1 + i)
    return loss


CASES = {
    "chain": (sin_chain(30), [np.linspace(0.1, 1.0, 4)], 0),
    "varying": (_varying(20), [np.linspace(0.1, 1.0, 4)], 0),
    "powers": (_powers, [np.linspace(0.5, 1.5, 3)], 0),
    "mixed": (_mixed, [np.linspace(-1.0, 1.0, 5), np.array([0.7, 1.3, -0.4])], (0, 1)),
    "rk4": (_rk4, [np.array([1.5, 1.0, 1.0, 3.0]), np.array([1.0, 1.0])], (0, 1)),
}


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b, equal_nan=True), (a, b)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_with_templates_are_those_of_tracing_every_rule(case, monkeypatch):
    fn, args, argnums = CASES[case]
    value, grads = dp.value_and_grad(fn, argnums=argnums)(*args)
    with monkeypatch.context() as m:
        _no_templates(m)
        ref_value, ref_grads = dp.value_and_grad(lambda *a: fn(*a), argnums=argnums)(*args)
    _same(value, ref_value)
    grads = grads if isinstance(grads, tuple) else (grads,)
    ref_grads = ref_grads if isinstance(ref_grads, tuple) else (ref_grads,)
    for g, r in zip(grads, ref_grads):
        _same(g, r)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_graphs_with_templates_compute_the_same(case, monkeypatch):
    """The graphs themselves: the same entries in the same order (dead cotangents aside,
    which simplify removes either way)."""
    fn, args, argnums = CASES[case]
    graph = dp.differentiable(fn).ir(*args)
    wrt = list(argnums) if isinstance(argnums, tuple) else [argnums]
    with_templates = vjp_module.vjp_graph(graph, wrt, seed="ones")
    with monkeypatch.context() as m:
        _no_templates(m)
        without = vjp_module.vjp_graph(graph, wrt, seed="ones")
    assert [e.prim.name for e in with_templates.eqns] == [e.prim.name for e in without.eqns]
    assert [e.params for e in with_templates.eqns] == [e.params for e in without.eqns]


def test_a_rule_reading_its_constant_is_traced_per_constant():
    """x ** c: the rule's x ** (c - 1) is an integer power for c = 3.0, a float one for 2.5;
    pow's templates are keyed by the constant's value."""
    def f(x):
        return np.sum(x ** 3.0) + np.sum(x ** 2.5) + np.sum(x ** 3.5) + np.sum(x ** 4.0)
    x = np.array([0.5, 1.5, 2.0])
    g = dp.grad(f)(x)
    want = 3 * x ** 2 + 2.5 * x ** 1.5 + 3.5 * x ** 2.5 + 4 * x ** 3
    np.testing.assert_allclose(g, want, rtol=1e-14)


def test_a_constant_seed_beside_a_number_is_not_a_template():
    """The first step of reverse mode multiplies the constant seed by the step's number
    (folded to a new constant): a copy for another number must not reuse that constant."""
    def f(x):
        return np.sum(x * 0.5) + np.sum(x * 1.01) + np.sum(x * 3.0)
    g = dp.grad(f)(np.ones(3))
    _same(g, np.full(3, 0.5) + np.full(3, 1.01) + np.full(3, 3.0))
