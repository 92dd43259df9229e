"""Arrays built from traced values with NumPy's own constructors.

``np.array([x, x ** 2])``, ``np.asarray([y[1], -y[0]])``, ``np.r_[x, y]`` and every NumPy
function that turns a list into an array (``np.mean([a, b])``, ``np.linalg.norm([x, y])``)
call ``__array__`` on the traced values inside, and NumPy never dispatches these calls
to diffprog (its ``__array_function__`` protocol covers neither ``np.array`` nor the
coercion of a list argument). So :meth:`Tracer.__array__ <diffprog.tracing.Tracer.__array__>`
answers with an *array of Python objects holding the traced values* (:func:`holding`):
a 0-d traced value is its own element; the elements of a traced array of shape ``s`` are
:class:`Element` objects (element ``k`` of it, a traced value made only when used on its
own). NumPy builds the nested list into one object array of the right shape, with the
constants where they were.

Such an array becomes one traced array again (:func:`traced`) wherever it meets
diffprog: as an operand of a NumPy call on traced values, of a primitive, as an output
of a traced function (a pytree leaf, :func:`diffprog.tree.flatten`) or of a loop body.
The conversion is exact: constants stay constants, each element is read from where it
came from (whole traced arrays are reshaped, not split, and anything else is one
gather), and the result has the dtype NumPy's ``np.array`` would give those values.
Until then NumPy computes on the objects element by element (``a * 2`` of an object
array calls ``*`` on each element), which is also exact, only slow for big arrays: a
:class:`~diffprog.errors.DiffprogWarning` says so once per array when that happens.

Refused with an error (never computed as something else): a dtype asked of traced
values (``np.array([x, y], dtype=float)``: NumPy would convert each element to a plain
number), and object arrays mixing traced values with non-numbers or with nested arrays.
"""
from __future__ import annotations

import warnings

import numpy as np

from .errors import ArgumentError, DiffprogWarning
from .ir import Aval
from .tracing import Tracer, user_frame_line

#: an array whose elements are used one by one this many times gets a warning
ELEMENTWISE_WARNING = 64


class _Source:
    """What the elements of one traced array share: the array and how many of its
    elements NumPy's object loops have used one by one."""

    __slots__ = ("tracer", "used", "line")

    def __init__(self, tracer: Tracer, line: str):
        self.tracer = tracer
        self.used = 0
        self.line = line


class Element(Tracer):
    """Element ``index`` (flat, C order) of a traced array, inside an array of Python
    objects. It is a traced 0-d value (the slice ``source[index]``), made the first time
    it is used on its own, so building and converting back whole arrays records nothing
    per element."""

    __slots__ = ("_source", "_index")

    def __init__(self, source: _Source, index: int):  # the Tracer slots are filled by _made
        self._source = source
        self._index = index

    def _made(self) -> Tracer:
        try:
            Tracer._var.__get__(self, Tracer)
        except AttributeError:
            src = self._source
            from .numpy_api import getitem
            t = getitem(src.tracer, tuple(int(i) for i in
                                          np.unravel_index(self._index, src.tracer.shape)))
            Tracer._trace.__set__(self, t._trace)
            Tracer._var.__set__(self, t._var)
            Tracer.val.__set__(self, t.val)
            src.used += 1
            if src.used == ELEMENTWISE_WARNING:
                warnings.warn(
                    f"a traced array of shape {src.tracer.shape} became an array of Python "
                    f"objects at {src.line} (np.array/np.asarray of traced values), and NumPy "
                    f"now computes on it element by element (one operation per element, "
                    f"at {user_frame_line()}). The result is exact but slow to trace and run. "
                    f"Fix: leave out np.asarray on traced values (they already behave like "
                    f"arrays), and build arrays from traced pieces with np.stack or "
                    f"np.concatenate.", DiffprogWarning, stacklevel=2)
        return self

    # the traced value, made on first use
    _trace = property(lambda self: Tracer._trace.__get__(self._made(), Tracer))
    _var = property(lambda self: Tracer._var.__get__(self._made(), Tracer))
    val = property(lambda self: Tracer.val.__get__(self._made(), Tracer))

    # what is known without making it
    aval = property(lambda self: Aval((), self._source.tracer.dtype))
    shape = property(lambda self: ())
    dtype = property(lambda self: self._source.tracer.dtype)
    ndim = property(lambda self: 0)
    size = property(lambda self: 1)


def holding(tracer: Tracer, dtype=None) -> np.ndarray:
    """What ``np.asarray(tracer)`` gives: an array of Python objects of the tracer's shape
    holding its elements (see the module docstring). ``dtype`` other than object is
    refused: NumPy would turn each element into a plain number."""
    if dtype is not None and np.dtype(dtype) != np.dtype(object):
        from .tracing import _escape_error
        raise _escape_error(
            tracer, f"A conversion to a plain array of {np.dtype(dtype)} (np.array(..., "
            f"dtype=...), np.{np.dtype(dtype).name}(x), or a NumPy function that converts a "
            f"list holding traced values, such as np.mean([a, b]))",
            "Leave out dtype= (np.array([...]) of traced values keeps them traced) and "
            "convert afterwards with .astype(...); give NumPy functions an array, e.g. "
            "np.mean(np.array([a, b])) or np.mean(np.stack([a, b])).")
    if tracer.ndim == 0:  # (NumPy puts the tracer itself into the array it builds)
        out = np.empty((), dtype=object)
        out[()] = tracer
        return out
    # a snapshot: the array is NumPy's copy, which an in-place change of tracer later
    # (diffprog.inplace: the same object then stands for the new value) must not reach
    tracer = Tracer(tracer._trace, tracer._var, tracer.val)
    source = _Source(tracer, user_frame_line())
    flat = np.empty(tracer.size, dtype=object)
    flat[:] = [Element(source, k) for k in range(tracer.size)]
    return flat.reshape(tracer.shape)


