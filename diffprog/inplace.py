"""In-place changes of traced arrays: ``x += v``, ``x[i] = v``, ``x[1:] *= 3``,
``x.sort()``, ``x.fill(v)``.

NumPy changes the array itself: every name and container holding it, and every view of
its memory, sees the change. diffprog computes the new value functionally (``x[i] = v``
is ``np.where(mask, v placed, x)``, the placing and casting NumPy's own) and then makes
the traced array *stand for* that value (:func:`replaced`: the same Python object, so
``y = x; y += 1`` changes what ``x`` stands for too). Views are followed both ways: a
traced array made by basic slicing, transposing or reshaping (:data:`VIEW_ENTRIES`)
remembers its base; a change of the base recomputes its live views from the new base,
and a change of a view is written back into its base (a slice placed back with the same
index, a transpose transposed back, a reshape reshaped back), whose views are then
recomputed, the changed one among them.

Refused (an :class:`~diffprog.errors.ArgumentError` naming the fix), never silently
different: changing an array the function was given (an argument, a global or attribute
it reads: NumPy would change the caller's array, and diffprog never changes what it is
given); changing a broadcast (read-only in NumPy too), a ``.real``/``.imag`` view, or a
reshape of an array that may be strided (NumPy may have copied it or not).

0-d values are NumPy scalars (``a[0]``, ``np.sum(a)``), which are immutable: ``s += 1``
rebinds ``s`` in NumPy too. Otherwise a result keeps the array's shape and dtype, as
NumPy's ``out=`` does: cast with ``same_kind`` for operators (``x_f32 += y_f64`` stays
float32; ``x_int += 0.5`` is NumPy's casting error), unsafely for item assignment
(``x_int[0] = 2.7`` stores 2).
"""
from __future__ import annotations

import os
import weakref

import numpy as np

from .errors import ArgumentError, ShapeError

#: entries whose result shares its operand's memory in NumPy (a view)
VIEW_ENTRIES = frozenset({"reshape", "transpose", "slice", "broadcast_to", "real", "imag"})
#: views whose change is written back into their base (the others are refused)
_WRITABLE = frozenset({"reshape", "transpose", "slice"})

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def note_view(out, base, prim, params) -> None:
    """``out`` (a new Tracer) is ``prim(base, **params)``, a view of ``base`` in NumPy (a
    reshape of an array whose layout is not known to be C-contiguous may be a copy:
    ambiguous, see :func:`_reshape_is_view`)."""
    ambiguous = prim.name == "reshape" and not _reshape_is_view(base, params["shape"])
    out._view = (base, prim, params, ambiguous)
    views = base._views
    if views is None:
        views = base._views = []
    elif len(views) > 64:  # (drop the dead ones now and then)
        views[:] = [r for r in views if r() is not None]
    views.append(weakref.ref(out))


def zero_d_view(prim, params) -> bool:
    """Is a 0-d result of this entry a NumPy 0-d *array* view (``x[0, ...]``,
    ``x[3:4].reshape(())``), not a scalar (``x[0]``, which is a copy)?"""
    if prim.name == "reshape":
        return True
    index = params.get("index") if prim.name == "slice" else None
    return isinstance(index, tuple) and any(i is Ellipsis for i in index)


def same_view(x, read_only: bool = False):
    """A new view of all of ``x`` (np.reshape to its own shape, a no-op transpose or
    broadcast_to): a new object sharing x's memory, as NumPy's."""
    from .primitives.shapes import broadcast_to, reshape
    from .tracing import Tracer
    if not isinstance(x, Tracer):
        return x
    out = Tracer(x._trace, x._var, x.val)
    shape = x._var.aval.shape
    note_view(out, x, broadcast_to if read_only else reshape, {"shape": shape})
    return out


def _reshape_is_view(base, shape) -> bool:
    """Does NumPy's reshape of ``base`` to ``shape`` make a view whatever base's layout?
    When only axes of length 1 come or go (squeeze, expand_dims, x[None]), or base is
    known to be C-contiguous (:func:`known_c`)."""
    old = [d for d in base._var.aval.shape if d != 1]
    if old == [d for d in shape if d != 1]:
        return True
    return known_c(base)


def known_c(x, depth: int = 0) -> bool:
    """Is ``x``'s NumPy array C-contiguous whatever the function's arguments are laid out
    like? One-dimensional results of ufuncs and products, products, and ufunc results of
    such arrays (NumPy lays out a ufunc's result as its operands are: ``y.T * 1.5`` is
    Fortran-ordered); arguments and views are not known."""
    if depth > 16:
        return False
    from .tracing import producer
    eqn = producer(x, 4096)
    if eqn is None:
        return False
    name, ndim = eqn.prim.name, len(x._var.aval.shape)
    if name in ("matmul", "concatenate"):
        return True
    if name == "copy":
        return eqn.params.get("order") == "C" or ndim <= 1
    if name == "reshape":  # (of a C-contiguous array: a view, C-contiguous too)
        return known_c(_tracer_of(x, eqn.inputs[0]), depth + 1)
    if name == "slice" and x._view is not None and _leading_rows(eqn.params["index"]):
        return known_c(x._view[0], depth + 1)  # (rows of a C array: C-contiguous)
    if eqn.prim.elementwise:
        if ndim <= 1:
            return True
        full = [a for a in eqn.inputs if a.__class__.__name__ == "Var"
                and a.aval.shape == x._var.aval.shape]  # (they decide NumPy's layout)
        return all(known_c(_tracer_of(x, a), depth + 1) for a in full)
    return False


