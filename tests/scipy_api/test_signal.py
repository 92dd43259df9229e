"""scipy.signal.convolve / correlate / fftconvolve inside differentiated functions."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal as ss

import diffprog as dp

from .helpers import assert_grads_match_scipy, assert_matches_scipy

dp.scipy_api.install_all()
RNG = np.random.default_rng(1)
PAIRS = {"1d": (RNG.standard_normal(10), RNG.standard_normal(3)),
         "1d_swapped": (RNG.standard_normal(3), RNG.standard_normal(10)),
         "1d_long_kernel": (RNG.standard_normal(12), RNG.standard_normal(80)),
         "2d": (RNG.standard_normal((6, 7)), RNG.standard_normal((3, 2)))}


@pytest.mark.parametrize("function", ["convolve", "correlate", "fftconvolve"])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_matches_scipy(function, mode, pair):
    fn = lambda u, v: getattr(ss, function)(u, v, mode=mode)
    assert_matches_scipy(fn, PAIRS[pair], rtol=1e-10, atol=1e-12)
    if pair != "1d_long_kernel":
        weights = np.sin(np.arange(np.size(fn(*PAIRS[pair])))).reshape(np.shape(fn(*PAIRS[pair])))
        assert_grads_match_scipy(lambda u, v: fn(u, v) * weights, PAIRS[pair], [0, 1])
