"""scipy.special entries: the special functions scientists call inside the functions they
differentiate (erf, gammaln, digamma, expit, xlogy, the Bessel functions i0/i1, the normal
distribution's ndtr/log_ndtr/ndtri, the incomplete gamma and beta functions, ...).

SciPy stays optional. This module imports no SciPy: an entry computes with
``scipy.special`` (NumPy engine) or ``cupyx.scipy.special`` (CuPy engine), imported when
it first runs, and the table holds these entries only where SciPy is importable (see
:data:`AVAILABLE`; :mod:`diffprog.primitives` imports this module, which defines nothing
otherwise). The SciPy ufuncs reach the entries through the NumPy protocol
(``Tracer.__array_ufunc__``): :func:`bind_scipy_ufuncs` adds them to the table's NumPy
bindings once ``scipy.special`` is loaded (:mod:`diffprog.scipy_api` calls it), without
importing SciPy for users who never do.

Derivatives that have no closed form (the incomplete gamma and beta functions and
Student's t distribution function with respect to their shape parameters) are refused,
not approximated: their cotangent is :data:`refused_derivative`, which stops the program
with :class:`~diffprog.errors.NotDifferentiableError` when (and only when) that derivative
is computed. The derivatives with respect to ``x`` are exact.

Julia spellings use SpecialFunctions.jl through ``DiffProg.SpecialFunctions`` and the
scalar helpers of ``julia/src/special.jl``; functions whose Julia derivative rules do not
exist (gamma_inc and beta_inc have no Zygote/ForwardDiff rules) are ``Unsupported``.
"""
from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np

from ..errors import NotDifferentiableError, UnsupportedFunctionError
from ..ir import Aval
from ..tracing import Tracer
from .core import Case, NUMPY_BINDINGS, Binding, Primitive, Unsupported, is_inexact, normal, uniform
from .rules import add_all, in_dtype_of, shape_of, sum_to

#: SciPy is importable here: the entries are defined (tests of the table include them)
AVAILABLE = importlib.util.find_spec("scipy") is not None

_SQRT_PI = math.sqrt(math.pi)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

#: entry name -> the scipy.special function it computes (the error messages' names)
SCIPY_NAMES: dict[str, str] = {}

# ------------------------------------------------------------------ the library per engine

_MODULES: dict = {}


def special_module(xp):
    """``scipy.special`` for the NumPy engine, ``cupyx.scipy.special`` for CuPy."""
    name = getattr(xp, "__name__", "numpy")
    module = _MODULES.get(name)
    if module is None:
        if name == "cupy":
            import cupyx.scipy.special as module
        else:
            import scipy.special as module
        _MODULES[name] = module
    return module


def _library_call(function: str):
    """``impl(xp, *operands)``: ``function`` of the engine's special-function library."""
    def impl(xp, *args):
        fn = getattr(special_module(xp), function, None)
        if fn is None:
            raise UnsupportedFunctionError(
                f"scipy.special.{function} has no counterpart in {special_module(xp).__name__} "
                f"(the {getattr(xp, '__name__', 'array')} engine's special functions). Fix: run "
                f"this program on the numpy engine.")
        if getattr(xp, "__name__", "numpy") == "cupy":
            args = [xp.asarray(a) for a in args]
        return fn(*args)
    impl.__name__ = f"scipy_special_{function}"
    impl.__qualname__ = impl.__name__
    return impl


# ------------------------------------------------------------------ refused derivatives

def _refuse_impl(xp, x, *, message, refuse):
    if refuse:
        raise NotDifferentiableError(message)
    return x


def _refuse_vjp(g, x, *, out, message, refuse):
    return (refused_derivative(g, message=message, refuse=refuse),)


def _refuse_jvp(ts, x, *, out, message, refuse):
    return None if ts[0] is None else refused_derivative(ts[0], message=message, refuse=refuse)


def refused(x, message: str):
    """The derivative with respect to ``x`` that has no closed form: a value that stops the
    program with ``message`` when it is computed (dead-code elimination drops it when no
    one asks for it), None when ``x`` carries no derivative (a constant, an integer)."""
    if not isinstance(x, Tracer) or not is_inexact(x.dtype):
        return None
    return refused_derivative(x, message=message, refuse=True)


def _no_closed_form(function: str, argument: str, position: str) -> str:
    return (f"the derivative of scipy.special.{function} with respect to {argument} (its "
            f"{position} argument) has no closed form, and diffprog does not approximate it. "
            f"Fix: differentiate with respect to the other arguments only (pass {argument} "
            f"as a constant, or through dp.stop_gradient).")


# ------------------------------------------------------------------ entry makers

