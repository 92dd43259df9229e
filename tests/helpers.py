"""Finite-difference references shared by the tests (central differences, float64)."""
from __future__ import annotations

import numpy as np


def _fd_dtype(x):
    """float64, or complex128 for complex values (finite differences run there)."""
    return np.complex128 if np.iscomplexobj(x) else np.float64


def numeric_grad(f, args, argnum, eps=1e-6):
    """d f(*args) / d args[argnum] for scalar (real) f, element by element. For a complex
    argument z = x + iy this is JAX's convention, df/dx - i df/dy: central differences
    along the real and the imaginary direction of each element."""
    x = np.array(args[argnum], dtype=_fd_dtype(args[argnum]))
    g = np.zeros_like(x)
    directions = (1.0, 1j) if np.iscomplexobj(x) else (1.0,)
    for i in range(x.size):
        for d in directions:
            xp, xm = x.copy(), x.copy()
            xp.flat[i] += eps * d
            xm.flat[i] -= eps * d
            ap, am = list(args), list(args)
            ap[argnum], am[argnum] = xp, xm
            slope = (float(f(*ap)) - float(f(*am))) / (2 * eps)
            g.flat[i] += slope if d == 1.0 else -1j * slope
    return g


def numeric_jvp(f, args, tangents, eps=1e-6):
    """(f(x + eps t) - f(x - eps t)) / 2 eps (complex tangents move complex arguments)."""
    def moved(sign):
        return [np.asarray(a, _fd_dtype(a)) + sign * eps * t if t is not None else a
                for a, t in zip(args, tangents)]
    plus, minus = f(*moved(1.0)), f(*moved(-1.0))
    dtype = _fd_dtype(plus)
    return (np.asarray(plus, dtype) - np.asarray(minus, dtype)) / (2 * eps)


def assert_close(actual, expected, rtol=1e-5, atol=1e-6, what=""):
    """Elementwise closeness, complex values compared as complex (never cast to real)."""
    dtype = np.complex128 if np.iscomplexobj(actual) or np.iscomplexobj(expected) else np.float64
    np.testing.assert_allclose(np.asarray(actual, dtype), np.asarray(expected, dtype),
                               rtol=rtol, atol=atol, err_msg=what)


def sin_chain(n: int):
    """A loss of ``n`` groups of ``x = sin(x) * 1.01 + x * 0.5``: a long straight-line
    program (first-call and program-size tests)."""
    def f(x):
        for _ in range(n):
            x = np.sin(x) * 1.01 + x * 0.5
        return np.sum(x)
    return f
