"""The CPU workloads: each as a user writes it, its hand-written NumPy gradient, and
(where installed) the same computation in jax, autograd and torch.

A workload is built by ``make(size)`` with ``size`` "full" (the benchmark) or "tiny"
(the smoke test). It returns a :class:`Workload`: the plain-NumPy function ``fn``, its
arguments, the argnums to differentiate, and the hand-written baselines
``value_by_hand(*args)`` and ``value_and_grad_by_hand(*args) -> (value, grads)``.

W1  sum(sin(x) * x**2), x of 3 elements: per-call overhead.
W2  2-layer tanh MLP, mean squared error, batch 256, 64 -> 256 -> 1, float64, grads
    w.r.t. both weight matrices.
W3  100-step RK4 Lotka-Volterra trajectory loss, grad w.r.t. its 4 parameters, written
    as a plain Python loop (the trace is unrolled: about 3,000 equations forward).
W3s W3 written with dp.scan (one loop equation: fast to trace and compile).
W4  sum(exp(-x**2) * cos(3x)) over 1e6 elements.
P50 a dict of 50 parameter arrays (8 x 8) whose function reads one: the per-leaf cost of
    pytree arguments (the gradient still has all 50 leaves, 49 of them zeros).
W5  the neural ODE of notebooks/03-neural-ode: dy/dt = tanh(y @ W1 + b1) @ W2 + b2 (2 -> 16
    -> 2), odeint RK4 over 30 intervals of 2 steps, mean squared error against a damped
    oscillator, grads w.r.t. the four weights (products and nested loops in dp.scan).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Workload:
    name: str
    description: str
    fn: Callable
    args: tuple
    argnums: tuple
    value_by_hand: Callable
    value_and_grad_by_hand: Callable
    peers: dict = field(default_factory=dict)  # peer name -> (value_fn, value_and_grad_fn, args)


def _single(argnums, grads):
    return grads[0] if len(argnums) == 1 else grads


# ======================================================================== W1

def w1_fn(x):
    return np.sum(np.sin(x) * x ** 2)


def w1_value_and_grad_by_hand(x):
    s = np.sin(x)
    x2 = x * x
    return np.sum(s * x2), (np.cos(x) * x2 + 2.0 * x * s,)


def make_w1(size="full"):
    x = np.array([0.3, -1.2, 2.5])
    return Workload("W1", "sum(sin(x)*x**2), 3 elements", w1_fn, (x,), (0,),
                    w1_fn, w1_value_and_grad_by_hand)


# ======================================================================== W2

def w2_fn(w1, w2, x, y):
    h = np.tanh(x @ w1)
    return np.mean((h @ w2 - y) ** 2)


def w2_value_and_grad_by_hand(w1, w2, x, y):
    h = np.tanh(x @ w1)
    r = h @ w2 - y
    value = np.mean(r * r)
    d_out = r * (2.0 / r.size)
    d_pre = (d_out @ w2.T) * (1.0 - h * h)
    return value, (x.T @ d_pre, h.T @ d_out)


def make_w2(size="full"):
    batch, d_in, hidden = (256, 64, 256) if size == "full" else (8, 4, 6)
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((d_in, hidden)) * d_in ** -0.5
    w2 = rng.standard_normal((hidden, 1)) * hidden ** -0.5
    x = rng.standard_normal((batch, d_in))
    y = rng.standard_normal((batch, 1))
    return Workload("W2", f"tanh MLP {d_in}->{hidden}->1, batch {batch}", w2_fn,
                    (w1, w2, x, y), (0, 1), w2_fn, w2_value_and_grad_by_hand)


# ======================================================================== W3

LV_STEPS = 100
LV_H = 0.01


def lv_rhs(p, y):
    """Lotka-Volterra: prey y[0], predators y[1]; p = (alpha, beta, delta, gamma)."""
    return np.stack([p[0] * y[0] - p[1] * y[0] * y[1], p[2] * y[0] * y[1] - p[3] * y[1]])


def make_w3_fn(steps):
    def w3_fn(p, y0):
        y, h, loss = y0, LV_H, 0.0
        for _ in range(steps):
            k1 = lv_rhs(p, y)
            k2 = lv_rhs(p, y + 0.5 * h * k1)
            k3 = lv_rhs(p, y + 0.5 * h * k2)
            k4 = lv_rhs(p, y + h * k3)
            y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            loss = loss + np.sum(y * y)
        return loss
    return w3_fn


def _lv_vjp(p, u, g):
    """Cotangents (du, dp) of lv_rhs at (p, u) for output cotangent g."""
    u0, u1 = u[0], u[1]
    du = np.array([g[0] * (p[0] - p[1] * u1) + g[1] * p[2] * u1,
                   -g[0] * p[1] * u0 + g[1] * (p[2] * u0 - p[3])])
    dp_ = np.array([g[0] * u0, -g[0] * u0 * u1, g[1] * u0 * u1, -g[1] * u1])
    return du, dp_


def make_w3_by_hand(steps):
    """Forward RK4 keeping each stage's input, then the discrete adjoint backwards."""
    def value_and_grad(p, y0):
        h, y, loss = LV_H, y0, 0.0
        stages = []
        for _ in range(steps):
            k1 = lv_rhs(p, y)
            u2 = y + 0.5 * h * k1
            k2 = lv_rhs(p, u2)
            u3 = y + 0.5 * h * k2
            k3 = lv_rhs(p, u3)
            u4 = y + h * k3
            k4 = lv_rhs(p, u4)
            y_next = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            stages.append((y, u2, u3, u4, y_next))
            y = y_next
            loss = loss + np.sum(y * y)
        gp = np.zeros(4)
        ybar = np.zeros(2)
        for y, u2, u3, u4, y_next in reversed(stages):
            ybar = ybar + 2.0 * y_next
            k4bar = (h / 6.0) * ybar
            du, d = _lv_vjp(p, u4, k4bar)
            gp = gp + d
            k3bar = (h / 3.0) * ybar + h * du
            ynew = ybar + du
            du, d = _lv_vjp(p, u3, k3bar)
            gp = gp + d
            k2bar = (h / 3.0) * ybar + 0.5 * h * du
            ynew = ynew + du
            du, d = _lv_vjp(p, u2, k2bar)
            gp = gp + d
            k1bar = (h / 6.0) * ybar + 0.5 * h * du
            ynew = ynew + du
            du, d = _lv_vjp(p, y, k1bar)
            gp = gp + d
            ybar = ynew + du
        return loss, (gp,)

    return value_and_grad


