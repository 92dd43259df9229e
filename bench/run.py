"""CPU benchmark: diffprog (numpy engine) against hand-written NumPy gradients.

    python -m bench                  # all workloads, full sizes, prints a table
    python bench/run.py --only W2,W4 --repeats 30
    python -m bench --size tiny      # seconds: a smoke test (what the test suite runs)
    python -m bench --json out.json
    python -m bench --quick          # under a minute: few short samples, small scaling table

Every ratio is diffprog's time over the hand-written NumPy version's time, measured in
the same run with interleaved repeats (A, B, A, B, ...) so that load from other
processes hits both alike; the table gives the ratio of medians and of minimums.
Each peer is timed in its own interleaved pass against the same hand-written baseline
(their thread pools would otherwise compete with ours). jax runs W3 with lax.scan: jit
of the unrolled loop did not finish compiling in 200 s on our 2-core machine.
Before timing, each workload's diffprog result is checked against the hand-written one.
Peers (jax, autograd, torch) are timed the same way when they are installed.

W2 and W4 are also timed with fast math (rows "value FM", "value+grad FM": the same
function as ``dp.differentiable(fn, fast_math=True)``, in the same interleaved pass, against
the same baseline); ``--no-fast-math`` skips them.

Also measured: the first call of a fresh function (trace + transform + compile + one
run), the trace + compile time of a ~1,000-equation program, and W4's peak extra memory
(tracemalloc: NumPy reports its array allocations to it).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import tracemalloc
import types

import numpy as np

if __package__ in (None, ""):  # run as a script: python bench/run.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "bench"

import diffprog as dp  # noqa: E402
from diffprog.engines import ckernel  # noqa: E402

from . import peers as P  # noqa: E402
from . import workloads as W  # noqa: E402


def fresh(fn):
    """A new function object with the same code: diffprog's caches miss on it."""
    return types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)


def _per_call(fn, args, n):
    start = time.perf_counter()
    for _ in range(n):
        fn(*args)
    return (time.perf_counter() - start) / n


def calls_per_sample(fn, args, target_s):
    """How many calls make one timed sample last about ``target_s``."""
    fn(*args)
    t = _per_call(fn, args, 1)
    return max(1, min(100_000, int(target_s / max(t, 1e-7))))


def interleaved(candidates: dict, args_of: dict, repeats: int, target_s: float) -> dict:
    """Per-call seconds of every candidate, sampled in turn ``repeats`` times."""
    counts = {k: calls_per_sample(f, args_of[k], target_s) for k, f in candidates.items()}
    samples = {k: [] for k in candidates}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for k, f in candidates.items():
                samples[k].append(_per_call(f, args_of[k], counts[k]))
    finally:
        if gc_was:
            gc.enable()
    return samples


def _close(a, b, rtol=1e-9) -> bool:
    if isinstance(a, dict) or isinstance(b, dict):  # a pytree's gradient (P50)
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and \
            all(_close(a[k], b[k], rtol) for k in a)
    a, b = np.asarray(P.to_numpy(a), float), np.asarray(P.to_numpy(b), float)
    scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=rtol * scale))


#: workloads also timed with fast math (issue 19's targets: elementwise chains, the MLP)
FAST_MATH_WORKLOADS = ("W2", "W4")


def check(workload: W.Workload, fast_math: bool = False) -> None:
    """diffprog's value and gradients agree with the hand-written ones (else: no timing)."""
    fn = dp.differentiable(workload.fn, fast_math=True) if fast_math else workload.fn
    value, grads = dp.value_and_grad(fn, argnums=workload.argnums)(*workload.args)
    ref_value, ref_grads = workload.value_and_grad_by_hand(*workload.args)
    grads = grads if isinstance(grads, tuple) else (grads,)
    ok = _close(value, ref_value) and len(grads) == len(ref_grads) and \
        all(_close(g, r) for g, r in zip(grads, ref_grads))
    if not ok:
        raise AssertionError(f"{workload.name}: diffprog and the hand-written gradient disagree")


