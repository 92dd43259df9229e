"""scipy.integrate.odeint and solve_ivp on traced values, routed to diffprog's solver.

Inside a differentiated function, ``scipy.integrate.odeint(f, y0, t, args=(k,))`` and
``solve_ivp(f, (t0, t1), y0, t_eval=ts, args=(k,))`` run
:func:`diffprog.sciml.odeint` with the adaptive Dormand-Prince 5(4) method
(``method="dopri5"``, the method of solve_ivp's default RK45) and SciPy's tolerances
(odeint: rtol = atol = 1.49012e-8; solve_ivp: rtol=1e-3, atol=1e-6), so values agree with
SciPy's within those tolerances, and gradients flow through the solution (exact
derivatives of the discrete solution; see diffprog.sciml.odeint).

Call conventions are SciPy's: odeint's ``f(y, t, *args)`` (``f(t, y, *args)`` with
``tfirst=True``), solve_ivp's ``fun(t, y, *args)``; the state is a 1-D float64 array, the
results have SciPy's shapes (odeint: ``(len(t), n)``; solve_ivp: an ``OdeResult`` whose
``y`` is ``(n, len(t_eval))``). What cannot be reproduced is refused with the fix
(diffprog.sciml.odeint): odeint's ``full_output``, solve_ivp without ``t_eval`` (SciPy
returns its own step points, as many as its step control takes), ``events`` and
``dense_output``. LSODA's, Radau's and BDF's stiff methods are not reproduced: a stiff
problem makes dopri5 take many small steps, and past its step budget it raises
SolverError naming the time it reached.
"""
from __future__ import annotations

import inspect

import numpy as np

from .. import numpy_api as npa
from ..errors import ArgumentValueError
from ..tracing import Tracer
from . import computes_traced, divert, holds_tracer, operand, original, refuse

_FIX = ("call diffprog.sciml.odeint(f, y0, t, *params, method='dopri5') directly (f(y, t, "
        "*params), SciPy's odeint order), which returns the solution at the times t")
_ODEINT_TOL = 1.49012e-8


def _state(y0):
    """SciPy's state: y0 flattened to a float64 vector."""
    y0 = operand(y0)
    y0 = y0 if isinstance(y0, Tracer) else np.asarray(y0, dtype=np.float64)
    y0 = npa.astype(y0, np.float64) if y0.dtype != np.float64 else y0
    return npa.reshape(y0, (-1,))


def odeint(func, y0, t, args=(), Dfun=None, col_deriv=0, full_output=0, ml=None, mu=None,
           rtol=None, atol=None, tcrit=None, h0=0.0, hmax=0.0, hmin=0.0, ixpr=0, mxstep=0,
           mxhnil=0, mxordn=12, mxords=5, printmessg=0, tfirst=False):
    """scipy.integrate.odeint on traced values: diffprog.sciml.odeint (dopri5) with
    SciPy's tolerances. Dfun, banded Jacobians and LSODA's step controls (h0, hmax,
    hmin, mxstep, ...) steer SciPy's own solver and are not used."""
    from ..sciml import odeint as solve
    if full_output:
        raise refuse("scipy.integrate.odeint(..., full_output=True)",
                     "LSODA's diagnostic dictionary has no counterpart", _FIX)()
    params = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    y0 = _state(y0)
    f = (lambda y, s, *p: func(s, y, *p)) if tfirst else func
    return solve(f, y0, t, *params, method="dopri5",
                 rtol=_ODEINT_TOL if rtol is None else float(rtol),
                 atol=_ODEINT_TOL if atol is None else float(np.max(atol)))


def _result(t, y):
    from scipy.integrate._ivp.ivp import OdeResult
    return OdeResult(t=t, y=y, sol=None, t_events=None, y_events=None, nfev=0, njev=0, nlu=0,
                     status=0, message="The solver successfully reached the end of the "
                     "integration interval (diffprog.sciml.odeint, dopri5).", success=True)


