"""THE primitive table: one entry per primitive, every rule in one place.

Each :class:`Primitive` holds
  * ``impl``   -- a source template over ``xp`` (numpy or cupy) such as ``"xp.sin({0})"``
                  (inputs are ``{0}``, ``{1}``..., all inputs ``{args}``, params by name),
                  or a callable ``impl(xp, *inputs, **params)``;
  * ``shape``  -- the abstract-evaluation rule ``(*avals, **params) -> Aval``;
  * ``vjp``    -- ``(g, *inputs, out=..., **params) -> cotangent per input`` (None = zero);
  * ``jvp``    -- ``(tangents, *inputs, out=..., **params) -> output tangent`` (None = zero);
  * ``julia``  -- its Julia spelling: a template over reversed axes (operands ``{0}``,
                  ``{args}``, ``{rest}``, params by name, and the derived placeholders of
                  :func:`diffprog.engines.julia.derived_placeholders`: ``{jaxes}``,
                  ``{jaxis}``, ``{jshape}``, ``{jperm}``, ``{jpad_width}``, ``{jdtype}``,
                  ``{jout}``), a callable ``(eqn, jl) -> template | Unsupported`` where the
                  spelling depends on shapes, or ``Unsupported(reason)``;
  * ``numpy``  -- the NumPy callables it implements directly (with an optional adapter);
  * ``c``      -- (elementwise only, optional) its C spelling on float64/bool scalars for
                  the numpy engine's compiled kernels (:mod:`diffprog.engines.ckernel`):
                  operands ``{0}``, ``{1}``..., params by name; ``dp_*`` helpers live in
                  that module's C preamble. It is used only after a check at run time
                  that it reproduces ``impl`` bit for bit on this machine;
  * ``cases``  -- example inputs on the primitive's domain, from which tests are generated.

Rules are written with NumPy calls on traced values: they trace into IR, so every
derivative is itself differentiable and runs on every engine.
Notation: ``g`` cotangent, ``t`` tangent, ``out`` the primal output.
"""
from __future__ import annotations

import functools
import string
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import ShapeError
from .ir import Aval

PRIMITIVES: dict[str, "Primitive"] = {}
NUMPY_BINDINGS: dict[Any, tuple["Primitive", Callable | None]] = {}


@dataclass(frozen=True)
class Unsupported:
    """Marks an engine spelling that does not exist, with the reason users will see."""

    reason: str


@dataclass(frozen=True)
class Case:
    """Example call for generated tests: ``make(rng) -> list of inputs``, plus params.

    ``wrap`` (optional) maps the test's free inputs to the primitive's inputs, for
    primitives whose domain is a manifold (cholesky needs symmetric positive input).
    ``smooth=False`` skips second-order checks (kinks, piecewise rules).
    """

    make: Callable
    params: dict = field(default_factory=dict)
    wrap: Callable | None = None
    smooth: bool = True
    rtol: float = 1e-5


class Primitive:
    def __init__(self, name, impl, shape, vjp=None, jvp=None, julia=None, numpy=(),
                 cases=(), differentiable=True, elementwise=False, multiple_results=False,
                 identity=None, register=True, c=None):
        self.name = name
        self.c = c
        # identity: {operand position: neutral constant}; bind drops the op when that
        # operand is the neutral constant and the result equals the other operand.
        self.identity = identity or {}
        self.impl = impl
        self.shape = shape
        self.vjp = vjp
        self.jvp = jvp
        self.julia = julia
        self.cases = tuple(cases)
        self.differentiable = differentiable
        self.elementwise = elementwise
        self.multiple_results = multiple_results
        self._eager = _compile_template(impl) if isinstance(impl, str) else impl
        for np_fn in numpy if isinstance(numpy, (tuple, list)) else [numpy]:
            NUMPY_BINDINGS[np_fn] = (self, None)
        if isinstance(numpy, dict):
            for np_fn, adapter in numpy.items():
                NUMPY_BINDINGS[np_fn] = (self, adapter)
        # register=False: primitives made at run time (dp.custom_vjp rules) stay out of
        # the global table, whose entries get generated tests and need Julia spellings.
        if not register:
            return
        if name in PRIMITIVES:
            raise ValueError(f"primitive {name!r} defined twice")
        PRIMITIVES[name] = self

    def __repr__(self) -> str:
        return f"Primitive({self.name})"

    def evaluate(self, xp, *args, **params):
        return self._eager(xp, *args, **params)

    def abstract_eval(self, *avals, **params):
        return self.shape(*avals, **params)

    def bind(self, *args, **params):
        from .tracing import bind
        return bind(self, *as_untraced_code_reads(args), **params)

    __call__ = bind


_EXACT_PYTHON_NUMBERS = (bool, int, float, complex)


def as_untraced_code_reads(args):
    """Operands with subclasses of int/float/complex (IntEnum members, a float subclass)
    replaced by what the same code reads without tracing. Among Python scalars only,
    Python's arithmetic treats them as the int/float they are (weak scalars). Next to an
    array, NumPy 2 treats them as its default int64/float64/complex128, strong (only the
    exact Python types are weak: int8 array * IntEnum member is int64). bool and NumPy
    scalars (np.float64 subclasses float) pass unchanged. Without this their aval was an
    object dtype, and tracing failed with 'int' object has no attribute 'item'."""
    for a in args:  # the common case, checked cheaply: nothing to replace
        if isinstance(a, (int, float, complex)) and type(a) not in _EXACT_PYTHON_NUMBERS \
                and not isinstance(a, np.generic):
            break
    else:
        return args
    python_only = all(isinstance(a, (int, float, complex)) and not isinstance(a, np.generic)
                      or getattr(getattr(a, "aval", None), "weak", False) for a in args)
    return tuple(_as_read(a, python_only) for a in args)


def _as_read(a, python_only):
    if type(a) in _EXACT_PYTHON_NUMBERS or isinstance(a, np.generic) \
            or not isinstance(a, (int, float, complex)):
        return a
    if python_only:
        return next(base(a) for base in (int, float, complex) if isinstance(a, base))
    return np.asarray(a)[()]


def _compile_template(template: str) -> Callable:
    """Turn ``"xp.sum({0}, axis={axis})"`` into ``lambda xp, a0, *, axis: ...``."""
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    positional = sorted(int(f) for f in fields if f.isdigit())
    names = sorted(f for f in fields if not f.isdigit() and f != "args")
    n_pos = (max(positional) + 1) if positional else 0
    sig = ["xp"] + [f"a{i}" for i in range(n_pos)]
    if "args" in fields:
        sig.append("*args")
    if names:
        sig += (["*"] if "args" not in fields else []) + names
    mapping = {n: n for n in names}
    mapping["args"] = "*args"
    body = template.format(*[f"a{i}" for i in range(n_pos)], **mapping)
    return eval(f"lambda {', '.join(sig)}: {body}", {"np": np})  # our own template text


# =============================================================== shape helpers

def broadcast_shapes(*shapes) -> tuple:
    # fast path (tracing calls this for every elementwise op): equal shapes or scalars
    big = [tuple(s) for s in shapes if len(s)]
    if not big or all(s == big[0] for s in big[1:]):
        return big[0] if big else ()
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        listed = " and ".join(str(tuple(s)) for s in shapes)
        raise ShapeError(
            f"operands could not be broadcast together: shapes {listed}. Fix: reshape "
            f"one of them (e.g. x[:, None]) so trailing dimensions match or are 1.") from None


@functools.lru_cache(maxsize=4096)
def _dtype_by_example(prim_name: str, kinds: tuple, params: tuple):
    """Output dtype(s) from evaluating the impl on tiny examples (exactly NumPy's rules)."""
    prim = PRIMITIVES[prim_name]
    samples = [(dt.type(1).item() if weak else np.ones((), dt)) for dt, weak in kinds]
    with np.errstate(all="ignore"):
        out = prim.evaluate(np, *samples, **dict(params))
    if isinstance(out, tuple):
        return tuple(np.result_type(o) for o in out)
    return np.result_type(out)


def _params_key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def elementwise_shape(prim_name):
    def rule(*avals, **params):
        shape = broadcast_shapes(*[a.shape for a in avals])
        dtype = _dtype_by_example(prim_name, tuple((a.dtype, a.weak) for a in avals),
                                  _params_key(params))
        # Python operators on Python scalars give Python scalars (weak); NumPy functions
        # give NumPy scalars, which are strong (np.sin(0.5) is an np.float64).
        weak = all(a.weak for a in avals) and not PRIMITIVES[prim_name].impl.startswith("xp.")
        return Aval(shape, np.dtype(dtype), weak)
    return rule


def _inexact(dtype) -> bool:
    return np.issubdtype(dtype, np.inexact)


# =============================================================== rule helpers

def sum_to(g, shape):
    """Sum ``g`` down to ``shape`` (undo broadcasting); the VJP of broadcasting."""
    from . import numpy_api as dp
    return dp.sum_to(g, shape)


