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
from diffprog.engines import ckernel, fusion
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


def test_default_thresholds_fuse_mid_size_arrays_only_with_compiled_kernels(monkeypatch):
    """Unset DIFFPROG_FUSE_MIN: arrays from COMPILED_MIN elements are fused where compiled
    kernels can be built, but below PY_BLOCK_MIN the block falls back to its equations
    unfused (never the NumPy block loop, which costs more than it saves there)."""
    monkeypatch.delenv("DIFFPROG_FUSE_MIN")
    monkeypatch.delenv("DIFFPROG_CKERNELS", raising=False)

    def f(x):
        return np.sum(np.sin(x) * x)

    mid = np.ones(fusion.COMPILED_MIN)
    if ckernel.compiler() is None:
        assert fusion.min_size() == fusion.PY_BLOCK_MIN
    else:
        assert fusion.min_size() == fusion.COMPILED_MIN
        source = dp.differentiable(f).source(mid, kind="grad")
        assert "_block" in source and "_run_blocks" not in source and "u0 = " in source
        small = dp.differentiable(f).source(np.ones(fusion.COMPILED_MIN - 1), kind="grad")
        assert "_block" not in small
        big = dp.differentiable(f).source(np.ones(fusion.PY_BLOCK_MIN), kind="grad")
        assert "_run_blocks" in big  # the NumPy block loop from PY_BLOCK_MIN on
    monkeypatch.setenv("DIFFPROG_CKERNELS", "0")
    assert fusion.min_size() == fusion.PY_BLOCK_MIN
    assert "_block" not in dp.differentiable(f).source(mid, kind="grad")


@pytest.mark.parametrize("shape", [(fusion.COMPILED_MIN,), (256, 256), (3, 20000)])
def test_mid_size_blocks_give_numpy_bits_before_and_after_the_compiler(monkeypatch, rng, shape):
    monkeypatch.delenv("DIFFPROG_FUSE_MIN")
    x, y = rng.standard_normal(shape), rng.standard_normal(shape)

    def f(x, y):
        h = np.tanh(x * y + 0.5)
        return np.sum((1.0 - h * h) * y) + np.sum(np.exp(-x * x) * np.cos(3.0 * x))

    def by_hand(x, y):
        h = np.tanh(x * y + 0.5)
        return np.sum((1.0 - h * h) * y) + np.sum(np.exp(-x * x) * np.cos(3.0 * x))

    g = dp.differentiable(f)
    first = g(x, y)  # the C twin may still be compiling: the unfused equations run
    ckernel.wait()
    second = g(x, y)
    expect = by_hand(x, y)
    assert first == expect and second == expect  # bit for bit
    vg = dp.value_and_grad(dp.differentiable(f), argnums=(0, 1))
    v1, (gx1, gy1) = vg(x, y)
    ckernel.wait()
    v2, (gx2, gy2) = vg(x, y)
    assert v1 == v2 == expect
    np.testing.assert_array_equal(gx1, gx2)
    np.testing.assert_array_equal(gy1, gy2)
    # a transposed (not C-ordered) input: the unfused equations sum in NumPy's order
    xt = np.ascontiguousarray(x.T).T
    assert dp.differentiable(f)(xt, y) == by_hand(xt, y)


@pytest.mark.parametrize("shape, small", [
    ((40, 300), (300,)), ((40, 300), (1, 300)), ((40, 300), (40, 1)), ((40, 300), (1, 1)),
    ((4, 25, 30), (30,)), ((4, 25, 30), (25, 30)), ((4, 25, 30), (4, 1, 1)),
    ((4, 25, 30), (4, 25, 1)), ((4, 25, 30), (4, 1, 30))])  # the last: not a pattern
def test_broadcast_operands_join_blocks_with_numpy_bits(rng, shape, small):
    """A bias (trailing axes) or a column (leading axes) broadcast against block-sized
    values is read inside the block; the values and sums are NumPy's, bit for bit."""
    x, b = rng.standard_normal(shape), rng.standard_normal(small)

    def f(x, b):
        h = np.tanh(x + b) * b
        return np.sum(h * x - b), h

    for kind in ("value", "grad"):
        (fused, src), (plain, _) = _programs(f, x, b, kind=kind)
        if fusion.broadcast_pattern(small, shape) is not None:
            assert "_block" in src and "broadcast_to" in src
        _assert_same(fused(x, b), plain(x, b))


