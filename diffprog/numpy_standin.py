"""NumPy as a traced function reads it: ``np.array([x, y])`` gives a traced array.

NumPy dispatches most of its functions to diffprog through the ``__array_function__``
protocol, but not ``np.array``/``np.asarray`` (no dispatch at all) and not a *list*
argument holding traced values (``np.mean([a, b])``: the list is what NumPy dispatches
on, and a list has no protocol). Without help these end in ``Tracer.__array__``, which
answers with an array of Python objects (:mod:`diffprog.object_arrays`): exact, but
computed element by element, and refused where NumPy insists on a plain number
(``np.mean`` of it casts its result with ``np.float64(...)``).

So the ``np`` a traced function reads (its globals and helpers, through
:mod:`diffprog.externals`) is :data:`NUMPY`, this module's stand-in for the numpy module:

* ``np.array``, ``np.asarray``, ``np.asanyarray``, ``np.ascontiguousarray``,
  ``np.asfortranarray`` of anything holding traced values (a traced value, nested lists
  and tuples mixing traced values, numbers and arrays) give one traced array, with the
  dtype NumPy would give those values (``dtype=`` and ``ndmin=`` honoured); anything
  else, and ``dtype=object``, is NumPy's own call.
* ``np.r_[...]``/``np.c_[...]`` holding traced values give a traced array.
* every other NumPy function (and those of ``np.linalg`` and ``np.fft``) first turns each list or tuple
  argument that holds traced values and forms a regular array into a traced array (what
  NumPy itself does with an ``array_like`` argument), then calls NumPy's function, which
  dispatches to diffprog. Functions whose argument is a *sequence of arrays*
  (``np.concatenate``, ``np.stack``, ``np.block``, ...) are called unchanged: NumPy
  dispatches on the arrays inside. If NumPy has no rule for the converted call, the
  original arguments are tried (NumPy's object arrays may compute it element by element).
* everything else (ufuncs, dtypes and scalar types, constants, ``np.random``, classes) is
  NumPy's own object.

:func:`standin` maps a value read by a traced function to what it should see instead.
"""
from __future__ import annotations

import functools
import types

import numpy as np

from . import effects
from .errors import ArgumentError, UnsupportedFunctionError
from .object_arrays import holds_tracer, traced

#: functions taking a sequence of arrays (NumPy dispatches on the arrays inside it)
_SEQUENCE_FUNCTIONS = frozenset(
    getattr(np, name) for name in
    ("concatenate", "concat", "stack", "unstack", "hstack", "vstack", "dstack", "column_stack",
     "row_stack", "block", "einsum", "einsum_path", "broadcast_arrays", "meshgrid", "select",
     "choose", "ix_", "piecewise", "lexsort", "savez", "savez_compressed")
    if hasattr(np, name)) | {np.linalg.multi_dot}

#: types of NumPy's Python-level API functions (array-function dispatchers, plain functions)
_FUNCTION_TYPES = (type(np.mean), types.FunctionType)

def _wants_objects(dtype) -> bool:
    return dtype is not None and np.dtype(dtype) == np.dtype(object)


def _traced_array(obj, dtype=None, ndmin: int = 0):
    """The traced array ``np.array(obj)`` stands for (``obj`` holds traced values)."""
    out = traced(obj)
    from . import numpy_api
    if dtype is not None:  # (no copy here: np.asarray makes none; np.array adds its own)
        out = numpy_api.astype(out, dtype, copy=False)
    if ndmin > out.ndim:
        out = numpy_api.reshape(out, (1,) * (ndmin - out.ndim) + out.shape)
    return out


# ------------------------------------------------------------------ array constructors

def _copied(x, order, same_object: bool = False):
    from .numpy_api import copied
    return copied(x, order, same_object)


def array(object, dtype=None, *, copy=True, order="K", subok=False, ndmin=0, **kwargs):
    if holds_tracer(object) and not _wants_objects(dtype):
        out = _traced_array(object, dtype, ndmin)  # np.array(x) of one traced x copies it
        return _copied(out, order) if copy and out is object else out
    return np.array(object, dtype, copy=copy, order=order, subok=subok, ndmin=ndmin, **kwargs)


def asarray(a, dtype=None, order=None, **kwargs):
    if holds_tracer(a) and not _wants_objects(dtype):
        out = _traced_array(a, dtype)  # order "C"/"F": NumPy copies what is not laid out so
        return _copied(out, order, same_object=True) if order in ("C", "F") else out
    return np.asarray(a, dtype, order, **kwargs)


def asanyarray(a, dtype=None, order=None, **kwargs):
    if holds_tracer(a) and not _wants_objects(dtype):
        return _traced_array(a, dtype)
    return np.asanyarray(a, dtype, order, **kwargs)


