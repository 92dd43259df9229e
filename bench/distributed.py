"""Distributed benchmarks (diffprog.distributed on a Dask LocalCluster on this machine).

1. Data-parallel W2 (bench/workloads.py: tanh MLP 64 -> 256 -> 1, batch 256 per shard)
   over 64 shards on 2 workers: the mean gradient is checked against the single-process
   full-data gradient (to 1e-12), and the time of one step is compared with the same
   work in one process (one full-batch call, and the 64 shard calls in a loop).
2. An ensemble of 2,000 RK4 solves (Lotka-Volterra, 50 intervals x 4 steps) with
   ``dpd.map(chunk=100)`` on 1 and on 2 workers (1 thread each): the speedup, for each
   way a worker runs its chunk (``how="vmap"``: one batched program per chunk;
   ``how="loop"``: one compiled call per member), with the machine's own parallel
   capacity measured alongside.

    python bench/distributed.py              # full sizes (about a minute)
    python bench/distributed.py --quick      # small sizes, a smoke test
    python bench/distributed.py --json out.json

Every number is one run on whatever else the machine is doing; workers are warmed up
(diffprog imported, programs compiled) before timing. Without Dask's distributed
scheduler it prints how to install it and exits with status 3 (``NO_DASK_EXIT``).
Not part of ``python -m bench`` (that one is the single-process CPU table).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Run as a script, bench/ is sys.path[0] and this file would be imported as Dask's
# `distributed`: take bench/ off the path, put the repository on it (the workers started
# from here import bench.workloads through it too).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import diffprog as dp  # noqa: E402
from diffprog.sciml import odeint  # noqa: E402

from bench import workloads as W  # noqa: E402

NO_DASK_EXIT = 3


# ============================================================ data-parallel W2

def w2_shard_loss(params, shard):
    """W2 as a loss of (params, shard): the model of bench/workloads.py, unchanged."""
    return W.w2_fn(params[0], params[1], shard[0], shard[1])


def w2_shards(n_shards: int, size: str):
    """W2's weights and ``n_shards`` shards, each a W2 batch of its own random data."""
    w = W.make_w2(size)
    w1, w2, x, y = w.args
    rng = np.random.default_rng(1)
    shards = [(rng.standard_normal(x.shape), rng.standard_normal(y.shape)) for _ in range(n_shards)]
    return (w1, w2), shards


