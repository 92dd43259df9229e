"""Blocked, multi-threaded evaluation of elementwise chains on large arrays (numpy engine).

A run of consecutive elementwise equations over arrays of one large shape (plus full
``reduce_sum`` s of them) becomes one generated *block kernel*: the arrays are walked
in blocks of ``BLOCK`` elements that stay in cache; every equation is the same NumPy
ufunc as unfused, called with ``out=`` into a small per-thread scratch buffer (or
straight into the result array for values needed after the run); the blocks are split
between threads (NumPy releases the GIL inside ufunc loops).

Why this rather than numexpr: on W4 (bench/) numexpr took 23 ms where this takes 18 ms
(hand-written NumPy: 37-42 ms), because NumPy's own SIMD ``exp``/``log`` loops are kept;
and elementwise results are *bit-identical* to the unfused program (same ufunc loops on
the same values). Only fused sums change, by reassociation (blockwise partial sums).
Intermediates never exist at full size, so peak memory drops too.

Sin and cos of one float64 operand in a run share one call of the ``sincos`` ufunc
(:mod:`diffprog.engines.fastmath`, used only where it is bit-identical to np.sin/np.cos):
on W4's gradient that cuts the kernel from 35 to 30 ms on 2 threads. Small scalar work
between big elementwise equations is moved after them first (:func:`sink_small_work`),
so a gradient's elementwise work stays one kernel.

Each block kernel also gets a compiled C twin (:mod:`diffprog.engines.ckernel`) that
computes all equations of an element in registers; it runs once built and checked, with
the same results. Blocks are the unit of work for both, and fused sums are added up per
block in block order, so results do not depend on the thread count.

Arrays smaller than ``min_size()`` elements are left alone: there the per-block Python
overhead and thread hand-off cost more than they save. Measured on W2 (a 256x256 run of
three cheap ops) on a loaded 2-core machine: unfused 0.97 ms, fused 1.27 ms, so the
default (2**18) leaves it alone; W4 (1e6 elements) gains 2x.

Settings (environment, read when a program is compiled):
``DIFFPROG_FUSE_MIN``  smallest array size (elements) fused; default 262144; 0 turns fusion off.
``DIFFPROG_THREADS``   worker threads; default: the CPUs this process may use.
"""
from __future__ import annotations

import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..ir import Lit, Var
from . import ckernel, fastmath

BLOCK = 16384
DEFAULT_MIN_SIZE = 262144

def min_size() -> int:
    try:
        return int(os.environ.get("DIFFPROG_FUSE_MIN", DEFAULT_MIN_SIZE))
    except ValueError:
        return DEFAULT_MIN_SIZE


def num_threads() -> int:
    try:
        n = int(os.environ.get("DIFFPROG_THREADS", "0"))
    except ValueError:
        n = 0
    if n <= 0:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n)


# ============================================================================ planning

def _blockable_operand(atom, shape) -> bool:
    s = atom.aval.shape
    return s == shape or s == ()


def _elementwise_in_block(eqn, shape) -> bool:
    prim = eqn.prim
    return (prim.elementwise and not prim.multiple_results and isinstance(prim.impl, str)
            and eqn.outputs[0].aval.shape == shape
            and all(_blockable_operand(a, shape) for a in eqn.inputs)
            and (prim.as_ufunc(eqn.params) is not None or prim.name == "where"))


def _full_sum(eqn, shape) -> bool:
    return (eqn.prim.name == "reduce_sum" and len(eqn.inputs) == 1
            and eqn.inputs[0].aval.shape == shape
            and np.issubdtype(eqn.inputs[0].aval.dtype, np.inexact)
            and tuple(eqn.params.get("axes", ())) == tuple(range(len(shape))))


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
    if threshold <= 0:
        return graph

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


