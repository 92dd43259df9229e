"""The embedded engine: a Graph becomes straight-line Python source over ``xp``.

One line per equation, using each primitive's source template, so the compiled
program has no per-op dispatch. Intermediates are deleted right after their last
use (peak memory). Constants and non-literal parameters are bound as names in the
program's namespace, never pasted as text: generated code contains only names we
made, numbers and our own templates.
"""
from __future__ import annotations

import itertools
import string

import numpy as np

from ..ir import Graph, Lit, Var
from .base import Engine, Program

_compile_ids = itertools.count()


def _is_safe_literal(v) -> bool:
    """Values whose repr we paste: ints, bools, None, finite floats, slices, tuples of them."""
    if v is None or v is Ellipsis or isinstance(v, bool):
        return True
    if isinstance(v, int) and not isinstance(v, np.integer):
        return True
    if isinstance(v, float) and not isinstance(v, np.floating):
        return np.isfinite(v)
    if isinstance(v, slice):
        return all(_is_safe_literal(x) for x in (v.start, v.stop, v.step))
    if isinstance(v, tuple):
        return all(_is_safe_literal(x) for x in v)
    return False


class SourceBuilder:
    """Accumulates generated lines and the namespace of bound constants."""

    def __init__(self, xp_module):
        self.namespace = {"xp": xp_module}
        self.lines: list[str] = []
        self._consts = itertools.count()
        self._bound_ids: dict[int, str] = {}

    def bind_value(self, value, prefix="c") -> str:
        key = id(value)
        if key in self._bound_ids:
            return self._bound_ids[key]
        name = f"_{prefix}{next(self._consts)}"
        self.namespace[name] = value
        self._bound_ids[key] = name
        return name

    def param_text(self, value) -> str:
        return repr(value) if _is_safe_literal(value) else self.bind_value(value, "k")


def generate_source(graph: Graph, xp_module, fn_name="program") -> tuple[str, dict]:
    b = SourceBuilder(xp_module)
    names: dict[int, str] = {}
    for i, v in enumerate(graph.invars):
        names[id(v)] = f"a{i}"
    counter = itertools.count()
    last_use = _last_uses(graph)
    out_ids = {id(v) for v in graph.outvars if isinstance(v, Var)}
    in_ids = {id(v) for v in graph.invars}

    def operand(atom) -> str:
        if isinstance(atom, Lit):
            v = atom.value
            if isinstance(v, (int, float, bool)) and not isinstance(v, np.generic) and _is_safe_literal(v):
                return repr(v)
            return b.bind_value(v)
        return names[id(atom)]

    body = []
    for idx, eqn in enumerate(graph.eqns):
        outs = []
        for o in eqn.outputs:
            names[id(o)] = f"v{next(counter)}"
            outs.append(names[id(o)])
        rhs = _render(eqn, [operand(a) for a in eqn.inputs], b)
        lhs = ", ".join(outs) + ("," if len(outs) == 1 and eqn.prim.multiple_results else "")
        body.append(f"{lhs} = {rhs}")
        dead = [names[id(a)] for a in _unique_vars(eqn.inputs)
                if last_use.get(id(a)) == idx and id(a) not in out_ids and id(a) not in in_ids]
        if dead:
            body.append("del " + ", ".join(dead))
    rets = []
    for o in graph.outvars:
        text = operand(o)
        if isinstance(o, Lit) and isinstance(o.value, np.ndarray):
            text = f"xp.array({text}, copy=True)"  # callers may mutate what we return
        rets.append(text)
    args = ", ".join(f"a{i}" for i in range(len(graph.invars)))
    src = [f"def {fn_name}({args}):"]
    src += ["    " + line for line in body]
    src.append(f"    return ({', '.join(rets)}{',' if len(rets) == 1 else ''})")
    return "\n".join(src) + "\n", b.namespace


def _unique_vars(atoms):
    seen, out = set(), []
    for a in atoms:
        if isinstance(a, Var) and id(a) not in seen:
            seen.add(id(a))
            out.append(a)
    return out


def _last_uses(graph: Graph) -> dict:
    last = {}
    for idx, eqn in enumerate(graph.eqns):
        for a in eqn.inputs:
            if isinstance(a, Var):
                last[id(a)] = idx
    return last


def _render(eqn, operands: list[str], b: SourceBuilder) -> str:
    impl = eqn.prim.impl
    if callable(impl):
        fname = b.bind_value(impl, "f")
        kw = ", ".join(f"{k}={b.param_text(v)}" for k, v in eqn.params.items())
        return f"{fname}(xp, {', '.join(operands)}{', ' if kw else ''}{kw})"
    fields = {f for _, f, _, _ in string.Formatter().parse(impl) if f is not None}
    params = {k: b.param_text(v) for k, v in eqn.params.items() if k in fields}
    params["args"] = ", ".join(operands)
    text = impl.format(*operands, **params)
    return text


class NumpyEngine(Engine):
    """Runs generated Python source with ``xp = numpy``."""

    name = "numpy"

    def __init__(self, xp_module=np):
        self.xp = xp_module

    def compile(self, graph: Graph) -> Program:
        fn_name = f"program_{next(_compile_ids)}"
        source, namespace = generate_source(graph, self.xp, fn_name)
        code = compile(source, f"<diffprog {self.name} {fn_name}>", "exec")
        exec(code, namespace)
        return Program(namespace[fn_name], source, self.name, graph)
