"""``odeint``: differentiable ODE integration (fixed-step RK4, adaptive Dormand-Prince).

How derivatives work here: *discretise-then-differentiate*. The solver is ordinary
diffprog code (structured loops: :func:`diffprog.scan` over the output times, an inner
:func:`diffprog.fori_loop` / :func:`diffprog.while_loop` over steps), so gradients are
the exact derivatives of the *discrete* solution, consistent with what the forward pass
computed, to any solver tolerance. No adjoint ODE is solved backwards (that would give
the derivative of the continuous solution only up to the tolerance of a second solve).

Adaptive steps: the step sizes chosen by the error controller are treated as constants
(``dp.stop_gradient``): the gradient is that of the discrete solution on the accepted
step sequence, the standard choice; differentiating the controller itself would add
noisy terms of the order of the tolerance.

Memory of reverse mode: the loop over output times is a checkpointed scan, so reverse
mode keeps O(sqrt(len(t))) states between output times, plus the steps of one interval
while that interval is recomputed (RK4: ``steps_per_interval``; dopri5: its accepted and
rejected steps in that interval, or with ``max_steps`` a checkpointed bounded loop).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..control import error_if, fori_loop, scan, while_loop
from ..errors import ArgumentError, ArgumentValueError, ShapeError
from ..numpy_api import stop_gradient
from ..object_arrays import traced
from ..tracing import Tracer

_GAVE_UP = "odeint (dopri5) stopped at t={0:.6g} before reaching t={1:.6g}: "

# Dormand-Prince 5(4) tableau
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = ((),
      (1 / 5,),
      (3 / 40, 9 / 40),
      (44 / 45, -56 / 15, 32 / 9),
      (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
      (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
      (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(a - b for a, b in zip(_B5, _B4))


def _as_float_array(y0):
    """y0 as an array; integers become float64, float32/float64 keep their precision."""
    array = np.asarray(y0)
    if array.dtype == object:
        raise ArgumentError(
            f"odeint: y0 must be an array or a number (the state), got {type(y0).__name__}. "
            f"Fix: pack the state into one array (e.g. np.concatenate of its parts) and "
            f"unpack it inside f.")
    return array if np.issubdtype(array.dtype, np.inexact) else array.astype(float)


def _checked_rhs(f, y0, params):
    """``f(y, t, *params)``, refusing a result that is not dy/dt for the state. NumPy would
    broadcast a scalar, ``y[:1]`` or ``-t`` (f written for solve_ivp's ``f(t, y)``) into
    the state, and the solver would integrate another equation without a word."""
    want_shape, want_dtype = tuple(y0.shape), y0.dtype

    def rhs(y, s):
        dy = traced(f(y, s, *params))  # `return np.array([y[1], -y[0]])`: one traced array
        if isinstance(dy, (list, tuple)):  # array_like, as scipy.integrate.odeint reads it
            dy = np.stack(dy)
        shape = tuple(dy.shape) if hasattr(dy, "shape") else np.shape(dy)
        dtype = dy.dtype if hasattr(dy, "dtype") else np.result_type(dy)
        if shape != want_shape or dtype.kind != want_dtype.kind:
            name = getattr(f, "__qualname__", None) or repr(f)
            raise ShapeError(
                f"odeint: f={name} returned shape {shape} and dtype {dtype}, but the state y0 "
                f"has shape {want_shape} and dtype {want_dtype}; f must return dy/dt with y's "
                f"shape and dtype kind. odeint calls f(y, t, *params), the order of "
                f"scipy.integrate.odeint; scipy.integrate.solve_ivp calls f(t, y, *args) "
                f"instead. Fix: return an array of shape {want_shape}; for a function written "
                f"for solve_ivp, pass `lambda y, t, *p: f(t, y, *p)`.")
        return dy
    return rhs


def odeint(f: Callable, y0, t, *params, method: str = "rk4", rtol: float = 1e-6,
           atol: float = 1e-9, max_steps: int | None = None, steps_per_interval: int = 10,
           checkpoint: bool = True, max_num_steps: int = 10_000):
    """Solve ``dy/dt = f(y, t, *params)`` from ``y(t[0]) = y0``; return ``y`` at every ``t``
    (shape ``(len(t),) + y0.shape``; ``ys[0]`` is ``y0``).

    ``f`` takes the state first, as in ``scipy.integrate.odeint`` (``solve_ivp`` uses
    ``f(t, y)``), and returns dy/dt with ``y0``'s shape and dtype kind (a list or tuple is
    stacked); anything else is a :class:`~diffprog.errors.ShapeError` rather than being
    broadcast into the state. (A function in solve_ivp's order is caught by the shape
    check unless the state is a scalar, where f(t, y) and f(y, t) cannot be told apart.)

    * ``method="rk4"``: classical Runge-Kutta, ``steps_per_interval`` equal steps between
      consecutive output times.
    * ``method="dopri5"``: adaptive Dormand-Prince 5(4) with error control (``rtol``,
      ``atol``, RMS norm); ``max_steps`` (per interval) turns the step loop into a bounded
      loop, differentiable to any order with O(sqrt(max_steps)) memory, at the cost of
      always running ``max_steps`` steps; without it reverse mode is first order.
      The solver never hangs and never returns a silently wrong value: when the step size
      underflows or becomes non-finite (the solution blows up, ``f`` returns NaN), or an
      interval needs more than ``max_num_steps`` attempted steps (or ``max_steps``), the
      program raises :class:`~diffprog.errors.SolverError` naming the time it reached.

    Differentiable with respect to ``y0`` and ``params`` (and ``t``) in both modes; see
    the module docstring for what the gradient means with adaptive steps.

    >>> import numpy as np, diffprog as dp
    >>> from diffprog.sciml import odeint
    >>> decay = lambda y, t, k: -k * y
    >>> loss = lambda k: odeint(decay, np.array([1.0]), np.array([0.0, 1.0]), k)[-1, 0]
    >>> round(float(dp.grad(loss)(np.array(1.0))), 5)   # d/dk exp(-k) = -exp(-1)
    -0.36788
    """
    if method not in ("rk4", "dopri5"):
        raise ArgumentValueError(f"odeint: method must be 'rk4' or 'dopri5', got {method!r}")
    y0, t = traced(y0), traced(t)  # np.array([a, b]) of traced values: one traced array
    y0 = y0 if isinstance(y0, Tracer) else _as_float_array(y0)
    t = t if isinstance(t, Tracer) else np.asarray(t, dtype=float)
    # The state keeps y0's precision: float32 stays float32 although t is float64 (the
    # step loops cast their carry back to the state's dtype).
    if np.ndim(t) != 1 or np.shape(t)[0] < 2:
        raise ArgumentError(f"odeint: t must be a 1-d array of at least 2 times, got shape {np.shape(t)}")
    if not isinstance(t, Tracer) and np.any(np.diff(t) <= 0):
        raise ArgumentValueError("odeint: t must be strictly increasing")

    rhs = _checked_rhs(f, y0, params)

    if method == "rk4":
        n = steps_per_interval
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ArgumentValueError(
                f"odeint: steps_per_interval must be a positive integer (RK4 steps between "
                f"two times of t), got {n!r}. Fix: pass e.g. steps_per_interval=10.")
        n = int(n)

        def interval(y, ts):
            t0, t1 = ts[0], ts[1]
            h = (t1 - t0) / n

            def step(i, y):
                s = t0 + i * h
                k1 = rhs(y, s)
                k2 = rhs(y + h / 2 * k1, s + h / 2)
                k3 = rhs(y + h / 2 * k2, s + h / 2)
                k4 = rhs(y + h * k3, s + h)
                return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            y = fori_loop(0, n, step, y)
            return y, y
        spans = np.stack([t[:-1], t[1:]], axis=1)
        _, ys = scan(interval, y0, spans, checkpoint=checkpoint)
        return np.concatenate([np.expand_dims(y0, 0), ys], axis=0)

    h0 = stop_gradient((t[1] - t[0]) / 10.0)
    budget = int(max_steps) if max_steps is not None else int(max_num_steps)
    eps = float(np.finfo(np.result_type(y0)).eps)

    # Each interval [t0, t1] is integrated in normalised time tau in [0, 1] (s = t0 + tau
    # * L, L = t1 - t0): the controller's choices (tau and step dtau) are constants for
    # the gradient, the physical steps dtau * L are not, so derivatives with respect to
    # the output times t are those of the discrete solution too (a step h = min(h, t1 - s)
    # with h held constant would lose the dependence of the last step on t1).
    def interval(carry, ts):
        y, h = carry
        t0, t1 = ts[0], ts[1]
        length = t1 - t0
        fixed_length = stop_gradient(length)
        y = error_if(y, np.logical_not(fixed_length > 0), "odeint (dopri5): t must be strictly "
                     "increasing, but t={0:.6g} is followed by t={1:.6g}. Fix: pass increasing "
                     "times (integrate -f for a backward solve).", t0, t1)
        limit = np.maximum(np.abs(stop_gradient(t0)), np.abs(stop_gradient(t1)))

        def unfinished(tau):
            return tau < 1.0 - 1e-12 * (1.0 + stop_gradient(np.abs(t1))) / fixed_length

        def can_step(dtau, n):
            """A usable step: finite, not below the spacing of floats at t1, within budget."""
            big_enough = dtau * fixed_length > 10.0 * eps * limit
            return np.logical_and(np.logical_and(np.isfinite(dtau), big_enough), n < budget)

        def not_done(state):
            tau, _, dtau, n = state
            return np.logical_and(unfinished(tau), can_step(dtau, n))

        def attempt(state):
            tau, y, dtau, n = state
            dtau = stop_gradient(np.minimum(dtau, 1.0 - tau))
            h = dtau * length
            s = t0 + tau * length
            ks = []
            for i in range(7):
                yi = y
                for a, k in zip(_A[i], ks):
                    if a != 0.0:
                        yi = yi + h * a * k
                ks.append(rhs(yi, s + _C[i] * h))
            y5 = y + h * sum(b * k for b, k in zip(_B5, ks) if b != 0.0)
            err = h * sum(e * k for e, k in zip(_E, ks) if e != 0.0)
            scale = atol + rtol * np.maximum(np.abs(y), np.abs(y5))
            # |.|^2: a complex state's error has a size, not a sign (|x|^2 is x^2 bit for
            # bit on real values)
            norm = stop_gradient(np.sqrt(np.mean(np.abs(err / scale) ** 2)))
            accept = norm <= 1.0
            factor = np.clip(0.9 * (np.maximum(norm, 1e-10) ** -0.2), 0.2, 5.0)
            return (np.where(accept, tau + dtau, tau), np.where(accept, y5, y),
                    stop_gradient(dtau * factor), n + 1)
        tau0 = np.zeros((), np.result_type(float, fixed_length))
        tau, y, dtau, n = while_loop(not_done, attempt, (tau0, y, h / fixed_length, np.array(0)),
                                     max_steps=max_steps)
        y = error_if(y, unfinished(tau), _GAVE_UP + (f"the budget of {budget} attempted steps per "
                     f"interval ran out (max_num_steps / max_steps), or the step size became "
                     f"non-finite or too small: the solution may blow up there, f may return "
                     f"NaN/inf, or the problem is stiff. Fix: check f near that time, loosen "
                     f"rtol/atol, raise max_num_steps, or use method='rk4' with small steps."),
                     stop_gradient(t0 + tau * length), t1)
        return (y, stop_gradient(dtau * fixed_length)), y
    spans = np.stack([t[:-1], t[1:]], axis=1)
    _, ys = scan(interval, (y0, h0), spans, checkpoint=checkpoint)
    return np.concatenate([np.expand_dims(y0, 0), ys], axis=0)
