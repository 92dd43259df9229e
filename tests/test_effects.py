"""Calls that read the clock, files, entropy or an outside iterator run at every call
(the function is traced anew, with a DiffprogWarning), never frozen into a program."""
import os
import time
import warnings

import numpy as np
import pytest

import diffprog as dp
from diffprog.errors import DiffprogWarning

X = np.ones(3)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiffprogWarning)
        warnings.simplefilter("ignore", ResourceWarning)
        yield


def test_a_file_read_inside_the_function_is_read_at_every_call(tmp_path):
    path = tmp_path / "scale.txt"
    path.write_text("2.0")

    def f(x):
        with open(path) as fh:
            return np.sum(x) * float(fh.read())
    value, grad = dp.differentiable(f), dp.grad(f)
    assert value(X) == 6.0 and list(grad(X)) == [2.0] * 3
    path.write_text("5.0")
    assert value(X) == 15.0 and list(grad(X)) == [5.0] * 3


def test_numpy_file_readers_are_read_at_every_call(tmp_path):
    path = str(tmp_path / "w.txt")
    np.savetxt(path, np.ones(3))
    f = dp.differentiable(lambda x: np.sum(x * np.loadtxt(path)))
    assert f(X) == 3.0
    np.savetxt(path, np.full(3, 2.0))
    assert f(X) == 6.0


def test_the_clock_and_fresh_entropy_are_read_at_every_call():
    from time import perf_counter
    clock = dp.differentiable(lambda x: np.sum(x) * time.time())
    first = clock(X)
    time.sleep(0.01)
    assert clock(X) != first
    counter = dp.differentiable(lambda x: np.sum(x) * perf_counter())
    assert counter(X) != counter(X)
    entropy = dp.differentiable(lambda x: np.sum(x) * os.urandom(1)[0])
    assert len({float(entropy(X)) for _ in range(32)}) > 1


def test_an_iterator_read_from_outside_advances_at_every_call():
    it = iter([1.0, 2.0, 3.0])
    f = dp.differentiable(lambda x: np.sum(x) * next(it))
    assert [f(X), f(X), f(X)] == [3.0, 6.0, 9.0]


def test_the_warning_names_the_call_and_the_fix():
    f = dp.differentiable(lambda x: np.sum(x) * time.time())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DiffprogWarning)
        f(X)
    messages = [str(w.message) for w in caught if issubclass(w.category, DiffprogWarning)]
    assert messages and "time.time" in messages[0] and "pass what they give in" in messages[0]


def test_pure_functions_of_the_same_modules_keep_their_program():
    f = dp.differentiable(lambda x: np.sum(x) * len(os.path.join("a", "b")))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffprogWarning)
        assert f(X) == 9.0 and f(X) == 9.0


def test_the_environment_and_file_metadata_are_read_at_every_call(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPROG_TEST_SCALE", "2")
    f = dp.differentiable(lambda x: x * float(os.getenv("DIFFPROG_TEST_SCALE")))
    assert list(f(X)) == [2.0] * 3
    monkeypatch.setenv("DIFFPROG_TEST_SCALE", "3")
    assert list(f(X)) == [3.0] * 3
    path = tmp_path / "data.txt"
    path.write_text("a")
    g = dp.differentiable(lambda x: x * os.path.getsize(path))
    assert list(g(X)) == [1.0] * 3
    path.write_text("abc")
    assert list(g(X)) == [3.0] * 3
