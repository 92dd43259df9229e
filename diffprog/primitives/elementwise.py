"""Elementwise entries: NumPy's ufuncs and Python's arithmetic operators, where, convert,
stop_gradient."""
from __future__ import annotations

import numpy as np

from ..ir import Aval, Eqn, Lit, Var, is_scalar_number
from ..transforms.batch import by, same_axes
from .core import (Case, Primitive, inside_unit_interval, is_inexact, normal, positive,
                   real_dtype, uniform)
from .rules import add_all, as_dtype, in_dtype_of, sum_to


def unary(name, ufunc, derivative, julia, *, operator=None, impl=None, numpy=None,
          domain=normal(3, 4), order=2, c=None, negation=False, complex_rules=False):
    """An elementwise function of one operand with derivative ``derivative(x, out)``
    (None: zero almost everywhere, as for floor). ``complex_rules``: the rules hold on
    complex values as written (JAX's convention): NumPy extends the function to complex
    values as a holomorphic one whose complex derivative ``derivative`` also spells (or,
    for round, as a piecewise constant one)."""
    def vjp(g, x, *, out):
        return (in_dtype_of(g * derivative(x, out), x),)

    def jvp(ts, x, *, out):
        return None if ts[0] is None else in_dtype_of(ts[0] * derivative(x, out), x)

    def zero_vjp(g, x, *, out):
        return (None,)

    def zero_jvp(ts, x, *, out):
        return None

    smooth = derivative is not None
    return Primitive(name, impl, ufunc=ufunc, operator=operator, numpy=numpy,
                     vjp=vjp if smooth else zero_vjp, jvp=jvp if smooth else zero_jvp,
                     julia=julia, elementwise=True, cases=[Case(domain, order=order)], c=c,
                     negation=negation, complex=complex_rules)


def binary(name, ufunc, partials, julia, *, operator=None, numpy=None, domain=None, order=2,
           identity=None, commutative=False, c=None, boundary=None, absorb_negation=None,
           complex_rules=False):
    """A broadcasting elementwise function of two operands with partial derivatives
    ``partials(x, y, out) -> (d/dx, d/dy)``; ``boundary`` (optional) makes inputs at its
    kinks, for a first-order test case; ``complex_rules`` as for :func:`unary` (for
    maximum and minimum: NumPy orders complex values lexicographically, and the rule
    selects the operand NumPy picks)."""
    def vjp(g, x, y, *, out):
        px, py = partials(x, y, out)
        return (_cotangent(g, px, x), _cotangent(g, py, y))

    def jvp(ts, x, y, *, out):
        px, py = partials(x, y, out)
        tx = None if ts[0] is None or px is None else ts[0] * px
        ty = None if ts[1] is None or py is None else ts[1] * py
        return in_dtype_of(add_all([tx, ty]), out)

    domain = domain or (lambda rng: [rng.standard_normal((3, 4)), rng.standard_normal((4,))])
    # (a boundary is a real one: moved off the real line, a tie of maximum becomes a jump)
    cases = [Case(domain, order=order)] + ([Case(boundary, order=1, complex=False)]
                                           if boundary else [])
    return Primitive(name, ufunc=ufunc, operator=operator, numpy=numpy, vjp=vjp, jvp=jvp,
                     julia=julia, elementwise=True, identity=identity, commutative=commutative,
                     cases=cases, c=c, absorb_negation=absorb_negation, complex=complex_rules)


def _cotangent(g, partial, x):
    """``g * partial`` summed to ``x``'s shape; None when x carries no derivative."""
    if partial is None or not is_inexact(np.result_type(x)):
        return None
    return in_dtype_of(sum_to(g * partial, np.shape(x)), x)


def nondiff(name, ufunc, julia, *, operator=None, nargs=2, domain=None, c=None):
    """Elementwise with a non-differentiable result (comparisons, logical and bitwise
    ops); example inputs from ``domain`` (default: standard normal floats)."""
    def floats(rng):
        return [rng.standard_normal((3, 4)) for _ in range(nargs)]
    return Primitive(name, ufunc=ufunc, operator=operator,
                     vjp=lambda g, *xs, out: (None,) * len(xs), jvp=lambda ts, *xs, out: None,
                     julia=julia, elementwise=True, differentiable=False,
                     cases=[Case(domain or floats)], c=c)