def _leading_rows(index) -> bool:
    """Does this basic index take whole rows (an int or a step-1 slice on the first axis,
    all of every other axis)?"""
    items = index if isinstance(index, tuple) else (index,)
    if not items:
        return True
    first, rest = items[0], items[1:]
    if not (isinstance(first, (int, np.integer)) or isinstance(first, slice)
            and first.step in (None, 1)):
        return False
    return all(isinstance(i, slice) and i == slice(None) for i in rest)


def _tracer_of(x, var):
    """A stand-in tracer for ``var`` (a value of x's trace), to follow its producer."""
    from .tracing import Tracer
    return Tracer(x._trace, var)


def change(x, new, what: str) -> None:
    """``x`` (a Tracer) stands for ``new`` from now on, and so does everything sharing its
    memory (see the module doc); ``what`` names the change in errors."""
    _refuse_given(x, what)
    view = x._view
    if view is None:
        replaced(x, new)
        _refresh_views(x, what)
        return
    base, prim, params, ambiguous = view
    if prim.name not in _WRITABLE or ambiguous:
        raise ArgumentError(_view_refusal(what, prim.name, ambiguous))
    change(base, _written_back(base, prim, params, new), what)  # (x is among base's views)


def set_shape(x, shape) -> None:
    """``x.shape = shape``: the same array (and memory) with a new shape, as NumPy's. A
    view keeps viewing its base (a reshape of it); changing the shape of a slice or
    transpose view, or of an array with views in use, is refused (they would no longer
    agree on where each element lives)."""
    from . import numpy_api as npa
    _refuse_given(x, "x.shape = ...")
    if any(True for _ in _live_views(x)):
        raise ArgumentError(
            "x.shape = ... on an array that has views in use (slices, reshapes): diffprog "
            "cannot follow them through the new shape. Fix: y = x.reshape(...) instead.")
    view = x._view
    if view is not None and (view[1].name != "reshape" or view[3]):
        kind = "a reshape that may be a copy" if view[3] else "a slice or transpose view"
        raise ArgumentError(
            f"x.shape = ... on {kind}: NumPy may refuse it too (it needs no copy only where "
            f"the memory allows). Fix: y = x.reshape(...) instead.")
    new = npa.reshape(x, shape)
    new_shape = new._var.aval.shape
    replaced(x, new)
    if view is not None:
        x._view = (view[0], view[1], {**view[2], "shape": new_shape}, view[3])


def replaced(x, new) -> None:
    """``x`` stands for ``new``'s value from now on (the same Python object)."""
    x._trace, x._var, x.val = new._trace, new._var, new.val


def _live_views(x):
    """The views of ``x`` still in use (and still views of x)."""
    for ref in list(x._views or ()):
        view = ref()
        if view is not None and view._view is not None and view._view[0] is x:
            yield view


def _refresh_views(x, what: str) -> None:
    """Recompute the live views of ``x`` (just changed) from its new value."""
    from .tracing import bind
    for view in _live_views(x):
        _, prim, params, ambiguous = view._view
        if ambiguous:
            raise ArgumentError(_view_refusal(what, prim.name, ambiguous))
        replaced(view, bind(prim, x, **params))
        _refresh_views(view, what)


def _written_back(base, prim, params, new):
    """``base`` after its view ``prim(base, **params)`` became ``new``."""
    from . import numpy_api as npa
    if prim.name == "slice":
        return set_items(base, params["index"], new)
    if prim.name == "transpose":
        return npa.transpose(new, tuple(np.argsort(params["axes"])))
    return npa.reshape(new, base._var.aval.shape)


def _view_refusal(what: str, name: str, ambiguous: bool) -> str:
    if name == "broadcast_to":
        why = "a broadcast view is read-only in NumPy too"
    elif ambiguous:
        why = ("it is a reshape of an array that may be strided, which NumPy may have "
               "copied or not")
    else:
        why = "it is the .real or .imag view of a complex array"
    return (f"{what} changes a view in place, but {why}. Fix: change a copy "
            f"(v = v.copy() first), or compute the new array (np.where(mask, new, x)).")


def _refuse_given(x, what: str) -> None:
    """An array the function was given (an input of its trace), or one made before the
    innermost trace opened (outside a loop or branch body that changes it), stays as it
    is. (A value a body makes from outer values alone is recorded in the outer trace, to
    compute it once: made in the body, it may change there.)"""
    from .tracing import trace_stack
    trace, stack = x._trace, trace_stack()
    given = not stack or x._depth < 0 or trace is not stack[-1] and x._depth < len(stack)
    if given:
        raise ArgumentError(
            f"{what} changes an array the function was given (an argument, or a global or "
            f"attribute it reads) in place: NumPy would change the caller's array too, and "
            f"diffprog never changes what it is given. Fix: work on a new array "
            f"(x = x + 1 instead of x += 1; x = x.copy() first for item assignment).")


