"""The one exception hierarchy of diffprog.

Every error diffprog raises derives from :class:`DiffprogError`. Subclasses also
derive from the matching built-in (``TypeError``, ``ValueError``, ...) so existing
``except`` clauses in user code keep working.
"""
from __future__ import annotations


class DiffprogError(Exception):
    """Base class of every error raised by diffprog."""


class ArgumentError(DiffprogError, TypeError):
    """An argument passed to a diffprog API has the wrong type or kind."""


class ArgumentValueError(DiffprogError, ValueError):
    """An argument passed to a diffprog API has a bad value (argnums out of range...)."""


class ShapeError(DiffprogError, ValueError):
    """Shapes of operands do not fit together."""


class UnsupportedFunctionError(DiffprogError, TypeError):
    """A NumPy function was called on a traced value and diffprog has no rule for it."""


class UnsupportedAttributeError(DiffprogError, AttributeError):
    """An ndarray attribute or method diffprog does not trace (``hasattr`` stays False)."""


class ConcretizationError(DiffprogError, TypeError):
    """A traced value was turned into a plain Python/NumPy value, which drops its gradient."""


class NotDifferentiableError(DiffprogError, TypeError):
    """A gradient was asked of something that has none (integer input, non-scalar output)."""


class EngineUnavailable(DiffprogError, RuntimeError):
    """The requested engine cannot run here; the message says why and how to fix it."""


class EngineError(DiffprogError, RuntimeError):
    """An engine failed to compile or run a program."""


class SolverError(DiffprogError, RuntimeError):
    """A numerical solver gave up at run time (``odeint``: the step size underflowed, the
    solution became non-finite, or the step budget ran out); the message says where."""


class GradCheckError(DiffprogError, AssertionError):
    """A gradient check failed (``diffprog.testing.check_grads``); ``.report`` holds the details.

    Derives from ``AssertionError`` so test runners show it as a test failure."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class DiffprogWarning(UserWarning):
    """Something works but is likely slow or surprising (e.g. a function retraced for
    many different branch outcomes); the message says what to change."""
