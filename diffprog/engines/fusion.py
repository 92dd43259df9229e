"""Blocked, multi-threaded evaluation of elementwise chains on large arrays (numpy engine).

A run of consecutive elementwise equations over arrays of one large shape (plus full
``reduce_sum`` s of them) becomes one generated *block kernel*: the arrays are walked
in blocks of ``BLOCK`` elements that stay in cache; every equation is the same NumPy
ufunc as unfused, called with ``out=`` into a small per-thread scratch buffer (or
straight into the result array for values needed after the run); the blocks are split
between threads (NumPy releases the GIL inside ufunc loops).

Why this rather than numexpr: on W4 (bench/) numexpr took 23 ms where this takes 18 ms
(hand-written NumPy: 37-42 ms), because NumPy's own SIMD ``exp``/``log`` loops are kept;
and results are *bit-identical* to the unfused program: elementwise values are the same
ufunc loops on the same values, and fused sums add up in NumPy's own order (below).
Intermediates never exist at full size, so peak memory drops too.

Fused sums, bit for bit: ``np.sum`` of a contiguous array is one pairwise summation
over the whole array (loops_utils.h.src in NumPy: ``n < 8`` sequential, ``n <= 128``
eight accumulators, else split at ``n2 = n // 2 - (n // 2) % 8`` and recurse; complex
values count as two doubles there). So blocks are not fixed-size: they are the leaves of
that recursion tree, cut where a segment has at most ``BLOCK`` elements
(:func:`sum_plan`). A block summed by ``np.add.reduce`` (or the C twin's ``dp_pairwise``)
is then exactly NumPy's subtree, and :func:`combine` adds the block sums back up in the
tree's order, then adds them to NumPy's identity as ``np.add.reduce`` does. Real and
complex trees differ, so one kernel's sums are all real or all complex (a sum of the
other kind ends the run: it is summed unfused); float16 sums (NumPy accumulates them in
float32) are never fused. Where the unfused program would lay out or walk its values
in another order than C order (inputs of two or more dimensions that are not C-ordered),
a kernel with sums runs the unfused equations instead (:meth:`BlockKernel._unfused_lines`).

Sin and cos of one float64 operand in a run share one call of the ``sincos`` ufunc
(:mod:`diffprog.engines.fastmath`, used only where it is bit-identical to np.sin/np.cos):
on W4's gradient that cuts the kernel from 35 to 30 ms on 2 threads. Small scalar work
between big elementwise equations is moved after them first (:func:`sink_small_work`),
so a gradient's elementwise work stays one kernel.

Each block kernel also gets a compiled C twin (:mod:`diffprog.engines.ckernel`) that
computes all equations of an element in registers; it runs once built and checked, with
the same results. Blocks are the unit of work for both, and fused sums are added up per
block in the tree's order, so results do not depend on the thread count.

Which arrays are fused depends on who computes the blocks. The NumPy block loop pays
Python overhead and a thread hand-off per block, so it only runs on arrays of at least
``PY_BLOCK_MIN`` (2**18) elements: measured on W2 (a 256x256 run of three cheap ops) on a
loaded 2-core machine, unfused 0.97 ms, NumPy-blocked 1.27 ms. The compiled twin has no
such overhead, and on arrays of 2**15 elements and more it saves more than the passes: each
unfused temporary of 256 KiB or more is a fresh ``mmap`` that the kernel zero-fills page
by page, which on such a machine costs more than the arithmetic (a 4-op chain on 65,536
float64: unfused 769 us, compiled 144 us; at 16,384 elements they tie, at 4,096 unfused
wins). So arrays of ``min_size()`` (2**15) up to ``PY_BLOCK_MIN`` elements are fused only
when compiled kernels can be built, and until the twin is ready (or where it refuses a
block, or a call raises a floating-point flag NumPy must report) the block runs its
equations unfused, exactly as the unfused program does.

Settings (environment, read when a program is compiled):
``DIFFPROG_FUSE_MIN``  smallest array size (elements) fused; 0 turns fusion off. When set,
                       the NumPy block loop runs from that size too (tests use it to
                       exercise the loop on small arrays); unset: 32768 for compiled
                       kernels, 262144 for the NumPy loop, as above.
``DIFFPROG_THREADS``   worker threads; default: the CPUs this process may use.
"""
from __future__ import annotations

import functools
import math
import os
import re

import numpy as np

from ..ir import Aval, Lit, Var
from . import ckernel, fastmath
from .threads import run_blocks

BLOCK = 16384
PY_BLOCK_MIN = 262144   # smallest array the NumPy block loop runs on (by default)
COMPILED_MIN = 32768    # smallest array fused when compiled kernels can be built


