"""NumPy front end: how NumPy calls on traced values become primitives.

``Tracer.__array_ufunc__``/``__array_function__`` (and indexing) land here. A NumPy
function that one entry of the table computes is bound by that entry itself
(``Primitive(numpy=...)``, read from the registry at dispatch); this module holds the
argument normalisation (axis, keepdims, ...) of the others and *composites*: NumPy
functions built from primitives (mean, var, norm, stack, roll, tensordot, ...).
Everything here works on plain arrays too, so the same code serves rules and tracing.
"""
from __future__ import annotations

import builtins
import functools
import inspect
import sys
import types
from typing import Any, Callable

import numpy as np

from . import inplace
from .primitives import core, elementwise, linalg, reductions, shapes, special
from .errors import ArgumentError, ArgumentValueError, ShapeError
from .tracing import IN_DERIVATIVE_RULE, Tracer, fresh, may_be_strided, unsupported

HANDLERS: dict[Any, Callable] = {}
TRACER_METHODS: dict[str, Callable] = {}


def implements(*np_funcs, method: str | None = None):
    """Register a function as the traced version of NumPy function(s) (and a method)."""
    def deco(fn):
        registered = _refusing_out(fn, getattr(np_funcs[0], "__name__", fn.__name__) if np_funcs
                                   else method)
        for f in np_funcs:
            HANDLERS[f] = registered
        if method:
            for m in method.split(","):
                TRACER_METHODS[m.strip()] = registered
        return fn
    return deco


def _refusing_out(fn, name):
    """``fn`` refusing a non-None ``out=`` argument (keyword or positional): writing a
    result into a caller's array cannot be traced, and ignoring it would silently
    leave that array (and its gradient) unchanged."""
    params = list(inspect.signature(fn).parameters.values())
    names = [p.name for p in params]
    if "out" not in names:
        return fn
    position = names.index("out")
    positional = params[position].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        if kwargs.get("out") is not None or positional and len(args) > position \
                and args[position] is not None:
            raise ArgumentError(
                f"np.{name}(..., out=...) writes into an array in place, which cannot be "
                f"traced. Fix: use the returned value, e.g. `b = np.{name}(...)`.")
        return fn(*args, **kwargs)
    return handler


def constant(x):
    """Mark a plain array as a constant inside a rule (it stays a bound value)."""
    return x


def _is_traced(*xs) -> bool:
    return builtins.any(isinstance(x, Tracer) for x in xs)


def copied(x, order: str = "K", same_object: bool = False):
    """``x`` as NumPy's copy of it in ``order`` ("C", "F" or "K") is laid out: a ``copy``
    equation where that layout may differ from ``x``'s (elementwise.copy says why it
    matters), else ``x`` itself. A value the program made by a ufunc is contiguous in
    some order, so its "K" copy (and any copy of it in one dimension) is laid out as it is."""
    if not isinstance(x, Tracer) or int(np.prod(x.aval.shape)) <= 1 or IN_DERIVATIVE_RULE.get():
        return x if same_object else fresh(x)  # (NumPy's copy is a new array: a new object)
    if not may_be_strided(x) and (order == "K" or len(x.aval.shape) <= 1) or \
            order in ("C", "K") and inplace.known_c(x):  # (C-contiguous: NumPy copies nothing)
        return x if same_object else fresh(x)
    if len(x.aval.shape) <= 1:
        order = "K"  # one dimension: every order lays a copy out alike (one copy kind)
    return elementwise.copy(x, order=order)


def shape(x) -> tuple:
    return tuple(np.shape(x)) if not isinstance(x, Tracer) else x.shape


def ndim(x) -> int:
    return len(shape(x))


def dtype_of(x) -> np.dtype:
    return x.dtype if hasattr(x, "dtype") else np.result_type(x)


# =========================================================== dispatch entry points

_UFUNC_COMPOSITES: dict[Any, Callable] = {}

#: operands of other libraries: ``hook(func, args, kwargs)`` computes a call holding one of
#: theirs, or returns NotImplemented (diffprog.scipy_api.sparse: scipy.sparse matrices)
FOREIGN_OPERANDS: list = []


def _foreign(func, args, kwargs):
    for hook in FOREIGN_OPERANDS:
        result = hook(func, args, kwargs)
        if result is not NotImplemented:
            return result
    return NotImplemented


def dispatch_ufunc(ufunc, method, inputs, kwargs):
    if FOREIGN_OPERANDS and method == "__call__" and \
            (result := _foreign(ufunc, inputs, kwargs)) is not NotImplemented:
        return result
    if kwargs.get("out") is not None:
        raise ArgumentError(
            f"np.{ufunc.__name__}(..., out=...) (or an in-place operator such as `a += x` on a "
            f"plain NumPy array) writes into an array in place, which cannot be traced. Fix: "
            f"use the returned value, e.g. `a = a + x`, instead of out= or +=.")
    dtype = kwargs.pop("dtype", None)
    kwargs.pop("out", None)
    if _complex_without_loop(ufunc, inputs):
        raise ArgumentError(
            f"np.{ufunc.__name__} of complex values: NumPy has no complex loop for it (it "
            f"raises 'ufunc {ufunc.__name__!r} not supported for the input types'), so "
            f"diffprog computes none either" + _COMPLEX_INSTEAD.get(ufunc.__name__, ""))
    if method == "reduce":
        return _ufunc_reduce(ufunc, *inputs, dtype=dtype, **kwargs)
    if method == "accumulate" and ufunc in (np.add, np.multiply) and set(kwargs) <= {"axis"}:
        # ufunc.accumulate runs along axis 0 by default (cumsum/cumprod: flattened)
        x, *rest = inputs
        axis = kwargs.get("axis", rest[0] if rest else 0)
        return (cumsum if ufunc is np.add else cumprod)(x, axis=axis, dtype=dtype)
    if kwargs:
        raise ArgumentError(f"np.{ufunc.__name__}: unsupported keyword(s) {sorted(kwargs)} on traced values")
    if method != "__call__":
        raise unsupported(f"np.{ufunc.__name__}.{method}")
    result = _apply_ufunc(ufunc, inputs)
    return astype(result, dtype) if dtype is not None else result


#: ufunc -> whether NumPy has a loop taking complex operands (its type table says)
_COMPLEX_LOOPS: dict = {}
_COMPLEX_INSTEAD = {"fabs": "; np.abs gives the modulus",
                    "deg2rad": "; np.deg2rad(np.angle(z)) converts an angle",
                    "rad2deg": "; np.angle(z, deg=True) gives the angle in degrees"}


def _complex_without_loop(ufunc, inputs) -> bool:
    """A complex operand of a ufunc that has no complex loop (np.fabs, np.deg2rad,
    np.floor, np.arctan2): NumPy refuses it, and a composite or an entry must not compute
    a value of its own (np.deg2rad(z) was z * pi / 180, np.fabs(z) was |z|)."""
    for x in inputs:
        dtype = getattr(x, "dtype", None)
        if isinstance(x, complex) or dtype is not None and np.dtype(dtype).kind == "c":
            break
    else:
        return False
    known = _COMPLEX_LOOPS.get(ufunc)
    if known is None:
        known = _COMPLEX_LOOPS[ufunc] = builtins.any(
            c in "FDG" for t in ufunc.types for c in t.split("->")[0])
    return not known


def _apply_ufunc(ufunc, inputs):
    composite = _UFUNC_COMPOSITES.get(ufunc)
    if composite is not None:
        return composite(*inputs)
    binding = core.NUMPY_BINDINGS.get(ufunc)
    if binding is None:
        raise unsupported(special.ufunc_name(ufunc))  # np.sin, scipy.special.jv
    return binding.call(*inputs)


def _ufunc_reduce(ufunc, x, axis=0, dtype=None, keepdims=False, **rest):
    table = {np.add: sum, np.multiply: prod, np.maximum: amax, np.minimum: amin}
    if ufunc not in table:
        raise unsupported(f"np.{ufunc.__name__}.reduce")
    if rest:
        raise ArgumentError(f"np.{ufunc.__name__}.reduce: unsupported keyword(s) {sorted(rest)} "
                            f"on traced values")
    if dtype is not None:
        x = astype(x, dtype)
    return table[ufunc](x, axis=axis, keepdims=keepdims)


def _resolve_numpy(dotted: str):
    """``np.<dotted>`` (``"linalg.cross"``), or None where this NumPy lacks it."""
    value = np
    for part in dotted.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def dispatch_function(func, args, kwargs):
    if FOREIGN_OPERANDS and (result := _foreign(func, args, kwargs)) is not NotImplemented:
        return result
    handler = HANDLERS.get(func) or _entry_binding(func) or _numpy_own(func)
    if handler is None:
        name = getattr(func, "__module__", "numpy") or "numpy"
        name = name.replace("numpy.linalg._linalg", "np.linalg").replace("numpy", "np")
        raise unsupported(f"{name}.{func.__name__}" if "linalg" in name else f"np.{func.__name__}")
    result = handler(*args, **kwargs)
    if result.__class__ is Tracer and func not in _SAME_OBJECT and any(result is a for a in args):
        result = fresh(result)  # NumPy made a new array (np.copy, np.concatenate([x]), ...)
    return result


def _numpy_own(func):
    """NumPy's own Python code of ``func`` for the functions in NUMPY_OWN, run on traced
    values: NumPy composes them from functions diffprog traces (every call in them
    dispatches back here), so running its code computes what NumPy computes, bit for bit,
    and differentiates it. The code runs over its module's globals with NumPy's array
    constructors as numpy_standin's (``asanyarray(x)`` of a traced x is x: NumPy's would
    make an array of Python objects of it). Each is checked against NumPy in
    tests/test_more_numpy.py."""
    if func not in NUMPY_OWN:
        return None
    own = _OWN_CODE.get(func)
    if own is None:
        from . import numpy_standin
        impl = func._implementation
        names = dict(impl.__globals__)
        for name, value in impl.__globals__.items():
            seen = numpy_standin.standin(value)
            if seen is value and isinstance(value, types.ModuleType) and \
                    value.__name__.startswith("numpy"):
                seen = numpy_standin.namespace(value)  # (NX.asanyarray: the stand-in's)
            if seen is not value:
                names[name] = seen
        own = types.FunctionType(impl.__code__, names, impl.__name__, impl.__defaults__,
                                 impl.__closure__)
        own.__kwdefaults__ = impl.__kwdefaults__
        own = _OWN_CODE[func] = _refusing_out(own, func.__name__)
    return own


_OWN_CODE: dict = {}


#: NumPy functions run as NumPy's own Python code on traced values (see _numpy_own)
NUMPY_OWN = {f: name for name, f in (
    (name, _resolve_numpy(name)) for name in (
        "isclose", "allclose", "array_equal", "array_equiv", "meshgrid", "trapezoid",
        "polyval", "dstack", "unstack", "cross", "matrix_transpose", "cumulative_sum",
        "cumulative_prod", "fix", "linalg.cross", "linalg.outer", "linalg.matmul",
        "linalg.tensordot", "linalg.multi_dot", "linalg.vector_norm", "linalg.matrix_norm",
        "linalg.trace", "linalg.diagonal", "linalg.matrix_transpose", "linalg.tensorinv",
        "linalg.cond", "linalg.svdvals", "put_along_axis", "polyder", "polyint"))
    if f is not None and hasattr(f, "_implementation")}


