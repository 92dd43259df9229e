"""Compiled C loops for dp.scan over small values (diffprog/engines/cscan.py): the same
bits as the Python loop, floating-point errors reported as NumPy reports them, and the
Python loop kept for bodies without a C form."""
import warnings

import numpy as np
import pytest

import diffprog as dp
from diffprog.engines import ckernel, cscan

pytestmark = pytest.mark.skipif(not ckernel.enabled() or ckernel.compiler() is None,
                                reason="no C compiler (or DIFFPROG_CKERNELS=0)")


def _kernels_used():
    return sum(k.runs for k in ckernel.kernels() if isinstance(k, cscan.ScanKernel))


def _twice(f, *args):
    """f's result from the Python loop (first call, kernels not built yet), then from
    the compiled loop once the kernels are built."""
    first = f(*args)
    ckernel.wait()
    before = _kernels_used()
    second = f(*args)
    assert _kernels_used() > before, ckernel.status()
    return first, second


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(a.view(np.int64), b.view(np.int64)) or \
        np.array_equal(a, b, equal_nan=True)


def _same_value_and_grads(g, *args):
    """g = value_and_grad(...): the Python loop's and the compiled loop's results, bit for
    bit (value and every gradient)."""
    (v1, g1), (v2, g2) = _twice(g, *args)
    _same(v1, v2)
    for a, b in zip(g1, g2):
        _same(a, b)


def lv(p, y0, steps=30, h=0.01):
    def rhs(y):
        return np.stack([p[0] * y[0] - p[1] * y[0] * y[1], p[2] * y[0] * y[1] - p[3] * y[1]])

    def step(carry, _):
        y, loss = carry
        k1 = rhs(y)
        k2 = rhs(y + 0.5 * h * k1)
        k3 = rhs(y + 0.5 * h * k2)
        k4 = rhs(y + h * k3)
        y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        return (y, loss + np.sum(y * y)), None
    (_, loss), _ = dp.scan(step, (y0, np.zeros(())), length=steps)
    return loss


def test_rk4_value_and_grad_bit_identical():
    p, y0 = np.array([1.5, 1.0, 1.0, 3.0]), np.array([1.0, 1.0])
    f = dp.value_and_grad(lv)
    (v1, g1), (v2, g2) = _twice(f, p, y0)
    _same(v1, v2)
    _same(g1, g2)


@pytest.mark.parametrize("n", [3, 9, 20])
def test_xs_ys_reverse_and_sums(n):
    rng = np.random.default_rng(n)
    xs = rng.standard_normal((5, n))
    c0 = rng.standard_normal(n)
    w = rng.standard_normal(n)

    def f(c0, xs, w):
        def step(c, x):
            new = np.maximum(np.sin(c) * w, x) - np.where(x > 0, np.cos(x), c / 3.0)
            return new, np.sum(new * x)
        c, ys = dp.scan(step, c0, xs, reverse=True)
        return np.sum(c) + np.sum(ys * ys)

    g = dp.value_and_grad(f, argnums=(0, 1, 2))
    _same_value_and_grads(g, c0, xs, w)


