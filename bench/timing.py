"""Timing helpers shared by the stand-alone benchmarks (bench.vmap, bench.sparse)."""
from __future__ import annotations

import time


def best_of(f, *args, repeats: int = 5) -> float:
    """The fastest of ``repeats`` timed calls of ``f(*args)``, after one untimed warm-up
    call (which traces and compiles)."""
    f(*args)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(*args)
        best = min(best, time.perf_counter() - start)
    return best