#: NumPy functions that hand back their argument itself when it needs no conversion
_SAME_OBJECT = {np.asarray, np.asanyarray, np.ascontiguousarray, np.asfortranarray,
                np.atleast_1d, np.atleast_2d, np.atleast_3d, np.require}


_ENTRY_BINDINGS: dict[Any, Callable] = {}


def _entry_binding(func) -> Callable | None:
    """The table's binding of ``func`` (an entry's ``numpy=``), refusing ``out=``."""
    handler = _ENTRY_BINDINGS.get(func)
    if handler is None:
        binding = core.NUMPY_BINDINGS.get(func)
        if binding is None:
            return None
        handler = _ENTRY_BINDINGS[func] = _refusing_out(binding.call, func.__name__)
    return handler


def _ufunc_composite(*ufuncs):
    def deco(fn):
        for u in ufuncs:
            _UFUNC_COMPOSITES[u] = fn
        return fn
    return deco


@_ufunc_composite(np.power)
def power(x, y):
    """x ** y; an integer exponent becomes ``integer_pow`` (exact for negative x)."""
    x, y = core.as_untraced_code_reads((x, y))
    if isinstance(y, (int, np.integer)) and not isinstance(y, bool):
        x, n = _promoted_for_power(x, y), int(y)
        if n == 0:
            return ones_like(x)
        if n == 1 and not _is_complex(x):  # a real x ** 1 is x, bit for bit (a copy in NumPy)
            return copied(x)
        return elementwise.integer_pow(x, n=n)
    if isinstance(y, float) and y.is_integer() and abs(y) <= 64 and not _is_traced(y):
        return elementwise.integer_pow(_promoted_for_power(x, y), n=int(y))
    if isinstance(y, float) and y == 0.5:
        return elementwise.sqrt(_promoted_for_power(x, y))
    return elementwise.pow_(x, y)


def _promoted_for_power(x, y):
    """x in np.power(x, y)'s result type, for the shortcuts above, which compute in x's
    own: int8 ** 2.0 is float64 (squaring in int8 first overflowed: 100 ** 2.0 gave 16),
    and a strong scalar exponent promotes (float32 ** np.int64(2) is float64, as is a
    Python float ** np.int64(2)) where a Python int or float does not (float32 ** 2)."""
    weak_x = getattr(getattr(x, "aval", None), "weak", False) or type(x) in (int, float)
    sample = dtype_of(x).type(1).item() if weak_x else np.ones((), dtype_of(x))
    dtype = np.result_type(sample, y)
    if dtype_of(x) != dtype or weak_x and isinstance(y, np.generic):
        return elementwise.convert(x, dtype=dtype)
    return x


@_ufunc_composite(np.fmax)
def fmax(x, y):
    """maximum that ignores NaN (returns the other operand), as np.fmax."""
    return elementwise.where(elementwise.isnan(y), x, elementwise.where(elementwise.isnan(x), y, elementwise.maximum(x, y)))


@_ufunc_composite(np.fmin)
def fmin(x, y):
    return elementwise.where(elementwise.isnan(y), x, elementwise.where(elementwise.isnan(x), y, elementwise.minimum(x, y)))


@_ufunc_composite(np.float_power)
def float_power(x, y):
    """x ** y computed in float64 (or complex128) whatever the operands' precision."""
    wide = np.result_type(dtype_of(x), dtype_of(y), np.float64)
    return elementwise.pow_(astype(x, wide), y)


@_ufunc_composite(np.square)
def square(x):
    return elementwise.integer_pow(x, n=2)


@_ufunc_composite(np.reciprocal)
def reciprocal(x):
    if _is_complex(x):  # NumPy's complex reciprocal is its own loop (x ** -1), not 1 / x
        return elementwise.integer_pow(x, n=-1)
    if np.issubdtype(dtype_of(x), np.inexact):
        return 1.0 / x
    # integers: 1 / x truncated toward zero, as C and NumPy do (floor_divide gave -1 for
    # -2); NumPy's value at 0 is undefined (a warning and whatever the division gives)
    return elementwise.where(elementwise.abs_(x) == 1, x, 0)


@_ufunc_composite(np.deg2rad, np.radians)
def deg2rad(x):
    return x * (np.pi / 180.0)


@_ufunc_composite(np.rad2deg, np.degrees)
def rad2deg(x):
    return x * (180.0 / np.pi)


@_ufunc_composite(np.positive)
def positive(x):
    return copied(x)  # (a new array in NumPy, laid out as x)


# =========================================================== dtype / creation

@implements(method="astype")
def astype(x, dtype, order="K", casting="unsafe", subok=True, copy=True):
    dtype = np.dtype(dtype)
    if dtype_of(x) == dtype:
        return copied(x, order) if copy else x
    converted = elementwise.convert(x, dtype=dtype)  # new, laid out as x (order K)
    return copied(converted, order) if order in ("C", "F") else converted


if hasattr(np, "astype"):  # (NumPy 2)
    @implements(np.astype)
    def astype_function(x, dtype, /, *, copy=True, device=None):
        return astype(x, dtype, copy=copy)


@implements(np.vander)
def vander(x, N=None, increasing=False):
    """NumPy's: columns 1, x, x*x, (x*x)*x... (products in NumPy's order: a cumulative
    product, as its multiply.accumulate), in float64 or wider."""
    n = shape(x)[0] if N is None else int(N)
    x = astype(x, np.promote_types(dtype_of(x), int), copy=False)
    rows = shape(x)[0]
    if n == 0:
        return np.zeros((rows, 0), dtype_of(x))
    ones = np.ones((rows, 1), dtype_of(x))
    powers = cumprod(broadcast_to(reshape(x, (rows, 1)), (rows, n - 1)), axis=1)
    columns = concatenate([ones, powers], axis=1)
    return columns if increasing else columns[:, ::-1]


def zeros_like(a, dtype=None, order="K", subok=True, shape=None):
    return np.zeros(shape if shape is not None else shape_of(a), dtype or dtype_of(a))


def ones_like(a, dtype=None, order="K", subok=True, shape=None):
    return np.ones(shape if shape is not None else shape_of(a), dtype or dtype_of(a))


def empty_like(a, dtype=None, order="K", subok=True, shape=None):
    return zeros_like(a, dtype, shape=shape)


def full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None):
    if _is_traced(fill_value):
        return broadcast_to(astype(fill_value, dtype or dtype_of(a)),
                            shape if shape is not None else shape_of(a))
    return np.full(shape if shape is not None else shape_of(a), fill_value, dtype or dtype_of(a))


def _fillable(make):
    """``np.zeros_like(x)`` (and ones/empty/full) of a traced x, called by the user's code:
    a *traced* array of those values, so the code may go on to fill it in place
    (``dydt = np.zeros_like(y); dydt[0] = y[1]``: the ODE right-hand side a scientist
    writes), which a plain array cannot hold. Called by diffprog's or NumPy's own code, or
    inside a derivative rule, the constant itself (it folds into what uses it)."""
    @functools.wraps(make)
    def like(a, *args, **kwargs):
        constant = make(a, *args, **kwargs)
        if not isinstance(a, Tracer) or IN_DERIVATIVE_RULE.get() or \
                constant.dtype.kind not in "fc" or constant.shape != a._var.aval.shape or \
                not _called_by_user_code():
            return constant  # (a mask or an index array stays a constant: x[mask] works)
        # the values a constant's; a only gives the result a place in the program, with no
        # derivative flowing from it (float(np.zeros_like(a)[0]) is no function of a)
        return elementwise.where(True, constant, stop_gradient(astype(a, constant.dtype, copy=False)))
    return like


def _called_by_user_code() -> bool:
    """Is the NumPy call being handled made by the user's own code?"""
    from .externals import is_user_file
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(inplace.PACKAGE_DIR):
        frame = frame.f_back
    return frame is not None and is_user_file(frame.f_code.co_filename)


for _numpy_like, _make in ((np.zeros_like, zeros_like), (np.ones_like, ones_like),
                           (np.empty_like, empty_like), (np.full_like, full_like)):
    implements(_numpy_like)(_fillable(_make))


def shape_of(a):
    return shape(a)


@implements(np.shape)
def _np_shape(a):
    return shape(a)


@implements(np.ndim)
def _np_ndim(a):
    return ndim(a)


@implements(np.size)
def _np_size(a, axis=None):
    s = shape(a)
    return int(np.prod(s)) if axis is None else s[axis]


@implements(np.result_type)
def _result_type(*arrays_and_dtypes):
    return np.result_type(*[dtype_of(a) if isinstance(a, Tracer) else a for a in arrays_and_dtypes])


@implements(np.copy)
def copy(a, order="K", subok=False):
    return copied(a, order)


@implements(method="copy")
def copy_method(a, order="C"):
    return copied(a, order)


def _is_complex(a) -> bool:
    return np.issubdtype(dtype_of(a), np.complexfloating)


@implements(np.real)
def real(a):
    """The real part; a real array is itself (NumPy returns it unchanged)."""
    return elementwise.real(a) if _is_complex(a) else a


@implements(method="conj,conjugate")
def conj(a, *args):
    """The complex conjugate (np.conj is the ufunc np.conjugate); a real array is itself."""
    return elementwise.conj(a) if _is_complex(a) else a


# the ufunc np.conjugate makes a new array of a real one too (the method returns it as is)
_UFUNC_COMPOSITES[np.conjugate] = lambda a, *args: conj(a) if _is_complex(a) else copied(a)


TRACER_METHODS["real"] = property(lambda self: real(self))
TRACER_METHODS["imag"] = property(lambda self: imag(self))


@implements(np.real_if_close)
def real_if_close(a, tol=100):
    """A real array is returned as it is (NumPy does the same); a complex one would need
    its values to decide the result's dtype, which tracing does not know."""
    if _is_complex(a):
        raise unsupported("np.real_if_close of a complex traced array (its result's dtype "
                          "depends on the values; use np.real)")
    return a


@implements(np.imag)
def imag(a):
    """The imaginary part; of a real array: zeros (no gradient flows to ``a``)."""
    return elementwise.imag(a) if _is_complex(a) else zeros_like(a)


@implements(np.isreal)
def isreal(x):
    """NumPy's imag(x) == 0 (True everywhere for a real array)."""
    return imag(x) == 0


@implements(np.iscomplex)
def iscomplex(x):
    """imag(x) != 0 for a complex array; False everywhere for a real one."""
    return imag(x) != 0


@implements(np.iscomplexobj)
def iscomplexobj(x):
    """Whether x has a complex dtype (a Python bool: the dtype is known when tracing)."""
    return bool(_is_complex(x))


@implements(np.isrealobj)
def isrealobj(x):
    return not _is_complex(x)