def time_workload(workload: W.Workload, repeats: int, target_s: float, peers: dict,
                  fast_math: bool = False) -> list:
    """Rows of ratios: value and value+grad, and with ``fast_math`` the same function with
    fast math too (timed in the same interleaved pass, against the same baseline)."""
    fm = dp.differentiable(workload.fn, fast_math=True)
    ours = {"value": (dp.differentiable(workload.fn), fm),
            "value+grad": (dp.value_and_grad(workload.fn, argnums=workload.argnums),
                           dp.value_and_grad(fm, argnums=workload.argnums))}
    for exact, fast in ours.values():
        for fn in (exact, fast) if fast_math else (exact,):
            fn(*workload.args)
    ckernel.wait()  # compiled kernels build in the background: time the steady state
    rows = []
    for mode, hand, pick in (("value", workload.value_by_hand, 0),
                             ("value+grad", workload.value_and_grad_by_hand, 1)):
        # diffprog against the baseline first, then each peer against the baseline in its
        # own pass: peers' thread pools (OpenMP spin-waits, XLA) must not run beside ours
        candidates = {"diffprog": ours[mode][0], "hand": hand}
        if fast_math:
            candidates["fast math"] = ours[mode][1]
        samples = interleaved(candidates, dict.fromkeys(candidates, workload.args), repeats,
                              target_s)
        base_med = statistics.median(samples["hand"])
        base_min = min(samples["hand"])
        for who, label in (("diffprog", mode), ("fast math", f"{mode} FM")):
            if who not in samples:
                continue
            rows.append({"workload": workload.name, "what": workload.description, "mode": label,
                         "hand_ms": 1e3 * base_med,
                         "ours_ms": 1e3 * statistics.median(samples[who]),
                         "ratio_median": statistics.median(samples[who]) / base_med,
                         "ratio_min": min(samples[who]) / base_min, "peers": {}})
        row = rows[-2 if fast_math else -1]
        for name, built in peers.items():
            s = interleaved({name: built[pick], "hand": hand}, {name: built[2], "hand": workload.args},
                            repeats, target_s)
            row["peers"][name] = statistics.median(s[name]) / statistics.median(s["hand"])
    return rows


def first_call_seconds(workload: W.Workload) -> tuple[float, float]:
    """A fresh function's first value_and_grad call (trace, vjp, simplify, compile, run),
    and the time until its compiled C kernels, built in the background, are ready."""
    vg = dp.value_and_grad(fresh(workload.fn), argnums=workload.argnums)
    start = time.perf_counter()
    vg(*workload.args)
    first = time.perf_counter() - start
    ckernel.wait()
    return first, time.perf_counter() - start


def chain_compile_seconds(n_ops: int) -> dict:
    """Trace + compile of a program of about n_ops equations (value and value+grad)."""
    fn = W.chain_fn(n_ops)
    x = np.linspace(0.1, 1.0, 4)
    n_eqns = len(dp.differentiable(fn).ir(x).eqns)
    start = time.perf_counter()
    dp.differentiable(fresh(fn))(x)
    value_s = time.perf_counter() - start
    start = time.perf_counter()
    dp.value_and_grad(fresh(fn))(x)
    grad_s = time.perf_counter() - start
    return {"equations": n_eqns, "value_s": value_s, "value_and_grad_s": grad_s}


def elementwise_chain(groups: int):
    """x = sin(x) * 0.5 + x repeated ``groups`` times, then sum: 3 equations a group."""
    def chain(x):
        for _ in range(groups):
            x = np.sin(x) * 0.5 + x
        return np.sum(x)
    return chain


