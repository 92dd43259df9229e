"""Every public entry point: results, structures, caching and errors."""
from __future__ import annotations

import numpy as np
import pytest

import diffprog as dp
from diffprog.api import cache_for

from .helpers import assert_close, numeric_grad


def mlp_loss(params, x, y):
    h = np.tanh(x @ params["w1"] + params["b1"])
    return np.mean((h @ params["w2"] - y) ** 2)


@pytest.fixture
def mlp(rng):
    params = {"w1": rng.standard_normal((4, 8)), "b1": rng.standard_normal(8) * 0.1,
              "w2": rng.standard_normal((8, 1))}
    return params, rng.standard_normal((16, 4)), rng.standard_normal((16, 1))


def test_differentiable_value_matches_plain_numpy(mlp):
    loss = dp.differentiable(mlp_loss)
    assert_close(loss(*mlp), mlp_loss(*mlp), rtol=1e-14)


def test_grad_mirrors_nested_structure_and_matches_fd(mlp):
    params, x, y = mlp
    g = dp.grad(mlp_loss)(params, x, y)
    assert set(g) == set(params)
    for k in params:
        assert g[k].shape == params[k].shape

        def along(w, k=k):
            return mlp_loss({**params, k: w}, x, y)
        assert_close(g[k], numeric_grad(along, [params[k]], 0))


def test_grad_argnums_tuple_and_value_and_grad(mlp):
    params, x, y = mlp
    gp, gx = dp.grad(mlp_loss, argnums=(0, 1))(params, x, y)
    assert gx.shape == x.shape
    value, gp2 = dp.value_and_grad(mlp_loss)(params, x, y)
    assert_close(value, mlp_loss(params, x, y), rtol=1e-14)
    for k in params:
        assert_close(gp2[k], gp[k], rtol=1e-14)


def test_lists_tuples_and_python_floats():
    def f(ps, scale):
        a, (b, c) = ps
        return scale * np.sum(a * b) + c ** 2
    g = dp.grad(f, argnums=(0, 1))([np.ones(2), (np.arange(2.0), 3.0)], 2.0)
    (ga, (gb, gc)), gs = g
    assert_close(ga, [0.0, 2.0])
    assert_close(gb, [2.0, 2.0])
    assert_close(gc, 6.0)
    assert_close(gs, 1.0)
    assert isinstance(g[0], list) and isinstance(g[0][1], tuple)


def test_float32_gradients_stay_float32():
    x = np.linspace(-1, 1, 5, dtype=np.float32)
    g = dp.grad(lambda x: np.sum(np.sin(x) * 3.0 + x ** 2))(x)
    assert g.dtype == np.float32
    assert_close(g, 3 * np.cos(x) + 2 * x, rtol=1e-6)


def test_vjp_returns_one_gradient_per_argument():
    x, y = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    out, pullback = dp.vjp(lambda x, y: np.sin(x) * y, x, y)
    assert_close(out, np.sin(x) * y)
    gx, gy = pullback(np.array([1.0, -1.0]))
    assert_close(gx, np.cos(x) * y * [1, -1])
    assert_close(gy, np.sin(x) * [1, -1])


def test_vjp_cotangent_shape_mismatch_names_both_shapes():
    _, pullback = dp.vjp(lambda x: x * 2, np.ones(3))
    with pytest.raises(dp.ShapeError, match=r"\(2,\).*\(3,\)"):
        pullback(np.ones(2))


def test_jvp_forward_mode():
    x = np.array([0.5, 1.0])
    out, t = dp.jvp(lambda x, y: x * np.exp(y), (x, x), (np.ones(2), np.zeros(2)))
    assert_close(out, x * np.exp(x))
    assert_close(t, np.exp(x))


@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_jacobian_shape_and_values(mode):
    x = np.arange(1.0, 7.0).reshape(2, 3)
    jac = dp.jacobian(lambda x: np.sum(x ** 2, axis=0), mode=mode)(x)
    assert jac.shape == (3, 2, 3)
    expected = np.zeros((3, 2, 3))
    for j in range(3):
        expected[j, :, j] = 2 * x[:, j]
    assert_close(jac, expected)


