"""GPU benchmarks: diffprog's cupy engine against hand-written CuPy.

W2  value and gradient of a 2-layer tanh MLP's mean squared error (batch 8192).
W4  value and gradient of sum(exp(-x**2) * cos(3x)) over 1e8 elements.

Each workload is first checked for agreement with the hand-written CuPy code, then
timed with ``cupyx.profiler.benchmark`` (CUDA events around every call, so GPU time is
measured, not just launch time). The first diffprog call (trace + compile + kernel
compilation) is reported separately.

    python bench/gpu.py                 # full sizes, float32
    python bench/gpu.py --quick         # small sizes, a smoke test
    python bench/gpu.py --dtype float64 --json results.json

Without a usable GPU it prints why and exits with status 3 (``NO_GPU_EXIT``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import diffprog as dp  # noqa: E402

NO_GPU_EXIT = 3


# ================================================================ workloads (any xp)

def mlp_loss(params, x, y):
    """W2: the model as a user writes it, in plain NumPy."""
    h = np.tanh(x @ params["w1"] + params["b1"])
    return np.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def mlp_value_and_grad_by_hand(xp, params, x, y):
    """W2 value and gradient, derived and written by hand (the baseline)."""
    h = xp.tanh(x @ params["w1"] + params["b1"])
    r = h @ params["w2"] + params["b2"] - y
    value = xp.mean(r * r)
    d_out = r * (2.0 / r.size)
    d_pre = (d_out @ params["w2"].T) * (1.0 - h * h)
    grads = {"w1": x.T @ d_pre, "b1": d_pre.sum(axis=0),
             "w2": h.T @ d_out, "b2": d_out.sum(axis=0)}
    return value, grads


def bump(x):
    """W4 as a user writes it."""
    return np.sum(np.exp(-x ** 2) * np.cos(3.0 * x))


def bump_value_and_grad_by_hand(xp, x):
    """W4 value and gradient with one library call per operation."""
    e = xp.exp(-x * x)
    c = xp.cos(3.0 * x)
    value = xp.sum(e * c)
    grad = e * (-2.0 * x * c - 3.0 * xp.sin(3.0 * x))
    return value, grad


def make_fused_bump(cupy):
    """W4 hand-fused: one elementwise kernel for the gradient, one fused reduction."""
    @cupy.fuse(kernel_name="bump_grad_by_hand")
    def grad_kernel(x):
        e = cupy.exp(-x * x)
        return e * (-2.0 * x * cupy.cos(3.0 * x) - 3.0 * cupy.sin(3.0 * x))

    @cupy.fuse(kernel_name="bump_value_by_hand")
    def value_kernel(x):
        return cupy.sum(cupy.exp(-x * x) * cupy.cos(3.0 * x))

    def value_and_grad(x):
        return value_kernel(x), grad_kernel(x)
    return value_and_grad


def mlp_problem(xp, batch, d_in, hidden, d_out, dtype, seed=0):
    rng = np.random.default_rng(seed)

    def arr(*shape, scale=1.0):
        return xp.asarray((scale * rng.standard_normal(shape)).astype(dtype))

    params = {"w1": arr(d_in, hidden, scale=d_in ** -0.5), "b1": arr(hidden, scale=0.1),
              "w2": arr(hidden, d_out, scale=hidden ** -0.5), "b2": arr(d_out, scale=0.1)}
    return params, arr(batch, d_in), arr(batch, d_out)


# ================================================================ measurement

def gpu_or_exit():
    status = dp.engines.available().get("cupy", "the cupy engine is not registered")
    if status != "ok":
        print(f"bench/gpu.py: no GPU benchmark here: {status}", file=sys.stderr)
        raise SystemExit(NO_GPU_EXIT)
    import cupy
    import cupyx.profiler
    return cupy, cupyx.profiler


def first_call_seconds(cupy, fn, *args):
    cupy.cuda.Device().synchronize()
    start = time.perf_counter()
    fn(*args)
    cupy.cuda.Device().synchronize()
    return time.perf_counter() - start


def timed(profiler, name, fn, args, repeat, warmup):
    result = profiler.benchmark(fn, args, n_repeat=repeat, n_warmup=warmup, name=name)
    gpu_ms = 1e3 * np.asarray(result.gpu_times).ravel()
    cpu_ms = 1e3 * np.asarray(result.cpu_times).ravel()
    return {"name": name, "gpu_ms_median": float(np.median(gpu_ms)),
            "gpu_ms_min": float(np.min(gpu_ms)), "cpu_ms_median": float(np.median(cpu_ms)),
            "repeats": int(gpu_ms.size)}


def close(a, b, rtol):
    a, b = np.asarray(a.get() if hasattr(a, "get") else a), np.asarray(b.get() if hasattr(b, "get") else b)
    return bool(np.allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.max(np.abs(b))))))


def run_w2(cupy, profiler, args):
    dtype = np.dtype(args.dtype)
    batch = 1024 if args.quick else args.batch
    params, x, y = mlp_problem(cupy, batch, args.d_in, args.hidden, args.d_out, dtype)
    ours = dp.value_and_grad(mlp_loss)
    first = first_call_seconds(cupy, ours, params, x, y)
    value, grads = ours(params, x, y)
    ref_value, ref_grads = mlp_value_and_grad_by_hand(cupy, params, x, y)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    agree = close(value, ref_value, rtol) and all(close(grads[k], ref_grads[k], rtol) for k in ref_grads)
    assert isinstance(value, cupy.ndarray) and all(isinstance(g, cupy.ndarray) for g in grads.values())
    rows = [timed(profiler, "diffprog value_and_grad", ours, (params, x, y), args.repeat, args.warmup),
            timed(profiler, "hand-written CuPy", lambda p, a, b: mlp_value_and_grad_by_hand(cupy, p, a, b),
                  (params, x, y), args.repeat, args.warmup)]
    shape = f"batch {batch}, {args.d_in}->{args.hidden}->{args.d_out}, {dtype.name}"
    return {"workload": "W2 mlp", "size": shape, "agree": agree, "first_call_s": first, "rows": rows}


def run_w4(cupy, profiler, args):
    dtype = np.dtype(args.dtype)
    n = 10 ** 6 if args.quick else int(args.elements)
    x = cupy.linspace(-3.0, 3.0, n, dtype=dtype)
    ours = dp.value_and_grad(bump)
    first = first_call_seconds(cupy, ours, x)
    value, grad = ours(x)
    fused = make_fused_bump(cupy)
    ref_value, ref_grad = bump_value_and_grad_by_hand(cupy, x)
    rtol = 1e-3 if dtype == np.float32 else 1e-9  # float32 sums of 1e8 terms round
    agree = close(value, ref_value, rtol) and close(grad, ref_grad, rtol)
    rows = [timed(profiler, "diffprog value_and_grad", ours, (x,), args.repeat, args.warmup),
            timed(profiler, "hand-written CuPy (op by op)",
                  lambda a: bump_value_and_grad_by_hand(cupy, a), (x,), args.repeat, args.warmup),
            timed(profiler, "hand-fused CuPy (cupy.fuse)", fused, (x,), args.repeat, args.warmup)]
    return {"workload": "W4 bump", "size": f"{n:.0e} elements, {dtype.name}", "agree": agree,
            "first_call_s": first, "rows": rows}


def report(results):
    for res in results:
        print(f"\n{res['workload']} ({res['size']}): results agree with hand-written: {res['agree']}; "
              f"first diffprog call (trace + compile) {res['first_call_s']:.2f} s")
        base = res["rows"][1]["gpu_ms_median"]
        for row in res["rows"]:
            print(f"  {row['name']:<32} GPU {row['gpu_ms_median']:9.3f} ms median "
                  f"(min {row['gpu_ms_min']:.3f}, host {row['cpu_ms_median']:.3f}, n={row['repeats']})"
                  f"  x{row['gpu_ms_median'] / base:.2f} of hand-written")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--d-in", type=int, default=256)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--d-out", type=int, default=16)
    p.add_argument("--elements", type=float, default=1e8)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--only", choices=["W2", "W4"])
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    cupy, profiler = gpu_or_exit()
    print(f"device: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, CuPy {cupy.__version__}, "
          f"fusion {'on' if dp.engines.get('cupy').fuse else 'off (DIFFPROG_CUPY_FUSE=0)'}")
    results = []
    if args.only in (None, "W2"):
        results.append(run_w2(cupy, profiler, args))
    if args.only in (None, "W4"):
        results.append(run_w4(cupy, profiler, args))
    report(results)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    if not all(r["agree"] for r in results):
        raise SystemExit("bench/gpu.py: diffprog disagrees with the hand-written CuPy results")


if __name__ == "__main__":
    main()
