"""The numpy engine's shared worker pool under threads (diffprog/engines/threads.py): callers asking
for different numbers of workers at once never get a pool that was shut down under them
(it raised ``RuntimeError: cannot schedule new futures after shutdown``), and results
stay those of one thread."""
from __future__ import annotations

import sys

import numpy as np

import diffprog as dp
from diffprog.engines import fusion, threads

from .threads import in_threads


def test_callers_asking_for_different_pool_sizes_at_once(monkeypatch):
    """DIFFPROG_THREADS=32 and arrays of different sizes: each call wants as many workers
    as its array has blocks, so the sizes asked for change from call to call."""
    monkeypatch.setenv("DIFFPROG_THREADS", "32")

    def chunk(lo, hi):
        return (hi - lo,)

    def caller(k):
        for i in range(150):
            size = (k + 1) * 7 * (i % 5 + 1)
            assert sum(p[0] for p in threads.run_chunks(chunk, size, 7)) == size
    in_threads(8, caller, barrier=True)


def test_a_fused_program_from_8_threads_on_arrays_of_different_sizes(monkeypatch):
    monkeypatch.setenv("DIFFPROG_THREADS", "32")
    monkeypatch.setenv("DIFFPROG_FUSE_MIN", "1000")
    monkeypatch.setenv("DIFFPROG_CKERNELS", "0")  # the NumPy block kernels: no compiles

    def f(x):
        return np.sum(np.sin(x) * x + np.sqrt(np.abs(x) + 1.0))

    g = dp.value_and_grad(f)
    sizes = [fusion.BLOCK * (k + 3) // 2 + k for k in range(8)]  # 2 to 6 blocks
    xs = [np.random.default_rng(k).standard_normal(n) for k, n in enumerate(sizes)]
    assert "_block" in dp.differentiable(f).source(xs[0], kind="grad")
    monkeypatch.setenv("DIFFPROG_THREADS", "1")
    expect = [g(x) for x in xs]  # one thread; traced once per size
    monkeypatch.setenv("DIFFPROG_THREADS", "32")

    def caller(k):
        for _ in range(15):
            got = g(xs[k])
            np.testing.assert_array_equal(got[1], expect[k][1])
            np.testing.assert_allclose(got[0], expect[k][0], rtol=1e-12)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads interleave often: the race shows in a few calls
    try:
        in_threads(8, caller, barrier=True)
    finally:
        sys.setswitchinterval(switch)


def test_a_pool_handed_out_keeps_working_when_a_bigger_one_is_needed():
    small = threads.worker_pool(1)
    bigger = threads.worker_pool(64)
    assert small.submit(lambda: 42).result(timeout=10) == 42
    assert bigger.submit(lambda: 43).result(timeout=10) == 43
    assert threads.worker_pool(3) is bigger  # smaller requests share it: no new pool


def test_one_pool_serves_every_smaller_request(monkeypatch):
    monkeypatch.setenv("DIFFPROG_THREADS", "4")
    pool = threads.worker_pool(3)
    assert all(threads.worker_pool(n) is pool for n in (1, 2, 3))