def test_jacobian_argnums_tuple():
    ja, jb = dp.jacobian(lambda a, b: a * b, argnums=(0, 1))(np.ones(2), np.arange(2.0))
    assert_close(ja, np.diag([0.0, 1.0]))
    assert_close(jb, np.eye(2))


def test_hessian_of_quadratic_and_of_nonlinear():
    A = np.array([[2.0, 1.0], [1.0, 3.0]])
    assert_close(dp.hessian(lambda x: 0.5 * x @ A @ x)(np.ones(2)), A)
    x = np.array([0.3, -0.7])
    h = dp.hessian(lambda x: np.sum(np.sin(x) * x[0]))(x)
    expected = np.diag(-np.sin(x) * x[0])
    expected[0, :] += np.cos(x)
    expected[:, 0] += np.cos(x)
    assert_close(h, expected)


def test_grad_of_grad_nests():
    f = lambda x: np.sin(x) * x  # noqa: E731
    assert_close(dp.grad(dp.grad(f))(1.5), 2 * np.cos(1.5) - 1.5 * np.sin(1.5))
    assert_close(dp.grad(dp.grad(dp.grad(f)))(1.5), -3 * np.sin(1.5) - 1.5 * np.cos(1.5))


def test_grad_inside_traced_function_captures_outer_values():
    """A physics-informed loss: derivative w.r.t. the input inside the loss."""
    def u(x, p):
        return np.tanh(p * x)

    def loss(p):
        return dp.grad(u)(0.3, p) ** 2

    p, eps = 0.7, 1e-6
    fd = (loss(p + eps) - loss(p - eps)) / (2 * eps)
    assert_close(dp.grad(loss)(p), fd)


def test_ir_is_printable_and_source_is_python(mlp):
    loss = dp.differentiable(mlp_loss)
    text = str(loss.ir(*mlp))
    assert "matmul" in text and "tanh" in text
    src = loss.source(*mlp, kind="grad")
    assert src.startswith("def ") and "xp.tanh" in src
    compile(src, "<test>", "exec")
    assert "xp.tanh" in loss.source(*mlp)


def test_compiled_programs_are_cached_and_retraced_on_new_shapes():
    calls = []

    def f(x):
        calls.append(1)
        return np.sum(x * x)
    g = dp.grad(f)
    g(np.ones(3))
    g(np.zeros(3))
    assert len(calls) == 1
    g(np.ones(4))
    assert len(calls) == 2
    g(np.ones(4, np.float32))
    assert len(calls) == 3
    assert len(cache_for(f).programs) == 3


def test_static_python_ints_are_part_of_the_cache_key():
    calls = []

    def f(x, n):
        calls.append(n)
        return np.sum(x ** n)
    assert_close(dp.grad(f)(np.array([2.0]), 3), [12.0])
    assert_close(dp.grad(f)(np.array([2.0]), 2), [4.0])
    assert calls == [3, 2]


def test_inputs_are_not_mutated(mlp):
    params, x, y = mlp
    before = {k: v.copy() for k, v in params.items()}
    g = dp.grad(mlp_loss)(params, x, y)
    g["w1"] += 1.0  # mutating a result must not touch inputs or cached constants
    dp.grad(mlp_loss)(params, x, y)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])


def test_returned_zero_gradients_are_fresh_arrays():
    g1 = dp.grad(lambda x, y: np.sum(y))(np.ones(2), np.ones(2))
    g1 += 5
    g2 = dp.grad(lambda x, y: np.sum(y))(np.ones(2), np.ones(2))
    assert_close(g2, [0.0, 0.0])


def test_nan_propagates_instead_of_raising():
    g = dp.grad(lambda x: np.sum(x ** 2))(np.array([np.nan, 1.0]))
    assert np.isnan(g[0]) and g[1] == 2.0


