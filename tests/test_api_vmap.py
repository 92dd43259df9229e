"""dp.vmap: axes, errors, composition with every transform, control flow and odeint
ensembles (the generated per-primitive tests are in tests/transforms/test_batch.py)."""
import numpy as np
import pytest

import diffprog as dp
from diffprog.sciml import odeint

XS = np.arange(12.0).reshape(4, 3) / 10


def _loop(f, *args, axes=None):
    axes = axes or (0,) * len(args)
    n = next(np.shape(a)[ax] for a, ax in zip(args, axes) if ax is not None)
    return np.stack([f(*[a if ax is None else np.take(a, i, axis=ax)
                         for a, ax in zip(args, axes)]) for i in range(n)])


# ------------------------------------------------------------------------------ axes

def test_in_axes_int_negative_none_and_out_axes():
    f = lambda x, y: np.sin(x) * y
    y = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(dp.vmap(f, in_axes=(0, None))(XS, y), _loop(f, XS, y, axes=(0, None)))
    np.testing.assert_allclose(dp.vmap(f, in_axes=(-1, None))(XS.T, y), _loop(f, XS, y, axes=(0, None)))
    np.testing.assert_allclose(dp.vmap(f, in_axes=(0, None), out_axes=1)(XS, y),
                               _loop(f, XS, y, axes=(0, None)).T)


def test_in_axes_as_a_pytree_prefix():
    params = {"w": np.array([1.0, 2.0, 3.0]), "b": np.arange(4.0)}
    f = lambda p, x: np.sum(p["w"] * x) + p["b"]
    got = dp.vmap(f, in_axes=({"w": None, "b": 0}, 0))(params, XS)
    want = np.array([np.sum(params["w"] * XS[i]) + params["b"][i] for i in range(4)])
    np.testing.assert_allclose(got, want)


def test_pytree_outputs_and_axis_size():
    out = dp.vmap(lambda x: {"s": np.sum(x), "x2": x * 2})(XS)
    np.testing.assert_allclose(out["s"], XS.sum(1))
    np.testing.assert_allclose(out["x2"], XS * 2)
    const = dp.vmap(lambda c: c * 2.0, in_axes=None, axis_size=3)(np.array(1.5))
    np.testing.assert_allclose(const, [3.0, 3.0, 3.0])


# ---------------------------------------------------------------------------- errors

def test_mismatched_batch_sizes_name_both_arguments():
    with pytest.raises(dp.ShapeError, match=r"args\[0\] has 4 .*args\[1\] has 3"):
        dp.vmap(lambda a, b: a + b)(XS, np.ones((3, 3)))


def test_in_axes_out_of_range_names_the_argument():
    with pytest.raises(dp.ArgumentValueError, match=r"in_axes=2 is out of range for argument 0"):
        dp.vmap(np.sin, in_axes=2)(XS)
    with pytest.raises(dp.ArgumentValueError, match="in_axes has 1 entries"):
        dp.vmap(lambda a, b: a + b, in_axes=(0,))(XS, XS)


def test_python_if_on_a_batched_value_points_to_cond():
    def f(x):
        if np.sum(x) > 0:
            return x
        return -x
    with pytest.raises(dp.ConcretizationError, match=r"(?s)test_api_vmap.py:\d+.*dp.vmap.*dp.cond"):
        dp.vmap(f)(XS)


# ------------------------------------------------------------------------- composition

def _mlp_loss(params, x, y):
    h = np.tanh(x @ params["w1"])
    return np.sum((h @ params["w2"] - y) ** 2)


def test_per_example_gradients_equal_a_loop():
    rng = np.random.default_rng(0)
    params = {"w1": rng.standard_normal((3, 5)), "w2": rng.standard_normal((5, 1))}
    X, Y = rng.standard_normal((8, 3)), rng.standard_normal((8, 1))
    got = dp.vmap(dp.grad(_mlp_loss), in_axes=(None, 0, 0))(params, X, Y)
    for i in range(8):
        want = dp.grad(_mlp_loss)(params, X[i], Y[i])
        np.testing.assert_allclose(got["w1"][i], want["w1"], rtol=1e-12)
        np.testing.assert_allclose(got["w2"][i], want["w2"], rtol=1e-12)


