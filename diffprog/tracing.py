"""Tracing: run ordinary NumPy code on Tracer objects and record a Graph.

A :class:`Tracer` stands for an array inside a traced function. It carries its
abstract value (shape, dtype) and, while tracing user code, its concrete value, so
shape-dependent Python keeps working. Every NumPy call or operator on a Tracer
becomes an equation through :func:`bind`.

Traces nest: ``dp.grad`` called inside a traced function opens a new trace at a
higher level; values from outer traces that the inner function closes over are
*captured* as extra inputs of the inner graph, so derivatives flow through them.
"""
from __future__ import annotations

import contextlib
import contextvars
import linecache
import math
import os
import re
import sys
from typing import Any, Callable

import numpy as np

from . import inplace
from .errors import (ArgumentError, ArgumentValueError, ConcretizationError, DiffprogError,
                     UnsupportedAttributeError, UnsupportedFunctionError)
from .inplace import VIEW_ENTRIES
from .ir import Aval, Eqn, Graph, Lit, Var, aval_of
from .tree import flatten

# The open traces, innermost last. A context variable holding an immutable tuple, so
# every thread (and every asyncio task) has its own stack: two threads tracing at once
# must never see each other's traces (a nested derivative in one thread would otherwise
# capture the other thread's values and return a silently wrong gradient).
_TRACE_STACK: contextvars.ContextVar[tuple] = contextvars.ContextVar("diffprog_traces",
                                                                      default=())


def trace_stack() -> tuple:
    """The open traces of this thread (context), outermost first."""
    return _TRACE_STACK.get()


def tracing_active() -> bool:
    """Is this thread (context) inside a trace right now?"""
    return bool(_TRACE_STACK.get())


#: Tracer._depth of a trace's inputs (arguments, captured outer values): given, not made
GIVEN = -1


class Trace:
    """Records equations. ``concrete`` traces also compute every value eagerly."""

    def __init__(self, concrete: bool):
        self.level = len(_TRACE_STACK.get())
        self.concrete = concrete
        self.eqns: list[Eqn] = []
        self.invars: list[Var] = []
        self.captured: list[tuple[Any, Var]] = []  # (outer tracer, inner input var)
        self._capture_index: dict[int, tuple] = {}  # id(outer) -> (outer, inner)
        # inputs whose shape/dtype the traced code looked at (np.zeros(p["w"].shape)): the
        # fast call path checks those even when the program never reads their values
        self.inspected: set = set()
        self.active = True
        #: a loop or branch body's trace: its inputs are the loop's own values (a carry, a
        #: step of xs), which the body may change in place (carry += x), not the caller's
        self.owns_inputs = False

    def new_input(self, aval: Aval, value: Any = None) -> "Tracer":
        var = Var(aval)
        self.invars.append(var)
        tracer = Tracer(self, var, value)
        if not self.owns_inputs:
            tracer._depth = GIVEN  # (diffprog.inplace: never changed in place)
        return tracer

    def capture(self, outer: "Tracer") -> "Tracer":
        """Turn a tracer of an enclosing trace into an input of this one."""
        known = self._capture_index.get(id(outer))
        if known is not None and known[0] is outer:
            return known[1]
        var = Var(outer._var.aval)
        # a snapshot: the object may later stand for a new value (diffprog.inplace)
        self.captured.append((Tracer(outer._trace, outer._var, outer.val), var))
        inner = Tracer(self, var, outer.val if self.concrete else None)
        inner._depth = GIVEN
        # (the entry holds the outer object: its id is not reused while the trace lives)
        self._capture_index[id(outer)] = (outer, inner)
        return inner

    def to_graph(self, outputs: list) -> Graph:
        outvars = [self.atom(o) for o in outputs]
        return Graph(self.invars + [v for _, v in self.captured], self.eqns, outvars)

    def atom(self, x: Any):
        if type(x) in (list, tuple) or type(x) is np.ndarray and x.dtype.kind == "O":
            from .object_arrays import traced  # never a constant holding traced values
            x = traced(x)
            if type(x) in (list, tuple):  # an array_like of numbers: NumPy's array of it
                x = np.asarray(x)  # (derivative rules read its dtype and shape)
        if isinstance(x, Tracer):
            if x._trace is self:
                return x._var
            return self.capture(x)._var
        if isinstance(x, np.ndarray) and type(x) is not np.ndarray:
            refuse_array_subclass(x, lambda: "a constant the function computes with")
            x = np.asarray(x)  # (a memmap: its values, as a plain array)
        return Lit(x)


