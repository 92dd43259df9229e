"""Tests generated from the elementwise entries (diffprog/primitives/elementwise.py: NumPy's
ufuncs, Python's operators, where, convert, stop_gradient)."""
from diffprog.primitives import elementwise as FAMILY  # noqa: F401 (read by conftest.py)

from .generated import *  # noqa: F401,F403 (the generated tests)
