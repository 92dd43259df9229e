"""Flatten and unflatten nested arguments (tuple, namedtuple, list, dict).

A *tree* is any nesting of tuples, namedtuples, lists and dicts; everything else is a
leaf. A namedtuple comes back as the same namedtuple type (``Params(w=..., b=...)``).
``flatten`` returns the leaves in a deterministic order and a hashable ``TreeDef``
that rebuilds the same structure around new leaves.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple


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
    leaves.append(tree)
    return LEAF


def unflatten(treedef: TreeDef, leaves) -> Any:
    """Inverse of :func:`flatten`.

    >>> leaves, td = flatten([1, {"x": 2}])
    >>> unflatten(td, [10, 20])
    [10, {'x': 20}]
    """
    it = iter(leaves)
    out = _build(treedef, it)
    return out


def _build(td: TreeDef, it) -> Any:
    if td.kind == "leaf":
        return next(it)
    children = [_build(c, it) for c in td.children]
    if td.kind == "dict":
        return dict(zip(td.keys, children))
    if td.kind == "namedtuple":
        return td.node_type(*children)
    return tuple(children) if td.kind == "tuple" else children


def tree_map(fn: Callable, tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` leaf-wise over one or more trees of the same structure."""
    leaves, td = flatten(tree)
    others = [flatten(r)[0] for r in rest]
    return unflatten(td, [fn(*xs) for xs in zip(leaves, *others)])


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
