"""Integer index arrays computed from traced values (issue 15, item 2): ``ix =
np.floor(x).astype(int)``, ``f[ix, iy]``, ``x[np.argmax(x)]``, np.searchsorted. The
integers have no derivative; the gather does, in the indexed array (and in whatever
else the result is computed from). Checked against finite differences of NumPy's own
function (away from the integers' jumps), in both modes, to second order, under dp.vmap
and on the Julia engine's static checks."""
from __future__ import annotations

import numpy as np
import pytest

import diffprog as dp
from diffprog.testing import check_grads

from .helpers import assert_close

R = np.random.default_rng(2)
GRID = R.standard_normal((4, 5))
P = np.array([[0.3, 0.4], [1.5, 2.2], [2.1, 3.6]])  # inside the grid, off its lines
X = np.array([0.5, 1.2, 2.7])


def floor_gather(x, g):
    ix = np.floor(x).astype(int)
    iy = np.floor(x * 1.5).astype(int)
    return g[ix, iy] * x ** 2


def bilinear(g, p):
    i = np.floor(p[:, 0]).astype(np.int64)
    j = np.floor(p[:, 1]).astype(np.int64)
    fx, fy = p[:, 0] - i, p[:, 1] - j
    return ((1 - fx) * (1 - fy) * g[i, j] + fx * (1 - fy) * g[i + 1, j]
            + (1 - fx) * fy * g[i, j + 1] + fx * fy * g[i + 1, j + 1])


def argmax_index(x):
    return x[np.argmax(x)] ** 2 * 2 + x[np.argmin(x)] * x[0]


def searchsorted_index(x, table):
    k = np.searchsorted(np.array([0.0, 1.0, 2.0]), x)  # which bin
    return table[k] * x


def take_traced(x, g):
    return np.take(g, np.clip(np.round(x * 2).astype(int), 0, 4), axis=1)


def list_of_traced_indices(x):
    return x[[np.argmax(x), 0, np.argmin(x)]] * x[::-1]


def rounded_index_into_itself(x):
    return x[(np.abs(x) > 1).astype(int)] * x


CASES = {
    "floor_gather": (floor_gather, (X, GRID)),
    "bilinear_interpolation": (bilinear, (GRID, P)),
    "argmax_as_index": (argmax_index, (X,)),
    "searchsorted_as_index": (searchsorted_index, (X, np.array([1.0, -2.0, 3.0, 0.5]))),
    "take_with_traced_indices": (take_traced, (X * 0.9 + 0.1, GRID)),
    "bool_to_int_index": (rounded_index_into_itself, (np.array([0.3, 1.7, -1.2]),)),
    "list_of_traced_indices": (list_of_traced_indices, (X,)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_and_derivatives(name):
    fn, args = CASES[name]
    assert_close(dp.differentiable(fn)(*args), fn(*args), rtol=1e-13, atol=1e-13)
    check_grads(fn, args, order=2, modes=("rev", "fwd"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_over_the_traced_positions(name):
    fn, args = CASES[name]
    shifted = args[0] + 0.01
    got = dp.vmap(fn, in_axes=(0,) + (None,) * (len(args) - 1))(np.stack([args[0], shifted]), *args[1:])
    assert_close(got, np.stack([fn(args[0], *args[1:]), fn(shifted, *args[1:])]))


def test_the_gradient_in_the_indexed_array_is_a_scatter():
    g = dp.grad(lambda grid, x: np.sum(floor_gather(x, grid)))(GRID, X)
    expected = np.zeros_like(GRID)
    np.add.at(expected, (np.floor(X).astype(int), np.floor(X * 1.5).astype(int)), X ** 2)
    assert_close(g, expected)


def test_integer_results_carry_no_derivative():
    # d/dx of floor(x).astype(int) * 1.0 is 0 almost everywhere, as finite differences say
    assert_close(dp.grad(lambda x: np.sum(np.floor(x).astype(int) * 1.0 + x))(X), np.ones(3))
    j = dp.jacobian(lambda x: np.argmax(x) * 1.0)(X)
    assert_close(j, np.zeros(3))


def test_a_traced_value_guarding_an_int_index_retraces_when_it_changes():
    f = dp.differentiable(lambda x: x[int(np.argmax(x))])  # int(): a guard, not a gather
    assert f(np.array([1.0, 3.0, 2.0])) == 3.0
    assert f(np.array([5.0, 3.0, 2.0])) == 5.0
