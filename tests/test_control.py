"""Structured control flow: each primitive against its unrolled Python equivalent and
finite differences, in reverse and forward mode."""
from __future__ import annotations

import doctest
import importlib
import time
import types

import numpy as np
import pytest

import diffprog as dp

from .helpers import assert_close, numeric_grad, numeric_jvp

X = np.array([0.3, -0.4, 0.8])
K = np.array([1.2, 0.7, -0.5])
V = np.array([0.5, -1.0, 0.25])


def _check_both_modes(f, args, argnum=0, rtol=1e-6):
    g = dp.grad(f, argnums=argnum)(*args)
    assert_close(g, numeric_grad(f, list(args), argnum), rtol=rtol, atol=1e-8)
    tangents = tuple(V[:np.size(a)].reshape(np.shape(a)) if i == argnum else np.zeros_like(a)
                     for i, a in enumerate(args))
    _, t = dp.jvp(f, args, tangents)
    assert_close(t, np.sum(g * tangents[argnum]), rtol=rtol, atol=1e-8)


def _step(c, x, k):
    return np.tanh(c * k) + x * c


def test_scan_matches_the_unrolled_loop_and_differentiates():
    xs = np.linspace(-1.0, 1.0, 6)

    def structured(c, k):
        final, ys = dp.scan(lambda c, x: (_step(c, x, k), np.sum(c ** 2)), c, xs)
        return np.sum(final) + np.sum(ys)

    def unrolled(c, k):
        total = 0.0
        for x in xs:
            total = total + np.sum(c ** 2)
            c = _step(c, x, k)
        return np.sum(c) + total
    assert_close(dp.differentiable(structured)(X, K), unrolled(X, K))
    assert_close(dp.grad(structured)(X, K), dp.grad(unrolled)(X, K))
    _check_both_modes(structured, (X, K), 0)
    _check_both_modes(structured, (X, K), 1)  # closed-over value: a constant of the body


def test_scan_with_pytree_carry_and_reverse():
    xs = {"a": np.arange(5.0), "b": np.ones((5, 2))}

    def f(w):
        def body(carry, x):
            s, v = carry["s"], carry["v"]
            return {"s": s + x["a"] * np.sum(v), "v": np.sin(v * w) + x["b"]}, s
        out, ys = dp.scan(body, {"s": 0.0, "v": w}, xs, reverse=True)
        return out["s"] + np.sum(out["v"]) + np.sum(ys ** 2)
    w = np.array([0.4, -0.3])
    _check_both_modes(f, (w,))


@pytest.mark.parametrize("checkpoint", [True, 3])
def test_checkpointed_scan_gives_the_same_values_and_gradients(checkpoint):
    xs = np.linspace(0.0, 1.0, 10)  # 10 = 3 segments of 3 and a tail of 1 (k=3 or 4)

    def make(ck):
        def f(c, k):
            final, ys = dp.scan(lambda c, x: (_step(c, x, k), c[0] * x), c, xs, checkpoint=ck)
            return np.sum(final) + np.sum(ys ** 2)
        return f
    plain, ck = make(False), make(checkpoint)
    assert_close(dp.differentiable(ck)(X, K), dp.differentiable(plain)(X, K))
    assert_close(dp.grad(ck, argnums=1)(X, K), dp.grad(plain, argnums=1)(X, K))
    _check_both_modes(ck, (X, K), 0)
    # and reversed
    rev = lambda c: np.sum(dp.scan(lambda c, x: (np.sin(c) * x + c, c), c, xs,  # noqa: E731
                                   reverse=True, checkpoint=checkpoint)[1] ** 2)
    rev_plain = lambda c: np.sum(dp.scan(lambda c, x: (np.sin(c) * x + c, c), c, xs,  # noqa: E731
                                         reverse=True)[1] ** 2)
    assert_close(dp.grad(rev)(X), dp.grad(rev_plain)(X))


def _largest_array_in_backward(f, args):
    """Largest intermediate the backward program's scan loops stack (carries kept)."""
    from diffprog.primitives.control import scan
    seen = []
    original = scan.impl

    def spy(xp, *a, **p):
        out = original(xp, *a, **p)
        seen.extend(o.shape[0] for o in out[p["n_carry"]:] if getattr(o, "ndim", 0))
        return out
    scan.impl = spy  # what generated programs call
    try:
        dp.grad(f)(*args)
    finally:
        scan.impl = original
    return max(seen)


