"""Pytrees: nested arguments (tuple, namedtuple, list, dict) and their leaves.

A *tree* is any nesting of tuples, namedtuples, lists and dicts; everything else is a
leaf. A namedtuple comes back as the same namedtuple type (``Params(w=..., b=...)``).
``flatten`` returns the leaves in a deterministic order (dict keys sorted) and a
hashable ``TreeDef`` that rebuilds the same structure around new leaves; ``map`` keeps
the first tree's dict key order.

The names are those of ``jax.tree``: ``dp.tree.map``, ``leaves``, ``structure``,
``flatten``, ``unflatten``.

>>> import numpy as np, diffprog as dp
>>> params = {"w": np.ones(2), "b": 0.5}
>>> dp.tree.map(lambda p, g: p - 0.1 * g, params, {"w": np.ones(2), "b": 1.0})
{'w': array([0.9, 0.9]), 'b': 0.4}
>>> dp.tree.leaves(params)
[0.5, array([1., 1.])]
>>> dp.tree.structure(params)
{'b': *, 'w': *}
"""
from __future__ import annotations

import builtins
from typing import Any, Callable, NamedTuple

import numpy as np

_OBJECT = np.dtype(object)  # one instance: checked by identity, per leaf of every call


class TreeDef(NamedTuple):
    """Hashable description of a nested structure.

    kind is "leaf", "tuple", "namedtuple", "list" or "dict"; for dicts ``keys`` holds the
    sorted keys, for namedtuples the field names (and ``node_type`` the class).
    """

    kind: str
    keys: tuple
    children: tuple
    node_type: Any = None

    def __repr__(self) -> str:
        if self.kind == "leaf":
            return "*"
        inner = ", ".join(repr(c) for c in self.children)
        if self.kind == "dict":
            inner = ", ".join(f"{k!r}: {c!r}" for k, c in zip(self.keys, self.children))
            return "{" + inner + "}"
        if self.kind == "namedtuple":
            inner = ", ".join(f"{k}={c!r}" for k, c in zip(self.keys, self.children))
            return f"{self.node_type.__name__}({inner})"
        return ("(" + inner + ",)") if self.kind == "tuple" else ("[" + inner + "]")

    @property
    def num_leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(c.num_leaves for c in self.children)


LEAF = TreeDef("leaf", (), ())


def _sorted_keys(d: dict) -> tuple:
    try:
        return tuple(sorted(d))
    except TypeError:  # mixed key types: keep insertion order, still deterministic
        return tuple(d)


def flatten(tree: Any) -> tuple[list, TreeDef]:
    """Return (leaves, treedef).

    >>> flatten({"b": 1.0, "a": (2.0, [3.0])})
    ([2.0, 3.0, 1.0], {'a': (*, [*],), 'b': *})
    """
    leaves: list = []
    return leaves, _flatten_into(tree, leaves)


def _flatten_into(tree: Any, leaves: list) -> TreeDef:
    if isinstance(tree, dict):
        keys = _sorted_keys(tree)
        return TreeDef("dict", keys, tuple(_flatten_into(tree[k], leaves) for k in keys))
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return TreeDef("namedtuple", tuple(tree._fields),
                       tuple(_flatten_into(c, leaves) for c in tree), type(tree))
    if isinstance(tree, (tuple, list)):
        kind = "tuple" if isinstance(tree, tuple) else "list"
        return TreeDef(kind, (), tuple(_flatten_into(c, leaves) for c in tree))
    if type(tree) is np.ndarray and tree.dtype is _OBJECT:
        # np.array([x, y]) of traced values inside a traced function: the traced array it
        # stands for (see diffprog.object_arrays); other object arrays stay as they are
        from .object_arrays import traced
        tree = traced(tree)
    leaves.append(tree)
    return LEAF


def unflatten(treedef: TreeDef, leaves, orders=None) -> Any:
    """Inverse of :func:`flatten`. Dicts come back with their keys sorted, or in the
    orders of ``orders`` (from :func:`dict_orders` of the original tree).

    >>> leaves, td = flatten([1, {"x": 2}])
    >>> unflatten(td, [10, 20])
    [10, {'x': 20}]
    >>> tree = {"b": 1.0, "a": 2.0}
    >>> leaves, td = flatten(tree)
    >>> unflatten(td, leaves), unflatten(td, leaves, dict_orders(tree))
    ({'a': 2.0, 'b': 1.0}, {'b': 1.0, 'a': 2.0})
    """
    it = iter(leaves)
    out = _build(treedef, it, iter(orders) if orders is not None else None)
    return out