_MAX_DEPTH = 32


def holds_tracer(value, depth: int = 0) -> bool:
    """Is ``value`` a traced value, or a list/tuple/array of Python objects with one inside?"""
    if isinstance(value, Tracer):
        return True
    if type(value) in (list, tuple) and depth < _MAX_DEPTH:
        return any(holds_tracer(v, depth + 1) for v in value)
    if type(value) is np.ndarray and value.dtype.kind == "O":
        return any(isinstance(e, Tracer) for e in value.reshape(-1).tolist())
    return False


def traced(value):
    """``value`` as a traced array when it is an array of Python objects holding traced
    values (see the module docstring), or a (nested) list or tuple holding traced values
    (what NumPy would make an array of); any other value unchanged."""
    if type(value) in (list, tuple):
        if not holds_tracer(value):
            return value
        with np.errstate(all="ignore"):
            value = np.array(value)  # through Tracer.__array__: an array of Python objects
    if type(value) is not np.ndarray or value.dtype != object:
        return value
    elements = value.reshape(-1).tolist()
    if not any(isinstance(e, Tracer) for e in elements):
        return value
    return _assembled(elements, value.shape)


def traced_operands(args: tuple) -> tuple:
    """The operands of a primitive with arrays of Python objects and lists holding traced
    values made traced arrays (a list operand is an array_like, as NumPy reads it)."""
    return tuple(traced(a) if type(a) in (list, tuple, np.ndarray) else a for a in args)


def traced_in(values):
    """``values`` (the arguments of a NumPy call: operands, and lists and tuples of
    operands) with every array of Python objects holding traced values replaced by a
    traced array; the same object when there is none (the common case, checked cheaply)."""
    if not any(_may_hold(v) for v in values):
        return values
    out = [traced(v) if type(v) is np.ndarray else
           (traced_in(v) if isinstance(v, (list, tuple)) else v) for v in values]
    return type(values)(out) if type(values) in (list, tuple) else out


def _may_hold(v, depth: int = 0) -> bool:
    if type(v) is np.ndarray:
        return v.dtype == object
    if depth < 2 and type(v) in (list, tuple):
        return any(_may_hold(e, depth + 1) for e in v)
    return False


def _assembled(elements: list, shape: tuple):
    """One traced array of ``shape`` from its flat ``elements``: traced 0-d values,
    :class:`Element` objects and numbers."""
    from . import numpy_api as npa
    sources: dict = {}  # id(_Source) -> [source, position in `parts`]
    scalars: list = []
    constants: list = []
    refs = []  # per element: (kind, key, index)
    for e in elements:
        if type(e) is Element:
            src = e._source
            sources.setdefault(id(src), src)
            refs.append((0, id(src), e._index))
        elif isinstance(e, Tracer):
            if e.ndim != 0:
                raise ArgumentError(
                    f"an array of Python objects holds a traced array of shape {e.shape} as "
                    f"one element (at {user_frame_line()}); NumPy makes such arrays from "
                    f"nested sequences of different shapes. Fix: build the array with "
                    f"np.stack/np.concatenate from pieces of matching shapes.")
            refs.append((1, 0, len(scalars)))
            scalars.append(e)
        else:
            if np.ndim(e) != 0 or np.asarray(e).dtype.kind not in "biufc":
                raise ArgumentError(
                    f"an array of Python objects mixes traced values with {type(e).__name__} "
                    f"{e!r:.60} (at {user_frame_line()}): only numbers can be made into an "
                    f"array with traced values. Fix: build the array from numbers and arrays "
                    f"of matching shapes.")
            refs.append((2, 0, len(constants)))
            constants.append(e)
    dtypes = [s.tracer.dtype for s in sources.values()] + [t.dtype for t in scalars] + \
        [np.asarray(c).dtype for c in constants]
    dtype = np.result_type(*dtypes)
    parts, start = [], {}
    offset = 0
    for key, src in sources.items():
        start[(0, key)] = offset
        parts.append(npa.reshape(src.tracer, (-1,)))
        offset += src.tracer.size
    if scalars:
        start[(1, 0)] = offset
        parts.append(npa.stack(scalars))
        offset += len(scalars)
    if constants:
        start[(2, 0)] = offset
        parts.append(np.array(constants, dtype=dtype))
        offset += len(constants)
    parts = [npa.astype(p, dtype) for p in parts]
    whole = npa.concatenate(parts) if len(parts) > 1 else parts[0]
    order = np.fromiter((start[(kind, key)] + i for kind, key, i in refs), dtype=np.intp,
                        count=len(refs))
    if len(order) != offset or np.any(order != np.arange(offset)):
        whole = npa.getitem(whole, order)  # one gather: constant integer indices
    return npa.reshape(whole, shape)