def _special(name, function, nargs, partials, julia, cases, *, scipy_name=None):
    """An elementwise entry computing ``scipy.special.<function>`` of ``nargs`` operands
    with ``partials(*xs, out) -> one partial derivative per operand`` (None: zero; a
    string: that derivative is refused with the string as the reason)."""
    def vjp(g, *xs, out):
        cts = []
        for x, p in zip(xs, partials(*xs, out)):
            if isinstance(p, str):
                cts.append(refused(x, p))
            elif p is None or not is_inexact(np.result_type(x)):
                cts.append(None)
            else:
                cts.append(in_dtype_of(sum_to(g * p, shape_of(x)), x))
        return tuple(cts)

    def jvp(ts, *xs, out):
        terms = []
        for t, x, p in zip(ts, xs, partials(*xs, out)):
            if t is None or p is None:
                continue
            if isinstance(p, str):
                term = refused(x, p)
                terms.append(None if term is None else np.broadcast_to(term, out.shape))
            else:
                terms.append(t * p)
        total = add_all(terms)
        return None if total is None else in_dtype_of(total, out)

    SCIPY_NAMES[name] = f"scipy.special.{scipy_name or function}"
    return Primitive(name, _library_call(function), vjp=vjp, jvp=jvp, julia=julia,
                     elementwise=True, numpy=(), cases=cases)


def _unary(name, derivative, julia, domain, *, function=None, order=2, rtol=1e-5):
    """One operand, derivative ``derivative(x, out)``."""
    return _special(name, function or name, 1, lambda x, out: (derivative(x, out),), julia,
                    [Case(domain, order=order, rtol=rtol)])


def _sf(function: str) -> str:
    """A broadcast SpecialFunctions.jl call over the equation's operands."""
    return f"DiffProg.SpecialFunctions.{function}.({{args}})"


def _helper(function: str) -> str:
    """A broadcast scalar helper of julia/src/special.jl over the equation's operands."""
    return f"DiffProg.{function}.({{args}})"


def _away_from_zero(low, high, *shape):
    """Cases: magnitudes in [low, high) with random signs (kinks at 0 avoided)."""
    return lambda rng: [rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)]


def _integers(low, high, *shape):
    """An integer operand: its derivative is not tested (a shape parameter)."""
    return lambda rng: rng.integers(low, high, shape)


def _safe_divide(x, y):
    """``x / y`` with 0 where ``x`` is 0 (the limit of ``xlogy``'s partials there)."""
    zero = x == 0
    return np.where(zero, 0.0, x / np.where(zero, 1.0, y))


