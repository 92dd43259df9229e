"""The program cache is bounded (LRU, counted) and programs keep no input-sized buffers."""
import gc
import weakref

import numpy as np
import pytest

import diffprog as dp
from diffprog.api import cache_for


@pytest.fixture
def small_cache():
    previous = dp.set_cache_size(4)
    yield
    dp.set_cache_size(previous)


def test_the_cache_keeps_at_most_the_configured_signatures(small_cache):
    f = dp.differentiable(lambda x: np.sum(np.sin(x)))
    g = dp.grad(f)
    before = dp.cache_info()["evictions"]
    for n in range(1, 30):
        np.testing.assert_allclose(g(np.ones(n)), np.cos(np.ones(n)))
    cache = cache_for(f.fn)
    assert len(cache.variants) <= 4 and len(cache.traced) <= 4 and len(g._fast) <= 4
    assert dp.cache_info()["evictions"] - before == 25  # 29 signatures, 4 kept
    assert dp.cache_info()["maxsize"] == 4


def test_least_recently_used_signature_is_dropped_first(small_cache):
    f = dp.differentiable(lambda x, k: np.sum(x ** k))  # an int argument: the full path
    for n in [1, 2, 3, 4]:
        f(np.ones(n), 2)
    f(np.ones(1), 2)  # touch the oldest
    f(np.ones(5), 2)  # evicts shape (2,), not (1,)
    shapes = {k[0][1][0][1] for k in cache_for(f.fn).variants}
    assert (1,) in shapes and (2,) not in shapes


def test_hits_and_misses_are_counted():
    f = dp.differentiable(lambda x, k: x * k)
    before = dp.cache_info()
    f(np.ones(2), 1)
    f(np.ones(2), 1)
    after = dp.cache_info()
    assert after["misses"] == before["misses"] + 1 and after["hits"] >= before["hits"] + 1


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_set_cache_size_refuses_bad_sizes(bad):
    with pytest.raises(dp.ArgumentValueError, match="positive integer"):
        dp.set_cache_size(bad)


def test_the_size_comes_from_the_environment(monkeypatch):
    from diffprog import api
    monkeypatch.setenv("DIFFPROG_CACHE_SIZE", "9")
    assert api._cache_size_from_env() == 9
    monkeypatch.setenv("DIFFPROG_CACHE_SIZE", "lots")
    with pytest.warns(dp.DiffprogWarning, match="DIFFPROG_CACHE_SIZE"):
        assert api._cache_size_from_env() == api.DEFAULT_CACHE_SIZE


def _retained_bytes(fn) -> int:
    """Bytes of array constants held by the cached programs of ``fn``."""
    total = 0
    for program, traced in cache_for(fn).programs.values():
        for graph in (program.graph, traced.graph):
            for eqn in graph.eqns:
                for a in eqn.inputs:
                    v = getattr(a, "value", None)
                    if isinstance(v, np.ndarray) and all(v.strides):
                        total += v.nbytes
    return total


@pytest.mark.parametrize("body", [
    lambda x: np.sum(x * np.ones_like(x)),
    lambda x: np.sum(np.zeros_like(x) + x ** 2),
    lambda x: np.sum(np.full(x.shape, 2.0) * x),
    lambda x: np.sum(np.full_like(x, 3.0) * 2.0 * x),
], ids=["ones_like", "zeros_like", "full", "full_like-folded"])
def test_programs_keep_no_input_sized_constants(body):
    x = np.linspace(0.0, 1.0, 1 << 16)
    g = dp.grad(body)(x)
    assert np.all(np.isfinite(g))
    out, pullback = dp.vjp(body, x)
    pullback(1.0)
    dp.jvp(body, (x,), (x,))
    assert _retained_bytes(body) < x.nbytes // 8


def test_programs_do_not_keep_their_inputs_alive():
    x = np.ones(1 << 16)
    ref = weakref.ref(x)
    dp.grad(lambda v: np.sum(np.tanh(v) * v))(x)
    del x
    gc.collect()
    assert ref() is None


def test_compacted_constants_keep_signed_zeros():
    from diffprog.ir import compact_constant
    a = np.zeros(1 << 13)
    a[5] = -0.0
    assert compact_constant(a) is a
    b = np.full(1 << 13, -0.0)
    c = compact_constant(b)
    assert c.strides == (0,) and np.signbit(c).all()
