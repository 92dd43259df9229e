"""Rule templates: trace a rule once per kind of call, copy its equations after that.

Reverse mode runs a Python rule for every equation (its ``vjp``: NumPy code on traced
values, each operation going through the NumPy protocol and :func:`~diffprog.tracing.bind`).
A long program repeats the same few calls again and again: a chain of ``sin`` and
products, an unrolled loop's body. Within one transform, a rule applied to operands of
the same kind records the same equations, on other variables: so the first such call is
traced as usual, and the equations it appended become a *template*; later calls of that
kind copy the template's equations with their variables renamed (JAX caches a rule's
jaxpr per abstract signature the same way).

The *kind* of a call (its key) holds everything a rule can see except which variables
its traced operands are: the entry, its params, and for every operand its aval (traced)
or its value (a constant: a rule may look at constant values, ``x * 1.0`` records
nothing), and which traced operands are the same variable. Entries of the table only
(their rules are NumPy code over what they are given; dp.custom_vjp's user rules are
never copied), with params of plain values (no loop bodies or functions), in a trace
that computes no values. A call whose equations read a variable that is not one of its
operands (a value the rule found elsewhere), or that adds inputs or captures to the
trace, is not a template: that kind is traced every time, as before.

Copies are the equations the rule records, in the same order, with the same entries,
params and constants: the program computed is the same, bit for bit.
"""
from __future__ import annotations

import numpy as np

from ..ir import Eqn, Lit, Var
from ..tracing import Tracer


class _Uncacheable(Exception):
    """A call that is not keyed (an operand or a param that is not plain data)."""


_NOT_A_TEMPLATE = object()


def value_key(v):
    """A hashable key equal for values a rule cannot tell apart: the same type and the
    same bits (-0.0 is not 0.0, an int8 1 is not an int 1); arrays by identity."""
    t = type(v)
    if v is None or t is bool or t is int or t is str:
        return (t, v)
    if t is float or t is complex:
        return (t, repr(v))
    if t is tuple:
        return (tuple, tuple([value_key(x) for x in v]))
    if type(v) is np.ndarray and v.size <= 16 and v.dtype.kind in "biufc":
        return ("nd", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, np.generic):
        return ("g", type(v), v.dtype.str, v.tobytes())
    if isinstance(v, np.dtype):
        return ("dtype", v)
    if t is slice:
        return (slice, value_key(v.start), value_key(v.stop), value_key(v.step))
    if v is Ellipsis:
        return (t,)
    raise _Uncacheable


def plain_key(params: dict):
    """A key of ``params`` when they are all plain values (``value_key``), else None."""
    try:
        return tuple([(k, value_key(v)) for k, v in params.items()])
    except _Uncacheable:
        return None


def _array_key(v, alive: list):
    """A larger array (or another array type): by identity, kept alive meanwhile so
    that its id is not reused by another value."""
    alive.append(v)
    return ("id", id(v))


class _Number:
    """A Python number operand taking a slot of a template (see Templates.key)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class _NumberRef:
    """In a template's equation: the constant is the number in slot ``slot``."""

    __slots__ = ("slot",)

    def __init__(self, slot: int):
        self.slot = slot


class _WithNumbers(list):
    """A template equation's operands, some of them _NumberRefs."""


def _parametric_number(x) -> bool:
    """A Python float or int (not a bool), not 0 or 1, an int within int64."""
    kind = type(x)
    if kind is float:
        return x != 0.0 and x != 1.0
    return kind is int and x != 0 and x != 1 and -2**63 <= x < 2**63


def _number_lit(value) -> Lit:
    return Lit(value)


