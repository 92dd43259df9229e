"""The ground floor of the primitive table: what an entry is, its example cases and the
registry that the NumPy front end, the transforms, the engines and the generated tests
read.

A :class:`Primitive` is one entry: everything about one operation, in one place.

``impl``      how it computes: a source template over ``xp`` (numpy or cupy) such as
              ``"xp.sum({0}, axis={axes})"`` (inputs ``{0}``, ``{1}``..., all inputs
              ``{args}``, params by name), or a callable ``impl(xp, *inputs, **params)``.
              An entry with a ``ufunc`` or an ``operator`` needs none: it is spelled
              from them (``"xp.exp({0})"``, ``"{0} + {1}"``).
``shape``     abstract evaluation, ``shape(*avals, **params) -> Aval`` (a list of Avals
              for ``multiple_results``). Elementwise entries may leave it out: their aval
              is the broadcast shape, NumPy's result dtype (found by evaluating ``impl``
              on one-element values) and, for operators, Python's weak scalars.
``vjp``       ``vjp(g, *inputs, out=..., **params) -> one cotangent per input`` (None: zero).
``jvp``       ``jvp(tangents, *inputs, out=..., **params) -> output tangent`` (None: zero).
``batch``     (optional) the batching rule of ``dp.vmap`` (JAX style),
              ``batch(values, dims, size, **params) -> (outputs, out_dims)``: ``dims[i]``
              is the axis of ``values[i]`` that indexes the examples (None: shared by all),
              ``size`` the number of examples; :mod:`diffprog.transforms.batch` falls back
              to its own rules (and then to one call per example) for entries without one.
``julia``     its Julia spelling: a template over reversed axes (operands ``{0}``,
              ``{args}``, ``{rest}``, params by name, and the derived placeholders of
              :func:`diffprog.engines.julia.derived_placeholders`: ``{jaxes}``,
              ``{jaxis}``, ``{jshape}``, ``{jperm}``, ``{jpad_width}``, ``{jdtype}``,
              ``{jout}``), a callable ``(eqn, jl) -> template | Unsupported`` where the
              spelling depends on shapes, or ``Unsupported(reason)``.
``numpy``     the NumPy functions it implements: one or a tuple (called with the entry's
              own operands), or a dict ``{function: binding}`` where ``binding(*args,
              **kwargs)`` takes NumPy's signature (its keywords, argument checks) and binds
              the entry. Default: its ``ufunc``. The NumPy front end dispatches to these.
``ufunc``     the NumPy ufunc it computes, operand for operand, without params (engines
              call it with ``out=``); ``ufunc_call(**params) -> (ufunc, extra operands)``
              where the ufunc depends on params (``x ** n``); see :meth:`Primitive.as_ufunc`.
``operator``  the Python operator it is spelled with (``"+"``, ``"**"``, ``"@"``): on Python
              scalars it gives a Python scalar (weakly typed), and on two Python floats it
              runs on NumPy scalars so that NumPy's rules hold (inf and a warning where
              Python would raise ``ZeroDivisionError``).
``c``         (elementwise, optional) its C spelling on float64/bool scalars for the numpy
              engine's compiled kernels (:mod:`diffprog.engines.ckernel`): operands ``{0}``,
              ``{1}``..., params by name; ``dp_*`` helpers live in that module's C preamble.
              Used only after a check at run time that it reproduces ``impl`` bit for bit.
``cases``     example inputs on the entry's domain, from which tests are generated.
``complex``   its rules hold on complex values too, in JAX's convention (below); the
              generated tests then also run each case with complex inputs. Derivatives
              through complex values of an entry without it are refused by name.

Complex values follow JAX's convention: a cotangent ``c`` of a complex value ``z`` is
the covector ``dz -> Re(sum(c * dz))`` (no conjugate). So the VJP of a C-linear map is
its plain transpose, and a holomorphic function's rule is the real one unchanged
(``g * f'(z)``); ``grad`` of a real ``f(x + iy)`` is ``df/dx - i df/dy``. The cotangent
of a real value that met complex ones is the real part (:func:`rules.in_dtype_of`).

Rules are written with NumPy calls on traced values (and with other entries): they trace
into IR, so every derivative is itself differentiable and runs on every engine.
Notation: ``g`` cotangent, ``t`` tangent, ``out`` the primal output.
"""
from __future__ import annotations

