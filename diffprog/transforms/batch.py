"""Batching (``dp.vmap``): run a per-example graph on a batch of examples at once.

:func:`batch_eval` walks a graph traced for ONE example and binds, for every equation,
the same computation on batched values: each value travels with its *batch dim* (the
axis that indexes the examples, or None when the value is the same for every example).
Equations whose inputs are all unbatched are bound unchanged; the others go through
the primitive's batching rule ``rule(values, dims, size, **params) -> (outputs, dims)``.
Because the rules bind primitives, batching records into whatever trace is open: a
compiled program, a derivative, another vmap. So ``vmap(grad(f))``, ``grad(vmap(f))``
and nested vmaps compose.

Rules: a primitive's own ``batch`` attribute when it has one; else by family
(elementwise: broadcast the batch axis; reductions, scans and arg-reductions: shift
their axes; shape ops, indexing, matmul, einsum, linear algebra and ``scan`` have their
own below). A primitive without any (a custom rule, ``cond``, ``while_loop``, scatters
with batched indices) runs once per example and the results are stacked: slower, never
wrong.
"""
from __future__ import annotations

import string
from typing import Callable

import numpy as np

from ..ir import Graph, Lit
from ..tracing import bind
from .closed import Closed, close

NOT_BATCHED = None


# ------------------------------------------------------------------------ entry point

def batch_eval(graph: Graph, args: list, dims: list, size: int) -> tuple[list, list]:
    """Outputs of ``graph`` on batched ``args`` (``dims[i]``: the batch axis of
    ``args[i]``, or None), with their batch dims."""
    env = {id(v): (a, d) for v, a, d in zip(graph.invars, args, dims)}

    def read(atom):
        return (atom.value, NOT_BATCHED) if isinstance(atom, Lit) else env[id(atom)]

    for eqn in graph.eqns:
        ins = [read(a) for a in eqn.inputs]
        values, in_dims = [v for v, _ in ins], [d for _, d in ins]
        if all(d is NOT_BATCHED for d in in_dims):
            outs = bind(eqn.prim, *values, **eqn.params)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            out_dims = [NOT_BATCHED] * len(outs)
        else:
            outs, out_dims = rule_for(eqn.prim)(values, in_dims, size, **eqn.params)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            out_dims = out_dims if isinstance(out_dims, (list, tuple)) else [out_dims]
        for v, o, d in zip(eqn.outputs, outs, out_dims):
            env[id(v)] = (o, d)
    results = [read(o) for o in graph.outvars]
    return [v for v, _ in results], [d for _, d in results]


def rule_for(prim) -> Callable:
    own = getattr(prim, "batch", None)
    if own is not None:
        return own
    if prim.elementwise:
        return _elementwise(prim)
    return RULES.get(prim.name) or _per_example(prim)


# ------------------------------------------------------------------------ helpers

def _ndim(x) -> int:
    return np.ndim(x)


def moved(x, dim, to: int = 0):
    """``x`` with its batch axis at ``to`` (a no-op when already there)."""
    return x if dim == to else np.moveaxis(x, dim, to)


def with_batch(x, dim, size: int):
    """``x`` batched at axis 0: an unbatched value is broadcast over the batch."""
    if dim is NOT_BATCHED:
        return np.broadcast_to(x, (size,) + tuple(np.shape(x)))
    return moved(x, dim)


def _aligned(x, dim, rank: int):
    """Batched ``x`` at axis 0 with singleton axes after it up to per-example ``rank``, so
    NumPy's right-aligned broadcasting lines its example axes up with the others'."""
    x = moved(x, dim)
    missing = rank - (_ndim(x) - 1)
    if missing > 0:
        x = np.reshape(x, (np.shape(x)[0],) + (1,) * missing + tuple(np.shape(x)[1:]))
    return x


def _example_rank(x, dim) -> int:
    return _ndim(x) - (0 if dim is NOT_BATCHED else 1)


# ------------------------------------------------------------------------ families

