"""User-supplied derivative rules: ``dp.custom_vjp`` and ``dp.custom_jvp``.

A decorated function is never traced: diffprog calls it on concrete arrays (so it
may use SciPy, ``np.asarray``, compiled extensions...) and takes its derivative from
the rule the user gives. Internally each decorated function is one
:class:`~diffprog.primitives.Primitive`, created at decoration time and kept out of
the global primitive table, whose ``impl`` calls the user's function.

Rule signatures (the derivative-side value first, then the primal arguments):

* ``@g.defvjp``: ``rule(g_out, *args) -> cotangents``, one per positional argument of
  ``g`` (``None`` for "no gradient"); a single value is accepted when ``g`` has one
  argument. ``g_out`` is shaped like ``g``'s output.
* ``@g.defjvp``: ``rule(tangents, *args) -> output tangent``; ``tangents`` is a tuple
  with one entry per positional argument, shaped like it (zeros for arguments that are
  not differentiated).
* Either rule may take a keyword argument ``out``: it then receives ``g(*args)``, so
  the rule can reuse the primal output (``exp``, ``tanh``, solutions of solvers).

A rule written with NumPy operations is traced like any other code, so it is itself
differentiable (second order, hessians) and the other mode comes for free: forward
mode of a ``custom_vjp`` and reverse mode of a ``custom_jvp`` are derived by
transposing the (linear) rule. A rule that cannot be traced (it calls SciPy too) is
run as an opaque step: first-order derivatives in its own mode work, and asking for
more raises :class:`~diffprog.errors.NotDifferentiableError` naming the rule.

>>> import numpy as np, scipy.special, diffprog as dp
>>> @dp.custom_vjp
... def erf(x):
...     return scipy.special.erf(x)          # diffprog cannot trace SciPy: not needed
>>> @erf.defvjp
... def erf_vjp(g, x):
...     return g * 2 / np.sqrt(np.pi) * np.exp(-x ** 2)
>>> dp.grad(lambda x: np.sum(erf(x)))(np.array([0.0, 1.0]))  # doctest: +ELLIPSIS
array([1.128..., 0.415...])
>>> dp.hessian(lambda x: np.sum(erf(x)))(np.array([1.0]))  # the rule is traceable  # doctest: +ELLIPSIS
array([[-0.830...]])
"""
from __future__ import annotations

import functools
import inspect
import itertools
from typing import Callable

import numpy as np

from .errors import (ArgumentError, ConcretizationError, DiffprogError, NotDifferentiableError,
                     ShapeError, UnsupportedFunctionError)
from .ir import Aval, aval_of
from .leaves import is_dynamic
from .primitives import Primitive, Unsupported
from .tracing import Tracer, eval_graph, trace_function
from .tree import TreeDef, flatten, leaf_paths, unflatten

_ids = itertools.count()
_UNTRACEABLE = (ConcretizationError, UnsupportedFunctionError)


def _static_key(value):
    try:
        hash(value)
        return (type(value), value)
    except TypeError:
        return ("id", id(value))


def _with_prefix(error: Exception, prefix: str):
    """The same kind of error with ``prefix`` before its message (None if the type cannot
    be rebuilt from a message, or already names a rule)."""
    if str(error).startswith("in the "):
        return None
    try:
        return type(error)(prefix + str(error))
    except Exception:  # an exception type with its own constructor: keep the original
        return None


class _Call:
    """The parameter of one custom-primitive equation: how to rebuild ``g``'s arguments
    from the traced leaves, and the structure of its output. Bound as a value (never
    pasted) into generated source."""

    __slots__ = ("in_tree", "statics", "dynamic", "out_tree", "_key")

    def __init__(self, in_tree: TreeDef, statics: tuple, dynamic: tuple, out_tree=None):
        self.in_tree = in_tree
        self.statics = statics  # ((leaf position, value), ...)
        self.dynamic = dynamic  # leaf positions of the primitive's inputs
        self.out_tree = out_tree
        self._key = (in_tree, tuple((p, _static_key(v)) for p, v in statics), dynamic, out_tree)

    def with_out_tree(self, out_tree) -> "_Call":
        return _Call(self.in_tree, self.statics, self.dynamic, out_tree)

    def args(self, dyn_values) -> tuple:
        leaves = [None] * self.in_tree.num_leaves
        for p, v in self.statics:
            leaves[p] = v
        for p, v in zip(self.dynamic, dyn_values):
            leaves[p] = v
        return unflatten(self.in_tree, leaves)

    def __eq__(self, other):
        return isinstance(other, _Call) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __repr__(self) -> str:
        return f"call{self.in_tree!r}->{self.out_tree!r}"


