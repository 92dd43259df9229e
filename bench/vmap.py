"""Batching benchmark (dp.vmap), ratios measured in one run:

    python -m bench.vmap            # per-example gradients (W2 MLP) and an RK4 ensemble
    python -m bench.vmap --size tiny

* per-example gradients of the W2 MLP (batch 256, 64 -> 256 -> 1): dp.vmap(dp.grad(loss))
  against one hand-written batched NumPy gradient and against a Python loop of dp.grad;
* an ensemble of 1,000 Lotka-Volterra RK4 solves (100 steps) with the gradient of each
  member's loss w.r.t. its own parameters: dp.vmap against a loop of dp.value_and_grad
  (the loop is timed on 50 members and scaled), and JAX's vmap when JAX is installed.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import diffprog as dp
from diffprog.sciml import odeint

from .timing import best_of


def mlp_loss(p, x, y):
    h = np.tanh(x @ p["w1"])
    return np.sum((h @ p["w2"] - y) ** 2)


def mlp_per_example_by_hand(p, X, Y):
    h = np.tanh(X @ p["w1"])
    d_out = 2 * (h @ p["w2"] - Y)
    d_pre = (d_out @ p["w2"].T) * (1 - h * h)
    return {"w1": X[:, :, None] * d_pre[:, None, :], "w2": h[:, :, None] * d_out[:, None, :]}


def per_example(size: str) -> dict:
    batch, d_in, hidden = (256, 64, 256) if size == "full" else (8, 4, 6)
    rng = np.random.default_rng(0)
    p = {"w1": rng.standard_normal((d_in, hidden)) / np.sqrt(d_in),
         "w2": rng.standard_normal((hidden, 1)) / np.sqrt(hidden)}
    X, Y = rng.standard_normal((batch, d_in)), rng.standard_normal((batch, 1))
    batched = dp.vmap(dp.grad(mlp_loss), in_axes=(None, 0, 0))
    one = dp.grad(mlp_loss)
    got, want = batched(p, X, Y), mlp_per_example_by_hand(p, X, Y)
    assert all(np.allclose(got[k], want[k], rtol=1e-10, atol=1e-12) for k in want)
    t_vmap = best_of(batched, p, X, Y)
    t_hand = best_of(mlp_per_example_by_hand, p, X, Y)
    t_loop = best_of(lambda: [one(p, X[i], Y[i]) for i in range(batch)], repeats=2)
    return {"vmap / by hand": t_vmap / t_hand, "loop / vmap": t_loop / t_vmap,
            "by hand: loop / batched": t_loop / t_hand}


def lotka_volterra(y, t, a, b):
    return np.stack([a * y[0] - b * y[0] * y[1], b * y[0] * y[1] - y[1]])


def ensemble(size: str) -> dict:
    members = 1000 if size == "full" else 20
    y0, ts = np.array([1.0, 0.5]), np.linspace(0.0, 5.0, 101)

    def loss(theta):
        traj = odeint(lotka_volterra, y0, ts, theta[0], theta[1], method="rk4",
                      steps_per_interval=1)
        return np.sum(traj[-1] ** 2)
    thetas = np.stack([np.linspace(0.8, 1.2, members), np.full(members, 0.4)], 1)
    batched = dp.vmap(dp.value_and_grad(loss))
    one = dp.value_and_grad(loss)
    values, grads = batched(thetas)
    v0, g0 = one(thetas[0])
    assert np.isclose(values[0], v0) and np.allclose(grads[0], g0)
    t_vmap = best_of(batched, thetas, repeats=3)
    sample = min(members, 50)
    start = time.perf_counter()
    for th in thetas[:sample]:
        one(th)
    t_loop = (time.perf_counter() - start) * members / sample
    out = {"loop / vmap": t_loop / t_vmap}
    jax_time = _jax_ensemble(thetas, y0, ts)
    if jax_time is not None:
        out["dp.vmap / jax.vmap"] = t_vmap / jax_time
    return out


def _jax_ensemble(thetas, y0, ts):
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    dt = float(ts[1] - ts[0])

    def rhs(y, a, b):
        return jnp.stack([a * y[0] - b * y[0] * y[1], b * y[0] * y[1] - y[1]])

    def loss(theta):
        def step(y, _):
            k1 = rhs(y, *theta)
            k2 = rhs(y + dt / 2 * k1, *theta)
            k3 = rhs(y + dt / 2 * k2, *theta)
            k4 = rhs(y + dt * k3, *theta)
            return y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None
        y, _ = jax.lax.scan(step, jnp.asarray(y0), None, length=len(ts) - 1)
        return jnp.sum(y ** 2)
    f = jax.jit(jax.vmap(jax.value_and_grad(loss)))
    th = jnp.asarray(thetas)
    return best_of(lambda: jax.block_until_ready(f(th)), repeats=3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("full", "tiny"), default="full")
    size = ap.parse_args(argv).size
    for name, result in (("per-example gradients, W2 MLP", per_example(size)),
                         ("ensemble of RK4 solves with gradients", ensemble(size))):
        print(name + ": " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