def test_method_decoration():
    class Model:
        @dp.differentiable
        def energy(self, x):
            return np.sum(x ** 2)
    assert_close(Model().energy(np.ones(3)), 3.0)


def test_has_aux():
    def f(x):
        return np.sum(x ** 2), {"mean": np.mean(x)}
    g, aux = dp.grad(f, has_aux=True)(np.array([1.0, 3.0]))
    assert_close(g, [2.0, 6.0])
    assert_close(aux["mean"], 2.0)
    (v, aux2), g2 = dp.value_and_grad(f, has_aux=True)(np.array([1.0, 3.0]))
    assert_close(v, 10.0)
    assert_close(g2, g)


# ------------------------------------------------------------------------- errors

def test_non_scalar_output_to_grad():
    with pytest.raises(dp.NotDifferentiableError, match=r"shape \(3,\).*dp.jacobian") as e:
        dp.grad(lambda x: x * 2)(np.ones(3))
    assert isinstance(e.value, TypeError)


@pytest.mark.parametrize("bad,kind", [(3, "int"), (True, "bool"), (np.arange(3), "int64")])
def test_integer_and_bool_inputs_to_grad(bad, kind):
    with pytest.raises(dp.NotDifferentiableError, match=f"argument 0.*{kind}"):
        dp.grad(lambda x: np.sum(x * 2.0))(bad)


def test_str_and_none_inputs_to_grad_are_rejected_clearly():
    with pytest.raises(dp.NotDifferentiableError, match="argument 0.*str"):
        dp.grad(lambda x: 1.0)("abc")
    with pytest.raises(dp.NotDifferentiableError, match="argument 0.*NoneType"):
        dp.grad(lambda x: 1.0)(None)


def test_nested_integer_leaf_is_static_and_an_integer_argument_named():
    g = dp.grad(lambda p: np.sum(p["w"] * p["n"]))({"w": np.ones(2), "n": np.arange(2)})
    assert g["n"] is None and list(g["w"]) == [0.0, 1.0]
    with pytest.raises(dp.NotDifferentiableError, match=r"argument 0.*int64"):
        dp.grad(lambda n: np.sum(n * 2.0))(np.arange(2))


def test_argnums_out_of_range():
    with pytest.raises(dp.ArgumentValueError, match="argnums=2.*2 positional") as e:
        dp.grad(lambda x, y: np.sum(x * y), argnums=2)(np.ones(2), np.ones(2))
    assert isinstance(e.value, ValueError)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(dp.ShapeError, match=r"\(3,\) and \(4,\)"):
        dp.grad(lambda x, y: np.sum(x + y))(np.ones(3), np.ones(4))
    with pytest.raises(dp.ShapeError, match=r"\(2, 3\) and \(2, 3\).*not aligned"):
        dp.grad(lambda x: np.sum(x @ x))(np.ones((2, 3)))


def test_function_without_rule_names_it_and_the_fix():
    with pytest.raises(dp.UnsupportedFunctionError, match=r"(?s)np.convolve.*custom_vjp.*diffprog/primitives/"):
        dp.grad(lambda x: np.sum(np.convolve(x, x)))(np.ones(3))
    with pytest.raises(dp.UnsupportedFunctionError, match=r"np.polyfit"):
        dp.grad(lambda x: np.sum(np.polyfit(x[0], x[1], 1)))(np.eye(2))


def test_np_asarray_of_a_traced_value_keeps_it_traced():
    def f(x):
        return np.sum(np.asarray(x) ** 2)
    np.testing.assert_allclose(dp.grad(f)(np.array([1.0, 2.0])), [2.0, 4.0])


def test_escape_to_a_plain_number_array_names_the_call():
    def f(x):
        return np.float64(np.sum(x)) * 2.0
    with pytest.raises(dp.ConcretizationError, match=r"test_api.py:\d+: return np.float64\(np.sum"):
        dp.grad(f)(np.ones(2))


