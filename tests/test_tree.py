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


def test_jax_names_are_offered_on_dp_tree():
    params = {"w": np.ones(2), "b": 0.5, "layers": [Params(np.zeros(1), 1.0)]}
    leaves, td = dp.tree.flatten(params)
    assert dp.tree.leaves(params) == leaves and dp.tree.structure(params) == td
    assert repr(td) == "{'b': *, 'layers': [Params(w=*, b=*)], 'w': *}"
    doubled = dp.tree.map(lambda x: x * 2, params)
    assert doubled["b"] == 1.0 and type(doubled["layers"][0]) is Params
    np.testing.assert_array_equal(doubled["w"], [2.0, 2.0])
    assert dp.tree.unflatten(td, leaves)["layers"][0].b == 1.0
    assert dp.tree.tree_map is dp.tree.map  # the older name still works


def test_map_over_several_trees_refuses_a_structure_mismatch():
    out = dp.tree.map(lambda p, g: p - g, {"a": 1.0, "b": 2.0}, {"a": 0.5, "b": 0.5})
    assert out == {"a": 0.5, "b": 1.5}
    try:
        dp.tree.map(lambda p, g: p - g, {"a": 1.0, "b": 2.0}, {"a": 0.5})  # zip would truncate
    except dp.ArgumentError as e:
        assert "tree 1 has structure {'a': *}" in str(e) and "{'a': *, 'b': *}" in str(e)
    else:
        raise AssertionError("a structure mismatch must raise")


def test_star_import_does_not_shadow_the_builtin_map():
    namespace: dict = {}
    exec("from diffprog.tree import *", namespace)
    assert "map" not in namespace and "leaves" in namespace


def test_tree_doctests():
    import doctest

    import diffprog.tree
    failures, tried = doctest.testmod(diffprog.tree, verbose=False)
    assert tried >= 8 and failures == 0