def _tsum(terms):
    """Sum of tangent terms, skipping symbolic zeros (None)."""
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def _cast(x, like):
    """Keep tangents/cotangents in the primal dtype (float32 stays float32)."""
    dt = like.dtype if hasattr(like, "dtype") else None
    if dt is not None and hasattr(x, "dtype") and x.dtype != dt and _inexact(dt):
        return x.astype(dt)
    return x


def _rng_normal(*shape):
    return lambda rng: [rng.standard_normal(shape)]


def _pos(*shape):
    return lambda rng: [rng.uniform(0.5, 2.0, shape)]


def _unit(*shape):
    return lambda rng: [rng.uniform(-0.9, 0.9, shape)]


# =============================================================== elementwise

def unary(name, template, deriv, julia, numpy=(), domain=_rng_normal(3, 4), smooth=True,
          differentiable=True, c=None):
    """An elementwise function with derivative ``deriv(x, out)``."""
    def vjp(g, x, *, out):
        return (_cast(g * deriv(x, out), x),)

    def jvp(ts, x, *, out):
        return None if ts[0] is None else _cast(ts[0] * deriv(x, out), x)

    zero = lambda g, x, *, out: (None,)  # noqa: E731
    zero_t = lambda ts, x, *, out: None  # noqa: E731
    return Primitive(
        name, template, elementwise_shape(name),
        vjp=vjp if deriv is not None else zero, jvp=jvp if deriv is not None else zero_t,
        julia=julia, numpy=numpy, elementwise=True, differentiable=differentiable,
        cases=[Case(domain, smooth=smooth)], c=c)


def binary(name, template, partials, julia, numpy=(), domain=None, smooth=True, identity=None,
           c=None, boundary=None):
    """A broadcasting elementwise function with partials ``(x, y, out) -> (dx, dy)``;
    ``boundary`` (optional) makes inputs at its kinks for a first-order test case."""
    def vjp(g, x, y, *, out):
        px, py = partials(x, y, out)
        return (_grad_part(g, px, x), _grad_part(g, py, y))

    def jvp(ts, x, y, *, out):
        px, py = partials(x, y, out)
        tx = None if ts[0] is None or px is None else ts[0] * px
        ty = None if ts[1] is None or py is None else ts[1] * py
        return _cast(_tsum([tx, ty]), out)

    domain = domain or (lambda rng: [rng.standard_normal((3, 4)), rng.standard_normal((4,))])
    return Primitive(name, template, elementwise_shape(name), vjp=vjp, jvp=jvp,
                     julia=julia, numpy=numpy, elementwise=True, identity=identity,
                     cases=[Case(domain, smooth=smooth)]
                     + ([Case(boundary, smooth=False)] if boundary else []), c=c)


def _grad_part(g, partial, x):
    if partial is None or not _inexact(np.result_type(x)):
        return None
    return _cast(sum_to(g * partial, np.shape(x)), x)


def nondiff(name, template, julia, numpy=(), nargs=2, domain=None, c=None):
    """Elementwise, non-differentiable output (comparisons, logical and bitwise ops);
    example inputs from ``domain`` (default: standard normal floats)."""
    def floats(rng):
        return [rng.standard_normal((3, 4)) for _ in range(nargs)]
    domain = domain or floats
    return Primitive(name, template, elementwise_shape(name),
                     vjp=lambda g, *xs, out: (None,) * len(xs),
                     jvp=lambda ts, *xs, out: None, julia=julia, numpy=numpy,
                     elementwise=True, differentiable=False, cases=[Case(domain)], c=c)


neg = unary("neg", "-{0}", lambda x, y: -1.0, "-{0}", numpy=np.negative, c="(-{0})")
exp = unary("exp", "xp.exp({0})", lambda x, y: y, "exp.({0})", numpy=np.exp, c="exp({0})")
log = unary("log", "xp.log({0})", lambda x, y: 1.0 / x, "log.({0})", numpy=np.log,
            domain=_pos(3, 4), c="log({0})")
log1p = unary("log1p", "xp.log1p({0})", lambda x, y: 1.0 / (1.0 + x), "log1p.({0})",
              numpy=np.log1p, domain=_pos(3, 4), c="log1p({0})")
expm1 = unary("expm1", "xp.expm1({0})", lambda x, y: y + 1.0, "expm1.({0})", numpy=np.expm1,
              c="expm1({0})")
sqrt = unary("sqrt", "xp.sqrt({0})", lambda x, y: 0.5 / y, "sqrt.({0})", numpy=np.sqrt,
             domain=_pos(3, 4), c="sqrt({0})")
# NumPy's own exp2/log2/log10/cbrt, not compositions of exp, log and pow: those are off by
# a few ulps where NumPy is exact (log10(1000) came out 2.9999999999999996, floor 2).
_LN2, _LN10 = float(np.log(2.0)), float(np.log(10.0))
exp2 = unary("exp2", "xp.exp2({0})", lambda x, y: y * _LN2, "exp2.({0})", numpy=np.exp2,
             c="exp2({0})")
log2 = unary("log2", "xp.log2({0})", lambda x, y: 1.0 / (x * _LN2), "log2.({0})",
             numpy=np.log2, domain=_pos(3, 4), c="log2({0})")
log10 = unary("log10", "xp.log10({0})", lambda x, y: 1.0 / (x * _LN10), "log10.({0})",
              numpy=np.log10, domain=_pos(3, 4), c="log10({0})")
cbrt = unary("cbrt", "xp.cbrt({0})", lambda x, y: 1.0 / (3.0 * y * y), "cbrt.({0})",
             numpy=np.cbrt, c="cbrt({0})")
sin = unary("sin", "xp.sin({0})", lambda x, y: np.cos(x), "sin.({0})", numpy=np.sin, c="sin({0})")
cos = unary("cos", "xp.cos({0})", lambda x, y: -np.sin(x), "cos.({0})", numpy=np.cos, c="cos({0})")
tan = unary("tan", "xp.tan({0})", lambda x, y: 1.0 + y * y, "tan.({0})", numpy=np.tan,
            domain=_unit(3, 4), c="tan({0})")
arcsin = unary("arcsin", "xp.arcsin({0})", lambda x, y: 1.0 / np.sqrt(1.0 - x * x),
               "asin.({0})", numpy=np.arcsin, domain=_unit(3, 4), c="asin({0})")
arccos = unary("arccos", "xp.arccos({0})", lambda x, y: -1.0 / np.sqrt(1.0 - x * x),
               "acos.({0})", numpy=np.arccos, domain=_unit(3, 4), c="acos({0})")
arctan = unary("arctan", "xp.arctan({0})", lambda x, y: 1.0 / (1.0 + x * x), "atan.({0})",
               numpy=np.arctan, c="atan({0})")
sinh = unary("sinh", "xp.sinh({0})", lambda x, y: np.cosh(x), "sinh.({0})", numpy=np.sinh,
             c="sinh({0})")
cosh = unary("cosh", "xp.cosh({0})", lambda x, y: np.sinh(x), "cosh.({0})", numpy=np.cosh,
             c="cosh({0})")
tanh = unary("tanh", "xp.tanh({0})", lambda x, y: 1.0 - y * y, "tanh.({0})", numpy=np.tanh,
             c="tanh({0})")
abs_ = unary("abs", "xp.abs({0})", lambda x, y: np.sign(x), "abs.({0})",
             numpy=(np.absolute, np.fabs), smooth=False, c="fabs({0})")
sign = unary("sign", "xp.sign({0})", None, "sign.({0})", numpy=np.sign, smooth=False,
             c="dp_sign({0})")
floor = unary("floor", "xp.floor({0})", None, "floor.({0})", numpy=np.floor, smooth=False,
              c="floor({0})")
ceil = unary("ceil", "xp.ceil({0})", None, "ceil.({0})", numpy=np.ceil, smooth=False,
             c="ceil({0})")
round_ = unary("round", "xp.round({0})", None, "round.({0})", numpy=(np.rint,), smooth=False)
trunc = unary("trunc", "xp.trunc({0})", None, "trunc.({0})", numpy=np.trunc, smooth=False,
              c="trunc({0})")

integer_pow = Primitive(
    "integer_pow", "{0} ** {n}", elementwise_shape("integer_pow"),
    vjp=lambda g, x, *, out, n: (_cast(g * (n * x ** (n - 1) if n != 1 else 1.0), x),),
    jvp=lambda ts, x, *, out, n: None if ts[0] is None else _cast(
        ts[0] * (n * x ** (n - 1) if n != 1 else 1.0), x),
    julia="{0} .^ {n}", elementwise=True, c="dp_ipow({0}, {n})",
    cases=[Case(_rng_normal(3, 4), {"n": 2}), Case(_rng_normal(3, 4), {"n": 3}),
           Case(_pos(3, 4), {"n": -2})])

