"""dp.custom_vjp / dp.custom_jvp: user rules, also around code diffprog cannot trace."""
from __future__ import annotations

import doctest

import numpy as np
import pytest
import scipy.special

import diffprog as dp
import diffprog.custom
from diffprog.errors import ArgumentError, NotDifferentiableError, ShapeError
from diffprog.primitives import PRIMITIVES
from diffprog.testing import check_grads

from .helpers import assert_close, numeric_grad


def test_docstring_examples_run():
    failures, tried = doctest.testmod(diffprog.custom, verbose=False)
    assert tried >= 8 and failures == 0


@dp.custom_vjp
def erf(x):
    return scipy.special.erf(np.asarray(x))  # opaque to diffprog on purpose


@erf.defvjp
def erf_vjp(g, x):
    return g * 2 / np.sqrt(np.pi) * np.exp(-x ** 2)


def _erf_prime(x):
    return 2 / np.sqrt(np.pi) * np.exp(-x ** 2)


X = np.array([-1.0, 0.2, 0.7])


def test_plain_call_runs_the_function():
    assert_close(erf(X), scipy.special.erf(X))


def test_grad_value_and_grad_vjp_through_untraceable_forward():
    loss = lambda x: np.sum(erf(x) * x)  # noqa: E731
    expected = scipy.special.erf(X) + X * _erf_prime(X)
    assert_close(dp.grad(loss)(X), expected)
    value, g = dp.value_and_grad(loss)(X)
    assert_close(value, np.sum(scipy.special.erf(X) * X))
    assert_close(g, expected)
    out, pullback = dp.vjp(erf, X)
    assert_close(pullback(np.ones(3))[0], _erf_prime(X))


def test_jacobian_both_modes_and_hessian():
    jac = np.diag(_erf_prime(X))
    assert_close(dp.jacobian(erf)(X), jac)
    assert_close(dp.jacobian(erf, mode="fwd")(X), jac)  # forward mode by transposing the rule
    hess = dp.hessian(lambda x: np.sum(erf(x)))(X)
    assert_close(hess, np.diag(-2 * X * _erf_prime(X)), rtol=1e-6)


def test_nested_inside_a_differentiable_function_and_generated_source():
    @dp.differentiable
    def model(w, x):
        return np.sum(erf(w * x) ** 2)

    w = np.array([0.5, -1.5, 2.0])
    expected = numeric_grad(lambda w_: np.sum(scipy.special.erf(w_ * X) ** 2), (w,), 0)
    assert_close(dp.grad(model)(w, X), expected)
    src = model.source(w, X, kind="grad")
    assert "_f" in src and "erf" not in src  # the impl is a bound name, never pasted text
    assert not any(name.startswith("custom") for name in PRIMITIVES)


def test_pytree_and_static_arguments_and_out_keyword():
    @dp.custom_vjp
    def scaled_exp(params, power):
        return np.exp(params["a"]) * params["b"] ** power

    @scaled_exp.defvjp
    def scaled_exp_vjp(g, params, power, out):
        return {"a": g * out, "b": g * out * power / params["b"]}, None

    p = {"a": np.array([0.1, 0.2]), "b": np.array([1.5, 2.5])}
    g = dp.grad(lambda p: np.sum(scaled_exp(p, 3)))(p)
    assert_close(g["a"], np.exp(p["a"]) * p["b"] ** 3)
    assert_close(g["b"], 3 * np.exp(p["a"]) * p["b"] ** 2)
    check_grads(lambda p: scaled_exp(p, 3), (p,), order=2)


def test_opaque_rule_gives_first_order_and_a_clear_error_beyond():
    @dp.custom_vjp
    def cube(x):
        return x ** 3

    @cube.defvjp
    def cube_vjp(g, x):
        return np.array(g.tolist()) * 3 * np.array(x.tolist()) ** 2  # not traceable: opaque

    assert_close(dp.grad(lambda x: np.sum(cube(x)))(X), 3 * X ** 2)
    grad_cube = dp.grad(lambda x: np.sum(cube(x)))
    with pytest.raises(NotDifferentiableError, match="rule .*cube_vjp.*not traceable"):
        dp.grad(lambda x: np.sum(grad_cube(x)))(X)  # reverse-over-reverse
    with pytest.raises(NotDifferentiableError, match="forward-mode.*cube_vjp"):
        dp.jvp(cube, (X,), (np.ones(3),))
    with pytest.raises(NotDifferentiableError, match="forward-mode.*cube_vjp"):
        dp.hessian(lambda x: np.sum(cube(x)))(X)  # forward-over-reverse


def test_custom_jvp_forward_and_derived_reverse():
    @dp.custom_jvp
    def log1pexp(x):
        return np.logaddexp(0.0, x)

    @log1pexp.defjvp
    def log1pexp_jvp(tangents, x):
        return tangents[0] / (1.0 + np.exp(-x))

    x = np.array([-30.0, 0.0, 40.0])
    _, t = dp.jvp(log1pexp, (x,), (np.ones(3),))
    assert_close(t, 1 / (1 + np.exp(-x)))
    assert_close(dp.grad(lambda x: np.sum(log1pexp(x)))(x), 1 / (1 + np.exp(-x)))
    check_grads(log1pexp, (np.array([-1.0, 0.5]),), order=2)