@implements(np.angle)
def angle(z, deg=False):
    """The angle: arctan2(imag, real) of a complex value; of a real number NumPy's
    arctan2(0, x): 0 for x >= +0, pi (180 degrees) for x < 0 and for -0.0, NaN for NaN,
    with derivative 0 (a step)."""
    if _is_complex(z):
        a = elementwise.arctan2(elementwise.imag(z), elementwise.real(z))
        return a * (180.0 / np.pi) if deg else a
    flat = elementwise.stop_gradient(z)  # a step: NaN at 0 from arctan2's own rule otherwise
    a = np.arctan2(zeros_like(flat), flat)  # NumPy's value: pi at -0.0, NaN at NaN
    return a * (180.0 / np.pi) if deg else a


@implements(np.stop_gradient if hasattr(np, "stop_gradient") else object())
def stop_gradient(x):
    return elementwise.stop_gradient(x) if _is_traced(x) else x


# =========================================================== reductions

def _axes(axis, nd):
    return core.normalize_axes(axis, nd)


def _check_reduce_kwargs(name, kwargs):
    """Refuse keywords the traced reductions do not support (``out=`` is refused for every
    handler by :func:`_refusing_out`)."""
    bad = {k: v for k, v in kwargs.items() if v is not None}
    if bad:
        raise ArgumentError(f"np.{name}: keyword(s) {sorted(bad)} are not supported on traced values")


