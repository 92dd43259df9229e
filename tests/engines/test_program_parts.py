"""Long programs are written in parts (numpy engine): functions of a few hundred
equations each, repeated parts compiled once; the values are those of the same program
written in one piece, bit for bit."""
from __future__ import annotations

import re

import numpy as np
import pytest

import diffprog as dp
from diffprog.engines import numpy as numpy_engine
from diffprog.engines.numpy import NumpyEngine, generate_source

from ..helpers import sin_chain


def _rk4(steps):
    def f(p, y):
        def rhs(y):
            return np.stack([p[0] * y[0] - p[1] * y[0] * y[1], p[2] * y[0] * y[1] - p[3] * y[1]])
        loss = 0.0
        for _ in range(steps):
            k1 = rhs(y)
            k2 = rhs(y + 0.005 * k1)
            k3 = rhs(y + 0.005 * k2)
            k4 = rhs(y + 0.01 * k3)
            y = y + (0.01 / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            loss = loss + np.sum(y * y)
        return loss
    return f


def _mixed(x, w):
    h = np.tanh(x @ w)
    for k in range(6):
        h = np.where(h > 0.1 * k, h * 1.5, np.exp(-h)) + np.roll(h, 1, axis=1)
    return np.mean(h ** 2) + np.max(np.abs(h)) + np.sum(np.cumsum(h, axis=0)[2])


def _vjp_graph(fn, *args, argnums=0):
    from diffprog.api import cache_for
    dp.value_and_grad(fn, argnums=argnums)(*args)
    programs = [p for vs in cache_for(fn).variants.values() for v in vs for p in v.programs]
    return programs[0].graph


def _run(graph, args, **settings):
    """The graph compiled by the numpy engine with these part settings, run on args."""
    saved = {k: getattr(numpy_engine, k) for k in settings}
    try:
        for k, v in settings.items():
            setattr(numpy_engine, k, v)
        program = NumpyEngine().compile(graph)
    finally:
        for k, v in saved.items():
            setattr(numpy_engine, k, v)
    return program, program(*args)


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y, equal_nan=True), (x, y)


def test_a_long_chain_is_written_in_repeated_parts():
    x = np.linspace(0.1, 1.0, 4)
    graph = _vjp_graph(sin_chain(600), x)
    assert len(graph.eqns) >= numpy_engine.PARTS_FROM
    parts, got = _run(graph, [x])
    whole, want = _run(graph, [x], PARTS_FROM=10**9)
    _same(got, want)
    assert "def _part" not in whole.source
    defined = re.findall(r"^def (_part\d+)\(", parts.source, re.M)
    calls = re.findall(r"= (_part\d+)\(", parts.source)
    assert defined and len(calls) > 4 * len(defined)  # repeated parts: written (compiled) once
    assert len(parts.source) < len(whole.source) / 2
    compile(parts.source, "<parts>", "exec")  # the whole text runs standalone too


def test_an_unrolled_loop_repeats_its_parts():
    p, y0 = np.array([1.5, 1.0, 1.0, 3.0]), np.array([1.0, 1.0])
    graph = _vjp_graph(_rk4(60), p, y0)
    parts, got = _run(graph, [p, y0])
    _, want = _run(graph, [p, y0], PARTS_FROM=10**9)
    _same(got, want)
    defined = re.findall(r"^def (_part\d+)\(", parts.source, re.M)
    calls = re.findall(r"= (_part\d+)\(", parts.source)
    assert len(calls) > 3 * len(defined)


