"""Tests generated from the linalg entries (diffprog/primitives/linalg.py: matmul, einsum,
solve, inv, det, slogdet, cholesky, eigh, eigvalsh)."""
from diffprog.primitives import linalg as FAMILY  # noqa: F401 (read by conftest.py)

from .generated import *  # noqa: F401,F403 (the generated tests)