def test_escape_through_float_and_math_names_the_call():
    import math
    with pytest.raises(dp.ConcretizationError, match=r"math.sin"):
        dp.grad(lambda x: math.sin(x))(1.0)
    with pytest.raises(dp.ConcretizationError, match=r"float\(x\)"):
        dp.grad(lambda x: float(x) * 2)(1.0)


def test_unknown_engine_name():
    with pytest.raises(dp.ArgumentValueError, match=r"unknown engine 'fortran'.*numpy"):
        dp.differentiable(lambda x: x, engine="fortran")(np.ones(1))


def test_escaped_tracer_is_a_clear_error():
    leaked = []

    def f(x):
        leaked.append(x)
        return np.sum(x)
    dp.grad(f)(np.ones(2))
    with pytest.raises(dp.DiffprogError, match="escaped"):
        np.sin(leaked[0])


def test_all_errors_share_the_base_class():
    for name in ("ArgumentError", "ArgumentValueError", "ShapeError", "UnsupportedFunctionError",
                 "ConcretizationError", "NotDifferentiableError", "EngineUnavailable", "EngineError"):
        assert issubclass(getattr(dp, name), dp.DiffprogError)


@pytest.mark.parametrize("inner", ["jvp", "vjp", "jacobian"])
def test_forward_and_reverse_nest_inside_traced_functions(inner):
    def d_dx(p):
        f = lambda x: np.sin(p * x) * p  # noqa: E731  closes over the outer traced p
        if inner == "jvp":
            return dp.jvp(f, (0.3,), (1.0,))[1]
        if inner == "vjp":
            return dp.vjp(f, 0.3)[1](1.0)[0]
        return dp.jacobian(f)(np.array([0.3]))[0, 0]

    p, eps = 0.7, 1e-6
    fd = (d_dx(p + eps) - d_dx(p - eps)) / (2 * eps)
    assert_close(d_dx(p), np.cos(0.3 * p) * p * p)
    assert_close(dp.grad(d_dx)(p), fd)


def test_numpy_function_of_a_python_float_is_strong_like_in_numpy():
    def f(s, x):
        return np.sum(np.sin(s) * x)  # np.sin(float) is np.float64: promotes float32
    x = np.ones(3, np.float32)
    assert dp.differentiable(f)(0.5, x).dtype == f(0.5, x).dtype == np.float64
    g = dp.grad(f)(0.5, x)
    assert_close(g, 3 * np.cos(0.5), rtol=1e-6)


def test_dtype_conversion_of_a_python_float_input():
    g = dp.grad(lambda s: np.mean(s, dtype=np.float32) * 2.0)(0.5)
    assert_close(g, 2.0)


# ------------------------------------------------------------- fast call path

def test_fast_path_reuses_programs_and_keeps_results_right(rng):
    vg = dp.value_and_grad(lambda x, y: np.sum(np.sin(x) * y))
    x, y = rng.standard_normal(3), rng.standard_normal(3)
    for _ in range(3):
        v, g = vg(x, y)
        assert_close(v, np.sum(np.sin(x) * y))
        assert_close(g, np.cos(x) * y)
    assert len(vg._fast) == 1
    x4, y4 = rng.standard_normal(4), rng.standard_normal(4)  # new shape: new program
    assert_close(vg(x4, y4)[1], np.cos(x4) * y4)
    assert len(vg._fast) == 2
    assert_close(vg(x, y.astype(np.float32))[1], np.cos(x) * y.astype(np.float32))
    g = vg(x, y)[1]
    g[:] = 0.0  # results are the caller's to mutate
    assert_close(vg(x, y)[1], np.cos(x) * y)


def test_fast_path_is_skipped_inside_a_trace_and_for_non_array_arguments():
    inner = dp.differentiable(lambda x: np.sum(x ** 3))
    inner(np.ones(2))  # fills the fast cache
    assert_close(dp.grad(lambda x: inner(x) * 2.0)(np.array([1.0, 2.0])), [6.0, 24.0])
    assert_close(dp.grad(lambda x: x ** 2)(3.0), 6.0)


