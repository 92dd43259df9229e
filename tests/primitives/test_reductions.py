"""Tests generated from the reductions entries (diffprog/primitives/reductions.py: sums,
products, extrema, arg-reductions and scans along axes)."""
from diffprog.primitives import reductions as FAMILY  # noqa: F401 (read by conftest.py)

from .generated import *  # noqa: F401,F403 (the generated tests)