# ------------------------------------------------------------------ one operand

neg = unary("neg", np.negative, lambda x, y: -1.0, "-{0}", operator="-", c="(-{0})",
            negation=True, complex_rules=True)
exp = unary("exp", np.exp, lambda x, y: y, "exp.({0})", c="exp({0})", complex_rules=True)
log = unary("log", np.log, lambda x, y: 1.0 / x, "log.({0})", domain=positive(3, 4),
            c="log({0})", complex_rules=True)
log1p = unary("log1p", np.log1p, lambda x, y: 1.0 / (1.0 + x), "log1p.({0})",
              domain=positive(3, 4), c="log1p({0})", complex_rules=True)
expm1 = unary("expm1", np.expm1, lambda x, y: y + 1.0, "expm1.({0})", c="expm1({0})", complex_rules=True)
sqrt = unary("sqrt", np.sqrt, lambda x, y: 0.5 / y, "sqrt.({0})", domain=positive(3, 4),
             c="sqrt({0})", complex_rules=True)
# NumPy's own exp2/log2/log10/cbrt, not compositions of exp, log and pow: those are off by
# a few ulps where NumPy is exact (log10(1000) came out 2.9999999999999996, floor 2).
_LN2, _LN10 = float(np.log(2.0)), float(np.log(10.0))
exp2 = unary("exp2", np.exp2, lambda x, y: y * _LN2, "exp2.({0})", c="exp2({0})", complex_rules=True)
log2 = unary("log2", np.log2, lambda x, y: 1.0 / (x * _LN2), "log2.({0})",
             domain=positive(3, 4), c="log2({0})", complex_rules=True)
log10 = unary("log10", np.log10, lambda x, y: 1.0 / (x * _LN10), "log10.({0})",
              domain=positive(3, 4), c="log10({0})", complex_rules=True)
cbrt = unary("cbrt", np.cbrt, lambda x, y: 1.0 / (3.0 * y * y), "cbrt.({0})", c="cbrt({0})")
sin = unary("sin", np.sin, lambda x, y: np.cos(x), "sin.({0})", c="sin({0})", complex_rules=True)
cos = unary("cos", np.cos, lambda x, y: -np.sin(x), "cos.({0})", c="cos({0})", complex_rules=True)
tan = unary("tan", np.tan, lambda x, y: 1.0 + y * y, "tan.({0})",
            domain=inside_unit_interval(3, 4), c="tan({0})", complex_rules=True)
arcsin = unary("arcsin", np.arcsin, lambda x, y: 1.0 / np.sqrt(1.0 - x * x), "asin.({0})",
               domain=inside_unit_interval(3, 4), c="asin({0})", complex_rules=True)
arccos = unary("arccos", np.arccos, lambda x, y: -1.0 / np.sqrt(1.0 - x * x), "acos.({0})",
               domain=inside_unit_interval(3, 4), c="acos({0})", complex_rules=True)
arctan = unary("arctan", np.arctan, lambda x, y: 1.0 / (1.0 + x * x), "atan.({0})",
               c="atan({0})", complex_rules=True)
sinh = unary("sinh", np.sinh, lambda x, y: np.cosh(x), "sinh.({0})", c="sinh({0})", complex_rules=True)
cosh = unary("cosh", np.cosh, lambda x, y: np.sinh(x), "cosh.({0})", c="cosh({0})", complex_rules=True)
tanh = unary("tanh", np.tanh, lambda x, y: 1.0 - y * y, "tanh.({0})", c="tanh({0})", complex_rules=True)
arcsinh = unary("arcsinh", np.arcsinh, lambda x, y: 1.0 / np.sqrt(x * x + 1.0), "asinh.({0})",
                c="asinh({0})", complex_rules=True)
# 1 / (sqrt(x - 1) sqrt(x + 1)), not 1 / sqrt(x^2 - 1): the two differ in sign off the
# real axis (Re x < 0), where the principal arccosh follows the product
arccosh = unary("arccosh", np.arccosh, lambda x, y: 1.0 / (np.sqrt(x - 1.0) * np.sqrt(x + 1.0)),
                "acosh.({0})",
                domain=uniform(1.2, 3.0, 3, 4), c="acosh({0})", complex_rules=True)