def ascontiguousarray(a, dtype=None, **kwargs):
    if holds_tracer(a) and not _wants_objects(dtype):
        return _copied(_traced_array(a, dtype, ndmin=1), "C", same_object=True)
    return np.ascontiguousarray(a, dtype, **kwargs)


def asfortranarray(a, dtype=None, **kwargs):
    if holds_tracer(a) and not _wants_objects(dtype):
        return _copied(_traced_array(a, dtype, ndmin=1), "F", same_object=True)
    return np.asfortranarray(a, dtype, **kwargs)


class _Concatenator:
    """``np.r_``/``np.c_``: NumPy's own, its result made one traced array."""

    def __init__(self, real):
        self._real = real

    def __getitem__(self, key):
        return traced(self._real[key])

    def __len__(self):
        return len(self._real)

    def __repr__(self):
        return repr(self._real)


_CONSTRUCTORS = {np.array: array, np.asarray: asarray, np.asanyarray: asanyarray,
                 np.ascontiguousarray: ascontiguousarray, np.asfortranarray: asfortranarray}


# ------------------------------------------------------------------ other functions

def _as_array_like(a):
    """A list/tuple holding traced values as the traced array it forms (a ragged one, or
    one NumPy cannot make an array of, unchanged)."""
    if type(a) not in (list, tuple) or not holds_tracer(a):
        return a
    try:
        return _traced_array(a)
    except (ValueError, ArgumentError):
        return a


@functools.lru_cache(maxsize=None)
def function(fn):
    """``fn`` (a NumPy function) reading list arguments holding traced values as arrays."""
    if fn in _CONSTRUCTORS:
        return _CONSTRUCTORS[fn]
    if fn in _SEQUENCE_FUNCTIONS:
        return fn

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if not (any(type(a) in (list, tuple) for a in args) or
                any(type(a) in (list, tuple) for a in kwargs.values())):
            return fn(*args, **kwargs)
        new_args = [_as_array_like(a) for a in args]
        new_kwargs = {k: _as_array_like(v) for k, v in kwargs.items()}
        if all(a is b for a, b in zip(new_args, args)) and \
                all(new_kwargs[k] is kwargs[k] for k in kwargs):
            return fn(*args, **kwargs)
        try:
            return fn(*new_args, **new_kwargs)
        except UnsupportedFunctionError:  # no rule: NumPy on the objects, element by element
            return fn(*args, **kwargs)
    return call


class _Namespace(types.ModuleType):
    """A stand-in for ``numpy``, ``numpy.linalg`` or ``numpy.fft``: attributes read from
    the real module, functions through :func:`function`, ``r_``/``c_``, ``linalg`` and
    ``fft`` replaced."""

    def __init__(self, real):
        super().__init__(real.__name__, real.__doc__)
        self.__dict__["_real"] = real

    def __getattr__(self, name):
        value = getattr(self.__dict__["_real"], name)
        seen = standin(value)
        self.__dict__[name] = seen  # read once
        return seen

    def __dir__(self):
        return dir(self.__dict__["_real"])

    def __repr__(self):
        return f"<diffprog stand-in for module {self.__name__!r}>"


def standin(value):
    """What a traced function should see instead of ``value``: the stand-in of the numpy
    module, of ``numpy.linalg`` or ``numpy.fft``, of a NumPy function or of ``np.r_``/``np.c_``; any other
    value unchanged."""
    if isinstance(value, types.ModuleType):
        if value is np:
            return NUMPY
        if value is np.linalg:
            return LINALG
        if value is np.fft:
            return FFT
        return value
    if value is np.r_ or value is np.c_:
        return _R if value is np.r_ else _C
    if isinstance(value, _FUNCTION_TYPES) or type(value) is type(np.array) and \
            any(value is c for c in _CONSTRUCTORS):
        if effects.is_impure(value):  # np.load, np.loadtxt...: read at every call
            return effects.standin(value)
        module = getattr(value, "__module__", None) or ""
        if module == "numpy" or module.startswith("numpy."):
            return function(value)
    return value


_R, _C = _Concatenator(np.r_), _Concatenator(np.c_)
_NAMESPACES: dict = {}


def namespace(module) -> "_Namespace":
    """A stand-in of any NumPy module (``numpy._core.numeric`` as NumPy's own code names
    it): its functions through :func:`standin`."""
    found = _NAMESPACES.get(module.__name__)
    if found is None:
        found = _NAMESPACES[module.__name__] = _Namespace(module)
    return found
NUMPY = _Namespace(np)
LINALG = _Namespace(np.linalg)
FFT = _Namespace(np.fft)
