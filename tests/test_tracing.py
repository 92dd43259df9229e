"""Tracing: what is recorded, and what a traced value refuses to do."""
from __future__ import annotations

import numpy as np
import pytest

import diffprog as dp
from diffprog.ir import Lit
from diffprog.tracing import Tracer


def test_constant_subexpressions_are_folded_at_trace_time():
    def f(x):
        c = np.arange(3.0)  # made inside: constant (a closed-over array would be an input)
        return x * np.exp(c) + np.sum(c)
    graph = dp.differentiable(f).ir(np.ones(3))
    names = [e.prim.name for e in graph.eqns]
    assert "exp" not in names and "reduce_sum" not in names
    assert names == ["mul", "add"]


def test_multiplying_by_one_and_adding_zero_records_nothing():
    graph = dp.differentiable(lambda x: (np.sin(x) * 1.0 + -0.0 - 0.0) / 1.0).ir(np.ones(3))
    assert [e.prim.name for e in graph.eqns] == ["sin"]
    # on an argument (which may be strided or reversed) the first one is kept: it makes the
    # contiguous copy a following np.exp would see in NumPy, whose SIMD loops may round a
    # strided array differently; the rest are dropped
    graph = dp.differentiable(lambda x: (x * 1.0 + -0.0 - 0.0) / 1.0).ir(np.ones(3))
    assert [e.prim.name for e in graph.eqns] == ["mul"]
    x = np.linspace(-700.0, 700.0, 100001)[::-1]
    assert dp.differentiable(lambda x: np.exp(x * 1.0))(x).tobytes() == np.exp(x * 1.0).tobytes()
    assert [e.prim.name for e in dp.differentiable(lambda s: s * 1.0 + 2.0).ir(np.float64(3)).eqns] \
        == ["add"]  # one element: no layout, dropped
    # x + 0.0 is not x bit for bit (NumPy gives +0.0 at x = -0.0): kept
    f = dp.differentiable(lambda x: x + 0.0)
    assert [e.prim.name for e in f.ir(np.ones(3)).eqns] == ["add"]
    assert not np.signbit(f(np.array([-0.0]))[0])


def test_identity_is_kept_when_it_would_broadcast_or_promote():
    graph = dp.differentiable(lambda x: x * np.ones((2, 3))).ir(np.ones(3))
    assert [e.prim.name for e in graph.eqns] == ["mul"]
    assert graph.outvars[0].aval.shape == (2, 3)


def test_tracer_behaves_like_an_array():
    seen = {}

    def f(x):
        seen.update(shape=x.shape, ndim=x.ndim, size=x.size, dtype=x.dtype, len=len(x))
        return np.sum(x)
    dp.grad(f)(np.ones((2, 3), np.float32))
    assert seen == {"shape": (2, 3), "ndim": 2, "size": 6, "dtype": np.float32, "len": 2}


def test_python_if_without_a_concrete_value_names_the_line():
    """Loop bodies of dp.fori_loop are traced without values: no guard is possible."""
    def body(i, x):
        if np.sum(x) > 0:
            return x * 2
        return x
    with pytest.raises(dp.ConcretizationError, match=r"test_tracing.py:\d+: if np.sum\(x\) > 0"):
        dp.grad(lambda x: np.sum(dp.fori_loop(0, 3, body, x)))(np.ones(2))


def test_graph_validates_and_prints():
    graph = dp.differentiable(lambda x, y: np.sin(x) @ y).ir(np.ones((2, 3)), np.ones(3))
    graph.validate()
    text = str(graph)
    assert "sin" in text and "matmul" in text and "float64[2,3]" in text


def test_outputs_that_ignore_the_input_are_constants():
    graph = dp.differentiable(lambda x: np.ones(2)).ir(np.ones(3))
    assert isinstance(graph.outvars[0], Lit)
    assert_out = dp.differentiable(lambda x: np.ones(2))(np.ones(3))
    np.testing.assert_array_equal(assert_out, np.ones(2))


def test_ndarray_on_the_left_defers_to_the_tracer():
    c = np.arange(3.0)
    kinds = []

    def f(x):
        y = c * x
        kinds.append(type(y))
        return np.sum(c - x + y)
    dp.grad(f)(np.ones(3))
    assert kinds == [Tracer]