arctanh = unary("arctanh", np.arctanh, lambda x, y: 1.0 / (1.0 - x * x), "atanh.({0})",
                domain=inside_unit_interval(3, 4), c="atanh({0})", complex_rules=True)

# |x| below this: sinc' from its Taylor series (the quotient cancels catastrophically and
# is 0/0 at 0); the series' terms left out are below 1e-19 there
_SINC_SERIES_BELOW = 1e-3


def _sinc_derivative(x, y):
    """d sinc(x)/dx = (cos(pi x) - sinc(x)) / x, and -(pi^2 x / 3)(1 - (pi x)^2 / 10 +
    (pi x)^4 / 280) near 0: exact there to every order the tests check (sinc''(0) =
    -pi^2 / 3)."""
    small = np.abs(x) < _SINC_SERIES_BELOW
    z = (np.pi * x) * (np.pi * x)
    series = -(np.pi * np.pi / 3.0) * x * (1.0 - z / 10.0 + z * z / 280.0)
    safe = np.where(small, 1.0, x)
    return np.where(small, series, (np.cos(np.pi * x) - y) / safe)


# np.sinc(x) = sin(pi x) / (pi x), 1 at 0 (not a ufunc; Julia's sinc is the same function)
sinc = unary("sinc", None, _sinc_derivative, "sinc.({0})", impl="xp.sinc({0})", numpy=np.sinc, complex_rules=True)
sinc.cases += (Case(lambda rng: [np.array([0.0, 1e-4, -5e-4, 2e-3, -0.5, 1.0, 1.5])]),)
def _abs_vjp(g, x, *, out):
    return (in_dtype_of(g * _abs_derivative(x, out), x),)


def _abs_jvp(ts, x, *, out):
    return None if ts[0] is None else in_dtype_of(ts[0] * _abs_derivative(x, out), out)


def _abs_derivative(x, out):
    """sign(x) on reals; on complex z, |z| is not holomorphic: d|z| = Re(conj(z) dz) / |z|,
    so the cotangent is g conj(z) / |z| (JAX's convention) and the tangent its real part
    (in_dtype_of); 0 at z = 0, where |z| is a cone, as sign(0) is."""
    if not np.issubdtype(np.result_type(x), np.complexfloating):
        return np.sign(x)
    return np.conj(x) / np.where(out == 0, 1.0, out)


abs_ = Primitive("abs", ufunc=np.absolute, numpy=(np.absolute, np.fabs), vjp=_abs_vjp,
                 jvp=_abs_jvp, julia="abs.({0})", elementwise=True, c="fabs({0})",
                 complex=True, cases=[Case(normal(3, 4), order=1)])
def _sign_vjp(g, x, *, out):
    if not np.issubdtype(np.result_type(x), np.complexfloating):
        return (None,)  # a step on real values
    r = np.abs(x)
    safe = np.where(r == 0, 1.0, r)
    # sign(z) = z / |z|: d sign = (dz - s Re(conj(s) dz)) / |z|, so in JAX's convention
    # the cotangent is (g - Re(g s) conj(s)) / |z|; 0 at z = 0 (sign(0) is 0 there)
    return (np.where(r == 0, 0.0, (g - np.real(g * out) * np.conj(out)) / safe),)


def _sign_jvp(ts, x, *, out):
    if ts[0] is None or not np.issubdtype(np.result_type(x), np.complexfloating):
        return None
    r = np.abs(x)
    safe = np.where(r == 0, 1.0, r)
    t = ts[0]
    return np.where(r == 0, 0.0, (t - out * np.real(np.conj(out) * t)) / safe)


# sign: a step on real values; on complex values NumPy 2's z / |z|, smooth away from 0
sign = Primitive("sign", ufunc=np.sign, vjp=_sign_vjp, jvp=_sign_jvp, julia="sign.({0})",
                 elementwise=True, c="dp_sign({0})", complex=True,
                 cases=[Case(normal(3, 4), order=1)])