add = binary("add", "{0} + {1}", lambda x, y, o: (1.0, 1.0), "{0} .+ {1}", numpy=np.add,
             identity={0: 0, 1: 0}, c="({0} + {1})")
sub = binary("sub", "{0} - {1}", lambda x, y, o: (1.0, -1.0), "{0} .- {1}", numpy=np.subtract,
             identity={1: 0}, c="({0} - {1})")
mul = binary("mul", "{0} * {1}", lambda x, y, o: (y, x), "{0} .* {1}", numpy=np.multiply,
             identity={0: 1, 1: 1}, c="({0} * {1})")
div = binary("div", "{0} / {1}", lambda x, y, o: (1.0 / y, -o / y), "{0} ./ {1}",
             numpy=(np.true_divide, np.divide), identity={1: 1},
             domain=lambda rng: [rng.standard_normal((3, 4)), rng.uniform(0.5, 2, (4,))],
             c="({0} / {1})")


def _pow_partials(x, y, out):
    safe_log = np.where(x == 0, 0.0, np.log(np.where(x == 0, 1.0, x)))
    return (y * x ** (y - 1.0), out * safe_log)


pow_ = binary("pow", "{0} ** {1}", _pow_partials, "{0} .^ {1}", numpy=np.power,
              domain=lambda rng: [rng.uniform(0.5, 2, (3, 4)), rng.uniform(-1, 2, (4,))],
              c="pow({0}, {1})")


def _chosen(wins, ties):
    """d max(x, y)/dx: 1 where x is the result, 1/2 at a tie -- the central difference of
    NumPy's function there (the mean of the one-sided derivatives; amax splits ties too)."""
    return 1.0 * wins + 0.5 * ties


def _ties(rng):
    x = rng.standard_normal((3, 4))
    return [x, np.where(rng.uniform(size=(3, 4)) < 0.5, x, rng.standard_normal((3, 4)))]


maximum = binary("maximum", "xp.maximum({0}, {1})",
                 lambda x, y, o: (_chosen(x > y, x == y), _chosen(x < y, x == y)),
                 "max.({0}, {1})", numpy=np.maximum, smooth=False, c="dp_maximum({0}, {1})",
                 boundary=_ties)
minimum = binary("minimum", "xp.minimum({0}, {1})",
                 lambda x, y, o: (_chosen(x < y, x == y), _chosen(x > y, x == y)),
                 "min.({0}, {1})", numpy=np.minimum, smooth=False, c="dp_minimum({0}, {1})",
                 boundary=_ties)
arctan2 = binary("arctan2", "xp.arctan2({0}, {1})",
                 lambda y, x, o: (x / (x * x + y * y), -y / (x * x + y * y)),
                 "atan.({0}, {1})", numpy=np.arctan2,
                 domain=lambda rng: [rng.standard_normal((3, 4)), rng.uniform(0.5, 2, (4,))],
                 c="atan2({0}, {1})")
# At x = y = 0 (the apex of a cone) central differences see 0: divide by 1 there, not 0.
hypot = binary("hypot", "xp.hypot({0}, {1})",
               lambda x, y, o: (x / np.where(o == 0, 1.0, o), y / np.where(o == 0, 1.0, o)),
               "hypot.({0}, {1})", numpy=np.hypot, c="hypot({0}, {1})",
               boundary=lambda rng: [np.where(rng.uniform(size=(3, 4)) < 0.5, 0.0,
                                              rng.standard_normal((3, 4))), np.zeros(4)])
logaddexp = binary("logaddexp", "xp.logaddexp({0}, {1})",
                   lambda x, y, o: (np.exp(x - o), np.exp(y - o)),
                   "DiffProg.nplogaddexp({0}, {1})", numpy=np.logaddexp,
                   c="dp_logaddexp({0}, {1})")
remainder = binary("remainder", "xp.remainder({0}, {1})",
                   lambda x, y, o: (1.0, -np.floor(x / y)), "mod.({0}, {1})",
                   numpy=(np.remainder, np.mod),
                   domain=lambda rng: [rng.uniform(0.1, 0.9, (3, 4)) + 3.0, np.full((4,), 1.0)],
                   smooth=False)
floor_divide = Primitive(
    "floor_divide", "{0} // {1}", elementwise_shape("floor_divide"),
    vjp=lambda g, x, y, *, out: (None, None), jvp=lambda ts, x, y, *, out: None,
    julia="fld.({0}, {1})", numpy=np.floor_divide, elementwise=True,
    cases=[Case(lambda rng: [rng.standard_normal((3, 4)) * 3, np.full((4,), 1.5)], smooth=False)])

less = nondiff("less", "{0} < {1}", "{0} .< {1}", numpy=np.less, c="isless({0}, {1})")
less_equal = nondiff("less_equal", "{0} <= {1}", "{0} .<= {1}", numpy=np.less_equal,
                     c="islessequal({0}, {1})")
greater = nondiff("greater", "{0} > {1}", "{0} .> {1}", numpy=np.greater, c="isgreater({0}, {1})")
greater_equal = nondiff("greater_equal", "{0} >= {1}", "{0} .>= {1}", numpy=np.greater_equal,
                        c="isgreaterequal({0}, {1})")
equal = nondiff("equal", "{0} == {1}", "{0} .== {1}", numpy=np.equal, c="({0} == {1})")
not_equal = nondiff("not_equal", "{0} != {1}", "{0} .!= {1}", numpy=np.not_equal, c="({0} != {1})")
logical_and = nondiff("logical_and", "xp.logical_and({0}, {1})", "({0} .!= 0) .& ({1} .!= 0)",
                      numpy=np.logical_and, c="(({0} != 0) & ({1} != 0))")
logical_or = nondiff("logical_or", "xp.logical_or({0}, {1})", "({0} .!= 0) .| ({1} .!= 0)",
                     numpy=np.logical_or, c="(({0} != 0) | ({1} != 0))")
logical_xor = nondiff("logical_xor", "xp.logical_xor({0}, {1})", "xor.({0} .!= 0, {1} .!= 0)",
                      numpy=np.logical_xor, c="(({0} != 0) ^ ({1} != 0))")
logical_not = nondiff("logical_not", "xp.logical_not({0})", ".!({0} .!= 0)",
                      numpy=np.logical_not, nargs=1, c="({0} == 0)")


def _integers(nargs):
    def make(rng):
        return [rng.integers(-50, 50, (3, 4)) for _ in range(nargs)]
    return make


# Bitwise ops (``&``, ``|``, ``^``, ``~`` on integers and booleans): the result keeps
# NumPy's integer dtype, unlike the logical ops' bool.
# Their C spellings are for bool operands (0/1) only: compiled kernels take no integers.
bitwise_and = nondiff("bitwise_and", "xp.bitwise_and({0}, {1})", "{0} .& {1}",
                      numpy=np.bitwise_and, domain=_integers(2), c="({0} & {1})")
bitwise_or = nondiff("bitwise_or", "xp.bitwise_or({0}, {1})", "{0} .| {1}",
                     numpy=np.bitwise_or, domain=_integers(2), c="({0} | {1})")
bitwise_xor = nondiff("bitwise_xor", "xp.bitwise_xor({0}, {1})", "xor.({0}, {1})",
                      numpy=np.bitwise_xor, domain=_integers(2), c="({0} ^ {1})")
invert = nondiff("invert", "xp.invert({0})", ".~({0})", numpy=np.invert, nargs=1,
                 domain=_integers(1), c="(!{0})")

isfinite = nondiff("isfinite", "xp.isfinite({0})", "isfinite.({0})", numpy=np.isfinite, nargs=1,
                   c="(isfinite({0}) != 0)")
isnan = nondiff("isnan", "xp.isnan({0})", "isnan.({0})", numpy=np.isnan, nargs=1,
                c="(isnan({0}) != 0)")
isinf = nondiff("isinf", "xp.isinf({0})", "isinf.({0})", numpy=np.isinf, nargs=1,
                c="(isinf({0}) != 0)")


def _where_vjp(g, c, x, y, *, out):
    zero = np.zeros((), g.dtype)
    return (None, _grad_part(np.where(c, g, zero), 1.0, x),
            _grad_part(np.where(c, zero, g), 1.0, y))


def _where_jvp(ts, c, x, y, *, out):
    if ts[1] is None and ts[2] is None:
        return None
    tx = ts[1] if ts[1] is not None else np.zeros((), out.dtype)
    ty = ts[2] if ts[2] is not None else np.zeros((), out.dtype)
    return _cast(np.broadcast_to(np.where(c, tx, ty), out.shape), out)


where = Primitive(
    "where", "xp.where({0}, {1}, {2})", elementwise_shape("where"), vjp=_where_vjp,
    jvp=_where_jvp, julia="ifelse.({0}, {1}, {2})", elementwise=True, c="({0} ? {1} : {2})",
    cases=[Case(lambda rng: [rng.standard_normal((3, 4)) > 0, rng.standard_normal((3, 4)),
                             rng.standard_normal((4,))], smooth=False)])