def _elementwise(prim):
    def rule(values, dims, size, **params):
        rank = max(_example_rank(v, d) for v, d in zip(values, dims))
        args = [v if d is NOT_BATCHED else _aligned(v, d, rank) for v, d in zip(values, dims)]
        out = bind(prim, *args, **params)
        n = len(out) if isinstance(out, (list, tuple)) else 1
        return out, [0] * n if isinstance(out, (list, tuple)) else 0
    return rule


def _unary_same(prim):
    """Ops that keep every axis where it is (convert, stop_gradient)."""
    def rule(values, dims, size, **params):
        return bind(prim, values[0], **params), dims[0]
    return rule


def _reduce(prim):
    def rule(values, dims, size, *, axes, **params):
        x = moved(values[0], dims[0])
        return bind(prim, x, axes=tuple(a + 1 for a in axes), **params), 0
    return rule


def _along_axis(prim):
    """argmax/argmin/argsort/cumsum/cumprod: one ``axis`` parameter."""
    def rule(values, dims, size, *, axis, **params):
        if axis is None:
            return _per_example(prim)(values, dims, size, axis=axis, **params)
        x = moved(values[0], dims[0])
        return bind(prim, x, axis=axis + 1, **params), 0
    return rule


def _stacked_linalg(prim):
    """NumPy's linalg functions act on stacks of matrices: the batch is one more stack axis."""
    def rule(values, dims, size, **params):
        x = moved(values[0], dims[0])
        out = bind(prim, x, **params)
        return out, ([0] * len(out) if isinstance(out, (list, tuple)) else 0)
    return rule


# ------------------------------------------------------------------------ shape ops

def _reshape(prim):
    def rule(values, dims, size, *, shape):
        x = moved(values[0], dims[0])
        return bind(prim, x, shape=(np.shape(x)[0],) + tuple(shape)), 0
    return rule


def _transpose(prim):
    def rule(values, dims, size, *, axes):
        x = moved(values[0], dims[0])
        return bind(prim, x, axes=(0,) + tuple(a + 1 for a in axes)), 0
    return rule


def _broadcast_to(prim):
    def rule(values, dims, size, *, shape):
        x = _aligned(values[0], dims[0], len(shape))
        return bind(prim, x, shape=(np.shape(x)[0],) + tuple(shape)), 0
    return rule


def _concatenate(prim):
    def rule(values, dims, size, *, axis):
        args = [with_batch(v, d, size) for v, d in zip(values, dims)]
        return bind(prim, *args, axis=axis + 1), 0
    return rule


def _pad(prim):
    def rule(values, dims, size, *, pad_width, **params):
        x = moved(values[0], dims[0])
        return bind(prim, x, pad_width=((0, 0),) + tuple(tuple(p) for p in pad_width),
                    **params), 0
    return rule


def _slice(prim):
    def rule(values, dims, size, *, index):
        x = moved(values[0], dims[0])
        return bind(prim, x, index=(slice(None),) + tuple(index)), 0
    return rule


def _gather(prim):
    """``x[index]`` with index arrays: batched ``x`` and shared index arrays keep one
    gather; batched index arrays run per example."""
    def rule(values, dims, size, *, index):
        if any(d is not NOT_BATCHED for d in dims[1:]):
            return _per_example(prim)(values, dims, size, index=index)
        x = moved(values[0], dims[0])
        return bind(prim, x, *values[1:], index=(slice(None),) + tuple(index)), \
            _gather_batch_dim(index, values[1:])
    return rule


def _scatter_add(prim):
    """The transpose of slicing and gather: a batched cotangent scatters into a batched
    zero array with the same index (shared index arrays); batched indices run per example."""
    def rule(values, dims, size, *, shape, index):
        if any(d is not NOT_BATCHED for d in dims[1:]):
            return _per_example(prim)(values, dims, size, shape=shape, index=index)
        g = moved(values[0], dims[0], _gather_batch_dim(index, values[1:]))
        return bind(prim, g, *values[1:], shape=(size,) + tuple(shape),
                    index=(slice(None),) + tuple(index)), 0
    return rule


