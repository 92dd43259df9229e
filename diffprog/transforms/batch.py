"""Batching (``dp.vmap``): run a per-example graph on a batch of examples at once.

:func:`batch_eval` walks a graph traced for ONE example and binds, for every equation,
the same computation on batched values: each value travels with its *batch dim* (the
axis that indexes the examples, or None when the value is the same for every example).
Equations whose inputs are all unbatched are bound unchanged; the others go through
the primitive's batching rule ``rule(values, dims, size, **params) -> (outputs, dims)``.
Because the rules bind primitives, batching records into whatever trace is open: a
compiled program, a derivative, another vmap. So ``vmap(grad(f))``, ``grad(vmap(f))``
and nested vmaps compose.

Rules live in the table: each entry's ``batch=`` (see diffprog/primitives/), most made
from the rule makers below with :func:`by` (``batch=by(reduce_axes, lambda:
reduce_sum)``); control-flow entries' rules, which batch their bodies, sit beside them
in primitives/control.py. Elementwise entries need none (the batch axis broadcasts). An
entry without a rule (a custom rule, the few listed in tests/transforms/test_batch.py)
runs once per example and the results are stacked: slower, never wrong.
"""
from __future__ import annotations

import string
from typing import Callable

import numpy as np

from ..ir import Graph, Lit
from ..tracing import bind

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
    """The entry's own rule (``batch=`` in its table entry), the elementwise rule, or
    (a custom rule, a primitive with none) one run per example."""
    own = getattr(prim, "batch", None)
    if own is not None:
        return own
    if prim.elementwise:
        return _elementwise(prim)
    return per_example(prim)


def by(maker: Callable, prim_of: Callable) -> Callable:
    """An entry's rule from a rule maker of this module: ``batch=by(reduce_axes, lambda:
    reduce_sum)`` (the entry is made after its rule, so it is looked up when used)."""
    def rule(values, dims, size, **params):
        return maker(prim_of())(values, dims, size, **params)
    return rule


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


def same_axes(prim):
    """Ops that keep every axis where it is (convert, stop_gradient)."""
    def rule(values, dims, size, **params):
        return bind(prim, values[0], **params), dims[0]
    return rule


def reduce_axes(prim):
    def rule(values, dims, size, *, axes, **params):
        x = moved(values[0], dims[0])
        return bind(prim, x, axes=tuple(a + 1 for a in axes), **params), 0
    return rule


def along_axis(prim):
    """argmax/argmin/argsort/cumsum/cumprod: one ``axis`` parameter."""
    def rule(values, dims, size, *, axis, **params):
        if axis is None:
            return per_example(prim)(values, dims, size, axis=axis, **params)
        x = moved(values[0], dims[0])
        return bind(prim, x, axis=axis + 1, **params), 0
    return rule




# ------------------------------------------------------------------------ shape ops

def reshape_rule(prim):
    def rule(values, dims, size, *, shape):
        x = moved(values[0], dims[0])
        return bind(prim, x, shape=(np.shape(x)[0],) + tuple(shape)), 0
    return rule


def transpose_rule(prim):
    def rule(values, dims, size, *, axes):
        x = moved(values[0], dims[0])
        return bind(prim, x, axes=(0,) + tuple(a + 1 for a in axes)), 0
    return rule


def broadcast_to_rule(prim):
    def rule(values, dims, size, *, shape):
        x = _aligned(values[0], dims[0], len(shape))
        return bind(prim, x, shape=(np.shape(x)[0],) + tuple(shape)), 0
    return rule


def concatenate_rule(prim):
    def rule(values, dims, size, *, axis):
        args = [with_batch(v, d, size) for v, d in zip(values, dims)]
        return bind(prim, *args, axis=axis + 1), 0
    return rule


def pad_rule(prim):
    def rule(values, dims, size, *, pad_width, **params):
        x = moved(values[0], dims[0])
        return bind(prim, x, pad_width=((0, 0),) + tuple(tuple(p) for p in pad_width),
                    **params), 0
    return rule


def slice_rule(prim):
    def rule(values, dims, size, *, index):
        x = moved(values[0], dims[0])
        return bind(prim, x, index=(slice(None),) + tuple(index)), 0
    return rule


def gather_rule(prim):
    """``x[index]`` with index arrays: batched ``x`` and shared index arrays keep one
    gather; batched index arrays run per example."""
    def rule(values, dims, size, *, index):
        if any(d is not NOT_BATCHED for d in dims[1:]):
            return per_example(prim)(values, dims, size, index=index)
        x = moved(values[0], dims[0])
        return bind(prim, x, *values[1:], index=(slice(None),) + tuple(index)), \
            _gather_batch_dim(index, values[1:])
    return rule


def scatter_add_rule(prim):
    """The transpose of slicing and gather: a batched cotangent scatters into a batched
    zero array with the same index (shared index arrays); batched indices run per example."""
    def rule(values, dims, size, *, shape, index):
        if any(d is not NOT_BATCHED for d in dims[1:]):
            return per_example(prim)(values, dims, size, shape=shape, index=index)
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

def matmul_rule(prim):
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


def solve_rule(prim):
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


def einsum_rule(prim):
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


# ------------------------------------------------------------------------ bodies

def batched_aval(aval, batched: bool, size: int):
    from ..ir import Aval
    return Aval((size,) + aval.shape, aval.dtype) if batched else Aval(aval.shape, aval.dtype)


def reaches(graph: Graph, batched_inputs: list) -> list:
    """Which outputs of ``graph`` depend on the inputs flagged in ``batched_inputs``."""
    live = {id(v) for v, b in zip(graph.invars, batched_inputs) if b}
    for eqn in graph.eqns:
        if any(id(a) in live for a in eqn.inputs):
            live.update(id(o) for o in eqn.outputs)
    return [id(o) in live for o in graph.outvars]





def batched_body(graph: Graph, in_dims: list, want_batched: list, size: int):
    """A body function running ``graph`` batched, outputs batched at 0 where wanted."""
    def body(*args):
        outs, out_dims = batch_eval(graph, list(args), in_dims, size)
        return [with_batch(o, d, size) if want else o
                for o, d, want in zip(outs, out_dims, want_batched)]
    return body


# ------------------------------------------------------------------------ fallback

def per_example(prim):
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
