"""Tests generated from the sparse entry (diffprog/primitives/sparse.py: sparse_matmul, a
scipy.sparse matrix times a dense array)."""
from diffprog.primitives import sparse as FAMILY  # noqa: F401 (read by conftest.py)

from .generated import *  # noqa: F401,F403 (the generated tests)