def _configured_min() -> int | None:
    try:
        return int(os.environ["DIFFPROG_FUSE_MIN"])
    except (KeyError, ValueError):
        return None


def min_size() -> int:
    """Smallest array size (elements) fused: ``DIFFPROG_FUSE_MIN`` when set, else
    ``COMPILED_MIN`` where compiled kernels can be built, else ``PY_BLOCK_MIN``."""
    configured = _configured_min()
    if configured is not None:
        return configured
    return COMPILED_MIN if ckernel.enabled() and ckernel.compiler() else PY_BLOCK_MIN


def python_block_min() -> int:
    """Smallest array size whose block kernel falls back to the NumPy block loop (smaller
    ones fall back to their equations unfused)."""
    configured = _configured_min()
    return configured if configured is not None else PY_BLOCK_MIN


# ============================================================================ planning

# Equations that may read a broadcast operand inside a block: IEEE arithmetic, selections
# and comparisons, whose results do not depend on the code path NumPy takes. Why: NumPy
# runs a ufunc on a broadcast (stride-0) operand through another inner loop than on a
# contiguous one, and its SIMD loops for transcendental functions (arctan2, hypot, pow,
# logaddexp... on AVX-512) may round differently from the scalar ones.
_BROADCAST_OK = frozenset({"add", "sub", "mul", "div", "maximum", "minimum", "where", "less",
                           "less_equal", "greater", "greater_equal", "equal", "not_equal"})


def _blockable_operand(atom, shape, prim_name: str = "") -> bool:
    s = atom.aval.shape
    return s == shape or s == () or (prim_name in _BROADCAST_OK
                                     and broadcast_pattern(s, shape) is not None)


def broadcast_pattern(op_shape, shape) -> tuple[str, int] | None:
    """How an operand of ``op_shape`` broadcast to the block shape ``shape`` is walked in
    C order: ``("inner", L)`` when it repeats its values every ``L`` elements (it spans
    ``shape``'s last axes, as a bias ``b`` in ``x @ w + b`` does), ``("outer", L)`` when each
    of its values covers ``L`` consecutive elements (it spans the first axes, as a column
    ``(n, 1)`` does); None when it is not broadcast (or broadcast otherwise).

    >>> broadcast_pattern((256,), (64, 256)), broadcast_pattern((64, 1), (64, 256))
    (('inner', 256), ('outer', 256))
    """
    op_shape, shape = tuple(op_shape), tuple(shape)
    d = len(shape)
    if len(op_shape) > d or not op_shape or op_shape == shape:
        return None
    padded = (1,) * (d - len(op_shape)) + op_shape
    for k in range(1, d + 1):
        if padded[:k] == (1,) * k and padded[k:] == shape[k:]:
            return "inner", math.prod(shape[k:])
    for k in range(d):
        if padded[:k] == shape[:k] and padded[k:] == (1,) * (d - k):
            return "outer", math.prod(shape[k:])
    return None


def _elementwise_in_block(eqn, shape) -> bool:
    prim = eqn.prim
    return (prim.elementwise and not prim.multiple_results and isinstance(prim.impl, str)
            and eqn.outputs[0].aval.shape == shape
            and all(_blockable_operand(a, shape, prim.name) for a in eqn.inputs)
            and (prim.as_ufunc(eqn.params) is not None or prim.name == "where"))


def _full_sum(eqn, shape) -> bool:
    return (eqn.prim.name == "reduce_sum" and len(eqn.inputs) == 1
            and eqn.inputs[0].aval.shape == shape
            and sum_kind(eqn.inputs[0].aval.dtype) is not None
            and eqn.outputs[0].aval.dtype == eqn.inputs[0].aval.dtype
            and tuple(eqn.params.get("axes", ())) == tuple(range(len(shape))))


