"""Tests generated from the control entries (diffprog/primitives/control.py: scan, cond,
while_loop, remat, error_if, guard)."""
from diffprog.primitives import control as FAMILY  # noqa: F401 (read by conftest.py)

from .generated import *  # noqa: F401,F403 (the generated tests)