import functools
import string
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import ShapeError
from ..ir import Aval
from ..tracing import bind

#: every entry of the table, by name (entries made at run time, such as dp.custom_vjp
#: functions, stay out of it: see ``register``)
PRIMITIVES: dict[str, "Primitive"] = {}


@dataclass(frozen=True)
class Binding:
    """How a NumPy function reaches an entry: ``call(*args, **kwargs)`` takes NumPy's
    signature and binds ``prim``."""

    prim: "Primitive"
    call: Callable


#: NumPy function (or ufunc) -> its Binding, filled by the entries' ``numpy``
NUMPY_BINDINGS: dict[Any, Binding] = {}


@dataclass(frozen=True)
class Unsupported:
    """Marks an engine spelling that does not exist, with the reason users will see."""

    reason: str


@dataclass(frozen=True)
class Case:
    """Example call for generated tests: ``make(rng) -> list of inputs``, plus params.

    ``wrap`` (optional) maps the test's free inputs to the entry's inputs, for entries
    whose domain is a manifold. ``order``: the highest derivative order the generated
    tests check: 2 (default), 1 at kinks and for piecewise rules, 0 for entries whose
    derivatives are refused on purpose. ``complex``: for an entry with complex rules, the
    generated tests also run this case with its floating inputs moved off the real line
    (all of them, and only the first); False where that leaves the entry's domain.
    """

    make: Callable
    params: dict = field(default_factory=dict)
    wrap: Callable | None = None
    order: int = 2
    rtol: float = 1e-5
    complex: bool = True

    @property
    def smooth(self) -> bool:
        """Checked to second order."""
        return self.order >= 2


# ------------------------------------------------------------------ example domains

def normal(*shape) -> Callable:
    """Cases: one standard-normal input of ``shape``."""
    return lambda rng: [rng.standard_normal(shape)]


def uniform(low: float, high: float, *shape) -> Callable:
    """Cases: one input drawn uniformly from ``[low, high)``."""
    return lambda rng: [rng.uniform(low, high, shape)]


def positive(*shape) -> Callable:
    return uniform(0.5, 2.0, *shape)


def inside_unit_interval(*shape) -> Callable:
    return uniform(-0.9, 0.9, *shape)


# ------------------------------------------------------------------------ entries