def block_segments(graph, threshold: int) -> list[list[int]]:
    """Equation indices in program order; fusable runs (>= 2 equations, one shape of at
    least ``threshold`` elements, at least one elementwise) grouped together."""
    segments: list[list[int]] = []
    run: list[int] = []
    shape = None

    def close():
        nonlocal run, shape
        if not run:
            return
        elementwise = [i for i in run if not _full_sum(graph.eqns[i], shape)]
        if len(run) > 1 and elementwise:
            segments.append(run)
        else:
            segments.extend([i] for i in run)
        run, shape = [], None

    for idx, eqn in enumerate(graph.eqns):
        out_shape = eqn.outputs[0].aval.shape if eqn.outputs else None
        candidate = eqn.inputs[0].aval.shape if eqn.prim.name == "reduce_sum" and eqn.inputs \
            else out_shape
        big = threshold > 0 and candidate is not None and math.prod(candidate) >= threshold
        if big and (_elementwise_in_block(eqn, candidate) or _full_sum(eqn, candidate)):
            if shape is not None and candidate != shape:
                close()
            if not run and _full_sum(eqn, candidate):  # a run starts with elementwise work
                segments.append([idx])
                continue
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


def render_block_kernel(graph, segment, k, *, names, define, operand, last_use, out_ids, b):
    """Source of one block kernel and the line calling it.

    Returns ``(call_line, helper_lines, consumed_vars)``; ``call_line`` is None when no
    value of the run is used afterwards. ``names``/``define``/``operand`` are the code
    generator's naming functions; ``b`` its SourceBuilder (for bound constants).
    """
    eqns = [graph.eqns[i] for i in segment]
    last = segment[-1]
    shape = eqns[0].outputs[0].aval.shape if eqns[0].prim.name != "reduce_sum" else eqns[0].inputs[0].aval.shape
    size = math.prod(shape)
    inside: dict[int, str] = {}     # var id -> block-local name
    params: list[str] = []          # kernel parameters (program names of outside values)
    flat_inputs: list[str] = []     # lines preparing full-size inputs
    block_inputs: list[str] = []    # lines slicing inputs per block
    export_lines: list[str] = []    # lines allocating full-size results
    body: list[str] = []
    reductions: list[tuple[str, Var]] = []  # (accumulator, output var)
    exports: list[tuple[str, Var]] = []     # (full array name, var) of elementwise results
    buffers = _Buffers()
    owner: dict[int, tuple[str, str]] = {}  # var id -> scratch buffer it occupies
    cb = ckernel.BlockBuilder(BLOCK)        # the block's C twin, built alongside
    c_names: dict[int, str] = {}            # var id -> its C value
    local_last = {}
    for pos, eqn in enumerate(eqns):
        for a in eqn.inputs:
            if isinstance(a, Var):
                local_last[id(a)] = pos

    def needed_after(v) -> bool:
        return id(v) in out_ids or last_use.get(id(v), -1) > last

    def block_operand(atom) -> tuple[str, str]:
        """The operand's name in the NumPy block kernel, and its C value."""
        if isinstance(atom, Var) and id(atom) in inside:
            return inside[id(atom)], c_names[id(atom)]
        text = operand(atom)
        if atom.aval.shape == ():
            if isinstance(atom, Var) or text.startswith("_"):
                if text not in params:
                    params.append(text)
                return text, cb.scalar(text, atom.aval)
            return text, cb.literal(atom.value)  # a literal number
        key = f"i{len(flat_inputs)}"
        if text not in params:
            params.append(text)
        flat_inputs.append(f"{key} = xp.ravel({text})")
        block_inputs.append(f"{key}b = {key}[i:j]")
        c_value = cb.array(key, atom.aval)
        if isinstance(atom, Var):
            inside[id(atom)] = f"{key}b"
            c_names[id(atom)] = c_value
        return f"{key}b", c_value

    def release(eqn, pos):
        for a in eqn.inputs:
            if isinstance(a, Var) and local_last.get(id(a)) == pos and id(a) in owner:
                buffers.give(*owner.pop(id(a)))

    c_exports: list[Var] = []  # results exported but not yet stored by the C twin

    def define_local(var, local: str) -> None:
        c_names[id(var)] = local
        inside[id(var)] = local

    def c_store_exports() -> None:
        for var in c_exports:
            cb.export(c_names[id(var)], var.aval.dtype)
        c_exports.clear()

    def target_for(out, pos) -> str:
        """Where a block of ``out`` is written: its full-size result when needed after the
        run, else a scratch buffer (callers release dying inputs first, for reuse)."""
        dtype = out.aval.dtype.name
        if needed_after(out):
            full = f"e{len(exports)}"
            exports.append((full, out))
            c_exports.append(out)
            export_lines.append(f"{full} = xp.empty({size}, _dt_{dtype})")
            b.namespace[f"_dt_{dtype}"] = out.aval.dtype
            return f"{full}[i:j]"
        buf = buffers.take(dtype)
        owner[id(out)] = (buf, dtype)
        return f"{buf}[:n]"

    pairs = sincos_pairs(eqns) if fastmath.sincos() is not None else {}
    computed: set[int] = set()  # positions already done by an earlier sincos call
    for pos, eqn in enumerate(eqns):
        if pos in computed:
            release(eqn, pos)
            continue
        operands = [block_operand(a) for a in eqn.inputs]
        ops = [text for text, _ in operands]
        c_ops = [c_value for _, c_value in operands]
        out = eqn.outputs[0]
        if pos in pairs:  # sin and cos of this operand: one sincos call, here
            partner = pairs[pos]
            computed.add(partner)
            release(eqn, pos)
            by_name = {_SINCOS[eqn.prim.ufunc]: (pos, out),
                       _SINCOS[eqns[partner].prim.ufunc]: (partner, eqns[partner].outputs[0])}
            locals_, targets = [], []
            for name in ("sin", "cos"):
                p, v = by_name[name]
                targets.append(target_for(v, p))
                locals_.append(f"t{p}")
                define_local(v, f"t{p}")
            body.append(f"{', '.join(locals_)} = _sincos({ops[0]}, out=({', '.join(targets)}))")
            b.namespace["_sincos"] = fastmath.sincos()
            cb.sin_cos(c_ops[0], *locals_)
            c_store_exports()
            continue
        if eqn.prim.name == "reduce_sum":
            acc = f"r{len(reductions)}"
            reductions.append((acc, out))
            body.append(f"{acc}.append(_add_reduce({ops[0]}))")
            cb.add_to_sum(c_ops[0])
            release(eqn, pos)
            continue
        release(eqn, pos)  # an input dying here may be overwritten in place
        target = target_for(out, pos)
        local = f"t{pos}"
        define_local(out, local)
        cb.op(eqn, c_ops, local)
        c_store_exports()
        call = eqn.prim.as_ufunc(eqn.params)
        if call is None:  # where: no out= form; compute the block, then store it
            body.append(f"{local} = {target}")
            body.append(f"{local}[...] = xp.where({', '.join(ops)})")
            continue
        ufunc, extra = call
        args = ops + [repr(v) for v in extra]
        body.append(f"{local} = xp.{ufunc.__name__}({', '.join(args)}, out={target})")

    outs_after = [(full, v) for full, v in exports] + [(acc, v) for acc, v in reductions]
    if not outs_after:
        return None, [], []
    result_names = []
    for v in [v for _, v in outs_after]:
        result_names += define_one(define, v)

    kname = f"_block{k}"
    for name, dtype in buffers.allocs:
        b.namespace[f"_dt_{dtype}"] = np.dtype(dtype)
    lines = [f"def {kname}({', '.join(params)}):"]
    lines += [f"    {line}" for line in flat_inputs + export_lines]
    lines.append("    def chunk(lo, hi):")
    lines += [f"        {name} = xp.empty({BLOCK}, _dt_{dtype})" for name, dtype in buffers.allocs]
    lines += [f"        {acc} = []" for acc, _ in reductions]
    lines.append(f"        for i in range(lo, hi, {BLOCK}):")
    lines.append(f"            j = i + {BLOCK} if i + {BLOCK} < hi else hi")
    lines.append("            n = j - i")
    lines += [f"            {line}" for line in block_inputs + body]
    lines.append(f"        return ({''.join(acc + ', ' for acc, _ in reductions)})")
    compiled = cb.kernel(size)
    if compiled is None:
        if cb.refused:
            lines.append(f"    # no compiled twin: {cb.refused}")
        lines.append(f"    parts = _run_chunks(chunk, {size}, {BLOCK})")
    else:  # the C twin when it is ready (and the inputs suit it), else the NumPy kernel
        b.namespace[f"_ck{k}"] = compiled
        lines.append(f"    parts = _ck{k}(({''.join(n + ', ' for n, _ in cb.arrays)}), "
                     f"({''.join(full + ', ' for full, _ in exports)}), "
                     f"({''.join(n + ', ' for n in cb.scalars)}))")
        lines.append("    if parts is None:")
        lines.append(f"        parts = _run_chunks(chunk, {size}, {BLOCK})")
    rets = []
    for full, v in exports:
        rets.append(f"{full}.reshape({v.aval.shape!r})")
    for i, (acc, v) in enumerate(reductions):
        total = f"_combine(parts, {i}, _dt_{v.aval.dtype.name})"
        b.namespace[f"_dt_{v.aval.dtype.name}"] = v.aval.dtype
        rets.append(total if v.aval.shape == () else f"xp.reshape({total}, {v.aval.shape!r})")
    lines.append(f"    return ({', '.join(rets)},)")
    b.namespace["_run_chunks"] = run_chunks
    b.namespace["_combine"] = combine
    b.namespace["_add_reduce"] = np.add.reduce
    call_line = f"{', '.join(result_names)}, = {kname}({', '.join(params)})"
    defined = {id(o) for e in eqns for o in e.outputs}
    consumed = [a for e in eqns for a in e.inputs if isinstance(a, Var) and id(a) not in defined]
    return call_line, lines, consumed


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