def first_call_scaling(groups_list, memory=True) -> list:
    """First value_and_grad call of fresh elementwise chains: seconds and us per forward
    equation, and the peak Python memory of the call (tracemalloc)."""
    rows = []
    x = np.linspace(0.1, 1.0, 4)
    for groups in groups_list:
        gc.collect()
        start = time.perf_counter()
        dp.value_and_grad(elementwise_chain(groups))(x)
        seconds = time.perf_counter() - start
        peak = None
        if memory:  # a second fresh function: tracemalloc slows the call several times
            gc.collect()
            tracemalloc.start()
            dp.value_and_grad(elementwise_chain(groups))(x)
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        n_eqns = 3 * groups + 1
        rows.append({"groups": groups, "forward_equations": n_eqns, "seconds": seconds,
                     "us_per_equation": seconds / n_eqns * 1e6, "peak_mib": peak})
    return rows


def write_plot(results: dict, path: str) -> str | None:
    """A PNG of value+grad ratio per workload (diffprog and each peer); None without
    matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in results["timings"] if r["mode"] == "value+grad"]
    names = [r["workload"] for r in rows]
    series = {"diffprog": [r["ratio_median"] for r in rows]}
    for p in results["peers"]:
        series[p] = [r["peers"].get(p, float("nan")) for r in rows]
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(names), 4))
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        ax.bar([i + k * width for i in range(len(names))], values, width, label=label)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(names))], names)
    ax.set_yscale("log")
    ax.set_ylabel("value+grad time / hand-written NumPy")
    ax.set_title("value+grad / NumPy by hand (lower is better)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def peak_extra_bytes(fn, args) -> int:
    """Peak bytes allocated during one call, above what was allocated before it."""
    fn(*args)  # warm: compile outside the measurement
    ckernel.wait()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del result
    return peak - before


def run(size="full", only=None, repeats=21, target_s=0.02, use_peers=True, out=None,
        scaling=(100, 1000, 3000), fast_math=FAST_MATH_WORKLOADS) -> dict:
    """Time the workloads (``only``: their names); those in ``fast_math`` with fast math
    too."""
    out = out or sys.stdout
    names = only or list(W.MAKERS)
    found = P.available() if use_peers else {}
    results = {"timings": [], "first_call_s": {}, "memory": {}, "compile": {},
               "peers": sorted(found), "size": size}
    for name in names:
        workload = W.MAKERS[name](size)
        check(workload)
        if name in fast_math:
            check(workload, fast_math=True)
        built = {}
        for peer in found:
            try:
                built[peer] = P.build(peer, workload)
                if built[peer] is None:
                    del built[peer]
                    continue
                value = built[peer][1](*built[peer][2])[0]
                if not _close(value, workload.value_by_hand(*workload.args)):
                    raise AssertionError(f"its value {value} disagrees with NumPy's")
            except Exception as e:  # a peer that cannot run a workload is reported, not fatal
                built.pop(peer, None)
                print(f"# {peer} skipped on {name}: {type(e).__name__}: {e}", file=out)
        print(f"# {name}: timing diffprog, numpy by hand{''.join(', ' + p for p in built)}",
              file=sys.stderr, flush=True)
        results["timings"] += time_workload(workload, repeats, target_s, built,
                                            fast_math=name in fast_math)
        if name != "W1":
            first, ready = first_call_seconds(workload)
            results["first_call_s"][name] = first
            results.setdefault("kernels_ready_s", {})[name] = ready
        if name == "W4":
            vg = dp.value_and_grad(workload.fn)
            results["memory"] = {
                "diffprog_bytes": peak_extra_bytes(vg, workload.args),
                "numpy_by_hand_bytes": peak_extra_bytes(workload.value_and_grad_by_hand,
                                                        workload.args),
                "input_bytes": int(workload.args[0].nbytes)}
    results["compile"] = chain_compile_seconds(1000 if size == "full" else 40)
    results["scaling"] = first_call_scaling(scaling if size == "full" else (10,),
                                            memory=repeats > 5)
    results["fast_math"] = ckernel.fast_math_status()
    print_table(results, out)
    return results


def print_table(results: dict, out=None) -> None:
    out = out or sys.stdout
    peers = results["peers"]
    head = f"{'workload':<9}{'mode':<15}{'by hand ms':>11}{'ours ms':>10}{'ratio med':>10}{'ratio min':>10}"
    head += "".join(f"{p:>10}" for p in peers)
    print(f"diffprog CPU benchmark (size={results['size']}); ratio = diffprog / hand-written "
          f"NumPy, same run; peers: ratio of medians vs the same baseline", file=out)
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in results["timings"]:
        line = (f"{r['workload']:<9}{r['mode']:<15}{r['hand_ms']:>11.4f}{r['ours_ms']:>10.4f}"
                f"{r['ratio_median']:>10.2f}{r['ratio_min']:>10.2f}")
        line += "".join(f"{r['peers'][p]:>10.2f}" if p in r["peers"] else f"{'-':>10}" for p in peers)
        print(line, file=out)
    if any(r["mode"].endswith(" FM") for r in results["timings"]):
        print(f"FM: fast math (dp.differentiable(fn, fast_math=True)), timed in the same pass; "
              f"{results.get('fast_math', '')}", file=out)
    ready = results.get("kernels_ready_s", {})
    for name, s in results["first_call_s"].items():
        print(f"first call (trace+compile+run) {name}: {s:.3f} s"
              + (f"; compiled kernels ready after {ready[name]:.3f} s" if name in ready else ""),
              file=out)
    c = results["compile"]
    print(f"trace+compile, {c['equations']}-equation program: value {c['value_s']:.3f} s, "
          f"value+grad {c['value_and_grad_s']:.3f} s", file=out)
    if results.get("scaling"):
        print("first call of value_and_grad, elementwise chain (x = sin(x)*0.5 + x, N times):",
              file=out)
        print(f"{'N':>7}{'fwd eqns':>10}{'seconds':>10}{'us/eqn':>9}{'peak MiB':>10}", file=out)
        for r in results["scaling"]:
            print(f"{r['groups']:>7}{r['forward_equations']:>10}{r['seconds']:>10.3f}"
                  f"{r['us_per_equation']:>9.0f}"
                  + (f"{r['peak_mib']:>10.1f}" if r["peak_mib"] is not None else f"{'-':>10}"),
                  file=out)
    m = results["memory"]
    if m:
        print(f"W4 peak extra memory (value+grad): diffprog {m['diffprog_bytes'] / 2**20:.1f} MiB, "
              f"by hand {m['numpy_by_hand_bytes'] / 2**20:.1f} MiB "
              f"(input {m['input_bytes'] / 2**20:.1f} MiB)", file=out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("full", "tiny"), default="full")
    ap.add_argument("--only", default=None, help="comma-separated workloads, e.g. W1,W3")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--sample-ms", type=float, default=20.0, help="length of one timed sample")
    ap.add_argument("--no-peers", action="store_true", help="skip jax/autograd/torch")
    ap.add_argument("--no-fast-math", action="store_true",
                    help=f"skip the fast-math rows (of {', '.join(FAST_MATH_WORKLOADS)})")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--quick", action="store_true",
                    help="full sizes, few short samples and a small scaling table (< 1 min)")
    ap.add_argument("--plot", default="bench_ratios.png",
                    help="PNG of the value+grad ratios ('' for none; needs matplotlib)")
    a = ap.parse_args(argv)
    only = [s.strip().upper().replace("W3S", "W3s") for s in a.only.split(",")] if a.only else None
    repeats, sample_s, scaling = a.repeats, a.sample_ms / 1e3, (100, 1000, 3000)
    if a.quick:
        repeats, sample_s, scaling = min(repeats, 5), min(sample_s, 0.005), (100, 1000)
    results = run(a.size, only, repeats, sample_s, not a.no_peers, scaling=scaling,
                  fast_math=() if a.no_fast_math else FAST_MATH_WORKLOADS)
    if a.plot:
        written = write_plot(results, a.plot)
        print(f"plot: {written}" if written else "plot: matplotlib not installed, none written")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