def _convert_shape(x, *, dtype):
    return Aval(x.shape, np.dtype(dtype))


convert = Primitive(
    "convert", "xp.asarray({0}, dtype={dtype})", _convert_shape,
    vjp=lambda g, x, *, out, dtype: ((g.astype(x.dtype) if _inexact(np.result_type(x)) else None),),
    jvp=lambda ts, x, *, out, dtype: (None if ts[0] is None or not _inexact(np.dtype(dtype))
                                      else ts[0].astype(dtype)),
    julia="DiffProg.convert_eltype({jdtype}, {0})",
    cases=[Case(_rng_normal(3), {"dtype": np.dtype("float32")}, rtol=1e-2)])

stop_gradient = Primitive(
    "stop_gradient", "{0}", lambda x: x, vjp=lambda g, x, *, out: (None,),
    jvp=lambda ts, x, *, out: None, julia="DiffProg.stop_gradient({0})",
    differentiable=False, cases=[Case(_rng_normal(3))])


# =============================================================== reductions

def _normalize_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"axis {a} is out of bounds for an array of dimension {ndim}")
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def _reduce_shape(prim_name, int_out=False):
    def rule(x, *, axes, keepdims):
        shape = tuple((1 if i in axes else d) for i, d in enumerate(x.shape) if keepdims or i not in axes)
        if int_out:
            return Aval(shape, np.dtype(np.intp))
        dtype = _dtype_by_example(prim_name, ((x.dtype, False),), (("axes", ()), ("keepdims", False)))
        return Aval(shape, np.dtype(dtype))
    return rule


def _keep(g, x_shape, axes, keepdims):
    """Reshape a reduced cotangent so it broadcasts against the input."""
    if keepdims:
        return g
    return np.reshape(g, tuple(1 if i in axes else d for i, d in enumerate(x_shape)))


def _sum_vjp(g, x, *, out, axes, keepdims):
    return (np.broadcast_to(_keep(g, np.shape(x), axes, keepdims), np.shape(x)),)


def _reduce_cases():
    return [Case(_rng_normal(3, 4), {"axes": (1,), "keepdims": False}),
            Case(_rng_normal(3, 4), {"axes": (0, 1), "keepdims": False}),
            Case(_rng_normal(2, 3, 4), {"axes": (0, 2), "keepdims": True})]


reduce_sum = Primitive(
    "reduce_sum", "xp.sum({0}, axis={axes}, keepdims={keepdims})", _reduce_shape("reduce_sum"),
    vjp=_sum_vjp,
    jvp=lambda ts, x, *, out, axes, keepdims: None if ts[0] is None else
    np.sum(ts[0], axis=axes, keepdims=keepdims),
    julia="DiffProg.npsum({0}; dims = {jaxes}, keepdims = {keepdims})", cases=_reduce_cases())


def _extremum_vjp(g, x, *, out, axes, keepdims):
    shape = np.shape(x)
    y = _keep(out, shape, axes, keepdims)
    mask = 1.0 * (x == y)
    count = np.sum(mask, axis=axes, keepdims=True)
    return (_cast(mask * (_keep(g, shape, axes, keepdims) / count), x),)


def _extremum_jvp(ts, x, *, out, axes, keepdims):
    if ts[0] is None:
        return None
    y = _keep(out, np.shape(x), axes, keepdims)
    mask = 1.0 * (x == y)
    picked = np.sum(ts[0] * mask, axis=axes, keepdims=keepdims)
    return _cast(picked / np.sum(mask, axis=axes, keepdims=keepdims), x)


reduce_max = Primitive(
    "reduce_max", "xp.max({0}, axis={axes}, keepdims={keepdims})", _reduce_shape("reduce_max"),
    vjp=_extremum_vjp, jvp=_extremum_jvp,
    julia="DiffProg.npmax({0}; dims = {jaxes}, keepdims = {keepdims})",
    cases=[Case(c.make, c.params, smooth=False) for c in _reduce_cases()])
reduce_min = Primitive(
    "reduce_min", "xp.min({0}, axis={axes}, keepdims={keepdims})", _reduce_shape("reduce_min"),
    vjp=_extremum_vjp, jvp=_extremum_jvp,
    julia="DiffProg.npmin({0}; dims = {jaxes}, keepdims = {keepdims})",
    cases=[Case(c.make, c.params, smooth=False) for c in _reduce_cases()])


def _exclusive_cumprod(x, axis, reverse):
    """Product of the elements strictly before (or after) each position: exact at zeros."""
    from . import numpy_api as dp
    if reverse:
        x = np.flip(x, axis)
    shifted = dp.shift_right(x, axis, fill=1.0)
    res = np.cumprod(shifted, axis=axis)
    return np.flip(res, axis) if reverse else res


def _prod_partial(x, axes):
    """d prod / d x_i = product of all other elements, exact even with zeros."""
    from . import numpy_api as dp
    shape = np.shape(x)
    moved = np.moveaxis(x, axes, tuple(range(len(shape) - len(axes), len(shape))))
    flat = np.reshape(moved, moved.shape[:len(shape) - len(axes)] + (-1,))
    others = _exclusive_cumprod(flat, -1, False) * _exclusive_cumprod(flat, -1, True)
    others = np.reshape(others, moved.shape)
    return dp.moveaxis(others, tuple(range(len(shape) - len(axes), len(shape))), axes)


reduce_prod = Primitive(
    "reduce_prod", "xp.prod({0}, axis={axes}, keepdims={keepdims})", _reduce_shape("reduce_prod"),
    vjp=lambda g, x, *, out, axes, keepdims: (
        _cast(_keep(g, np.shape(x), axes, keepdims) * _prod_partial(x, axes), x),),
    jvp=lambda ts, x, *, out, axes, keepdims: None if ts[0] is None else _cast(
        np.sum(ts[0] * _prod_partial(x, axes), axis=axes, keepdims=keepdims), x),
    julia="DiffProg.npprod({0}; dims = {jaxes}, keepdims = {keepdims})",
    # exact with zeros, to any order (products of others via cumprod, itself exact there)
    cases=_reduce_cases() + [Case(lambda rng: [np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])],
                                  {"axes": (1,), "keepdims": False})])


def _argreduce(name, fn, julia):
    return Primitive(
        name, f"xp.{fn}({{0}}, axis={{axis}})",
        lambda x, *, axis: Aval(tuple(d for i, d in enumerate(x.shape) if i != axis), np.dtype(np.intp)),
        vjp=lambda g, x, *, out, axis: (None,), jvp=lambda ts, x, *, out, axis: None,
        julia=julia, differentiable=False, cases=[Case(_rng_normal(3, 4), {"axis": 1})])


argmax = _argreduce("argmax", "argmax", "DiffProg.npargmax({0}; dim = {jaxis})")
argsort = _argreduce("argsort", "argsort", "DiffProg.npargsort({0}; dim = {jaxis})")
argsort.shape = lambda x, *, axis: Aval(x.shape, np.dtype(np.intp))
argmin = _argreduce("argmin", "argmin", "DiffProg.npargmin({0}; dim = {jaxis})")


def _cum_shape(x, *, axis):
    return Aval(x.shape, x.dtype)


def _rev_cumsum(g, axis):
    return np.flip(np.cumsum(np.flip(g, axis), axis=axis), axis)


cumsum = Primitive(
    "cumsum", "xp.cumsum({0}, axis={axis})", _cum_shape,
    vjp=lambda g, x, *, out, axis: (_rev_cumsum(g, axis),),
    jvp=lambda ts, x, *, out, axis: None if ts[0] is None else np.cumsum(ts[0], axis=axis),
    julia="cumsum({0}; dims = {jaxis})",
    cases=[Case(_rng_normal(3, 4), {"axis": 1}), Case(_rng_normal(3, 4), {"axis": 0})])

class _ZerosAlong:
    """Where the zeros of x are along ``axis``, for cumprod's derivatives.

    ``y_k = x_0 ... x_k``. The usual rule divides by x_i, which breaks at zeros. Here
    dividing is used at nonzero x_i only (exact there, derivatives included); the first
    and second zero of a slice use partial products that read that zero as 1
    (``skip[0]``, ``skip[1]``); at later zeros every term holds two other zeros, so the
    derivative is 0 and stays 0 under one more differentiation. Hence first and second
    derivatives are exact at any zeros; third and higher ones at slices with >= 3 zeros
    would miss terms (the second-order table cases check up to three zeros).
    """

    def __init__(self, x, axis):
        one, nil = np.ones_like(x), np.zeros_like(x)
        self.zero = x == 0
        self.count = np.cumsum(np.where(self.zero, one, nil), axis=axis)  # zeros up to k
        self.nth = [self.zero & (self.count == n) for n in (1, 2)]
        self.safe = np.where(self.zero, one, x)
        self.skip = [np.cumprod(np.where(nth, one, x), axis=axis) for nth in self.nth]


