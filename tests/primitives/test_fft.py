"""Tests generated from the np.fft entries (diffprog/primitives/fft.py: fftn, ifftn, rfftn,
irfftn)."""
from diffprog.primitives import fft as FAMILY  # noqa: F401 (read by conftest.py)

from .generated import *  # noqa: F401,F403 (the generated tests)