#: ndarray subclasses whose values and operations are those of a plain ndarray
_PLAIN_SUBCLASSES = (np.memmap,)


def refuse_array_subclass(x, where: Callable[[], str]) -> None:
    """Refuse an ndarray subclass diffprog would compute with as if it were a plain array:
    a masked array (its mask would be ignored), np.matrix (``*`` is a matrix product
    there), any other subclass whose own behaviour would be lost. ``where()`` names it."""
    if isinstance(x, np.ma.MaskedArray):
        raise ArgumentError(
            f"{where()} is a masked array (numpy.ma.MaskedArray). diffprog computes on plain "
            f"arrays and would silently ignore its mask. Fix: pass x.filled(fill_value) (or "
            f"np.ma.getdata(x)) and the mask as a separate boolean array, and use np.where(mask, "
            f"..., ...) inside the function.")
    if isinstance(x, np.matrix):
        raise ArgumentError(
            f"{where()} is an np.matrix, whose operators differ from arrays ('*' is a matrix "
            f"product, results stay 2-d). diffprog computes with plain arrays and would give "
            f"different numbers. Fix: pass np.asarray(x) and write '@' for matrix products.")
    if isinstance(x, np.ndarray) and type(x) is not np.ndarray and \
            not isinstance(x, _PLAIN_SUBCLASSES):
        raise ArgumentError(
            f"{where()} is a {type(x).__module__}.{type(x).__qualname__}, a subclass of "
            f"np.ndarray whose own behaviour diffprog would not reproduce. Fix: pass "
            f"np.asarray(x) if its values are all that matters.")


#: called, without arguments, before each trace opens (diffprog.scipy_api: SciPy dispatch)
BEFORE_TRACE: list = []


@contextlib.contextmanager
def new_trace(concrete: bool):
    for hook in BEFORE_TRACE:
        hook()
    trace = Trace(concrete)
    token = _TRACE_STACK.set(_TRACE_STACK.get() + (trace,))
    try:
        yield trace
    finally:
        _TRACE_STACK.reset(token)
        trace.active = False


def _top_trace(args) -> Trace | None:
    top = None
    for a in args:
        if isinstance(a, Tracer):
            if not a._trace.active:
                raise DiffprogError(
                    "a traced value escaped the function it was traced in (stored in a "
                    "global, a closure or an object and used later). Return it from the "
                    "function instead.")
            if top is None or a._trace.level > top.level:
                top = a._trace
    return top


def bind(prim, *args, **params):
    """Apply primitive ``prim``: record an equation if any argument is traced,
    otherwise compute the result directly (constant folding for free)."""
    if _object_arrays_in(args):
        from .object_arrays import traced_operands
        args = traced_operands(args)
    trace = _top_trace(args)
    if trace is None:
        return _evaluate(prim, args, params)
    if prim.identity:
        kept = _drop_identity(prim, args)
        if kept is not None:
            return kept
    atoms = [a._var if isinstance(a, Tracer) and a._trace is trace else trace.atom(a)
             for a in args]
    out_avals = prim.abstract_eval(*[a.aval for a in atoms], **params)
    if not isinstance(out_avals, (list, tuple)):  # one result: the common case
        value = None
        if trace.concrete:
            concrete_in = _concrete_operands(trace, args)
            if concrete_in is not None:
                value = _evaluate(prim, concrete_in, params)
        outvar = Var(out_avals)
        trace.eqns.append(Eqn(prim, atoms, [outvar], params))
        out = Tracer(trace, outvar, value)
        if prim.name in VIEW_ENTRIES and isinstance(args[0], Tracer) and args[0]._trace is trace \
                and (out_avals.shape or inplace.zero_d_view(prim, params)):
            inplace.note_view(out, args[0], prim, params)  # NumPy's result shares its memory
        return out
    out_avals = list(out_avals)
    values = [None] * len(out_avals)
    if trace.concrete:
        concrete_in = _concrete_operands(trace, args)
        if concrete_in is not None:
            values = list(_evaluate(prim, concrete_in, params))
    outvars = [Var(av) for av in out_avals]
    trace.eqns.append(Eqn(prim, atoms, outvars, params))
    return [Tracer(trace, v, val) for v, val in zip(outvars, values)]


