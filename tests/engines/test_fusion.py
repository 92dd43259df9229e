"""Blocked multi-threaded fusion in the numpy engine (diffprog/engines/fusion.py).

Fused results must be bit-identical to the unfused program: elementwise values are the
same NumPy ufunc loops on the same values, and fused sums add up in NumPy's own pairwise
order (tests/engines/test_fused_sums.py tests that over many sizes and dtypes). Nothing
the caller passed, no bound constant and no view of either is ever written to.
"""
from __future__ import annotations

import numpy as np
import pytest

import diffprog as dp
from diffprog.engines import fusion
from diffprog.engines.numpy import generate_source
from diffprog.transforms import vjp_graph

BIG = 3 * fusion.BLOCK + 5  # several blocks and a ragged last one


@pytest.fixture(autouse=True)
def fuse_small_arrays_too(monkeypatch):
    """Fuse from 1000 elements, so tests stay fast and cover several blocks."""
    monkeypatch.setenv("DIFFPROG_FUSE_MIN", "1000")


def _programs(fn, *args, kind="grad", threshold=1000):
    """(fused, unfused) compiled programs of ``fn``'s value or value+gradient graph."""
    graph = dp.differentiable(fn).ir(*args)
    if kind == "grad":
        graph = vjp_graph(graph, list(range(len(args))), seed="ones")
    out = []
    for blocks in (threshold, 0):
        src, ns = generate_source(graph, np, "prog", blocks=blocks)
        exec(compile(src, "<test>", "exec"), ns)
        out.append((ns["prog"], src))
    return out


def _assert_same(fused, plain):
    """Bit-identical, sums too (the same bits, or NaN on both sides)."""
    assert len(fused) == len(plain)
    for i, (a, b) in enumerate(zip(fused, plain)):
        assert np.shape(a) == np.shape(b) and np.result_type(a) == np.result_type(b), i
        a, b = np.atleast_1d(a), np.atleast_1d(b)
        if a.dtype.kind in "fc":
            ints = {4: np.int32, 8: np.int64, 16: np.int64}[a.dtype.itemsize // (2 if a.dtype.kind == "c" else 1)]
            same = a.view(ints) == b.view(ints)
            nan = np.isnan(a.view(a.real.dtype)) & np.isnan(b.view(b.real.dtype))
            assert np.all(same | nan), i
        else:
            np.testing.assert_array_equal(a, b)


def _chain(x, y):
    a = np.exp(-x ** 2) * np.cos(3.0 * x) + x ** 3 / (1.5 + y * y)
    b = np.where(x > 0.1, np.tanh(a), np.sqrt(np.abs(y) + 1.0)) - x ** -1
    return np.sum(a * b) + np.sum(np.log1p(b * b))


def test_fused_results_match_unfused_bit_for_bit(rng):
    x = rng.uniform(0.5, 2.0, BIG)
    y = rng.standard_normal(BIG)
    (fused, src), (plain, _) = _programs(_chain, x, y)
    assert "_block" in src and "_run_blocks" in src
    _assert_same(fused(x, y), plain(x, y))


def test_float32_stays_float32_and_matches(rng):
    x = rng.uniform(0.5, 2.0, BIG).astype(np.float32)
    y = rng.standard_normal(BIG).astype(np.float32)
    (fused, _), (plain, _) = _programs(_chain, x, y)
    out = fused(x, y)
    assert all(np.result_type(o) == np.float32 for o in out)
    _assert_same(out, plain(x, y))


def test_multidimensional_and_scalar_operands(rng):
    x = rng.standard_normal((130, 400))
    s = np.float64(0.7)

    def f(x, s):
        return np.sum(np.sin(x) * s + s * x ** 2)
    (fused, src), (plain, _) = _programs(f, x, s)
    assert "_block" in src
    _assert_same(fused(x, s), plain(x, s))


def test_inputs_constants_and_views_are_never_written(rng):
    base = rng.standard_normal((2 * BIG,))
    view = base[::2]                   # a non-contiguous view of a user array
    const = rng.standard_normal(BIG)   # a constant bound into the program
    base_copy, const_copy = base.copy(), const.copy()

    def f(x):
        t = x * x                      # dies inside the run: its buffer is reused in place
        return np.sum(np.exp(-t) * const + np.negative(t))

    vg = dp.value_and_grad(f)
    src = dp.differentiable(f).source(view, kind="grad")
    assert "_block" in src
    v1, g1 = vg(view)
    v2, g2 = vg(view)
    np.testing.assert_array_equal(base, base_copy)
    np.testing.assert_array_equal(const, const_copy)
    np.testing.assert_array_equal(g1, g2)
    assert v1 == v2
    g1[:] = 0.0                        # results are fresh arrays, not program state
    np.testing.assert_array_equal(vg(view)[1], g2)
    expected = np.exp(-view * view) * const * (-2 * view) - 2 * view
    np.testing.assert_allclose(g2, expected, rtol=1e-12, atol=1e-15)


def test_below_threshold_is_not_fused(monkeypatch, rng):
    def f(x):
        return np.sum(np.sin(x) * x)
    monkeypatch.setenv("DIFFPROG_FUSE_MIN", str(BIG + 1))
    assert "_block" not in dp.differentiable(f).source(np.ones(BIG), kind="grad")
    monkeypatch.setenv("DIFFPROG_FUSE_MIN", str(BIG))
    assert "_block" in dp.differentiable(f).source(np.ones(BIG), kind="grad")
    monkeypatch.setenv("DIFFPROG_FUSE_MIN", "0")  # 0 turns fusion off
    assert "_block" not in dp.differentiable(f).source(np.ones(BIG), kind="grad")


def test_thread_count_does_not_change_elementwise_results(monkeypatch, rng):
    x = rng.standard_normal(BIG)
    (fused, _), _ = _programs(lambda x: np.sum(np.cos(x) * np.exp(x / 3.0)), x)
    monkeypatch.setenv("DIFFPROG_THREADS", "1")
    one = fused(x)
    monkeypatch.setenv("DIFFPROG_THREADS", "3")
    three = fused(x)
    _assert_same(one, three)
    assert one[0] == np.sum(np.cos(x) * np.exp(x / 3.0))


def test_caller_errstate_applies_in_worker_threads(monkeypatch):
    monkeypatch.setenv("DIFFPROG_THREADS", "2")
    x = np.ones(BIG)
    x[-1] = 0.0  # the division by zero happens in the second thread's part
    with np.errstate(divide="ignore"):  # tracing evaluates it once too
        (fused, _), _ = _programs(lambda x: np.sum(np.exp(x) / x), x, kind="value")
    with np.errstate(divide="raise"):
        with pytest.raises(FloatingPointError):
            fused(x)
    with np.errstate(divide="ignore"):
        assert np.isinf(fused(x)[0])


def test_power_shortcuts_match_numpy_operator(rng):
    x = rng.uniform(0.5, 2.0, BIG)
    for n in (2, 3, -1, -2, 1):
        (fused, src), (plain, _) = _programs(lambda x, n=n: np.sum(np.sin(x) ** n * x), x)
        _assert_same(fused(x), plain(x))


@pytest.mark.parametrize("threads", ["1", "2", "3", "4", "7"])
def test_run_blocks_covers_every_block_once_in_order(monkeypatch, threads):
    monkeypatch.setenv("DIFFPROG_THREADS", threads)
    for size in (1, 200, 73 * 1000 + 3, 5 * fusion.BLOCK + 1):
        spans, _ = fusion.sum_plan(size, "real", 1000)
        seen = []

        def chunk(lo, hi):
            seen.append((lo, hi))
            return [spans[k] for k in range(lo, hi)]
        parts = fusion.run_blocks(chunk, spans)
        assert [s for part in parts for s in part] == list(spans)  # in order, each once
        ranges = sorted(seen)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(spans)
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges, ranges[1:]))
        assert len(ranges) <= min(int(threads), len(spans))


