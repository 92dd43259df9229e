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