def _aval_key(x) -> Aval:
    return x.aval if isinstance(x, Tracer) else aval_of(x)


def _zeros(aval: Aval):
    return np.zeros(aval.shape, aval.dtype)


def _is_float(aval: Aval) -> bool:
    return np.issubdtype(aval.dtype, np.inexact)


class _CustomFunction:
    """Shared machinery of :func:`custom_vjp` and :func:`custom_jvp`."""

    kind = "custom"
    mode = ""  # "vjp" or "jvp": the mode whose rule the user gives

    def __init__(self, fn: Callable):
        if not callable(fn):
            raise ArgumentError(f"dp.{self.kind} decorates a function; got {type(fn).__name__}")
        self.fn = fn
        functools.update_wrapper(self, fn, updated=())
        self.rule: Callable | None = None
        self._rule_wants_out = False
        self._rule_opaque = False
        self._out_avals: dict = {}  # (input avals, call) -> output avals
        self._pending = None  # one concrete result computed in __call__, reused by impl
        self.name = f"{self.kind}[{getattr(fn, '__qualname__', 'fn')}]#{next(_ids)}"
        self.prim = Primitive(
            self.name, self._impl, self._shape, vjp=self._vjp, jvp=self._jvp,
            julia=Unsupported(f"{self.name} runs Python code (a dp.{self.kind} function)"),
            multiple_results=True, register=False, complex=True)
        self._opaque_prim = None

    def __repr__(self) -> str:
        return f"<diffprog.{self.kind} {getattr(self.fn, '__qualname__', self.fn)}>"

    def __get__(self, obj, objtype=None):
        return self if obj is None else functools.partial(self, obj)

    # ------------------------------------------------------------------ rules
    def _set_rule(self, rule: Callable) -> Callable:
        if not callable(rule):
            raise ArgumentError(f"{self.__name__}.def{self.mode} takes a function; got "
                                f"{type(rule).__name__}")
        try:
            params = inspect.signature(rule).parameters
            self._rule_wants_out = "out" in params and \
                params["out"].kind in (inspect.Parameter.KEYWORD_ONLY,
                                       inspect.Parameter.POSITIONAL_OR_KEYWORD)
        except (TypeError, ValueError):  # builtins without a signature
            self._rule_wants_out = False
        self.rule = rule
        self._rule_opaque = False
        return rule

    def _rule_name(self) -> str:
        return getattr(self.rule, "__qualname__", repr(self.rule))

    # ------------------------------------------------------------------ calling
    def __call__(self, *args):
        leaves, in_tree = flatten(args)
        if not any(isinstance(l, Tracer) for l in leaves):
            return self.fn(*args)  # plain call: nothing to differentiate
        if self.rule is None:
            raise NotDifferentiableError(
                f"{self.__name__} is a dp.{self.kind} function without a rule, called on traced "
                f"values. Fix: define it with @{self.__name__}.def{self.mode} before "
                f"differentiating.")
        dynamic = tuple(i for i, l in enumerate(leaves) if is_dynamic(l))
        statics = tuple((i, l) for i, l in enumerate(leaves) if i not in dynamic)
        call = _Call(in_tree, statics, dynamic)
        ins = [leaves[i] for i in dynamic]
        out_tree, out_avals = self._evaluate_for_shapes(ins, call)
        call = call.with_out_tree(out_tree)
        self._out_avals[(tuple(_aval_key(x) for x in ins), call)] = out_avals
        outs = self.prim.bind(*ins, call=call)
        return unflatten(out_tree, outs)

    def _evaluate_for_shapes(self, ins, call):
        """Output structure and avals; computes ``g`` on concrete values when they exist
        (the result is kept for the impl), else on placeholder arrays."""
        values = [x.val if isinstance(x, Tracer) else x for x in ins]
        concrete = all(v is not None for v in values)
        if not concrete:
            values = [_zeros(_aval_key(x)) for x in ins]
        out = self.fn(*call.args(values))
        flat, out_tree = flatten(out)
        flat = [np.asarray(o) for o in flat]
        if concrete:
            self._pending = (values, flat)
        return out_tree, [Aval(o.shape, o.dtype) for o in flat]

    def _impl(self, xp, *ins, call):
        pending, self._pending = self._pending, None
        if pending is not None and len(pending[0]) == len(ins) and \
                all(a is b for a, b in zip(pending[0], ins)):
            return list(pending[1])
        out = self.fn(*call.args(ins))
        flat, out_tree = flatten(out)
        if out_tree != call.out_tree:
            raise DiffprogError(f"{self.__name__} returned structure {out_tree}; when traced it "
                                f"returned {call.out_tree}. Its output structure must not depend "
                                f"on the values of its inputs.")
        return [xp.asarray(o) for o in flat]

    def _shape(self, *avals, call):
        known = self._out_avals.get((tuple(avals), call))
        if known is None:
            values = [_zeros(a) for a in avals]
            known = [Aval(np.shape(o), np.result_type(o)) for o in self._impl(np, *values, call=call)]
            self._out_avals[(tuple(avals), call)] = known
        return list(known)

    # ------------------------------------------------------------- user rules
    def _primal_avals(self, ins):
        return [_aval_key(x) for x in ins]

    def _call_rule(self, first, ins, outs, call):
        """Run the user's rule: ``rule(first, *args[, out=...])``."""
        kwargs = {"out": unflatten(call.out_tree, list(outs))} if self._rule_wants_out else {}
        try:
            return self.rule(first, *call.args(list(ins)), **kwargs)
        except (ValueError, TypeError) as e:
            # errors raised inside the rule name the rule: the traceback points into
            # derivative code the user did not call directly
            named = _with_prefix(e, f"in the {self.mode} rule {self._rule_name()} of "
                                    f"{self.__name__}: ")
            if named is None:
                raise
            raise named from e

    def _per_argument(self, value, call, what: str):
        """Flatten a rule's per-argument result into one entry per traced input (None = 0)."""
        n_args = len(call.in_tree.children)
        if n_args == 1 and not (isinstance(value, (tuple, list)) and len(value) == 1
                                and call.in_tree.children[0].kind == "leaf"):
            value = (value,)
        if not isinstance(value, (tuple, list)) or len(value) != n_args:
            found = f"{type(value).__name__} of length {len(value)}" \
                if isinstance(value, (tuple, list)) else type(value).__name__
            raise ArgumentError(
                f"the {self.mode} rule {self._rule_name()} of {self.__name__} must return one "
                f"{what} per positional argument ({n_args}), as a tuple; it returned {found}. "
                f"Use None for an argument without a {what}.")
        per_leaf, paths = [], leaf_paths(call.in_tree)
        for i, (sub, v) in enumerate(zip(call.in_tree.children, value)):
            if v is None:
                per_leaf += [None] * sub.num_leaves
                continue
            leaves, tree = flatten(v)
            if tree.num_leaves != sub.num_leaves:
                raise ArgumentError(
                    f"the {self.mode} rule {self._rule_name()} of {self.__name__} returned a "
                    f"{what} with structure {tree} for argument {i}, whose structure is {sub}.")
            per_leaf += leaves
        out = []
        for pos in call.dynamic:
            out.append(per_leaf[pos])
        return out, [paths[p] for p in call.dynamic]

    def _check_shapes(self, values, avals, where, what):
        fixed = []
        for v, aval, path in zip(values, avals, where):
            if v is None or not _is_float(aval):
                fixed.append(None)
                continue
            shape = tuple(v.shape) if hasattr(v, "shape") else tuple(np.shape(v))
            if shape != aval.shape:
                raise ShapeError(
                    f"the {self.mode} rule {self._rule_name()} of {self.__name__} returned a "
                    f"{what} of shape {shape} for {path}, which has shape {aval.shape}. "
                    f"Each {what} must have the shape of what it belongs to.")
            fixed.append(v)
        return fixed

    def _vjp_rule_flat(self, gs, ins, outs, call):
        """Cotangents for each traced input, from the user's rule (custom_vjp)."""
        cts = self._call_rule(unflatten(call.out_tree, list(gs)), ins, outs, call)
        cts, where = self._per_argument(cts, call, "cotangent")
        return self._check_shapes(cts, self._primal_avals(ins), [f"args{w}" for w in where],
                                  "cotangent")

    def _jvp_rule_flat(self, ts, ins, outs, call):
        """Output tangents, from the user's rule (custom_jvp); ts has one entry per input."""
        leaves = [None] * call.in_tree.num_leaves
        for pos, t, x in zip(call.dynamic, ts, ins):
            aval = _aval_key(x)
            leaves[pos] = t if t is not None else (_zeros(aval) if _is_float(aval) else None)
        tangents = unflatten(call.in_tree, leaves)
        tout = self._call_rule(tangents, ins, outs, call)
        flat, tree = flatten(tout)
        if tree != call.out_tree:
            raise ArgumentError(
                f"the jvp rule {self._rule_name()} of {self.__name__} returned structure {tree}; "
                f"it must return a tangent shaped like the output, structure {call.out_tree}.")
        return self._check_shapes(flat, [_aval_key(o) for o in outs],
                                  [f"output{p}" for p in leaf_paths(tree)], "tangent")

    # ---------------------------------------------------------- opaque rules
    def _opaque(self):
        """The user's rule as a primitive of its own, for rules diffprog cannot trace."""
        if self._opaque_prim is None:
            def impl(xp, *arrays, call, n_in, n_out):
                first, ins, outs = arrays[:-n_in - n_out], arrays[-n_in - n_out:-n_out], \
                    arrays[-n_out:]
                flat = self._rule_flat(first, ins, outs, call)
                avals = self._rule_result_avals(ins, outs)
                return [xp.zeros(a.shape, a.dtype) if v is None else xp.asarray(v, a.dtype)
                        for v, a in zip(flat, avals)]

            def shape(*avals, call, n_in, n_out):
                return self._rule_result_avals(avals[-n_in - n_out:-n_out], avals[-n_out:])

            def no_derivative(*_, **__):
                raise NotDifferentiableError(
                    f"cannot differentiate the {self.mode} rule {self._rule_name()} of "
                    f"{self.__name__}: it is not traceable by diffprog (it converts traced values "
                    f"to plain arrays, e.g. via SciPy or np.asarray), so it runs as an opaque "
                    f"step with no derivative of its own. Only first-order "
                    f"{'reverse' if self.mode == 'vjp' else 'forward'}-mode derivatives of "
                    f"{self.__name__} work. Fix: write the rule with NumPy operations on its "
                    f"arguments, or wrap the untraceable part in its own dp.custom_vjp.")

            self._opaque_prim = Primitive(
                f"{self.name}.{self.mode}", impl, shape, vjp=no_derivative, jvp=no_derivative,
                julia=Unsupported(f"{self.name} runs Python code"), multiple_results=True,
                register=False, complex=True)
        return self._opaque_prim

    def _rule_flat(self, first, ins, outs, call):
        if self.mode == "vjp":
            return self._vjp_rule_flat(first, ins, outs, call)
        return self._jvp_rule_flat(first, ins, outs, call)

    def _rule_result_avals(self, in_avals, out_avals):
        src = in_avals if self.mode == "vjp" else out_avals
        return [Aval(a.shape, a.dtype) for a in (_aval_key(x) for x in src)]

    def _own_mode(self, first, ins, outs, call):
        """The user's rule, traced when possible, else run as an opaque step."""
        if not self._rule_opaque:
            try:
                return self._rule_flat(first, ins, outs, call)
            except _UNTRACEABLE:
                self._rule_opaque = True  # leftover recorded equations are dead code
        first = [f if f is not None else _zeros(a) for f, a in
                 zip(first, self._first_avals(ins, outs))]
        res = self._opaque().bind(*first, *ins, *outs, call=call, n_in=len(ins), n_out=len(outs))
        return list(res)

    def _first_avals(self, ins, outs):
        src = outs if self.mode == "vjp" else ins
        return [Aval(a.shape, a.dtype) for a in (_aval_key(x) for x in src)]

    def _transposed(self, cts, ins, outs, call):
        """The other mode, by transposing the rule, which is linear in its first argument:
        (jvp) J t = d/dg <J^T g, t>;  (vjp) J^T g = d/dt <J t, g>."""
        if self._rule_opaque:
            raise self._not_transposable(None)
        first_avals = self._first_avals(ins, outs)
        result_avals = self._rule_result_avals(ins, outs)
        float_first = [i for i, a in enumerate(first_avals) if _is_float(a)]

        def linear(*u):
            first = [None] * len(first_avals)
            for i, v in zip(float_first, u):
                first[i] = v
            res = self._rule_flat(first, ins, outs, call)
            return [r if r is not None else _zeros(a) for r, a in zip(res, result_avals)]

        placeholders = [_zeros(first_avals[i]) for i in float_first]
        try:
            graph, _, trace = trace_function(linear, placeholders, lambda u: u, concrete=False)
        except _UNTRACEABLE as e:
            self._rule_opaque = True
            raise self._not_transposable(e) from e
        nonlinear = _nonlinear_use(graph, len(float_first))
        if nonlinear is not None:
            raise self._not_linear(nonlinear)
        from .transforms.vjp import vjp_graph
        vg = vjp_graph(graph, list(range(len(float_first))), seed="input")
        seeds = [c if c is not None else _zeros(a) for c, a in zip(cts, result_avals)]
        flat = eval_graph(vg, placeholders + [o for o, _ in trace.captured] + seeds)
        grads = flat[len(graph.outvars):]
        out = [None] * len(first_avals)
        for i, g in zip(float_first, grads):
            out[i] = g
        return out

    def _not_linear(self, entry: str):
        other = "forward" if self.mode == "vjp" else "reverse"
        first = "cotangent g" if self.mode == "vjp" else "tangents"
        own = 'reverse mode (dp.grad, dp.jacobian(mode="rev"))' if self.mode == "vjp" else \
            'forward mode (dp.jvp, dp.jacobian(mode="fwd"))'
        fix = "define the forward rule with dp.custom_jvp" if self.mode == "vjp" else \
            "define the reverse rule with dp.custom_vjp"
        return NotDifferentiableError(
            f"{other}-mode derivatives of {self.__name__} (a dp.{self.kind} function) would be "
            f"its {self.mode} rule {self._rule_name()} transposed, which is exact only for a "
            f"rule linear in its {first}; this one applies {entry!r} to them (gradient "
            f"clipping, say), so the transpose would be silently wrong. Fix: use {own} only, "
            f"or {fix}.")

    def _not_transposable(self, cause):
        other = "forward" if self.mode == "vjp" else "reverse"
        own = 'reverse mode (dp.grad, mode="rev")' if self.mode == "vjp" else \
            'forward mode (dp.jvp, mode="fwd")'
        return NotDifferentiableError(
            f"{other}-mode derivatives of {self.__name__} (a dp.{self.kind} function) are derived "
            f"from its {self.mode} rule {self._rule_name()}, which must then be traceable, but "
            f"it is not (it converts traced values to plain arrays, e.g. via SciPy or "
            f"np.asarray). Fix: write the rule with NumPy operations on its arguments, or use "
            f"{own}."
            + (f"\nCause: {cause}" if cause is not None else ""))

    # ------------------------------------------------------- primitive rules
    def _vjp(self, gs, *ins, out, call):
        if self.mode == "vjp":
            return self._own_mode(list(gs), ins, out, call)
        return self._transposed(list(gs), ins, out, call)

    def _jvp(self, ts, *ins, out, call):
        if self.mode == "jvp":
            return self._own_mode(list(ts), ins, out, call)
        return self._transposed(list(ts), ins, out, call)