def _gather_batch_dim(index, arrays) -> int:
    """Where ``x[(slice(None),) + index]`` puts the batch axis: 0, unless the index arrays
    are separated by slices (NumPy then puts their broadcast axes first)."""
    arrays_in = any(_is_array_slot(part) for part in index)
    # with an index array present, NumPy counts integers as advanced indices too
    slots = [i for i, part in enumerate(index) if _is_array_slot(part) or
             (arrays_in and isinstance(part, (int, np.integer)) and not isinstance(part, bool))]
    if not slots or slots == list(range(slots[0], slots[-1] + 1)):
        return 0
    return max(_ndim(a) for a in arrays)


def _is_array_slot(part) -> bool:
    return type(part).__name__ == "ArraySlot"


# ------------------------------------------------------------------------ linear algebra

def _matmul(prim):
    def rule(values, dims, size):
        (a, b), (da, db) = values, dims
        ra, rb = _example_rank(a, da), _example_rank(b, db)
        # batch axes first, so the 1-d expansions below touch the example's own axes
        a, da = (a, da) if da is NOT_BATCHED else (moved(a, da), 0)
        b, db = (b, db) if db is NOT_BATCHED else (moved(b, db), 0)
        # 1-d operands as matrices (a row, a column), as NumPy does, squeezed after
        if ra == 1:
            a = np.expand_dims(a, -2)
        if rb == 1:
            b = np.expand_dims(b, -1)
        rank = max(ra, rb, 2)
        a = a if da is NOT_BATCHED else _aligned(a, da, rank)
        b = b if db is NOT_BATCHED else _aligned(b, db, rank)
        out = bind(prim, a, b)
        if rb == 1:
            out = np.squeeze(out, -1)
        if ra == 1:
            out = np.squeeze(out, -2 if rb != 1 else -1)
        return out, 0
    return rule


def _solve(prim):
    def rule(values, dims, size):
        (a, b), (da, db) = values, dims
        vector = _example_rank(b, db) == 1  # NumPy 2: a 1-d b is one vector per matrix
        if vector:  # solve for a one-column matrix instead, squeezed after
            b, db = (np.expand_dims(b, -1), db) if db is NOT_BATCHED else \
                (np.expand_dims(moved(b, db), -1), 0)
        rank = max(_example_rank(a, da), _example_rank(b, db))
        a = a if da is NOT_BATCHED else _aligned(a, da, rank)
        b = b if db is NOT_BATCHED else _aligned(b, db, rank)
        out = bind(prim, a, b)
        return (np.squeeze(out, -1) if vector else out), 0
    return rule


def _einsum(prim):
    def rule(values, dims, size, *, subscripts, **params):
        ins, out = subscripts.split("->")
        terms = ins.split(",")
        free = next(c for c in string.ascii_letters if c not in subscripts)
        args = []
        for term, v, d in zip(terms, values, dims):
            if d is NOT_BATCHED:
                args.append(v)
            else:
                args.append(moved(v, d))
        new_terms = [t if d is NOT_BATCHED else free + t for t, d in zip(terms, dims)]
        new = ",".join(new_terms) + "->" + free + out
        return bind(prim, *args, subscripts=new, **params), 0
    return rule


# ------------------------------------------------------------------------ control flow

def _scan(prim):
    """A scan over batched values is one scan whose body is batched: carries that any
    batched value reaches are batched (found by iterating to a fixed point), scanned
    inputs carry their batch at axis 1 (axis 0 is the loop), stacked outputs come back
    batched at axis 1."""
    def rule(values, dims, size, *, body, n_carry, n_x, length, reverse):
        graph = body.graph
        carry_b = [d is not NOT_BATCHED for d in dims[:n_carry]]
        rest_b = [d is not NOT_BATCHED for d in dims[n_carry:]]
        while True:
            out_b = _reaches(graph, carry_b + rest_b)
            grown = [c or o for c, o in zip(carry_b, out_b[:n_carry])]
            if grown == carry_b:
                break
            carry_b = grown
        y_b = out_b[n_carry:]
        carries = [with_batch(v, d, size) if b else v
                   for v, d, b in zip(values[:n_carry], dims[:n_carry], carry_b)]
        xs = [moved(v, d, 1) if d is not NOT_BATCHED else v
              for v, d in zip(values[n_carry:n_carry + n_x], dims[n_carry:n_carry + n_x])]
        consts = [moved(v, d) if d is not NOT_BATCHED else v
                  for v, d in zip(values[n_carry + n_x:], dims[n_carry + n_x:])]
        in_dims = [0 if b else NOT_BATCHED for b in carry_b + rest_b]
        in_avals = [_batched_aval(a, b, size) for a, b in zip(body.in_avals, carry_b + rest_b)]

        def batched_body(*args):
            outs, out_dims = batch_eval(graph, list(args), in_dims, size)
            return [with_batch(o, d, size) if want else o
                    for o, d, want in zip(outs, out_dims, carry_b + y_b)]
        new_body = close(batched_body, in_avals)
        assert isinstance(new_body, Closed)
        outs = bind(prim, *carries, *xs, *consts, body=new_body, n_carry=n_carry, n_x=n_x,
                    length=length, reverse=reverse)
        out_dims = [0 if b else NOT_BATCHED for b in carry_b] + \
            [1 if b else NOT_BATCHED for b in y_b]
        return outs, out_dims
    return rule