def make_w3_scan_fn(steps):
    """W3 with dp.scan: one loop equation instead of the unrolled trace."""
    import diffprog as dp

    def w3_scan_fn(p, y0):
        def step(carry, _):
            y, loss = carry
            h = LV_H
            k1 = lv_rhs(p, y)
            k2 = lv_rhs(p, y + 0.5 * h * k1)
            k3 = lv_rhs(p, y + 0.5 * h * k2)
            k4 = lv_rhs(p, y + h * k3)
            y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            return (y, loss + np.sum(y * y)), None
        (_, loss), _ = dp.scan(step, (y0, np.zeros((), y0.dtype)), length=steps)
        return loss
    return w3_scan_fn


def make_w3s(size="full"):
    w = make_w3(size)
    steps = LV_STEPS if size == "full" else 5
    fn = make_w3_scan_fn(steps)
    return Workload("W3s", f"RK4 Lotka-Volterra, {steps} steps (dp.scan)", fn, w.args, (0,),
                    make_w3_fn(steps), w.value_and_grad_by_hand)


def make_w3(size="full"):
    steps = LV_STEPS if size == "full" else 5
    p = np.array([1.5, 1.0, 1.0, 3.0])
    y0 = np.array([1.0, 1.0])
    fn = make_w3_fn(steps)
    return Workload("W3", f"RK4 Lotka-Volterra, {steps} steps (unrolled)", fn, (p, y0), (0,),
                    fn, make_w3_by_hand(steps))


# ======================================================================== W4

def w4_fn(x):
    return np.sum(np.exp(-x ** 2) * np.cos(3.0 * x))


def w4_value_and_grad_by_hand(x):
    e = np.exp(-x * x)
    c = np.cos(3.0 * x)
    value = np.sum(e * c)
    return value, (e * (-2.0 * x * c - 3.0 * np.sin(3.0 * x)),)


def make_w4(size="full"):
    n = 1_000_000 if size == "full" else 1000
    x = np.random.default_rng(0).standard_normal(n)
    return Workload("W4", f"sum(exp(-x**2)*cos(3x)), {n:.0e} elements", w4_fn, (x,), (0,),
                    w4_fn, w4_value_and_grad_by_hand)


# ======================================================================== W5

def _node_field(y, W1, b1, W2, b2):
    return np.tanh(y @ W1 + b1) @ W2 + b2


def _rk4_by_hand(f, y0, t, n):
    """RK4 with n steps per interval, as odeint(method="rk4") takes them; every stage."""
    ys, steps, y = [y0], [], y0
    for t0, t1 in zip(t[:-1], t[1:]):
        h = (t1 - t0) / n
        for _ in range(n):
            u2 = y + h / 2 * f(y)
            u3 = y + h / 2 * f(u2)
            u4 = y + h * f(u3)
            steps.append((h, y, u2, u3, u4))
            y = y + h / 6 * (f(y) + 2 * f(u2) + 2 * f(u3) + f(u4))
        ys.append(y)
    return np.stack(ys), steps


