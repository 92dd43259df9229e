"""Compiled helpers of the fusion pass, used only where they reproduce NumPy bit for bit.

``sincos()`` gives the ``sincos`` ufunc of the optional C extension
``diffprog.engines._fastmath`` (built by ``pip install`` where a C compiler is present),
or None. Before handing it out, it is checked once per process against ``np.sin`` and
``np.cos`` on values covering every range libm treats differently (tiny, subnormal,
around multiples of pi/2, huge, inf, nan); any difference and it is never used, so a
NumPy build whose float64 sin/cos are not libm's (or a different libm) cannot change a
result. ``status()`` says which case holds, for bug reports.

Setting (environment, read on first use): ``DIFFPROG_FASTMATH=0`` turns the helpers off.
"""
from __future__ import annotations

import functools
import os
import threading

import numpy as np

_LOCK = threading.Lock()
_STATE: dict = {}


def probe_values() -> np.ndarray:
    """float64 values covering every range libm treats differently (also used by
    :mod:`diffprog.engines.ckernel` to check its C spellings); a fresh copy each call
    (the probe asks ~60 times: making them was a sixth of its time)."""
    return _probe_values().copy()


@functools.lru_cache(maxsize=1)
def _probe_values() -> np.ndarray:
    rng = np.random.default_rng(20261201)
    scales = [1e-310, 1e-20, 1e-8, 1.0, 3.0, 100.0, 1e5, 1e9, 1e15, 1e22, 1e300]
    random = np.concatenate([rng.standard_normal(2000) * s for s in scales])
    near_half_pi = np.pi / 2 * np.arange(-64, 65) + np.array([[-1e-12], [0.0], [1e-12]])
    special = np.array([0.0, -0.0, 5e-324, -5e-324, np.inf, -np.inf, np.nan,
                        np.finfo(np.float64).max, -np.finfo(np.float64).max])
    return np.concatenate([random, near_half_pi.ravel(), special])


def _reproduces_numpy(ufunc) -> bool:
    x = probe_values()
    with np.errstate(all="ignore"):
        s, c = ufunc(x)
        expect_s, expect_c = np.sin(x), np.cos(x)
    # compare bits, so -0.0 vs 0.0 and NaN payloads count as differences too
    return (np.array_equal(s.view(np.int64), expect_s.view(np.int64))
            and np.array_equal(c.view(np.int64), expect_c.view(np.int64)))


def _load() -> tuple:
    if os.environ.get("DIFFPROG_FASTMATH", "1").strip() == "0":
        return None, "off (DIFFPROG_FASTMATH=0)"
    try:
        from . import _fastmath
    except ImportError as exc:
        return None, f"not built ({exc}); reinstall diffprog where a C compiler is present"
    if not _reproduces_numpy(_fastmath.sincos):
        return None, "built, but differs from np.sin/np.cos on this machine: not used"
    return _fastmath.sincos, "in use (bit-identical to np.sin/np.cos on this machine)"


def _state() -> tuple:
    with _LOCK:
        if "sincos" not in _STATE:
            _STATE["sincos"] = _load()
        return _STATE["sincos"]


def sincos():
    """The float64 ``sincos`` ufunc when it is built and bit-identical to NumPy here, else None."""
    return _state()[0]


def status() -> str:
    """One line: whether the fusion pass computes sin and cos of one argument in one call."""
    return f"sincos: {_state()[1]}"


def reset() -> None:
    """Forget the cached check (tests change DIFFPROG_FASTMATH)."""
    with _LOCK:
        _STATE.clear()