floor = unary("floor", np.floor, None, "floor.({0})", order=1, c="floor({0})")
ceil = unary("ceil", np.ceil, None, "ceil.({0})", order=1, c="ceil({0})")
# np.round is no ufunc; np.rint is the ufunc that rounds the same way (half to even)
round_ = unary("round", None, None, "round.({0})", impl="xp.round({0})", numpy=np.rint, order=1,
               complex_rules=True)  # piecewise constant on complex values too: zero
trunc = unary("trunc", np.trunc, None, "trunc.({0})", order=1, c="trunc({0})")


def _integer_pow_derivative(x, n):
    return n * x ** (n - 1) if n != 1 else 1.0


# NumPy's ``x ** n`` for an array x takes these shortcuts (fast_scalar_power). x ** 1
# reaches integer_pow only for complex x (the front end returns a real x itself), where
# NumPy computes the power: np.power(x, 1), whose -0-0j ** 1 is 0+0j (np.positive keeps
# the signs)
_POWER_SHORTCUTS = {2: np.square, -1: np.reciprocal}


def _power_as_ufunc(n):
    return (_POWER_SHORTCUTS[n], ()) if n in _POWER_SHORTCUTS else (np.power, (n,))


# x ** n for a Python int n (np.power composes it; exact for negative x)
integer_pow = Primitive(
    "integer_pow", "{0} ** {n}", operator="**", elementwise=True, ufunc_call=_power_as_ufunc,
    vjp=lambda g, x, *, out, n: (in_dtype_of(g * _integer_pow_derivative(x, n), x),),
    jvp=lambda ts, x, *, out, n: None if ts[0] is None else in_dtype_of(
        ts[0] * _integer_pow_derivative(x, n), x),
    julia="{0} .^ {n}", c="dp_ipow({0}, {n})", complex=True,
    cases=[Case(normal(3, 4), {"n": 2}), Case(normal(3, 4), {"n": 3}),
           Case(positive(3, 4), {"n": -2})])


# ------------------------------------------------------------------ two operands

# Sign rules (transforms.simplify.fold_negations): how a sum, a difference and a product
# take in a negated operand. Reverse mode writes many negations (d cos = -sin, d(-x) =
# g * -1.0); on real floats these rewrites are exact (IEEE rounding is symmetric in sign,
# and x - y *is* x + (-y)). Each gives the equations replacing ``out = x op y``, or None.

def _absorb_in_sum(eqn, negated):
    """``x + (-a) -> x - a`` and ``(-a) + y -> y - a``."""
    x, y = eqn.inputs
    for a, b in ((y, x), (x, y)):
        inner = negated(a)
        if inner is not None:
            return [Eqn(sub, [b, inner], eqn.outputs)]
    return None


def _absorb_in_difference(eqn, negated):
    """``x - (-a) -> x + a``."""
    x, y = eqn.inputs
    inner = negated(y)
    return [Eqn(add, [x, inner], eqn.outputs)] if inner is not None else None


def _absorb_in_product(eqn, negated):
    """``x * -1 -> -x``; ``(-a) * c -> a * (-c)`` (c a scalar constant); ``(-a) * y ->
    -(a * y)`` (the negation moves on, maybe to vanish later)."""
    x, y = eqn.inputs
    out = eqn.outputs[0]
    for a, b in ((x, y), (y, x)):
        if is_scalar_number(b) and b.value == -1 and a.aval == out.aval:
            return [Eqn(neg, [a], [out])]
    for a, b in ((x, y), (y, x)):
        inner = negated(a)
        if inner is None:
            continue
        if _negatable(b):
            return [Eqn(mul, [inner, Lit(-b.value)], [out])]
        product = Var(out.aval)
        return [Eqn(mul, [inner, b] if a is x else [b, inner], [product]),
                Eqn(neg, [product], [out])]
    return None


def _negatable(atom) -> bool:
    """-c is exact and ``a * -c == -(a * c)`` bit for bit: a float, or a nonzero Python
    int (``-a * 0`` is -0.0 for positive a, ``a * -0`` is +0.0; NumPy ints can overflow)."""
    if not is_scalar_number(atom):
        return False
    v = atom.value
    return isinstance(v, (float, np.floating)) or (type(v) is int and v != 0)


