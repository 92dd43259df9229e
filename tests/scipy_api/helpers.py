"""What the SciPy front-end tests share: SciPy itself is the oracle (its values, and
central finite differences of its own functions)."""
from __future__ import annotations

import numpy as np

import diffprog as dp

from ..helpers import numeric_grad


def scipy_grad(fn, args, argnum, eps=1e-6):
    """d sum(fn(*args)) / d args[argnum] by central differences of SciPy's function."""
    return numeric_grad(lambda *a: np.sum(fn(*a)), args, argnum, eps)


def traced_value(fn, *args):
    """fn(*args) computed by diffprog (traced, compiled, run)."""
    return dp.differentiable(fn)(*args)


def assert_matches_scipy(fn, args, rtol=1e-10, atol=1e-13):
    got, want = traced_value(fn, *args), fn(*args)
    assert np.shape(got) == np.shape(want), (np.shape(got), np.shape(want))
    np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float), rtol=rtol,
                               atol=atol, equal_nan=True)


def assert_grads_match_scipy(fn, args, argnums, rtol=1e-6, atol=1e-8):
    grads = dp.grad(lambda *a: np.sum(fn(*a)), argnums=tuple(argnums))(*args)
    for g, i in zip(grads, argnums):
        np.testing.assert_allclose(g, scipy_grad(fn, args, i), rtol=rtol, atol=atol,
                                   err_msg=f"d/d argument {i}")
