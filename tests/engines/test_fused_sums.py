"""Fused full sums are NumPy's sums, bit for bit (diffprog/engines/fusion.py).

``np.sum`` of a contiguous array is one pairwise summation over the whole array
(NumPy's loops_utils.h.src). A block kernel's blocks are the leaves of that recursion
tree (``fusion.sum_plan``), each summed by NumPy's own loop (or the C twin's copy of
it), and ``fusion.combine`` adds the block sums back up in the tree's order. Checked
here over many sizes (tiny, around NumPy's 8- and 128-element cut-offs, around multiples
of ``BLOCK``, odd primes near 1e6), dtypes (float64, float32, longdouble, complex128,
complex64), 1-D and 2-D values in several layouts, the NumPy block kernel and the
compiled C twin, one or several threads, and fast math (exact where it computes
nothing with libm, within its bound where it does).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import diffprog as dp
from diffprog.engines import ckernel, fusion
from diffprog.engines.numpy import generate_source
from diffprog.transforms import vjp_graph

BLOCK = fusion.BLOCK
SMALL = list(range(0, 21)) + [63, 64, 65, 127, 128, 129, 130, 255, 256, 257]
AROUND_BLOCKS = [k * BLOCK + d for k in (1, 2, 3, 4) for d in (-9, -8, -1, 0, 1, 7, 8, 9)]
LARGE = [999983, 1000003, 999999, 1000008, 1048579]  # odd primes near 1e6, and the report's
HAVE_CC = ckernel.compiler() is not None


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch):
    monkeypatch.delenv("DIFFPROG_CKERNELS", raising=False)
    monkeypatch.delenv("DIFFPROG_THREADS", raising=False)
    monkeypatch.setattr(ckernel, "PER_THREAD", 1000)  # several threads on test-sized arrays
    yield
    ckernel.wait()


def _values(rng, shape, dtype):
    """Values whose sum depends on the order of additions: magnitudes over 16 decades,
    both signs (any reassociation changes the last bits)."""
    n = int(np.prod(shape))

    def part():
        return rng.standard_normal(n) * 10.0 ** rng.integers(-8, 9, n)
    x = part() + 1j * part() if np.dtype(dtype).kind == "c" else part()
    return x.astype(dtype).reshape(shape)


def _same_bits(got, expect) -> bool:
    got, expect = np.asarray(got), np.asarray(expect)
    if got.dtype != expect.dtype or got.shape != expect.shape:
        return False
    if got.dtype.kind == "c":  # real and imaginary parts
        got, expect = np.stack([got.real, got.imag]), np.stack([expect.real, expect.imag])
    # (not tobytes: a longdouble's padding bytes may differ)
    same = (got == expect) & (np.signbit(got) == np.signbit(expect))
    return bool(np.all(same | (np.isnan(got) & np.isnan(expect))))


def assert_same_bits(got, expect, what=""):
    assert _same_bits(got, expect), f"{what}: {got!r} != {expect!r} (NumPy)"


# ---------------------------------------------------------------- the plan itself

@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.longdouble, np.complex128, np.complex64])
def test_block_sums_added_as_the_plan_says_are_numpys_sum(rng, dtype):
    kind = fusion.sum_kind(dtype)
    for block in (BLOCK, 128, 200, 1000):
        sizes = SMALL + list(range(131, 400, 9)) + [k * block + d for k in (1, 2, 3, 5, 8)
                                                   for d in (-9, -1, 0, 1, 8, 9)]
        if block == BLOCK:
            sizes += AROUND_BLOCKS + LARGE[:2]
        for n in sizes:
            x = _values(rng, n, dtype)
            spans, tree = fusion.sum_plan(n, kind, block)
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert all(j - i <= max(block, 128) for i, j in spans)
            sums = [np.add.reduce(x[i:j]) for i, j in spans]
            cuts = sorted({0, len(sums) // 3, len(sums) // 2, len(sums)})  # "threads"
            parts = [[sums[a:b]] for a, b in zip(cuts, cuts[1:])]
            assert_same_bits(fusion.combine(parts, 0, np.dtype(dtype), tree), np.sum(x),
                             f"{np.dtype(dtype)} n={n} block={block}")


def test_blocks_stay_large_and_few():
    for n in (BLOCK + 1, 10 * BLOCK + 3, 10 ** 6, 2 ** 24 + 5):
        spans, _ = fusion.sum_plan(n)
        sizes = [j - i for i, j in spans]
        assert max(sizes) <= BLOCK and min(sizes) >= BLOCK // 2 - 8, n
    assert fusion.sum_plan(5) == (((0, 5),), 0)


def test_sum_kinds():
    assert fusion.sum_kind(np.float64) == fusion.sum_kind(np.float32) == "real"
    assert fusion.sum_kind(np.complex128) == fusion.sum_kind(np.complex64) == "complex"
    assert fusion.sum_kind(np.float16) is None  # NumPy sums halves in float32
    assert fusion.sum_kind(np.int64) is None


# ---------------------------------------------------------------- fused programs

def _program(fn, args, kind="value", compiled=True, threshold=1, fast_math=False):
    """The fused program of ``fn``'s value (or value+gradient) graph, fusing arrays from
    ``threshold`` elements, with its compiled kernels ready (``compiled``) or off."""
    graph = dp.differentiable(fn).ir(*args)
    if kind == "grad":
        graph = vjp_graph(graph, list(range(len(args))), seed="ones")
    old = os.environ.get("DIFFPROG_CKERNELS")
    if not compiled:
        os.environ["DIFFPROG_CKERNELS"] = "0"
    try:
        src, ns = generate_source(graph, np, "prog", blocks=threshold, fast_math=fast_math)
    finally:
        if old is None:
            os.environ.pop("DIFFPROG_CKERNELS", None)
        else:
            os.environ["DIFFPROG_CKERNELS"] = old
    exec(compile(src, "<test>", "exec"), ns)
    ckernel.wait()
    kernels = [v for k, v in ns.items() if k.startswith("_ck")]
    assert "_block" in src, src
    return ns["prog"], kernels, src


def _sin_x(x):
    return np.sum(np.sin(x) * x)


def _arith(x):
    return np.sum(x * x - 0.25 * x) + np.sum(x / 3.0)


def _needs_c_spellings(*names):
    if not HAVE_CC:
        pytest.skip("no C compiler here")
    refused = {n: ckernel.probe()[n] for n in names if ckernel.probe()[n] is not None}
    if refused:
        pytest.skip(f"spellings refused on this machine: {refused}")


@pytest.mark.parametrize("path", ["numpy", "compiled"])
def test_fused_sums_are_numpys_for_every_size(rng, path, monkeypatch):
    if path == "compiled":
        _needs_c_spellings("sin", "mul", "sub", "div")
    # a program per size (shapes are static); the C twin's library is the same for
    # every size (its source does not depend on it), so it is compiled once
    for n in SMALL[1:] + AROUND_BLOCKS[::3] + LARGE[:1]:
        x = _values(rng, n, np.float64)
        for f in (_sin_x, _arith):
            prog, kernels, _ = _program(f, (x,), compiled=path == "compiled")
            runs = [k.runs for k in kernels]
            for threads in ("1", "3"):
                monkeypatch.setenv("DIFFPROG_THREADS", threads)
                assert_same_bits(prog(x)[0], f(x), f"{f.__name__} n={n} {path} threads={threads}")
            if path == "compiled":
                assert kernels and [k.runs for k in kernels] == [r + 2 for r in runs], \
                    [k.state for k in kernels]


@pytest.mark.parametrize("n", LARGE)
def test_large_odd_sizes_value_and_gradient(rng, n):
    x = rng.standard_normal(n)
    f = lambda z: np.sum(np.sin(z) * z)  # noqa: E731 - the issue's example
    assert_same_bits(dp.differentiable(f)(x), f(x), f"n={n}")
    ckernel.wait()  # again with the compiled twin when this machine has one
    value, grad = dp.value_and_grad(f)(x)
    assert_same_bits(value, f(x), f"n={n}, compiled")
    np.testing.assert_array_equal(grad, np.sin(x) + x * np.cos(x))


def test_numpy_kernel_and_compiled_twin_agree_across_threads(rng, monkeypatch):
    _needs_c_spellings("sin", "cos", "mul", "add")
    n = 5 * BLOCK + 3
    x = rng.standard_normal(n)

    def f(x):
        return np.sum(np.sin(x) * np.cos(x) + x)
    results = []
    for compiled in (True, False):
        prog, kernels, _ = _program(f, (x,), kind="grad", compiled=compiled)
        for threads in ("1", "2", "3", "5"):
            monkeypatch.setenv("DIFFPROG_THREADS", threads)
            results.append(prog(x))
    for r in results:
        assert_same_bits(r[0], f(x))
        np.testing.assert_array_equal(r[1], results[0][1])


@pytest.mark.parametrize("dtype", [np.float32, np.longdouble])
def test_other_real_dtypes(rng, dtype):
    for n in (1, 7, 130, 2 * BLOCK + 9, 3 * BLOCK - 1):
        x = _values(rng, n, np.float64).astype(dtype) / 1e6
        for f in (_sin_x, _arith):
            prog, _, _ = _program(f, (x,))
            got = prog(x)[0]
            assert got.dtype == dtype
            assert_same_bits(got, f(x), f"{np.dtype(dtype)} {f.__name__} n={n}")


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_complex_sums(rng, dtype):
    def f(z, x):  # a complex sum, then a real one over the same size (summed unfused)
        return np.sum(z * z + 1.5), np.sum(np.sin(x) * x), np.sum(np.exp(z * 0.5) * z)
    for n in (1, 3, 4, 5, 64, 65, 130, BLOCK + 1, 2 * BLOCK + 5, 3 * BLOCK - 3):
        z = _values(rng, n, dtype) / 1e8
        x = rng.standard_normal(n)
        prog, _, src = _program(f, (z, x))
        for got, expect in zip(prog(z, x), f(z, x)):
            assert_same_bits(got, expect, f"{np.dtype(dtype)} n={n}")


def test_float16_sums_are_not_fused_and_match(rng):
    x = rng.standard_normal(3 * BLOCK + 1).astype(np.float16)
    prog, _, src = _program(lambda x: np.sum(np.sin(x) * x), (x,))
    assert "_combine" not in src
    assert_same_bits(prog(x)[0], np.sum(np.sin(x) * x))


def test_negative_zeros_sum_as_numpy(rng):
    for n in (1, 5, 200, 2 * BLOCK + 3):
        x = rng.uniform(1.0, 2.0, n)
        for compiled in (True, False):
            prog, _, _ = _program(lambda x: np.sum(x * -0.0), (x,), compiled=compiled)
            assert_same_bits(prog(x)[0], np.sum(x * -0.0), f"n={n}")


# ---------------------------------------------------------------- two dimensions

def _layouts(x):
    yield "C", x
    yield "F", np.asfortranarray(x)
    yield "transposed", np.ascontiguousarray(x.T).T
    big = np.zeros((x.shape[0], 2 * x.shape[1]))
    big[:, ::2] = x
    yield "every other column", big[:, ::2]
    yield "reversed rows", np.ascontiguousarray(x[::-1])[::-1]


@pytest.mark.parametrize("shape", [(130, 400), (257, 129), (3, 4), (129, 2 * BLOCK // 129 + 1)])
def test_two_dimensional_values_in_every_layout(rng, shape):
    """Bit-identical to the unfused program in every layout (C-contiguous inputs run the
    kernel; others the unfused equations), and to NumPy itself where both inputs share a
    layout. (With mixed layouts NumPy's own results depend on how a program is written:
    ``np.sin(x) * y`` reuses the temporary ``np.sin(x)`` in place, keeping x's layout,
    where ``s = np.sin(x); s * y`` makes a C-ordered array, and the sums walk them in
    memory order.)"""
    def f(x, y):  # sums of intermediates, and of an input as it is
        t = np.sin(x) * y
        return np.sum(t + x), np.sum(t * t), np.sum(x)

    x0, y0 = _values(rng, shape, np.float64), rng.standard_normal(shape)
    prog, _, src = _program(f, (x0, y0))
    assert "if (_c_contiguous(a0) and _c_contiguous(a1)):" in src
    graph = dp.differentiable(f).ir(x0, y0)
    plain_src, ns = generate_source(graph, np, "plain", blocks=0)
    exec(compile(plain_src, "<test>", "exec"), ns)
    for name, x in _layouts(x0):
        for yname, y in _layouts(y0):
            expect = ns["plain"](x, y)
            for got, e, numpy in zip(prog(x, y), expect, f(x, y)):
                assert_same_bits(got, e, f"{shape} x {name}, y {yname}: unfused")
                if name == yname:
                    assert_same_bits(got, numpy, f"{shape} x {name}, y {yname}")


def test_two_dimensional_gradient(rng):
    x = rng.standard_normal((300, 301))
    value, grad = dp.value_and_grad(lambda x: np.sum(np.cos(x) * x))(x)
    assert_same_bits(value, np.sum(np.cos(x) * x))


# ---------------------------------------------------------------- fast math

def test_fast_math_sums_follow_numpys_order_too(rng):
    """Fast math changes libm calls only: a kernel with none sums to NumPy's bits, and
    one with libm calls stays within its bound of the exact sum."""
    n = 4 * BLOCK + 11
    x = _values(rng, n, np.float64)
    prog, kernels, _ = _program(_arith, (x,), fast_math=True)
    for _ in range(2):
        assert_same_bits(prog(x)[0], _arith(x), "fast math, arithmetic only")
    assert all(k.runs == 2 for k in kernels if k.state.startswith("ready"))
    y = rng.standard_normal(n) * 3
    prog, kernels, _ = _program(_sin_x, (y,), fast_math=True)
    got, exact = prog(y)[0], _sin_x(y)
    assert all(k.runs == 1 for k in kernels if k.state.startswith("ready"))
    terms = np.sin(y) * y
    bound = (ckernel.ULP_BOUND + 2 * np.log2(n)) * np.finfo(np.float64).eps * np.sum(np.abs(terms))
    assert abs(got - exact) <= bound, (got, exact, [k.state for k in kernels])