class Primitive:
    """One entry of the table (see the module docstring for every slot)."""

    def __init__(self, name: str, impl=None, shape: Callable | None = None, *, vjp=None,
                 jvp=None, batch=None, julia=None, numpy=None, ufunc=None, ufunc_call=None,
                 operator=None, c=None, cases=(), differentiable=True, elementwise=False,
                 multiple_results=False, identity=None, commutative=False, effectful=False,
                 negation=False, absorb_negation=None, register=True, complex=False,
                 missing_cotangents=False):
        self.name = name
        self.ufunc = ufunc
        self.ufunc_call = ufunc_call
        self.operator = operator
        self.impl = impl if impl is not None else _spelled(ufunc, operator)
        self.shape = shape
        self.vjp = vjp
        self.jvp = jvp
        #: dp.vmap's rule: batch(values, dims, size, **params) -> (outputs, out_dims)
        self.batch = batch
        self.julia = julia
        self.c = c
        self.cases = tuple(cases)
        self.differentiable = differentiable
        #: its rules hold on complex values (JAX's convention; see the module docstring)
        self.complex = complex
        self.elementwise = elementwise
        self.multiple_results = multiple_results
        #: (multiple results) its VJP takes None for a result without a cotangent, not
        #: zeros: a derivative of eigenvectors at repeated eigenvalues is 0 * inf = NaN
        #: even when only the eigenvalues are used
        self.missing_cotangents = missing_cotangents
        #: {operand position: neutral constant}: bind drops the equation when that operand
        #: is the neutral constant and the result equals the other operand (x * 1, x + 0)
        self.identity = identity or {}
        #: the result does not depend on operand order, bit for bit (CSE may merge a*b, b*a)
        self.commutative = commutative
        #: kept by dead-code elimination although it has no outputs (a guard)
        self.effectful = effectful
        #: sign rules (transforms.simplify.fold_negations): ``negation``: y = -x;
        #: ``absorb_negation(eqn, negated) -> replacement equations | None``: how this
        #: entry takes in an operand that is a negation (``negated(a)`` is b when a = -b
        #: is used only there)
        self.negation = negation
        self.absorb_negation = absorb_negation
        if shape is None and not elementwise:
            raise ValueError(f"primitive {name!r}: only elementwise entries may leave out "
                             f"their shape rule")
        self._eager = compile_template(self.impl) if isinstance(self.impl, str) else self.impl
        # register=False: primitives made at run time (dp.custom_vjp rules) stay out of
        # the table, whose entries get generated tests, NumPy bindings and Julia spellings.
        if not register:
            return
        if name in PRIMITIVES:
            raise ValueError(f"primitive {name!r} defined twice")
        bindings = _bindings(self, numpy if numpy is not None else
                             ((ufunc,) if ufunc is not None else ()))
        PRIMITIVES[name] = self
        NUMPY_BINDINGS.update(bindings)

    def __repr__(self) -> str:
        return f"Primitive({self.name})"

    def as_ufunc(self, params: dict):
        """``(ufunc, extra operands)``: this entry with these params as one ufunc call,
        ``ufunc(*inputs, *extra)`` (engines call it with ``out=``); None when it is none."""
        if self.ufunc_call is not None:
            return self.ufunc_call(**params)
        return (self.ufunc, ()) if self.ufunc is not None and not params else None

    def evaluate(self, xp, *args, **params):
        return self._eager(xp, *args, **params)

    def abstract_eval(self, *avals, **params):
        if self.shape is None:
            return elementwise_aval(self, avals, params)
        return shape_of_call(self, avals, params)

    def bind(self, *args, **params):
        return bind(self, *as_untraced_code_reads(args), **params)

    __call__ = bind


def _spelled(ufunc, operator) -> str:
    """The impl template of an entry given by its ufunc or its operator."""
    if operator is not None:
        arity = ufunc.nin if ufunc is not None else 2
        return f"{operator}{{0}}" if arity == 1 else f"{{0}} {operator} {{1}}"
    if ufunc is None:
        raise ValueError("an entry needs an impl, a ufunc or an operator")
    return f"xp.{ufunc.__name__}({', '.join(f'{{{i}}}' for i in range(ufunc.nin))})"


def _bindings(prim: Primitive, numpy) -> dict:
    """``{NumPy function: Binding}`` from an entry's ``numpy`` (checked: a function is
    bound to one entry only)."""
    if isinstance(numpy, dict):
        pairs = list(numpy.items())
    else:
        pairs = [(fn, prim.bind) for fn in (numpy if isinstance(numpy, (tuple, list)) else [numpy])]
    bindings = {}
    for fn, call in pairs:
        known = NUMPY_BINDINGS.get(fn)
        if known is not None:
            raise ValueError(f"{fn!r} is bound to both {known.prim.name!r} and {prim.name!r}")
        bindings.setdefault(fn, Binding(prim, call))  # np.mod is np.remainder: once
    return bindings


def compile_template(template: str) -> Callable:
    """Turn ``"xp.sum({0}, axis={axes})"`` into ``lambda xp, a0, *, axes: ...``."""
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