def _cumprod_vjp(g, x, *, out, axis):
    z, nil = _ZerosAlong(x, axis), np.zeros_like(x)
    grad = np.where(z.zero, nil, _rev_cumsum(g * out, axis) / z.safe)
    for nth, skip in zip(z.nth, z.skip):
        grad = grad + np.where(nth, _rev_cumsum(g * skip, axis), nil)
    return (grad,)


def _cumprod_jvp(ts, x, *, out, axis):
    if ts[0] is None:
        return None
    t, z = ts[0], _ZerosAlong(x, axis)
    nil = np.zeros_like(out)
    # terms j of d y_k = sum_j t_j prod_{i<=k, i!=j} x_i, with nonzero x_j: by division
    tan = np.where(z.count <= 1, out * np.cumsum(np.where(z.zero, nil, t) / z.safe, axis=axis), nil)
    for n, (nth, skip) in enumerate(zip(z.nth, z.skip), start=1):  # j = the n-th zero
        t_nth = np.cumsum(np.where(nth, t, nil), axis=axis)
        tan = tan + np.where((z.count >= n) & (z.count <= 2), t_nth * skip, nil)
    return tan


# exact at zeros too (no division by a zero; see _ZerosAlong), to any order
cumprod = Primitive(
    "cumprod", "xp.cumprod({0}, axis={axis})", _cum_shape,
    vjp=_cumprod_vjp, jvp=_cumprod_jvp,
    julia="DiffProg.npcumprod({0}; dims = {jaxis})",
    cases=[Case(_pos(3, 4), {"axis": 1}), Case(_pos(3, 4), {"axis": 0}),
           Case(lambda rng: [np.array([[1.5, 0.0, 2.0, -3.0], [0.0, 0.0, 3.0, 1.0],
                                       [2.0, -1.0, 0.5, 0.0], [0.0, 2.0, 0.0, 0.0]])], {"axis": 1}),
           Case(lambda rng: [np.array([[0.0, 2.0], [3.0, 0.0], [0.5, 4.0]])], {"axis": 0})])


# =============================================================== shape ops

def _reshape_shape(x, *, shape):
    if int(np.prod(shape, dtype=np.int64)) != x.size:
        raise ShapeError(f"cannot reshape an array of shape {x.shape} (size {x.size}) into "
                         f"shape {shape}. Fix: the new shape must have the same number of elements.")
    return Aval(tuple(shape), x.dtype, x.weak)


def _julia_scalar(operand: str, dtype) -> str:
    """A one-element array as a Julia number: NumPy 0-d values are numbers in Julia."""
    if np.issubdtype(np.dtype(dtype), np.floating):
        return f"sum({operand})"  # differentiable (twice) and no scalar GPU indexing
    return f"DiffProg.npscalar({operand})"  # sum would turn Bool/Int32 into Int64


def _julia_reshape(eqn, jl):
    out = eqn.outputs[0].aval
    return _julia_scalar("{0}", out.dtype) if out.shape == () else "DiffProg.npreshape({0}, {jshape})"


reshape = Primitive(
    "reshape", "xp.reshape({0}, {shape})", _reshape_shape,
    vjp=lambda g, x, *, out, shape: (np.reshape(g, np.shape(x)),),
    jvp=lambda ts, x, *, out, shape: None if ts[0] is None else np.reshape(ts[0], shape),
    julia=_julia_reshape,
    cases=[Case(_rng_normal(3, 4), {"shape": (2, 6)}), Case(_rng_normal(3, 4), {"shape": (12,)})])

transpose = Primitive(
    "transpose", "xp.transpose({0}, {axes})",
    lambda x, *, axes: Aval(tuple(x.shape[a] for a in axes), x.dtype, x.weak),
    vjp=lambda g, x, *, out, axes: (np.transpose(g, tuple(np.argsort(axes))),),
    jvp=lambda ts, x, *, out, axes: None if ts[0] is None else np.transpose(ts[0], axes),
    julia="permutedims({0}, {jperm})",
    cases=[Case(_rng_normal(3, 4), {"axes": (1, 0)}), Case(_rng_normal(2, 3, 4), {"axes": (2, 0, 1)})])


def _broadcast_to_shape(x, *, shape):
    if broadcast_shapes(x.shape, shape) != tuple(shape):
        raise ShapeError(f"cannot broadcast an array of shape {x.shape} to shape {shape}")
    return Aval(tuple(shape), x.dtype, x.weak)


broadcast_to = Primitive(
    "broadcast_to", "xp.broadcast_to({0}, {shape})", _broadcast_to_shape,
    vjp=lambda g, x, *, out, shape: (sum_to(g, np.shape(x)),),
    jvp=lambda ts, x, *, out, shape: None if ts[0] is None else np.broadcast_to(ts[0], shape),
    julia="DiffProg.npbroadcast_to({0}, {jshape})",
    cases=[Case(_rng_normal(4), {"shape": (3, 4)}), Case(_rng_normal(3, 1), {"shape": (2, 3, 4)})])


def _concat_shape(*xs, axis):
    base = xs[0].shape
    for x in xs[1:]:
        if len(x.shape) != len(base) or any(a != b for i, (a, b) in enumerate(zip(x.shape, base)) if i != axis):
            raise ShapeError(f"concatenate: all shapes must match except on axis {axis}; got "
                             f"{' and '.join(str(v.shape) for v in xs)}")
    shape = list(base)
    shape[axis] = sum(x.shape[axis] for x in xs)
    return Aval(tuple(shape), np.result_type(*[x.dtype for x in xs]))


def _concat_vjp(g, *xs, out, axis):
    from . import numpy_api as dp
    cts, start = [], 0
    for x in xs:
        n = np.shape(x)[axis]
        cts.append(dp.slice_axis(g, axis, start, start + n) if _inexact(np.result_type(x)) else None)
        start += n
    return tuple(cts)


def _concat_jvp(ts, *xs, out, axis):
    if all(t is None for t in ts):
        return None
    parts = [t if t is not None else np.zeros(np.shape(x), out.dtype) for t, x in zip(ts, xs)]
    return np.concatenate(parts, axis=axis)


concatenate = Primitive(
    "concatenate", "xp.concatenate(({args},), axis={axis})", _concat_shape,
    vjp=_concat_vjp, jvp=_concat_jvp, julia="cat({args}; dims = {jaxis})",
    cases=[Case(lambda rng: [rng.standard_normal((2, 3)), rng.standard_normal((4, 3))], {"axis": 0}),
           Case(lambda rng: [rng.standard_normal((2, 3)), rng.standard_normal((2, 1))], {"axis": 1})])


def _pad_shape(x, *, pad_width, value):
    return Aval(tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, pad_width)), x.dtype)


def _unpad(g, x_shape, pad_width):
    idx = tuple(slice(lo, lo + d) for d, (lo, hi) in zip(x_shape, pad_width))
    return g[idx]


pad = Primitive(
    "pad", "xp.pad({0}, {pad_width}, constant_values={value})", _pad_shape,
    vjp=lambda g, x, *, out, pad_width, value: (_unpad(g, np.shape(x), pad_width),),
    jvp=lambda ts, x, *, out, pad_width, value: None if ts[0] is None else
    np.pad(ts[0], pad_width, constant_values=0.0),
    julia="DiffProg.nppad({0}, {jpad_width}, {value})",
    cases=[Case(_rng_normal(3, 4), {"pad_width": ((1, 2), (0, 3)), "value": 0.0})])


# =============================================================== indexing

def _shape_by_dummy(x: Aval, index):
    dummy = np.broadcast_to(np.zeros((), x.dtype), x.shape)
    try:
        res = dummy[index]
    except IndexError as e:
        raise ShapeError(f"index {index!r} does not fit an array of shape {x.shape}: {e}") from None
    return Aval(tuple(np.shape(res)), x.dtype)


def _julia_slice(eqn, jl):
    """Basic indexing as Julia ranges (never scalar indexing), then the NumPy result shape."""
    x = eqn.inputs[0].aval
    ranges, _, _ = jl.ranges(eqn.params["index"], x.shape)
    if not ranges:
        return "{0}"
    out = eqn.outputs[0].aval
    picked = f"{{0}}[{', '.join(ranges)}]"
    if out.shape == ():
        return _julia_scalar(picked, out.dtype)
    return f"DiffProg.npreshape({picked}, {jl.shape(out.shape)})"