add = binary("add", np.add, lambda x, y, o: (1.0, 1.0), "{0} .+ {1}", operator="+",
             identity={0: 0, 1: 0}, commutative=True, c="({0} + {1})",
             absorb_negation=_absorb_in_sum, complex_rules=True)
sub = binary("sub", np.subtract, lambda x, y, o: (1.0, -1.0), "{0} .- {1}", operator="-",
             identity={1: 0}, c="({0} - {1})", absorb_negation=_absorb_in_difference, complex_rules=True)
mul = binary("mul", np.multiply, lambda x, y, o: (y, x), "{0} .* {1}", operator="*",
             identity={0: 1, 1: 1}, commutative=True, c="({0} * {1})",
             absorb_negation=_absorb_in_product, complex_rules=True)
div = binary("div", np.true_divide, lambda x, y, o: (1.0 / y, -o / y), "{0} ./ {1}",
             operator="/", identity={1: 1},
             domain=lambda rng: [rng.standard_normal((3, 4)), rng.uniform(0.5, 2, (4,))],
             c="({0} / {1})", complex_rules=True)


def _pow_partials(x, y, out):
    if np.issubdtype(np.result_type(out), np.complexfloating) and \
            not np.issubdtype(np.result_type(x), np.complexfloating):
        # a real base with a complex exponent: d/dy is out * log(x) with log taken in the
        # complex result type (log(-2) is log 2 + i pi there, NaN in the real one)
        x_log = x * np.ones((), np.result_type(out))
    else:
        x_log = x
    safe_log = np.where(x_log == 0, 0.0, np.log(np.where(x_log == 0, 1.0, x_log)))
    return (y * x ** (y - 1.0), out * safe_log)


# np.power itself reaches the front end's power(), which picks integer_pow or this
pow_ = binary("pow", np.power, _pow_partials, "{0} .^ {1}", operator="**", numpy=(),
              domain=lambda rng: [rng.uniform(0.5, 2, (3, 4)), rng.uniform(-1, 2, (4,))],
              c="pow({0}, {1})", complex_rules=True)


def _chosen(wins, ties):
    """d max(x, y)/dx: 1 where x is the result, 1/2 at a tie -- the central difference of
    NumPy's function there (the mean of the one-sided derivatives; amax splits ties too,
    and so does the julia engine's DiffProg.npmaximum)."""
    return 1.0 * wins + 0.5 * ties


def _ties(rng):
    x = rng.standard_normal((3, 4))
    return [x, np.where(rng.uniform(size=(3, 4)) < 0.5, x, rng.standard_normal((3, 4)))]


maximum = binary("maximum", np.maximum,
                 lambda x, y, o: (_chosen(x > y, x == y), _chosen(x < y, x == y)),
                 "DiffProg.npmaximum({0}, {1})", order=1, c="dp_maximum({0}, {1})",
                 boundary=_ties, complex_rules=True)
minimum = binary("minimum", np.minimum,
                 lambda x, y, o: (_chosen(x < y, x == y), _chosen(x > y, x == y)),
                 "DiffProg.npminimum({0}, {1})", order=1, c="dp_minimum({0}, {1})",
                 boundary=_ties, complex_rules=True)
arctan2 = binary("arctan2", np.arctan2,
                 lambda y, x, o: (x / (x * x + y * y), -y / (x * x + y * y)),
                 "atan.({0}, {1})",
                 domain=lambda rng: [rng.standard_normal((3, 4)), rng.uniform(0.5, 2, (4,))],
                 c="atan2({0}, {1})")
# At x = y = 0 (the apex of a cone) central differences see 0: divide by 1 there, not 0.
hypot = binary("hypot", np.hypot,
               lambda x, y, o: (x / np.where(o == 0, 1.0, o), y / np.where(o == 0, 1.0, o)),
               "hypot.({0}, {1})", c="hypot({0}, {1})",
               boundary=lambda rng: [np.where(rng.uniform(size=(3, 4)) < 0.5, 0.0,
                                              rng.standard_normal((3, 4))), np.zeros(4)])