def test_checkpointing_bounds_the_stored_carries():
    n = 400
    xs = np.full(n, 0.01)

    def make(ck):
        return lambda c: np.sum(dp.scan(lambda c, x: (np.sin(c) + x, None), c, xs,
                                        checkpoint=ck)[0])
    plain = _largest_array_in_backward(make(False), (X,))
    ck = _largest_array_in_backward(make(True), (X,))
    assert plain == n and ck <= 2 * int(np.ceil(np.sqrt(n)))
    assert_close(dp.grad(make(True))(X), dp.grad(make(False))(X))


def test_fori_loop_matches_python_loop():
    def structured(x):
        return np.sum(dp.fori_loop(0, 5, lambda i, v: np.sin(v) * (i + 1.0), x))

    def unrolled(x):
        for i in range(5):
            x = np.sin(x) * (i + 1.0)
        return np.sum(x)
    assert_close(dp.differentiable(structured)(X), unrolled(X))
    _check_both_modes(structured, (X,))


@pytest.mark.parametrize("x", [X, -X])
def test_cond_takes_the_right_branch_in_one_program(x):
    def f(x, k):
        return np.sum(dp.cond(np.sum(x) > 0, lambda v: np.sin(v) * k, lambda v: v ** 3 - k, x))
    expected = np.sum(np.sin(x) * K) if np.sum(x) > 0 else np.sum(x ** 3 - K)
    assert_close(dp.differentiable(f)(x, K), expected)
    _check_both_modes(f, (x, K), 0)
    _check_both_modes(f, (x, K), 1)
    # one program serves both branches: no retrace
    g = dp.differentiable(f)
    g(X, K), g(-X, K)
    from diffprog.api import cache_for
    assert all(len(v) == 1 for v in cache_for(f).variants.values())


def test_cond_branches_must_agree():
    with pytest.raises(dp.ShapeError, match="same shapes"):
        dp.grad(lambda x: np.sum(dp.cond(x[0] > 0, lambda v: v, lambda v: v[:2], x)))(X)


@pytest.mark.parametrize("max_steps", [None, 12])
def test_while_loop_matches_python_while(max_steps):
    def structured(x, k):
        return np.sum(dp.while_loop(lambda v: np.sum(v) < 20.0, lambda v: v * k + 0.1, x,
                                    max_steps=max_steps))

    def python(x, k):
        while np.sum(x) < 20.0:
            x = x * k + 0.1
        return np.sum(x)
    x, k = np.array([0.6, 0.7]), np.array(1.5)
    assert_close(dp.differentiable(structured)(x, k), python(x, k))
    for argnum in (0, 1):
        g = dp.grad(structured, argnums=argnum)(x, k)
        assert_close(g, numeric_grad(python, [x, k], argnum), rtol=1e-6)
        t = np.ones_like(x) if argnum == 0 else np.array(1.0)
        tans = (t, np.zeros_like(k)) if argnum == 0 else (np.zeros_like(x), t)
        _, jt = dp.jvp(structured, (x, k), tans)
        assert_close(jt, numeric_jvp(python, [x, k], list(tans)), rtol=1e-6)


def test_while_loop_second_reverse_derivative_needs_max_steps():
    f = lambda x: np.sum(dp.while_loop(lambda v: np.sum(v) < 5.0, lambda v: v * 1.5, x))  # noqa
    with pytest.raises(dp.NotDifferentiableError, match="max_steps"):
        dp.hessian(f)(np.array([1.0, 1.0])) if False else \
            dp.grad(lambda x: np.sum(dp.grad(f)(x) ** 2))(np.array([1.0, 1.0]))
    g = lambda x: np.sum(dp.while_loop(lambda v: np.sum(v) < 5.0, lambda v: v * np.sin(v) + v,  # noqa
                                       x, max_steps=8))
    h = dp.hessian(g)(np.array([1.0, 1.2]))
    assert_close(h, np.stack([numeric_grad(lambda y: dp.grad(g)(y)[i], [np.array([1.0, 1.2])], 0)
                              for i in range(2)]), rtol=1e-4, atol=1e-6)