def dict_orders(tree: Any) -> tuple:
    """The key order of every dict in ``tree`` (in the order :func:`unflatten` meets them),
    with each key's type: code may depend on a dict's order (``list(p.values())``), and
    ``{True: x}`` is not ``{1: x}``."""
    out: list = []
    _collect_orders(tree, out)
    return tuple(out)


def _collect_orders(tree, out: list) -> None:
    if isinstance(tree, dict):
        out.append(tuple((type(k), k) for k in tree))
        for k in _sorted_keys(tree):
            _collect_orders(tree[k], out)
    elif isinstance(tree, (tuple, list)):
        for c in tree:
            _collect_orders(c, out)


def _build(td: TreeDef, it, orders=None) -> Any:
    if td.kind == "leaf":
        return next(it)
    if td.kind == "dict" and orders is not None:
        order = next(orders)
        children = dict(zip(td.keys, [_build(c, it, orders) for c in td.children]))
        return {k: children[k] for _, k in order}
    children = [_build(c, it, orders) for c in td.children]
    if td.kind == "dict":
        return dict(zip(td.keys, children))
    if td.kind == "namedtuple":
        return td.node_type(*children)
    return tuple(children) if td.kind == "tuple" else children


def map(fn: Callable, tree: Any, *rest: Any) -> Any:  # noqa: A001 (jax.tree.map's name)
    """Apply ``fn`` leaf-wise over one or more trees of the same structure.

    ``fn`` gets one leaf from each tree; the result has ``tree``'s structure, its dicts
    with ``tree``'s key order (so a parameter dict keeps its order through an optimiser
    step, and a transformed function taking it keeps its compiled program: key order is
    part of the cache key). Every tree in ``rest`` must have that structure too (else an
    ``ArgumentError`` naming both).

    >>> map(lambda x, y: x + y, {"b": 1.0, "a": (2.0,)}, {"a": (20.0,), "b": 10.0})
    {'b': 11.0, 'a': (22.0,)}
    """
    leaves, td = flatten(tree)
    others = []
    for i, r in enumerate(rest):
        r_leaves, r_td = flatten(r)
        if r_td != td:
            from .errors import ArgumentError
            raise ArgumentError(f"tree.map: tree {i + 1} has structure {r_td}, but the first "
                                f"tree has structure {td}; every tree must have the same "
                                f"structure (same containers, dict keys and lengths)")
        others.append(r_leaves)
    results = [fn(*xs) for xs in zip(leaves, *others)]
    return unflatten(td, results, dict_orders(tree) if _has_dicts(td) else None)


def _has_dicts(td: TreeDef) -> bool:
    return td.kind == "dict" or builtins.any(_has_dicts(c) for c in td.children)


tree_map = map  # the older name, kept


def leaves(tree: Any) -> list:
    """The leaves of ``tree``, in :func:`flatten`'s order (dict keys sorted).

    >>> leaves({"b": 1.0, "a": [2.0, 3.0]})
    [2.0, 3.0, 1.0]
    """
    return flatten(tree)[0]


def structure(tree: Any) -> TreeDef:
    """The :class:`TreeDef` of ``tree`` (hashable; ``*`` marks a leaf).

    >>> structure({"w": [1.0, 2.0], "b": 3.0})
    {'b': *, 'w': [*, *]}
    """
    return flatten(tree)[1]


def leaf_paths(treedef: TreeDef, prefix: str = "") -> list[str]:
    """Human-readable paths of each leaf, e.g. ``['["w"][0]', '["b"]']``; used in messages."""
    if treedef.kind == "leaf":
        return [prefix]
    out = []
    for i, child in enumerate(treedef.children):
        step = f"[{treedef.keys[i]!r}]" if treedef.kind == "dict" else \
            f".{treedef.keys[i]}" if treedef.kind == "namedtuple" else f"[{i}]"
        out.extend(leaf_paths(child, prefix + step))
    return out


# ``map`` stays out of ``import *`` so that it cannot shadow the built-in.
__all__ = ["TreeDef", "flatten", "unflatten", "leaves", "structure", "tree_map", "leaf_paths"]