def _concrete_operands(trace: Trace, args) -> list | None:
    """The concrete values of ``args`` in ``trace`` (outer tracers through their capture),
    or None when one is unknown."""
    values = []
    for a in args:
        if isinstance(a, Tracer):
            a = (a if a._trace is trace else trace.capture(a)).val
        if a is None:
            return None
        values.append(a)
    return values


def _object_arrays_in(args) -> bool:
    """An operand is an array of Python objects or a list (maybe holding traced values:
    np.array([x, y]) of traced values makes such arrays; see diffprog.object_arrays)."""
    for a in args:
        kind = type(a)
        if kind is list or kind is tuple or kind is np.ndarray and a.dtype.kind == "O":
            return True
    return False


def _evaluate(prim, values, params):
    """Compute ``prim`` on concrete values with the array library they live in.

    CuPy inputs are traced on the GPU (concrete values stay there); NumPy constants
    they meet are moved to the device for that evaluation. Without CuPy values this is
    plain NumPy, and CuPy is never imported here.
    """
    xp = _device_module(values)
    if xp is None:
        if _python_floats(values) and is_operator(prim):
            return python_scalar(prim.evaluate(np, *[np.float64(v) for v in values], **params))
        return prim.evaluate(np, *values, **params)
    values = [xp.asarray(v) if isinstance(v, np.ndarray) else v for v in values]
    return prim.evaluate(xp, *values, **params)


def is_operator(prim) -> bool:
    """Is ``prim`` spelled with a Python operator (its entry's ``operator``, such as
    ``"**"``)? On two Python floats such an operator follows Python's rules, not NumPy's:
    ``1.0 / 0.0`` and ``0.0 ** -1`` raise, ``(-1.0) ** 0.5`` turns complex, ``1e308 ** 2``
    raises OverflowError, where NumPy returns inf/nan with a RuntimeWarning. Such
    operations run on NumPy scalars (see :func:`python_scalar`)."""
    return prim.operator is not None


def _python_floats(values) -> bool:
    """Only Python floats and ints, at least one float (ints alone keep Python's rules)."""
    floats = False
    for v in values:
        kind = type(v)
        if kind is float:
            floats = True
        elif kind is not int:
            return False
    return floats


def python_scalar(value):
    """A NumPy scalar result of an operation on Python floats, back as a Python float:
    values computed only from Python scalars stay weakly typed (a float32 array they meet
    stays float32, as in NumPy)."""
    return value.item() if isinstance(value, np.generic) else value


#: types of values that live on the host (checked by identity first: the common case)
_HOST_TYPES = {np.ndarray, float, int, bool, complex, np.float64, np.float32, np.int64, np.bool_}


def _device_module(values):
    """The ``cupy`` module if any value is a CuPy array, else None."""
    for v in values:
        kind = type(v)
        if kind not in _HOST_TYPES and kind.__module__.startswith("cupy"):
            return sys.modules["cupy"]
    return None


def _is_identity_bitwise(name: str, constant, other) -> bool:
    """Is ``other op constant`` (a neutral constant) ``other`` itself, bit for bit? Signed
    zeros decide for sums: x + 0.0 is +0.0 at x = -0.0 (so only -0.0 is neutral), x - 0.0
    is x. Complex x: NumPy promotes the constant to a complex one, and a complex product
    turns infinite parts into NaN parts ((inf+0j) * 1 is inf+nanj), a complex sum a -0.0
    imaginary part into +0.0; only x - 0 stays x."""
    is_complex = isinstance(other, Tracer) and other.aval.dtype.kind == "c"
    if name == "add":
        return not is_complex and bool(np.all(np.signbit(constant)))
    if name == "sub":
        return not bool(np.any(np.signbit(constant)))
    return not is_complex