@implements(np.sum, method="sum")
def sum(x, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    _check_reduce_kwargs("sum", {"initial": initial, "where": where})
    if dtype is not None:
        x = astype(x, dtype)
    axes = _axes(axis, ndim(x))
    if not axes:
        return copied(x)  # (a new array in NumPy: see copied)
    if np.dtype(dtype_of(x)) == np.bool_:
        x = astype(x, np.intp)
    return reductions.reduce_sum(x, axes=axes, keepdims=bool(keepdims))


@implements(np.prod, method="prod")
def prod(x, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    _check_reduce_kwargs("prod", {"initial": initial, "where": where})
    if dtype is not None:
        x = astype(x, dtype)
    axes = _axes(axis, ndim(x))
    return reductions.reduce_prod(x, axes=axes, keepdims=bool(keepdims)) if axes else copied(x)


@implements(np.max, np.amax, method="max")
def amax(x, axis=None, out=None, keepdims=False, initial=None, where=None):
    _check_reduce_kwargs("max", {"initial": initial, "where": where})
    axes = _axes(axis, ndim(x))
    return reductions.reduce_max(x, axes=axes, keepdims=bool(keepdims)) if axes else copied(x)


@implements(np.min, np.amin, method="min")
def amin(x, axis=None, out=None, keepdims=False, initial=None, where=None):
    _check_reduce_kwargs("min", {"initial": initial, "where": where})
    axes = _axes(axis, ndim(x))
    return reductions.reduce_min(x, axes=axes, keepdims=bool(keepdims)) if axes else copied(x)


@implements(np.any, method="any")
def any_(x, axis=None, out=None, keepdims=False, **_):
    return amax(astype(x, bool) if dtype_of(x) != np.bool_ else x, axis=axis, keepdims=keepdims)


@implements(np.all, method="all")
def all_(x, axis=None, out=None, keepdims=False, **_):
    return amin(astype(x, bool) if dtype_of(x) != np.bool_ else x, axis=axis, keepdims=keepdims)


def _count(x, axes) -> int:
    s = shape(x)
    return int(np.prod([s[a] for a in axes], dtype=np.int64))


def _float_of(x):
    return x if np.issubdtype(dtype_of(x), np.inexact) else astype(x, np.float64)


@implements(np.mean, method="mean")
def mean(x, axis=None, dtype=None, out=None, keepdims=False, where=None):
    _check_reduce_kwargs("mean", {"where": where})
    x = astype(x, dtype) if dtype is not None else _float_of(x)
    axes = _axes(axis, ndim(x))
    count = _count(x, axes)  # an empty mean is NaN, as in NumPy (0 * nan)
    if dtype is None and dtype_of(x) == np.float16:
        # NumPy sums float16 in float32, divides there and rounds to float16 once
        return astype(mean(astype(x, np.float32), axis=axes, keepdims=keepdims), np.float16)
    total = sum(x, axis=axes, keepdims=keepdims)
    return _by_count(total, count) if count else total * np.nan


def _by_count(total, count: int):
    """``total / count`` as NumPy's mean and var divide: by an intp count (a strong int64),
    so complex64 divides in the complex128 loop and is cast back (complex division is not
    correctly rounded; for float16/float32 the float64 quotient rounds to the same value
    as their own division)."""
    if dtype_of(total) == np.complex64:
        return astype(astype(total, np.complex128) / count, np.complex64)
    return total / count


@implements(np.var, method="var")
def var(x, axis=None, dtype=None, out=None, ddof=0, keepdims=False, where=None, mean=None,
        correction=None):
    _check_reduce_kwargs("var", {"where": where, "mean": mean})
    ddof = correction if correction is not None else ddof
    x = astype(x, dtype) if dtype is not None else _float_of(x)
    axes = _axes(axis, ndim(x))
    # NumPy's var: its own mean, summed in x's dtype (float16 too, unlike np.mean)
    centred = x - _by_count(sum(x, axis=axes, keepdims=True), _count(x, axes))
    dof = _count(x, axes) - ddof  # NumPy divides by max(dof, 0): inf (or nan for 0 / 0)
    squares = sum(_abs_squared(centred), axis=axes, keepdims=keepdims)
    return squares / dof if dof > 0 else squares * np.inf


def _abs_squared(x):
    """|x|^2 as NumPy's var and norm compute it: x * x, and re^2 + im^2 (real) for
    complex x (x * x would be the complex square)."""
    if not _is_complex(x):
        return x * x
    re, im = elementwise.real(x), elementwise.imag(x)
    return re * re + im * im


@implements(np.std, method="std")
def std(x, axis=None, dtype=None, out=None, ddof=0, keepdims=False, where=None, mean=None,
        correction=None):
    return _root_of_squares(var(x, axis=axis, dtype=dtype, out=out, ddof=ddof, keepdims=keepdims,
                      where=where, mean=mean, correction=correction))


def _root_of_squares(s):
    """sqrt(s) for s a sum of squares (norms, std); see :func:`_even_power`."""
    return _even_power(s, 0.5)


def _even_power(s, exponent):
    """s ** exponent (exponent > 0) for s >= 0 made of |x| (a sum of squares, |x| ** p),
    with derivative 0 where s == 0: the function of x is even there (|x| in one
    dimension), so its central difference is 0, while sqrt's (or a power's) 1/0 times the
    zero derivative of the squares made the gradient NaN (a zero row, the diagonal of a
    distance matrix, a constant sample). s is replaced by 1 before the power there, so
    no inf is formed at all."""
    zero = s == 0
    safe = _scalar_if_0d(elementwise.where(zero, 1.0, s))
    return _scalar_if_0d(elementwise.where(
        zero, 0.0, elementwise.sqrt(safe) if exponent == 0.5 else power(safe, exponent)))


def _scalar_if_0d(x):
    """A 0-d result as the NumPy scalar NumPy's own code has there (``where`` makes 0-d
    arrays; NumPy's scalar power rounds unlike its array loop: np.linalg.norm(x, 3))."""
    return x[()] if ndim(x) == 0 else x


@implements(np.argmax, method="argmax")
def argmax(x, axis=None, out=None, keepdims=False):
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    return reductions.argmax(x, axis=axis % ndim(x))


@implements(np.argmin, method="argmin")
def argmin(x, axis=None, out=None, keepdims=False):
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    return reductions.argmin(x, axis=axis % ndim(x))


@implements(np.argsort, method="argsort")
def argsort(x, axis=-1, kind=None, order=None, stable=None):
    if axis is None:
        x, axis = ravel(x), 0
    return reductions.argsort(x, axis=axis % ndim(x))


@implements(np.take_along_axis)
def take_along_axis(arr, indices, axis):
    """``arr`` gathered with ``indices`` along ``axis`` (open-mesh indices elsewhere)."""
    if axis is None:
        arr, axis = ravel(arr), 0
    nd = ndim(arr)
    axis %= nd
    index = []
    for d in range(nd):
        if d == axis:
            index.append(indices)
        else:
            shape_d = [1] * nd
            shape_d[d] = shape(arr)[d]
            index.append(np.arange(shape(arr)[d]).reshape(shape_d))
    return getitem(arr, tuple(index))


@implements(np.sort, method="sort")
def sort(x, axis=-1, kind=None, order=None, stable=None):
    """Sorted values; the gradient flows back to where each value came from."""
    if axis is None:
        x, axis = ravel(x), 0
    return take_along_axis(x, argsort(x, axis=axis), axis)


@implements(np.sort_complex)
def sort_complex(a):
    """np.sort along the last axis (lexicographic for complex values), as a complex array
    (complex64 for small integer and float32 kinds NumPy makes so, complex128 otherwise)."""
    s = sort(a, axis=-1)
    if _is_complex(s):
        return s
    dtype = np.complex64 if np.dtype(dtype_of(a)).char in "bhBH" else np.complex128
    return astype(s, dtype)


@implements(np.median)
def median(x, axis=None, out=None, overwrite_input=False, keepdims=False):
    if axis is None:
        x, axis = ravel(x), 0
    axis %= ndim(x)
    n = shape(x)[axis]
    s = sort(x, axis=axis)
    mid = slice_axis(s, axis, (n - 1) // 2, n // 2 + 1)
    out = mean(mid, axis=axis, keepdims=keepdims)
    if n and np.issubdtype(dtype_of(x), np.inexact):
        # NumPy's NaN check: a NaN sorts last, and the median of a slice holding one is it
        last = slice_axis(s, axis, n - 1, n)
        last = last if keepdims else squeeze(last, axis=axis)
        out = elementwise.where(elementwise.isnan(last), last, out)
    return out


@implements(np.quantile)
def quantile(a, q, axis=None, out=None, overwrite_input=False, method="linear",
             keepdims=False, *, weights=None):
    weak_q = type(q) in (int, float)  # (NumPy's: a Python q keeps a float32 result float32)
    return _quantile(a, np.asanyarray(_static_q(q, "quantile")), axis, method, keepdims,
                     weights, weak_q, "quantile", "Quantiles must be in the range [0, 1]")


@implements(np.percentile)
def percentile(a, q, axis=None, out=None, overwrite_input=False, method="linear",
               keepdims=False, *, weights=None):
    weak_q = type(q) in (int, float)
    return _quantile(a, np.true_divide(_static_q(q, "percentile"), 100), axis, method, keepdims,
                     weights, weak_q, "percentile", "Percentiles must be in the range [0, 100]")


def _static_q(q, name):
    if _is_traced(q):
        raise unsupported(f"np.{name} with a traced q (where it reads the sorted values "
                          f"would depend on data)")
    return q


def _quantile(a, q, axis, method, keepdims, weights, weak_q, name, invalid):
    """NumPy's quantile (method "linear", no weights), as its own code computes it
    (_function_base_impl._quantile): the positions (n - 1) q and their floor and ceiling
    from the constant q, the values there of the sorted array (what its partition puts
    there), and NumPy's _lerp, which interpolates from the nearer end; a slice holding a
    NaN gives NaN."""
    if method != "linear" or weights is not None:
        raise unsupported(f"np.{name}(..., method={method!r}"
                          f"{', weights=...' if weights is not None else ''})")
    if dtype_of(a).kind == "c":  # (NumPy's TypeError, named)
        raise ArgumentError(f"np.{name}: a must be an array of real numbers (complex values "
                            f"have no order), got {dtype_of(a)}")
    if not (np.all(q >= 0) and np.all(q <= 1)):
        raise ValueError(invalid)
    if q.ndim > 2:
        raise ArgumentValueError(f"np.{name}: q must be a scalar, 1d or 2d, got {q.ndim}d")
    kept = shape(a)
    if isinstance(axis, tuple) and len(axis) == 1:
        axis = axis[0]
    if axis is None:
        arr, axis = reshape(a, (-1,)), 0
        kept = (1,) * len(kept)
    else:
        if not isinstance(axis, (int, np.integer)):
            raise unsupported(f"np.{name}(..., axis={axis!r}) (one axis, or None)")
        if not -ndim(a) <= axis < ndim(a):
            raise ShapeError(f"np.{name}: axis {axis} is out of bounds for an array of "
                             f"dimension {ndim(a)} (NumPy's AxisError)")
        axis = int(axis) % ndim(a)
        arr = a if axis == 0 else moveaxis(a, axis, 0)
        kept = kept[:axis] + (1,) + kept[axis + 1:]
    count = shape(arr)[0]
    virtual = np.asanyarray((count - 1) * q)
    ordered = sort(arr, axis=0)
    if np.issubdtype(virtual.dtype, np.integer):
        result = ordered[virtual]
    else:
        previous_index = np.floor(virtual, out=...)  # (0-d arrays for a scalar q, as NumPy)
        next_index = np.add(previous_index, 1, out=...)
        previous_index[virtual >= count - 1] = -1
        next_index[virtual >= count - 1] = -1
        previous_index[virtual < 0] = 0
        next_index[virtual < 0] = 0
        previous_index = previous_index.astype(np.intp)
        next_index = next_index.astype(np.intp)
        gamma = np.asanyarray(np.asanyarray(virtual - previous_index), dtype=virtual.dtype)
        gamma = float(gamma) if weak_q else gamma.reshape(virtual.shape + (1,) * (ndim(arr) - 1))
        result = _lerp(ordered[previous_index], ordered[next_index], gamma)
    if np.issubdtype(dtype_of(arr), np.inexact) and count:
        last = ordered[-1]
        result = _scalar_if_0d(elementwise.where(elementwise.isnan(last), last, result))
    if keepdims:
        result = reshape(result, q.shape + kept)
    return result


def _lerp(a, b, t):
    """NumPy's _lerp: a + (b - a) t, and b - (b - a)(1 - t) where t >= 0.5 (in the dtype
    of the first), a 0-d result a NumPy scalar."""
    diff = b - a
    low = a + diff * t
    high = astype(b - diff * (1 - t), dtype_of(low), copy=False)
    return _scalar_if_0d(elementwise.where(np.asanyarray(t) >= 0.5, high, low))


@implements(np.cumsum, method="cumsum")
def cumsum(x, axis=None, dtype=None, out=None):
    if dtype is not None:
        x = astype(x, dtype)
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    return reductions.cumsum(x, axis=axis % ndim(x))


@implements(np.cumprod, method="cumprod")
def cumprod(x, axis=None, dtype=None, out=None):
    if dtype is not None:
        x = astype(x, dtype)
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    return reductions.cumprod(x, axis=axis % ndim(x))


# =========================================================== shape manipulation

def _canonical_shape(newshape, size):
    if isinstance(newshape, (int, np.integer)):
        newshape = (int(newshape),)
    newshape = tuple(int(d) for d in newshape)
    if newshape.count(-1) == 1:
        known = int(np.prod([d for d in newshape if d != -1], dtype=np.int64))
        if known == 0 or size % known:
            raise ShapeError(f"cannot reshape an array of size {size} into shape {newshape}")
        newshape = tuple(size // known if d == -1 else d for d in newshape)
    return newshape


@implements(np.reshape)
def reshape(x, shape=None, order="C", *, newshape=None, copy=None):
    target = _canonical_shape(shape if shape is not None else newshape, int(np.prod(shape_of(x), dtype=np.int64)))
    if order != "C":
        raise ArgumentError("reshape: only order='C' is supported on traced values")
    if shape_of(x) == target:
        return inplace.same_view(x)  # (a new view of the same memory, as NumPy's)
    return shapes.reshape(x, shape=target)


def _method_reshape(self, *shape, order="C"):
    if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
        shape = shape[0]
    return reshape(self, shape, order=order)


TRACER_METHODS["reshape"] = _method_reshape


@implements(np.ravel, method="ravel")
def ravel(x, order="C"):
    # a view of a contiguous x (the same memory), else NumPy's contiguous copy: for
    # in-place changes, a reshape view of x either way (diffprog.inplace decides which)
    out = copied(reshape(x, (-1,), order=order), "C", same_object=True)
    if isinstance(out, Tracer) and isinstance(x, Tracer) and out._view is None:
        inplace.note_view(out, x, shapes.reshape, {"shape": shape_of(out)})
    return out


@implements(method="flatten")
def flatten(x, order="C"):
    return fresh(ravel(x, order))  # always a copy in NumPy


@implements(np.transpose)
def transpose(x, axes=None):
    nd = ndim(x)
    axes = tuple(reversed(range(nd))) if axes is None else tuple(int(a) % nd for a in axes)
    if axes == tuple(range(nd)):
        return inplace.same_view(x)
    return shapes.transpose(x, axes=axes)


def _method_transpose(self, *axes):
    if len(axes) == 1 and not isinstance(axes[0], (int, np.integer)):
        axes = axes[0]
    return transpose(self, axes or None)


TRACER_METHODS["transpose"] = _method_transpose
TRACER_METHODS["T"] = property(lambda self: transpose(self))
TRACER_METHODS["mT"] = property(lambda self: swapaxes(self, -1, -2))


@implements(np.swapaxes, method="swapaxes")
def swapaxes(x, axis1, axis2):
    nd = ndim(x)
    perm = list(range(nd))
    perm[axis1 % nd], perm[axis2 % nd] = perm[axis2 % nd], perm[axis1 % nd]
    return transpose(x, perm)


@implements(np.moveaxis)
def moveaxis(x, source, destination):
    nd = ndim(x)
    src = [source] if isinstance(source, (int, np.integer)) else list(source)
    dst = [destination] if isinstance(destination, (int, np.integer)) else list(destination)
    src = [s % nd for s in src]
    dst = [d % nd for d in dst]
    order = [a for a in range(nd) if a not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return transpose(x, order)


@implements(np.expand_dims)
def expand_dims(x, axis):
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out_nd = ndim(x) + len(axes)
    axes = sorted(a % out_nd for a in axes)
    new_shape = list(shape(x))
    for a in axes:
        new_shape.insert(a, 1)
    return reshape(x, tuple(new_shape))


@implements(np.squeeze, method="squeeze")
def squeeze(x, axis=None):
    s = shape(x)
    if axis is None:
        axes = tuple(i for i, d in enumerate(s) if d == 1)
    else:
        axes = tuple(a % len(s) for a in ((axis,) if isinstance(axis, (int, np.integer)) else axis))
        for a in axes:
            if s[a] != 1:
                raise ShapeError(f"squeeze: axis {a} has size {s[a]}, not 1 (shape {s})")
    return reshape(x, tuple(d for i, d in enumerate(s) if i not in axes))


@implements(np.broadcast_to)
def broadcast_to(x, shape, subok=False):
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    if shape_of(x) == shape:
        return inplace.same_view(x, read_only=True)
    if not _is_traced(x):
        return np.broadcast_to(x, shape)
    return shapes.broadcast_to(x, shape=shape)


@implements(np.broadcast_arrays)
def broadcast_arrays(*args, subok=False):
    target = core.broadcast_shapes(*[shape(a) for a in args])
    return tuple(broadcast_to(a, target) for a in args)


@implements(np.atleast_1d)
def atleast_1d(*arys):
    res = [reshape(a, (1,)) if ndim(a) == 0 else a for a in arys]
    return res[0] if len(res) == 1 else res


@implements(np.atleast_2d)
def atleast_2d(*arys):
    res = [reshape(a, (1,) * (2 - ndim(a)) + shape(a)) if ndim(a) < 2 else a for a in arys]
    return res[0] if len(res) == 1 else res


@implements(np.concatenate)
def concatenate(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    arrays = list(arrays)
    if axis is None:
        arrays, axis = [ravel(a) for a in arrays], 0
    if len(arrays) == 1:  # a new array in NumPy, laid out as its operand: see copied
        return copied(arrays[0], "K") if _is_traced(arrays[0]) else np.concatenate(arrays, axis)
    nd = ndim(arrays[0])
    if not _is_traced(*arrays):
        return np.concatenate(arrays, axis=axis)
    return shapes.concatenate(*arrays, axis=axis % nd)


@implements(np.append)
def append(arr, values, axis=None):
    """np.append: both flattened and joined (axis=None), else joined along ``axis``."""
    if axis is None:
        return concatenate([ravel(arr), ravel(values)], axis=0)
    return concatenate([arr, values], axis=axis)


@implements(np.stack)
def stack(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    arrays = list(arrays)
    shapes = {shape(a) for a in arrays}
    if len(shapes) > 1:
        raise ShapeError(f"stack: all input arrays must have the same shape; got {sorted(shapes)}")
    return concatenate([expand_dims(a, axis) for a in arrays], axis=axis)


@implements(np.hstack)
def hstack(tup, dtype=None, casting="same_kind"):
    arrs = [atleast_1d(a) for a in tup]
    return concatenate(arrs, axis=0 if ndim(arrs[0]) == 1 else 1)


@implements(np.vstack, np.row_stack) if hasattr(np, "row_stack") else implements(np.vstack)
def vstack(tup, dtype=None, casting="same_kind"):
    return concatenate([atleast_2d(a) for a in tup], axis=0)


@implements(np.column_stack)
def column_stack(tup):
    return concatenate([reshape(a, (-1, 1)) if ndim(a) < 2 else a for a in tup], axis=1)


@implements(np.split)
def split(x, indices_or_sections, axis=0):
    n = shape(x)[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        if n % indices_or_sections:
            raise ShapeError(f"split: array of size {n} on axis {axis} does not divide into "
                             f"{indices_or_sections} equal parts (use np.array_split)")
        step = n // indices_or_sections
        bounds = list(range(0, n + 1, step))
    else:
        bounds = [0] + [int(i) for i in indices_or_sections] + [n]
    return [slice_axis(x, axis, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


@implements(np.array_split)
def array_split(x, sections, axis=0):
    if not isinstance(sections, (int, np.integer)):
        return split(x, sections, axis)
    n = shape(x)[axis]
    sizes = [n // sections + (1 if i < n % sections else 0) for i in range(sections)]
    return split(x, list(np.cumsum(sizes)[:-1]), axis)


def slice_axis(x, axis, start, stop, step=None):
    """``x[..., start:stop:step, ...]`` on one axis."""
    index = [slice(None)] * ndim(x)
    index[axis] = slice(start, stop, step)
    return getitem(x, tuple(index))


@implements(np.diff)
def diff(x, n=1, axis=-1, prepend=None, append=None):
    if prepend is not None or append is not None:
        x = concatenate([p for p in (_edge(prepend, x, axis), x, _edge(append, x, axis)) if p is not None], axis=axis)
    for _ in range(n):
        m = shape(x)[axis]
        x = slice_axis(x, axis, 1, m) - slice_axis(x, axis, 0, m - 1)
    return x


def _edge(value, x, axis):
    if value is None:
        return None
    s = list(shape(x))
    s[axis % len(s)] = 1
    return broadcast_to(value, tuple(s)) if ndim(value) == 0 else value


@implements(np.flip)
def flip(x, axis=None):
    axes = _axes(axis, ndim(x))
    index = tuple(slice(None, None, -1) if i in axes else slice(None) for i in range(ndim(x)))
    return getitem(x, index)


@implements(np.fliplr)
def fliplr(x):
    return flip(x, 1)


@implements(np.flipud)
def flipud(x):
    return flip(x, 0)


@implements(np.roll)
def roll(x, shift, axis=None):
    if axis is None:
        return reshape(roll(ravel(x), shift, 0), shape(x))
    shifts = (shift,) if isinstance(shift, (int, np.integer)) else tuple(shift)
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    if len(shifts) == 1 and len(axes) > 1:
        shifts = shifts * len(axes)
    for s, a in zip(shifts, axes):
        n = shape(x)[a]
        k = int(s) % n if n else 0
        if k:
            x = concatenate([slice_axis(x, a, n - k, n), slice_axis(x, a, 0, n - k)], axis=a)
    return x


@implements(np.tile)
def tile(x, reps):
    reps = (reps,) if isinstance(reps, (int, np.integer)) else tuple(reps)
    nd = max(ndim(x), len(reps))
    reps = (1,) * (nd - len(reps)) + reps
    xs = (1,) * (nd - ndim(x)) + shape(x)
    x = reshape(x, xs)
    # interleave a new axis of size rep before each axis, broadcast, then merge pairs
    expanded = reshape(x, tuple(v for d in xs for v in (1, d)))
    b = broadcast_to(expanded, tuple(v for r, d in zip(reps, xs) for v in (r, d)))
    return copied(reshape(b, tuple(r * d for r, d in zip(reps, xs))))  # always a new array


@implements(np.repeat, method="repeat")
def repeat(x, repeats, axis=None):
    if axis is None:
        x, axis = ravel(x), 0
    axis %= ndim(x)
    n = shape(x)[axis]
    if isinstance(repeats, (int, np.integer)):
        s = shape(x)
        expanded = expand_dims(x, axis + 1)
        target = s[:axis + 1] + (int(repeats),) + s[axis + 1:]
        out_shape = s[:axis] + (n * int(repeats),) + s[axis + 1:]
        return reshape(broadcast_to(expanded, target), out_shape)
    idx = np.repeat(np.arange(n), np.asarray(repeats))
    return take(x, idx, axis=axis)


@implements(np.pad)
def pad(x, pad_width, mode="constant", constant_values=0, **kwargs):
    if mode != "constant" or kwargs:
        raise unsupported(f"np.pad with mode={mode!r}")
    if _is_traced(constant_values):
        raise ArgumentError("np.pad: constant_values must be a plain number, not a traced value")
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (ndim(x), 2))
    widths = tuple((int(lo), int(hi)) for lo, hi in widths)
    if np.ndim(constant_values) != 0:
        raise unsupported("np.pad with one constant per axis or side")
    value = complex(constant_values) if np.iscomplexobj(constant_values) else None
    if value is not None and _is_complex(x) and value.imag != 0:
        # the pad entry's constant is real: each part padded with its own, joined exactly
        return elementwise.from_parts(shapes.pad(real(x), pad_width=widths, value=value.real),
                                      shapes.pad(imag(x), pad_width=widths, value=value.imag))
    # a real array keeps the real part of a complex constant, as NumPy's cast does
    return shapes.pad(x, pad_width=widths,
                      value=value.real if value is not None else float(constant_values))


# =========================================================== indexing

def getitem(x, index):
    if type(index) is int:  # x[k]: the common case, what the loop below makes of it
        return shapes.slice_(x, index=(index,))
    index = index if isinstance(index, tuple) else (index,)
    items, arrays = [], []
    for item in index:
        if isinstance(item, list) or type(item) is np.ndarray and item.dtype == object:
            from .object_arrays import traced  # x[[i, j]] with traced integers i, j
            item = traced(item)
        if isinstance(item, Tracer):
            if np.issubdtype(item.dtype, np.integer):
                items.append(shapes.ArraySlot())
                arrays.append(item)
                continue
            raise ArgumentError(
                "indexing with a traced boolean mask: the result's shape would depend on "
                "data values. Fix: use np.where(mask, x, 0) (or a constant mask).")
        if isinstance(item, list):
            item = np.asarray(item)
        if isinstance(item, np.ndarray) and item.dtype == np.bool_:
            for idx in np.nonzero(item):
                items.append(shapes.ArraySlot())
                arrays.append(idx)
            continue
        if isinstance(item, np.ndarray):
            if not np.issubdtype(item.dtype, np.integer):
                raise ArgumentError(f"index arrays must be integer or boolean, got {item.dtype}")
            items.append(shapes.ArraySlot())
            arrays.append(item)
            continue
        items.append(_normalize_basic(item))
    index = tuple(items)
    if not arrays:
        return shapes.slice_(x, index=index)
    return shapes.gather(x, *arrays, index=index)


def _normalize_basic(item):
    if isinstance(item, (bool, np.bool_)):
        raise ArgumentError("indexing with a Python bool is not supported on traced values")
    if isinstance(item, (int, np.integer)):
        return int(item)
    if isinstance(item, slice):
        return slice(*(None if v is None else int(v) for v in (item.start, item.stop, item.step)))
    if item is None or item is Ellipsis:
        return item
    raise ArgumentError(f"unsupported index {item!r} of type {type(item).__name__}")


@implements(np.take, method="take")
def take(a, indices, axis=None, out=None, mode=None):
    if axis is None:
        a, axis = ravel(a), 0
    axis %= ndim(a)
    index = (slice(None),) * axis + (np.asarray(indices) if not _is_traced(indices) else indices,)
    return getitem(a, index)


@implements(np.where)
def where(condition, x=None, y=None):
    if x is None and y is None:
        raise ArgumentError("np.where(condition) with one argument returns data-dependent "
                            "indices and cannot be traced; use np.where(condition, a, b)")
    return elementwise.where(condition, x, y)


@implements(np.clip, method="clip")
def clip(a, a_min=None, a_max=None, out=None, *, min=None, max=None, **kwargs):
    lo = a_min if a_min is not None else min
    hi = a_max if a_max is not None else max
    if lo is not None:
        a = elementwise.maximum(a, lo)
    if hi is not None:
        a = elementwise.minimum(a, hi)
    return a


@implements(np.round, np.around, method="round")
def round_(a, decimals=0, out=None):
    if decimals == 0:
        return elementwise.round_(a)
    if _is_complex(a):  # NumPy rounds the real and the imaginary part, each as a real
        return elementwise.from_parts(round_(real(a), decimals), round_(imag(a), decimals))
    scale = 10.0 ** decimals
    return elementwise.round_(a * scale) / scale


# Masks select with where, never multiply: inf * 0 is NaN, and a complex product with 1
# turns an infinite or NaN part into NaN parts (NumPy's triu, diag and diagonal copy).

@implements(np.triu)
def triu(m, k=0):
    n, mm = shape(m)[-2:]
    return elementwise.where(np.triu(np.ones((n, mm), dtype=bool), k), m, zeros_like(m))


@implements(np.tril)
def tril(m, k=0):
    n, mm = shape(m)[-2:]
    return elementwise.where(np.tril(np.ones((n, mm), dtype=bool), k), m, zeros_like(m))


@implements(np.diag)
def diag(v, k=0):
    """np.diag: a 1-d ``v`` on the k-th diagonal of a square matrix, or the k-th diagonal
    of a 2-d ``v``."""
    k = int(k)
    if ndim(v) == 1:
        n = shape(v)[0]
        square = elementwise.where(np.eye(n, dtype=bool), reshape(v, (n, 1)),
                                   np.zeros((n, n), dtype_of(v)))
        if k == 0:
            return square
        return pad(square, ((0, k), (k, 0)) if k > 0 else ((-k, 0), (0, -k)))
    if ndim(v) != 2:
        raise ValueError("Input must be 1- or 2-d.")
    return diagonal(v, k)


@implements(np.diagonal, method="diagonal")
def diagonal(a, offset=0, axis1=0, axis2=1):
    """The ``offset``-th diagonal of the planes (axis1, axis2), as the last axis: the
    (shifted) square block's elements (i, i): every (k+1)-th element of the flattened
    block, a strided slice every engine spells (a sum of the block masked by the identity
    lost signed zeros: NumPy's sum of -0.0 entries is +0.0)."""
    a = moveaxis(a, (axis1, axis2), (-2, -1))
    offset = int(offset)
    if offset > 0:
        a = getitem(a, (Ellipsis, slice(None), slice(offset, None)))
    elif offset < 0:
        a = getitem(a, (Ellipsis, slice(-offset, None), slice(None)))
    n, m = shape(a)[-2:]
    k = max(min(n, m), 0)
    block = slice_last2(a, k)
    flat = reshape(block, tuple(shape(block)[:-2]) + (k * k,))
    return getitem(flat, (Ellipsis, slice(None, None, k + 1)))


def slice_last2(a, k):
    return getitem(a, (Ellipsis, slice(0, k), slice(0, k)))


@implements(np.trace, method="trace")
def trace(a, offset=0, axis1=0, axis2=1, dtype=None, out=None):
    total = sum(diagonal(a, offset, axis1, axis2), axis=-1)
    return astype(total, dtype) if dtype is not None else total


# =========================================================== products

@implements(np.dot, method="dot")
def dot(a, b, out=None):
    if ndim(a) == 0 or ndim(b) == 0:
        return a * b
    if ndim(b) <= 2 or ndim(a) == 1:
        if ndim(a) == 1 and ndim(b) > 2:
            return tensordot(a, b, axes=([0], [ndim(b) - 2]))
        return linalg.matmul(a, b)
    return tensordot(a, b, axes=([ndim(a) - 1], [ndim(b) - 2]))


@implements(np.vdot)
def vdot(a, b):
    """conj(a) . b, both flattened: NumPy conjugates the first operand, and sums with a
    BLAS dot (another order, other bits than sum(conj(a) * b))."""
    if not _is_traced(a, b):
        return np.vdot(a, b)
    # (NumPy flattens a one-dimensional operand as it is, strided or reversed: no copy)
    a, b = (x if ndim(x) == 1 else ravel(x) for x in (a, b))
    return linalg.matmul(conj(a), b)


@implements(np.inner)
def inner(a, b):
    if ndim(a) == 0 or ndim(b) == 0:
        return a * b
    return tensordot(a, b, axes=([ndim(a) - 1], [ndim(b) - 1]))


@implements(np.outer)
def outer(a, b, out=None):
    return reshape(a, (-1, 1)) * reshape(b, (1, -1))


@implements(np.tensordot)
def tensordot(a, b, axes=2):
    """Contract by moving axes, reshaping to matrices and one BLAS matmul."""
    if isinstance(axes, (int, np.integer)):
        ax_a = list(range(ndim(a) - int(axes), ndim(a)))
        ax_b = list(range(int(axes)))
    else:
        ax_a, ax_b = axes
        ax_a = [ax_a] if isinstance(ax_a, (int, np.integer)) else list(ax_a)
        ax_b = [ax_b] if isinstance(ax_b, (int, np.integer)) else list(ax_b)
    ax_a = [x % ndim(a) for x in ax_a]
    ax_b = [x % ndim(b) for x in ax_b]
    for i, j in zip(ax_a, ax_b):
        if shape(a)[i] != shape(b)[j]:
            raise ShapeError(f"tensordot: shape mismatch for sum: {shape(a)} axis {i} vs {shape(b)} axis {j}")
    free_a = [i for i in range(ndim(a)) if i not in ax_a]
    free_b = [i for i in range(ndim(b)) if i not in ax_b]
    k = int(np.prod([shape(a)[i] for i in ax_a], dtype=np.int64))
    A = reshape(transpose(a, free_a + ax_a), (-1, k))
    B = reshape(transpose(b, ax_b + free_b), (k, -1))
    out_shape = tuple(shape(a)[i] for i in free_a) + tuple(shape(b)[i] for i in free_b)
    return reshape(linalg.matmul(A, B), out_shape)


@implements(np.cross)
def cross(a, b, axisa=-1, axisb=-1, axisc=-1, axis=None):
    if axis is not None:
        axisa = axisb = axisc = axis
    a, b = moveaxis(a, axisa, -1), moveaxis(b, axisb, -1)
    if shape(a)[-1] != 3 or shape(b)[-1] != 3:
        raise unsupported("np.cross of 2-vectors (only 3-vectors are supported)")
    ax = [getitem(a, (Ellipsis, i)) for i in range(3)]
    bx = [getitem(b, (Ellipsis, i)) for i in range(3)]
    c = stack([ax[1] * bx[2] - ax[2] * bx[1], ax[2] * bx[0] - ax[0] * bx[2],
               ax[0] * bx[1] - ax[1] * bx[0]], axis=-1)
    return moveaxis(c, -1, axisc)


# =========================================================== linear algebra

@implements(np.linalg.norm)
def norm(x, ord=None, axis=None, keepdims=False):
    x = _float_of(x)
    if axis is None and (ord is None or (ord in ("f", "fro") and ndim(x) == 2)
                         or (ord == 2 and ndim(x) == 1)):
        return _norm_by_dot(x, keepdims)
    if axis is None and ndim(x) == 2 and ord is not None:
        axis = (0, 1)
    if axis is None and ndim(x) == 1:
        return _vector_norm(x, ord, 0, keepdims)
    if axis is None:
        return _root_of_squares(sum(_abs_squared(x), keepdims=keepdims))
    if isinstance(axis, (int, np.integer)) or len(axis) == 1:
        ax = axis if isinstance(axis, (int, np.integer)) else axis[0]
        return _vector_norm(x, ord, ax, keepdims)
    return _matrix_norm(x, ord, tuple(axis), keepdims)


def _norm_by_dot(x, keepdims):
    """NumPy's own spelling for the whole array's 2-norm: sqrt(x . x) of x flattened, a
    BLAS dot (real and imaginary parts apart for complex x), whose summation order and
    bits differ from sum(x * x)."""
    flat = ravel(x)
    if _is_complex(flat):
        re, im = real(flat), imag(flat)
        squares = linalg.matmul(re, re) + linalg.matmul(im, im)
    else:
        squares = linalg.matmul(flat, flat)
    out = _root_of_squares(squares)
    return reshape(out, (1,) * ndim(x)) if keepdims else out


def _vector_norm(x, ord, axis, keepdims):
    if ord in (None, 2):
        return _root_of_squares(sum(_abs_squared(x), axis=axis, keepdims=keepdims))
    if ord == np.inf:
        return amax(elementwise.abs_(x), axis=axis, keepdims=keepdims)
    if ord == -np.inf:
        return amin(elementwise.abs_(x), axis=axis, keepdims=keepdims)
    if ord == 1:
        return sum(elementwise.abs_(x), axis=axis, keepdims=keepdims)
    if ord == 0:
        return sum(astype(x != 0, linalg._real_dtype(dtype_of(x))), axis=axis, keepdims=keepdims)
    absx = elementwise.abs_(x)
    if ord < 0:  # |0| ** ord is inf, and the norm 0: NumPy's value; its derivative 0 there
        zero = any_(absx == 0, axis=axis, keepdims=keepdims)
        safe = elementwise.where(absx == 0, 1.0, absx)
        total = sum(astype(power(safe, ord), dtype_of(absx), copy=False), axis=axis,
                    keepdims=keepdims)  # (NumPy's absx **= ord keeps absx's dtype)
        value = power(total, np.reciprocal(ord, dtype=dtype_of(total)))
        return _scalar_if_0d(elementwise.where(zero, 0.0, value))
    # NumPy: absx **= ord; ret **= reciprocal(ord, dtype=ret.dtype) (the exponents as given)
    total = sum(astype(_even_power(absx, ord), dtype_of(absx), copy=False), axis=axis,
                keepdims=keepdims)
    return _even_power(total, np.reciprocal(ord, dtype=dtype_of(total)))


def _matrix_norm(x, ord, axes, keepdims):
    r, c = (a % ndim(x) for a in axes)
    if ord in (None, "fro"):
        return _root_of_squares(sum(_abs_squared(x), axis=(r, c), keepdims=keepdims))
    if ord in (1, -1, np.inf, -np.inf):
        inner_ax, outer_ax = (r, c) if ord in (1, -1) else (c, r)
        col = sum(elementwise.abs_(x), axis=inner_ax, keepdims=True)
        red = amax if ord in (1, np.inf) else amin
        out = red(col, axis=outer_ax, keepdims=True)
        return out if keepdims else _scalar_if_0d(squeeze(out, axis=(r, c)))
    if ord in (2, -2, "nuc"):  # from the singular values of each matrix
        values = linalg.svdvals(moveaxis(x, (r, c), (-2, -1)))
        reduce_ = {2: amax, -2: amin, "nuc": sum}[ord]
        out = reduce_(values, axis=-1)
        if keepdims:
            out = expand_dims(out, tuple(sorted((r, c))))
        return out
    raise ValueError(f"Invalid norm order {ord!r} for matrices.")


# =========================================================== more NumPy (issue 15)
# Composites: NumPy functions built from entries (their derivatives, batching rules and
# Julia spellings are the entries'), each following NumPy's own implementation so that
# values agree with NumPy's.

def _is_python_number(x) -> bool:
    return type(x) in (bool, int, float, complex)


def _inexact_result_type(*xs) -> np.dtype:
    """NumPy's result type of ``xs`` (Python numbers weak), made inexact (float64 for
    integers): what np.linspace and friends compute in."""
    dtype = np.result_type(*[x if _is_python_number(x) else dtype_of(x) for x in xs])
    return dtype if np.issubdtype(dtype, np.inexact) else np.dtype(np.float64)


def _as_dtype(x, dtype):
    return astype(x, dtype) if _is_traced(x) else np.asarray(x, dtype=dtype)


@implements(np.nan_to_num)
def nan_to_num(x, copy=True, nan=0.0, posinf=None, neginf=None):
    """NaN -> ``nan``, +inf -> ``posinf`` (the dtype's largest), -inf -> ``neginf``; the
    gradient is 1 where x is finite, 0 where it was replaced."""
    dtype = np.dtype(dtype_of(x))
    if not np.issubdtype(dtype, np.inexact):
        return x
    if np.issubdtype(dtype, np.complexfloating):  # NumPy: the real and imaginary parts
        parts = [nan_to_num(part(x), nan=nan, posinf=posinf, neginf=neginf)
                 for part in (elementwise.real, elementwise.imag)]
        return elementwise.from_parts(parts[0], parts[1])
    info = np.finfo(dtype)
    out = elementwise.where(elementwise.isnan(x), nan, x)
    out = elementwise.where(x == np.inf, info.max if posinf is None else posinf, out)
    return elementwise.where(x == -np.inf, info.min if neginf is None else neginf, out)


@implements(np.linspace)
def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0, *,
             device=None):
    """np.linspace with traced endpoints (arrays of them too): NumPy's arithmetic,
    ``start + arange(num) * step`` with the last value ``stop`` itself."""
    num = int(num)
    if num < 0:
        raise ValueError(f"Number of samples, {num}, must be non-negative.")
    div = (num - 1) if endpoint else num
    dt = _inexact_result_type(start, stop)
    start, stop = _as_dtype(start, dt), _as_dtype(stop, dt)
    delta = stop - start
    extra = shape(delta)
    steps = np.arange(0, num, dtype=dt).reshape((-1,) + (1,) * len(extra))
    if div > 0:
        step = delta / div
        y = steps * step
    else:
        step = np.nan
        y = steps * delta
    y = y + start
    if endpoint and num > 1:
        last = expand_dims(broadcast_to(stop, extra), 0)
        y = concatenate([slice_axis(y, 0, 0, num - 1), last], axis=0)
    if axis != 0:
        y = moveaxis(y, 0, axis)
    if dtype is not None:
        if np.issubdtype(np.dtype(dtype), np.integer):
            y = elementwise.floor(y)
        y = astype(y, dtype)
    return (y, step) if retstep else y


@implements(np.rot90)
def rot90(m, k=1, axes=(0, 1)):
    axes = tuple(axes)
    nd = ndim(m)
    if len(axes) != 2:
        raise ValueError("len(axes) must be 2.")
    if axes[0] == axes[1] or abs(axes[0] - axes[1]) == nd:
        raise ValueError("Axes must be different.")
    if not (-nd <= axes[0] < nd and -nd <= axes[1] < nd):
        raise ValueError(f"Axes={axes} out of range for array of ndim={nd}.")
    k %= 4
    if k == 0:
        return m
    if k == 2:
        return flip(flip(m, axes[0]), axes[1])
    perm = list(range(nd))
    perm[axes[0]], perm[axes[1]] = perm[axes[1]], perm[axes[0]]
    if k == 1:
        return transpose(flip(m, axes[1]), perm)
    return flip(transpose(m, perm), axes[1])


@implements(np.kron)
def kron(a, b):
    """The Kronecker product: NumPy's interleaved broadcast product, reshaped."""
    nda, ndb = ndim(a), ndim(b)
    if nda == 0 or ndb == 0:
        return a * b
    as_ = (1,) * max(0, ndb - nda) + shape(a)
    bs = (1,) * max(0, nda - ndb) + shape(b)
    a_arr = reshape(a, tuple(v for d in as_ for v in (d, 1)))
    b_arr = reshape(b, tuple(v for d in bs for v in (1, d)))
    return reshape(a_arr * b_arr, tuple(x * y for x, y in zip(as_, bs)))


@implements(np.select)
def select(condlist, choicelist, default=0):
    """Nested np.where, the first condition that holds winning; NumPy's result dtype."""
    condlist, choicelist = list(condlist), list(choicelist)
    if len(condlist) != len(choicelist):
        raise ValueError("list of cases must be same length as list of conditions")
    if not condlist:
        raise ValueError("select with an empty condition list is not possible")
    for i, cond in enumerate(condlist):
        if np.dtype(dtype_of(cond)) != np.bool_:
            raise TypeError(f"invalid entry {i} in condlist: should be boolean ndarray")
    dtype = np.result_type(*[dtype_of(c) for c in choicelist + [default]])
    result = _as_dtype(default, dtype)
    for cond, choice in zip(reversed(condlist), reversed(choicelist)):
        result = elementwise.where(cond, _as_dtype(choice, dtype), result)
    target = core.broadcast_shapes(*[shape(c) for c in condlist + choicelist + [default]])
    return broadcast_to(result, target)


def _kth(kth, n):
    kth = np.atleast_1d(np.asarray(kth))
    if not np.issubdtype(kth.dtype, np.integer):
        raise TypeError("Partition index must be integer")
    if np.any((kth < -n) | (kth >= n)):
        raise ValueError(f"kth(={kth}) out of bounds ({n})")
    return tuple(int(k) % n for k in kth.reshape(-1))


@implements(np.argpartition, method="argpartition")
def argpartition(a, kth, axis=-1, kind="introselect", order=None):
    if order is not None:
        raise unsupported("np.argpartition with order=")
    if axis is None:
        a, axis = ravel(a), 0
    axis %= ndim(a)
    return reductions.argpartition(a, kth=_kth(kth, shape(a)[axis]), axis=axis)


@implements(np.partition)
def partition(a, kth, axis=-1, kind="introselect", order=None):
    """NumPy's values (the arrangement of its introselect); the gradient flows back to
    where each value came from."""
    if axis is None:
        a, axis = ravel(a), 0
    axis %= ndim(a)
    return take_along_axis(a, argpartition(a, kth, axis, kind, order), axis)


@implements(np.rollaxis)
def rollaxis(a, axis, start=0):
    n = ndim(a)
    axis = core.normalize_axes(axis, n)[0]
    if start < 0:
        start += n
    if not 0 <= start < n + 1:
        raise ValueError(f"'start' arg requires {-n} <= start < {n + 1}, but {start} was passed in")
    if axis < start:
        start -= 1
    if axis == start:
        return a
    axes = list(range(n))
    axes.remove(axis)
    axes.insert(start, axis)
    return transpose(a, axes)


@implements(np.atleast_3d)
def atleast_3d(*arys):
    res = []
    for a in arys:
        nd = ndim(a)
        if nd == 0:
            a = reshape(a, (1, 1, 1))
        elif nd == 1:
            a = reshape(a, (1, shape(a)[0], 1))
        elif nd == 2:
            a = reshape(a, shape(a) + (1,))
        res.append(a)
    return res[0] if len(res) == 1 else tuple(res)


@implements(np.hsplit)
def hsplit(ary, indices_or_sections):
    if ndim(ary) == 0:
        raise ValueError("hsplit only works on arrays of 1 or more dimensions")
    return split(ary, indices_or_sections, 1 if ndim(ary) > 1 else 0)


@implements(np.vsplit)
def vsplit(ary, indices_or_sections):
    if ndim(ary) < 2:
        raise ValueError("vsplit only works on arrays of 2 or more dimensions")
    return split(ary, indices_or_sections, 0)


@implements(np.dsplit)
def dsplit(ary, indices_or_sections):
    if ndim(ary) < 3:
        raise ValueError("dsplit only works on arrays of 3 or more dimensions")
    return split(ary, indices_or_sections, 2)


@implements(np.gradient)
def gradient(f, *varargs, axis=None, edge_order=1):
    """NumPy's finite differences (second order inside, first or second order at the
    edges), with spacings given as scalars or coordinates; traced f and coordinates."""
    nd = ndim(f)
    axes = tuple(range(nd)) if axis is None else \
        tuple(a % nd for a in ((axis,) if isinstance(axis, (int, np.integer)) else axis))
    n = len(varargs)
    if n == 0:
        dx = [1.0] * len(axes)
    elif n == 1 and ndim(varargs[0]) == 0:
        dx = list(varargs) * len(axes)
    elif n == len(axes):
        dx = [_spacing(d, shape(f)[ax]) for d, ax in zip(varargs, axes)]
    else:
        raise TypeError("invalid number of arguments")
    if edge_order > 2:
        raise ValueError("'edge_order' greater than 2 not supported")
    if not np.issubdtype(dtype_of(f), np.inexact):
        f = astype(f, np.float64)
    outs = [_gradient_along(f, ax, d, edge_order) for ax, d in zip(axes, dx)]
    return outs[0] if len(axes) == 1 else tuple(outs)


def _spacing(distances, length):
    """One axis' spacing: a scalar, or the differences of the coordinates (a scalar again
    when constant, as NumPy does, for plain coordinates)."""
    if ndim(distances) == 0:
        return distances
    if ndim(distances) != 1:
        raise ValueError("distances must be either scalars or 1d")
    if shape(distances)[0] != length:
        raise ValueError("when 1d, distances must match the length of the corresponding dimension")
    if np.issubdtype(dtype_of(distances), np.integer):
        distances = astype(distances, np.float64)
    diffx = diff(distances)
    if not _is_traced(diffx) and np.all(diffx == diffx[0]):
        return diffx[0]
    return diffx


def _gradient_along(f, axis, dx, edge_order):
    n = shape(f)[axis]
    if n < edge_order + 1:
        raise ValueError("Shape of array too small to calculate a numerical gradient, at "
                         "least (edge_order + 1) elements are required.")
    uniform = ndim(dx) == 0
    nd = ndim(f)

    def at(i, j=None):
        return slice_axis(f, axis, i, j) if j is not None or i is None else \
            expand_dims(getitem(f, (slice(None),) * axis + (i,)), axis)

    def along(v):  # coefficients broadcast along `axis`
        return reshape(v, tuple(-1 if d == axis else 1 for d in range(nd)))

    if uniform:
        inner = (slice_axis(f, axis, 2, None) - slice_axis(f, axis, None, -2)) / (2.0 * dx)
    else:
        dx1, dx2 = getitem(dx, slice(0, -1)), getitem(dx, slice(1, None))
        a = along(-dx2 / (dx1 * (dx1 + dx2)))
        b = along((dx2 - dx1) / (dx1 * dx2))
        c = along(dx1 / (dx2 * (dx1 + dx2)))
        inner = a * slice_axis(f, axis, None, -2) + b * slice_axis(f, axis, 1, -1) + \
            c * slice_axis(f, axis, 2, None)
    if edge_order == 1:
        dx0 = dx if uniform else getitem(dx, 0)
        dxn = dx if uniform else getitem(dx, -1)
        first = (at(1) - at(0)) / dx0
        last = (at(-1) - at(-2)) / dxn
    else:
        if uniform:
            a, b, c = -1.5 / dx, 2.0 / dx, -0.5 / dx
        else:
            dx1, dx2 = getitem(dx, 0), getitem(dx, 1)
            a = -(2.0 * dx1 + dx2) / (dx1 * (dx1 + dx2))
            b = (dx1 + dx2) / (dx1 * dx2)
            c = -dx1 / (dx2 * (dx1 + dx2))
        first = a * at(0) + b * at(1) + c * at(2)
        if uniform:
            a, b, c = 0.5 / dx, -2.0 / dx, 1.5 / dx
        else:
            dx1, dx2 = getitem(dx, -2), getitem(dx, -1)
            a = dx2 / (dx1 * (dx1 + dx2))
            b = -(dx2 + dx1) / (dx1 * dx2)
            c = (2.0 * dx2 + dx1) / (dx2 * (dx1 + dx2))
        last = a * at(-3) + b * at(-2) + c * at(-1)
    parts = [first, inner, last] if n > 2 or edge_order == 2 else [first, last]
    out = concatenate([astype(p, dtype_of(f)) for p in parts], axis=axis)
    return out


@implements(np.interp)
def interp(x, xp, fp, left=None, right=None, period=None):
    """Piecewise-linear interpolation, NumPy's formula ``slope * (x - xp[j]) + fp[j]``
    (exact at the knots); differentiable in x, xp and fp (one-sided at the knots)."""
    if period is not None:
        raise unsupported("np.interp with period=")
    if ndim(xp) != 1 or ndim(fp) != 1:
        raise ValueError("data must be 1 dimensional")
    n = shape(xp)[0]
    if shape(fp)[0] != n:
        raise ValueError("fp and xp are not of the same length.")
    if n == 0:
        raise ValueError("array of sample points is empty")
    for name, v in (("x", x), ("xp", xp)):
        if _is_complex(v):
            raise ArgumentError(f"np.interp: {name} must be real (NumPy cannot cast complex "
                                f"values to float64 according to the rule 'safe')")
    if _is_complex(fp):
        # NumPy's complex interpolation: the real and the imaginary parts, each as a real
        # fp, joined exactly (complex from parts)
        re, im = (interp(x, xp, part(fp), *(None if v is None else part(v) for v in (left, right)))
                  for part in (real, imag))
        return elementwise.from_parts(re, im)
    if builtins.any(_is_complex(v) for v in (left, right) if v is not None):
        raise ArgumentError("np.interp: left and right must be real for a real fp (NumPy: "
                            "must be real number, not complex)")
    x, xp, fp = (_as_dtype(v, np.float64) for v in (x, xp, fp))  # NumPy computes in double
    first, last = getitem(fp, 0), getitem(fp, -1)
    if n == 1:
        y = broadcast_to(first, shape(x))
    else:
        j = elementwise.minimum(elementwise.maximum(
            reductions.searchsorted(xp, x, side="right") - 1, 0), n - 2)
        x0, x1 = getitem(xp, j), getitem(xp, j + 1)
        f0, f1 = getitem(fp, j), getitem(fp, j + 1)
        y = (f1 - f0) / (x1 - x0) * (x - x0) + f0
        y = elementwise.where(x == x0, f0, y)
    y = elementwise.where(x == getitem(xp, -1), last, y)
    y = elementwise.where(x < getitem(xp, 0), first if left is None else left, y)
    return elementwise.where(x > getitem(xp, -1), last if right is None else right, y)


def _without_nan(a, fill):
    return elementwise.where(elementwise.isnan(a), fill, a) \
        if np.issubdtype(dtype_of(a), np.inexact) else a


@implements(np.nansum)
def nansum(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    _check_reduce_kwargs("nansum", {"initial": initial, "where": where})
    return sum(_without_nan(a, 0.0), axis=axis, dtype=dtype, keepdims=keepdims)


@implements(np.nanmean)
def nanmean(a, axis=None, dtype=None, out=None, keepdims=False, *, where=None):
    _check_reduce_kwargs("nanmean", {"where": where})
    if not np.issubdtype(dtype_of(a), np.inexact):
        return mean(a, axis=axis, dtype=dtype, keepdims=keepdims)
    total = nansum(a, axis=axis, dtype=dtype, keepdims=keepdims)
    count = sum(astype(elementwise.logical_not(elementwise.isnan(a)), np.intp), axis=axis,
                keepdims=keepdims)
    return total / count


def _nan_extremum(reduce_, fill, a, axis, keepdims):
    if not np.issubdtype(dtype_of(a), np.inexact):
        return reduce_(a, axis=axis, keepdims=keepdims)
    res = reduce_(_without_nan(a, fill), axis=axis, keepdims=keepdims)
    all_nan = all_(elementwise.isnan(a), axis=axis, keepdims=keepdims)
    return elementwise.where(all_nan, np.nan, res)  # NumPy: NaN (and a warning) there


@implements(np.nanmax)
def nanmax(a, axis=None, out=None, keepdims=False, initial=None, where=None):
    _check_reduce_kwargs("nanmax", {"initial": initial, "where": where})
    return _nan_extremum(amax, -np.inf, a, axis, keepdims)


@implements(np.nanmin)
def nanmin(a, axis=None, out=None, keepdims=False, initial=None, where=None):
    _check_reduce_kwargs("nanmin", {"initial": initial, "where": where})
    return _nan_extremum(amin, np.inf, a, axis, keepdims)


@implements(np.ptp, method="ptp")
def ptp(a, axis=None, out=None, keepdims=False):
    return amax(a, axis=axis, keepdims=keepdims) - amin(a, axis=axis, keepdims=keepdims)


@implements(np.average)
def average(a, axis=None, weights=None, returned=False, *, keepdims=False):
    """NumPy's weighted mean sum(a * w) / sum(w) (``returned``: and sum(w))."""
    if axis is not None:
        axis = core.normalize_axes(axis, ndim(a))
    if weights is None:
        avg = mean(a, axis=axis, keepdims=keepdims)
        scl = np.asarray(avg).dtype.type(_count(a, _axes(axis, ndim(a))) or 0) \
            if not _is_traced(avg) else np.dtype(dtype_of(avg)).type(
                int(np.prod(shape(a))) // max(int(np.prod(shape(avg))), 1))
    else:
        wgt = _weights_along(a, weights, axis)
        if np.issubdtype(dtype_of(a), np.integer) or np.dtype(dtype_of(a)) == np.bool_:
            result_dtype = np.result_type(dtype_of(a), dtype_of(wgt), "f8")
        else:
            result_dtype = np.result_type(dtype_of(a), dtype_of(wgt))
        scl = sum(wgt, axis=axis, dtype=result_dtype, keepdims=keepdims)
        if np.any(scl == 0.0):  # a guard on traced weights
            raise ZeroDivisionError("Weights sum to zero, can't be normalized")
        avg = sum(astype(a, result_dtype) * astype(wgt, result_dtype), axis=axis,
                  keepdims=keepdims) / scl
    if returned:
        if shape(scl) != shape(avg):
            scl = broadcast_to(scl, shape(avg))
        return avg, scl
    return avg


def _weights_along(a, weights, axis):
    """np.average's weights: the shape of ``a``, or 1-d along the one reduced axis."""
    if shape(weights) == shape(a):
        return weights
    if axis is None:
        raise TypeError("Axis must be specified when shapes of a and weights differ.")
    if ndim(weights) != len(axis):
        raise TypeError("Shape of weights must be consistent with shape of a along specified axis.")
    if shape(weights) != tuple(shape(a)[ax] for ax in axis):
        raise ValueError("Shape of weights must be consistent with shape of a along specified axis.")
    order = [ax for ax in sorted(axis)]
    w = weights if list(axis) == order else transpose(weights, [list(axis).index(ax) for ax in order])
    return reshape(w, tuple(shape(a)[d] if d in axis else 1 for d in range(ndim(a))))


@implements(np.cov)
def cov(m, y=None, rowvar=True, bias=False, ddof=None, fweights=None, aweights=None, *,
        dtype=None):
    """NumPy's covariance, step for step (weights too; their checks on plain weights)."""
    if ddof is not None and ddof != int(ddof):
        raise ValueError("ddof must be integer")
    if ndim(m) > 2 or (y is not None and ndim(y) > 2):
        raise ValueError("m has more than 2 dimensions")
    if dtype is None:
        dtype = np.result_type(dtype_of(m), *([dtype_of(y)] if y is not None else []), np.float64)
    X = _as_dtype(m, dtype)
    X = reshape(X, (1,) * (2 - ndim(X)) + shape(X))
    if not rowvar and ndim(m) != 1:
        X = transpose(X)
    if shape(X)[0] == 0:
        return np.array([]).reshape(0, 0)
    if y is not None:
        yy = _as_dtype(y, dtype)
        yy = reshape(yy, (1,) * (2 - ndim(yy)) + shape(yy))
        if not rowvar and shape(yy)[0] != 1:
            yy = transpose(yy)
        X = concatenate([X, yy], axis=0)
    if ddof is None:
        ddof = 1 if bias == 0 else 0
    w = None
    if fweights is not None:
        fweights = _as_dtype(fweights, np.float64)
        if not _is_traced(fweights) and not np.all(fweights == np.around(fweights)):
            raise TypeError("fweights must be integer")
        w = fweights
    if aweights is not None:
        aweights = _as_dtype(aweights, np.float64)
        w = aweights if w is None else w * aweights
    for weights in (fweights, aweights):
        if weights is not None and (ndim(weights) > 1 or shape(weights)[0] != shape(X)[1]):
            raise RuntimeError("incompatible numbers of samples and weights")
        if weights is not None and not _is_traced(weights) and np.any(weights < 0):
            raise ValueError("weights cannot be negative")
    avg, w_sum = average(X, axis=1, weights=w, returned=True)
    w_sum = getitem(w_sum, 0) if _is_traced(w_sum) else w_sum[0]
    if w is None:
        fact = shape(X)[1] - ddof
    elif ddof == 0:
        fact = w_sum
    elif aweights is None:
        fact = w_sum - ddof
    else:
        fact = w_sum - ddof * sum(w * aweights) / w_sum
    if fact <= 0:  # a guard on traced weights
        import warnings
        warnings.warn("Degrees of freedom <= 0 for slice", RuntimeWarning, stacklevel=2)
        fact = 0.0
    X = X - reshape(avg, (-1, 1))
    X_T = transpose(X) if w is None else transpose(X * w)
    c = dot(X, conj(X_T))  # NumPy conjugates (complex values: the Hermitian covariance)
    c = c * (np.true_divide(1, fact) if not _is_traced(fact) else 1 / fact)
    return squeeze(c)


@implements(np.corrcoef)
def corrcoef(x, y=None, rowvar=True, bias=np._NoValue, ddof=np._NoValue, *, dtype=None):
    c = cov(x, y, rowvar, dtype=dtype)
    if ndim(c) != 2:
        return c / c
    d = diagonal(c)
    stddev = elementwise.sqrt(real(d))
    c = c / reshape(stddev, (-1, 1))
    c = c / reshape(stddev, (1, -1))
    if _is_complex(c):  # NumPy clips the real and the imaginary parts to [-1, 1]
        return elementwise.from_parts(clip(real(c), -1, 1), clip(imag(c), -1, 1))
    return clip(c, -1, 1)


@implements(np.linalg.matrix_power)
def matrix_power(a, n):
    """NumPy's algorithm (the same products in the same order): inverse for n < 0, then
    repeated squaring."""
    if ndim(a) < 2 or shape(a)[-1] != shape(a)[-2]:
        raise ShapeError(f"matrix_power: expected a square matrix (or a stack), got {shape(a)}")
    try:
        n = int(n)
    except TypeError as e:
        raise TypeError("exponent must be an integer") from e
    if n == 0:
        return broadcast_to(np.eye(shape(a)[-1], dtype=dtype_of(a)), shape(a))
    if n < 0:
        a, n = linalg.inv(a), -n
    if n == 1:
        return a
    if n == 2:
        return linalg.matmul(a, a)
    if n == 3:
        return linalg.matmul(linalg.matmul(a, a), a)
    z = result = None
    while n > 0:
        z = a if z is None else linalg.matmul(z, z)
        n, bit = divmod(n, 2)
        if bit:
            result = z if result is None else linalg.matmul(result, z)
    return result


@implements(np.linalg.lstsq)
def lstsq(a, b, rcond=None):
    """(x, residuals, rank, s): x = pinv(a) b, the minimum-norm least-squares solution
    LAPACK's gelsd computes (equal up to rounding; singular values below rcond * the
    largest count as zero); rank is guarded (a new rank retraces)."""
    m, n = shape(a)[-2:]
    if ndim(a) != 2:
        raise unsupported("np.linalg.lstsq of a stack of matrices")
    vector = ndim(b) == 1
    if shape(b)[0] != m:
        raise ShapeError(f"lstsq: a has shape {shape(a)} but b has shape {shape(b)}")
    dt = _inexact_result_type(a, b)
    real_dt = linalg._real_dtype(dt)  # residuals are real for complex a and b too
    a, b = _as_dtype(a, dt), _as_dtype(b, dt)
    if rcond is None:
        rcond = np.finfo(dt).eps * max(m, n)
    s = linalg.svdvals(a)
    x = linalg.pinv(a, rcond=float(rcond)) @ b
    if not min(m, n):
        return x, np.empty((0,), dtype=real_dt), 0, s
    rank = sum(astype(s > rcond * amax(s), np.intp))
    if isinstance(rank, Tracer) and rank.val is None:
        # no values (inside dp.vmap): the rank stays a traced integer, and the residuals
        # take the full-rank shape, NaN where the rank is lower (NumPy gives none there)
        if m <= n:
            return x, np.empty((0,), dtype=real_dt), rank, s
        r = b - a @ x
        residuals = reshape(sum(_abs_squared(r), axis=0), (1,) if vector else (shape(b)[1],))
        return x, elementwise.where(rank == n, residuals, np.nan), rank, s
    rank = int(rank)  # guarded: a new rank retraces
    if rank == n and m > n:
        r = b - a @ x
        residuals = sum(_abs_squared(r), axis=0)
        residuals = reshape(residuals, (1,)) if vector else residuals
    else:
        residuals = np.empty((0,), dtype=real_dt)
    return x, residuals, np.int32(rank), s  # LAPACK's rank: NumPy returns an int32


def _ufunc_methods() -> None:
    """``x.sqrt()``, ``x.exp()``, ...: NumPy's object loops call a method named after a
    math ufunc on each element, so an array of Python objects holding traced values
    (np.asarray(x) in code diffprog does not see; see diffprog.object_arrays) computes
    np.sqrt of itself element by element through these."""
    ufuncs = {u for u in list(core.NUMPY_BINDINGS) + list(_UFUNC_COMPOSITES)
              if isinstance(u, np.ufunc) and u.nin == 1 and u.nout == 1}
    for u in ufuncs:
        TRACER_METHODS.setdefault(u.__name__, lambda self, u=u: u(self))


_ufunc_methods()
TRACER_METHODS.update(inplace.METHODS)  # x.sort(), x.fill(v): change x (diffprog.inplace)