class Templates:
    """The templates of one transform (one trace): ``call(key, operands, fn)`` runs
    ``fn()`` or copies what an earlier call of the same key recorded."""

    def __init__(self, trace):
        self.trace = trace
        self.known: dict = {}
        self._alive: list = []

    def key(self, head: tuple, params: dict, operands, numbers=()) -> tuple | None:
        """``(key, slots)`` for a call with ``params`` on ``operands`` (flat: traced
        values, constants, None), or None when such a call is not keyed. Slots are the
        traced variables, and the Python numbers at the positions in ``numbers`` (a rule
        that only passes such a number on, into the equations it records, is the same
        template for every number but 0 and 1, where bind drops ``x * 1``, ``x + 0``)."""
        trace = self.trace
        slots: list = []
        desc = list(head)
        if numbers:
            for position, x in enumerate(operands):
                if x.__class__ is not Tracer and not (position in numbers and
                                                      _parametric_number(x)):
                    # a constant beside the number: the rule's NumPy code may compute a
                    # new constant from both (g * c, folded), which a copy would not
                    numbers = ()
                    break
        try:
            if params:
                for k, v in params.items():
                    desc.append(k)
                    desc.append(_array_key(v, self._alive) if isinstance(v, np.ndarray)
                                else value_key(v))
            desc.append(None)  # params end here
            for position, x in enumerate(operands):
                if x.__class__ is Tracer:
                    if x._trace is not trace:
                        return None
                    var = x._var
                    for i, known in enumerate(slots):  # (a few operands: a list will do)
                        if known is var:
                            break
                    else:
                        i = len(slots)
                        slots.append(var)
                    desc.append(i)  # the slot, then the aval: (int, Aval), flat
                    desc.append(var.aval)
                elif numbers and position in numbers and _parametric_number(x):
                    for i, known in enumerate(slots):
                        if known.__class__ is _Number and known.value is x:
                            break
                    else:
                        i = len(slots)
                        slots.append(_Number(x))
                    desc.append(("number", type(x), i))
                elif isinstance(x, np.ndarray) and not (x.size <= 16 and type(x) is np.ndarray):
                    desc.append(_array_key(x, self._alive))
                else:
                    desc.append(value_key(x))
        except _Uncacheable:
            return None
        return tuple(desc), slots

    def call(self, keyed, fn, needed=None):
        """``fn()``'s result (a list of values), copied from a template when one is known.

        ``needed``: which results the caller uses (part of the key); copies compute only
        those (the others are None) and skip the equations only the others need (the
        cotangent of a constant operand, say: dead code, removed later anyway)."""
        if keyed is None:
            return fn()
        key, slots = keyed
        template = self.known.get(key)
        if template is _NOT_A_TEMPLATE:
            return fn()
        if template is not None:
            return self._copy(template, slots)
        trace = self.trace
        start, n_in, n_captured = len(trace.eqns), len(trace.invars), len(trace.captured)
        result = fn()
        template = None
        if len(trace.invars) == n_in and len(trace.captured) == n_captured:
            template = self._record(start, slots, result, needed)
        self.known[key] = _NOT_A_TEMPLATE if template is None else template
        return result

    def _record(self, start: int, slots: list, result: list, needed):
        trace = self.trace
        index = {id(v): i for i, v in enumerate(slots) if v.__class__ is not _Number}
        numbers = {id(v.value): _NumberRef(i) for i, v in enumerate(slots)
                   if v.__class__ is _Number}
        n = len(slots)
        eqns = []
        for eqn in trace.eqns[start:]:
            spec = []
            for a in eqn.inputs:
                if isinstance(a, Var):
                    i = index.get(id(a))
                    if i is None:  # a variable the rule found elsewhere
                        return None
                    spec.append(i)
                elif numbers and id(a.value) in numbers:
                    spec.append(numbers[id(a.value)])  # this call's number, as a constant
                else:
                    spec.append(a)  # a Lit: shared by the copies
            outs = []
            for o in eqn.outputs:
                index[id(o)] = n
                outs.append(n)
                n += 1
            eqns.append((eqn.prim, spec, outs, [o.aval for o in eqn.outputs], eqn.params))
        results = []
        for k, r in enumerate(result):
            if needed is not None and not needed[k]:
                results.append((None,))
            elif numbers and r is not None and not isinstance(r, Tracer):
                return None  # a constant handed back: maybe made of the number
            elif type(r) is Tracer:
                i = index.get(id(r._var)) if r._trace is trace else None
                if i is None:
                    return None
                results.append(i)
            elif isinstance(r, Tracer):
                return None
            else:
                results.append((r,))  # None or a constant
        # the equations the results need (and effects), numbered as the copies define them
        live = {r for r in results if type(r) is int}
        kept = []
        for prim, spec, outs, avals, params in reversed(eqns):
            if prim.effectful or any(o in live for o in outs):
                kept.append((prim, spec, outs, avals, params))
                live.update(i for i in spec if type(i) is int)
        kept.reverse()
        renumber = {i: i for i in range(len(slots))}
        n = len(slots)
        template = []
        for prim, spec, outs, avals, params in kept:
            spec = [renumber[i] if type(i) is int else i for i in spec]
            if numbers and any(i.__class__ is _NumberRef for i in spec):
                spec = _WithNumbers(spec)
            template.append((prim, spec, avals, params))
            for o in outs:
                renumber[o] = n
                n += 1
        return template, [renumber[r] if type(r) is int else r for r in results]

    def _copy(self, template, slots: list) -> list:
        eqns, results = template
        env = list(slots)
        record = self.trace.eqns.append
        for prim, spec, avals, params in eqns:
            outs = [Var(a) for a in avals]
            if spec.__class__ is _WithNumbers:
                inputs = [env[s] if type(s) is int else
                          _number_lit(env[s.slot].value) if s.__class__ is _NumberRef else s
                          for s in spec]
            else:
                inputs = [env[s] if type(s) is int else s for s in spec]
            record(Eqn(prim, inputs, outs, params))
            env += outs
        trace = self.trace
        return [Tracer(trace, env[r], None) if type(r) is int else r[0] for r in results]
