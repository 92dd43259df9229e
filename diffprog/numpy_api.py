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
from typing import Any, Callable

import numpy as np

from .primitives import core, elementwise, linalg, reductions, shapes
from .errors import ArgumentError, ShapeError
from .tracing import Tracer, unsupported

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


def shape(x) -> tuple:
    return tuple(np.shape(x)) if not isinstance(x, Tracer) else x.shape


def ndim(x) -> int:
    return len(shape(x))


def dtype_of(x) -> np.dtype:
    return x.dtype if hasattr(x, "dtype") else np.result_type(x)


# =========================================================== dispatch entry points

_UFUNC_COMPOSITES: dict[Any, Callable] = {}


def dispatch_ufunc(ufunc, method, inputs, kwargs):
    if kwargs.get("out") is not None:
        raise ArgumentError(
            f"np.{ufunc.__name__}(..., out=...) (or an in-place operator such as `a += x` on a "
            f"plain NumPy array) writes into an array in place, which cannot be traced. Fix: "
            f"use the returned value, e.g. `a = a + x`, instead of out= or +=.")
    dtype = kwargs.pop("dtype", None)
    kwargs.pop("out", None)
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


def _apply_ufunc(ufunc, inputs):
    composite = _UFUNC_COMPOSITES.get(ufunc)
    if composite is not None:
        return composite(*inputs)
    binding = core.NUMPY_BINDINGS.get(ufunc)
    if binding is None:
        raise unsupported(f"np.{ufunc.__name__}")
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


def dispatch_function(func, args, kwargs):
    handler = HANDLERS.get(func) or _entry_binding(func)
    if handler is None:
        name = getattr(func, "__module__", "numpy") or "numpy"
        name = name.replace("numpy.linalg._linalg", "np.linalg").replace("numpy", "np")
        raise unsupported(f"{name}.{func.__name__}" if "linalg" in name else f"np.{func.__name__}")
    return handler(*args, **kwargs)


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
        return x if n == 1 else elementwise.integer_pow(x, n=n)
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


@_ufunc_composite(np.positive, np.conjugate)
def positive(x):
    return x


# =========================================================== dtype / creation

@implements(method="astype")
def astype(x, dtype, copy=True, **_):
    dtype = np.dtype(dtype)
    if dtype_of(x) == dtype:
        return x
    return elementwise.convert(x, dtype=dtype)


@implements(np.zeros_like)
def zeros_like(a, dtype=None, order="K", subok=True, shape=None):
    return np.zeros(shape if shape is not None else shape_of(a), dtype or dtype_of(a))


@implements(np.ones_like)
def ones_like(a, dtype=None, order="K", subok=True, shape=None):
    return np.ones(shape if shape is not None else shape_of(a), dtype or dtype_of(a))


@implements(np.empty_like)
def empty_like(a, dtype=None, order="K", subok=True, shape=None):
    return zeros_like(a, dtype, shape=shape)


@implements(np.full_like)
def full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None):
    if _is_traced(fill_value):
        return broadcast_to(astype(fill_value, dtype or dtype_of(a)), shape or shape_of(a))
    return np.full(shape if shape is not None else shape_of(a), fill_value, dtype or dtype_of(a))


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


@implements(np.copy, method="copy")
def copy(a, *args, **kwargs):
    return a


@implements(np.real, method="conj,conjugate")
def real(a, *args):
    if np.issubdtype(dtype_of(a), np.complexfloating):
        raise unsupported("complex arithmetic (np.real)")
    return a


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
        return x
    if np.dtype(dtype_of(x)) == np.bool_:
        x = astype(x, np.intp)
    return reductions.reduce_sum(x, axes=axes, keepdims=bool(keepdims))


