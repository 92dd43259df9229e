"""Partial evaluation: dp.vjp runs the forward pass once, pullbacks only the rest."""
from __future__ import annotations

import numpy as np

import diffprog as dp
from diffprog.transforms import vjp_graph
from diffprog.transforms.partial_eval import split_known

from ..helpers import assert_close


def test_backward_part_does_not_recompute_the_forward_pass():
    graph = dp.differentiable(lambda x: np.exp(np.sin(x))).ir(np.ones(3))
    full = vjp_graph(graph, [0], seed="input")
    known, rest = split_known(full, 1, 1)
    rest_prims = {e.prim.name for e in rest.eqns}
    assert "sin" not in rest_prims and "exp" not in rest_prims
    assert rest_prims <= {"mul"}
    known.validate()
    rest.validate()


def test_pullback_called_many_times_counts_one_trace_and_matches():
    calls = []

    def f(x):
        calls.append(1)
        return np.tanh(x) * 2.0
    x = np.linspace(-1, 1, 4)
    out, pullback = dp.vjp(f, x)
    for i in range(4):
        e = np.zeros(4)
        e[i] = 1.0
        assert_close(pullback(e)[0], e * 2 * (1 - np.tanh(x) ** 2))
    assert len(calls) == 1
