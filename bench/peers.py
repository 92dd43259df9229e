"""Optional peers: the same workloads in jax (jit), autograd and torch (eager).

Only libraries that import are used; none is a dependency of diffprog. Each builder
returns ``(value_fn, value_and_grad_fn, args)`` for a workload, or None when the peer
has no natural spelling of it. The functions mirror bench/workloads.py line for line.
"""
from __future__ import annotations

import importlib

import numpy as np

from . import workloads as W


def available() -> dict:
    """Peer name -> module, for the peers that import here."""
    found = {}
    for name, module in (("jax", "jax"), ("autograd", "autograd"), ("torch", "torch")):
        try:
            found[name] = importlib.import_module(module)
        except Exception:  # not installed, or broken: not a peer here
            continue
    return found


def build(peer: str, workload: W.Workload):
    if workload.name in ("W3s", "W5"):  # W3s: the peers' W3 already is their idiomatic
        return None                      # version; W5 needs an ODE solver of each peer's
    return {"jax": _jax, "autograd": _autograd, "torch": _torch}[peer](workload)


def _lv_loss(xnp, stack, p, y0, steps):
    def rhs(y):
        return stack([p[0] * y[0] - p[1] * y[0] * y[1], p[2] * y[0] * y[1] - p[3] * y[1]])
    y, h, loss = y0, W.LV_H, 0.0
    for _ in range(steps):
        k1 = rhs(y)
        k2 = rhs(y + 0.5 * h * k1)
        k3 = rhs(y + 0.5 * h * k2)
        k4 = rhs(y + h * k3)
        y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        loss = loss + xnp.sum(y * y)
    return loss


def _fns(xnp, stack, workload):
    steps = int(workload.description.split(",")[1].split()[0]) if workload.name == "W3" else 0
    return {
        "W1": lambda x: xnp.sum(xnp.sin(x) * x ** 2),
        "W2": lambda w1, w2, x, y: xnp.mean((xnp.tanh(x @ w1) @ w2 - y) ** 2),
        "W3": lambda p, y0: _lv_loss(xnp, stack, p, y0, steps),
        "W4": lambda x: xnp.sum(xnp.exp(-x ** 2) * xnp.cos(3.0 * x)),
    }[workload.name]


def _jax_lv_scan(jax, jnp, steps):
    """W3 for jax with lax.scan: jit of the unrolled loop did not finish compiling within
    200 s here, and scan is how a jax user writes it."""
    def loss(p, y0):
        def rhs(y):
            return jnp.stack([p[0] * y[0] - p[1] * y[0] * y[1], p[2] * y[0] * y[1] - p[3] * y[1]])

        def step(carry, _):
            y, acc = carry
            h = W.LV_H
            k1 = rhs(y)
            k2 = rhs(y + 0.5 * h * k1)
            k3 = rhs(y + 0.5 * h * k2)
            k4 = rhs(y + h * k3)
            y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            return (y, acc + jnp.sum(y * y)), None
        (_, total), _ = jax.lax.scan(step, (y0, jnp.zeros((), y0.dtype)), None, length=steps)
        return total
    return loss


def _jax(workload):
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    fn = _fns(jnp, jnp.stack, workload)
    if workload.name == "W3":
        fn = _jax_lv_scan(jax, jnp, int(workload.description.split(",")[1].split()[0]))
    args = tuple(jnp.asarray(a) for a in workload.args)
    value = jax.jit(fn)
    vg = jax.jit(jax.value_and_grad(fn, argnums=workload.argnums))

    def block(f):
        return lambda *a: jax.block_until_ready(f(*a))
    return block(value), block(vg), args


def _autograd(workload):
    import autograd
    import autograd.numpy as anp
    fn = _fns(anp, anp.stack, workload)
    return fn, autograd.value_and_grad(fn, argnum=workload.argnums if len(workload.argnums) > 1
                                       else workload.argnums[0]), workload.args


def _torch(workload):
    import torch
    fn = _fns(torch, torch.stack, workload)
    args = tuple(torch.tensor(a, dtype=torch.float64) for a in workload.args)

    def value(*a):
        with torch.no_grad():
            return fn(*a)

    def value_and_grad(*a):
        leaves = [x.detach().requires_grad_(i in workload.argnums) for i, x in enumerate(a)]
        out = fn(*leaves)
        grads = torch.autograd.grad(out, [leaves[i] for i in workload.argnums])
        return out.detach(), grads
    return value, value_and_grad, args


def to_numpy(x):
    if hasattr(x, "detach"):
        x = x.detach()
    return np.asarray(x)
