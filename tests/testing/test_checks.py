"""check_grads / assert_grad_close: correct derivatives pass, planted bugs are caught
and diagnosed, kinks are recognised, reports name the argument and element."""
from __future__ import annotations

import doctest

import numpy as np
import pytest

import diffprog as dp
import diffprog.testing
import diffprog.testing.checks
from diffprog import engines
from diffprog.errors import (ArgumentError, ArgumentValueError, DiffprogError, EngineUnavailable,
                             GradCheckError)
from diffprog.testing import assert_grad_close, check_grads


def test_docstring_examples_run():
    for module in (diffprog.testing, diffprog.testing.checks):
        failures, tried = doctest.testmod(module, verbose=False)
        assert tried > 0 and failures == 0


def mlp(params, x):
    h = np.tanh(x @ params["w"] + params["b"])
    return np.sum(h ** 2) / x.shape[0]


def _params(rng, dtype):
    return {"w": rng.standard_normal((4, 3)).astype(dtype),
            "b": rng.standard_normal(3).astype(dtype)}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_correct_gradients_pass_to_second_order(rng, dtype):
    params, x = _params(rng, dtype), rng.standard_normal((5, 4)).astype(dtype)
    report = check_grads(mlp, (params, x), order=2)
    assert report.passed and bool(report)
    # rev + fwd for 3 leaves at order 1, then 4 derived checks per leaf
    assert len(report.results) == 3 * 2 + 3 * 4
    assert {r.argument for r in report.results} == {'params["w"]', 'params["b"]', "x"}


def test_float32_function_with_correct_gradient_passes_by_default():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 50)).astype(np.float32)
    w = rng.standard_normal((50, 10)).astype(np.float32)
    loss = lambda x, w: np.sum(np.log(np.sum(np.exp(np.tanh(x @ w)), axis=1)))  # noqa: E731
    report = check_grads(loss, (x, w), order=2)
    assert report.passed
    assert report.fd_dtype == "float64"  # finite differences in float64 for float32 inputs


def test_cost_does_not_grow_with_input_size():
    x = np.linspace(0.1, 1.0, 10_000)
    report = check_grads(lambda x, s: np.sum(np.sin(x) * s), (x, 2.0))
    assert report.passed
    assert "4 evaluations" in report.notes[-1]  # two per argument, whatever the size


def _matmul_with_rule(rule):
    @dp.custom_vjp
    def matmul(a, b):
        return a @ b
    matmul.defvjp(rule)
    return matmul


A = np.random.default_rng(3).standard_normal((3, 3))
B = np.random.default_rng(4).standard_normal((3, 3))