if AVAILABLE:
    # ------------------------------------------------------------ refusal (see refused())
    refused_derivative = Primitive(
        "refused_derivative", _refuse_impl, lambda x, **params: Aval(x.shape, x.dtype),
        vjp=_refuse_vjp, jvp=_refuse_jvp,
        julia=Unsupported("refused_derivative stops a program with a Python exception (a "
                          "derivative without a closed form); only the Python engines raise it"),
        cases=[Case(normal(3, 4), {"message": "example", "refuse": False})])

    # ------------------------------------------------------------ error function family
    erf = _unary("erf", lambda x, y: (2.0 / _SQRT_PI) * np.exp(-x * x), _sf("erf"), normal(3, 4))
    erfc = _unary("erfc", lambda x, y: (-2.0 / _SQRT_PI) * np.exp(-x * x), _sf("erfc"),
                  normal(3, 4))
    erfcx = _unary("erfcx", lambda x, y: 2.0 * x * y - 2.0 / _SQRT_PI, _sf("erfcx"),
                   uniform(-1.5, 3.0, 3, 4))
    erfinv = _unary("erfinv", lambda x, y: (_SQRT_PI / 2.0) * np.exp(y * y), _sf("erfinv"),
                    uniform(-0.9, 0.9, 3, 4))
    erfcinv = _unary("erfcinv", lambda x, y: (-_SQRT_PI / 2.0) * np.exp(y * y),
                     _sf("erfcinv"), uniform(0.1, 1.9, 3, 4))

    # ------------------------------------------------------------ gamma function family
    gammaln = _special("gammaln", "gammaln", 1, lambda x, y: (digamma(x),), _helper("npgammaln"),
                       [Case(uniform(0.5, 4.0, 3, 4)),
                        Case(uniform(-2.9, -2.1, 3, 4))])  # log|Gamma|: a negative branch
    gamma = _special("gamma", "gamma", 1, lambda x, y: (y * digamma(x),), _sf("gamma"),
                     [Case(uniform(0.5, 3.0, 3, 4)), Case(uniform(-1.9, -1.1, 3, 4))])
    digamma = _special("digamma", "digamma", 1, lambda x, y: (polygamma(1, x),),
                       _sf("digamma"), [Case(uniform(0.5, 4.0, 3, 4))])
    # polygamma(n, x): scipy.special.polygamma is Python code (diffprog.scipy_api diverts it)
    polygamma = _special(
        "polygamma", "polygamma", 2, lambda n, x, y: (None, polygamma(n + 1, x)),
        "DiffProg.SpecialFunctions.polygamma.({0}, {1})",
        [Case(lambda rng: [_integers(0, 4, 3, 4)(rng), rng.uniform(0.5, 3.0, (3, 4))]),
         Case(lambda rng: [np.array(1), rng.uniform(0.5, 3.0, (4,))])])
    betaln = _special(
        "betaln", "betaln", 2,
        lambda a, b, y: (digamma(a) - digamma(a + b), digamma(b) - digamma(a + b)),
        _sf("logbeta"),
        [Case(lambda rng: [rng.uniform(0.5, 3.0, (3, 4)), rng.uniform(0.5, 3.0, (4,))])])

    # ------------------------------------------------------------ logistic
    expit = _unary("expit", lambda x, y: y * (1.0 - y), _helper("npexpit"), normal(3, 4))
    logit = _unary("logit", lambda x, y: 1.0 / (x * (1.0 - x)), _helper("nplogit"),
                   uniform(0.05, 0.95, 3, 4))
    log_expit = _unary("log_expit", lambda x, y: expit(-x), _helper("nplog_expit"),
                       lambda rng: [3.0 * rng.standard_normal((3, 4))])

    # ------------------------------------------------------------ x log y
    xlogy = _special(
        "xlogy", "xlogy", 2, lambda x, y, out: (np.log(y), _safe_divide(x, y)),
        _helper("npxlogy"),
        [Case(lambda rng: [rng.standard_normal((3, 4)), rng.uniform(0.5, 2.0, (4,))]),
         Case(lambda rng: [np.where(rng.uniform(size=(3, 4)) < 0.5, 0.0,
                                    rng.standard_normal((3, 4))), rng.uniform(0.5, 2.0, (3, 4))])])
    xlog1py = _special(
        "xlog1py", "xlog1py", 2, lambda x, y, out: (np.log1p(y), _safe_divide(x, 1.0 + y)),
        _helper("npxlog1py"),
        [Case(lambda rng: [rng.standard_normal((3, 4)), rng.uniform(-0.5, 2.0, (4,))])])

    # ------------------------------------------------------------ modified Bessel functions
    def _i1_derivative(x, y):
        zero = x == 0
        return np.where(zero, 0.5, i0(x) - y / np.where(zero, 1.0, x))

    def _i1e_derivative(x, y):
        zero = x == 0
        return np.where(zero, 0.5, i0e(x) - y * (np.sign(x) + 1.0 / np.where(zero, 1.0, x)))

    i0 = _unary("i0", lambda x, y: i1(x), "DiffProg.SpecialFunctions.besseli.(0, {0})",
                normal(3, 4))
    i1 = _unary("i1", _i1_derivative, "DiffProg.SpecialFunctions.besseli.(1, {0})",
                normal(3, 4))
    i0e = _unary("i0e", lambda x, y: i1e(x) - np.sign(x) * y,
                 "DiffProg.SpecialFunctions.besselix.(0, {0})", _away_from_zero(0.2, 3.0, 3, 4))
    i1e = _unary("i1e", _i1e_derivative, "DiffProg.SpecialFunctions.besselix.(1, {0})",
                 _away_from_zero(0.2, 3.0, 3, 4))

    # ------------------------------------------------------------ the normal distribution
    ndtr = _unary("ndtr", lambda x, y: np.exp(-0.5 * x * x) / _SQRT_2PI, _helper("npndtr"),
                  lambda rng: [2.0 * rng.standard_normal((3, 4))])
    log_ndtr = _unary("log_ndtr", lambda x, y: np.exp(-0.5 * x * x - _LOG_SQRT_2PI - y),
                      _helper("nplog_ndtr"), lambda rng: [4.0 * rng.standard_normal((3, 4))])
    ndtri = _unary("ndtri", lambda x, y: _SQRT_2PI * np.exp(0.5 * y * y), _helper("npndtri"),
                   uniform(0.05, 0.95, 3, 4))

    # ------------------------------------------------------------ incomplete gamma and beta
    _NO_JULIA_RULE = ("scipy.special.{0} has no Julia spelling with derivative rules "
                      "(SpecialFunctions.{1} has no Zygote/ForwardDiff rule); run it on the "
                      "numpy or cupy engine")

    def _gamma_density(a, x):
        """d/dx of the regularized lower incomplete gamma function P(a, x)."""
        return np.exp(xlogy(a - 1.0, x) - x - gammaln(a))

    def _beta_density(a, b, x):
        """d/dx of the regularized incomplete beta function I_x(a, b)."""
        return np.exp(xlogy(a - 1.0, x) + xlog1py(b - 1.0, -x) - betaln(a, b))

    def _t_density(df, t):
        """d/dt of Student's t distribution function with ``df`` degrees of freedom."""
        half = 0.5 * (df + 1.0)
        return np.exp(gammaln(half) - gammaln(0.5 * df) - 0.5 * np.log(df * np.pi)
                      - half * np.log1p(t * t / df))

    def _shape_and_x(rng):
        return [_integers(1, 5, 3, 4)(rng), rng.uniform(0.3, 4.0, (3, 4))]

    gammainc = _special(
        "gammainc", "gammainc", 2,
        lambda a, x, out: (_no_closed_form("gammainc", "a", "first"), _gamma_density(a, x)),
        Unsupported(_NO_JULIA_RULE.format("gammainc", "gamma_inc")), [Case(_shape_and_x)])
    gammaincc = _special(
        "gammaincc", "gammaincc", 2,
        lambda a, x, out: (_no_closed_form("gammaincc", "a", "first"), -_gamma_density(a, x)),
        Unsupported(_NO_JULIA_RULE.format("gammaincc", "gamma_inc")), [Case(_shape_and_x)])

    def _beta_operands(rng):
        return [_integers(1, 5, 3, 4)(rng), _integers(1, 5, 4)(rng), rng.uniform(0.1, 0.9, (3, 4))]

    betainc = _special(
        "betainc", "betainc", 3,
        lambda a, b, x, out: (_no_closed_form("betainc", "a", "first"),
                              _no_closed_form("betainc", "b", "second"), _beta_density(a, b, x)),
        Unsupported(_NO_JULIA_RULE.format("betainc", "beta_inc")), [Case(_beta_operands)])
    betaincc = _special(
        "betaincc", "betaincc", 3,
        lambda a, b, x, out: (_no_closed_form("betaincc", "a", "first"),
                              _no_closed_form("betaincc", "b", "second"), -_beta_density(a, b, x)),
        Unsupported(_NO_JULIA_RULE.format("betaincc", "beta_inc")), [Case(_beta_operands)])
    stdtr = _special(
        "stdtr", "stdtr", 2,
        lambda df, t, out: (_no_closed_form("stdtr", "df", "first"), _t_density(df, t)),
        Unsupported(_NO_JULIA_RULE.format("stdtr", "beta_inc")),
        [Case(lambda rng: [_integers(1, 8, 3, 4)(rng), 2.0 * rng.standard_normal((3, 4))])])

    #: scipy.special ufunc name -> entry (psi is digamma's other name, the same ufunc)
    UFUNC_ENTRIES = {
        "erf": erf, "erfc": erfc, "erfcx": erfcx, "erfinv": erfinv, "erfcinv": erfcinv,
        "gammaln": gammaln, "gamma": gamma, "digamma": digamma, "psi": digamma,
        "betaln": betaln, "expit": expit, "logit": logit, "log_expit": log_expit,
        "xlogy": xlogy, "xlog1py": xlog1py, "i0": i0, "i1": i1, "i0e": i0e, "i1e": i1e,
        "ndtr": ndtr, "log_ndtr": log_ndtr, "ndtri": ndtri, "gammainc": gammainc,
        "gammaincc": gammaincc, "betainc": betainc, "betaincc": betaincc, "stdtr": stdtr,
    }
else:  # pragma: no cover - the test extra installs SciPy
    UFUNC_ENTRIES = {}


def ufunc_name(ufunc) -> str:
    """How users spell ``ufunc``: ``np.sin``, ``scipy.special.jv`` (error messages)."""
    name = ufunc.__name__
    scipy_special = sys.modules.get("scipy.special")
    if getattr(np, name, None) is not ufunc and scipy_special is not None \
            and getattr(scipy_special, name, None) is ufunc:
        return f"scipy.special.{name}"
    return f"np.{name}"


def bind_scipy_ufuncs() -> None:
    """Bind the scipy.special ufuncs to their entries (the NumPy protocol hands a ufunc
    called on a traced value to the table's binding). Imports scipy.special: called once
    it is loaded."""
    if not AVAILABLE:
        return
    import scipy.special as sc
    for function, prim in UFUNC_ENTRIES.items():
        ufunc = getattr(sc, function, None)
        if ufunc is not None and ufunc not in NUMPY_BINDINGS:
            NUMPY_BINDINGS[ufunc] = Binding(prim, prim.bind)
