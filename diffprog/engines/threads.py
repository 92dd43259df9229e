"""The worker threads of the numpy engine: blocked kernels (:mod:`diffprog.engines.fusion`)
and their compiled twins (:mod:`diffprog.engines.ckernel`) split their blocks between
threads (NumPy and the kernels release the GIL), sharing one pool.

``DIFFPROG_THREADS``: worker threads; default: the CPUs this process may use.
"""
from __future__ import annotations

import bisect
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def num_threads() -> int:
    try:
        n = int(os.environ.get("DIFFPROG_THREADS", "0"))
    except ValueError:
        n = 0
    if n <= 0:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n)


# (pool, its size): one tuple, replaced whole, so a reader never sees half an update.
# A pool is never shut down while the process runs: another thread may have fetched it and
# be about to submit (shutting it down made that submit fail). When more workers are
# needed the pool is replaced by a bigger one; the old one's threads finish what was
# submitted and exit once no caller holds it. Threads start only when work waits, so a
# pool sized for the largest request costs nothing until used.
_POOL: list = [(None, 0)]
_POOL_LOCK = threading.Lock()


def _forget_pool_in_child() -> None:
    # a forked child has none of the parent's threads: handing work to the inherited pool
    # would wait forever, so the child starts its own
    global _POOL_LOCK
    _POOL[0] = (None, 0)
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def worker_pool(workers: int) -> ThreadPoolExecutor:
    """A pool with at least ``workers`` threads, shared by every caller; callers limit
    their parallelism by how many calls they submit."""
    pool, size = _POOL[0]
    if size >= workers:  # the common case: no lock
        return pool
    with _POOL_LOCK:
        pool, size = _POOL[0]
        if size < workers:
            size = max(workers, num_threads() - 1)
            pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="diffprog")
            _POOL[0] = (pool, size)
        return pool


def _with_errstate(fn, err):
    def run(lo, hi):
        with np.errstate(**err):  # the caller's np.errstate applies in worker threads too
            return fn(lo, hi)
    return run


def run_blocks(chunk, spans) -> list:
    """Run ``chunk(lo, hi)`` (blocks ``lo..hi-1`` of ``spans``, ``[(start, stop), ...]`` in
    order) over all the blocks, split between threads in runs of whole blocks holding
    about as many elements each; the partial results in block order. The calling thread
    takes the first part itself. Blocks are never split (fused sums are per block)."""
    n_blocks = len(spans)
    threads = min(num_threads(), n_blocks)
    if threads <= 1:
        return [chunk(0, n_blocks)]
    starts = [i for i, _ in spans]
    first, size = spans[0][0], spans[-1][1] - spans[0][0]
    cuts = [0] + [bisect.bisect_left(starts, first + size * t // threads)
                  for t in range(1, threads)] + [n_blocks]
    cuts = sorted(set(cuts))
    work = _with_errstate(chunk, np.geterr())
    calls = [functools.partial(chunk, 0, cuts[1])]  # the calling thread keeps its errstate
    calls += [functools.partial(work, lo, hi) for lo, hi in zip(cuts[1:-1], cuts[2:])]
    return run_parallel(calls)


def run_chunks(chunk, size: int, block: int) -> list:
    """Run ``chunk(lo, hi)`` over ``range(size)`` split on multiples of ``block`` between
    threads (:func:`run_blocks` over fixed-size blocks); the partial results in order."""
    spans = [(i, min(i + block, size)) for i in range(0, size, block)]
    if not spans:
        return [chunk(0, size)]
    return run_blocks(lambda lo, hi: chunk(spans[lo][0], spans[hi - 1][1]), spans)


def run_parallel(calls: list) -> list:
    """``[call() for call in calls]``, the first on the calling thread and the rest at the
    same time on the worker pool (block kernels and their compiled twins share it)."""
    if len(calls) <= 1:
        return [call() for call in calls]
    futures = [worker_pool(len(calls) - 1).submit(call) for call in calls[1:]]
    first = calls[0]()
    return [first] + [f.result() for f in futures]


def run_shared(work, copies: int) -> list:
    """Results of ``work()`` run on the calling thread and on up to ``copies - 1`` pool
    threads, for work that takes its pieces from a shared counter (compiled kernels): any
    copy may do all of it. Copies a worker has not started by the time the calling
    thread's copy returns are cancelled, not waited for. Why: on small kernels (W2's
    65,536 elements, ~30 us) a worker thread's wake-up took longer than the work, and the
    caller sat waiting for a copy that would find nothing left to do."""
    if copies <= 1:
        return [work()]
    futures = [worker_pool(copies - 1).submit(work) for _ in range(copies - 1)]
    results = [work()]
    for f in futures:
        if not f.cancel():
            results.append(f.result())
    return results