def _cond(prim):
    """A shared predicate keeps one cond with batched branches; a batched predicate runs
    both branches for every example and selects per example (as JAX does: the branch
    not taken is computed and discarded)."""
    def rule(values, dims, size, *, true_body, false_body):
        pred, ops, op_dims = values[0], values[1:], dims[1:]
        if dims[0] is NOT_BATCHED:
            flags = [d is not NOT_BATCHED for d in op_dims]
            out_b = [a or b for a, b in zip(_reaches(true_body.graph, flags),
                                            _reaches(false_body.graph, flags))]
            in_avals = [_batched_aval(a, f, size) for a, f in zip(true_body.in_avals, flags)]
            ops = [moved(v, d) if d is not NOT_BATCHED else v for v, d in zip(ops, op_dims)]
            in_dims = [0 if f else NOT_BATCHED for f in flags]
            bodies = [close(_batched_body(b.graph, in_dims, out_b, size), in_avals)
                      for b in (true_body, false_body)]
            outs = bind(prim, pred, *ops, true_body=bodies[0], false_body=bodies[1])
            return outs, [0 if b else NOT_BATCHED for b in out_b]
        # a batched predicate: both branches, each example keeping its own (select_cond,
        # whose derivatives select per example too, so no 0 * inf from the other branch)
        # Every operand is batched for it (shared ones broadcast): its derivative selects
        # each example's cotangent before the broadcast's derivative sums them.
        from ..primitives.control import select_cond
        ops = [with_batch(v, d, size) for v, d in zip(ops, op_dims)]
        in_dims = [0] * len(ops)
        in_avals = [_batched_aval(a, True, size) for a in true_body.in_avals]
        every = [True] * len(true_body.out_avals)
        bodies = [close(_batched_body(b.graph, in_dims, every, size), in_avals)
                  for b in (true_body, false_body)]
        outs = bind(select_cond, moved(pred, dims[0]), *ops, true_body=bodies[0],
                    false_body=bodies[1])
        return outs, [0] * len(outs)
    return rule


def _batched_body(graph: Graph, in_dims: list, want_batched: list, size: int):
    """A body function running ``graph`` batched, outputs batched at 0 where wanted."""
    def body(*args):
        outs, out_dims = batch_eval(graph, list(args), in_dims, size)
        return [with_batch(o, d, size) if want else o
                for o, d, want in zip(outs, out_dims, want_batched)]
    return body