logaddexp = binary("logaddexp", np.logaddexp, lambda x, y, o: (np.exp(x - o), np.exp(y - o)),
                   "DiffProg.nplogaddexp({0}, {1})", c="dp_logaddexp({0}, {1})")
# log2(2^x + 2^y): the partials 2^(x - out), 2^(y - out) never overflow
_LOG2_JL = "log(2 * one(eltype({0})))"
logaddexp2 = binary("logaddexp2", np.logaddexp2,
                    lambda x, y, o: (np.exp2(x - o), np.exp2(y - o)),
                    f"DiffProg.nplogaddexp({{0}} .* {_LOG2_JL}, {{1}} .* {_LOG2_JL}) ./ {_LOG2_JL}")


def _between_multiples(rng):
    """x = (k + u) y with k a small integer and u in (0.1, 0.9): away from the jumps of
    fmod and remainder, on both sides of 0."""
    y = rng.uniform(0.5, 2.0, (4,))
    return [(rng.integers(-3, 3, (3, 4)) + rng.uniform(0.1, 0.9, (3, 4))) * y, y]


# C's fmod: x - trunc(x / y) y, the sign of x (remainder has the sign of y)
fmod = binary("fmod", np.fmod, lambda x, y, o: (1.0, -np.trunc(x / y)), "rem.({0}, {1})",
              order=1, domain=_between_multiples, c="fmod({0}, {1})")


def _heaviside_partials(x, h0, out):
    """0 almost everywhere in x (a step); in h0 (the value at x == 0): 1 where x == 0."""
    return None, 1.0 * (x == 0)


# heaviside(x, h0): 0 below 0, h0 at 0, 1 above, NaN at NaN
heaviside = binary(
    "heaviside", np.heaviside, _heaviside_partials,
    "ifelse.(isnan.({0}), {0} .+ zero.({1}), ifelse.({0} .== 0, {1} .+ zero.({0}), "
    "ifelse.({0} .> 0, one.({0} .+ {1}), zero.({0} .+ {1}))))", order=1,
    domain=lambda rng: [rng.standard_normal((3, 4)), rng.standard_normal((4,))])
remainder = binary("remainder", np.remainder, lambda x, y, o: (1.0, -np.floor(x / y)),
                   "mod.({0}, {1})", numpy=(np.remainder, np.mod), order=1,
                   domain=lambda rng: [rng.uniform(0.1, 0.9, (3, 4)) + 3.0, np.full((4,), 1.0)])
floor_divide = Primitive(
    "floor_divide", ufunc=np.floor_divide, operator="//", elementwise=True,
    vjp=lambda g, x, y, *, out: (None, None), jvp=lambda ts, x, y, *, out: None,
    julia="fld.({0}, {1})",
    cases=[Case(lambda rng: [rng.standard_normal((3, 4)) * 3, np.full((4,), 1.5)], order=1)])

# ------------------------------------------------------------------ tests and logic

less = nondiff("less", np.less, "{0} .< {1}", operator="<", c="isless({0}, {1})")
less_equal = nondiff("less_equal", np.less_equal, "{0} .<= {1}", operator="<=",
                     c="islessequal({0}, {1})")
greater = nondiff("greater", np.greater, "{0} .> {1}", operator=">", c="isgreater({0}, {1})")
greater_equal = nondiff("greater_equal", np.greater_equal, "{0} .>= {1}", operator=">=",
                        c="isgreaterequal({0}, {1})")
equal = nondiff("equal", np.equal, "{0} .== {1}", operator="==", c="({0} == {1})")
not_equal = nondiff("not_equal", np.not_equal, "{0} .!= {1}", operator="!=", c="({0} != {1})")
logical_and = nondiff("logical_and", np.logical_and, "({0} .!= 0) .& ({1} .!= 0)",
                      c="(({0} != 0) & ({1} != 0))")
logical_or = nondiff("logical_or", np.logical_or, "({0} .!= 0) .| ({1} .!= 0)",
                     c="(({0} != 0) | ({1} != 0))")
logical_xor = nondiff("logical_xor", np.logical_xor, "xor.({0} .!= 0, {1} .!= 0)",
                      c="(({0} != 0) ^ ({1} != 0))")
