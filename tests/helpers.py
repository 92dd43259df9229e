"""Finite-difference references shared by the tests (central differences, float64)."""
from __future__ import annotations

import numpy as np


def numeric_grad(f, args, argnum, eps=1e-6):
    """d f(*args) / d args[argnum] for scalar f, element by element."""
    x = np.array(args[argnum], dtype=np.float64)
    g = np.zeros_like(x)
    for i in range(x.size):
        xp, xm = x.copy(), x.copy()
        xp.flat[i] += eps
        xm.flat[i] -= eps
        ap, am = list(args), list(args)
        ap[argnum], am[argnum] = xp, xm
        g.flat[i] = (float(f(*ap)) - float(f(*am))) / (2 * eps)
    return g


def numeric_jvp(f, args, tangents, eps=1e-6):
    plus = [np.asarray(a, np.float64) + eps * t if t is not None else a for a, t in zip(args, tangents)]
    minus = [np.asarray(a, np.float64) - eps * t if t is not None else a for a, t in zip(args, tangents)]
    return (np.asarray(f(*plus), np.float64) - np.asarray(f(*minus), np.float64)) / (2 * eps)


def assert_close(actual, expected, rtol=1e-5, atol=1e-6, what=""):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=rtol, atol=atol, err_msg=what)
