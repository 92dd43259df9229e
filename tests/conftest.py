import os
import tempfile

import numpy as np
import pytest

# Compiled kernels (diffprog/engines/ckernel.py) built by the suite go to a directory of
# its own, not the user's cache: every run builds them afresh, as CI does.
os.environ.setdefault("DIFFPROG_CACHE_DIR", tempfile.mkdtemp(prefix="diffprog-test-cache-"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