def test_identity_operations_that_change_dtype_are_kept():
    img = np.array([0, 100, 200], np.uint8)
    # uint8 * 1.0 is float64 in NumPy: dropping it would wrap around in uint8
    grad = dp.grad(lambda w, i: np.sum(w * (i * 1.0 - 128)))(np.ones(3), img)
    np.testing.assert_array_equal(grad, [-128.0, -28.0, 72.0])
    mask_f = dp.differentiable(lambda x: -((x > 0) * 1.0))(np.array([1.0, -1.0]))
    np.testing.assert_array_equal(mask_f, [-1.0, -0.0])
    x32 = np.ones(2, np.float32)
    assert dp.differentiable(lambda x: x * np.float64(1))(x32).dtype == np.float64
    assert dp.differentiable(lambda x: x * 1.0)(x32).dtype == np.float32  # weak scalar
    graph = dp.differentiable(lambda x: np.cos(x) * 1.0 + -0.0).ir(np.ones(3))
    assert [e.prim.name for e in graph.eqns] == ["cos"]  # a true identity is still dropped


_COPIES = {
    "astype": lambda x: np.exp(x.astype(np.float64)),
    "np.array": lambda x: np.exp(np.array(x)),
    "np.copy": lambda x: np.exp(np.copy(x)),
    "copy method": lambda x: np.exp(x.copy()),
    "ascontiguousarray": lambda x: np.exp(np.ascontiguousarray(x)),
    "positive": lambda x: np.exp(+x),
    "np.positive": lambda x: np.exp(np.positive(x)),
    "power 1": lambda x: np.exp(x ** 1),
    "double negation": lambda x: np.exp(-(-x)),
    "times one": lambda x: np.exp(x * 1.0),
    "flatten": lambda x: np.exp(x.flatten()),
    "ravel": lambda x: np.exp(np.ravel(x)),
    "concatenate of one": lambda x: np.exp(np.concatenate([x])),
    "stack of one": lambda x: np.exp(np.stack([x])),
    "np.conj of real": lambda x: np.exp(np.conj(x)),
    "tile once": lambda x: np.exp(np.tile(x, 1)),
    "sum over no axes": lambda x: np.exp(np.sum(x, axis=())),
    "asarray order C": lambda x: np.exp(np.asarray(x, order="C")),
}


@pytest.mark.parametrize("name", sorted(_COPIES))
def test_copies_numpy_makes_are_kept_where_they_change_bits(name):
    """NumPy's SIMD exp (AVX-512) may give a reversed array other bits than a contiguous
    copy of it: every spelling of a copy must reach np.exp as NumPy's copy does."""
    f = _COPIES[name]
    x = np.linspace(-700.0, 700.0, 100001)[::-1]
    with np.errstate(all="ignore"):
        want = f(x)
        assert dp.differentiable(f)(x).tobytes() == want.tobytes()
        g = dp.grad(lambda x: np.sum(f(x)))(x[:5000])
    np.testing.assert_allclose(g, np.exp(x[:5000]), rtol=1e-15)


@pytest.mark.parametrize("order", ["C", "F", "K"])
def test_copies_are_laid_out_as_numpy_lays_them_out(order):
    """A later sum along an axis walks memory: F and C copies of one array sum apart."""
    x = np.asfortranarray(np.random.default_rng(3).standard_normal((300, 200)))

    def f(x):
        c = {"C": np.ascontiguousarray, "F": np.asfortranarray,
             "K": lambda a: np.copy(a, order="K")}[order](np.sin(x))
        return np.sum(c, axis=1), np.sum(np.exp(c) * 2.0, axis=0)

    for got, want in zip(dp.differentiable(f)(x), f(x)):
        assert got.tobytes() == want.tobytes()


def test_sets_and_dicts_of_traced_scalars_deduplicate_by_value():
    # (a reviewer: tracers hashed by id(), so {a[0], a[1]} kept equal values twice)
    f = lambda a: sum(set([a[0], a[1], a[2]]))  # noqa: E731
    g = lambda a: np.sum(a) * len({v: 0 for v in a})  # noqa: E731
    for a in (np.array([1.0, 1.0, 2.0]), np.array([1.0, 3.0, 2.0])):
        assert dp.differentiable(f)(a) == f(a)
        np.testing.assert_array_equal(dp.grad(g)(a), np.full(3, len(set(a.tolist()))))


def test_traced_arrays_are_unhashable_as_numpy_arrays_are():
    with pytest.raises(dp.errors.ArgumentError, match="unhashable"):
        dp.differentiable(lambda a: len({a: 1}))(np.ones(2))
    with pytest.raises(TypeError):  # (ArgumentError is a TypeError, as NumPy's error)
        dp.differentiable(lambda a: len({a: 1}))(np.ones(2))
