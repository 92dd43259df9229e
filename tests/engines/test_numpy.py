"""The numpy engine: generated source, early frees, and safety of generated code."""
from __future__ import annotations

import numpy as np
import pytest

import diffprog as dp
from diffprog.engines.numpy import generate_source

from ..helpers import assert_close

HOSTILE_KEYS = [
    "a'b", 'a"b', "line\nbreak", "__import__('os').system('echo pwned')", "x); import os; (",
    "\\", "{0}", "v0", "_c0", "del", "", " ", "ü∂",
]


def test_hostile_pytree_keys_never_enter_generated_source():
    params = {k: np.full(2, float(i + 1)) for i, k in enumerate(HOSTILE_KEYS)}

    def f(p):
        return sum(np.sum(v * v) for v in p.values())

    g = dp.grad(f)(params)
    for k, v in params.items():
        assert_close(g[k], 2 * v)
    src = dp.differentiable(f).source(params, kind="grad")
    for k in HOSTILE_KEYS:
        if len(k) > 3:
            assert k not in src


def test_hostile_einsum_subscripts_are_rejected_not_executed():
    with pytest.raises(dp.DiffprogError, match="subscripts"):
        dp.grad(lambda x: np.einsum("i);__import__('os'", x))(np.ones(2))


def test_constants_are_bound_names_not_pasted_text():
    c = np.arange(4.0)
    src = dp.differentiable(lambda x: np.sum(x * c)).source(np.ones(4))
    assert "0., 1." not in src and "array(" not in src
    assert "_c0" in src


def test_intermediates_are_deleted_after_last_use():
    f = dp.differentiable(lambda x: np.sum(np.exp(np.sin(x)) * 2.0))
    src = f.source(np.ones(3), kind="grad")
    assert "del " in src


def test_generated_program_runs_standalone():
    f = dp.differentiable(lambda x: np.sum(np.tanh(x) ** 2))
    graph = f.ir(np.ones(3))
    src, namespace = generate_source(graph, np, "prog")
    exec(compile(src, "<t>", "exec"), namespace)
    assert_close(namespace["prog"](np.ones(3))[0], 3 * np.tanh(1.0) ** 2)


def test_engines_available_reports_numpy_ok():
    report = dp.engines.available()
    assert report["numpy"] == "ok"
    for name, status in report.items():
        assert status == "ok" or len(status) > 20, name