def test_floating_point_errors_reported_as_numpy_does():
    def f(x):
        def step(c, _):
            return c / (c - c), None  # 0/0 at every step: invalid
        c, _ = dp.scan(step, x, length=3)
        return c

    g = dp.differentiable(f)
    x = np.array([1.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g(x)
    ckernel.wait()
    with pytest.warns(RuntimeWarning):
        out = g(x)
    assert np.isnan(out).all()
    with np.errstate(invalid="raise"):
        with pytest.raises(FloatingPointError):
            g(x)
    with np.errstate(all="ignore"):
        before = _kernels_used()
        assert np.isnan(g(x)).all()
        assert _kernels_used() > before


def test_body_without_c_form_keeps_python_loop():
    m = np.eye(2) * 0.5

    def f(x):
        def step(c, _):
            return m @ c, None
        c, _ = dp.scan(step, x, length=3)
        return np.sum(c)

    g = dp.grad(f)
    x = np.array([1.0, 2.0])
    assert np.allclose(g(x), np.full(2, 0.125))
    ckernel.wait()
    assert np.allclose(g(x), np.full(2, 0.125))


def test_pairwise_matches_numpy_sum():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 8, 9, 16, 17, 129, 300):
        a = rng.standard_normal(n) * 10.0 ** rng.integers(-8, 8, n)
        names = {f"e{k}": v for k, v in enumerate(a)}
        expr = cscan._pairwise(list(names))
        # evaluate the C expression in Python: same IEEE double arithmetic, same order
        got = eval("0.0 + " + expr, {}, {k: float(v) for k, v in names.items()})  # noqa: S307
        assert got == np.sum(a), n


# ---------------------------------------------------------------- products, NumPy's loops,
# nested loops (cextern.py): the neural ODE's scan

def _scans(fn, *args, kind="value"):
    """The scan equations of fn's program (kind "value" or "grad" w.r.t. argument 0)."""
    from diffprog.api import _graph_for_kind
    f = dp.differentiable(fn)
    sig = f._signature(args)
    return [e for e in _graph_for_kind(kind, f._traced(sig), sig, 0).eqns
            if e.prim.name == "scan"]


@pytest.mark.parametrize("n,h", [(2, 16), (1, 3), (3, 1), (5, 7)])
def test_mlp_vector_field_bit_identical(n, h):
    """vector @ matrix (gemv, both BLAS orders through the transposes of the gradient),
    vector @ (n, 1) (ddot), (1,) @ (1, h) and the outer products (NumPy's own loop)."""
    rng = np.random.default_rng(10 * n + h)
    W1, b1 = rng.standard_normal((n, h)) * 0.5, rng.standard_normal(h) * 0.1
    W2, y0 = rng.standard_normal((h, n)) * 0.3, rng.standard_normal(n)

    def f(W1, b1, W2, y0):
        def step(y, _):
            k = np.tanh(y @ W1 + b1) @ W2
            return y + 0.1 * k, np.sum(k * k)
        y, ks = dp.scan(step, y0, length=7)
        return np.sum(y * y) + np.sum(ks)

    g = dp.value_and_grad(f, argnums=(0, 1, 2, 3))
    _same_value_and_grads(g, W1, b1, W2, y0)


def test_matrix_vector_transposed_and_dot():
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((4, 4)), rng.standard_normal((3, 4))
    x0 = rng.standard_normal(4)

    def f(A, B, x0):
        def step(x, _):
            y = A @ x + A.T @ x * 0.5      # C and F matrices: RowMajor and ColMajor gemv
            z = B.T @ (B @ x)              # (4, 3) F times a fresh vector
            return np.sin(y - 0.1 * z) + (x @ x) * 0.01, x @ A  # x @ x: ddot
        x, ys = dp.scan(step, x0, length=5)
        return np.sum(x) + np.sum(ys)

    g = dp.value_and_grad(f, argnums=(0, 1, 2))
    _same_value_and_grads(g, A, B, x0)


def _neural_ode_loss():
    from diffprog.sciml import odeint
    rng = np.random.default_rng(1)
    params = {"W1": rng.standard_normal((2, 16)) * 0.5, "b1": np.zeros(16),
              "W2": rng.standard_normal((16, 2)) * 0.1, "b2": np.zeros(2)}
    y0, t = np.array([2.0, 0.0]), np.linspace(0.0, 1.0, 9)
    target = np.stack([np.cos(2 * t), -np.sin(2 * t)], axis=1) * 2.0

    def field(y, t, p):
        return np.tanh(y @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]

    def loss(p):
        return np.mean((odeint(field, y0, t, p, steps_per_interval=2) - target) ** 2)
    return loss, params


def test_neural_ode_nested_loops_bit_identical():
    """notebooks/03-neural-ode: odeint's checkpointed scan holds a scan over intervals,
    which holds the RK4 steps (a fori_loop whose int counter the body does not read): one
    C loop each for the value and for the gradient, nested loops inside, and no C loop of
    their own for the scans inside them."""
    loss, params = _neural_ode_loss()
    g = dp.value_and_grad(loss)
    (v1, g1), (v2, g2) = _twice(g, params)
    _same(v1, v2)
    for k in g1:
        _same(g1[k], g2[k])
    made = len(ckernel.kernels())
    for _ in range(2):
        _same(g(params)[0], v1)
    assert len(ckernel.kernels()) == made
    # each top-level scan of the gradient program has its loop (nothing refused)
    scans = _scans(loss, params, kind="grad")
    assert scans and all(cscan.why_not(e) is None for e in scans)


def test_matrix_matrix_keeps_python_loop():
    m = np.eye(2) * 0.5

    def f(x):
        def step(c, _):
            return c @ m, None             # (2, 2) @ (2, 2): BLAS gemm, not called from C
        c, _ = dp.scan(step, x, length=3)
        return np.sum(c)

    g = dp.grad(f)
    x = np.arange(4.0).reshape(2, 2)
    assert np.allclose(g(x), np.full((2, 2), 0.125))
    ckernel.wait()
    assert np.allclose(g(x), np.full((2, 2), 0.125))
    assert all("gemm" in cscan.why_not(e) for e in _scans(f, x))


@pytest.mark.parametrize("layout", ["F", "reversed", "every other column", "broadcast"])
def test_inputs_of_other_layouts(layout):
    """NumPy calls BLAS differently (or not at all) for a Fortran-ordered, reversed,
    strided or broadcast weight: the loop is made for the layouts it is called with."""
    rng = np.random.default_rng(5)
    W = {"F": np.asfortranarray(rng.standard_normal((3, 3))),
         "reversed": rng.standard_normal((3, 3))[::-1],
         "every other column": rng.standard_normal((3, 6))[:, ::2],
         "broadcast": np.broadcast_to(rng.standard_normal(3), (3, 3))}[layout]
    y0 = rng.standard_normal(3)

    def f(W, y0):
        def step(y, _):
            return np.sin(y @ W + W @ y), None
        y, _ = dp.scan(step, y0, length=4)
        return y

    g = dp.differentiable(f)
    first, second = _twice(g, W, y0)
    _same(first, second)
    _same(g(np.ascontiguousarray(W), y0), first) if layout == "broadcast" else None


def test_strided_first_carry_peels_the_first_step():
    """A carry that comes in as a strided view (x[::2]) meets the product with another
    BLAS increment on the first step than on the later ones: the first step is its own
    code."""
    rng = np.random.default_rng(3)
    x, W = rng.standard_normal(6), rng.standard_normal((3, 3))

    def f(x, W):
        def step(c, _):
            return np.sin(c @ W) + c, c @ c
        c, ys = dp.scan(step, x[::2], length=3)
        return np.sum(c) + np.sum(ys)

    g = dp.value_and_grad(f, argnums=(0, 1))
    _same_value_and_grads(g, x, W)
    assert any("if (s == 0)" in k.source for k in ckernel.kernels()
               if isinstance(k, cscan.ScanKernel) and k.runs)


def test_carry_changing_layout_is_refused():
    """A carry that leaves the step transposed (F order) would meet the product in another
    layout from the second step on: such a loop is refused, the Python loop runs."""
    def f(c0, w):
        def step(c, _):
            return (c * 0.5).T + np.outer(c[0] @ w, w), None
        c, _ = dp.scan(step, c0, length=3)
        return c

    rng = np.random.default_rng(6)
    c0, w = rng.standard_normal((2, 2)), rng.standard_normal(2)
    g = dp.differentiable(f)
    first = g(c0, w)
    ckernel.wait()
    before = _kernels_used()
    second = g(c0, w)
    assert _kernels_used() == before
    _same(first, second)


def test_floating_point_errors_of_products_reported_as_numpy_does():
    """inf * 0 inside BLAS: the flag NumPy reports (or not) for matmul is reported alike."""
    W = np.array([[0.0, 1.0], [1.0, 0.0]])

    def f(y0):
        def step(y, _):
            return y @ W, None
        y, _ = dp.scan(step, y0, length=2)
        return y

    g = dp.differentiable(f)
    y0 = np.array([np.inf, 1.0])
    with np.errstate(all="ignore"):
        g(y0)
        ckernel.wait()
        before = _kernels_used()
        assert np.isnan(g(y0)).all()
        assert _kernels_used() > before    # no flag wanted: the compiled loop's result

    def outcome(run):
        with np.errstate(invalid="raise"):
            try:
                return np.asarray(run()).tobytes()
            except FloatingPointError:
                return "raised"

    assert outcome(lambda: g(y0)) == outcome(lambda: y0 @ W @ W)


def test_numpy_loop_stands_in_for_a_spelling(monkeypatch):
    """Where a C spelling differs from NumPy (tanh on AVX-512 machines), the loop calls
    NumPy's own float64 loop; forced here, whatever this machine's probe says."""
    ckernel.probe()
    monkeypatch.setitem(ckernel._PROBED, "tanh", "forced by the test")
    monkeypatch.setitem(ckernel._PROBED, "exp", "forced by the test")
    rng = np.random.default_rng(8)
    a, x0 = rng.standard_normal((2, 3)), rng.standard_normal(3) + 0.123456

    def f(a, x0):
        def step(x, _):
            t = np.tanh(a.T * x[:, None])   # (3, 2) in F order: NumPy's loop walks it so
            return np.tanh(x) + (t[:, 0] - t[:, 1]) * np.exp(-x * x), None
        x, _ = dp.scan(step, x0, length=4)
        return np.sum(x)

    g = dp.value_and_grad(f, argnums=(0, 1))
    (v1, g1), (v2, g2) = _twice(g, a, x0)
    _same(v1, v2)
    for p, q in zip(g1, g2):
        _same(p, q)


def test_plans_follow_numpy_matmul():
    """cextern's plan of a product (NumPy's DOUBLE_matmul choices), run through the BLAS
    and loop NumPy uses, gives NumPy's bits for random shapes and layouts."""
    from diffprog.engines import cextern
    rng = np.random.default_rng(0)

    def operand(shape):
        kind = rng.integers(4)
        if len(shape) == 1:
            return [rng.standard_normal(shape), rng.standard_normal(2 * shape[0])[::2],
                    np.broadcast_to(rng.standard_normal(1), shape), rng.standard_normal(shape)][kind]
        return [rng.standard_normal(shape), rng.standard_normal(shape[::-1]).T,
                rng.standard_normal((shape[0], 2 * shape[1]))[:, ::2],
                np.broadcast_to(rng.standard_normal((1, shape[1])), shape)][kind]

    kinds = set()
    for _ in range(600):
        m, n, p = rng.integers(1, 6, 3)
        a = operand((n,) if rng.random() < 0.4 else (m, n))
        b = operand((n,) if rng.random() < 0.4 else (n, p))
        plan = cextern.matmul_plan(a.shape, a.strides, b.shape, b.strides)
        if isinstance(plan, str):
            assert a.ndim == b.ndim == 2 and min(a.shape + b.shape) > 1
            continue
        kinds.add(plan.kind)
        if plan.kind != "loop" and cextern.blas() is None:
            continue
        got, expect = cextern.run_plan(plan, a, b), a @ b
        assert got.tobytes() == expect.tobytes(), (plan.kind, plan.args, a.shape, a.strides,
                                                   b.shape, b.strides, got, expect)
    assert "loop" in kinds and ("gemv" in kinds or cextern.blas() is None)
    assert cextern.loop_refusal(np.tanh) is None
    assert cextern.ufunc_loop(np.add) is None  # two operands: not called


def test_loop_counter_read_as_float():
    """A time-dependent field reads odeint's step counter (int64): C doubles, as NumPy
    casts it where it meets the step size; integer arithmetic keeps the Python loop."""
    from diffprog.sciml import odeint
    rng = np.random.default_rng(1)
    W1, W2 = rng.standard_normal((3, 8)), rng.standard_normal((8, 2)) * 0.3
    y0, t = np.array([1.0, 0.5]), np.linspace(0.0, 1.0, 6)

    def field(y, s, W1, W2):
        return np.tanh(np.concatenate([y, np.reshape(s, (1,))]) @ W1) @ W2 - 0.1 * np.sin(s) * y

    def loss(W1, W2):
        return np.sum(odeint(field, y0, t, W1, W2, steps_per_interval=3) ** 2)

    g = dp.value_and_grad(loss, argnums=(0, 1))
    _same_value_and_grads(g, W1, W2)

    def counting(x):
        def step(i, c):
            return c * 0.5 + (i + 1) // 2    # integer arithmetic: no C form here
        return dp.fori_loop(0, 4, step, x)

    x = np.array([1.0, 2.0])
    first = dp.differentiable(counting)(x)
    ckernel.wait()
    _same(dp.differentiable(counting)(x), first)


def test_long_loop_built_at_O0_first_then_O1(monkeypatch):
    """A long loop not in the disk cache is built at -O0 (ready sooner), then at -O1,
    which takes over: the same bits from both, and from the Python loop."""
    monkeypatch.setattr(cscan, "LONG_LINES", 10)
    rng = np.random.default_rng(11)
    W, y0 = rng.standard_normal((3, 3)), rng.standard_normal(3) + 0.0123

    def f(W, y0):
        def step(y, _):
            return np.cos(y @ W) * 0.9 + y * 0.1, None
        y, _ = dp.scan(step, y0, length=6)
        return np.sum(y)

    g = dp.value_and_grad(f, argnums=(0, 1))
    (v1, g1), (v2, g2) = _twice(g, W, y0)
    ckernel.wait()  # the -O1 build, queued behind
    assert any(k.state.startswith("ready (-O1") for k in ckernel.kernels())
    v3, g3 = g(W, y0)
    for a, b, c in zip((v1, *g1), (v2, *g2), (v3, *g3)):
        _same(a, b)
        _same(a, c)


def test_copies_in_a_body_keep_the_compiled_loop():
    """np.array(y), y.copy(), +y and y ** 1 in a body: NumPy's copies are layout-only,
    so the compiled loop runs them (a reviewer found the loop refused, 35-140x slower)."""
    def f(y0):
        def body(y, _):
            y = y + 0.01 * np.sin(y ** 1) + 0.001 * np.array(y, dtype=float) - 0.002 * (+y.copy())
            return y, None
        y, _ = dp.scan(body, y0, None, length=50)
        return np.sum(y * y)

    _same_value_and_grads(dp.value_and_grad(f), np.array([0.1, 0.2, 0.3]))
