"""Partial evaluation: split a graph into the part computable from known inputs and
the rest, so ``dp.vjp`` runs the forward pass once and each pullback only the
backward pass (``dp.jacobian(mode="rev")`` calls the pullback once per output)."""
from __future__ import annotations

from ..ir import Eqn, Graph, Var


def split_known(graph: Graph, n_known: int, n_known_outputs: int) -> tuple[Graph, Graph]:
    """Return ``(known, rest)``.

    ``known(*first n_known inputs) -> (*first n_known_outputs outputs, *residuals)``;
    ``rest(*residuals, *remaining inputs) -> (*remaining outputs)``.
    """
    unknown = {id(v) for v in graph.invars[n_known:]}
    known_eqns, rest_eqns = [], []
    for eqn in graph.eqns:
        if any(isinstance(a, Var) and id(a) in unknown for a in eqn.inputs):
            rest_eqns.append(eqn)
            unknown.update(id(o) for o in eqn.outputs)
        else:
            known_eqns.append(eqn)
    rest_outs = graph.outvars[n_known_outputs:]
    residuals, seen = [], set()
    for atom in [a for e in rest_eqns for a in e.inputs] + list(rest_outs):
        if isinstance(atom, Var) and id(atom) not in unknown and id(atom) not in seen:
            seen.add(id(atom))
            residuals.append(atom)
    known = Graph(graph.invars[:n_known], known_eqns, list(graph.outvars[:n_known_outputs]) + residuals)
    fresh = {id(r): Var(r.aval) for r in residuals}
    rest = Graph([fresh[id(r)] for r in residuals] + graph.invars[n_known:],
                 [_renamed(e, fresh) for e in rest_eqns],
                 [fresh.get(id(o), o) if isinstance(o, Var) else o for o in rest_outs])
    return known, rest


def _renamed(eqn, mapping):
    inputs = [mapping.get(id(a), a) if isinstance(a, Var) else a for a in eqn.inputs]
    return Eqn(eqn.prim, inputs, eqn.outputs, eqn.params)


__all__ = ["split_known"]