def _median_seconds(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def gradient_benchmark(client, n_shards: int = 64, size: str = "full", repeats: int = 20) -> dict:
    """One data-parallel W2 step against the same gradient in this process."""
    import diffprog.distributed as dpd
    params, shards = w2_shards(n_shards, size)
    handle = dpd.shard(shards, client)  # sent once, as in training
    step = dpd.value_and_grad(w2_shard_loss, client=client, reduce="mean")
    value, grads = step(params, handle)  # warm: every worker compiles here

    x = np.concatenate([s[0] for s in shards])
    y = np.concatenate([s[1] for s in shards])
    full = dp.value_and_grad(W.w2_fn, argnums=(0, 1))
    ref_value, ref_grads = full(params[0], params[1], x, y)
    max_abs_diff = max(float(np.max(np.abs(g - r))) for g, r in zip(grads, ref_grads))
    scale = max(float(np.max(np.abs(r))) for r in ref_grads)

    per_shard = dp.value_and_grad(w2_shard_loss)
    loop_s = _median_seconds(lambda: [per_shard(params, s) for s in shards], repeats)
    full_s = _median_seconds(lambda: full(params[0], params[1], x, y), repeats)
    step_s = _median_seconds(lambda: step(params, handle), repeats)
    handle.release()
    return {"shards": n_shards, "workers": len(client.nthreads()),
            "value_diff": abs(float(value - ref_value)), "max_abs_diff": max_abs_diff,
            "grad_scale": scale, "step_s": step_s, "one_process_full_batch_s": full_s,
            "one_process_shard_loop_s": loop_s,
            "fixed_cost_s": fixed_cost_per_step(client, n_shards, repeats),
            "tasks_per_step": 2 * min(n_shards, 2 * sum(client.nthreads().values())) - 1}


def fixed_cost_per_step(client, n_shards: int, repeats: int) -> float:
    """What a step costs beyond its arithmetic: the same step over the same number of
    shards of the tiny W2 (8 rows, 4 -> 6 -> 1), whose gradients take microseconds.
    Sending the parameters, scheduling the tree's tasks, moving partial sums and
    gathering the result remain."""
    import diffprog.distributed as dpd
    params, shards = w2_shards(n_shards, "tiny")
    handle = dpd.shard(shards, client)
    step = dpd.value_and_grad(w2_shard_loss, client=client, reduce="mean")
    step(params, handle)
    seconds = _median_seconds(lambda: step(params, handle), repeats)
    handle.release()
    return seconds


# ================================================================ ensemble

Y0 = np.array([1.0, 1.0])
TS = np.linspace(0.0, 10.0, 51)


def lotka_volterra(y, t, p):
    return np.stack([p[0] * y[0] - p[1] * y[0] * y[1], p[2] * y[0] * y[1] - p[3] * y[1]])


def solve(p):
    """One ensemble member: 50 intervals x 4 RK4 steps."""
    return odeint(lotka_volterra, Y0, TS, p, method="rk4", steps_per_interval=4)


def ensemble_parameters(n: int) -> np.ndarray:
    """The members' (alpha, beta, delta, gamma), uniform in [0.5, 1.5]."""
    return np.random.default_rng(2).uniform(0.5, 1.5, (n, 4))


def warm_up_every_worker(client, P, chunk: int, how: str) -> None:
    """Have every worker compile ``solve`` for each chunk size the timed run will use, as
    dpd.map's own tasks would (same function key): a plain warm-up map may leave a
    worker idle, which would then compile inside the timed run."""
    import diffprog.distributed as dpd
    token = dpd._function_token(solve, dpd.HOW[how], None)
    sizes = {chunk, len(P) % chunk or chunk}
    client.gather([client.submit(dpd._map_chunk_task, token, solve, how, None, 0, P[:size],
                                 workers=[w], pure=False)
                   for w in client.nthreads() for size in sizes])


def ensemble_seconds(client, n_members: int = 2000, chunk: int = 100, how: str = "vmap") -> float:
    """Seconds of one ``dpd.map`` of ``n_members`` solves (workers warmed up first)."""
    import diffprog.distributed as dpd
    P = ensemble_parameters(n_members)
    warm_up_every_worker(client, P, chunk, how)
    start = time.perf_counter()
    out = dpd.map(solve, P, client=client, chunk=chunk, how=how)
    seconds = time.perf_counter() - start
    assert out.shape == (n_members, len(TS), 2)
    return seconds


def _busy(n: int = 3_000_000) -> float:
    """Pure-Python CPU work (no NumPy, no I/O): seconds it took."""
    start, total = time.perf_counter(), 0
    for i in range(n):
        total += i * i
    return time.perf_counter() - start


def parallel_capacity(client) -> float:
    """How much faster two CPU-bound tasks finish on two workers at once than one after the
    other, right now: 2.0 on two idle cores, less when others use the machine. The
    ensemble's speedup can only be read against it."""
    workers = sorted(client.nthreads())[:2]
    client.submit(_busy, 100_000, pure=False).result()  # warm
    start = time.perf_counter()
    client.submit(_busy, pure=False, workers=workers[:1]).result()
    one = time.perf_counter() - start
    start = time.perf_counter()
    client.gather([client.submit(_busy, pure=False, workers=[w]) for w in workers])
    return 2 * one / (time.perf_counter() - start)


def local_cluster(n_workers: int):
    import distributed
    cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                       processes=True, host="127.0.0.1",
                                       dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    client.wait_for_workers(n_workers)
    return cluster, client


def scaling(n_members: int, chunk: int) -> dict:
    """The ensemble on 1 worker, then on 2 (each a fresh LocalCluster, 1 thread each), for
    how="vmap" and how="loop"."""
    seconds, capacity = {}, None
    for n in (1, 2):
        cluster, client = local_cluster(n)
        try:
            for how in ("vmap", "loop"):
                seconds[how, n] = ensemble_seconds(client, n_members, chunk, how)
            if n == 2:
                capacity = parallel_capacity(client)
        finally:
            client.close()
            cluster.close()
    P = ensemble_parameters(min(n_members, 200))
    loop, batched = dp.differentiable(solve), dp.vmap(solve)
    loop(P[0]), batched(P[:chunk])
    start = time.perf_counter()
    for p in P:
        loop(p)
    loop_per_solve = (time.perf_counter() - start) / len(P)
    start = time.perf_counter()
    batched(P[:chunk])
    vmap_per_solve = (time.perf_counter() - start) / min(chunk, len(P))
    return {"members": n_members, "chunk": chunk, "machine_parallel_capacity": capacity,
            "modes": {how: {"one_worker_s": seconds[how, 1], "two_workers_s": seconds[how, 2],
                            "speedup": seconds[how, 1] / seconds[how, 2]}
                      for how in ("vmap", "loop")},
            "one_process_s_per_solve": {"vmap": vmap_per_solve, "loop": loop_per_solve}}


# ===================================================================== main

def report(grad: dict, ens: dict, out=sys.stdout) -> None:
    print(f"data-parallel W2, {grad['shards']} shards on {grad['workers']} workers "
          f"({grad['tasks_per_step']} tasks per step):", file=out)
    print(f"  max |grad - single-process grad| = {grad['max_abs_diff']:.2e} "
          f"(gradient scale {grad['grad_scale']:.2e}); |value diff| = {grad['value_diff']:.2e}",
          file=out)
    print(f"  one step {1e3 * grad['step_s']:.1f} ms; in one process: full batch "
          f"{1e3 * grad['one_process_full_batch_s']:.1f} ms, {grad['shards']} shard calls "
          f"{1e3 * grad['one_process_shard_loop_s']:.1f} ms; fixed cost per step (the same "
          f"step on tiny shards) {1e3 * grad['fixed_cost_s']:.1f} ms", file=out)
    print(f"ensemble of {ens['members']} RK4 solves, chunk {ens['chunk']} "
          f"({os.cpu_count()} CPUs here; they gave two plain CPU-bound tasks "
          f"{ens['machine_parallel_capacity']:.2f}x at the time, 2.00 when idle):", file=out)
    for how, m in ens["modes"].items():
        print(f"  how={how!r}: 1 worker {m['one_worker_s']:.2f} s, 2 workers "
              f"{m['two_workers_s']:.2f} s, speedup {m['speedup']:.2f}x (one process: "
              f"{1e3 * ens['one_process_s_per_solve'][how]:.3f} ms per solve)", file=out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    try:
        import diffprog.distributed  # noqa: F401
    except dp.EngineUnavailable as e:
        print(f"skipped: {e}", file=sys.stderr)
        return NO_DASK_EXIT
    n_shards, size, repeats = (8, "tiny", 3) if a.quick else (64, "full", 20)
    n_members, chunk = (40, 10) if a.quick else (2000, 100)
    cluster, client = local_cluster(2)
    try:
        grad = gradient_benchmark(client, n_shards, size, repeats)
    finally:
        client.close()
        cluster.close()
    ens = scaling(n_members, chunk)
    report(grad, ens)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"gradient": grad, "ensemble": ens}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
