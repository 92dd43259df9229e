"""Tracing and the program caches under threads: no shared trace state, one trace per
signature however many threads make the first call, no lost or stale programs."""
import threading
import time

import numpy as np

import diffprog as dp
from diffprog.api import cache_for

from .threads import in_threads


def test_two_threads_tracing_at_once_keep_their_own_traces():
    """Forced interleaving: B opens a trace, A opens its outer trace, B closes its trace,
    then A opens a nested derivative. With one global trace stack B's close removed A's
    trace from the stack, A's inner trace got A's outer level, equations were recorded
    into the wrong trace and A's gradient came back [0, 0, 0] instead of [2, 4, 6]."""
    b_tracing, a_tracing, b_done = threading.Event(), threading.Event(), threading.Event()

    def outer(x):  # a derivative inside a traced function: nested traces
        a_tracing.set()
        assert b_done.wait(10)
        return np.sum(dp.grad(lambda v: np.sum(x * v))(x) * x)  # closes over x

    def b_function(y):
        b_tracing.set()
        assert a_tracing.wait(10)
        return np.sum(y ** 3)

    def thread_a(_):
        assert b_tracing.wait(10)
        return dp.grad(outer)(np.array([1.0, 2.0, 3.0]))

    def thread_b(_):
        try:
            return dp.grad(b_function)(np.array([1.0, 2.0, 3.0]))
        finally:
            b_done.set()

    results = in_threads(2, lambda i: (thread_a, thread_b)[i](i))
    np.testing.assert_allclose(results[0], [2.0, 4.0, 6.0])
    np.testing.assert_allclose(results[1], [3.0, 12.0, 27.0])


def test_concurrent_first_calls_of_one_signature_trace_once():
    traces = []
    start = threading.Barrier(8)

    @dp.differentiable
    def f(x):
        traces.append(x.shape)
        time.sleep(0.02)  # a slow trace: the other threads arrive while it runs
        return np.sum(np.sin(x) * x)

    def call(i):
        x = np.arange(1.0, 3.0 + i % 2)  # two signatures
        start.wait(10)
        return [dp.value_and_grad(f)(x) for _ in range(20)]

    results = in_threads(8, call)
    assert sorted(traces) == [(2,), (3,)]
    for i, res in enumerate(results):
        x = np.arange(1.0, 3.0 + i % 2)
        for v, g in res:
            np.testing.assert_allclose(g, np.sin(x) + x * np.cos(x))


def test_many_threads_many_shapes_stay_correct_and_trace_once_per_shape():
    traces = []

    @dp.differentiable
    def f(x):
        traces.append(x.shape)
        time.sleep(0.005)
        return np.sum(np.tanh(x) ** 2)

    def call(i):
        out = []
        for k in range(30):
            x = np.linspace(-1, 1, 3 + (i + k) % 16)
            out.append((x, dp.grad(f)(x)))
        return out

    for res in in_threads(8, call):
        for x, g in res:
            np.testing.assert_allclose(g, 2 * np.tanh(x) * (1 - np.tanh(x) ** 2))
    assert len(traces) == 16


def test_guard_variants_from_many_threads_stay_correct():
    """Python control flow makes one variant per branch; threads alternating branches
    reorder the variants concurrently and must each get their own branch's answer."""
    @dp.differentiable
    def f(x):
        if np.sum(x) > 0:
            return np.sum(x ** 2)
        return np.sum(-x)

    def call(i):
        sign = 1.0 if i % 2 else -1.0
        return [float(f(sign * np.arange(1.0, 4.0))) for _ in range(50)]

    for i, res in enumerate(in_threads(6, call)):
        assert set(res) == ({14.0} if i % 2 else {6.0})
    assert sum(len(v) for v in cache_for(f.fn).variants.values()) == 2