def test_broadcast_pattern():
    bp = fusion.broadcast_pattern
    assert bp((5,), (3, 5)) == ("inner", 5) and bp((1, 5), (3, 5)) == ("inner", 5)
    assert bp((3, 1), (3, 5)) == ("outer", 5) and bp((3, 1, 1), (3, 4, 5)) == ("outer", 20)
    assert bp((4, 5), (3, 4, 5)) == ("inner", 20) and bp((1, 1), (3, 5)) == ("inner", 1)
    assert bp((3, 5), (3, 5)) is None and bp((), (3, 5)) is None
    assert bp((3, 1, 5), (3, 4, 5)) is None and bp((5, 3), (3, 5)) is None


def test_views_inside_an_elementwise_run_move_before_it_and_products_stay(rng):
    """A transpose between two parts of a run reads nothing the run computed: it moves
    before the run, which becomes one kernel. A product stays where it is (moving it
    would change which of two floating-point errors errstate reports first)."""
    a, b = rng.standard_normal((64, 64)), rng.standard_normal((64, 64))

    def views(a, b):
        c = np.sin(a) * b
        bt = b.T                        # a view, between two parts of the run
        return np.sum(np.cos(c) * bt + c)

    def product(a, b):
        c = np.sin(a) * b
        d = a @ b                       # computes: stays between the parts
        return np.sum(np.cos(c) * d + c)

    graph = dp.differentiable(views).ir(a, b)
    names = [e.prim.name for e in fusion.gather_runs(graph, 1000).eqns]
    assert names.index("transpose") < names.index("sin")
    (fused, src), (plain, _) = _programs(views, a, b, kind="value")
    assert src.count("def _block") == 1, src
    _assert_same(fused(a, b), plain(a, b))
    graph = dp.differentiable(product).ir(a, b)
    assert fusion.gather_runs(graph, 1000) is graph
    with np.errstate(invalid="raise"):  # log(-1) first, as NumPy: not the product's inf * 0
        x, inf = np.full(4096, -1.0), np.array([[np.inf, 1.0]])
        f = dp.differentiable(lambda x, A, B: (np.log(x) * 2.0 + x, A @ B))
        with pytest.raises(FloatingPointError, match="log"):
            f(x, inf, np.array([[0.0], [1.0]]))


def test_an_equation_reading_the_run_is_not_moved(rng):
    a, b = rng.standard_normal((40, 40)), rng.standard_normal((40, 40))

    def f(a, b):
        c = np.sin(a) * b
        d = c @ b              # reads the run: the run ends here
        return np.sum(np.cos(d) * c + a)

    graph = dp.differentiable(f).ir(a, b)
    moved = fusion.gather_runs(graph, 1000)
    names = [e.prim.name for e in moved.eqns]
    assert names.index("matmul") > names.index("mul")  # still after what it reads
    (fused, _), (plain, _) = _programs(f, a, b)
    _assert_same(fused(a, b), plain(a, b))
    assert fusion.gather_runs(graph, 0) is graph


@pytest.mark.parametrize("layout", ["F", "T", "strided"])
def test_results_keep_numpys_layout_for_sums_along_an_axis(monkeypatch, rng, layout):
    """NumPy lays out an elementwise result like its inputs (F-ordered in, F-ordered out);
    a sum along an axis then walks that memory. Blocks write C order, so a block over
    inputs that are not C-ordered runs its equations unfused: the same bits on the first
    call (before the C twin is built) and after it (a reviewer's repro)."""
    monkeypatch.delenv("DIFFPROG_FUSE_MIN")
    base = rng.standard_normal((256, 256))
    x = {"F": np.asfortranarray(base), "T": np.ascontiguousarray(base.T).T,
         "strided": np.repeat(base, 2, axis=1)[:, ::2]}[layout]
    col = rng.standard_normal((256, 1))

    def f(x, col):
        return np.sum(np.sin(x) * 2.0 + x * col, axis=0), np.sum(np.cos(x) - col, axis=1)

    g = dp.differentiable(f)
    want = f(x, col)
    first = g(x, col)
    ckernel.wait()
    second = g(x, col)
    for got in (first, second):
        for a, b in zip(got, want):
            assert a.tobytes() == b.tobytes()
    vg = dp.value_and_grad(dp.differentiable(lambda x, col: np.sum(f(x, col)[0] ** 2)),
                           argnums=(0, 1))
    r1 = vg(x, col)
    ckernel.wait()
    r2 = vg(x, col)
    assert r1[0] == r2[0] and r1[1][1].tobytes() == r2[1][1].tobytes()


