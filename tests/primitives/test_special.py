"""Tests generated from the scipy.special entries (diffprog/primitives/special.py: erf,
gammaln, digamma, polygamma, expit, xlogy, i0/i1, ndtr/log_ndtr/ndtri, gammainc, ...)."""
from diffprog.primitives import special as FAMILY  # noqa: F401 (read by conftest.py)

from .generated import *  # noqa: F401,F403 (the generated tests)