def test_grad_of_vmap_jacobian_of_vmap_and_vmap_of_jacobian():
    f = lambda x: np.sum(np.sin(x) ** 2)
    g = dp.grad(lambda xs: np.sum(dp.vmap(f)(xs)))(XS)
    np.testing.assert_allclose(g, 2 * np.sin(XS) * np.cos(XS))
    J = dp.jacobian(dp.vmap(np.sin))(XS[0])
    np.testing.assert_allclose(J, np.diag(np.cos(XS[0])))
    Js = dp.vmap(dp.jacobian(lambda x: x ** 2))(XS)
    np.testing.assert_allclose(Js, np.stack([np.diag(2 * x) for x in XS]))
    H = dp.vmap(dp.hessian(lambda x: np.sum(x ** 3)))(XS)
    np.testing.assert_allclose(H, np.stack([np.diag(6 * x) for x in XS]))


def test_nested_vmap_is_an_outer_product():
    f = dp.vmap(dp.vmap(lambda a, b: a * b, in_axes=(None, 0)), in_axes=(0, None))
    np.testing.assert_allclose(f(np.arange(3.0), np.arange(4.0)), np.outer(np.arange(3.0), np.arange(4.0)))


def test_compiled_once_per_signature():
    traces = []

    def f(x):
        traces.append(1)
        return np.sum(x)
    v = dp.vmap(f)
    v(XS), v(XS + 1), v(XS * 2)
    assert len(traces) == 1


# ------------------------------------------------------------------------ control flow

def test_cond_with_a_shared_and_with_a_batched_predicate():
    f = lambda p, x: dp.cond(p, lambda v: v * 2.0, lambda v: -v, x)
    np.testing.assert_allclose(dp.vmap(f, in_axes=(None, 0))(np.array(True), XS), XS * 2)
    preds = np.array([True, False, True, False])
    np.testing.assert_allclose(dp.vmap(f)(preds, XS), np.where(preds[:, None], XS * 2, -XS))
    g = dp.grad(lambda xs: np.sum(dp.vmap(f)(preds, xs) ** 2))(XS)
    np.testing.assert_allclose(g, np.where(preds[:, None], 8 * XS, 2 * XS))


def test_while_loop_with_a_batched_predicate_runs_each_member_its_own_steps():
    def f(x, limit):
        return dp.while_loop(lambda v: np.sum(v) < limit, lambda v: v * 2.0, x)
    x0 = np.array([[1.0], [1.0], [3.0]])
    limits = np.array([5.0, 17.0, 2.0])
    got = dp.vmap(f)(x0, limits)
    np.testing.assert_allclose(got, [[8.0], [32.0], [3.0]])
    g = dp.grad(lambda x: np.sum(dp.vmap(f, in_axes=(0, 0))(x, limits)))(x0)
    np.testing.assert_allclose(g, [[8.0], [32.0], [1.0]])


def test_scan_over_a_batch():
    def f(c0, xs):
        return dp.scan(lambda c, x: (c * 0.5 + x, c), c0, xs)
    c0s, xss = np.arange(3.0), np.arange(15.0).reshape(3, 5)
    final, ys = dp.vmap(f)(c0s, xss)
    for i in range(3):
        fi, yi = f(c0s[i], xss[i])
        np.testing.assert_allclose(final[i], fi)
        np.testing.assert_allclose(ys[i], yi)


# ------------------------------------------------------------------------------- odeint

def _lotka(y, t, a, b):
    return np.stack([a * y[0] - b * y[0] * y[1], b * y[0] * y[1] - y[1]])


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_an_ensemble_of_odeint_solves_equals_a_loop(method):
    y0, ts = np.array([1.0, 0.5]), np.linspace(0.0, 2.0, 5)
    A = np.array([0.8, 1.0, 1.2])
    solve = lambda a: odeint(_lotka, y0, ts, a, 0.4, method=method)
    got = dp.vmap(solve)(A)
    want = np.stack([solve(a) for a in A])
    np.testing.assert_allclose(got, want, rtol=1e-6 if method == "dopri5" else 1e-12)
    g = dp.grad(lambda A: np.sum(dp.vmap(solve)(A)[:, -1]))(A)
    want_g = [dp.grad(lambda a: np.sum(solve(a)[-1]))(a) for a in A]
    np.testing.assert_allclose(g, want_g, rtol=1e-5 if method == "dopri5" else 1e-10)


