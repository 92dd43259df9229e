"""Simplification passes: CSE and DCE keep programs small without changing results."""
from __future__ import annotations

import numpy as np

import diffprog as dp
from diffprog.transforms import simplify, vjp_graph


def test_cse_merges_repeated_subexpressions():
    graph = dp.differentiable(lambda x: np.sin(x) * np.sin(x)).ir(np.ones(3))
    assert [e.prim.name for e in graph.eqns].count("sin") == 1


def test_dce_drops_unused_work():
    def f(x):
        np.exp(x)  # result unused
        return np.sum(x)
    graph = dp.differentiable(f).ir(np.ones(3))
    assert [e.prim.name for e in graph.eqns] == ["reduce_sum"]


def test_gradient_graph_shares_forward_values():
    graph = dp.differentiable(lambda x: np.sum(np.exp(x))).ir(np.ones(3))
    g = vjp_graph(graph, [0], seed="ones")
    assert [e.prim.name for e in g.eqns].count("exp") == 1
    assert len(simplify(g).eqns) == len(g.eqns)


def test_cse_treats_commutative_operands_in_either_order():
    f = dp.differentiable(lambda x, y: np.sum(x * y + y * x) + np.sum((x + 2.0) * (2.0 + x)))
    graph = f.ir(np.ones(3), np.ones(3))
    names = [e.prim.name for e in graph.eqns]
    assert names.count("mul") == 2 and names.count("add") == 3
    # order still matters where it should
    g = dp.differentiable(lambda x, y: np.sum(x - y) + np.sum(y - x)).ir(np.ones(3), np.ones(3))
    assert [e.prim.name for e in g.eqns].count("sub") == 2


def test_value_and_grad_of_a_scan_runs_the_forward_loop_once():
    def f(x):
        final, ys = dp.scan(lambda c, xi: (c * np.sin(xi) + xi, c * c), 0.5, x)
        return final + np.sum(ys)
    x = np.linspace(0.1, 1.0, 7)
    graph = dp.differentiable(f).ir(x)
    grad_graph = simplify(vjp_graph(graph, [0], seed="ones"))
    loops = [e for e in grad_graph.eqns if e.prim.name == "scan"]
    assert [e.params["reverse"] for e in loops] == [False, True]  # one forward, one backward
    value, grad = dp.value_and_grad(f)(x)
    assert np.isclose(value, _unrolled(x))
    eps = 1e-6
    fd = np.array([(_unrolled(x + eps * e) - _unrolled(x - eps * e)) / (2 * eps)
                   for e in np.eye(len(x))])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def _unrolled(x):
    c, total = 0.5, 0.0
    for xi in x:
        total += c * c
        c = c * np.sin(xi) + xi
    return c + total


def test_cse_keeps_constants_of_different_dtype_or_sign_apart():
    n = np.array([100, 100], np.int8)
    f = lambda w, n: (np.sum(w * (n + np.array(100, np.int8))) * 0
                      + np.sum(w * (n + np.array(100, np.int64))))
    np.testing.assert_array_equal(dp.grad(f)(np.ones(2), n), [200.0, 200.0])
    x = np.array([1.0, 2.0])
    g = dp.differentiable(lambda x: np.arctan2(x * 0.0, -1) - np.arctan2(x * -0.0, -1))
    np.testing.assert_allclose(g(x), 2 * np.pi)
    x32 = np.ones(2, np.float32)
    a, b = dp.differentiable(lambda x: (x * np.array(1.5, np.float32), x * np.array(1.5)))(x32)
    assert (a.dtype, b.dtype) == (np.float32, np.float64)