def test_fast_path_errors_come_from_the_full_path():
    f = dp.differentiable(lambda a: np.sum(np.linalg.inv(a)))
    f(np.eye(2))
    with pytest.raises(np.linalg.LinAlgError):
        f(np.zeros((2, 2)))


def test_fast_path_leaves_guarded_programs_to_the_variant_checks():
    def f(x):
        if np.sum(x) > 0:  # a guard: the program holds for one branch only
            return np.sum(x ** 2)
        return np.sum(-x)
    g = dp.grad(f)
    for sign in (1.0, -1.0, 1.0, -1.0):
        x = sign * np.ones(2)
        assert_close(g(x), 2 * x if sign > 0 else -np.ones(2))
    assert not g._fast


def test_tuple_argnums_keep_their_order_on_repeated_calls():
    # the second call takes the fast call path; it must place gradients like the first
    f = lambda x, y: np.sum(np.sin(x) * y ** 2)
    x, y = np.linspace(0.1, 1.0, 3), np.arange(1.0, 4.0)
    vg = dp.value_and_grad(f, argnums=(1, 0))
    for _ in range(2):
        value, (gy, gx) = vg(x, y)
        np.testing.assert_allclose(gy, 2 * y * np.sin(x))
        np.testing.assert_allclose(gx, np.cos(x) * y ** 2)
        assert value == pytest.approx(f(x, y))
    gx, gy = dp.grad(f, argnums=(0, 1))(x, y)
    np.testing.assert_allclose(gx, np.cos(x) * y ** 2)


def test_results_never_alias_arguments_or_each_other():
    x, y = np.ones(3), np.arange(3.0)
    g = dp.grad(lambda x, y: np.sum(x * y))(x, y)  # d/dx is y itself
    for _ in range(2):  # the second call takes the fast path
        g = dp.grad(lambda x, y: np.sum(x * y))(x, y)
        assert not np.shares_memory(g, y)
    assert dp.differentiable(lambda x: x)(x) is not x
    gx, gy = dp.grad(lambda x, y: np.sum(x + y), argnums=(0, 1))(x, y)
    gx *= 0
    np.testing.assert_array_equal(gy, np.ones(3))
    np.testing.assert_array_equal(y, np.arange(3.0))


@pytest.mark.parametrize("z", [np.array([1 + 1j]), np.array([1 + 1j], np.complex64)])
def test_grad_of_complex_inputs_keeps_their_dtype(z):
    # JAX's convention: d|z^2|/dx - i d|z^2|/dy = 2 |z| conj(z) for |z^2| = |z|^2
    g = dp.grad(lambda z: np.sum(np.abs(z * z)))(z)
    assert g.dtype == z.dtype
    np.testing.assert_allclose(g, 2 * np.conj(z), rtol=1e-6)


@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_jacobian_of_an_integer_argument_is_refused_in_both_modes(mode):
    # forward mode used to return zeros, reverse mode a raw reshape error
    with pytest.raises(dp.NotDifferentiableError, match=r"argument 0.*int64.*astype\(float\)"):
        dp.jacobian(lambda x: x * 2.0, mode=mode)(np.arange(3))


def test_grad_takes_one_element_outputs_as_autograd_does():
    x = np.array([1.0, 2.0])
    f = lambda v: np.sum(v ** 2, keepdims=True)  # noqa: E731  shape (1,)
    np.testing.assert_allclose(dp.grad(f)(x), 2 * x)
    value, g = dp.value_and_grad(lambda v: np.reshape(np.sum(v ** 3), (1, 1)))(x)
    assert np.shape(value) == (1, 1) and np.allclose(g, 3 * x ** 2)
    np.testing.assert_allclose(dp.hessian(f)(x), 2 * np.eye(2))
    np.testing.assert_allclose(dp.grad(lambda v: dp.grad(f)(v)[0])(x), [2.0, 0.0])
    with pytest.raises(dp.NotDifferentiableError, match="one-element"):
        dp.grad(lambda v: v ** 2)(x)