def test_checkpoint_recomputes_and_differentiates():
    block = dp.checkpoint(lambda x, k: np.tanh(np.sin(x) * k))
    f = lambda x, k: np.sum(block(x, k) ** 2)  # noqa: E731
    _check_both_modes(f, (X, K), 0)
    _check_both_modes(f, (X, K), 1)
    src = dp.differentiable(f).source(X, K, kind="grad")
    assert "xp.tanh" not in src  # the block is one call (forward and recompute), not inlined


def test_python_if_inside_a_body_names_the_line():
    def body(c, x):
        if np.sum(c) > 0:
            return c, x
        return -c, x
    with pytest.raises(dp.ConcretizationError,
                       match=r"test_control.py:\d+: if np.sum\(c\) > 0:\nIt is inside the body of dp.scan"):
        dp.grad(lambda c: np.sum(dp.scan(body, c, np.ones(3))[0]))(X)
    with pytest.raises(dp.ConcretizationError, match=r"(?s)inside true_fn of dp.cond.*Fix: .*dp.cond"):
        dp.grad(lambda x: np.sum(dp.cond(np.sum(x) > 0, lambda v: v if v[0] > 0 else -v,
                                         lambda v: v, x)))(X)


def _rk4(f, y, h):
    k1 = f(y)
    k2 = f(y + h / 2 * k1)
    k3 = f(y + h / 2 * k2)
    k4 = f(y + h * k3)
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def _unrolled_rk4_seconds(steps: int) -> tuple[float, float]:
    def loss(y, a):
        rhs = lambda y: np.stack([y[1], -a * np.sin(y[0])])  # noqa: E731
        for _ in range(steps):
            y = _rk4(rhs, y, 0.01)
        return np.sum(y ** 2)
    y0, a = np.array([1.0, 0.0]), np.array(2.0)
    g = dp.grad(loss, argnums=(0, 1))
    t0 = time.perf_counter()
    g(y0, a)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(3):
        g(y0, a)
    return first, (time.perf_counter() - t0) / 3


def test_long_unrolled_loops_grow_linearly():
    """Trace + compile (first call) and run time of an unrolled RK4 loop: 4x the steps
    must cost about 4x, not 16x (generous bound: 8x, timing noise on a shared machine)."""
    _unrolled_rk4_seconds(20)  # warm up imports
    first_100, run_100 = _unrolled_rk4_seconds(100)
    first_400, run_400 = _unrolled_rk4_seconds(400)
    assert first_400 < 8 * first_100 + 0.05, (first_100, first_400)
    assert run_400 < 8 * run_100 + 0.01, (run_100, run_400)


class _DeviceModule(types.ModuleType):
    """Stands in for CuPy on the host: NumPy's functions, with ``asarray`` (what the
    device placement copies constants with) recording the arrays it is given."""

    def __init__(self):
        super().__init__("fake_device_xp")
        self.copied: list = []

    def __getattr__(self, name):
        return getattr(np, name)

    def asarray(self, value, *args, **kwargs):
        if isinstance(value, np.ndarray) and value.ndim:
            self.copied.append(value)
        return np.asarray(value, *args, **kwargs)


@pytest.fixture
def device_engine(monkeypatch):
    from diffprog import engines
    from diffprog.engines.cupy import DevicePlacement
    from diffprog.engines.numpy import NumpyEngine, generate_source

    xp = _DeviceModule()

    class DeviceEngine(NumpyEngine):
        name = "fake-device"

        def generate(self, graph, fn_name):
            return generate_source(graph, xp, fn_name, placement=DevicePlacement(xp.asarray))
    engine = DeviceEngine(xp)
    monkeypatch.setitem(engines._FACTORIES, engine.name, lambda: engine)
    monkeypatch.setattr(engines, "_INSTANCES", dict(engines._INSTANCES))
    return engine, xp


