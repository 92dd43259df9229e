"""Guards: Python if/while/for/int() on traced values, checked by compiled programs."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import diffprog as dp
from diffprog.api import cache_for

from .helpers import assert_close, numeric_grad


def _branchy(x):
    if np.sum(x) > 0:
        return np.sum(x ** 2)
    return np.sum(np.sin(x))


def _variants(fn):
    return sum(len(v) for v in cache_for(fn).variants.values())


def test_if_takes_the_branch_of_each_input_and_keeps_both_variants():
    def f(x):
        return _branchy(x)
    g = dp.differentiable(f)
    pos, neg = np.array([1.0, 2.0]), np.array([-1.0, -2.0])
    assert g(pos) == 5.0
    assert_close(g(neg), np.sum(np.sin(neg)))
    assert g(np.array([3.0, 1.0])) == 10.0  # first variant's guard holds again: no retrace
    assert _variants(f) == 2 and cache_for(f).retraces[next(iter(cache_for(f).retraces))] == 2


@pytest.mark.parametrize("x", [np.array([1.0, 2.0]), np.array([-1.0, -0.5])])
def test_guarded_gradients_in_reverse_and_forward_mode(x):
    f = _branchy
    assert_close(dp.grad(f)(x), numeric_grad(f, [x], 0))
    out, pullback = dp.vjp(f, x)
    assert_close(pullback(1.0)[0], numeric_grad(f, [x], 0))
    v = np.array([0.3, -0.7])
    _, t = dp.jvp(f, (x,), (v,))
    assert_close(t, numeric_grad(f, [x], 0) @ v)


def test_vjp_pullback_uses_the_variant_of_its_forward_pass():
    def f(x):
        return x * 3.0 if np.sum(x) > 0 else x * -5.0
    for x, scale in [(np.ones(2), 3.0), (-np.ones(2), -5.0), (np.ones(2), 3.0)]:
        _, pullback = dp.vjp(f, x)
        assert_close(pullback(np.ones(2))[0], np.full(2, scale))


def test_data_dependent_while_loop_count():
    def doublings(x, limit):
        n = 0
        while np.sum(x) < limit:
            x = x * 2.0
            n += 1
        return np.sum(x), n
    f = dp.differentiable(doublings)
    assert f(np.ones(2), 10.0) == (16.0, 3)
    assert f(np.ones(2), 100.0) == (128.0, 6)
    # d/dx of sum(x * 2**n) is 2**n, with the count of the input's own trip through the loop
    grad = dp.grad(lambda x, lim: doublings(x, lim)[0])
    assert_close(grad(np.ones(2), 10.0), np.full(2, 8.0))
    assert_close(grad(np.ones(2), 100.0), np.full(2, 64.0))


def test_int_of_a_traced_value_sets_the_loop_count():
    def f(x, n):
        y = x
        for _ in range(int(n)):
            y = np.sin(y)
        return np.sum(y)
    n2, n5 = np.array(2), np.array(5)
    x = np.array([0.5, 1.0])
    assert_close(dp.grad(f)(x, n2), numeric_grad(f, [x, n2], 0))
    assert_close(dp.grad(f)(x, n5), numeric_grad(f, [x, n5], 0))


def test_float_of_a_value_the_gradient_depends_on_is_refused():
    def f(x):
        return x * float(np.sum(x))  # the gradient through sum(x) would be silently lost
    with pytest.raises(dp.ConcretizationError, match=r"test_guards.py:\d+: .*float\(np.sum"):
        dp.grad(lambda x: np.sum(f(x)))(np.ones(2))


def test_float_of_stop_gradient_is_guarded_on_the_exact_value():
    calls = []

    def f(x):
        calls.append(1)
        return np.sum(x) * float(dp.stop_gradient(x[0]))
    g = dp.grad(f)
    assert_close(g(np.array([2.0, 1.0])), np.full(2, 2.0))
    assert_close(g(np.array([3.0, 1.0])), np.full(2, 3.0))  # new value: retraced
    n = len(calls)
    assert_close(g(np.array([2.0, 5.0])), np.full(2, 2.0))  # old value: old variant reused
    assert len(calls) == n


def test_many_paths_warn_once_naming_the_guard_line():
    def f(x):
        y = x
        for _ in range(int(np.floor(dp.stop_gradient(x[0])))):
            y = y * 1.5
        return np.sum(y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(12):
            dp.grad(f)(np.array([float(k)]))
    ours = [w for w in caught if issubclass(w.category, dp.DiffprogWarning)]
    assert len(ours) == 1
    text = str(ours[0].message)
    assert "test_guards.py" in text and "for _ in range(int(np.floor" in text
    assert "dp.fori_loop" in text and "dp.cond" in text


def test_guard_is_a_line_of_the_generated_program():
    src = dp.differentiable(_branchy).source(np.ones(2), kind="grad")
    assert "expected=True" in src


def test_bool_of_an_array_with_many_elements_is_refused_like_numpy():
    with pytest.raises(dp.ConcretizationError, match="np.any"):
        dp.grad(lambda x: np.sum(x) if x > 0 else np.sum(-x))(np.ones(3))


def test_guards_inside_nested_grad_record_into_the_outer_program():
    def inner(x):
        return np.sum(x ** 3) if np.sum(x) > 0 else np.sum(x ** 2)

    def outer(x):
        return np.sum(dp.grad(inner)(x) ** 2)
    for x in (np.array([1.0, 2.0]), np.array([-1.0, -2.0])):
        assert_close(dp.grad(outer)(x), numeric_grad(outer, [x], 0), rtol=1e-5)