@pytest.mark.parametrize("view", ["reversed", "strided", "reversed-2d"])
def test_strided_inputs_give_numpys_bits_on_every_call(monkeypatch, rng, view):
    """NumPy's SIMD loops may give a strided or reversed array other bits than a
    contiguous copy of it (exp on AVX-512: a reviewer's repro), so blocks over such
    inputs run unfused, before and after their compiled twin is built."""
    monkeypatch.delenv("DIFFPROG_FUSE_MIN")
    base = rng.standard_normal((400, 300))
    x = {"reversed": base.ravel()[::-1], "strided": base.ravel()[::2],
         "reversed-2d": base[::-1, ::-1]}[view]

    def f(x):
        return np.minimum(np.exp(x * 1.0), np.cos(x * 1.0)) - np.maximum(x * 2.0, x * 3.0)

    g, want = dp.differentiable(f), f(x)
    first = g(x)
    ckernel.wait()
    for got in (first, g(x), g(x)):
        assert got.tobytes() == want.tobytes()


def test_broadcast_operands_join_only_exact_arithmetic():
    """arctan2 of a bias: NumPy runs a broadcast operand through another loop than a
    contiguous one, and its SIMD arctan2 may round differently: left out of the block."""
    x, b = np.ones((40, 300)), np.ones(300)
    src = dp.differentiable(lambda x, b: np.sin(np.arctan2(x * 2.0, b)) * x).source(x, b)
    assert "xp.arctan2(" in src.split("def program")[1]  # unfused, in the program body
    src = dp.differentiable(lambda x, b: np.sin(x * 2.0 + b) * x).source(x, b)
    assert "xp.add" not in src.split("def program")[1] and "broadcast_to" in src


def test_derivative_rules_keep_no_copies_so_a_gradient_stays_one_kernel(rng):
    """d(x ** 2) = 2 * x ** 1 inside the rule: NumPy's copy for x ** 1 matters only in a
    user's program (its bits against NumPy); kept in a rule it split W4's gradient."""
    x = rng.standard_normal(BIG)
    src = dp.differentiable(lambda x: np.sum(np.exp(-x ** 2) * np.cos(3.0 * x))).source(
        x, kind="grad")
    assert "copy=True" not in src and src.count("def _block") == 1, src
    # the user's own copy of an argument is kept (NumPy's exp may round it otherwise)
    src = dp.differentiable(lambda x: np.sum(np.exp(x.copy()))).source(x, kind="grad")
    assert "_as_laid_out(a0, 'K')" in src  # (copied only where x is not contiguous)


@pytest.mark.parametrize("fn", [
    lambda a, b: np.exp(a) / np.sum(a),                     # softmax-like: a run's sum read
    lambda a, b: np.exp(a) / np.sum(np.exp(a)),             # after the run that sums it
    lambda a, b: np.where(a > 0.5, np.exp(a), a.sum()) * b,
    lambda a, b: np.exp(a - np.sum(a)) * np.sum(a * b),
], ids=["exp_over_sum", "softmax", "where_sum", "two_sums"])
def test_a_sum_read_by_the_same_run_ends_the_run(rng, fn):
    # (a reviewer: the block kernel read the sum inside the pass computing it: KeyError)
    a, b = rng.uniform(0.0, 1.0, BIG), rng.standard_normal(BIG)
    for kind in ("value", "grad"):
        (fused, src), (plain, _) = _programs(fn, a, b, kind=kind)
        assert "_block" in src
        _assert_same(fused(a, b), plain(a, b))
    assert np.array_equal(dp.differentiable(fn)(a, b), fn(a, b))