class custom_vjp(_CustomFunction):
    """A function whose reverse-mode derivative is given by the user.

    Decorate the function, then its rule with ``@f.defvjp``. The rule receives the
    cotangent of the output first, then the same arguments as ``f`` (and ``out=`` if it
    asks for it) and returns one cotangent per argument::

        >>> import numpy as np, diffprog as dp
        >>> @dp.custom_vjp
        ... def clip_gradient(x, lo, hi):
        ...     return x
        >>> @clip_gradient.defvjp
        ... def clip_gradient_vjp(g, x, lo, hi):
        ...     return np.clip(g, lo, hi), None, None
        >>> dp.grad(lambda x: np.sum(3.0 * clip_gradient(x, -1.0, 1.0)))(np.ones(2))
        array([1., 1.])

    The function itself runs on concrete arrays and is never traced, so it may call
    SciPy or anything else. See :mod:`diffprog.custom` for the details.
    """

    kind = "custom_vjp"
    mode = "vjp"

    def defvjp(self, rule: Callable, bwd: Callable | None = None) -> Callable:
        """Set the rule ``rule(g_out, *args[, out=...]) -> cotangent per argument``.

        JAX's form ``defvjp(fwd, bwd)`` (``fwd(*args) -> (out, residuals)``,
        ``bwd(residuals, g) -> tuple of cotangents``) is taken too: the rule is then
        ``bwd(fwd(*args)[1], g)``, its forward pass traced again in the backward program
        (the same equations: the compiler shares what both compute)."""
        if bwd is None:
            return self._set_rule(rule)
        fwd = rule
        if not callable(fwd) or not callable(bwd):
            raise ArgumentError(f"{self.__name__}.defvjp(fwd, bwd) takes two functions; got "
                                f"{type(fwd).__name__} and {type(bwd).__name__}")

        def from_residuals(g, *args):
            _, residuals = fwd(*args)
            cotangents = bwd(residuals, g)
            return cotangents[0] if isinstance(cotangents, tuple) and len(args) == 1 \
                else cotangents
        from_residuals.__name__ = f"{getattr(bwd, '__name__', 'bwd')} (with {getattr(fwd, '__name__', 'fwd')})"
        self._set_rule(from_residuals)
        return fwd


