"""jacobian/hessian of pytrees (JAX's structure) and the messages a newcomer meets."""
import numpy as np
import pytest

import diffprog as dp

P = {"a": np.array([1.0, 2.0]), "b": 3.0}


@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_jacobian_of_a_dict_argument_has_its_structure(mode):
    J = dp.jacobian(lambda p: p["a"] * p["b"], mode=mode)(P)
    np.testing.assert_allclose(J["a"], 3.0 * np.eye(2))
    np.testing.assert_allclose(J["b"], [1.0, 2.0])


@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_jacobian_of_a_pytree_output_nests_output_then_argument(mode):
    x = np.array([1.0, 2.0])
    J = dp.jacobian(lambda x: (x ** 2, {"s": np.sum(x)}), mode=mode)(x)
    np.testing.assert_allclose(J[0], np.diag(2 * x))
    np.testing.assert_allclose(J[1]["s"], [1.0, 1.0])


@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_jacobian_with_several_argnums_and_a_list(mode):
    J = dp.jacobian(lambda xs, y: xs[0] * xs[1] * y, argnums=(0, 1), mode=mode)(
        [np.array([1.0, 2.0]), np.array([3.0, 4.0])], 2.0)
    np.testing.assert_allclose(J[0][0], np.diag([6.0, 8.0]))
    np.testing.assert_allclose(J[0][1], np.diag([2.0, 4.0]))
    np.testing.assert_allclose(J[1], [3.0, 8.0])


def test_hessian_of_a_dict_is_nested_like_jax():
    H = dp.hessian(lambda p: np.sum(p["a"] ** 2 * p["b"]))(P)
    np.testing.assert_allclose(H["a"]["a"], 6.0 * np.eye(2))
    np.testing.assert_allclose(H["a"]["b"], [2.0, 4.0])
    np.testing.assert_allclose(H["b"]["a"], [2.0, 4.0])
    np.testing.assert_allclose(H["b"]["b"], 0.0)


def test_jacobian_names_a_leaf_that_is_not_a_float():
    with pytest.raises(dp.NotDifferentiableError, match=r"argument 0\['n'\].*int64"):
        dp.jacobian(lambda p: p["x"] * 2)({"x": np.ones(2), "n": np.arange(2)})


def test_has_aux_message_says_what_was_returned_and_the_fix():
    with pytest.raises(dp.ArgumentError, match=r"a single array \(not a pair\).*Fix: return "
                                               r"\(loss, aux\)"):
        dp.grad(lambda x: np.sum(x), has_aux=True)(np.ones(2))


def test_unknown_engine_lists_the_engines_and_which_run_here():
    with pytest.raises(dp.ArgumentValueError, match=r"unknown engine 'jax'.*numpy \(available\)"
                                                     r".*Fix: pass engine='numpy'"):
        dp.differentiable(np.sin, engine="jax")


def test_an_error_inside_a_custom_rule_names_the_rule():
    @dp.custom_vjp
    def h(x):
        return np.sin(x)

    @h.defvjp
    def h_bwd(g, x):
        return g * np.ones((2, 2))
    with pytest.raises(ValueError, match=r"in the vjp rule .*h_bwd of h: operands could not be "
                                         r"broadcast"):
        dp.grad(lambda x: np.sum(h(x)))(np.ones(3))


def test_int_and_bool_leaves_of_a_params_dict_are_static_with_no_gradient():
    # (a reviewer: transforms.md says non-float leaves are static, but grad refused them)
    x = np.full(2, 1.5)
    g = dp.grad(lambda p: np.sum(p["w"] ** p["n"] * p["on"]))({"w": x, "n": 2, "on": True})
    assert g["n"] is None and g["on"] is None
    np.testing.assert_array_equal(g["w"], 2.0 * x)
    g = dp.grad(lambda p: np.sum(p["w"][p["idx"]]))({"w": x, "idx": np.array([0, 0, 1])})
    assert g["idx"] is None and list(g["w"]) == [2.0, 1.0]
    params = {"w": x, "n": 2}
    for opt in (dp.optim.SGD(lr=0.1, momentum=0.9), dp.optim.Adam(lr=0.1)):
        new, _ = opt.update(dp.grad(lambda p: np.sum(p["w"] ** p["n"]))(params),
                            opt.init(params), params)
        assert new["n"] == 2 and np.all(new["w"] < x)
    with pytest.raises(dp.errors.NotDifferentiableError, match="Python int"):
        dp.grad(lambda n: n * 2.0)(3)  # an int argument itself: nothing to differentiate
