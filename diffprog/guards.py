"""Guards: Python ``if``/``while``/``for``/``int()`` on traced values.

While diffprog traces user code every :class:`~diffprog.tracing.Tracer` holds its
concrete value, so ``bool(x > 0)`` has an answer. Instead of refusing, the trace
takes that answer and records a *guard* equation: "this value must again give this
answer". The compiled program checks its guards (a guard is one line of the generated
straight-line code); when one fails, the API traces the function again for the new
input and keeps both variants (see :meth:`diffprog.api.Transformed._run`).

Guards sit on primal values only: derivative transforms replay them unchanged and give
them no derivative (a branch decision or an integer is piecewise constant).

What is guarded, and what is refused (silently wrong gradients are the worst bug):

* ``bool(x)`` (``if``, ``while``, ``and``/``or``/``not``): guarded on the truth value.
* ``int(x)`` / ``operator.index(x)`` (``range(n)``, indexing): guarded on the exact
  integer. Its derivative is zero almost everywhere, so nothing is lost.
* ``float(x)`` / ``x.item()``: guarded on the exact value *only when no floating input
  of the traced function flows into x*. If one does, the float would be frozen into
  the program as a constant and every gradient through it silently dropped, so this
  raises :class:`~diffprog.errors.ConcretizationError`. Write
  ``float(dp.stop_gradient(x))`` to say the gradient is not wanted (e.g. an adaptive
  step size); the value is then guarded like the others (a retrace when it changes).

In a trace without concrete values (inside a derivative transform) there is nothing to
guard on, and ``bool()`` raises the error naming the line, as before.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import tracing
from .errors import ConcretizationError
from .ir import Var
from .primitives.control import GUARDED_KINDS, GuardFailed, guard  # noqa: F401 (GuardFailed: the API catches it)


# ------------------------------------------------------------------ dependence on inputs

def _depends_on_float_inputs(tracer) -> bool:
    """Does a floating input of the trace (or a captured outer value) flow into ``tracer``
    through differentiable equations? Scanned incrementally: linear in the trace."""
    trace = tracer._trace
    state = getattr(trace, "_float_deps", None)
    if state is None:
        seeds = {id(v) for v in trace.invars if np.issubdtype(v.aval.dtype, np.inexact)}
        state = trace._float_deps = [seeds, 0, 0]
    deps = state[0]
    for _, var in trace.captured[state[2]:]:
        if np.issubdtype(var.aval.dtype, np.inexact):
            deps.add(id(var))
    state[2] = len(trace.captured)
    for eqn in trace.eqns[state[1]:]:
        if eqn.prim.differentiable and any(isinstance(a, Var) and id(a) in deps
                                           for a in eqn.inputs):
            deps.update(id(o) for o in eqn.outputs if np.issubdtype(o.aval.dtype, np.inexact))
    state[1] = len(trace.eqns)
    return id(tracer._var) in deps


# ------------------------------------------------------------------------------ the hook

def _abstract_error(tracer, kind: str) -> ConcretizationError:
    where = tracing.user_frame_line()
    purpose = getattr(tracer._trace, "purpose", None)
    context = (f"It is inside {purpose}, which is traced once for every value it will "
               f"see, so this value is not known" if purpose else
               "It is inside a derivative transform, where its value is not known")
    if kind == "bool":
        return ConcretizationError(
            f"Python control flow (if/while/and/or/not) depends on a traced value at {where}\n"
            f"{context}.\nFix: use np.where(cond, a, b) for elementwise choices, or dp.cond / "
            f"dp.while_loop / dp.fori_loop for control flow.")
    return ConcretizationError(
        f"{kind}() of a traced value at {where}\n{context}.\nFix: keep the value as an "
        f"array (use NumPy functions on it).")


def _float_error() -> ConcretizationError:
    return ConcretizationError(
        f"float() (or .item(), or a math.* function) of a traced value that depends on the "
        f"function's floating inputs, at {tracing.user_frame_line()}.\nThe result would be "
        f"frozen into the program as a constant and its gradient silently dropped.\nFix: keep "
        f"the value as an array (np.sin instead of math.sin); if no gradient is wanted through "
        f"it (a printed value, an adaptive step size), say so: float(dp.stop_gradient(x)).")


def guard_hook(tracer, kind: str, convert: Callable):
    """Replacement of the error on bool()/float()/int(): answer from the concrete value
    and record a guard equation that the compiled program checks."""
    if tracer.val is None:
        raise _abstract_error(tracer, kind)
    if kind == "float" and _depends_on_float_inputs(tracer):
        raise _float_error()
    value = tracer.val
    if getattr(value, "size", 1) != 1:
        raise ConcretizationError(
            f"{kind}() of a traced array of shape {tracer.shape} at {tracing.user_frame_line()}: "
            f"only one-element arrays have a truth value / number. Fix: reduce it first "
            f"(np.any / np.all / np.sum).")
    if kind == "index" and not np.issubdtype(tracer.dtype, np.integer):
        raise TypeError(f"only integer arrays can be used as an index; this traced value "
                        f"has dtype {tracer.dtype} (at {tracing.user_frame_line()})")
    result = convert(value)
    expected = GUARDED_KINDS["float" if kind == "float" else kind](result)
    tracing.bind(guard, tracer, kind="float" if kind == "float" else kind,
                 expected=expected, line=tracing.user_frame_line())
    return result


def install() -> None:
    tracing._GUARD_HOOK[0] = guard_hook


install()
