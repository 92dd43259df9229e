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
    # made inside the function: a constant (a closed-over array is an input, read per call)
    src = dp.differentiable(lambda x: np.sum(x * np.arange(4.0))).source(np.ones(4))
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


# ---------------------------------------------------- NumPy-only cheaper spellings

def _both_spellings(fn, *args):
    """(fast, portable) programs for the value+gradient graph of ``fn``."""
    from diffprog.transforms import vjp_graph
    graph = vjp_graph(dp.differentiable(fn).ir(*args), [0], seed="ones")
    progs = []
    for host_fast in (True, False):
        src, ns = generate_source(graph, np, "prog", host_fast=host_fast)
        exec(compile(src, "<t>", "exec"), ns)
        progs.append((ns["prog"], src))
    return progs


def test_host_fast_spellings_compute_what_the_templates_compute(rng):
    x = rng.standard_normal((3, 4))

    def f(x):
        y = np.reshape(x, (4, 3)).T
        return np.sum(np.max(y, axis=0) * np.min(y, axis=1, keepdims=True)) + x[1, 2] * x[0, 0]
    (fast, fast_src), (portable, portable_src) = _both_spellings(f, x)
    assert "_add_reduce" in fast_src and "_reshape(" in fast_src and "_max_reduce" in fast_src
    assert "xp.sum(" in portable_src
    for a, b in zip(fast(x), portable(x)):
        assert type(a) is type(b)
        np.testing.assert_array_equal(a, b)


def test_host_fast_spellings_leave_python_scalars_to_the_templates():
    # a Python float has no .reshape: the portable spelling is used for it
    assert_close(dp.grad(lambda s: np.sum(np.reshape(s, (1, 1)) * 3.0))(2.0), 3.0)


def test_host_fast_spellings_accept_python_floats_where_the_graph_says_float64():
    # a pullback's cotangent may be a Python float although the graph input is float64
    out, pullback = dp.vjp(lambda x: np.reshape(np.sum(x * x), (1,)).T, np.array([1.0, 2.0]))
    assert_close(pullback(np.array([1.0]))[0], [2.0, 4.0])
    out, pullback = dp.vjp(lambda x: np.sum(x * x), np.array([1.0, 2.0]))
    assert_close(pullback(1.0)[0], [2.0, 4.0])


# ---------------------------------------------------------------- buffers reused in place

def _host_program(fn, *args, kind="value"):
    from diffprog.transforms import vjp_graph
    graph = dp.differentiable(fn).ir(*args)
    if kind == "grad":
        graph = vjp_graph(graph, list(range(len(args))), seed="ones")
    src, ns = generate_source(graph, np, "prog", host_fast=True)
    exec(compile(src, "<test>", "exec"), ns)
    return ns["prog"], src


def test_big_elementwise_results_reuse_a_dying_fresh_input(rng):
    x, y = rng.standard_normal((200, 100)), rng.standard_normal((200, 100))
    x0, y0 = x.copy(), y.copy()

    def f(x, y):
        h = np.tanh(x * y)         # x * y dies in tanh: written in place
        return np.sum(np.exp(h) * h)

    prog, src = _host_program(f, x, y)
    assert "xp.tanh(v0, out=v0)" in src
    assert "out=a" not in src  # never into an argument
    (value,) = prog(x, y)
    assert value == f(x, y)  # the same bits
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


def test_no_reuse_of_viewed_returned_small_or_complex_values(rng):
    x = rng.standard_normal((200, 100))

    def viewed(x):
        a = np.sin(x)
        b = a.T                    # a view of a is alive: a is never overwritten
        return np.sum(np.cos(a) + b.T)

    def returned(x):
        a = np.sin(x)
        return a, np.cos(a)        # a is a result

    for fn in (viewed, returned):
        prog, src = _host_program(fn, x)
        assert "out=v0" not in src, src  # sin(x): viewed, or returned
        for got, want in zip(prog(x), fn(x) if isinstance(fn(x), tuple) else (fn(x),)):
            np.testing.assert_array_equal(got, want)
    small = rng.standard_normal(100)
    assert "out=" not in _host_program(lambda x: np.cos(np.sin(x)), small)[1]
    z = x + 1j * x
    assert "out=" not in _host_program(lambda z: np.exp(np.sin(z)), z)[1]


def test_gradients_with_reuse_match_the_program_without(rng):
    x, w = rng.standard_normal((128, 32)), rng.standard_normal((32, 160))

    def loss(x, w):
        h = np.tanh(x @ w)
        return np.sum(np.log1p(h * h) * np.cos(h))

    prog, src = _host_program(loss, x, w, kind="grad")
    assert "out=" in src
    from diffprog.transforms import vjp_graph
    graph = vjp_graph(dp.differentiable(loss).ir(x, w), [0, 1], seed="ones")
    plain_src, ns = generate_source(graph, np, "plain")
    assert "out=" not in plain_src
    exec(compile(plain_src, "<test>", "exec"), ns)
    for got, want in zip(prog(x, w), ns["plain"](x, w)):
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes()


def test_reuse_keeps_numpys_layout_when_operands_disagree(rng):
    """``a + b`` of an F-ordered and a C-ordered array is C-ordered in NumPy: writing it
    into the F-ordered one would change the layout, and a later sum along an axis."""
    x = np.asfortranarray(rng.standard_normal((300, 200)))
    y = rng.standard_normal((300, 200))

    def f(x, y):
        a = np.sin(x)              # F-ordered, like x
        return np.sum(a + np.cos(y), axis=1)

    prog, src = _host_program(f, x, y)
    assert "_into(" in src
    (got,) = prog(x, y)
    assert got.tobytes() == f(x, y).tobytes()


def test_copies_of_contiguous_values_are_skipped_unless_they_escape(rng):
    """A copy NumPy makes changes no bit when the array is already laid out as the copy
    would be: skipped there (no page faults), kept for strided inputs and whenever the
    copy (or a view of it) is a result, which must not share the caller's memory."""
    x = rng.standard_normal(50000)

    def f(x):
        return np.sum(np.exp(x.copy()))

    src = dp.differentiable(f).source(x)
    assert "_as_laid_out(a0, 'K')" in src
    assert dp.differentiable(f)(x) == f(x)
    r = x[::-1]
    assert dp.differentiable(f)(r) == f(r)  # reversed: really copied, NumPy's bits

    def escapes(x):
        return x.copy().T, x.copy()

    out = dp.differentiable(escapes)(x)
    for o in out:
        assert not np.shares_memory(o, x)
    assert "_as_laid_out" not in dp.differentiable(escapes).source(x)
