"""NumPy-engine lowering of small-array patterns (diffprog/engines/peephole.py): the
same values and dtypes as the unlowered program, fewer NumPy calls."""
from __future__ import annotations

import numpy as np
import pytest

import diffprog as dp
from diffprog.engines import peephole
from diffprog.engines.numpy import generate_source


def _run(graph, *args):
    src, ns = generate_source(graph, np, "prog")
    exec(compile(src, "<t>", "exec"), ns)
    return ns["prog"](*args), src


def _rk_step(p, y):
    f = np.stack([p[0] * y[0] - p[1] * y[0] * y[1], p[2] * y[0] * y[1] - p[3] * y[1]])
    return np.sum((y + 0.1 * f) ** 2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lowered_stack_and_indexing_give_identical_results(dtype):
    p = np.array([1.5, 1.0, 1.0, 3.0], dtype)
    y = np.array([1.0, 0.5], dtype)
    graph = dp.differentiable(_rk_step).ir(p, y)
    from diffprog.transforms import vjp_graph
    graph = vjp_graph(graph, [0, 1], seed="ones")
    lowered = peephole.lower(graph)
    assert "pack_scalars" in [e.prim.name for e in lowered.eqns]
    assert len(lowered.eqns) < len(graph.eqns)
    (plain, _), (low, src) = _run(graph, p, y), _run(lowered, p, y)
    assert "xp.array([" in src
    for a, b in zip(plain, low):
        assert np.result_type(a) == np.result_type(b) == dtype
        np.testing.assert_array_equal(a, b)


def test_outputs_keep_their_type_and_unmatched_graphs_are_unchanged():
    def f(x):
        return np.reshape(x[1:2], ())  # a program output: stays a 0-d array
    graph = dp.differentiable(f).ir(np.array([1.0, 2.0]))
    assert peephole.lower(graph) is graph
    out = dp.differentiable(f)(np.array([1.0, 2.0]))
    assert isinstance(out, np.ndarray) and out.shape == () and out == 2.0


def test_stack_of_python_floats_is_left_to_concatenate():
    g = dp.grad(lambda x: np.sum(np.stack([x * 2.0, x * 3.0])))(1.5)
    assert g == 5.0


# ---------------------------------------------------------------- outer products

def _outer_inputs(rng, n, m, dtype):
    a = rng.standard_normal((n, 1)).astype(dtype)
    b = rng.standard_normal((1, m)).astype(dtype)
    a[::3] = -0.0          # -0.0 * x: BLAS's zero-started sum gives +0.0
    b[:, ::4] = 0.0
    if n > 2:
        a[1], a[2] = np.inf, np.nan  # inf * 0 -> NaN, NaN propagates
    return a, b


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n, m", [(7, 9), (1, 9), (7, 1), (1, 1), (256, 256)])
def test_outer_products_become_a_broadcast_multiply_with_matmuls_bits(rng, dtype, n, m):
    assert peephole.outer_product_is_exact()  # NumPy's BLAS here: the rewrite is on
    a, b = _outer_inputs(rng, n, m, dtype)
    with np.errstate(all="ignore"):
        graph = dp.differentiable(lambda a, b: a @ b).ir(a, b)
    lowered = peephole.lower(graph)
    assert [e.prim.name for e in lowered.eqns] == ["mul", "add"]
    with np.errstate(all="ignore"):
        (got,), _ = _run(lowered, a, b)
        want = a @ b
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_other_products_stay_matmuls(rng):
    for shapes in [((3, 2), (2, 4)), ((3,), (3, 1)), ((2, 3, 1), (2, 1, 4)), ((3, 1), (1,))]:
        args = [rng.standard_normal(s) for s in shapes]
        graph = dp.differentiable(lambda a, b: a @ b).ir(*args)
        assert [e.prim.name for e in peephole.lower(graph).eqns] == ["matmul"], shapes
    z = (rng.standard_normal((3, 1)) + 1j, rng.standard_normal((1, 2)) + 0j)  # complex: BLAS's own
    graph = dp.differentiable(lambda a, b: a @ b).ir(*z)
    assert [e.prim.name for e in peephole.lower(graph).eqns] == ["matmul"]


def test_the_mlp_gradient_gives_the_same_bits_with_the_rewrite(rng, monkeypatch):
    """W2's gradient (an outer product of the output cotangent and a one-column weight):
    with and without the rewrite, the same bits."""
    x, w1 = rng.standard_normal((32, 8)), rng.standard_normal((8, 16))
    w2, y = rng.standard_normal((16, 1)), rng.standard_normal((32, 1))

    def loss(w1, w2):
        return np.mean((np.tanh(x @ w1) @ w2 - y) ** 2)

    with_rewrite = dp.value_and_grad(dp.differentiable(loss), argnums=(0, 1))(w1, w2)
    monkeypatch.setattr(peephole, "_outer_products", lambda graph: graph)
    without = dp.value_and_grad(dp.differentiable(loss), argnums=(0, 1))(w1, w2)
    assert with_rewrite[0] == without[0]
    for g1, g2 in zip(with_rewrite[1], without[1]):
        assert g1.tobytes() == g2.tobytes()


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_int_operands_of_float_arithmetic_become_floats_with_the_same_bits(rng, dtype):
    x = (rng.standard_normal(7) * 1e3).astype(dtype)

    def f(x):
        return 2 * x - 3, x / 7, 1 - x * 2 ** 53, 5 + x

    graph = dp.differentiable(f).ir(x)
    lowered = peephole.lower(graph)
    floats = [a.value for e in lowered.eqns for a in e.inputs if hasattr(a, "value")
              and not isinstance(a.value, np.ndarray)]
    if dtype is np.int64:  # int results stay int arithmetic, except the true division
        assert all(type(v) is int for v in floats if v != 7)
    else:
        assert floats and all(type(v) is float for v in floats)
    got, _ = _run(lowered, x)
    for g, want in zip(got, f(x)):
        assert g.dtype == want.dtype and g.tobytes() == want.tobytes()