def test_body_constants_go_to_the_device_once_like_program_constants(device_engine):
    """On a device engine (CuPy) a loop body's constant arrays must be device arrays, as
    the program's own are: they are copied when the body is compiled, never per call."""
    engine, xp = device_engine
    weights = np.array([0.5, -1.5, 2.0])

    def f(x):
        w = np.array([0.5, -1.5, 2.0])  # made inside: a constant (a global would be an input)
        return np.sum(dp.scan(lambda c, xi: (np.sin(c * w) + xi, c), x, np.ones((4, 3)))[1])
    expected = dp.value_and_grad(f)(X)
    got = dp.value_and_grad(dp.differentiable(f, engine=engine.name))(X)
    assert_close(got[0], expected[0], rtol=1e-12)
    assert_close(got[1], expected[1], rtol=1e-12)
    def weight_copies():
        return sum(c.shape == weights.shape and np.array_equal(c, weights) for c in xp.copied)
    assert weight_copies() >= 1  # the forward body's and the backward body's constant
    copies = weight_copies()
    dp.value_and_grad(dp.differentiable(f, engine=engine.name))(X)
    assert weight_copies() == copies


def test_docstring_examples_run():
    failures, tried = doctest.testmod(importlib.import_module("diffprog.control"), verbose=False)
    assert tried >= 15 and failures == 0


def test_bounded_while_loop_never_evaluates_the_body_after_the_exit():
    # sqrt(v - 0.5) is NaN once v <= 0.5: a masked body would leak NaN into the gradient
    body = lambda v: np.sqrt(v - 0.5)
    f = lambda x: dp.while_loop(lambda v: v > 0.5, body, x, max_steps=20)
    unbounded = lambda x: dp.while_loop(lambda v: v > 0.5, body, x)
    x = np.array(3.0)
    g = dp.grad(f)(x)
    assert np.isfinite(g) and np.isclose(g, dp.grad(unbounded)(x))
    assert np.isclose(dp.jvp(f, (x,), (np.array(1.0),))[1], g)
    eps = 1e-6
    plain = lambda v: _python_while(v, body)
    assert np.isclose(g, (plain(3.0 + eps) - plain(3.0 - eps)) / (2 * eps), rtol=1e-5)


def _python_while(v, body):
    while v > 0.5:
        v = body(v)
    return v


def test_loops_of_no_steps_differentiate():
    # (a reviewer: the compiled C loop indexed the first step of a zero-step loop)
    assert dp.grad(lambda c: dp.fori_loop(0, 0, lambda i, c: c * 2.0, c))(1.0) == 1.0
    assert dp.grad(lambda c: dp.scan(lambda c, x: (c * x, c), c, np.ones(0))[0])(1.0) == 1.0
    value, grad = dp.value_and_grad(
        lambda c: np.sum(dp.scan(lambda c, x: (c * x, c * x), c, np.ones(0))[1]))(1.0)
    assert value == 0.0 and grad == 0.0


@pytest.mark.parametrize("call", [
    lambda: dp.scan(3, 0.0, np.ones(2)), lambda: dp.fori_loop(0, 2, None, 1.0),
    lambda: dp.cond(True, 1, lambda: 0.0), lambda: dp.while_loop(None, abs, 1.0),
    lambda: dp.checkpoint(2)])
def test_bodies_that_are_not_functions_are_refused_by_name(call):
    with pytest.raises(dp.errors.ArgumentError, match="must be a function"):
        call()


def test_eager_cond_and_while_loop_make_the_traced_checks():
    # (a reviewer: run as Python they accepted what dp.grad of the same code refused, and a
    # vector predicate gave NumPy's "truth value of an array is ambiguous")
    with pytest.raises(dp.errors.ShapeError, match="predicate must be a scalar"):
        dp.cond(np.array([True, False]), lambda: 1.0, lambda: 2.0)
    with pytest.raises(dp.errors.ShapeError, match="changed a carry's shape"):
        dp.while_loop(lambda v: np.sum(v) < 10, lambda v: np.concatenate([v, v]), np.ones(2))
    with pytest.raises(dp.errors.ShapeError, match="must return a scalar"):
        dp.while_loop(lambda v: v < 10, lambda v: v * 2, np.ones(2))
    with pytest.raises(dp.errors.ArgumentError, match="changed a carry's dtype"):
        dp.while_loop(lambda i: i < 10, lambda i: i + 0.5, 0)
    assert dp.while_loop(lambda i: i < 10, lambda i: i + 1, 0) == 10