def define_one(define, var):
    class _E:  # define() names the outputs of an equation-like object
        outputs = [var]
    return define(_E)


# ============================================================================ running

# (pool, its size): one tuple, replaced whole, so a reader never sees half an update.
# A pool is never shut down while the process runs: another thread may have fetched it and
# be about to submit (shutting it down made that submit fail). When more workers are
# needed the pool is replaced by a bigger one; the old one's threads finish what was
# submitted and exit once no caller holds it. Threads start only when work waits, so a
# pool sized for the largest request costs nothing until used.
_POOL: list = [(None, 0)]
_POOL_LOCK = threading.Lock()


def _forget_pool_in_child() -> None:
    # a forked child has none of the parent's threads: handing work to the inherited pool
    # would wait forever, so the child starts its own
    global _POOL_LOCK
    _POOL[0] = (None, 0)
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def worker_pool(workers: int) -> ThreadPoolExecutor:
    """A pool with at least ``workers`` threads, shared by every caller; callers limit
    their parallelism by how many calls they submit."""
    pool, size = _POOL[0]
    if size >= workers:  # the common case: no lock
        return pool
    with _POOL_LOCK:
        pool, size = _POOL[0]
        if size < workers:
            size = max(workers, num_threads() - 1)
            pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="diffprog")
            _POOL[0] = (pool, size)
        return pool