# ------------------------------------------------------------------ the entry points

def operator_in_place(x, result, symbol: str):
    """``x <symbol>= ...`` (``result``: ``x <symbol> ...``): ``x`` changed, returned."""
    from .numpy_api import astype
    aval, new = x._var.aval, result._var.aval
    if new.shape != aval.shape:
        raise ShapeError(
            f"x {symbol}= ...: non-broadcastable output operand with shape {aval.shape} "
            f"doesn't match the broadcast shape {new.shape} (as NumPy). Fix: write "
            f"x = x {symbol} ... for a new array of the larger shape.")
    if new.dtype != aval.dtype:
        if not np.can_cast(new.dtype, aval.dtype, casting="same_kind"):
            raise ArgumentError(
                f"x {symbol}= ...: cannot cast the result from {new.dtype} to x's dtype "
                f"{aval.dtype} with casting rule 'same_kind' (NumPy raises this too). Fix: "
                f"x = x {symbol} ... for a new array, or convert x first (x.astype(float)).")
        result = astype(result, aval.dtype)
    change(x, result, f"x {symbol}= ...")
    return x


def set_items(x, index, value):
    """``x`` with ``x[index] = value`` done as NumPy does it, as a new traced value: the
    selection, broadcasting, casting and (for repeated index entries) last-write-wins
    order are NumPy's own, computed on an array of positions; the values are gathered
    from ``value`` (bit for bit) and placed with ``np.where``."""
    from . import numpy_api as npa
    from .tracing import Tracer
    if _has_tracer(index):
        raise ArgumentError(
            "x[i] = v with a traced index i: where the value lands would depend on data. "
            "Fix: np.where(np.arange(n) == i, v, x) (or index with a constant).")
    shape, dtype = x._var.aval.shape, x._var.aval.dtype
    positions = np.full(shape, -1, dtype=np.intp)
    target = positions[index]  # IndexError as NumPy's
    count = int(np.size(target))
    positions[index] = np.arange(count, dtype=np.intp).reshape(np.shape(target))
    mask = positions >= 0
    if count == 0:
        return x
    value_shape = tuple(value._var.aval.shape) if isinstance(value, Tracer) else np.shape(value)
    while len(value_shape) > np.ndim(target) and value_shape[0] == 1:  # NumPy drops them
        value = npa.reshape(value, value_shape[1:])
        value_shape = value_shape[1:]
    try:
        np.broadcast_shapes(value_shape, np.shape(target))
    except ValueError:
        raise ShapeError(
            f"x[...] = v: could not broadcast input array from shape {value_shape} into shape "
            f"{np.shape(target)} (as NumPy). Fix: give v the shape of the selection.") from None
    flat = npa.reshape(np.broadcast_to(value, np.shape(target)), (count,))
    if npa.dtype_of(flat) != dtype:
        flat = npa.astype(flat, dtype, casting="unsafe")
    placed = flat[np.where(mask, positions, 0)]
    return np.where(mask, placed, x)


def set_item_in_place(x, index, value) -> None:
    """``x[index] = value``."""
    change(x, set_items(x, index, value), "x[...] = v")


def _has_tracer(index) -> bool:
    from .tracing import Tracer
    items = index if isinstance(index, tuple) else (index,)
    for item in items:
        if isinstance(item, Tracer):
            return True
        if isinstance(item, (list, np.ndarray)):
            values = np.asarray(item, dtype=object).ravel()
            if any(isinstance(v, Tracer) for v in values):
                return True
    return False


def storing_into_plain_array(frame) -> bool:
    """Is ``frame`` (user code) at ``y[index] = value``? (NumPy converting a traced value
    to store it into a plain array ``y`` asks for its number or its array.)"""
    from .externals import is_user_file
    if frame is None or not is_user_file(frame.f_code.co_filename):
        return False  # (diffprog's own stores, and a library's: tracing.call_user names it)
    import dis
    code, lasti = frame.f_code, frame.f_lasti
    try:
        return dis.opname[code.co_code[lasti]] == "STORE_SUBSCR"
    except IndexError:
        return False


# ------------------------------------------------------------------ methods that change x

def _sort(self, axis=-1, kind=None, order=None, **stable):
    """``x.sort()``: sorts x itself and returns None, as NumPy's (np.sort makes a copy)."""
    change(self, np.sort(self, axis=axis, kind=kind, order=order, **stable), "x.sort()")


def _fill(self, value):
    """``x.fill(v)``: every element of x set to v (cast to x's dtype), returning None."""
    change(self, set_items(self, Ellipsis, value), "x.fill(v)")


#: the traced array's methods that change it (diffprog.numpy_api adds them)
METHODS = {"sort": _sort, "fill": _fill}