def test_a_failing_ensemble_member_is_named():
    blow_up = lambda y, t, k: k * y ** 2  # finite time blow-up at t = 1/k
    solve = lambda k: odeint(blow_up, np.array([1.0]), np.array([0.0, 2.0]), k, method="dopri5")
    with pytest.raises(dp.SolverError, match=r"example 2 of the dp.vmap batch: odeint \(dopri5\) "
                                             r"stopped at t=1"):
        dp.vmap(solve)(np.array([0.1, 0.2, 1.0, 0.3]))


# ------------------------------------------------------------------- review regressions

def test_gradients_through_a_batched_predicate_come_from_each_examples_own_branch():
    """A where on the outputs sent the branch not taken a zero cotangent: 0 * inf = NaN."""
    f = lambda x: dp.cond(x > 0, lambda v: np.sqrt(v), lambda v: -v, x)  # noqa: E731
    g = dp.grad(lambda xs: np.sum(dp.vmap(f)(xs)))(np.array([4.0, -1.0]))
    np.testing.assert_allclose(g, [0.25, -1.0])
    w = lambda x: dp.while_loop(lambda v: v < 10.0, lambda v: np.sqrt(v - 1.0) + v * 2, x,  # noqa
                                max_steps=10)
    xs = np.array([2.0, 12.0])
    got = dp.grad(lambda xs: np.sum(dp.vmap(w)(xs)))(xs)
    want = [dp.grad(w)(x) for x in xs]
    np.testing.assert_allclose(got, want)


def test_an_integer_index_beside_an_index_array_keeps_numpys_axis_order():
    idx = np.array([2, 0, 1])
    X4 = np.arange(81.0).reshape(3, 3, 3, 3)
    f = lambda x: x[0, :, idx]  # noqa: E731
    np.testing.assert_allclose(dp.vmap(f)(X4), np.stack([f(x) for x in X4]))
    np.testing.assert_allclose(dp.grad(lambda xs: np.sum(dp.vmap(f)(xs) * np.arange(3.0)))(X4),
                               dp.grad(lambda xs: np.sum(np.stack([f(x) for x in xs])
                                                         * np.arange(3.0)))(X4))


def test_matmul_with_a_batch_on_the_last_axis_of_a_vector():
    M = np.arange(9.0).reshape(3, 3)
    V = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(dp.vmap(lambda v: v @ M, in_axes=1)(V), (V.T @ M))
    np.testing.assert_allclose(dp.vmap(lambda v: np.dot(v, v), in_axes=1)(V), (V * V).sum(0))


def test_out_axes_as_a_pytree_prefix():
    f = lambda x: (x * 2, np.sum(x))  # noqa: E731
    a, b = dp.vmap(f, out_axes=(1, 0))(XS)
    np.testing.assert_allclose(a, (XS * 2).T)
    np.testing.assert_allclose(b, XS.sum(1))
    with pytest.raises(dp.ArgumentValueError, match="out_axes has structure"):
        dp.vmap(f, out_axes={"a": 0})(XS)


def test_empty_batches_and_none_outputs():
    assert dp.vmap(lambda x: dp.while_loop(lambda v: np.sum(v) < 3, lambda v: v * 2, x))(
        np.zeros((0, 3))).shape == (0, 3)
    out = dp.vmap(lambda x: (x * 2, None))(XS)
    assert out[1] is None


def test_keyword_arguments_are_refused_with_the_fix():
    with pytest.raises(dp.ArgumentError, match="keyword argument.*positionally"):
        dp.vmap(lambda x, scale: x * scale)(XS, scale=2.0)
