"""Property-based: random chains of primitives differentiate like finite differences."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diffprog as dp

from .helpers import assert_close, numeric_grad

UNARY = {
    "sin": np.sin, "cos": np.cos, "tanh": np.tanh, "exp_small": lambda x: np.exp(0.3 * x),
    "square": np.square, "softplus": lambda x: np.log1p(np.exp(x)), "sqrt_pos": lambda x: np.sqrt(x * x + 1.0),
    "arctan": np.arctan, "sinh": lambda x: np.sinh(0.5 * x), "cube": lambda x: x ** 3 * 0.1,
}
BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply,
    "div": lambda a, b: a / (b * b + 1.0), "hypot": lambda a, b: np.hypot(a, b + 2.0),
    "logaddexp": np.logaddexp, "arctan2": lambda a, b: np.arctan2(a, b * b + 1.0),
}
STRUCT = {
    "transpose": lambda x: x.T.T, "roll": lambda x: np.roll(x, 1, axis=-1), "flip": lambda x: x[..., ::-1],
    "cumsum": lambda x: np.cumsum(x, axis=-1) * 0.3, "mean_keep": lambda x: x - np.mean(x, axis=-1, keepdims=True),
    "concat_split": lambda x: np.split(np.concatenate([x, x], axis=-1), 2, axis=-1)[1],
    "reshape": lambda x: x.reshape(-1).reshape(x.shape),
}

ops = st.lists(st.one_of(
    st.tuples(st.just("u"), st.sampled_from(sorted(UNARY))),
    st.tuples(st.just("b"), st.sampled_from(sorted(BINARY))),
    st.tuples(st.just("s"), st.sampled_from(sorted(STRUCT)))), min_size=1, max_size=6)


def build(chain):
    def f(x, y):
        h = x
        for kind, name in chain:
            if kind == "u":
                h = UNARY[name](h)
            elif kind == "b":
                h = BINARY[name](h, y)
            else:
                h = STRUCT[name](h)
        return np.sum(h * np.linspace(0.5, 1.5, h.size).reshape(h.shape))
    return f


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain=ops, seed=st.integers(0, 2**16))
def test_random_chains_match_finite_differences(chain, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-1, 1, (2, 3)), rng.uniform(-1, 1, (2, 3))
    f = build(chain)
    assert_close(dp.differentiable(f)(x, y), f(x, y), rtol=1e-12, atol=1e-12)
    gx, gy = dp.grad(f, argnums=(0, 1))(x, y)
    assert_close(gx, numeric_grad(f, [x, y], 0), rtol=1e-4, atol=1e-6)
    assert_close(gy, numeric_grad(f, [x, y], 1), rtol=1e-4, atol=1e-6)
    _, t = dp.jvp(f, (x, y), (np.ones_like(x), np.zeros_like(y)))
    assert_close(t, np.sum(gx), rtol=1e-9, atol=1e-9)