def test_custom_jvp_with_opaque_rule_has_no_reverse_mode():
    @dp.custom_jvp
    def sq(x):
        return x * x

    @sq.defjvp
    def sq_jvp(tangents, x):
        return np.array(tangents[0].tolist()) * 2 * np.array(x.tolist())  # opaque

    assert_close(dp.jvp(sq, (X,), (np.ones(3),))[1], 2 * X)
    with pytest.raises(NotDifferentiableError, match="reverse-mode.*sq_jvp"):
        dp.grad(lambda x: np.sum(sq(x)))(X)


def test_rule_errors_name_the_rule_and_argument():
    @dp.custom_vjp
    def f(x, y):
        return x * y

    with pytest.raises(NotDifferentiableError, match="without a rule.*@f.defvjp"):
        dp.grad(lambda x: np.sum(f(x, x)))(X)

    f.defvjp(lambda g, x, y: (g * y,))
    with pytest.raises(ArgumentError, match="one cotangent per positional argument \\(2\\)"):
        dp.grad(lambda x: np.sum(f(x, x)))(X)

    f.defvjp(lambda g, x, y: (np.sum(g * y), g * x))
    with pytest.raises(ShapeError, match="shape \\(\\) for args\\[0\\].*shape \\(3,\\)"):
        dp.grad(lambda x: np.sum(f(x, x)))(X)


def test_check_grads_catches_a_wrong_rule():
    @dp.custom_vjp
    def square(x):
        return x ** 2

    @square.defvjp
    def square_vjp(g, x):
        return g * x  # forgot the factor 2

    report = check_grads(square, (X,), raise_=False)
    assert not report.passed
    assert any("factor of 1/2" in line for r in report.failures for line in r.diagnosis)


def test_forward_mode_of_a_rule_not_linear_in_its_cotangent_is_refused():
    # (a reviewer: gradient clipping's transpose gave jacobian(mode="fwd") = 5 * I where
    # reverse mode gives I: silently wrong; JAX refuses forward mode of custom_vjp)
    @dp.custom_vjp
    def clip_gradient(x):
        return x

    @clip_gradient.defvjp
    def _(g, x):
        return np.clip(g, -1.0, 1.0)

    f = lambda x: 5.0 * clip_gradient(x)  # noqa: E731
    x = np.array([0.5, 2.0, -3.0])
    np.testing.assert_array_equal(np.diag(dp.jacobian(f)(x)), [1.0, 1.0, 1.0])
    with pytest.raises(dp.errors.NotDifferentiableError, match="linear in its cotangent"):
        dp.jacobian(f, mode="fwd")(x)
    with pytest.raises(dp.errors.NotDifferentiableError, match="linear"):
        dp.jvp(f, (x,), (np.ones(3),))


def test_forward_mode_of_a_linear_rule_is_its_transpose():
    @dp.custom_vjp
    def square(x):
        return x ** 2

    @square.defvjp
    def _(g, x):
        return 2.0 * x * g

    x = np.array([0.5, 2.0, -3.0])
    out, tangent = dp.jvp(lambda x: np.sum(square(x)), (x,), (np.ones(3),))
    assert out == np.sum(x ** 2) and tangent == np.sum(2.0 * x)
    np.testing.assert_allclose(dp.hessian(lambda x: np.sum(square(x)))(x), 2.0 * np.eye(3))


def test_jax_style_defvjp_with_forward_and_backward_functions():
    @dp.custom_vjp
    def f(x, y):
        return np.sin(x) * y

    def f_fwd(x, y):
        return f(x, y), (np.cos(x), np.sin(x), y)

    def f_bwd(residuals, g):
        cos_x, sin_x, y = residuals
        return cos_x * g * y, sin_x * g

    f.defvjp(f_fwd, f_bwd)
    x, y = np.array([0.3, 1.0]), np.array([2.0, 3.0])
    gx, gy = dp.grad(lambda x, y: np.sum(f(x, y)), argnums=(0, 1))(x, y)
    np.testing.assert_allclose(gx, np.cos(x) * y)
    np.testing.assert_allclose(gy, np.sin(x))

    @dp.custom_vjp
    def cube(x):
        return x ** 3

    cube.defvjp(lambda x: (x ** 3, x), lambda r, g: (3.0 * r ** 2 * g,))
    np.testing.assert_allclose(dp.grad(lambda x: np.sum(cube(x)))(x), 3.0 * x ** 2)
    np.testing.assert_allclose(dp.hessian(lambda x: np.sum(cube(x)))(x), np.diag(6.0 * x))


@pytest.mark.parametrize("rule", [
    lambda g, x: g + 0.1 * x, lambda g, x: g + 1.0,
    lambda g, x: np.pad(g[1:], (0, 1), constant_values=5.0)],
    ids=["weight_decay", "plus_constant", "pad_constant"])
def test_an_affine_rule_is_not_linear_either(rule):
    # (a reviewer: g + 0.1 * x passed the linearity check; its transpose drops 0.1 * x)
    @dp.custom_vjp
    def f(x):
        return x * 1.0

    f.defvjp(rule)
    with pytest.raises(dp.errors.NotDifferentiableError, match="linear"):
        dp.jacobian(f, mode="fwd")(np.array([1.0, 2.0, 3.0]))