def _is_constant_equal(x, value) -> bool:
    """True when ``x`` is a plain constant whose every element equals ``value``."""
    if isinstance(x, Tracer):
        return False
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return x == value
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        base = x if all(s == 0 for s in x.strides) else None
        if base is not None or x.size <= 64:
            flat = x.reshape(-1)[:1] if base is not None else x
            return bool(np.all(flat == value))
    return False


def fresh(x):
    """A new Python object for the same traced value: NumPy made a new array, so an
    in-place change of one (diffprog.inplace) must not reach the other."""
    return Tracer(x._trace, x._var, x.val) if isinstance(x, Tracer) else x


def _drop_identity(prim, args):
    """``x * 1``, ``x + (-0.0)``, ``x - 0``, ``x / 1``: return x when the result is x bit
    for bit and would have exactly x's aval (shape, dtype, weak type). ``uint8 * 1.0`` is
    float64 in NumPy: kept."""
    for pos, neutral in prim.identity.items():
        if _is_constant_equal(args[pos], neutral):
            other = args[1 - pos]
            if not _is_identity_bitwise(prim.name, args[pos], other):
                return None
            if isinstance(other, Tracer) and (IN_DERIVATIVE_RULE.get() or not may_be_strided(other)):
                avals = [a.aval if isinstance(a, Tracer) else aval_of(a) for a in args]
                if prim.abstract_eval(*avals) == other.aval:
                    return fresh(other)  # (NumPy's x * 1 is a new array)
    return None


# True while a derivative rule (a VJP or JVP) is traced: copies NumPy would make are not
# kept there (numpy_api.copied). A derivative has no NumPy program whose bits it must
# match, and a kept copy would split a gradient's fused kernel (W4: x ** 1 in d(x ** 2)).
IN_DERIVATIVE_RULE = contextvars.ContextVar("diffprog_in_derivative_rule", default=False)


@contextlib.contextmanager
def derivative_rule():
    """Marks the tracing of a derivative rule (VJP or JVP): see IN_DERIVATIVE_RULE."""
    token = IN_DERIVATIVE_RULE.set(True)
    try:
        yield
    finally:
        IN_DERIVATIVE_RULE.reset(token)


_FRESH_PRODUCERS = frozenset({"matmul", "reduce_sum", "reduce_max", "reduce_min", "reduce_prod",
                               "copy"})
_LOOK_BACK = 64  # equations searched for a value's producer (identities follow it closely)


def makes_contiguous(prim) -> bool:
    """Does ``prim`` always give a new contiguous array (elementwise ones, products,
    reductions, copies), never a view that may be strided?"""
    return prim.elementwise or prim.name in _FRESH_PRODUCERS


def may_be_strided(tracer: "Tracer") -> bool:
    """May ``tracer``'s array be strided or reversed (the caller's array, a view)? Then
    ``x * 1.0`` is kept: it makes a contiguous copy, and NumPy's SIMD loops (``exp`` on
    AVX-512) may give a strided array other bits than a contiguous one, so dropping it
    would change what a following ``np.exp`` returns (a reviewer's repro: ``exp(x * 1.0)``
    of ``x[::-1]``). Values a ufunc or a product made are contiguous."""
    if math.prod(tracer.aval.shape) <= 1:
        return False
    eqn = producer(tracer)
    # (None: an input of the trace, or made long ago: kept, to be safe)
    return eqn is None or not makes_contiguous(eqn.prim)


def producer(tracer: "Tracer", look_back: int = _LOOK_BACK):
    """The equation of its trace that made ``tracer``'s value, among the last
    ``look_back``; None (an input, or older)."""
    var = tracer._var
    for eqn in tracer._trace.eqns[:-look_back - 1:-1]:
        if any(o is var for o in eqn.outputs):
            return eqn
    return None