def _while(prim):
    """Carries that a batched value reaches are batched. A shared predicate keeps one
    loop; a batched one loops while any example's predicate holds, and an example whose
    predicate is false keeps its carry (each runs exactly its own number of steps)."""
    def rule(values, dims, size, *, cond_body, body, n_carry, n_cond_consts):
        if size == 0:  # no example runs a step: the carries as they came, batched
            return [with_batch(v, d, 0) for v, d in zip(values[:n_carry], dims[:n_carry])], \
                [0] * n_carry
        carry_b = [d is not NOT_BATCHED for d in dims[:n_carry]]
        cc_b = [d is not NOT_BATCHED for d in dims[n_carry:n_carry + n_cond_consts]]
        bc_b = [d is not NOT_BATCHED for d in dims[n_carry + n_cond_consts:]]
        while True:
            pred_b = _reaches(cond_body.graph, carry_b + cc_b)[0]
            grown = carry_b if not pred_b else [True] * n_carry
            grown = [c or o for c, o in zip(grown, _reaches(body.graph, grown + bc_b))]
            if grown == carry_b:
                break
            carry_b = grown
        carry = [with_batch(v, d, size) if b else v
                 for v, d, b in zip(values[:n_carry], dims[:n_carry], carry_b)]
        consts = [moved(v, d) if d is not NOT_BATCHED else v
                  for v, d in zip(values[n_carry:], dims[n_carry:])]
        cond_dims = [0 if b else NOT_BATCHED for b in carry_b + cc_b]
        body_dims = [0 if b else NOT_BATCHED for b in carry_b + bc_b]
        cond_avals = [_batched_aval(a, b, size) for a, b in zip(cond_body.in_avals, carry_b + cc_b)]
        body_avals = [_batched_aval(a, b, size) for a, b in zip(body.in_avals, carry_b + bc_b)]
        step = _batched_body(body.graph, body_dims, carry_b, size)
        if not pred_b:
            new_cond = close(_batched_body(cond_body.graph, cond_dims, [False], size), cond_avals)
            new_body = close(step, body_avals)
            cc_avals = cond_avals[n_carry:]
        else:
            def still(args):
                outs, out_dims = batch_eval(cond_body.graph, list(args), cond_dims, size)
                return with_batch(outs[0], out_dims[0], size)

            def any_running(*args):  # (*carry, *cond consts)
                return [np.any(still(args))]

            from ..primitives.control import select_cond
            n_cc = n_cond_consts
            # select_cond takes every operand batched (see _cond): shared consts broadcast
            body_consts_avals = [_batched_aval(a, True, size) for a in body.in_avals[n_carry:]]
            step_avals = body_avals[:n_carry] + body_consts_avals
            step_dims = [0] * len(step_avals)
            stepping = close(_batched_body(body.graph, step_dims, [True] * n_carry, size),
                             step_avals)
            staying = close(lambda *a: list(a[:n_carry]), step_avals)
            shared = [not b for b in bc_b]

            def masked_step(*args):  # (*carry, *cond consts, *body consts)
                running = still(args[:n_carry + n_cc])  # a finished example keeps its carry
                consts = [with_batch(v, NOT_BATCHED, size) if s else v
                          for v, s in zip(args[n_carry + n_cc:], shared)]
                return bind(select_cond, running, *args[:n_carry], *consts,  # and its
                            true_body=stepping, false_body=staying)  # derivatives their own
            cc_avals = cond_avals[n_carry:]
            new_cond = close(any_running, cond_avals)
            new_body = close(masked_step, body_avals[:n_carry] + cc_avals + body_avals[n_carry:])
            # the body now also reads the cond consts: pass them twice
            consts = consts[:n_cond_consts] + consts[:n_cond_consts] + consts[n_cond_consts:]
        outs = bind(prim, *carry, *consts, cond_body=new_cond, body=new_body, n_carry=n_carry,
                    n_cond_consts=n_cond_consts)
        return outs, [0 if b else NOT_BATCHED for b in carry_b]
    return rule


def _error_if(prim):
    """A run-time check of a batch fails when any example's does; the error names the
    first failing example (its index in the batch) and that example's values."""
    def rule(values, dims, size, *, message):
        x, pred, info = values[0], values[1], values[2:]
        pred = with_batch(pred, dims[1], size)
        first = np.argmax(pred)
        picked = [v if d is NOT_BATCHED else with_batch(v, d, size)[first]
                  for v, d in zip(info, dims[2:])]
        renumbered = _shift_fields(message, 1)
        out = bind(prim, x, np.any(pred), first, *picked,
                   message="example {0:.0f} of the dp.vmap batch: " + renumbered)
        return out, dims[0]
    return rule