def sum_kind(dtype) -> str | None:
    """Which of NumPy's pairwise trees sums ``dtype`` ("real", "complex"), or None when a
    fused sum could not reproduce NumPy's bits (float16: NumPy adds its halves up in float32
    and rounds once at the end; anything not floating)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        return "complex"
    if dtype.kind == "f" and dtype.itemsize > 2:
        return "real"
    return None


PW_BLOCKSIZE = 128  # NumPy's: segments up to this many (doubles, for complex) are not split


@functools.lru_cache(maxsize=256)
def sum_plan(size: int, kind: str = "real", block: int = BLOCK) -> tuple[tuple, object]:
    """``(spans, tree)``: the blocks ``[(start, stop), ...]`` of an array of ``size``
    elements, in order, and how their sums add up: ``tree`` is a block index or a pair
    ``(left, right)`` of trees, added left + right.

    They are NumPy's own pairwise summation of the whole array (``DOUBLE_pairwise_sum``,
    ``CDOUBLE_pairwise_sum`` over interleaved doubles for "complex") cut where a
    segment has at most ``block`` elements: each block is a subtree NumPy sums on its own,
    so ``np.add.reduce`` of the block gives its bits, and adding the block sums as the
    tree says gives ``np.sum``'s (before its identity: see :func:`combine`).

    >>> sum_plan(40000)
    (((0, 10000), (10000, 20000), (20000, 30000), (30000, 40000)), ((0, 1), (2, 3)))
    """
    unit = 2 if kind == "complex" else 1  # NumPy's recursion counts doubles for complex
    leaf = max(block * unit, PW_BLOCKSIZE)
    spans: list[tuple[int, int]] = []

    def split(lo: int, n: int):
        if n <= leaf:
            spans.append((lo // unit, (lo + n) // unit))
            return len(spans) - 1
        n2 = n // 2
        n2 -= n2 % 8
        return (split(lo, n2), split(lo + n2, n - n2))

    tree = split(0, size * unit)
    return tuple(spans), tree


def sink_small_work(graph, threshold: int):
    """The graph with each pure equation on small values (every input and output under
    ``threshold`` elements) moved down to just before its first use.

    Why: a gradient interleaves big elementwise work with scalar bookkeeping (adding up
    two sums, scaling a seed); each such equation would end a fusable run, so the big
    work would become several kernels walking the arrays again, and sin/cos pairs split
    between them could not share a sincos call. Moving small pure work later keeps the
    program's dependencies (an equation still follows everything it reads) and keeps no
    big array alive longer (only equations whose inputs are all small move).
    """
    if threshold <= 0 or all_small_and_pure(graph, threshold):
        return graph  # every equation would sink: the order stays as it is

    def small(atom) -> bool:
        return math.prod(atom.aval.shape) < threshold

    pending: list[int] = []           # sunk equation indices, in program order
    pending_by_var: dict[int, int] = {}  # output var id -> its pending equation index
    order: list[int] = []

    def flush_needed_by(eqn) -> None:
        need, stack = set(), [a for a in eqn.inputs if isinstance(a, Var)]
        while stack:
            idx = pending_by_var.get(id(stack.pop()))
            if idx is not None and idx not in need:
                need.add(idx)
                stack.extend(a for a in graph.eqns[idx].inputs if isinstance(a, Var))
        for idx in [i for i in pending if i in need]:
            pending.remove(idx)
            order.append(idx)
            for o in graph.eqns[idx].outputs:
                pending_by_var.pop(id(o), None)

    for idx, eqn in enumerate(graph.eqns):
        sinkable = (eqn.outputs and not getattr(eqn.prim, "effectful", False)
                    and all(small(a) for a in eqn.inputs) and all(small(o) for o in eqn.outputs))
        if sinkable:
            pending.append(idx)
            for o in eqn.outputs:
                pending_by_var[id(o)] = idx
            continue
        flush_needed_by(eqn)
        order.append(idx)
    order.extend(pending)
    if order == list(range(len(graph.eqns))):
        return graph
    return type(graph)(graph.invars, [graph.eqns[i] for i in order], graph.outvars)


def _run_shape(eqn, threshold: int):
    """The block shape an equation could join a fused run of (elementwise on values of at
    least ``threshold`` elements), else None. Full sums are left out: they end runs."""
    if not eqn.outputs:
        return None
    shape = eqn.outputs[0].aval.shape
    if math.prod(shape) < threshold or not _elementwise_in_block(eqn, shape):
        return None
    return shape


# equations that compute nothing (views and copies of values): they raise no floating-point
# error, so moving one changes neither results nor which warning or error comes first
QUIET = frozenset({"reshape", "transpose", "broadcast_to", "concatenate", "slice", "pad"})


def gather_runs(graph, threshold: int):
    """The graph with each view or copy (``QUIET``) that sits inside an elementwise run,
    and reads nothing the run computed so far, moved before the run.

    Why: reverse mode interleaves transposes and reshapes with elementwise work; each
    would end the run, making two kernels and a full-size value between them. The moved
    equation still follows everything it reads, and nothing in the run reads it (it came
    after the run). Equations that compute stay where they are, products included:
    moving one ahead of the run would change which of two floating-point errors NumPy's
    ``errstate`` reports first (a reviewer's ``log`` of -1 before an ``inf @ 0``)."""
    if threshold <= 0:
        return graph
    order: list[int] = []
    start, shape, defined = None, None, set()  # the open run: where it starts in order
    for idx, eqn in enumerate(graph.eqns):
        this = _run_shape(eqn, threshold)
        if this is not None:
            if this != shape:
                start, shape, defined = len(order), this, set()
            order.append(idx)
            defined.update(id(o) for o in eqn.outputs)
            continue
        if start is not None and _full_sum(eqn, shape):  # it joins the run (block_segments)
            defined.update(id(o) for o in eqn.outputs)  # what reads it stays after it
            order.append(idx)
            continue
        movable = (start is not None and eqn.prim.name in QUIET and eqn.outputs
                   and not any(id(a) in defined for a in eqn.inputs if isinstance(a, Var)))
        if movable:
            order.insert(start, idx)
            start += 1
            continue
        start, shape, defined = None, None, set()
        order.append(idx)
    if order == list(range(len(graph.eqns))):
        return graph
    return type(graph)(graph.invars, [graph.eqns[i] for i in order], graph.outvars)


def all_small_and_pure(graph, threshold: int) -> bool:
    """Is every equation pure, with outputs, and on values under ``threshold`` elements
    only (the common long program on small arrays)? Avals are shared objects: each is
    sized once."""
    small: dict[int, bool] = {}
    for eqn in graph.eqns:
        if not eqn.outputs or getattr(eqn.prim, "effectful", False):
            return False
        for atoms in (eqn.inputs, eqn.outputs):
            for a in atoms:
                aval = a.aval
                known = small.get(id(aval))
                if known is None:
                    known = small[id(aval)] = math.prod(aval.shape) < threshold
                if not known:
                    return False
    return True


def block_segments(graph, threshold: int) -> list[list[int]]:
    """Equation indices in program order; fusable runs (>= 2 equations, one shape of at
    least ``threshold`` elements, at least one elementwise) grouped together."""
    segments: list[list[int]] = []
    run: list[int] = []
    shape = None
    kind = None  # the run's sums' kind (sum_kind): one pairwise tree, so one kind per run
    summed: set = set()  # ids of the run's full sums: known only once the whole run is done

    def close():
        nonlocal run, shape, kind
        if not run:
            return
        elementwise = [i for i in run if not _full_sum(graph.eqns[i], shape)]
        if len(run) > 1 and elementwise:
            segments.append(run)
        else:
            segments.extend([i] for i in run)
        run, shape, kind = [], None, None
        summed.clear()

    for idx, eqn in enumerate(graph.eqns):
        out_shape = eqn.outputs[0].aval.shape if eqn.outputs else None
        candidate = eqn.inputs[0].aval.shape if eqn.prim.name == "reduce_sum" and eqn.inputs \
            else out_shape
        big = threshold > 0 and candidate is not None and math.prod(candidate) >= threshold
        if big and (_elementwise_in_block(eqn, candidate) or _full_sum(eqn, candidate)):
            if shape is not None and candidate != shape or \
                    summed and any(id(a) in summed for a in eqn.inputs):
                close()  # (a run's sum is read after the run: exp(a) / np.sum(a))
            is_sum = _full_sum(eqn, candidate)
            if is_sum:
                this_kind = sum_kind(eqn.inputs[0].aval.dtype)
                if kind is not None and this_kind != kind:
                    close()  # its operand leaves the run; it is summed unfused
                if not run:  # a run starts with elementwise work
                    segments.append([idx])
                    continue
                kind = this_kind
                summed.add(id(eqn.outputs[0]))
            shape = candidate
            run.append(idx)
            continue
        if run:
            close()
        segments.append([idx])
    close()
    return segments


# ============================================================================ rendering

class _Buffers:
    """Scratch block buffers per dtype, recycled once their value is dead."""

    def __init__(self):
        self.free: dict[str, list[str]] = {}
        self.allocs: list[tuple[str, str]] = []  # (name, dtype name)

    def take(self, dtype: str) -> str:
        pool = self.free.setdefault(dtype, [])
        if pool:
            return pool.pop()
        name = f"s{len(self.allocs)}"
        self.allocs.append((name, dtype))
        return name

    def give(self, name: str, dtype: str) -> None:
        self.free.setdefault(dtype, []).append(name)


class BlockKernel:
    """One block kernel: a run of elementwise equations (and full sums) over arrays of one
    shape, walked in blocks of at most ``BLOCK`` elements (the leaves of NumPy's pairwise
    tree: :func:`sum_plan`), as a NumPy function and its compiled C twin
    (:class:`diffprog.engines.ckernel.BlockBuilder`, built alongside), and the program's
    lines calling it. Values computed inside stay block-sized; those read after the run
    are written to full-size results.
    """

    def __init__(self, writer, segment: list[int], index: int):
        self.writer = writer  # the program's ProgramWriter (names, bound constants)
        self.segment = segment
        self.eqns = [writer.graph.eqns[i] for i in segment]
        first = self.eqns[0]
        self.shape = first.inputs[0].aval.shape if first.prim.name == "reduce_sum" \
            else first.outputs[0].aval.shape
        self.size = math.prod(self.shape)
        self.name = f"_block{index}"
        self.index = index
        kinds = {sum_kind(e.inputs[0].aval.dtype) for e in self.eqns if e.prim.name == "reduce_sum"}
        self.spans, self.tree = sum_plan(self.size, kinds.pop() if len(kinds) == 1 else "real")
        self.max_block = max(j - i for i, j in self.spans)  # at most BLOCK
        # (the C twin's source does not depend on the size: one library serves every size)
        self.c_twin = ckernel.BlockBuilder(BLOCK, fast_math=writer.fast_math)
        self.full_params: list[str] = []   # array inputs read (each checked C-contiguous)
        self.local: dict[int, str] = {}   # var id -> its name in the NumPy block loop
        self.c_value: dict[int, str] = {}  # var id -> its C value
        self.params: list[str] = []       # kernel parameters (program names of outside values)
        self.flat_inputs: list[str] = []  # lines preparing full-size inputs
        self.loop_inputs: list[str] = []  # lines broadcasting inputs to full size (NumPy loop)
        self.block_inputs: list[str] = []  # lines slicing inputs per block
        self.export_lines: list[str] = []  # lines allocating full-size results
        self.body: list[str] = []         # the block loop's lines
        self.reductions: list[tuple[str, Var]] = []  # (accumulator, output var)
        self.exports: list[tuple[str, Var]] = []     # (full array name, var)
        self.c_pending: list[Var] = []    # exported results the C twin has not stored yet
        self.buffers = _Buffers()
        self.owner: dict[int, tuple[str, str]] = {}  # var id -> scratch buffer it occupies
        self.last_use = {id(a): pos for pos, eqn in enumerate(self.eqns)
                         for a in eqn.inputs if isinstance(a, Var)}
        self.definition: list[str] = []
        self._fallback: list[str] | None = None  # _unfused_lines, once written

    # ------------------------------------------------------------ operands and results

    def operand(self, atom) -> tuple[str, str]:
        """The operand's name in the NumPy block loop, and its C value."""
        if isinstance(atom, Var) and id(atom) in self.local:
            return self.local[id(atom)], self.c_value[id(atom)]
        text = self.writer.operand(atom)
        if atom.aval.shape == ():
            if isinstance(atom, Var) or text.startswith("_"):
                self._parameter(text)
                return text, self.c_twin.scalar(text, atom.aval)
            return text, self.c_twin.literal(atom.value)  # a literal number
        key = f"i{len(self.flat_inputs)}"
        const = atom.value if isinstance(atom, Lit) else None
        if isinstance(const, np.ndarray) and const.dtype == np.float64 and const.size == self.size \
                and not any(const.strides) and self.writer.bound.namespace["xp"] is np:
            # one repeated value (ir.compact_constant): a stride-0 view of its one element
            # for the NumPy kernel, a scalar for the C twin; never copied to full size
            element = const[(0,) * const.ndim]
            bound = self.writer.bound
            view = bound.bind_value(np.broadcast_to(np.array([element]), (self.size,)), "c")
            self.flat_inputs.append(f"{key} = {view}")
            self.block_inputs.append(f"{key}b = {key}[i:j]")
            scalar = bound.bind_value(np.float64(element), "c")
            self._parameter(scalar)
            return f"{key}b", self.c_twin.scalar(scalar, Aval((), np.dtype(np.float64)))
        self._parameter(text)
        if text not in self.full_params:
            self.full_params.append(text)
        self.flat_inputs.append(f"{key} = xp.ravel({text})")
        pattern = broadcast_pattern(atom.aval.shape, self.shape)
        if pattern is None:
            self.block_inputs.append(f"{key}b = {key}[i:j]")
            c_value = self.c_twin.array(key, atom.aval)
        else:  # the C twin walks the small operand; the NumPy loop a full-size copy
            self.loop_inputs.append(f"{key}w = xp.ravel(xp.broadcast_to({text}, {self.shape!r}))")
            self.block_inputs.append(f"{key}b = {key}w[i:j]")
            c_value = self.c_twin.broadcast_array(key, atom.aval, *pattern)
        if isinstance(atom, Var):
            self._define_local(atom, f"{key}b", c_value)
        return f"{key}b", c_value

    def _parameter(self, text: str) -> None:
        if text not in self.params:
            self.params.append(text)

    def _define_local(self, var, local: str, c_value: str | None = None) -> None:
        self.local[id(var)] = local
        self.c_value[id(var)] = local if c_value is None else c_value

    def release(self, eqn, pos: int) -> None:
        """Give back the scratch buffers of inputs dying at ``pos`` (reused in place)."""
        for a in eqn.inputs:
            if isinstance(a, Var) and self.last_use.get(id(a)) == pos and id(a) in self.owner:
                self.buffers.give(*self.owner.pop(id(a)))

    def target(self, out) -> str:
        """Where a block of ``out`` is written: its full-size result when read after the
        run, else a scratch buffer (inputs dying here are released first, for reuse)."""
        dtype = out.aval.dtype.name
        if self.writer.needed_after(out, self.segment[-1]):
            full = f"e{len(self.exports)}"
            self.exports.append((full, out))
            self.c_pending.append(out)
            self.export_lines.append(f"{full} = xp.empty({self.size}, _dt_{dtype})")
            self.writer.bound.namespace[f"_dt_{dtype}"] = out.aval.dtype
            return f"{full}[i:j]"
        buf = self.buffers.take(dtype)
        self.owner[id(out)] = (buf, dtype)
        return f"{buf}[:n]"

    def _store_c_exports(self) -> None:
        for var in self.c_pending:
            self.c_twin.export(self.c_value[id(var)], var.aval.dtype)
        self.c_pending.clear()

    # ------------------------------------------------------------ equations

    def sin_and_cos(self, pos: int, partner: int, operand: tuple[str, str]) -> None:
        """sin and cos of one operand (equations ``pos`` and ``partner``): one call."""
        eqn = self.eqns[pos]
        self.release(eqn, pos)
        by_function = {_SINCOS[e.prim.ufunc]: (p, e.outputs[0])
                       for p, e in ((pos, eqn), (partner, self.eqns[partner]))}
        locals_, targets = [], []
        for function in ("sin", "cos"):
            p, var = by_function[function]
            targets.append(self.target(var))
            locals_.append(f"t{p}")
            self._define_local(var, f"t{p}")
        self.body.append(f"{', '.join(locals_)} = _sincos({operand[0]}, out=({', '.join(targets)}))")
        self.writer.bound.namespace["_sincos"] = fastmath.sincos()
        self.c_twin.sin_cos(operand[1], *locals_)
        self._store_c_exports()

    def full_sum(self, pos: int, operand: tuple[str, str]) -> None:
        eqn = self.eqns[pos]
        acc = f"r{len(self.reductions)}"
        self.reductions.append((acc, eqn.outputs[0]))
        self.body.append(f"{acc}.append(_add_reduce({operand[0]}))")
        self.c_twin.add_to_sum(operand[1])
        self.release(eqn, pos)

    def elementwise(self, pos: int, operands: list[tuple[str, str]]) -> None:
        eqn = self.eqns[pos]
        out = eqn.outputs[0]
        # An input dying here may be overwritten in place, except by a complex result:
        # NumPy's complex loops are not always the same in place (a one-element complex
        # multiply in place rounds differently from the same multiply into a new array).
        in_place = out.aval.dtype.kind != "c"
        if in_place:
            self.release(eqn, pos)
        target, local = self.target(out), f"t{pos}"
        if not in_place:
            self.release(eqn, pos)
        self._define_local(out, local)
        self.c_twin.op(eqn, [c for _, c in operands], local)
        self._store_c_exports()
        ops = [text for text, _ in operands]
        call = eqn.prim.as_ufunc(eqn.params)
        if call is None:  # where: no out= form; compute the block, then store it
            self.body += [f"{local} = {target}", f"{local}[...] = xp.where({', '.join(ops)})"]
            return
        ufunc, extra = call
        args = ops + [repr(v) for v in extra]
        self.body.append(f"{local} = xp.{ufunc.__name__}({', '.join(args)}, out={target})")

    # ------------------------------------------------------------ the kernel

    def write(self) -> list[str] | None:
        """The program's lines calling the kernel (None when nothing reads its results);
        its function's lines go to ``definition``."""
        pairs = sincos_pairs(self.eqns) if fastmath.sincos() is not None else {}
        computed: set[int] = set()  # positions already done by an earlier sincos call
        for pos, eqn in enumerate(self.eqns):
            if pos in computed:
                self.release(eqn, pos)
                continue
            operands = [self.operand(a) for a in eqn.inputs]
            if pos in pairs:
                computed.add(pairs[pos])
                self.sin_and_cos(pos, pairs[pos], operands[0])
            elif eqn.prim.name == "reduce_sum":
                self.full_sum(pos, operands[0])
            else:
                self.elementwise(pos, operands)
        results = [v for _, v in self.exports] + [v for _, v in self.reductions]
        if not results:
            return None
        names = [self.writer.define(v) for v in results]
        self.definition = self._function()
        defined = {id(o) for e in self.eqns for o in e.outputs}
        consumed = [a for e in self.eqns for a in e.inputs if isinstance(a, Var) and id(a) not in defined]
        dead = self.writer.freed(consumed, self.segment[0], self.segment[-1])
        call = f"{', '.join(names)}, = {self.name}({', '.join(self.params)})"
        return [call] + (["del " + ", ".join(dead)] if dead else [])

    def _function(self) -> list[str]:
        namespace = self.writer.bound.namespace
        for _, dtype in self.buffers.allocs:
            namespace[f"_dt_{dtype}"] = np.dtype(dtype)
        namespace.update(_run_blocks=run_blocks, _combine=combine, _add_reduce=np.add.reduce)
        self.spans_name = self.writer.bound.bind_value(self.spans, "spans")
        self._unfused_lines()  # first: it may add parameters (a part's constants)
        lines = [f"def {self.name}({', '.join(self.params)}):"]
        if self.size < python_block_min():
            return lines + [f"    {line}" for line in self._compiled_or_unfused()]
        lines += [f"    {line}" for line in self._layout_guard()]
        lines += [f"    {line}" for line in self.flat_inputs + self.export_lines]
        lines += ["    def chunk(lo, hi):"]
        lines += [f"        {name} = xp.empty({self.max_block}, _dt_{dtype})"
                  for name, dtype in self.buffers.allocs]
        lines += [f"        {acc} = []" for acc, _ in self.reductions]
        lines += [f"        for i, j in {self.spans_name}[lo:hi]:",
                  "            n = j - i"]
        lines += [f"            {line}" for line in self.block_inputs + self.body]
        lines.append(f"        return ({''.join(acc + ', ' for acc, _ in self.reductions)})")
        return lines + self._run_lines() + [f"    return ({', '.join(self._results())},)"]

    def _layout_guard(self) -> list[str]:
        """Lines running the unfused equations instead when the kernel would not compute
        what they do (see :meth:`_layout_condition`)."""
        condition = self._layout_condition()
        if condition is None:
            return []
        return [f"if not {condition}:"] + [f"    {line}" for line in self._unfused_lines()]

    def _layout_condition(self) -> str | None:
        """The test that the kernel computes what the unfused program would (None: it
        always does): every array input C-contiguous. Why, for each other layout:
        F-ordered (or transposed) inputs make NumPy's results F-ordered, where the kernel
        writes C order: the same values, but a later sum along an axis walks memory in
        another order and rounds differently (a reviewer's repro), and NumPy sums an
        input summed as it is one contiguous stretch at a time. Strided inputs (``x[::2]``,
        ``x[::-1]``) are copied by ``ravel``, and NumPy's SIMD loops (``exp`` on AVX-512)
        give other bits on a contiguous copy than on the strided original. Such calls run
        the equations unfused."""
        if not self.full_params:
            return None
        self.writer.bound.namespace["_c_contiguous"] = c_contiguous
        return f"({' and '.join(f'_c_contiguous({t})' for t in self.full_params)})"

    def _unfused_lines(self) -> list[str]:
        """The run's equations one by one on full-size values, as the unfused program spells
        them, returning what the kernel returns (written once: see _function)."""
        if self._fallback is not None:
            return self._fallback
        names: dict[int, str] = {}
        lines = []
        for pos, eqn in enumerate(self.eqns):
            ops = [names[id(a)] if isinstance(a, Var) and id(a) in names else self.writer.operand(a)
                   for a in eqn.inputs]
            out = names[id(eqn.outputs[0])] = f"u{pos}"
            lines.append(f"{out} = {self.writer.expression(eqn, ops)}")
        results = [names[id(v)] for _, v in self.exports] + [names[id(v)] for _, v in self.reductions]
        part = self.writer.part
        if part is not None:  # constants the spelled equations read as the part's parameters
            used = set(re.findall(r"\b_?p\d+\b", "\n".join(lines)))
            for name in part.params:
                if name in used:
                    self._parameter(name)
        self._fallback = lines + [f"return ({', '.join(results)},)"]
        return self._fallback

    def _compiled_or_unfused(self) -> list[str]:
        """A mid-size block's body (see the module's docstring): the C twin when it is ready
        and the inputs suit it, else the equations unfused (never the NumPy block loop,
        which costs more than it saves on arrays this small)."""
        compiled = self.c_twin.kernel(self.spans)
        if compiled is None:
            why = f" (no compiled twin: {self.c_twin.refused})" if self.c_twin.refused else ""
            return [f"# unfused{why}"] + self._unfused_lines()
        condition = self._layout_condition()  # else the C twin may differ from NumPy
        compiled_lines = (self.flat_inputs + self.export_lines + self._compiled_call(compiled)
                          + ["if parts is not None:", f"    return ({', '.join(self._results())},)"])
        if condition is not None:
            compiled_lines = [f"if {condition}:"] + [f"    {line}" for line in compiled_lines]
        return compiled_lines + self._unfused_lines()

    def _compiled_call(self, compiled) -> list[str]:
        """The line calling the C twin (and a comment when it is a fast-math one)."""
        self.writer.bound.namespace[f"_ck{self.index}"] = compiled
        arrays = "".join(name + ", " for name, _ in self.c_twin.arrays)
        outputs = "".join(full + ", " for full, _ in self.exports)
        scalars = "".join(name + ", " for name in self.c_twin.scalars)
        fast = [f"# fast math: its compiled twin may differ from NumPy by {ckernel.ULP_BOUND} "
                "ulp per libm call"] if compiled.fast_source is not None else []
        return fast + [f"parts = _ck{self.index}(({arrays}), ({outputs}), ({scalars}))"]

    def _run_lines(self) -> list[str]:
        """Run the C twin when it is ready (and the inputs suit it), else the NumPy kernel."""
        numpy_kernel = f"_run_blocks(chunk, {self.spans_name})"
        compiled = self.c_twin.kernel(self.spans)
        numpy_lines = self.loop_inputs + [f"parts = {numpy_kernel}"]
        if compiled is None:
            why = [f"    # no compiled twin: {self.c_twin.refused}"] if self.c_twin.refused else []
            return why + [f"    {line}" for line in numpy_lines]
        call = [f"    {line}" for line in self._compiled_call(compiled)]
        return call + ["    if parts is None:"] + [f"        {line}" for line in numpy_lines]

    def _results(self) -> list[str]:
        texts = [f"{full}.reshape({v.aval.shape!r})" for full, v in self.exports]
        tree = self.writer.bound.bind_value(self.tree, "tree") if self.reductions else None
        for i, (acc, v) in enumerate(self.reductions):
            total = f"_combine(parts, {i}, _dt_{v.aval.dtype.name}, {tree})"
            self.writer.bound.namespace[f"_dt_{v.aval.dtype.name}"] = v.aval.dtype
            texts.append(total if v.aval.shape == () else f"xp.reshape({total}, {v.aval.shape!r})")
        return texts


_SINCOS = {np.sin: "sin", np.cos: "cos"}


def sincos_pairs(eqns) -> dict[int, int]:
    """``{first position: partner position}`` for each sin and cos of one float64 operand
    in a run (the first of the two computes both with the ``sincos`` ufunc)."""
    first_seen: dict[tuple[str, int], int] = {}
    pairs: dict[int, int] = {}
    for pos, eqn in enumerate(eqns):
        name, operand = _SINCOS.get(eqn.prim.ufunc), eqn.inputs[0]
        if name is None or not isinstance(operand, Var) \
                or operand.aval.dtype != np.float64 or eqn.outputs[0].aval.dtype != np.float64:
            continue
        key = id(operand)
        other = ("cos" if name == "sin" else "sin", key)
        if other in first_seen:
            pairs[first_seen.pop(other)] = pos
        else:
            first_seen.setdefault((name, key), pos)
    return pairs


# ============================================================================ running

def combine(parts: list, index: int, dtype, tree):
    """Reduction ``index`` of a block kernel (a NumPy scalar of dtype): its per-block sums
    (``parts``: each thread's, in block order) added up as ``tree`` says (:func:`sum_plan`:
    NumPy's pairwise tree above the blocks), in ``dtype``, then added to NumPy's identity
    by ``np.add.reduce`` itself (it turns a -0.0 total into 0.0, as ``np.sum`` does). So
    the result is ``np.sum``'s, bit for bit, for every thread count, from the NumPy kernel
    and its compiled twin alike."""
    block_sums = [s for part in parts for s in part[index]]
    to = dtype.type

    def add(t):
        return to(block_sums[t]) if type(t) is int else add(t[0]) + add(t[1])

    return to(np.add.reduce(np.array([add(tree)], dtype)))


def c_ordered(a) -> bool:
    """Would NumPy lay out a ufunc's result on ``a`` (and on other C-ordered operands) in
    C order? Its axes of more than one element have non-increasing stride sizes."""
    flags = getattr(a, "flags", None)
    if flags is None or flags.c_contiguous:
        return True  # (not an array: NumPy makes a C-ordered one of it)
    sizes = [abs(st) for st, n in zip(a.strides, a.shape) if n > 1]
    return all(p >= q for p, q in zip(sizes, sizes[1:]))


def c_contiguous(a) -> bool:
    flags = getattr(a, "flags", None)
    return flags is None or flags.c_contiguous