def _as_tracer_in(trace: Trace, x: Any) -> Any:
    if isinstance(x, Tracer) and x._trace is not trace:
        return trace.capture(x)
    return x


def eval_graph(graph: Graph, args: list) -> list:
    """Run ``graph`` on ``args`` through :func:`bind`: records into the current
    trace when args are traced, computes directly otherwise."""
    env = {id(v): a for v, a in zip(graph.invars, args)}

    def read(atom):
        return atom.value if isinstance(atom, Lit) else env[id(atom)]

    for eqn in graph.eqns:
        outs = bind(eqn.prim, *[read(a) for a in eqn.inputs], **eqn.params)
        if len(eqn.outputs) == 1 and not isinstance(outs, list):
            outs = [outs]
        for v, o in zip(eqn.outputs, outs):
            env[id(v)] = o
    return [read(o) for o in graph.outvars]


# --------------------------------------------------------------------------- messages

_OWN_DIRS = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(np.__file__))


def user_frame_line() -> str:
    """'file.py:12: <source>' of the innermost frame outside diffprog and NumPy."""
    frame = sys._getframe(1)
    while frame is not None:
        fname = os.path.abspath(frame.f_code.co_filename)
        if not fname.startswith(_OWN_DIRS) and not fname.startswith("<frozen"):
            src = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            where = f"{os.path.basename(fname)}:{frame.f_lineno}"
            return f"{where}: {src}" if src else where
        frame = frame.f_back
    return "<unknown location>"


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called by this function's caller that
    points at the innermost frame outside diffprog and NumPy (however many wrappers,
    stand-ins and dispatch layers lie between)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None:
        fname = os.path.abspath(frame.f_code.co_filename)
        if not fname.startswith(_OWN_DIRS) and not fname.startswith("<frozen"):
            return level
        frame, level = frame.f_back, level + 1
    return 1


def _escape_error(tracer, what: str, fix: str) -> ConcretizationError:
    error = ConcretizationError(
        f"{what} on a traced value at {user_frame_line()}\n"
        f"This would turn the traced array into a plain value and silently drop its "
        f"gradient. {fix}")
    error.tracer = tracer  # which value had to be plain (diffprog.externals retries without it)
    return error


# --------------------------------------------------------------------------- Tracer

