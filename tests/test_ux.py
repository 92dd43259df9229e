"""Rough edges of everyday use: lazily reachable submodules, progress bars, notebook display."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import diffprog as dp


def test_submodules_are_reachable_as_attributes_and_imported_lazily():
    code = ("import sys, diffprog as dp\n"
            "assert 'diffprog.sciml' not in sys.modules\n"
            "import numpy as np\n"
            "ys = dp.sciml.odeint(lambda y, t: -y, np.array([1.0]), np.array([0.0, 1.0]))\n"
            "assert 'diffprog.sciml' in sys.modules and abs(ys[-1, 0] - np.exp(-1)) < 1e-6\n"
            "assert dp.testing.check_grads(lambda x: np.sum(x ** 2), np.ones(2)).passed\n"
            "assert dp.tree.map(lambda x: 2 * x, [1.0]) == [2.0] and dp.optim.SGD\n"
            "assert {'sciml', 'testing', 'tree', 'optim'} <= set(dir(dp))\n"
            "assert not hasattr(dp, 'no_such_module') and not hasattr(dp, '_private')\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_unknown_attribute_is_a_plain_attribute_error():
    with pytest.raises(AttributeError, match="module 'diffprog' has no attribute 'gradient'"):
        dp.gradient