@pytest.mark.parametrize("make", [
    lambda: dp.grad(3), lambda: dp.grad(np.sum, argnums=0.0),
    lambda: dp.grad(np.sum, argnums="01"), lambda: dp.differentiable(np.sum, static_argnums="a"),
    lambda: dp.differentiable(lambda x: x, static_argnums=(4,))(np.ones(2)),
    lambda: dp.jvp(np.sin, np.ones(3), np.ones(3)),
], ids=["not_callable", "float_argnums", "string_argnums", "string_static", "static_out_of_range",
        "jvp_bare_arrays"])
def test_malformed_transform_arguments_are_refused_by_name(make):
    # (a reviewer: these were accepted and failed later with raw TypeErrors, or were read
    # wrongly: argnums="01" as (0, 1), jvp's bare arrays as one primal per element)
    with pytest.raises(dp.DiffprogError, match="argnums|function|jvp"):
        make()


def test_list_operands_beside_traced_values_differentiate():
    # (a reviewer: np.dot([1.0, 2.0], a) traced, but its gradient read the list's dtype)
    a = np.ones(2)
    for fn in (lambda a: np.dot([1.0, 2.0], a), lambda a: np.sum(np.multiply([1, 2], a)),
               lambda a: [1.0, 2.0] @ a, lambda a: np.einsum("i,i", (1.0, 2.0), a)):
        assert np.array_equal(dp.differentiable(fn)(a), fn(a))
        np.testing.assert_array_equal(dp.grad(fn)(a), [1.0, 2.0])


def test_round_of_traced_values_is_numpys():
    a = np.array([1.26, 2.0])
    f = dp.differentiable(lambda a: round(a[0], 1) * a + round(np.sum(a)))
    assert np.array_equal(f(a), round(a[0], 1) * a + round(np.sum(a)))
    np.testing.assert_array_equal(dp.grad(lambda a: np.sum(a * round(a[0], 1)))(a), [1.3, 1.3])


def test_gradient_of_an_empty_product_is_empty():
    assert dp.grad(lambda a: np.prod(a))(np.zeros(0)).shape == (0,)
    assert dp.grad(lambda a: np.sum(np.prod(a, axis=0)))(np.zeros((0, 3))).shape == (0, 3)


def test_keyword_arguments_are_placed_at_their_positions():
    # (a reviewer: every transformed function refused f(x, a=4.0))
    x = np.ones(3)
    f = dp.differentiable(lambda x, a=2.0: np.sum(a * x))
    assert (f(x), f(x, a=4.0), f(x, 4.0)) == (6.0, 12.0, 12.0)
    g = dp.grad(lambda x, a=2.0, b=3.0: np.sum(a * x * b))
    np.testing.assert_array_equal(g(x, b=10.0), np.full(3, 20.0))
    value, grad = dp.value_and_grad(lambda x, y: np.sum(x * y), argnums=1)(x, y=2.0 * x)
    assert value == 6.0 and list(grad) == [1.0, 1.0, 1.0]

    def keyword_only(x, *, k=1.0):
        return np.sum(x * k)
    with pytest.raises(dp.ArgumentError, match="no position"):
        dp.differentiable(keyword_only)(x, k=2.0)
    with pytest.raises(dp.ArgumentError, match="unexpected keyword"):
        f(x, c=1.0)
    with pytest.raises(dp.errors.ArgumentValueError, match="counts from the end"):
        dp.grad(lambda x, y: np.sum(x * y), argnums=-1)(x, y=x)


def test_jacobian_and_hessian_take_keyword_arguments_too():
    x = np.ones(3)
    np.testing.assert_array_equal(np.diag(dp.jacobian(lambda a, b=1.0: a * b)(x, b=2.0)), 2.0)
    np.testing.assert_array_equal(
        np.diag(dp.hessian(lambda a, c=1.0: np.sum(a ** 3) * c)(x, c=2.0)), 12.0)