@implements(np.prod, method="prod")
def prod(x, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    _check_reduce_kwargs("prod", {"initial": initial, "where": where})
    if dtype is not None:
        x = astype(x, dtype)
    axes = _axes(axis, ndim(x))
    return reductions.reduce_prod(x, axes=axes, keepdims=bool(keepdims)) if axes else x


@implements(np.max, np.amax, method="max")
def amax(x, axis=None, out=None, keepdims=False, initial=None, where=None):
    _check_reduce_kwargs("max", {"initial": initial, "where": where})
    axes = _axes(axis, ndim(x))
    return reductions.reduce_max(x, axes=axes, keepdims=bool(keepdims)) if axes else x


@implements(np.min, np.amin, method="min")
def amin(x, axis=None, out=None, keepdims=False, initial=None, where=None):
    _check_reduce_kwargs("min", {"initial": initial, "where": where})
    axes = _axes(axis, ndim(x))
    return reductions.reduce_min(x, axes=axes, keepdims=bool(keepdims)) if axes else x


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
    total = sum(x, axis=axes, keepdims=keepdims)
    return total / count if count else total * np.nan  # divided, as NumPy does: bit for bit


@implements(np.var, method="var")
def var(x, axis=None, dtype=None, out=None, ddof=0, keepdims=False, where=None, mean=None,
        correction=None):
    _check_reduce_kwargs("var", {"where": where, "mean": mean})
    ddof = correction if correction is not None else ddof
    x = astype(x, dtype) if dtype is not None else _float_of(x)
    axes = _axes(axis, ndim(x))
    centred = x - globals()["mean"](x, axis=axes, keepdims=True)
    dof = _count(x, axes) - ddof  # NumPy divides by max(dof, 0): inf (or nan for 0 / 0)
    squares = sum(centred * centred, axis=axes, keepdims=keepdims)
    return squares / dof if dof > 0 else squares * np.inf


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
    safe = elementwise.where(zero, 1.0, s)
    return elementwise.where(zero, 0.0, elementwise.sqrt(safe) if exponent == 0.5 else power(safe, exponent))


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


@implements(np.median)
def median(x, axis=None, out=None, overwrite_input=False, keepdims=False):
    if axis is None:
        x, axis = ravel(x), 0
    axis %= ndim(x)
    n = shape(x)[axis]
    s = sort(x, axis=axis)
    mid = slice_axis(s, axis, (n - 1) // 2, n // 2 + 1)
    return mean(mid, axis=axis, keepdims=keepdims)


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
        return x
    return shapes.reshape(x, shape=target)


def _method_reshape(self, *shape, order="C"):
    if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
        shape = shape[0]
    return reshape(self, shape, order=order)


TRACER_METHODS["reshape"] = _method_reshape


@implements(np.ravel, method="ravel,flatten")
def ravel(x, order="C"):
    return reshape(x, (-1,), order=order)


@implements(np.transpose)
def transpose(x, axes=None):
    nd = ndim(x)
    axes = tuple(reversed(range(nd))) if axes is None else tuple(int(a) % nd for a in axes)
    if axes == tuple(range(nd)):
        return x
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
        return x
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
    if len(arrays) == 1:
        return arrays[0]
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
    return reshape(b, tuple(r * d for r, d in zip(reps, xs)))


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
    return shapes.pad(x, pad_width=widths, value=float(constant_values))


# =========================================================== indexing

def getitem(x, index):
    index = index if isinstance(index, tuple) else (index,)
    items, arrays = [], []
    for item in index:
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
    scale = 10.0 ** decimals
    return elementwise.round_(a * scale) / scale


@implements(np.triu)
def triu(m, k=0):
    n, mm = shape(m)[-2:]
    return m * np.triu(np.ones((n, mm), dtype=dtype_of(m)), k)


@implements(np.tril)
def tril(m, k=0):
    n, mm = shape(m)[-2:]
    return m * np.tril(np.ones((n, mm), dtype=dtype_of(m)), k)


@implements(np.diag)
def diag(v, k=0):
    if k != 0:
        raise unsupported("np.diag with k != 0")
    if ndim(v) == 1:
        n = shape(v)[0]
        return reshape(v, (n, 1)) * np.eye(n, dtype=dtype_of(v))
    return diagonal(v)


@implements(np.diagonal, method="diagonal")
def diagonal(a, offset=0, axis1=0, axis2=1):
    if offset != 0:
        raise unsupported("np.diagonal with offset != 0")
    a = moveaxis(a, (axis1, axis2), (-2, -1))
    n, m = shape(a)[-2:]
    k = min(n, m)
    return sum(slice_last2(a, k) * np.eye(k, dtype=dtype_of(a)), axis=-1)


def slice_last2(a, k):
    return getitem(a, (Ellipsis, slice(0, k), slice(0, k)))


@implements(np.trace, method="trace")
def trace(a, offset=0, axis1=0, axis2=1, dtype=None, out=None):
    if offset != 0:
        raise unsupported("np.trace with offset != 0")
    return sum(diagonal(a, 0, axis1, axis2), axis=-1)


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
    return sum(ravel(a) * ravel(b))


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
    if axis is None and ndim(x) == 2 and ord is not None:
        axis = (0, 1)
    if axis is None and ndim(x) == 1:
        return _vector_norm(x, ord, 0, keepdims)
    if axis is None:
        return _root_of_squares(sum(x * x, keepdims=keepdims))
    if isinstance(axis, (int, np.integer)) or len(axis) == 1:
        ax = axis if isinstance(axis, (int, np.integer)) else axis[0]
        return _vector_norm(x, ord, ax, keepdims)
    return _matrix_norm(x, ord, tuple(axis), keepdims)


def _vector_norm(x, ord, axis, keepdims):
    if ord in (None, 2):
        return _root_of_squares(sum(x * x, axis=axis, keepdims=keepdims))
    if ord == np.inf:
        return amax(elementwise.abs_(x), axis=axis, keepdims=keepdims)
    if ord == -np.inf:
        return amin(elementwise.abs_(x), axis=axis, keepdims=keepdims)
    if ord == 1:
        return sum(elementwise.abs_(x), axis=axis, keepdims=keepdims)
    if ord == 0:
        return sum(astype(x != 0, dtype_of(x)), axis=axis, keepdims=keepdims)
    if ord < 0:  # |0| ** ord is inf, and the norm 0: NumPy's values, no kink to smooth
        return power(sum(power(elementwise.abs_(x), float(ord)), axis=axis, keepdims=keepdims), 1.0 / ord)
    return _even_power(sum(_even_power(elementwise.abs_(x), float(ord)), axis=axis, keepdims=keepdims),
                       1.0 / ord)


def _matrix_norm(x, ord, axes, keepdims):
    r, c = (a % ndim(x) for a in axes)
    if ord in (None, "fro"):
        return _root_of_squares(sum(x * x, axis=(r, c), keepdims=keepdims))
    if ord in (1, -1, np.inf, -np.inf):
        inner_ax, outer_ax = (r, c) if ord in (1, -1) else (c, r)
        col = sum(elementwise.abs_(x), axis=inner_ax, keepdims=True)
        red = amax if ord in (1, np.inf) else amin
        out = red(col, axis=outer_ax, keepdims=True)
        return out if keepdims else squeeze(out, axis=(r, c))
    raise unsupported(f"np.linalg.norm with ord={ord!r} (needs an SVD)")


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
