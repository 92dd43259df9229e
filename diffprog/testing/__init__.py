"""Gradient checks for test suites.

>>> import numpy as np
>>> from diffprog.testing import check_grads
>>> check_grads(lambda x: np.sum(np.sin(x) * x), (np.linspace(0.1, 1, 4),)).passed
True

``check_grads`` compares diffprog's derivatives of a function with finite
differences; ``assert_grad_close`` compares a hand-written gradient with diffprog's.
The pytest plugin (:mod:`diffprog.testing.plugin`, loaded automatically when
diffprog is installed) provides the ``gradcheck`` fixture and ``--diffprog-seed``.
"""
from ..errors import GradCheckError
from .checks import DEFAULT_TOLERANCES, assert_grad_close, check_grads
from .report import CheckResult, ElementMismatch, GradCheckReport

__all__ = ["check_grads", "assert_grad_close", "GradCheckError", "GradCheckReport",
           "CheckResult", "ElementMismatch", "DEFAULT_TOLERANCES"]