def solve_ivp(fun, t_span, y0, method="RK45", t_eval=None, dense_output=False, events=None,
              vectorized=False, args=None, **options):
    """scipy.integrate.solve_ivp on traced values, at the times ``t_eval`` (required)."""
    from ..sciml import odeint as solve
    if t_eval is None:
        raise refuse("scipy.integrate.solve_ivp without t_eval",
                     "SciPy returns its own step points, as many as its step control takes",
                     "pass t_eval=np.linspace(t0, t1, n) (the times you need), or " + _FIX)()
    if dense_output or events is not None:
        raise refuse("scipy.integrate.solve_ivp with dense_output or events",
                     "interpolants and event location have no counterpart", _FIX)()
    unknown = set(options) - {"rtol", "atol", "max_step", "first_step", "min_step"}
    if unknown:
        raise ArgumentValueError(f"scipy.integrate.solve_ivp: options {sorted(unknown)} are "
                                 f"not supported on traced values")
    params = () if args is None else (tuple(args) if isinstance(args, (tuple, list)) else (args,))
    rtol, atol = float(options.get("rtol", 1e-3)), float(np.max(options.get("atol", 1e-6)))
    t0, t1 = t_span
    t_eval = t_eval if isinstance(t_eval, Tracer) else np.asarray(t_eval, dtype=np.float64)
    backward = bool(t1 < t0)
    sign = -1.0 if backward else 1.0
    # integrate from t0 to every t_eval; backward in time through s = -t
    times = npa.concatenate([npa.reshape(np.asarray(t0, dtype=np.float64) if not
                                         isinstance(t0, Tracer) else t0, (1,)) * sign,
                             t_eval * sign])
    starts_at_t0 = not isinstance(t_eval, Tracer) and not isinstance(t0, Tracer) and \
        npa.shape(t_eval)[0] > 0 and float(t_eval[0]) == float(t0)
    if starts_at_t0:
        times = times[1:]

    def f(y, s, *p):
        return sign * fun(sign * s, y, *p)

    ys = solve(f, _state(y0), times, *params, method="dopri5", rtol=rtol, atol=atol)
    ys = ys if starts_at_t0 else ys[1:]
    return _result(t_eval, npa.transpose(ys))


def _odeint_traced(args, kwargs) -> bool:
    """odeint computes traced values: a traced argument, or a right-hand side closing
    over traced values (probed once at y0, t[0])."""
    if holds_tracer(args, kwargs):
        return True
    call = _bind(_odepack_signature(), args, kwargs)
    if call is None:
        return False
    y0 = np.asarray(call["y0"], dtype=np.float64).reshape(-1)
    t0 = float(np.asarray(call["t"], dtype=np.float64).reshape(-1)[0])
    extra = call.get("args", ())
    extra = tuple(extra) if isinstance(extra, (tuple, list)) else (extra,)
    probe = (t0, y0) if call.get("tfirst") else (y0, t0)
    return computes_traced(call["func"], *probe, *extra)


def _solve_ivp_traced(args, kwargs) -> bool:
    if holds_tracer(args, kwargs):
        return True
    call = _bind(_ivp_signature(), args, kwargs)
    if call is None:
        return False
    extra = call.get("args") or ()
    extra = tuple(extra) if isinstance(extra, (tuple, list)) else (extra,)
    return computes_traced(call["fun"], float(call["t_span"][0]),
                           np.asarray(call["y0"], dtype=np.float64).reshape(-1), *extra)


def _quad_traced(args, kwargs) -> bool:
    if holds_tracer(args, kwargs):
        return True
    call = _bind(_quad_signature(), args, kwargs)
    if call is None:
        return False
    a, b = float(call["a"]), float(call["b"])
    point = 0.5 * (a + b) if np.isfinite(a) and np.isfinite(b) else \
        (a + 1.0 if np.isfinite(a) else (b - 1.0 if np.isfinite(b) else 0.0))
    extra = call.get("args", ())
    extra = tuple(extra) if isinstance(extra, (tuple, list)) else (extra,)
    return computes_traced(call["func"], point, *extra)


_SIGNATURES: dict = {}


def _signature_of(name, fn):
    sig = _SIGNATURES.get(name)
    if sig is None:
        sig = _SIGNATURES[name] = inspect.signature(fn)
    return sig


def _odepack_signature():
    return _signature_of("odeint", odeint)


def _ivp_signature():
    return _signature_of("solve_ivp", solve_ivp)


def _quad_signature():
    from scipy.integrate import _quadpack_py
    return _signature_of("quad", original(_quadpack_py.quad))


def _bind(signature, args, kwargs) -> dict | None:
    """The call's arguments by name (with defaults); None when they do not fit (SciPy's
    own call then raises its error)."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


def install(module) -> None:
    from scipy.integrate import _ivp, _odepack_py
    from scipy.integrate import _quadpack_py
    divert(_odepack_py.odeint, odeint, "scipy.integrate.odeint",
           "routed to diffprog.sciml.odeint (dopri5, SciPy's tolerances)", when=_odeint_traced)
    divert(_ivp.ivp.solve_ivp, solve_ivp, "scipy.integrate.solve_ivp",
           "routed to diffprog.sciml.odeint (dopri5) at t_eval (required)",
           when=_solve_ivp_traced)
    divert(_quadpack_py.quad, refuse(
        "scipy.integrate.quad", "adaptive quadrature chooses its points from the values",
        "write the integral on a fixed grid with diffprog operations (np.sum(f(x) * w)), "
        "or as an ODE for diffprog.sciml.odeint"), "scipy.integrate.quad", when=_quad_traced)
