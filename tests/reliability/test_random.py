"""Random draws inside a traced function are fresh at every call, from the same
generator and in the same order as plain NumPy, never frozen into the program."""
import warnings

import numpy as np
import pytest

import diffprog as dp

X = np.array([1.0, 2.0, 3.0])


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dp.DiffprogWarning)
        yield


def test_global_np_random_draws_match_plain_numpy_call_for_call():
    def f(a):
        return a + np.random.normal(size=3)
    np.random.seed(7)
    plain = [f(X) for _ in range(3)]
    np.random.seed(7)
    traced = [dp.differentiable(f)(X) for _ in range(3)]
    for p, t in zip(plain, traced):
        np.testing.assert_array_equal(p, t)
    assert not np.array_equal(traced[0], traced[1])


def test_generator_in_a_closure_draws_fresh_numbers():
    def make(rng):
        return lambda a: np.sum(a * rng.normal(size=3))
    plain, traced = make(np.random.default_rng(3)), dp.differentiable(make(np.random.default_rng(3)))
    for _ in range(3):
        assert traced(X) == plain(X)


def test_generator_as_an_argument_draws_fresh_numbers():
    f = dp.differentiable(lambda a, rng: a * rng.uniform(size=3))
    r1, r2 = np.random.default_rng(0), np.random.default_rng(0)
    for _ in range(3):
        np.testing.assert_array_equal(f(X, r1), X * r2.uniform(size=3))


def test_gradient_uses_the_noise_drawn_in_that_call():
    rng, ref = np.random.default_rng(1), np.random.default_rng(1)
    g = dp.grad(lambda a: np.sum(a * rng.normal(size=3)))
    for _ in range(3):
        np.testing.assert_array_equal(g(X), ref.normal(size=3))


def test_a_function_that_draws_warns_once_with_the_fix():
    rng = np.random.default_rng(0)
    f = dp.differentiable(lambda a: a + rng.normal(size=3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f(X), f(X), f(X)
    msgs = [str(w.message) for w in caught if issubclass(w.category, dp.DiffprogWarning)]
    assert len(msgs) == 1 and "(from rng)" in msgs[0] and "as an argument" in msgs[0]


def test_seeding_inside_the_function_gives_plain_numpy_results():
    def f(a):
        np.random.seed(0)
        return a + np.random.normal(size=3)
    d = dp.differentiable(f)
    first = d(X)
    np.testing.assert_array_equal(d(X), first)
    np.testing.assert_array_equal(d(X), f(X))