class Tracer:
    """An array-like stand-in recorded into a Trace. Behaves like an ndarray."""

    # Underscored: ``x.trace()`` and ``x.var()`` are NumPy methods users call.
    # _view: (base, entry, params, ambiguous) when NumPy's array is a view of base's;
    # _views: weak references to the views made of this one (diffprog.inplace)
    # _depth: how many traces were open when it was made (diffprog.inplace)
    __slots__ = ("_trace", "_var", "val", "_view", "_views", "_depth", "__weakref__")
    __array_priority__ = 1000  # ndarray (op) Tracer defers to the Tracer

    def __init__(self, trace: Trace, var: Var, val: Any = None):
        self._trace = trace
        self._var = var
        self.val = val
        self._view = self._views = None
        self._depth = len(_TRACE_STACK.get())

    # ---- abstract properties
    @property
    def aval(self) -> Aval:
        self._trace.inspected.add(self._var)  # its shape/dtype may be relied on
        return self._var.aval

    @property
    def shape(self) -> tuple:
        self._trace.inspected.add(self._var)
        return self._var.aval.shape

    @shape.setter
    def shape(self, value) -> None:
        inplace.set_shape(self, value)  # x.shape = (2, 3): the array itself, reshaped

    @property
    def dtype(self) -> np.dtype:
        self._trace.inspected.add(self._var)
        return self._var.aval.dtype

    @property
    def ndim(self) -> int:
        self._trace.inspected.add(self._var)
        return len(self._var.aval.shape)

    @property
    def size(self) -> int:
        self._trace.inspected.add(self._var)
        return self._var.aval.size

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of unsized (0-d) traced array")
        return self.shape[0]

    def __iter__(self):
        if not self.shape:
            raise TypeError("iteration over a 0-d traced array")
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self) -> str:
        return f"Tracer<{self.aval}>"

    # ---- escapes: the traced value would become a plain value
    def __array__(self, dtype=None, copy=None):
        # np.array([x, y]), np.asarray(x), np.r_[...]: NumPy does not dispatch these, so
        # the answer is an array of Python objects holding the traced values, made one
        # traced array again where it meets diffprog (see diffprog.object_arrays)
        _refuse_store_into_plain_array(sys._getframe(1))
        from .object_arrays import holding
        return holding(self, dtype)

    def __bool__(self):
        return self._concrete_guard("bool", bool)

    def __float__(self):
        _refuse_store_into_plain_array(sys._getframe(1))
        return self._concrete_guard("float", float)

    def __int__(self):
        return self._concrete_guard("int", int)

    def __round__(self, ndigits=None):
        # NumPy: round(array, n) and round(array) are np.round (traced); round(scalar) is
        # a Python int (guarded like int(); its derivative is zero almost everywhere)
        if ndigits is not None or self._var.aval.shape:
            return np.round(self, 0 if ndigits is None else ndigits)
        return self._concrete_guard("int", lambda v: round(float(v)))

    def __index__(self):
        return self._concrete_guard("index", int)

    def __complex__(self):
        raise _escape_error(self, "complex()", "Use NumPy operations on the array instead.")

    def _concrete_guard(self, kind: str, convert: Callable):
        hook = _GUARD_HOOK[0]
        if hook is not None:
            try:
                return hook(self, kind, convert)
            except ConcretizationError as e:
                e.tracer = getattr(e, "tracer", self)  # the value that had to be plain
                raise
        if kind == "bool":
            raise _escape_error(
                self, "Python control flow (if/while/and/or/not) depends",
                "Use np.where(cond, a, b) for elementwise choices, or dp.cond / "
                "dp.while_loop for control flow.")
        raise _escape_error(
            self, f"{kind}() (or a math.* function, or indexing with it)",
            "Use the NumPy equivalent (np.sin instead of math.sin, x.item() is not "
            "differentiable either); keep the value as an array.")

    def item(self):
        return self._concrete_guard("float", lambda v: v.item())

    def tolist(self):
        raise _escape_error(self, "tolist()", "Keep the value as an array.")

    # ---- NumPy protocols
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return (_FRONT_END or _front_end()).dispatch_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return (_FRONT_END or _front_end()).dispatch_function(func, args, kwargs)

    def __getitem__(self, index):
        return (_FRONT_END or _front_end()).getitem(self, index)

    def __setitem__(self, index, value):
        inplace.set_item_in_place(self, index, value)  # NumPy's semantics, functionally

    def __getattr__(self, name):
        method = (_FRONT_END or _front_end()).TRACER_METHODS.get(name)
        if method is None:
            if name.startswith("__"):  # (protocol probes: hasattr(x, "__foo__"))
                raise AttributeError(name)
            raise UnsupportedAttributeError(
                f"traced array has no attribute {name!r}" + (
                    ": NumPy arrays have it, but diffprog does not trace it (it changes or "
                    "exposes memory in ways a traced value cannot). Fix: use a NumPy function "
                    "on the array instead (np.put_along_axis, np.partition, x.ravel())."
                    if hasattr(np.ndarray, name) else "."))
        return method.__get__(self)

    def __hash__(self):
        # NumPy: arrays are unhashable, scalars hash by value. A traced scalar's value may
        # differ at the next call, so all hash alike: a set or dict then tells them apart
        # by ==, whose truth value is guarded (or refused) like any other ``if``. (Hashing
        # by id() deduplicated {a[0], a[1]} by object, not value: silently wrong.)
        if self._var.aval.shape:
            raise ArgumentError(
                f"unhashable type: a traced array of shape {self._var.aval.shape} (NumPy "
                f"arrays are unhashable too). Fix: use a tuple of its elements, or keep "
                f"arrays out of sets and dict keys.")
        return 0x5CA1A5