#: entries linear in each operand when the others are held (a product: one factor may
#: carry the tangent), and in all operands together (a sum); a rule's graph that applies
#: anything else to its tangent/cotangent is not linear in it (_nonlinear_use)
_LINEAR_IN_ONE = {"mul": None, "div": {0}, "matmul": None, "einsum": None, "solve": {1},
                  "sparse_matmul": None, "gather": {0}, "scatter_add": {0}}
#: one operand, linear in it
_LINEAR_UNARY = {"neg", "reshape", "transpose", "slice", "broadcast_to", "reduce_sum", "cumsum",
                 "real", "imag", "conj", "copy", "fftn", "ifftn", "rfftn", "irfftn",
                 "stop_gradient"}
#: linear in all operands together: each must carry the tangent, or be a constant zero
#: (g + 0.1 * x, g + 1.0: affine, not linear: their transpose drops the constant term)
_LINEAR_SUMS = {"add", "sub", "concatenate", "pack_scalars", "complex"}


def _is_zero(atom) -> bool:
    """A constant operand whose every element is zero."""
    value = getattr(atom, "value", None)
    return value is not None and not isinstance(value, type) and not np.any(value)


def _nonlinear_use(graph, n_first: int) -> str | None:
    """The first entry the graph applies non-linearly to its first ``n_first`` inputs
    (what flows from them), or None when every use is linear."""
    carried = {id(v) for v in graph.invars[:n_first]}
    for eqn in graph.eqns:
        hit = [i for i, a in enumerate(eqn.inputs) if id(a) in carried]
        if not hit:
            continue
        name = eqn.prim.name
        if name in _LINEAR_UNARY:
            linear = True
        elif name in _LINEAR_SUMS:
            linear = all(i in hit or _is_zero(a) for i, a in enumerate(eqn.inputs))
        elif name == "where":  # a constant choice between carried values (or zeros)
            linear = 0 not in hit and all(i in hit or _is_zero(a)
                                          for i, a in enumerate(eqn.inputs) if i > 0)
        elif name == "pad":
            linear = hit == [0] and not np.any(eqn.params.get("value", 0.0))
        elif name in _LINEAR_IN_ONE:
            allowed = _LINEAR_IN_ONE[name]
            linear = len(hit) == 1 and (allowed is None or hit[0] in allowed)
        elif name == "convert":
            linear = all(o.aval.dtype.kind in "fc" for o in eqn.outputs)
        elif name == "integer_pow":
            linear = eqn.params.get("n") == 1
        else:
            linear = False
        if not linear:
            return name
        carried.update(id(o) for o in eqn.outputs)
    return None


class custom_jvp(_CustomFunction):
    """A function whose forward-mode derivative is given by the user.

    The rule receives the tangents (a tuple, one per argument, shaped like it) first,
    then the same arguments as ``f`` (and ``out=`` if it asks for it), and returns the
    tangent of the output. Reverse mode (``dp.grad``) is derived by transposing the
    rule, so it must be written with NumPy operations::

        >>> import numpy as np, diffprog as dp
        >>> @dp.custom_jvp
        ... def softplus(x):
        ...     return np.logaddexp(0.0, x)
        >>> @softplus.defjvp
        ... def softplus_jvp(tangents, x, out):
        ...     (tx,) = tangents
        ...     return tx / (1.0 + np.exp(-x))
        >>> dp.jvp(softplus, (np.array([0.0]),), (np.array([1.0]),))
        (array([0.69314718]), array([0.5]))
        >>> dp.grad(lambda x: np.sum(softplus(x)))(np.array([0.0, 100.0]))
        array([0.5, 1. ])
    """

    kind = "custom_jvp"
    mode = "jvp"

    def defjvp(self, rule: Callable) -> Callable:
        """Set the rule ``rule(tangents, *args[, out=...]) -> output tangent``."""
        return self._set_rule(rule)
