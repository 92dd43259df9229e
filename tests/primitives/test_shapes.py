"""Tests generated from the shapes entries (diffprog/primitives/shapes.py: reshape,
transpose, broadcasting, concatenate, pad, slicing, gather, scatter_add)."""
from diffprog.primitives import shapes as FAMILY  # noqa: F401 (read by conftest.py)

from .generated import *  # noqa: F401,F403 (the generated tests)