def _refuse_store_into_plain_array(frame) -> None:
    """``y[i] = v`` with ``y`` a plain array: NumPy asks for ``v``'s number (or array).
    Refused with a ValueError NumPy passes on (it turns a TypeError from ``float()`` into
    "setting an array element with a sequence")."""
    if inplace.storing_into_plain_array(frame):
        error = ArgumentValueError(
            f"y[...] = v writes a traced value into a plain NumPy array y (one made inside the "
            f"function from no traced value: np.zeros(n), np.empty((n, 2))) at "
            f"{user_frame_line()}: NumPy would store its number and drop what it depends on. "
            f"Fix: make y from a traced array (y = np.zeros_like(x), y = x.copy(), then "
            f"y[i] = v), or collect the values and build the array from them (np.stack([...]) "
            f"or np.array([v0, v1, ...])).")
        _STORE_ERROR.set(error)  # (the trace raises it if NumPy's ValueError comes out)
        raise error


def call_user(fn: Callable, *args):
    """``fn(*args)`` (user code being traced), raising our error where NumPy replaced it
    by "setting an array element with a sequence" (see _refuse_store_into_plain_array)."""
    _STORE_ERROR.set(None)
    try:
        return fn(*args)
    except DiffprogError as e:
        library = _library_call(e.__traceback__) \
            if isinstance(e, UnsupportedAttributeError) else None
        if library is None:
            raise
        return _library_failure(e, library)
    except Exception as e:
        pending = _STORE_ERROR.get() if isinstance(e, ValueError) else None
        if pending is not None:
            _STORE_ERROR.set(None)
            raise pending from e
        library = _library_call(e.__traceback__)
        if library is None or not _CONVERSION_FAILURE.search(str(e)):
            raise  # (a library's own error about the values: a simplex, a range...)
        return _library_failure(e, library)


def _library_failure(e: Exception, library: tuple):
    """Raise the error naming the library function (``library``: _library_call's) that
    failed on traced values."""
    function, line = library
    raise UnsupportedFunctionError(
            f"{function} (called at {line}) failed on traced values: {type(e).__name__}: "
            f"{str(e).strip()[:300]}\nIt has no diffprog rule: it converts its arguments to "
            f"plain arrays (of Python objects, here), which cannot carry a derivative. Fix: "
            f"compute it outside the function and pass the result in, use a supported "
            f"equivalent (README, 'What you can differentiate'), or give it a rule with "
            f"dp.custom_vjp.") from e


#: what NumPy and C extensions say when they meet arrays of Python objects (traced values
#: converted by a library with np.asarray) where they want numbers
_CONVERSION_FAILURE = re.compile(
    r"sequence|object|Tracer|not supported for the input types|could not be (safely )?coerced"
    r"|float\(\) argument|must be (a )?real number|dtype\('O'\)|not available for this type"
    r"|strides|flags", re.IGNORECASE)


#: libraries whose functions, called with traced values they have no rule for, fail in
#: their own code: the error then names the function called (call_user)
_LIBRARIES = ("scipy.", "sklearn.", "numba.")


def _library_call(tb):
    """``(function, user line)`` where a traceback enters one of _LIBRARIES from user code
    (the library function the user called), or None."""
    line, found = "?", None
    while tb is not None:
        frame = tb.tb_frame
        module = frame.f_globals.get("__name__", "") or ""
        if module.startswith(_LIBRARIES):
            name = f"{module}.{frame.f_code.co_name}"
            if frame.f_code.co_name not in _WRAPPER_NAMES:  # (a decorator's: look inside)
                return name, line
            found = found or (name, line)
            tb = tb.tb_next
            continue
        if found is not None:
            return found
        if not frame.f_code.co_filename.startswith(inplace.PACKAGE_DIR):
            line = f"{os.path.basename(frame.f_code.co_filename)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found


_WRAPPER_NAMES = frozenset({"wrapper", "inner", "wrapped", "decorated", "_wrapper", "__call__"})


#: the error of a traced value stored into a plain array, which NumPy may replace by its own
_STORE_ERROR: contextvars.ContextVar = contextvars.ContextVar("diffprog_store_error", default=None)


