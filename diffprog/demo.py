"""diffprog's main job in one run: fit a model written in plain NumPy.

Run with ``python -m diffprog.demo``. It fits a small tanh network to noisy data with
gradients from diffprog, checks those gradients against finite differences and against
a hand-written NumPy gradient, shows the generated gradient code, and compares speed.
"""
from __future__ import annotations

import time

import numpy as np

import diffprog as dp


def init_params(rng, hidden=32):
    return {"w1": rng.standard_normal((1, hidden)) * 1.0, "b1": np.zeros(hidden),
            "w2": rng.standard_normal((hidden, 1)) / np.sqrt(hidden), "b2": np.zeros(1)}


@dp.differentiable
def loss(params, x, y):
    """Mean squared error of a 1-32-1 tanh network: ordinary NumPy code."""
    h = np.tanh(x @ params["w1"] + params["b1"])
    pred = h @ params["w2"] + params["b2"]
    return np.mean((pred - y) ** 2)


def hand_written_grad(params, x, y):
    """The gradient a person would derive by hand, for comparison."""
    h = np.tanh(x @ params["w1"] + params["b1"])
    r = h @ params["w2"] + params["b2"] - y
    d_pred = 2.0 * r / r.size
    d_h = (d_pred @ params["w2"].T) * (1.0 - h * h)
    return {"w1": x.T @ d_h, "b1": d_h.sum(0), "w2": h.T @ d_pred, "b2": d_pred.sum(0)}


def adam(params, grads, state, lr=0.01, b1=0.9, b2=0.999, eps=1e-8):
    step = state.get("step", 0) + 1
    m = {k: b1 * state.get("m", {}).get(k, 0.0) + (1 - b1) * g for k, g in grads.items()}
    v = {k: b2 * state.get("v", {}).get(k, 0.0) + (1 - b2) * g * g for k, g in grads.items()}
    new = {k: params[k] - lr * (m[k] / (1 - b1 ** step)) / (np.sqrt(v[k] / (1 - b2 ** step)) + eps)
           for k in params}
    return new, {"step": step, "m": m, "v": v}


def finite_difference_check(params, x, y, grads, eps=1e-6):
    worst = 0.0
    for k, w in params.items():
        for i in range(min(w.size, 5)):
            plus = {**params, k: w.copy()}
            minus = {**params, k: w.copy()}
            plus[k].flat[i] += eps
            minus[k].flat[i] -= eps
            fd = (loss(plus, x, y) - loss(minus, x, y)) / (2 * eps)
            worst = max(worst, abs(fd - grads[k].flat[i]) / max(1e-8, abs(fd)))
    return worst


def timeit(fn, repeat=200):
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    x = np.linspace(-3, 3, 256).reshape(-1, 1)
    y = np.sin(2 * x) + 0.1 * rng.standard_normal(x.shape)
    params = init_params(rng)
    value_and_grad = dp.value_and_grad(loss)

    print("diffprog demo: fit y = sin(2x) + noise with a 1-32-1 tanh network (numpy engine)\n")
    t0 = time.perf_counter()
    value_and_grad(params, x, y)
    print(f"trace + differentiate + compile: {1e3 * (time.perf_counter() - t0):.1f} ms")

    state: dict = {}
    for step in range(1501):
        value, grads = value_and_grad(params, x, y)
        if step % 300 == 0:
            print(f"  step {step:5d}   loss {value:.5f}")
        params, state = adam(params, grads, state)
    final = loss(params, x, y)
    print(f"final loss {final:.5f}  (noise floor ~ {0.1 ** 2:.3f})")
    assert final < 0.05, "the fit should reach the noise floor"

    _, grads = value_and_grad(params, x, y)
    fd_err = finite_difference_check(params, x, y, grads)
    hand = hand_written_grad(params, x, y)
    hand_err = max(float(np.max(np.abs(grads[k] - hand[k]))) for k in grads)
    print(f"\ngradient vs central finite differences: max rel. error {fd_err:.1e}")
    print(f"gradient vs hand-written NumPy gradient: max abs. difference {hand_err:.1e}")
    assert fd_err < 1e-5 and hand_err < 1e-12

    ours = timeit(lambda: value_and_grad(params, x, y))
    theirs = timeit(lambda: hand_written_grad(params, x, y))
    print(f"time per value+gradient: diffprog / hand-written NumPy = {ours / theirs:.2f}x")

    print("\nThe gradient program diffprog generated (loss.source(..., kind='grad')):\n")
    print(loss.source(params, x, y, kind="grad"))


if __name__ == "__main__":
    main()