logical_not = nondiff("logical_not", np.logical_not, ".!({0} .!= 0)", nargs=1, c="({0} == 0)")


def _integers(nargs):
    def make(rng):
        return [rng.integers(-50, 50, (3, 4)) for _ in range(nargs)]
    return make


# Bitwise ops (``&``, ``|``, ``^``, ``~`` on integers and booleans): the result keeps
# NumPy's integer dtype, unlike the logical ops' bool.
# Their C spellings are for bool operands (0/1) only: compiled kernels take no integers.
bitwise_and = nondiff("bitwise_and", np.bitwise_and, "{0} .& {1}", domain=_integers(2),
                      c="({0} & {1})")
bitwise_or = nondiff("bitwise_or", np.bitwise_or, "{0} .| {1}", domain=_integers(2),
                     c="({0} | {1})")
bitwise_xor = nondiff("bitwise_xor", np.bitwise_xor, "xor.({0}, {1})", domain=_integers(2),
                      c="({0} ^ {1})")
invert = nondiff("invert", np.invert, ".~({0})", nargs=1, domain=_integers(1), c="(!{0})")

isfinite = nondiff("isfinite", np.isfinite, "isfinite.({0})", nargs=1, c="(isfinite({0}) != 0)")
isnan = nondiff("isnan", np.isnan, "isnan.({0})", nargs=1, c="(isnan({0}) != 0)")
isinf = nondiff("isinf", np.isinf, "isinf.({0})", nargs=1, c="(isinf({0}) != 0)")


# ------------------------------------------------------------------ choice, dtype, gradients

def _where_vjp(g, c, x, y, *, out):
    zero = np.zeros((), g.dtype)
    return (None, _cotangent(np.where(c, g, zero), 1.0, x),
            _cotangent(np.where(c, zero, g), 1.0, y))


def _where_jvp(ts, c, x, y, *, out):
    if ts[1] is None and ts[2] is None:
        return None
    tx = ts[1] if ts[1] is not None else np.zeros((), out.dtype)
    ty = ts[2] if ts[2] is not None else np.zeros((), out.dtype)
    return in_dtype_of(np.broadcast_to(np.where(c, tx, ty), out.shape), out)


where = Primitive(
    "where", "xp.where({0}, {1}, {2})", elementwise=True, vjp=_where_vjp, jvp=_where_jvp,
    julia="ifelse.({0}, {1}, {2})", c="({0} ? {1} : {2})", complex=True,
    cases=[Case(lambda rng: [rng.standard_normal((3, 4)) > 0, rng.standard_normal((3, 4)),
                             rng.standard_normal((4,))], order=1)])

# complex -> real keeps the real part (NumPy warns): its rules are those of np.real
convert = Primitive(
    "convert", "xp.asarray({0}, dtype={dtype})", lambda x, *, dtype: Aval(x.shape, np.dtype(dtype)),
    vjp=lambda g, x, *, out, dtype: ((as_dtype(g, x.dtype) if is_inexact(np.result_type(x)) else None),),
    jvp=lambda ts, x, *, out, dtype: (None if ts[0] is None or not is_inexact(np.dtype(dtype))
                                      else as_dtype(ts[0], dtype)),
    julia="DiffProg.convert_eltype({jdtype}, {0})", complex=True,
    cases=[Case(normal(3), {"dtype": np.dtype("float32")}, rtol=1e-2, complex=False),
           Case(normal(3), {"dtype": np.dtype("complex128")})],
    batch=by(same_axes, lambda: convert))

# A copy NumPy makes (x.copy(), np.copy, np.array(x), astype to the same dtype, +x, x ** 1,
# np.ascontiguousarray), kept where it can matter: NumPy lays the copy out as ``order``
# says (a later sum along an axis walks that memory), and its SIMD loops (exp on AVX-512)
# may give a strided or reversed array other bits than a contiguous copy of it, so
# ``np.exp(x.copy())`` of ``x[::-1]`` is not ``np.exp(x[::-1])`` bit for bit.
copy = Primitive(
    "copy", "xp.array({0}, copy=True, order={order})", lambda x, *, order: x,
    vjp=lambda g, x, *, out, order: (g,), jvp=lambda ts, x, *, out, order: ts[0],
    julia="copy({0})", complex=True,
    cases=[Case(normal(3, 4), {"order": "C"}), Case(normal(3, 4), {"order": "K"}),
           Case(normal(3, 4), {"order": "F"})],
    batch=by(same_axes, lambda: copy))

