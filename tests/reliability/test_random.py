"""Random draws inside a traced function are fresh at every call, from the same
generator and in the same order as plain NumPy, never frozen into the program."""
import types
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
    assert len(msgs) == 1 and "'rng'" in msgs[0] and "as an argument" in msgs[0]


def test_seeding_inside_the_function_gives_plain_numpy_results():
    def f(a):
        np.random.seed(0)
        return a + np.random.normal(size=3)
    d = dp.differentiable(f)
    first = d(X)
    np.testing.assert_array_equal(d(X), first)
    np.testing.assert_array_equal(d(X), f(X))


def test_generators_in_dicts_attributes_partials_and_pythons_random_draw_fresh():
    import functools
    import random

    class Holder:
        def __init__(self):
            self.rng = np.random.default_rng(0)

        def noisy(self, x):
            return np.sum(x * self.rng.normal(size=3))
    table = {"r": np.random.default_rng(0)}
    cases = [lambda x: np.sum(x * table["r"].normal(size=3)), Holder().noisy,
             functools.partial(lambda x, rng: np.sum(x * rng.normal(size=3)),
                               rng=np.random.default_rng(0)),
             lambda x: np.sum(x) * random.random()]
    for fn in cases:
        f = dp.differentiable(fn)
        assert f(X) != f(X)


def test_draws_inside_a_vmap_body_are_refused():
    rng = np.random.default_rng(1)
    with pytest.raises(dp.DiffprogError, match="drawn inside the function given to dp.vmap"):
        dp.vmap(lambda x: x * rng.normal())(X)


def test_draws_inside_a_scan_body_from_a_global_generator_are_refused():
    mod = types.ModuleType("user_code")
    exec(compile("import numpy as np\nimport diffprog as dp\nR = np.random.default_rng(1)\n"
                 "def f(xs):\n    return dp.scan(lambda c, x: (c, x * R.normal()), 0.0, xs)[1]\n",
                 "<user_code>", "exec"), mod.__dict__)
    with pytest.raises(dp.DiffprogError, match="drawn inside"):
        dp.differentiable(mod.f)(X)


@pytest.mark.parametrize("transform", [dp.hessian, lambda f: dp.jacobian(f, mode="fwd"),
                                       dp.jacobian])
def test_jacobians_of_functions_that_draw_are_refused(transform):
    rng = np.random.default_rng(2)
    f = lambda x: np.sum(x ** 3 * rng.normal(size=3))  # noqa: E731
    g = f if transform is dp.hessian else (lambda x: x ** 3 * rng.normal(size=3))
    with pytest.raises(dp.DiffprogError, match="draws random numbers"):
        transform(g)(X)


def test_draws_inside_a_scan_body_from_a_closed_over_generator_are_refused():
    rng = np.random.default_rng(1)
    with pytest.raises(dp.DiffprogError, match="drawn inside"):
        dp.differentiable(lambda xs: dp.scan(lambda c, x: (c, x * rng.normal()), 0.0, xs)[1])(X)


def test_draws_by_other_threads_are_not_blamed_on_a_function_that_cannot_draw():
    import threading
    stop = threading.Event()

    def drawing_thread():
        while not stop.is_set():
            np.random.random()  # another thread keeps drawing from the global generator
    worker = threading.Thread(target=drawing_thread)
    worker.start()
    try:
        traces = []

        def f(x):
            traces.append(1)
            for _ in range(200):
                x = np.sin(x) + 0.1  # tracing takes long enough for the thread to draw
            return x
        d = dp.differentiable(f)
        with warnings.catch_warnings():
            warnings.simplefilter("error", dp.DiffprogWarning)
            d(X), d(X), d(X)
        assert len(traces) == 1
    finally:
        stop.set()
        worker.join()