def _julia_array_axis(index, ndim):
    """The NumPy axis of the single index array in ``index`` when every other entry is a
    full slice or Ellipsis (``x[idx]``, ``x[:, idx]``, ``x[..., idx]``), else None."""
    slots = [i for i, item in enumerate(index) if isinstance(item, ArraySlot)]
    full = slice(None)
    if len(slots) != 1 or any(not (item == full or item is Ellipsis)
                              for item in index if not isinstance(item, ArraySlot)):
        return None
    k = slots[0]
    if any(item is Ellipsis for item in index[:k]):
        return ndim - (len(index) - k)
    return k


_JULIA_GATHER_FORMS = ("the julia engine spells integer-array indexing with one index array "
                       "and full slices only (x[idx], x[:, idx], x[..., idx])")


def _julia_gather(eqn, jl):
    x = eqn.inputs[0].aval
    axis = _julia_array_axis(eqn.params["index"], len(x.shape))
    if axis is None or len(eqn.inputs) != 2:
        return Unsupported(f"{_JULIA_GATHER_FORMS}; got index {eqn.params['index']!r}")
    return f"DiffProg.nptake({{0}}, {{1}}; dim = {jl.dim(axis, len(x.shape))})"


def _julia_scatter_add(eqn, jl):
    shape = tuple(eqn.params["shape"])
    if len(eqn.inputs) == 1:  # adjoint of basic slicing
        ranges, kept, _ = jl.ranges(eqn.params["index"], shape)
        return (f"DiffProg.npunslice(DiffProg.npreshape({{0}}, {jl.shape(kept)}), "
                f"{jl.tuple(ranges)}, {jl.shape(shape)})")
    axis = _julia_array_axis(eqn.params["index"], len(shape))
    if axis is None or len(eqn.inputs) != 2:
        return Unsupported(f"{_JULIA_GATHER_FORMS}; got index {eqn.params['index']!r}")
    return (f"DiffProg.npscatter_add({{0}}, {{1}}, {shape[axis]}; "
            f"dim = {jl.dim(axis, len(shape))})")


slice_ = Primitive(
    "slice", "{0}[{index}]", lambda x, *, index: _shape_by_dummy(x, index),
    vjp=lambda g, x, *, out, index: (scatter_add(g, shape=np.shape(x), index=index),),
    jvp=lambda ts, x, *, out, index: None if ts[0] is None else ts[0][index],
    julia=_julia_slice,
    cases=[Case(_rng_normal(5, 4), {"index": (slice(1, 4, None), 2)}),
           Case(_rng_normal(5, 4), {"index": (slice(None, None, -2), None, Ellipsis)})])


def _full_index(index, arrays):
    """Rebuild an index tuple: integers ``-1 - k`` mark the k-th array operand."""
    it = iter(arrays)
    return tuple(next(it) if isinstance(i, ArraySlot) else i for i in index)


class ArraySlot:
    """Placeholder for an index-array operand inside a ``gather``/``scatter_add`` index."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ArraySlot()"

    def __eq__(self, other):
        return isinstance(other, ArraySlot)

    def __hash__(self):
        return 7


def _gather_impl(xp, x, *arrays, index):
    return x[_full_index(index, arrays)]


def _gather_shape(x, *arrays, index):
    dummies = [np.broadcast_to(np.zeros((), a.dtype), a.shape) for a in arrays]
    return _shape_by_dummy(x, _full_index(index, dummies))


gather = Primitive(
    "gather", _gather_impl, _gather_shape,
    vjp=lambda g, x, *arrays, out, index: (scatter_add(g, *arrays, shape=np.shape(x), index=index),)
    + (None,) * len(arrays),
    jvp=lambda ts, x, *arrays, out, index: None if ts[0] is None else gather(ts[0], *arrays, index=index),
    julia=_julia_gather,
    cases=[Case(lambda rng: [rng.standard_normal((5, 4)), np.array([0, 2, 2, 4])],
                {"index": (ArraySlot(), slice(None, None, None))})])


def _scatter_add_impl(xp, g, *arrays, shape, index):
    out = xp.zeros(shape, dtype=g.dtype)
    full = _full_index(index, arrays)
    if arrays:
        # np.add.at accumulates repeated indices (x[[0, 0]] must give 2 * g at 0).
        (xp.add.at if hasattr(xp, "add") and hasattr(xp.add, "at") else xp.add_at)(out, full, g)
    else:
        out[full] = g
    return out


scatter_add = Primitive(
    "scatter_add", _scatter_add_impl,
    lambda g, *arrays, shape, index: Aval(tuple(shape), g.dtype),
    vjp=lambda gg, g, *arrays, out, shape, index: (
        (gather(gg, *arrays, index=index) if arrays else gg[index]),) + (None,) * len(arrays),
    jvp=lambda ts, g, *arrays, out, shape, index: None if ts[0] is None else
    scatter_add(ts[0], *arrays, shape=shape, index=index),
    julia=_julia_scatter_add,
    cases=[Case(lambda rng: [rng.standard_normal((4, 4)), np.array([0, 2, 2, 4])],
                {"index": (ArraySlot(), slice(None, None, None)), "shape": (5, 4)})])


# =============================================================== linear algebra

def _matmul_shape(a, b):
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError("matmul: operands must be at least 1-D (use * for scalars)")
    ka = a.shape[-1]
    kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if ka != kb:
        raise ShapeError(f"matmul: shapes {a.shape} and {b.shape} are not aligned: "
                         f"{ka} (last dim of the first) != {kb} (the contracted dim of the "
                         f"second). Fix: transpose one operand or check the weight shapes.")
    batch_a = a.shape[:-2] if a.ndim > 1 else ()
    batch_b = b.shape[:-2] if b.ndim > 1 else ()
    batch = broadcast_shapes(batch_a, batch_b)
    rows = (a.shape[-2],) if a.ndim > 1 else ()
    cols = (b.shape[-1],) if b.ndim > 1 else ()
    return Aval(batch + rows + cols, np.result_type(a.dtype, b.dtype))


def _matmul_vjp(g, a, b, *, out):
    from . import numpy_api as dp
    a_nd, b_nd = np.ndim(a), np.ndim(b)
    A = a if a_nd > 1 else np.reshape(a, (1, -1))
    B = b if b_nd > 1 else np.reshape(b, (-1, 1))
    G = g  # restore the dims matmul dropped for 1-D operands (b's first: order matters)
    if b_nd == 1:
        G = np.expand_dims(G, -1)
    if a_nd == 1:
        G = np.expand_dims(G, -2)
    ga = sum_to(G @ dp.swapaxes(B, -1, -2), np.shape(A)) if _inexact(np.result_type(a)) else None
    gb = sum_to(dp.swapaxes(A, -1, -2) @ G, np.shape(B)) if _inexact(np.result_type(b)) else None
    if ga is not None and a_nd == 1:
        ga = np.reshape(ga, np.shape(a))
    if gb is not None and b_nd == 1:
        gb = np.reshape(gb, np.shape(b))
    return (_cast(ga, a) if ga is not None else None, _cast(gb, b) if gb is not None else None)


def _julia_matmul(eqn, jl):
    a, b = (v.aval for v in eqn.inputs)
    if len(a.shape) <= 2 and len(b.shape) <= 2:
        return "DiffProg.npmatmul({0}, {1})"
    if len(b.shape) <= 2:  # a stack of matrices times one matrix/vector
        return "DiffProg.npmatmul_stacked({0}, {1})"
    return "DiffProg.npmatmul_batched({0}, {1})"  # stacks broadcast as in NumPy


def _julia_single_matrix(template):
    """The spelling for one matrix; stacks of matrices are refused with the reason."""
    def spell(eqn, jl):
        a = eqn.inputs[0].aval
        if len(a.shape) != 2:
            return Unsupported(f"{eqn.prim.name} of a stack of matrices (shape {a.shape}) has "
                               f"no Julia spelling yet; the julia engine takes one matrix")
        return template
    return spell


matmul = Primitive(
    "matmul", "{0} @ {1}", _matmul_shape, vjp=_matmul_vjp, numpy=np.matmul,
    jvp=lambda ts, a, b, *, out: _tsum([None if ts[0] is None else ts[0] @ b,
                                        None if ts[1] is None else a @ ts[1]]),
    julia=_julia_matmul,
    cases=[Case(lambda rng: [rng.standard_normal((3, 4)), rng.standard_normal((4, 2))]),
           Case(lambda rng: [rng.standard_normal((4,)), rng.standard_normal((4, 2))]),
           Case(lambda rng: [rng.standard_normal((2, 3, 4)), rng.standard_normal((4,))]),
           Case(lambda rng: [rng.standard_normal((4,)), rng.standard_normal((4,))]),
           Case(lambda rng: [rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5))])])


def _einsum_parse(subscripts: str, n_operands: int):
    inputs, output = subscripts.split("->")
    return inputs.split(","), output


def _einsum_shape(*ops, subscripts, optimize=False):
    ins, out = _einsum_parse(subscripts, len(ops))
    sizes: dict = {}
    for sub, op in zip(ins, ops):
        if len(sub) != op.ndim:
            raise ShapeError(f"einsum {subscripts!r}: operand subscripts {sub!r} do not match "
                             f"an operand of shape {op.shape}")
        for ch, d in zip(sub, op.shape):
            if sizes.setdefault(ch, d) != d:
                if sizes[ch] == 1:
                    sizes[ch] = d
                elif d != 1:
                    raise ShapeError(f"einsum {subscripts!r}: index {ch!r} has sizes {sizes[ch]} and {d}")
    return Aval(tuple(sizes[c] for c in out), np.result_type(*[o.dtype for o in ops]))


def _einsum_vjp(g, *ops, out, subscripts, optimize):
    ins, outsub = _einsum_parse(subscripts, len(ops))
    cts = []
    for i, op in enumerate(ops):
        if not _inexact(np.result_type(op)):
            cts.append(None)
            continue
        target = ins[i]
        if len(set(target)) != len(target):
            from .errors import UnsupportedFunctionError
            raise UnsupportedFunctionError(
                f"gradient of einsum {subscripts!r}: operand {i} repeats an index (a diagonal). "
                f"Fix: take the diagonal with np.diagonal-free code, e.g. np.sum(a * np.eye(n), ...).")
        others = [s for j, s in enumerate(ins) if j != i]
        available = set(outsub).union(*others) if others else set(outsub)
        kept = "".join(c for c in target if c in available)
        spec = ",".join([outsub] + others) + "->" + kept
        ct = einsum(g, *[o for j, o in enumerate(ops) if j != i], subscripts=spec, optimize=optimize)
        if kept != target:  # indices only in this operand were summed: broadcast back
            shape_kept = tuple(np.shape(op)[target.index(c)] if c in kept else 1 for c in target)
            perm_src = kept + "".join(c for c in target if c not in kept)
            ct = np.reshape(ct, tuple(np.shape(ct)) + (1,) * (len(target) - len(kept)))
            ct = np.transpose(ct, tuple(perm_src.index(c) for c in target))
            ct = np.broadcast_to(np.reshape(ct, shape_kept), np.shape(op))
        cts.append(_cast(sum_to(ct, np.shape(op)), op))
    return tuple(cts)


def _einsum_jvp(ts, *ops, out, subscripts, optimize):
    terms = []
    for i, t in enumerate(ts):
        if t is not None:
            args = list(ops)
            args[i] = t
            terms.append(einsum(*args, subscripts=subscripts, optimize=optimize))
    return _tsum(terms)


def _julia_einsum(eqn, jl):
    """Subscripts as integer labels (letters numbered; no user text reaches the source),
    each operand's and the output's reversed for Julia's reversed axes."""
    ins, out = _einsum_parse(eqn.params["subscripts"], len(eqn.inputs))
    if any(len(set(sub)) != len(sub) for sub in ins):
        return Unsupported(f"einsum {eqn.params['subscripts']!r} repeats an index within one "
                           f"operand (a diagonal or trace), which has no Julia spelling yet")
    number = {c: i + 1 for i, c in enumerate(dict.fromkeys("".join(ins) + out))}

    def labels(sub):
        return jl.tuple(number[c] for c in reversed(sub))
    return f"DiffProg.npeinsum({jl.tuple(labels(sub) for sub in ins)}, {labels(out)}, {{args}})"