def make_w5_fn(y0, t, target, n):
    from diffprog.sciml import odeint

    def field(y, s, W1, b1, W2, b2):
        return _node_field(y, W1, b1, W2, b2)

    def w5_fn(W1, b1, W2, b2):
        ys = odeint(field, y0, t, W1, b1, W2, b2, steps_per_interval=n)
        return np.mean((ys - target) ** 2)
    return w5_fn


def make_w5_by_hand(y0, t, target, n):
    def value(W1, b1, W2, b2):
        ys, _ = _rk4_by_hand(lambda y: _node_field(y, W1, b1, W2, b2), y0, t, n)
        return np.mean((ys - target) ** 2)

    def value_and_grad(W1, b1, W2, b2):
        """The discrete adjoint of the RK4 steps, stage by stage."""
        ys, steps = _rk4_by_hand(lambda y: _node_field(y, W1, b1, W2, b2), y0, t, n)
        diff = ys - target
        gys = 2.0 * diff / diff.size
        gW1, gb1, gW2, gb2 = (np.zeros_like(w) for w in (W1, b1, W2, b2))

        def field_vjp(u, g):  # adds the weights' cotangents, returns u's
            a = np.tanh(u @ W1 + b1)
            gz = (W2 @ g) * (1.0 - a * a)
            gW2[...] += np.outer(a, g)
            gb2[...] += g
            gW1[...] += np.outer(u, gz)
            gb1[...] += gz
            return W1 @ gz

        ybar = np.zeros_like(y0)
        for k in range(len(steps) - 1, -1, -1):
            if (k + 1) % n == 0:
                ybar = ybar + gys[(k + 1) // n]
            h, y, u2, u3, u4 = steps[k]
            du4 = field_vjp(u4, h / 6 * ybar)
            du3 = field_vjp(u3, h / 3 * ybar + h * du4)
            du2 = field_vjp(u2, h / 3 * ybar + h / 2 * du3)
            du1 = field_vjp(y, h / 6 * ybar + h / 2 * du2)
            ybar = ybar + du4 + du3 + du2 + du1
        return np.mean(diff ** 2), (gW1, gb1, gW2, gb2)
    return value, value_and_grad


def make_w5(size="full"):
    intervals, n = (30, 2) if size == "full" else (4, 2)
    A = np.array([[-0.1, 2.0], [-2.0, -0.1]])
    y0, t = np.array([2.0, 0.0]), np.linspace(0.0, 0.1 * intervals, intervals + 1)
    target, _ = _rk4_by_hand(lambda y: A @ y, y0, t, 10)
    rng = np.random.default_rng(1)
    args = (rng.standard_normal((2, 16)) * 0.5, np.zeros(16),
            rng.standard_normal((16, 2)) * 0.1, np.zeros(2))
    value, value_and_grad = make_w5_by_hand(y0, t, target, n)
    return Workload("W5", f"neural ODE (notebook 03), {intervals} x {n} RK4 steps",
                    make_w5_fn(y0, t, target, n), args, (0, 1, 2, 3), value, value_and_grad)


# ======================================================================== P50

def p50_fn(params, x):
    return np.sum(np.tanh(params["w3"] @ x) ** 2)


def p50_value_and_grad_by_hand(params, x):
    h = np.tanh(params["w3"] @ x)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    grads["w3"] = np.outer(2.0 * h * (1.0 - h * h), x)
    return np.sum(h * h), (grads,)


def make_p50(size="full"):
    n = 50 if size == "full" else 5
    rng = np.random.default_rng(5)
    params = {f"w{i}": rng.standard_normal((8, 8)) * 0.3 for i in range(n)}
    return Workload("P50", f"dict of {n} arrays (8x8), one read", p50_fn,
                    (params, rng.standard_normal(8)), (0,), p50_fn, p50_value_and_grad_by_hand)


MAKERS = {"W1": make_w1, "W2": make_w2, "W3": make_w3, "W3s": make_w3s, "W4": make_w4,
          "W5": make_w5, "P50": make_p50}


# ================================================================== a big program

def chain_fn(n_ops):
    """A function tracing to about ``n_ops`` equations (trace + compile time)."""
    def chain(x):
        for i in range(n_ops // 2):
            x = np.sin(x) * (1.0 + 1e-3 * i)
        return np.sum(x)
    return chain