def _shift_fields(message: str, by: int) -> str:
    """``"t={0:.3g}"`` -> ``"t={1:.3g}"``, ``"{} {}"`` -> ``"{1} {2}"``: room for a new
    first format field (automatic fields are numbered first)."""
    import re
    counter = iter(range(1000))

    def shift(m):
        number = m.group(1) if m.group(1) else str(next(counter))
        return "{" + str(int(number) + by) + (m.group(2) or "") + "}"
    return re.sub(r"(?<!\{)\{(\d*)([!:][^{}]*)?\}(?!\})", shift, message)


def _batched_aval(aval, batched: bool, size: int):
    from ..ir import Aval
    return Aval((size,) + aval.shape, aval.dtype) if batched else Aval(aval.shape, aval.dtype)


def _reaches(graph: Graph, batched_inputs: list) -> list:
    """Which outputs of ``graph`` depend on the inputs flagged in ``batched_inputs``."""
    live = {id(v) for v, b in zip(graph.invars, batched_inputs) if b}
    for eqn in graph.eqns:
        if any(id(a) in live for a in eqn.inputs):
            live.update(id(o) for o in eqn.outputs)
    return [id(o) in live for o in graph.outvars]


# ------------------------------------------------------------------------ fallback

def _per_example(prim):
    """Run ``prim`` once per example and stack: correct for any primitive, B equations."""
    def rule(values, dims, size, **params):
        if size == 0:
            return _empty_batch(prim, values, dims, params)
        per_example = []
        for b in range(size):
            args = [v if d is NOT_BATCHED else _take(v, d, b) for v, d in zip(values, dims)]
            out = bind(prim, *args, **params)
            per_example.append(out if isinstance(out, (list, tuple)) else [out])
        stacked = [np.stack([outs[k] for outs in per_example]) for k in range(len(per_example[0]))]
        multiple = prim.multiple_results
        return (stacked if multiple else stacked[0]), ([0] * len(stacked) if multiple else 0)
    return rule


def _empty_batch(prim, values, dims, params):
    """A batch of no examples: zeros of the per-example output shapes, batched at 0."""
    from ..ir import aval_of
    avals = []
    for v, d in zip(values, dims):
        aval = v.aval if hasattr(v, "aval") else aval_of(v)
        if d is not NOT_BATCHED:
            aval = type(aval)(aval.shape[:d] + aval.shape[d + 1:], aval.dtype, aval.weak)
        avals.append(aval)
    out = prim.abstract_eval(*avals, **params)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    zeros = [np.zeros((0,) + tuple(a.shape), a.dtype) for a in outs]
    return (zeros if prim.multiple_results else zeros[0]), \
        ([0] * len(zeros) if prim.multiple_results else 0)


def _take(x, dim, b: int):
    index = (slice(None),) * dim + (b,)
    return x[index]


def _table() -> dict:
    from ..primitives import PRIMITIVES as P
    rules = {}

    def add(names, make):
        for name in names:
            if name in P:
                rules[name] = make(P[name])
    add(["convert", "stop_gradient"], _unary_same)
    add(["reduce_sum", "reduce_max", "reduce_min", "reduce_prod"], _reduce)
    add(["argmax", "argmin", "argsort", "cumsum", "cumprod"], _along_axis)
    add(["inv", "det", "cholesky", "slogdet", "adjugate", "eigh", "eigvalsh"], _stacked_linalg)
    add(["reshape"], _reshape)
    add(["transpose"], _transpose)
    add(["broadcast_to"], _broadcast_to)
    add(["concatenate"], _concatenate)
    add(["pad"], _pad)
    add(["slice"], _slice)
    add(["gather"], _gather)
    add(["scatter_add"], _scatter_add)
    add(["matmul"], _matmul)
    add(["solve"], _solve)
    add(["einsum"], _einsum)
    add(["scan"], _scan)
    add(["cond"], _cond)
    add(["while_loop"], _while)
    add(["error_if"], _error_if)
    return rules


class _Rules(dict):
    """Built on first use: the primitive table is complete only once every module that
    defines entries has been imported."""

    def get(self, name, default=None):
        if not self:
            self.update(_table())
        return super().get(name, default)


RULES = _Rules()
