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


MAKERS = {"W1": make_w1, "W2": make_w2, "W3": make_w3, "W3s": make_w3s, "W4": make_w4}


# ================================================================== a big program

def chain_fn(n_ops):
    """A function tracing to about ``n_ops`` equations (trace + compile time)."""
    def chain(x):
        for i in range(n_ops // 2):
            x = np.sin(x) * (1.0 + 1e-3 * i)
        return np.sum(x)
    return chain