einsum = Primitive(
    "einsum", "xp.einsum({subscripts}, {args}, optimize={optimize})",
    _einsum_shape, vjp=_einsum_vjp, jvp=_einsum_jvp,
    julia=_julia_einsum,
    cases=[Case(lambda rng: [rng.standard_normal((3, 4)), rng.standard_normal((4, 5))],
                {"subscripts": "ij,jk->ik", "optimize": False}),
           Case(lambda rng: [rng.standard_normal((3, 4)), rng.standard_normal((3, 4))],
                {"subscripts": "ij,ij->i", "optimize": False}),
           Case(lambda rng: [rng.standard_normal((3, 4))], {"subscripts": "ij->", "optimize": False}),
           Case(lambda rng: [rng.standard_normal((2, 3)), rng.standard_normal((3, 4)),
                             rng.standard_normal((4,))], {"subscripts": "ij,jk,k->i", "optimize": False})])


def _swap(x):
    from . import numpy_api as dp
    return dp.swapaxes(x, -1, -2)


def _square_shape(a, what):
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ShapeError(f"{what}: expected a square matrix (or a stack of them), got shape {a.shape}")


def _solve_shape(a, b):
    _square_shape(a, "linalg.solve")
    n = a.shape[-1]
    if b.ndim == 1:
        if b.shape[0] != n:
            raise ShapeError(f"linalg.solve: a has shape {a.shape} but b has shape {b.shape}; "
                             f"b must have {n} rows")
        return Aval(a.shape[:-2] + (n,), np.result_type(a.dtype, b.dtype))
    if b.shape[-2] != n:
        raise ShapeError(f"linalg.solve: a has shape {a.shape} but b has shape {b.shape}; "
                         f"b must have {n} rows (b.shape[-2])")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return Aval(batch + b.shape[-2:], np.result_type(a.dtype, b.dtype))


def _solve_vjp(g, a, b, *, out):
    vec = np.ndim(b) == 1
    G = np.expand_dims(g, -1) if vec else g
    X = np.expand_dims(out, -1) if vec else out
    gb = solve(_swap(a), G)
    ga = sum_to(-(gb @ _swap(X)), np.shape(a))
    gb = sum_to(np.reshape(gb, np.shape(gb)[:-1]) if vec else gb, np.shape(b))  # b may be unbatched
    return (_cast(ga, a), _cast(gb, b))


def _solve_jvp(ts, a, b, *, out):
    vec = np.ndim(b) == 1
    rhs = []
    if ts[1] is not None:
        rhs.append(np.expand_dims(ts[1], -1) if vec else ts[1])
    if ts[0] is not None:
        rhs.append(-(ts[0] @ (np.expand_dims(out, -1) if vec else out)))
    if not rhs:
        return None
    res = solve(a, _tsum(rhs))
    return np.reshape(res, np.shape(out)) if vec else res


def _well_conditioned(*shape):
    def make(rng):
        n = shape[-1]
        return [rng.standard_normal(shape) + 3.0 * np.eye(n)]
    return make


def _solve_impl(xp, a, b):
    """``linalg.solve`` with NumPy 2's broadcasting on any array library: batch dims of a
    and b broadcast against each other, and a 1-d b is one vector for every matrix of a.
    (CuPy wants equal batch dims and reads a (batch, n) b as vectors, as NumPy 1 did.)"""
    if xp is np or (b.ndim > 1 and a.shape[:-2] == b.shape[:-2]) or (b.ndim == 1 and a.ndim == 2):
        return xp.linalg.solve(a, b)
    if b.ndim == 1:
        return _solve_impl(xp, a, b[:, None])[..., 0]
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return xp.linalg.solve(xp.broadcast_to(a, batch + a.shape[-2:]),
                           xp.broadcast_to(b, batch + b.shape[-2:]))


solve = Primitive(
    "solve", _solve_impl, _solve_shape, vjp=_solve_vjp, jvp=_solve_jvp,
    julia=_julia_single_matrix("DiffProg.npsolve({0}, {1})"),
    cases=[Case(lambda rng: _well_conditioned(3, 3)(rng) + [rng.standard_normal(3)]),
           Case(lambda rng: _well_conditioned(3, 3)(rng) + [rng.standard_normal((3, 2))]),
           Case(lambda rng: _well_conditioned(2, 3, 3)(rng) + [rng.standard_normal((2, 3, 2))]),
           Case(lambda rng: _well_conditioned(2, 3, 3)(rng) + [rng.standard_normal(3)])])


def _inv_shape(a):
    _square_shape(a, "linalg.inv")
    return Aval(a.shape, a.dtype)


inv = Primitive(
    "inv", "xp.linalg.inv({0})", _inv_shape,
    vjp=lambda g, a, *, out: (-(_swap(out) @ g @ _swap(out)),),
    jvp=lambda ts, a, *, out: None if ts[0] is None else -(out @ ts[0] @ out),
    julia=_julia_single_matrix("DiffProg.npinv({0})"),
    cases=[Case(_well_conditioned(3, 3)), Case(_well_conditioned(2, 3, 3))])


def _adjugate_impl(xp, a):
    """adj(a) = det(a) inv(a), without the inverse: from the SVD a = U diag(s) V^T,
    adj(a) = det(U) det(V) V diag(prod of the s_j but s_i) U^T. The products leaving one
    singular value out are prefix times suffix products, not det / s_i, so a rank n-1
    matrix (one s_i = 0) gets its exact, nonzero adjugate and lower ranks get zero."""
    if a.shape[-1] == 0:
        return xp.zeros_like(a)
    u, s, vh = xp.linalg.svd(a)
    one = xp.ones(s.shape[:-1] + (1,), s.dtype)
    before = xp.cumprod(xp.concatenate([one, s[..., :-1]], axis=-1), axis=-1)
    after = xp.flip(xp.cumprod(xp.concatenate([one, xp.flip(s[..., 1:], axis=-1)], axis=-1),
                               axis=-1), axis=-1)
    sign = xp.sign(xp.linalg.det(u) * xp.linalg.det(vh))  # +-1: U and V are orthogonal
    adj = (xp.swapaxes(vh, -1, -2) * (before * after)[..., None, :]) @ xp.swapaxes(u, -1, -2)
    return adj * sign[..., None, None]