@pytest.mark.parametrize("fuse_min", [None, 16])
@pytest.mark.parametrize("case", ["chain", "rk4", "mixed"])
def test_tiny_parts_give_the_same_values(case, fuse_min, monkeypatch):
    """Every program split at (almost) every equation: parameters, exports, deletions and
    fused block kernels inside parts all line up."""
    if fuse_min is not None:  # block kernels on small arrays (read when compiling)
        monkeypatch.setenv("DIFFPROG_FUSE_MIN", str(fuse_min))
    rng = np.random.default_rng(0)
    if case == "chain":
        fn, args, argnums = sin_chain(5), [np.linspace(0.1, 1.0, 40)], 0
    elif case == "rk4":
        fn, args, argnums = _rk4(3), [np.array([1.5, 1.0, 1.0, 3.0]), np.array([1.0, 1.0])], 0
    else:
        fn, args, argnums = _mixed, [rng.standard_normal((5, 4)), rng.standard_normal((4, 6))], (0, 1)
    graph = _vjp_graph(fn, *args, argnums=argnums)
    parts, got = _run(graph, args, PARTS_FROM=1, PART_MIN=1, PART_MAX=3, PART_SPACING=2)
    _, want = _run(graph, args, PARTS_FROM=10**9)
    _same(got, want)
    assert "def _part" in parts.source


def test_generate_source_of_a_long_graph_runs_standalone():
    x = np.linspace(0.1, 1.0, 4)
    graph = _vjp_graph(sin_chain(400), x)
    src, namespace = generate_source(graph, np, "prog")
    assert "def _part" in src
    exec(compile(src, "<t>", "exec"), namespace)
    _same(namespace["prog"](x), NumpyEngine().compile(graph)(x))


def _irregular(x):
    """The same equations every step, but some steps' values are read again at the end:
    parts alike in their equations differ in what they hand back."""
    saved = []
    for i in range(700):
        y = np.sin(x) * 1.01
        x = y + x * 0.5
        if i % 7 == 0 or i % 11 == 3:
            saved.append(y)
    return np.sum(x) + sum(np.sum(s * s) for s in saved)


@pytest.mark.parametrize("case", ["chain", "rk4", "varying", "irregular"])
def test_a_part_seen_before_is_the_text_it_would_be_written_as(case, monkeypatch):
    """A part whose fingerprint was seen is not written again: checked here by writing it
    anyway (CHECK_REUSED_PARTS) and comparing with the known text."""
    if case == "irregular":
        fn, args = _irregular, [np.linspace(0.1, 1.0, 4)]
    elif case == "chain":
        fn, args = sin_chain(400), [np.linspace(0.1, 1.0, 4)]
    elif case == "rk4":
        fn, args = _rk4(40), [np.array([1.5, 1.0, 1.0, 3.0]), np.array([1.0, 1.0])]
    else:
        def fn(x):
            for i in range(1500):
                x = np.sin(x) * (1.0 + 1e-4 * i)
            return np.sum(x)
        args = [np.linspace(0.1, 1.0, 4)]
    graph = _vjp_graph(fn, *args)
    monkeypatch.setattr(numpy_engine, "CHECK_REUSED_PARTS", True)
    checked, got = _run(graph, args)
    monkeypatch.setattr(numpy_engine, "CHECK_REUSED_PARTS", False)
    reused, again = _run(graph, args)
    _, want = _run(graph, args, PARTS_FROM=10**9)
    _same(got, want)
    _same(again, want)
    assert re.sub(r"program_\d+", "", reused.source) == re.sub(r"program_\d+", "", checked.source)


@pytest.mark.parametrize("size, fuse_min", [(300_000, None), (5, 4)])
def test_a_parts_scalar_passed_into_a_fused_block_keeps_its_value(size, fuse_min, monkeypatch):
    # a part's values were named t0, t1..., as a fused block kernel names its own: a part's
    # scalar t0 given to a kernel that assigns t0 was read as the kernel's array (wrong
    # values), or before the kernel assigned it (UnboundLocalError)
    if fuse_min is not None:
        monkeypatch.setenv("DIFFPROG_FUSE_MIN", str(fuse_min))
    x = np.linspace(-1.0, 1.0, size)
    c = np.linspace(0.5, 1.5, 5)

    def f(x):
        s = c[0]
        x = np.tanh(np.sin(x) * 1.1 + 0.2) * s + x * 0.5
        for _ in range(600):
            x = x * 0.999 + 0.001
        return x

    np.testing.assert_array_equal(dp.differentiable(f)(x), f(x))
    g = dp.grad(lambda x: np.sum(f(x)))(x[:7] if fuse_min is None else x)
    assert np.all(np.isfinite(g))