stop_gradient = Primitive(
    "stop_gradient", "{0}", lambda x: x, vjp=lambda g, x, *, out: (None,),
    jvp=lambda ts, x, *, out: None, julia="DiffProg.stop_gradient({0})", complex=True,
    differentiable=False, cases=[Case(normal(3))], batch=by(same_axes, lambda: stop_gradient))


# ------------------------------------------------------------------ complex parts

def _complex_cases(rng):
    return [rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4))]


def _part(name, impl, cotangent, tangent, julia, numpy):
    """np.real / np.imag of a complex array (a real array takes the front end's
    shortcuts, numpy_api.real/imag): real-linear, not holomorphic. ``cotangent(g)`` is
    the complex cotangent of the input for a real cotangent g (JAX: real -> g,
    imag -> -i g), ``tangent(t)`` the part of a complex tangent."""
    return Primitive(
        name, impl, lambda x: Aval(x.shape, real_dtype(x.dtype), x.weak), numpy=numpy,
        vjp=lambda g, x, *, out: (as_dtype(cotangent(g), x.dtype),),
        jvp=lambda ts, x, *, out: None if ts[0] is None else tangent(ts[0]),
        julia=julia, complex=True, cases=[Case(_complex_cases)],
        batch=by(same_axes, lambda: PRIMITIVES_BY_PART[name]))


real = _part("real", "xp.real({0})", lambda g: g, np.real, "real.({0})", ())
imag = _part("imag", "xp.imag({0})", lambda g: -1j * g, np.imag, "imag.({0})", ())
PRIMITIVES_BY_PART = {"real": real, "imag": imag}

# conj is its own transpose: d conj(z) = conj(dz), and Re(c conj(dz)) = Re(conj(c) dz)
conj = Primitive(
    "conj", ufunc=np.conjugate, numpy=(), elementwise=True,
    vjp=lambda g, x, *, out: (np.conj(g),),
    jvp=lambda ts, x, *, out: None if ts[0] is None else np.conj(ts[0]),
    julia="conj.({0})", complex=True, cases=[Case(_complex_cases)])


def _from_parts_impl(xp, re, im):
    """``re + i im`` exactly: the parts written into a complex array (``re + im * 1j``
    would multiply: an infinite imaginary part makes a NaN real part)."""
    re, im = xp.asarray(re), xp.asarray(im)
    dtype = xp.result_type(re.dtype, im.dtype, xp.complex64)
    out = xp.empty(xp.broadcast_shapes(re.shape, im.shape), dtype)
    out.real, out.imag = re, im
    return out if out.ndim else out[()]


def _from_parts_shape(re, im):
    from .core import broadcast_shapes
    dtype = np.result_type(re.dtype, im.dtype, np.complex64)
    return Aval(broadcast_shapes(re.shape, im.shape), dtype)


# complex(re, im) (JAX's lax.complex): for composites that build complex values from
# parts (np.nan_to_num, np.interp, np.pad of complex values). In JAX's convention the
# cotangent c of re + i im gives re Re(c) and im -Im(c); its tangent is t_re + i t_im.
from_parts = Primitive(
    "complex", _from_parts_impl, _from_parts_shape, numpy=(),
    vjp=lambda g, re, im, *, out: (_cotangent(np.real(g), 1.0, re), _cotangent(-np.imag(g), 1.0, im)),
    jvp=lambda ts, re, im, *, out: add_all([
        None if ts[0] is None else as_dtype(ts[0], out.dtype),
        None if ts[1] is None else 1j * ts[1]]),
    julia="complex.({0}, {1})", complex=True, elementwise=True,
    cases=[Case(lambda rng: [rng.standard_normal((3, 4)), rng.standard_normal((4,))],
                complex=False)])