PLANTED = {
    "factor 2": (lambda g, a, b: (2 * (g @ b.T), a.T @ g), "a", "factor of 2"),
    "sign flip": (lambda g, a, b: (g @ b.T, -(a.T @ g)), "b", "sign flip"),
    "transposed": (lambda g, a, b: ((g @ b.T).T, a.T @ g), "a", "transpose"),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_rule_bugs_are_diagnosed(bug):
    rule, argument, phrase = PLANTED[bug]
    with pytest.raises(GradCheckError) as info:
        check_grads(_matmul_with_rule(rule), (A, B))
    err = info.value
    assert isinstance(err, AssertionError) and isinstance(err, DiffprogError)
    failing = {r.argument for r in err.report.failures}
    assert failing == {argument}
    for r in err.report.failures:
        assert r.diagnosis[0].startswith("a real bug")
        assert phrase in r.diagnosis[-1]
        assert r.dense.mismatched > 0 and r.dense.worst_path.startswith(argument + "[")
    message = str(err)
    assert "seed=0" in message and "reverse mode, order 1" in message
    assert "forward mode, order 1" in message  # forward mode of a custom_vjp: derived rule


def test_swapped_arguments_are_diagnosed():
    @dp.custom_vjp
    def mul(x, y):
        return x * y

    @mul.defvjp
    def mul_vjp(g, x, y):
        return g * x, g * y  # swapped: d/dx is g*y

    rng = np.random.default_rng(0)
    report = check_grads(mul, (rng.standard_normal(4), rng.standard_normal(4)),
                         modes="rev", raise_=False)
    by_arg = {r.argument: r for r in report.failures}
    assert set(by_arg) == {"x", "y"}
    assert "with respect to y" in by_arg["x"].diagnosis[-1]
    assert "swapped arguments" in by_arg["x"].diagnosis[-1]


def test_report_names_pytree_element_and_counts_mismatches():
    @dp.custom_vjp
    def weighted(params, x):
        return np.sum(params["w"] * x)

    @weighted.defvjp
    def weighted_vjp(g, params, x):
        gw = g * x
        gw = np.where(np.arange(gw.size).reshape(gw.shape) == 7, 0.0, gw)  # one wrong element
        return {"w": gw}, g * params["w"]

    rng = np.random.default_rng(1)
    params, x = {"w": rng.standard_normal((4, 3))}, rng.standard_normal((4, 3))
    x[2, 1] = 5.0  # make the wrong element matter
    report = check_grads(weighted, (params, x), modes="rev", raise_=False)
    (failure,) = report.failures
    assert failure.argument == 'params["w"]'
    assert failure.dense.mismatched == 1 and failure.dense.checked == 12
    assert failure.dense.worst_path == 'params["w"][2, 1]'
    assert 'params["w"][2, 1]' in str(report) and "1 of 12 mismatch" in str(report)


def test_relu_at_zero_is_reported_as_a_kink():
    x = np.array([0.0, 1.0, -2.0])
    # written as x * (x > 0): its rule takes the right-hand slope at 0 (np.maximum splits
    # the tie 1/2 each, which is exactly the central difference, so it passes)
    report = check_grads(lambda x: x * (x > 0), (x,), raise_=False)
    assert report.failures
    for r in report.failures:
        assert r.diagnosis[0].startswith("a kink")
        assert r.dense.worst_path == "x[0]" and r.dense.mismatched == 1


def test_abs_at_zero_is_reported_as_a_kink_at_second_order():
    x = np.array([0.0, 1.5])
    report = check_grads(lambda x: np.sum(np.abs(x) * x[::-1]), (x,), order=2, raise_=False)
    assert all(r.passed for r in report.results if "order 1" in r.check)  # central FD is symmetric
    assert report.failures
    assert all("a jump" in r.diagnosis[0] and "kink" in r.diagnosis[0] for r in report.failures)


def test_finite_difference_noise_is_recognised():
    x = np.linspace(0.5, 2.0, 5)
    report = check_grads(lambda x: np.sum(np.exp(x) * x), (x,), modes="rev", eps=1e-13,
                         rtol=1e-3, raise_=False)
    (failure,) = report.failures
    assert failure.diagnosis[0].startswith("finite-difference noise")
    assert failure.dense.mismatched == 0


def test_seed_reproduces_and_is_reported(monkeypatch):
    f, x = (lambda x: np.sum(np.sin(x))), np.linspace(0, 1, 3)
    r1, r2 = check_grads(f, x, seed=11), check_grads(f, x, seed=11)
    assert r1.seed == 11 and [r.analytic for r in r1.results] == [r.analytic for r in r2.results]
    assert check_grads(f, x, seed=12).results[0].analytic != r1.results[0].analytic
    monkeypatch.setenv("DIFFPROG_TEST_SEED", "42")
    assert check_grads(f, x).seed == 42


def test_bad_arguments_fail_clearly():
    f = lambda x: np.sum(x)  # noqa: E731
    with pytest.raises(ArgumentValueError, match="order must be 1 or 2"):
        check_grads(f, (np.ones(2),), order=3)
    with pytest.raises(ArgumentValueError, match="modes"):
        check_grads(f, (np.ones(2),), modes=("backward",))
    with pytest.raises(ArgumentError, match="no floating-point argument"):
        check_grads(f, (np.arange(3),))


def test_engine_is_passed_through_and_unavailable_engines_fail_cleanly(monkeypatch):
    f, x = (lambda x: np.sum(x ** 3)), np.array([1.0, 2.0])
    assert check_grads(f, (x,), engine="numpy").passed

    class Absent(engines.Engine):
        name = "absent"

        def check_available(self):
            raise EngineUnavailable("absent engine: not installed here. Fix: install it.")

    monkeypatch.setitem(engines._FACTORIES, "absent", Absent)
    with pytest.raises(EngineUnavailable, match="absent engine"):
        check_grads(f, (x,), engine="absent")


def test_julia_engine_absent_raises_engine_unavailable():
    if "julia" not in engines.names():
        pytest.skip("the julia engine is not registered in this build")
    if engines.available().get("julia") == "ok":
        assert check_grads(lambda x: np.sum(x ** 3), (np.array([1.0, 2.0]),), engine="julia")
    else:
        with pytest.raises(EngineUnavailable):
            check_grads(lambda x: np.sum(x ** 3), (np.array([1.0, 2.0]),), engine="julia")


def test_assert_grad_close_accepts_a_correct_gradient_and_reports_a_wrong_one():
    f = lambda x, w: np.sum(np.sin(x * w))  # noqa: E731
    x, w = np.linspace(0, 1, 4), np.array([1.0, 2.0, 3.0, 4.0])
    assert_grad_close(lambda x, w: w * np.cos(x * w), f, (x, w))
    with pytest.raises(GradCheckError) as info:
        assert_grad_close(lambda x, w: -w * np.cos(x * w), f, (x, w))
    assert "x: 4 of 4 elements mismatch; worst x[3]" in str(info.value)
    assert "sign flip" in str(info.value)
    with pytest.raises(GradCheckError, match="structure"):
        assert_grad_close(lambda x, w: (x, w), f, (x, w))


def test_custom_vjp_with_an_untraceable_rule_is_checked_in_reverse_mode_only():
    scipy_special = pytest.importorskip("scipy.special")

    @dp.custom_vjp
    def erf(x):
        return scipy_special.erf(x)

    @erf.defvjp
    def erf_vjp(g, x):  # .tolist(): fine for reverse mode, but gives no forward mode
        return g * 2 / np.sqrt(np.pi) * np.exp(-np.array(x.tolist()) ** 2)

    x = np.linspace(-1.0, 1.0, 5)
    report = check_grads(erf, (x,), raise_=False)  # default modes ("rev", "fwd")
    assert report.passed and [r.check for r in report.results] == ["reverse mode, order 1"]
    assert any("forward mode (order 1) not checked" in n for n in report.notes)
    assert "not checked" in str(report)
    with pytest.raises(dp.NotDifferentiableError):  # asked for forward mode only: say so
        check_grads(erf, (x,), modes=("fwd",))
