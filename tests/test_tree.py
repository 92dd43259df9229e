"""Pytrees: flatten/unflatten round trips, deterministic order, paths for messages."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

import diffprog as dp
from diffprog.tree import flatten, leaf_paths, tree_map, unflatten


class Params(NamedTuple):
    w: np.ndarray
    b: float


def test_round_trip_of_nested_containers():
    tree = {"b": [1.0, (2.0, 3.0)], "a": {"z": 4.0}, "c": ()}
    leaves, td = flatten(tree)
    assert leaves == [4.0, 1.0, 2.0, 3.0]  # dict keys sorted: a, b, c
    assert unflatten(td, leaves) == tree
    assert hash(td) == hash(flatten(dict(reversed(list(tree.items()))))[1])


def test_namedtuples_are_nodes_that_keep_their_type_and_field_names():
    p = Params(np.ones(2), 0.5)
    leaves, td = flatten({"p": p})
    assert len(leaves) == 2 and repr(td) == "{'p': Params(w=*, b=*)}"
    back = unflatten(td, [10.0, 20.0])["p"]
    assert type(back) is Params and back == Params(10.0, 20.0)
    assert leaf_paths(td) == ["['p'].w", "['p'].b"]
    assert tree_map(lambda x: x * 2, p).b == 1.0


def test_grad_mirrors_a_namedtuple_argument():
    loss = lambda p, x: np.sum((x * p.w + p.b) ** 2)
    p, x = Params(np.ones(3), 0.5), np.arange(3.0)
    for _ in range(2):
        g = dp.grad(loss)(p, x)
        assert type(g) is Params
        np.testing.assert_allclose(g.w, 2 * (x * p.w + p.b) * x)
        np.testing.assert_allclose(g.b, np.sum(2 * (x * p.w + p.b)))