def _with_errstate(fn, err):
    def run(lo, hi):
        with np.errstate(**err):  # the caller's np.errstate applies in worker threads too
            return fn(lo, hi)
    return run


def run_chunks(chunk, size: int, block: int) -> list:
    """Run ``chunk(lo, hi)`` over ``range(size)`` split (on block boundaries) between threads;
    the partial results in order. The calling thread takes the first part itself."""
    n_blocks = -(-size // block)
    threads = min(num_threads(), n_blocks)
    if threads <= 1:
        return [chunk(0, size)]
    cuts = [min(size, (n_blocks * t // threads) * block) for t in range(threads + 1)]
    work = _with_errstate(chunk, np.geterr())
    calls = [functools.partial(chunk, 0, cuts[1])]  # the calling thread keeps its errstate
    calls += [functools.partial(work, cuts[t], cuts[t + 1]) for t in range(1, threads)]
    return run_parallel(calls)


def run_parallel(calls: list) -> list:
    """``[call() for call in calls]``, the first on the calling thread and the rest at the
    same time on the worker pool (block kernels and their compiled twins share it)."""
    if len(calls) <= 1:
        return [call() for call in calls]
    futures = [worker_pool(len(calls) - 1).submit(call) for call in calls[1:]]
    first = calls[0]()
    return [first] + [f.result() for f in futures]


def combine(parts: list, index: int, dtype):
    """Reduction ``index`` of a block kernel (a NumPy scalar of dtype): NumPy's pairwise sum
    of its per-block sums in block order. Why in block order: the result is then the same
    for every thread count, and the same for the NumPy kernel and its compiled twin."""
    block_sums = [s for part in parts for s in part[index]]
    return dtype.type(np.add.reduce(np.asarray(block_sums, dtype)))