#: diffprog.numpy_api once imported (it imports this module: imported on first use; a
#: global, not ``from . import numpy_api`` in each NumPy call on a traced value)
_FRONT_END = None


def _front_end():
    global _FRONT_END
    from . import numpy_api
    _FRONT_END = numpy_api
    return numpy_api


# Set by diffprog.guards to replace the error on bool()/float()/int() with guards.
_GUARD_HOOK: list = [None]


def _install_operators() -> None:
    """Python operators forward to the NumPy ufuncs, which dispatch back to us."""
    binary = {
        "add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
        "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power,
        "matmul": np.matmul, "and": np.bitwise_and, "or": np.bitwise_or,
        "xor": np.bitwise_xor,  # as for NumPy arrays: bitwise (logical on booleans)
        "lshift": np.left_shift, "rshift": np.right_shift,
    }
    symbols = {"add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//",
               "mod": "%", "pow": "**", "matmul": "@", "and": "&", "or": "|", "xor": "^",
               "lshift": "<<", "rshift": ">>"}
    for name, uf in binary.items():
        def fwd(self, other, uf=uf):
            return uf(self, other)

        def rev(self, other, uf=uf):
            return uf(other, self)

        def in_place(self, other, uf=uf, symbol=symbols[name]):
            result = uf(self, other)
            if self._var.aval.shape == () and self._view is None:  # a NumPy scalar: a new
                return result  # value (immutable; a 0-d view, x[0, ...], changes in place)
            return inplace.operator_in_place(self, result, symbol)
        setattr(Tracer, f"__{name}__", fwd)
        setattr(Tracer, f"__r{name}__", rev)
        setattr(Tracer, f"__i{name}__", in_place)
    compare = {"lt": np.less, "le": np.less_equal, "gt": np.greater,
               "ge": np.greater_equal, "eq": np.equal, "ne": np.not_equal}
    for name, uf in compare.items():
        setattr(Tracer, f"__{name}__", lambda self, other, uf=uf: uf(self, other))
    Tracer.__neg__ = lambda self: np.negative(self)
    Tracer.__pos__ = lambda self: np.positive(self)  # a copy in NumPy (numpy_api.positive)
    Tracer.__abs__ = lambda self: np.abs(self)
    Tracer.__invert__ = lambda self: np.invert(self)


_install_operators()  # (inplace.measure runs at the first in-place change)


def trace_function(fn: Callable, flat_values: list, build_args: Callable, concrete: bool = True,
                   prepare: Callable | None = None):
    """Trace ``fn(*build_args(tracers))``; return (graph, flat outputs, out treedef, trace).

    ``flat_values`` are the concrete leaves; a leaf may also be an outer Tracer, whose
    value becomes this trace's input value (nesting). ``prepare(trace, fn)``, called once
    the explicit inputs exist, returns the function to run (diffprog.externals).
    """
    with new_trace(concrete) as trace:
        tracers = []
        for v in flat_values:
            aval = v.aval if isinstance(v, Tracer) else aval_of(v)
            val = v.val if isinstance(v, Tracer) else v
            tracers.append(trace.new_input(aval, val if concrete else None))
        if prepare is not None:
            fn = prepare(trace, fn)
        # The values a concrete trace computes are computed again by the program it makes,
        # right after, under the caller's floating-point settings: NumPy's warnings (and
        # errors under np.errstate(...='raise')) come from there, once, as plain NumPy's.
        with np.errstate(all="ignore") if concrete else contextlib.nullcontext():
            out = call_user(fn, *build_args(tracers))
        flat_out, out_tree = flatten(out)
        graph = trace.to_graph(flat_out)
    return graph, out_tree, trace


def unsupported(name: str) -> UnsupportedFunctionError:
    return UnsupportedFunctionError(
        f"{name} has no differentiation rule in diffprog (called at {user_frame_line()}).\n"
        f"Fix: express it with supported NumPy functions, wrap it with @dp.custom_vjp and "
        f"give its gradient, or add an entry for it to the primitive table (diffprog/primitives/, "
        f"one module per family, e.g. diffprog/primitives/linalg.py).")