def _adjugate_jvp(a, e):
    """d adj(a)[e], exact at every rank, written with adjugate itself so that every order
    traces. For a rank-one direction x y^T,
        d adj(a)[x y^T] = -adj([[a, x], [y^T, 0]])[:n, :n]
    (both sides are polynomials in a, and for invertible a both equal
    (tr(adj(a) x y^T) adj(a) - adj(a) x y^T adj(a)) / det(a)); e is the sum over k of
    its column k times e_k^T. That is n adjugates of (n+1)-matrices, O(n^4): only
    second and higher derivatives of det pay it."""
    n = np.shape(a)[-1]
    batch = tuple(np.shape(a)[:-2])
    dtype = np.result_type(a)
    copies = np.broadcast_to(np.expand_dims(a, -3), batch + (n, n, n))
    columns = np.expand_dims(_swap(e), -1)  # [..., k, :, 0] is column k of e
    last_rows = np.concatenate([np.eye(n, dtype=dtype)[:, None, :], np.zeros((n, 1, 1), dtype)],
                               axis=-1)  # [k] is [e_k^T, 0]
    bordered = np.concatenate([np.concatenate([copies, columns], axis=-1),
                               np.broadcast_to(last_rows, batch + (n, 1, n + 1))], axis=-2)
    return -np.sum(adjugate(bordered)[..., :n, :n], axis=-3)


def _adjugate_shape(a):
    _square_shape(a, "adjugate")
    return Aval(a.shape, a.dtype)


def _adjugate_julia(eqn, jl):
    """Julia holds a^T, and adj(a^T) = adj(a)^T: the same SVD formula on the Julia matrix
    (slices and cumprod, no scalar indexing, so GPU matrices work)."""
    return _julia_single_matrix(
        "let F = LinearAlgebra.svd({0}), s = F.S, o = one(eltype(s)); "
        "sign(DiffProg.npdet(F.U) * DiffProg.npdet(F.Vt)) .* (F.V * LinearAlgebra.Diagonal("
        "cumprod(vcat(o, s[1:(end - 1)])) .* reverse(cumprod(vcat(o, reverse(s[2:end]))))"
        ") * F.U') end")(eqn, jl)


def _rank(n, r, *batch):
    """A matrix (or stack) of rank r: det is 0 for r < n, its gradient is not for r = n - 1."""
    return lambda rng: [rng.standard_normal(batch + (n, r)) @ rng.standard_normal(batch + (r, n))]


# The transposed adjugate is det's gradient at every matrix, singular ones included.
# Its VJP is its JVP transposed: <G, d adj(a)[E]> = <d adj(a)[G^T]^T, E> (check it on
# invertible a with d adj[E] = (tr(adj E) adj - adj E adj) / det; both sides are
# polynomials). Single matrices in the table (stacks are covered through det's cases).
adjugate = Primitive(
    "adjugate", _adjugate_impl, _adjugate_shape,
    vjp=lambda g, a, *, out: (_swap(_adjugate_jvp(a, _swap(g))),),
    jvp=lambda ts, a, *, out: None if ts[0] is None else _adjugate_jvp(a, ts[0]),
    julia=_adjugate_julia,
    cases=[Case(_well_conditioned(3, 3)), Case(_rank(3, 2)), Case(_rank(3, 1)),
           Case(_rank(4, 3)), Case(_rng_normal(1, 1))])


def _det_shape(a):
    _square_shape(a, "linalg.det")
    return Aval(a.shape[:-2], a.dtype)


# d det(a)[t] = tr(adj(a) t): through the adjugate, not det(a) inv(a), which fails (or
# is garbage) at singular matrices where the gradient is well defined.
det = Primitive(
    "det", "xp.linalg.det({0})", _det_shape,
    vjp=lambda g, a, *, out: (np.expand_dims(g, (-1, -2)) * _swap(adjugate(a)),),
    jvp=lambda ts, a, *, out: (None if ts[0] is None
                               else np.sum(_swap(adjugate(a)) * ts[0], axis=(-2, -1))),
    julia=_julia_single_matrix("DiffProg.npdet({0})"),
    cases=[Case(_well_conditioned(3, 3)), Case(_well_conditioned(2, 3, 3)), Case(_rank(3, 2)),
           Case(_rank(4, 2)), Case(_rank(3, 2, 2))])


def _slogdet_shape(a):
    _square_shape(a, "linalg.slogdet")
    return [Aval(a.shape[:-2], a.dtype), Aval(a.shape[:-2], a.dtype)]


def _inverse_or_nan(a, sign):
    """inv(a), and NaN for each matrix NumPy's slogdet calls singular (sign 0, logabsdet
    -inf): log|det| has no derivative there. The same exact zero pivot of LAPACK's LU
    makes slogdet return sign 0 and inv raise, so those matrices are replaced by the
    identity before inverting (the other matrices of a stack keep their gradients)."""
    singular = np.expand_dims(sign == 0, (-1, -2))
    safe = np.where(singular, np.eye(np.shape(a)[-1], dtype=np.result_type(a)), a)
    return np.where(singular, np.nan, inv(safe))


def _slogdet_vjp(gs, a, *, out):
    g_logdet = gs[1]
    if g_logdet is None:
        return (None,)
    return (np.expand_dims(g_logdet, (-1, -2)) * _swap(_inverse_or_nan(a, out[0])),)


def _slogdet_jvp(ts, a, *, out):
    if ts[0] is None:
        return [None, None]
    return [None, np.sum(_swap(_inverse_or_nan(a, out[0])) * ts[0], axis=(-2, -1))]


slogdet = Primitive(
    "slogdet", "tuple(xp.linalg.slogdet({0}))", _slogdet_shape, vjp=_slogdet_vjp, jvp=_slogdet_jvp,
    julia=_julia_single_matrix("DiffProg.npslogdet({0})"), multiple_results=True,
    cases=[Case(_well_conditioned(3, 3)), Case(_well_conditioned(2, 3, 3))])


def _tril_scaled(x, diagonal):
    """``x`` on its lower triangle, the diagonal scaled by ``diagonal``, zeros above."""
    from . import numpy_api as dp
    n = np.shape(x)[-1]
    weights = np.tril(np.ones((n, n))) - (1.0 - diagonal) * np.eye(n)
    return x * dp.constant(weights.astype(np.result_type(x)))


def _phi(x):
    """Lower triangle with the diagonal halved (the cholesky rule's projection)."""
    return _tril_scaled(x, 0.5)


# NumPy's cholesky reads only the lower triangle of `a`: it factors the symmetric
# A = tril(a) + tril(a, -1)^T, whatever is above the diagonal. The rules are those of
# that function of `a` (what finite differences of NumPy see), not of a symmetric input:
# the JVP symmetrises the tangent's lower triangle, and the VJP takes the symmetric
# cotangent (S + S^T) / 2 of A back through that map, so it lies on the lower triangle
# with each off-diagonal entry counted twice: phi(S + S^T). On symmetric perturbations
# this agrees with the usual symmetric rule.
def _cholesky_vjp(g, a, *, out):
    L = out
    Linv = inv(L)
    S = _swap(Linv) @ _phi(_swap(L) @ g) @ Linv
    return (_phi(S + _swap(S)),)


def _cholesky_jvp(ts, a, *, out):
    if ts[0] is None:
        return None
    L = out
    Linv = inv(L)
    t = _tril_scaled(ts[0], 1.0) + _swap(_tril_scaled(ts[0], 0.0))
    return L @ _phi(Linv @ t @ _swap(Linv))


def _cholesky_shape(a):
    _square_shape(a, "linalg.cholesky")
    return Aval(a.shape, a.dtype)


def _spd(x):
    """A positive definite lower triangle, and noise above it that NumPy never reads
    (so the generated tests see the rules on non-symmetric perturbations too)."""
    n = np.shape(x)[-1]
    return x @ _swap(x) + n * np.eye(n) + np.triu(x, 1)


cholesky = Primitive(
    "cholesky", "xp.linalg.cholesky({0})", _cholesky_shape, vjp=_cholesky_vjp, jvp=_cholesky_jvp,
    julia=_julia_single_matrix("DiffProg.npcholesky({0})"),
    cases=[Case(_rng_normal(3, 3), wrap=_spd), Case(_rng_normal(2, 3, 3), wrap=_spd)])