def _sincos_chain(x):
    return np.sum(np.exp(-x ** 2) * np.cos(3.0 * x)) + np.sum(np.sin(x) * np.cos(x))


@pytest.mark.parametrize("helper", ["on", "off"])
def test_sin_and_cos_of_one_operand_in_one_call(monkeypatch, rng, helper):
    from diffprog.engines import fastmath
    monkeypatch.setenv("DIFFPROG_FASTMATH", "1" if helper == "on" else "0")
    fastmath.reset()
    try:
        x = rng.standard_normal(BIG) * 4
        (fused, src), (plain, plain_src) = _programs(_sincos_chain, x)
        used = fastmath.sincos() is not None
        # the gradient needs sin(3x) beside cos(3x), and cos(x) beside sin(x)
        assert src.count("_sincos(") == (2 if used else 0)
        assert "_sincos" not in plain_src  # unfused programs keep np.sin / np.cos
        _assert_same(fused(x), plain(x))
    finally:
        fastmath.reset()


def test_float32_sin_and_cos_stay_numpy_calls(rng):
    x = rng.standard_normal(BIG).astype(np.float32)
    (fused, src), (plain, _) = _programs(_sincos_chain, x)
    assert "_sincos" not in src
    _assert_same(fused(x), plain(x))


def test_repeated_value_constants_are_never_copied_to_full_size():
    """ir.compact_constant keeps np.ones(n)-like constants as stride-0 broadcasts; a fused
    block reads them as one element (a view for NumPy, a scalar for C), not xp.ravel."""
    import tracemalloc

    from diffprog.engines import ckernel
    n = 1 << 20
    x = np.linspace(-1.0, 1.0, n)

    def f(x):
        return np.sum(np.ones(n) * 3.0 * np.sin(x) + np.full(n, 2.0) * x)

    g = dp.value_and_grad(f)
    first = g(x)
    ckernel.wait()
    source = dp.differentiable(f).source(x, kind="grad")
    assert "xp.ravel(_c" not in source
    tracemalloc.start()
    value, grad = g(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1.5 * 8 * n  # the gradient itself, no full-size copy of a constant
    assert value == first[0] and np.array_equal(grad, first[1])
    assert np.array_equal(grad, 3.0 * np.cos(x) + np.full(n, 2.0))