# ------------------------------------------------------------- operands as NumPy reads them

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


# ------------------------------------------------------------------------ shape rules

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
def dtype_by_example(prim: Primitive, kinds: tuple, params: tuple):
    """Output dtype(s) of ``prim`` on operands of ``kinds`` ((dtype, weak) pairs), from
    evaluating its impl on one-element examples: exactly NumPy's promotion rules."""
    samples = [(dt.type(1).item() if weak else np.ones((), dt)) for dt, weak in kinds]
    with np.errstate(all="ignore"):
        out = prim.evaluate(np, *samples, **dict(params))
    if isinstance(out, tuple):
        return tuple(np.result_type(o) for o in out)
    return np.result_type(out)


def params_key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


#: ``{(prim, shape, ((dtype, weak), ...), params_key): Aval}``: tracing asks the same
#: question for almost every elementwise equation of a long program
_ELEMENTWISE_AVALS: dict = {}


def elementwise_aval(prim: Primitive, avals, params: dict) -> Aval:
    """The aval of an elementwise entry: broadcast shape, NumPy's dtype; weak when every
    operand is a Python scalar and the entry is an operator (Python operators on Python
    scalars give Python scalars; NumPy functions give NumPy scalars, which are strong:
    np.sin(0.5) is an np.float64)."""
    try:
        key = (prim, tuple([a.shape for a in avals]), tuple([(a.dtype, a.weak) for a in avals]),
               params_key(params) if params else ())
        known = _ELEMENTWISE_AVALS.get(key)
    except TypeError:  # an unhashable param or shape
        return _elementwise_aval(prim, avals, params)
    if known is None:
        known = _elementwise_aval(prim, avals, params)
        if len(_ELEMENTWISE_AVALS) >= 8192:
            _ELEMENTWISE_AVALS.clear()
        _ELEMENTWISE_AVALS[key] = known
    return known


def _elementwise_aval(prim: Primitive, avals, params: dict) -> Aval:
    shape = broadcast_shapes(*[a.shape for a in avals])
    dtype = dtype_by_example(prim, tuple((a.dtype, a.weak) for a in avals), params_key(params))
    weak = prim.operator is not None and all(a.weak for a in avals)
    return Aval(shape, np.dtype(dtype), weak)


#: ``{(entry, avals, params key): result avals}``: shape rules asked the same question
#: again and again (``y[0]`` of a loop's state, every step)
_SHAPE_RESULTS: dict = {}


def shape_of_call(prim: Primitive, avals, params: dict):
    """``prim.shape(*avals, **params)``, remembered for the table's entries when the params
    are plain values (a shape rule is a function of those; entries made at run time and
    params such as loop bodies are asked every time)."""
    if PRIMITIVES.get(prim.name) is not prim:
        return prim.shape(*avals, **params)
    from ..transforms.templates import plain_key
    try:
        key = (prim, avals, plain_key(params)) if params else (prim, avals)
        known = _SHAPE_RESULTS.get(key)
    except TypeError:  # an unhashable aval (a shape given as a list)
        return prim.shape(*avals, **params)
    if known is None:
        known = prim.shape(*avals, **params)
        if key[-1] is not None:
            if len(_SHAPE_RESULTS) >= 8192:
                _SHAPE_RESULTS.clear()
            _SHAPE_RESULTS[key] = known
    return list(known) if isinstance(known, list) else known


def normalize_axes(axis, ndim: int) -> tuple:
    """``axis`` (None, an int or a tuple, negatives allowed) as sorted non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"axis {a} is out of bounds for an array of dimension {ndim}")
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def real_dtype(dtype) -> np.dtype:
    """The real dtype of the parts of ``dtype`` (float32 for complex64); a real dtype as it
    is."""
    return np.empty((), dtype).real.dtype


def is_inexact(dtype) -> bool:
    """A float or complex dtype: one that carries derivatives."""
    return np.issubdtype(dtype, np.inexact)
