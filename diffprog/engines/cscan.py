"""Compiled C loops for ``dp.scan`` over small values (the numpy engine).

Why: a scan runs its body once per step, and a body of a few hundred equations on
scalars or 2-element arrays costs ~100 us of Python and NumPy dispatch per step (W3s in
bench/: 100 RK4 steps forward and backward, 16 ms by hand-written NumPy 14 ms). Here the
whole loop becomes one C function: every value of the body is *scalarised* (an array of
shape (2,) is two C doubles, all shapes being static), shape operations (slice, reshape,
concatenate, broadcast_to, transpose, pack_scalars, static scatter_add) only rename
elements, elementwise equations become one C statement per element spelled from the
primitive table's ``c`` entries, and a sum is NumPy's own summation order (pairwise, on
the identity 0.0). The carry stays in registers for all steps. A scan inside the body
(an ODE solver's steps inside its output intervals, a checkpointed loop) becomes a C
loop inside the loop.

What NumPy computes in routines of its own is computed by those routines
(:mod:`diffprog.engines.cextern`): a ``matmul`` of vectors and matrices calls the BLAS
function NumPy calls for it (``dgemv``/``ddot``, same arguments) or NumPy's own loop, and
a ufunc whose C spelling differs from NumPy here (``tanh``, ``exp``... where NumPy has
SIMD loops) calls NumPy's inner loop for float64. Both depend on the memory layouts the
Python loop would see (a transposed matrix is another BLAS call), so each body value
carries a model of its layout: a NumPy array of the same shape and strides, made from its
operands' models by the NumPy operation the Python loop runs (views stay views, a reshape
copies where NumPy's does, ufunc outputs follow NumPy's order). Such a loop is made for
the layouts of the inputs it is called with (the numpy engine's CompiledScan keeps one
per layout seen), and when the carries leave a step in other layouts than they came in
with (an init that is a strided view) and that changes the code, the first step is
peeled. Integer xs and constants (odeint's step counter) are C doubles, which is what
NumPy casts them to where they meet floats; integer arithmetic is refused.

Results are bit-identical to the Python loop: the same probes as the fused kernels
(:mod:`diffprog.engines.ckernel`) decide which C spellings reproduce NumPy here, each
product and called loop is compared with NumPy once per process (cextern's probes), the
compiler runs without fast-math or contraction, and when a step raises a floating-point
flag that ``np.errstate`` wants reported the loop runs again in Python (which reports it
as NumPy does; a called routine's flags are collected before the next call, which may
clear them). A body holding anything else (products of two matrices, gathers with index
arrays, other dtypes, values over ``MAX_ELEMENTS``) keeps the Python loop; so does every
call until the library is built on the background compile thread. The scans inside a
compiled one get no loop of their own unless it is refused (numpy.NestedScan).
``status()`` in ckernel lists these loops beside the block kernels; ``DIFFPROG_CKERNELS=0``
turns them off.
"""
from __future__ import annotations

import ctypes
import hashlib

import numpy as np

from ..ir import Lit
from . import cextern, ckernel
from .ckernel import c_literal, dtype_refusal

_F64, _BOOL = np.dtype(np.float64), np.dtype(np.bool_)
MAX_ELEMENTS = 256         # elements of one body value
MAX_STATEMENTS = 20000     # C statements of one loop body (compile time grows with them)
# a loop of more lines is compiled at -O1: half the compile time of -O3 (0.7 s for the
# neural ODE's backward loop, 2900 lines), no slower there (its time is in BLAS calls);
# first at -O0 when -O1 is not in the disk cache (see _Faster)
LONG_LINES = 1000
_VIEWS = ("slice", "reshape", "transpose", "broadcast_to")


class Refused(Exception):
    pass


def _pairwise(elems: list[str]) -> str:
    """NumPy's DOUBLE_pairwise_sum of ``elems`` as one C expression (its exact order)."""
    n = len(elems)
    if n < 8:
        res = "0.0"
        for e in elems:
            res = f"({res} + {e})"
        return res
    if n <= 128:
        r = list(elems[:8])
        i = 8
        while i < n - (n % 8):
            for k in range(8):
                r[k] = f"({r[k]} + {elems[i + k]})"
            i += 8
        res = f"((({r[0]} + {r[1]}) + ({r[2]} + {r[3]})) + (({r[4]} + {r[5]}) + ({r[6]} + {r[7]})))"
        for e in elems[i:]:
            res = f"({res} + {e})"
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return f"({_pairwise(elems[:n2])} + {_pairwise(elems[n2:])})"


def _static_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis
               for i in items)


def _ok_input(aval) -> bool:
    return aval.dtype == _F64 or (aval.weak and aval.dtype.kind in "iuf")


def _integer(aval) -> bool:
    """An array of integers (a loop counter, say): its elements are C doubles, which is
    what NumPy casts them to wherever they meet floats; integer arithmetic is refused."""
    return aval.dtype.kind in "iu" and not aval.weak


# elementwise equations that may take integers: NumPy casts them to float64 for these when
# the result is float64 (the float64 loop), as the C double arithmetic does
_ON_FLOATS = {"add", "sub", "mul", "div", "maximum", "minimum", "where"}


def _integer_refusal(eqn) -> str | None:
    name = eqn.prim.name
    avals = [a.aval for a in eqn.inputs]
    if name not in _ON_FLOATS or eqn.outputs[0].aval.dtype != _F64:
        return f"{name} on {', '.join(str(a) for a in avals)}"
    if name == "where" and (avals[0].dtype != _BOOL or avals[0].weak):
        return f"where on {', '.join(str(a) for a in avals)}"
    start = 1 if name == "where" else 0
    if not all(a.dtype == _F64 or a.dtype.kind in "iu" or (a.weak and a.dtype.kind == "f")
               for a in avals[start:]):
        return f"{name} on {', '.join(str(a) for a in avals)}"
    return None


# ---------------------------------------------------------------- memory layouts
#
# A layout is a NumPy array ("dummy") with the shape, dtype and strides the value has in
# the Python loop (None: unknown). Views are made by NumPy itself from the operand's
# dummy, so a reshape that copies or a transpose that does not is modelled as NumPy does.

def _fresh(aval) -> np.ndarray:
    dtype = aval.dtype if aval.dtype.kind in "biuf" else _F64
    return np.zeros(aval.shape, dtype)


def _layout_key(d):
    """Strides on the axes longer than 1 (the others are never read)."""
    return None if d is None else tuple(s if n > 1 else 0 for n, s in zip(d.shape, d.strides))


def _is_c(d) -> bool:
    return d is not None and _layout_key(d) == _layout_key(np.zeros(d.shape, d.dtype))


def _view_layout(name, d, p):
    if d is None:
        return None
    if name == "slice":
        return np.asarray(d[p["index"]])
    if name == "reshape":
        return d.reshape(p["shape"])
    if name == "transpose":
        return d.transpose(p["axes"])
    return np.broadcast_to(d, p["shape"])


def _elementwise_layout(eqn, lays):
    """NumPy's output layout (order K) for these operand layouts."""
    out = eqn.outputs[0].aval
    if all(d is not None and (d.ndim == 0 or _is_c(d)) for d in lays):
        return _fresh(out)
    if any(d is None for d in lays):
        return None
    try:
        with np.errstate(all="ignore"):
            r = np.asarray(eqn.prim.evaluate(np, *lays, **eqn.params))
    except Exception:  # noqa: BLE001 - unknown: whatever needs it is refused
        return None
    return r if r.shape == out.shape else None


def _memory_order(d):
    """The order NumPy's loop walks a contiguous operand in: "C", "F", or None."""
    if d is None:
        return None
    if d.size <= 1 or d.flags.c_contiguous:
        return "C"
    return "F" if d.flags.f_contiguous else None


_HEADER = """\
typedef {blasint} dp_blasint;
typedef void (*dp_gemv_fn)(int, int, dp_blasint, dp_blasint, double, const double *, dp_blasint,
                           const double *, dp_blasint, double, double *, dp_blasint);
typedef double (*dp_dot_fn)(dp_blasint, const double *, dp_blasint, const double *, dp_blasint);
"""


class _Body:
    """The scalarised body: C statements per step, each value an object array of C names
    (and a layout, see above)."""

    def __init__(self):
        self.lines: list[str] = []
        self.ctype: dict[str, str] = {}
        self.needs: set[str] = set()
        self.count = 0
        self.externals: list[str] = []     # ext[k] of the C function: "dgemv", "loop:tanh"...
        self.loops: dict[str, np.ufunc] = {}  # primitive -> ufunc whose loop is an alternative
        self.loop_gaps: set[str] = set()   # primitives with an occurrence that has no loop form
        self.plans: dict = {}              # matmul plan key -> (plan, shape1, shape2)
        self.in_offset: dict[str, int] = {}  # name of a value read from in[] -> its offset
        self.decisions: list = []          # what the layouts decided (see steps)

    def fresh(self, ctype="double") -> str:
        self.count += 1
        name = f"t{self.count}"
        self.ctype[name] = ctype
        return name

    def emit(self, *lines: str) -> None:
        self.lines.extend(lines)
        if len(self.lines) > MAX_STATEMENTS:
            raise Refused(f"more than {MAX_STATEMENTS} C statements per step")

    def stmt(self, expr: str, ctype="double") -> str:
        name = self.fresh(ctype)
        self.emit(f"const {ctype} {name} = {expr};")
        return name

    def ext(self, what: str) -> int:
        if what not in self.externals:
            self.externals.append(what)
        return self.externals.index(what)

    def literal(self, lit: Lit) -> np.ndarray:
        value = np.asarray(lit.value)
        if value.dtype.kind not in "iuf" or value.size > MAX_ELEMENTS:
            raise Refused(f"a constant of dtype {value.dtype} and shape {value.shape}")
        out = np.empty(value.shape, object)
        for idx in np.ndindex(value.shape):
            text = c_literal(value[idx])
            if text is None:
                raise Refused(f"the constant {value[idx]!r}")
            out[idx] = text
        return out

    # ------------------------------------------------------------ a graph

    def graph(self, graph, env: dict, lays: dict):
        """Render the equations of ``graph`` (inputs in ``env``/``lays``); returns the
        outputs' names and layouts (an output that is an input, a constant or a repeat is
        a fresh copy in the Python loop, as ProgramWriter.results writes it)."""
        def value(atom):
            return self.literal(atom) if isinstance(atom, Lit) else env[atom]

        def layout(atom):
            return np.asarray(atom.value) if isinstance(atom, Lit) else lays[atom]

        for eqn in graph.eqns:
            outs, out_lays = self.equation(eqn, [value(a) for a in eqn.inputs],
                                           [layout(a) for a in eqn.inputs])
            for v, o, d in zip(eqn.outputs, outs, out_lays):
                if o.shape != v.aval.shape:
                    raise Refused(f"{eqn.prim.name}: shape {o.shape} for {v.aval}")
                env[v], lays[v] = o, d
        inputs, seen, out_lays = {id(v) for v in graph.invars}, set(), []
        for o in graph.outvars:
            copied = isinstance(o, Lit) or id(o) in inputs or id(o) in seen
            out_lays.append(_fresh(o.aval) if copied else lays[o])
            seen.add(id(o))
        return [value(a) for a in graph.outvars], out_lays

    def equation(self, eqn, ins: list[np.ndarray], lays: list) -> tuple[list, list]:
        name, p = eqn.prim.name, eqn.params
        for v in eqn.outputs:
            shape_op = name in _VIEWS or name == "concatenate"
            if not (v.aval.dtype in (_F64, _BOOL) or (shape_op and _integer(v.aval))) \
                    or int(np.prod(v.aval.shape)) > MAX_ELEMENTS:
                raise Refused(f"{name} gives {v.aval}")
        if name == "scan":
            return self.scan(eqn, ins, lays)
        if eqn.prim.elementwise and eqn.prim.c is not None:
            return [self.elementwise(eqn, ins, lays)], [_elementwise_layout(eqn, lays)]
        if any(a.dtype == object and any(self.ctype.get(e) == "int" for e in a.flat)
               for a in ins) and name not in ("slice", "reshape", "broadcast_to", "transpose"):
            raise Refused(f"{name} on bools")
        if name == "matmul":
            return [self.matmul(eqn, ins, lays)], [_fresh(eqn.outputs[0].aval)]
        if name == "copy":  # the same values, laid out as NumPy's copy in that order
            return [ins[0]], [None if lays[0] is None
                              else np.array(lays[0], copy=True, order=p["order"])]
        out = self.shape_op(eqn, ins)
        if name in _VIEWS:
            return [out], [_view_layout(name, lays[0], p)]
        if name == "concatenate":  # NumPy keeps the operands' order (F stays F)
            return [out], [None if any(d is None for d in lays)
                           else np.concatenate(lays, axis=p["axis"])]
        return [out], [_fresh(eqn.outputs[0].aval)]

    def elementwise(self, eqn, ins, lays) -> np.ndarray:
        name, p = eqn.prim.name, eqn.params
        integers = any(_integer(a.aval) for a in eqn.inputs)
        why = _integer_refusal(eqn) if integers else dtype_refusal(eqn)
        if why:
            raise Refused(why)
        self.needs.add(ckernel.spelling_key(name, p))
        out_aval = eqn.outputs[0].aval
        ctype = "int" if out_aval.dtype == _BOOL else "double"
        shape = out_aval.shape
        wide = [np.broadcast_to(a, shape) for a in ins]
        out = np.empty(shape, object)
        first = 1 if name == "where" else 0
        spelled = []
        for idx in np.ndindex(shape):
            values = [w[idx] for w in wide]
            if name not in ckernel._ON_INTS:  # bools take part as 0.0/1.0
                values[first:] = [f"((double){o})" if self.ctype.get(o) == "int" else o
                                  for o in values[first:]]
            out[idx] = self.fresh(ctype)
            spelled.append(f"const {ctype} {out[idx]} = {eqn.prim.c.format(*values, **p)};")
        ufunc = None if integers else ckernel.loop_ufunc(eqn)
        if ufunc is None:
            self.emit(*spelled)
            return out
        self.loops[name] = ufunc
        order = _memory_order(lays[0])
        self.decisions.append((name, order))
        if order is None or any(self.ctype.get(e) == "int" for e in wide[0].flat):
            self.loop_gaps.add(name)
            self.emit(*spelled)
            return out
        # the same statements, or (DP_LOOP_<name>) NumPy's loop over the operand's memory
        n = len(spelled)
        u = f"u{self.count}"
        fn, data = self.ext(f"loop:{name}"), self.ext(f"data:{name}")
        elems = ", ".join(wide[0].ravel(order))
        self.emit(f"#if DP_LOOP_{name}", f"double {u}[{n}];",
                  f"{{ const double {u}_in[{n}] = {{{elems}}}; dp_fl |= fetestexcept(FE_ALL_EXCEPT); "
                  f"dp_call_loop(ext[{fn}], ext[{data}], {u}_in, {u}, {n}); }}",
                  *[f"const double {o} = {u}[{j}];" for j, o in enumerate(out.ravel(order))],
                  "#else", *spelled, "#endif")
        return out

    def shape_op(self, eqn, ins) -> np.ndarray:
        name, p = eqn.prim.name, eqn.params
        x = ins[0] if ins else None
        if name == "slice" and len(ins) == 1 and _static_index(p["index"]):
            return np.asarray(x[p["index"]], dtype=object)
        if name == "reshape":
            return x.reshape(p["shape"])
        if name == "transpose":
            return x.transpose(p["axes"])
        if name == "broadcast_to":
            return np.broadcast_to(x, p["shape"])
        if name == "concatenate":
            return np.concatenate(ins, axis=p["axis"])
        if name == "pack_scalars" and np.dtype(p.get("dtype", _F64)) == _F64:
            out = np.empty(len(ins), object)
            for k, a in enumerate(ins):
                out[k] = a.reshape(())[()]
            return out
        if name == "scatter_add" and len(ins) == 1 and _static_index(p["index"]):
            out = np.full(tuple(p["shape"]), "(0.0)", dtype=object)
            target = out[p["index"]]  # zeros, then the values set (no index arrays: no repeats)
            if isinstance(target, np.ndarray):
                target[...] = x
            else:
                out[p["index"]] = x.reshape(())[()]
            return out
        if name == "reduce_sum" and eqn.outputs[0].aval.dtype == _F64:
            axes = tuple(a % x.ndim for a in p["axes"]) if x.ndim else ()
            out_shape = eqn.outputs[0].aval.shape
            long_axes = [a for a in axes if x.shape[a] > 1]
            if not axes or int(np.prod(out_shape)) != 1 or len(long_axes) > 1:
                raise Refused(f"reduce_sum over axes {p['axes']} of shape {x.shape}")
            total = self.stmt(f"(0.0 + {_pairwise(list(x.reshape(-1)))})")
            return np.full(out_shape, total, dtype=object)
        raise Refused(f"{name} has no scalar C form here")

    # ------------------------------------------------------------ products

    def buffer(self, names: np.ndarray, d: np.ndarray) -> str:
        """A C array holding ``names`` at the byte strides of layout ``d`` (the operand as
        NumPy hands it to BLAS), or the place in ``in`` that already holds them so."""
        steps = []
        for n, s in zip(names.shape, d.strides):
            if n > 1 and (s < 0 or s % 8):
                raise Refused(f"a matmul operand of strides {d.strides}")
            steps.append(s // 8 if n > 1 else 0)
        self.decisions.append(tuple(steps))
        size = 1 + sum((n - 1) * s for n, s in zip(names.shape, steps))
        slots: list = [None] * size
        for idx in np.ndindex(names.shape):
            at = sum(i * s for i, s in zip(idx, steps))
            if slots[at] not in (None, names[idx]):
                raise Refused("a matmul operand whose elements overlap")
            slots[at] = names[idx]
        offsets = [self.in_offset.get(e) for e in slots]
        if offsets[0] is not None and all(o == offsets[0] + k for k, o in enumerate(offsets)):
            return f"(in + {offsets[0]})"
        self.count += 1
        buf = f"b{self.count}"
        self.emit(f"const double {buf}[{size}] = {{{', '.join(e or '0.0' for e in slots)}}};")
        return buf

    def matmul(self, eqn, ins, lays) -> np.ndarray:
        a, b = ins
        la, lb = lays
        if any(v.aval.dtype != _F64 for v in eqn.inputs):
            raise Refused(f"matmul of {', '.join(str(v.aval) for v in eqn.inputs)}")
        if la is None or lb is None:
            raise Refused("a matmul operand of unknown memory layout")
        plan = cextern.matmul_plan(a.shape, la.strides, b.shape, lb.strides)
        if isinstance(plan, str):
            raise Refused(plan)
        if plan.kind != "loop" and cextern.blas() is None:
            raise Refused(cextern.blas_refusal())
        self.plans.setdefault((plan.key, a.shape, b.shape), (plan, a.shape, b.shape))
        self.decisions.append(plan.key)
        out_shape = eqn.outputs[0].aval.shape
        dm, dn, dp = plan.dm, plan.dn, plan.dp
        if plan.kind == "loop":  # NumPy's own loop: each sum from 0, in order
            A, B = a.reshape(dm, dn), b.reshape(dn, dp)
            out = np.empty((dm, dp), object)
            for m in range(dm):
                for q in range(dp):
                    expr = "0.0"
                    for k in range(dn):
                        expr = f"({expr} + ({A[m, k]} * {B[k, q]}))"
                    out[m, q] = self.stmt(expr)
            return out.reshape(out_shape)
        if plan.kind == "dot":
            n, inc1, inc2 = plan.args
            pa, pb = self.buffer(a, la), self.buffer(b, lb)
            r = self.fresh()
            self.emit(f"double {r};", f"dp_fl |= fetestexcept(FE_ALL_EXCEPT); {r} = 0.0 + "
                      f"((dp_dot_fn)ext[{self.ext('ddot')}])({n}, {pa}, {inc1}, {pb}, {inc2});")
            return np.full(out_shape, r, dtype=object)
        order, trans, n, m, lda, incx = plan.args
        (mat, lmat), (vec, lvec) = ((b, lb), (a, la)) if plan.matrix == 2 else ((a, la), (b, lb))
        pm, pv = self.buffer(mat, lmat), self.buffer(vec, lvec)
        self.count += 1
        r = f"m{self.count}"
        self.emit(f"double {r}[{m}] = {{0}};",
                  f"dp_fl |= fetestexcept(FE_ALL_EXCEPT); ((dp_gemv_fn)ext[{self.ext('dgemv')}])"
                  f"({order}, {trans}, {n}, {m}, 1.0, {pm}, {lda}, {pv}, {incx}, 0.0, {r}, 1);")
        return np.array([f"{r}[{j}]" for j in range(m)], dtype=object).reshape(out_shape)

    # ------------------------------------------------------------ loops in the loop

    def steps(self, graph, env: dict, lays: dict, n_carry: int, finish, first: str,
              length: int):
        """The C lines of one step of a loop over ``graph`` (``finish(outputs)``: the
        lines storing its ys and new carries), and the layouts of its outputs on the last
        step. The body is rendered for the layouts of its inputs on the first step; when
        the carries leave it in other layouts (a transposed carry, an init that is a
        strided view), which change the code (products, NumPy's loops), it is rendered
        again for the steps after and the first step is peeled (``if (first) ...``)."""
        start, seen = len(self.lines), len(self.decisions)
        outs, out_lays = self.graph(graph, dict(env), dict(lays))
        self.emit(*finish(outs))
        once, decided = self.lines[start:], self.decisions[seen:]
        del self.lines[start:]
        keys = [_layout_key(d) for d in out_lays[:n_carry]]
        if keys == [_layout_key(lays[v]) for v in graph.invars[:n_carry]]:
            self.lines.extend(once)
            return out_lays
        later = dict(lays)
        for v, d in zip(graph.invars[:n_carry], out_lays[:n_carry]):
            later[v] = d
        outs, steady = self.graph(graph, dict(env), later)
        self.emit(*finish(outs))
        again, decided_again = self.lines[start:], self.decisions[seen + len(decided):]
        del self.lines[start:]
        if [_layout_key(d) for d in steady[:n_carry]] != keys:
            raise Refused("a carry whose memory layout changes from step to step")
        if decided_again == decided:
            self.lines.extend(once)  # the same code for every step
        else:
            self.emit(f"if ({first}) {{", *once, "} else {", *again, "}")
        return steady if length > 1 else out_lays

    def scan(self, eqn, ins, lays) -> tuple[list, list]:
        """A scan in the body: a C loop here (carries in variables of their own, xs in an
        array, ys into arrays declared before it)."""
        p = eqn.params
        graph, n_carry, n_x, length = p["body"].graph, p["n_carry"], p["n_x"], p["length"]
        if length < 1:
            raise Refused("a nested scan of length 0")
        used = _used(graph)
        for k, var in enumerate(graph.invars):
            ok = _ok_input(var.aval) or (k >= n_carry and _integer(var.aval))
            if (id(var) in used or k < n_carry) and (
                    not ok or any(self.ctype.get(e) == "int" for e in ins[k].flat)):
                raise Refused(f"a nested scan's input {var.aval}")
        self.count += 1
        tag = self.count
        s, i = f"s{tag}", f"i{tag}"
        env, envl, carries, reads = {}, {}, [], []
        for k in range(n_carry):
            var = graph.invars[k]
            mine = np.empty(var.aval.shape, object)
            for idx in np.ndindex(mine.shape):
                mine[idx] = self.fresh()
                self.emit(f"double {mine[idx]} = {ins[k][idx]};")
            env[var], envl[var] = mine, lays[k]
            carries.append(mine)
        for k in range(n_carry, n_carry + n_x):
            var = graph.invars[k]
            if id(var) not in used:
                continue
            stacked, size = ins[k], int(np.prod(var.aval.shape))
            buf = f"xs{tag}_{k}"
            self.emit(f"const double {buf}[{stacked.size}] = {{{', '.join(stacked.flat)}}};")
            names = np.empty(var.aval.shape, object)
            for j, idx in enumerate(np.ndindex(names.shape)):
                names[idx] = self.fresh()
                reads.append(f"const double {names[idx]} = {buf}[{i} * {size} + {j}];")
            env[var] = names
            envl[var] = None if lays[k] is None else np.asarray(lays[k][0])
        for k in range(n_carry + n_x, len(graph.invars)):
            var = graph.invars[k]
            if id(var) in used:
                env[var], envl[var] = ins[k], lays[k]
        ys = []
        for v in eqn.outputs[n_carry:]:
            self.count += 1
            size = int(np.prod(v.aval.shape[1:]))
            ys.append((f"y{self.count}", size))
            self.emit(f"double y{self.count}[{length * size}];")

        def finish(outs):
            for o, v in zip(outs, graph.outvars):
                if any(self.ctype.get(e) == "int" for e in o.flat) or _integer(v.aval):
                    raise Refused(f"a nested scan's output {v.aval}")
            lines = [f"{y}[{i} * {size} + {j}] = {e};"
                     for (y, size), o in zip(ys, outs[n_carry:]) for j, e in enumerate(o.flat)]
            new = [(old, self.fresh(), e) for mine, o in zip(carries, outs[:n_carry])
                   for old, e in zip(mine.flat, o.flat)]
            return lines + [f"const double {t} = {e};" for _, t, e in new] \
                + [f"{old} = {t};" for old, t, _ in new]

        self.emit(f"for (int64_t {s} = 0; {s} < {length}; {s}++) {{",
                  f"const int64_t {i} = {f'{length - 1} - {s}' if p['reverse'] else s};",
                  f"(void){i};", *reads)
        out_lays = self.steps(graph, env, envl, n_carry, finish, f"{s} == 0", length)
        self.emit("}")
        results = list(carries) + [
            np.array([f"{y}[{j}]" for j in range(length * size)], dtype=object).reshape(v.aval.shape)
            for (y, size), v in zip(ys, eqn.outputs[n_carry:])]
        return results, list(out_lays[:n_carry]) + [_fresh(v.aval) for v in eqn.outputs[n_carry:]]


def _used(graph) -> set:
    """ids of the variables an equation or the outputs read."""
    used = {id(a) for e in graph.eqns for a in e.inputs if not isinstance(a, Lit)}
    return used | {id(a) for a in graph.outvars if not isinstance(a, Lit)}


class Rendered:
    """A scan's C loop: its source, and what running it needs."""

    def __init__(self, source, body: _Body, skip: frozenset):
        self.source = source
        self.needs = frozenset(body.needs)
        self.externals = tuple(body.externals)
        self.loops = dict(body.loops)
        self.loop_gaps = frozenset(body.loop_gaps)
        self.plans = list(body.plans.values())
        self.skip = skip  # inputs the body does not read (not packed)
        # products and NumPy's loops depend on the inputs' memory layouts: such a loop is
        # rendered for the layouts of the inputs it is called with (see layout_key)
        self.sensitive = bool(self.plans or self.loops)


class ScanKernel:
    """The compiled twin of one scan equation; ``kernel(args)`` gives its outputs, or None
    when it cannot run this time (not built yet, refused, an input of another type or
    layout, or a floating-point flag NumPy's errstate reports): the Python loop then runs."""

    def __init__(self, rendered: Rendered, in_avals, out_avals):
        self.rendered = rendered
        self.source = rendered.source
        self.in_avals, self.out_avals = in_avals, out_avals
        self.needs = rendered.needs
        self.state = "compiling"
        self.runs = 0
        self._fn = None
        self._ext = None
        self._text = None
        self.n_in_values = sum(int(np.prod(a.shape)) for k, a in enumerate(in_avals)
                               if k not in rendered.skip)
        self.out_sizes = [int(np.prod(a.shape)) for a in out_avals]
        self.out_total = sum(self.out_sizes)
        ckernel._submit(self)

    def _choices(self) -> list[str] | str:
        """The #defines choosing each primitive's C spelling or NumPy's loop, or why the
        loop cannot be used (its ``state``)."""
        r = self.rendered
        verdicts = ckernel.probe(r.needs)
        if ckernel._UNBUILT in verdicts:
            return ckernel.refusal(verdicts, ())
        defines, bad = [], []
        for name in sorted(r.needs):
            verdict = verdicts.get(name, "not probed")
            if name in r.loops:
                use_loop = verdict is not None
                if use_loop:
                    why = "an occurrence of a memory layout NumPy's loop does not take" \
                        if name in r.loop_gaps else cextern.loop_refusal(r.loops[name])
                    if why is not None:
                        bad.append(f"{name}: {verdict}; {why}")
                        continue
                defines.append(f"#define DP_LOOP_{name} {int(use_loop)}")
            elif verdict is not None:
                bad.append(f"{name}: {verdict}")
        for plan, shape1, shape2 in r.plans:
            why = cextern.matmul_refusal(plan, shape1, shape2)
            if why is not None:
                bad.append(why)
        if bad:
            return "refused (" + "; ".join(sorted(set(bad))) + ")"
        return defines

    def prepare(self) -> None:
        try:
            choices = self._choices()
            if isinstance(choices, str):
                self.state = choices
                return
            self._text = "".join(d + "\n" for d in choices) + self.source
            if self.source.count("\n") <= LONG_LINES:
                self._load("-O3")
            elif ckernel.cached(self._text, optimize="-O1"):
                self._load("-O1")
            else:  # built at -O0 first (a third of the time), then at -O1 (_Faster)
                self._load("-O0")
                ckernel._submit(_Faster(self))
            self.state = "ready (scan loop)"
        except Exception as exc:  # noqa: BLE001 - the Python loop stays in charge
            self.state = f"failed ({type(exc).__name__}: {exc})"

    def _load(self, optimize: str) -> None:
        fn = ckernel.library(self._text, ("dp_scan",), optimize=optimize).dp_scan
        fn.restype = ctypes.c_int
        if self.rendered.externals:
            if self._ext is None:
                self._ext = self._ext_table()
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        else:
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._fn = fn  # the same bits at every level: a call in flight keeps its own

    def _ext_table(self):
        lib = cextern.blas()
        pointers = []
        for what in self.rendered.externals:
            if what in ("dgemv", "ddot"):
                pointers.append(lib.addresses[what])
            else:
                pointers.append(cextern.loop_address(what, self.rendered.loops))
        return (ctypes.c_void_p * len(pointers))(*pointers)

    def __call__(self, args):
        fn = self._fn
        if fn is None or len(args) != len(self.in_avals):
            return None
        values = []
        skip = self.rendered.skip
        try:
            for k, (a, aval) in enumerate(zip(args, self.in_avals)):
                if k in skip:
                    continue
                if isinstance(a, np.ndarray):
                    if a.shape != aval.shape:
                        return None
                    if a.dtype == _F64:
                        values.append(a.ravel())
                    elif a.dtype == aval.dtype and _integer(aval):
                        values.append(a.ravel().astype(_F64))  # NumPy's cast
                    else:
                        return None
                elif aval.shape == () and isinstance(a, (float, int, np.float64, np.integer)) \
                        and not isinstance(a, (bool, np.bool_)):
                    values.append((float(a),))
                else:
                    return None
        except (TypeError, ValueError, OverflowError):
            return None
        packed = np.concatenate(values) if values else np.zeros(1)
        out = np.empty(max(1, self.out_total))
        if self._ext is not None:
            raised = fn(packed.ctypes.data, out.ctypes.data, self._ext)
        else:
            raised = fn(packed.ctypes.data, out.ctypes.data)
        if raised & ckernel._reported_flags():
            return None
        self.runs += 1
        results, at = [], 0
        for size, aval in zip(self.out_sizes, self.out_avals):
            part = out[at:at + size]
            at += size
            results.append(part[0] if aval.shape == () else part.reshape(aval.shape))
        return tuple(results)


class _Faster:
    """The -O1 build of a long loop that was built at -O0 to be ready sooner (-O0
    compiles the neural ODE's backward loop, 2900 lines, in 0.2 s instead of 0.7 s, and
    runs it ~30% slower): queued behind the other builds, it takes over when built."""

    def __init__(self, kernel: ScanKernel):
        self.kernel = kernel
        self.state = "compiling (-O1 build of a scan loop)"

    def prepare(self) -> None:
        try:
            self.kernel._load("-O1")
            self.state = "ready (-O1 build of a scan loop)"
        except Exception as exc:  # noqa: BLE001 - the -O0 build stays in charge
            self.state = f"failed ({type(exc).__name__}: {exc}; the -O0 build runs)"


_CACHE: dict[str, ScanKernel] = {}


class _NoKernel:
    """Stands for a loop refused for the layouts of the inputs at hand."""

    state = "refused (no C form for inputs of these memory layouts)"
    runs = 0

    def __call__(self, args):
        return None


NO_KERNEL = _NoKernel()


def rendered(eqn) -> Rendered | None:
    """The C loop of a scan equation for C-contiguous inputs, or None when its body has no
    C form (or compiled kernels are off)."""
    if not ckernel.enabled() or ckernel.compiler() is None:
        return None
    try:
        return render(eqn)
    except Refused:
        return None


def layout_key(args) -> tuple:
    """The memory layouts of a scan's inputs (strides on the axes longer than 1)."""
    return tuple(tuple(s if n > 1 else 0 for n, s in zip(a.shape, a.strides))
                 if isinstance(a, np.ndarray) else None for a in args)


def scan_kernel(eqn, layouts=None, c_rendered: Rendered | None = None) -> ScanKernel | None:
    """The compiled loop of a scan equation for inputs of ``layouts`` (a
    :func:`layout_key`; None: C-contiguous), or None when its body has no C form for them
    (or compiled kernels are off). ``c_rendered``: its rendering for C-contiguous inputs,
    used when the layouts are those."""
    if not ckernel.enabled() or ckernel.compiler() is None:
        return None
    avals = [a.aval for a in eqn.inputs]
    if layouts is not None and all(k is None or k == _layout_key(np.zeros(a.shape))
                                   for k, a in zip(layouts, avals)):
        layouts = None
    try:
        r = c_rendered if layouts is None and c_rendered is not None else render(eqn, layouts)
    except Refused:
        return None
    kernel = _CACHE.get(r.source)
    if kernel is None or kernel.state.startswith("failed"):
        if len(_CACHE) > 256:
            _CACHE.clear()
        kernel = _CACHE[r.source] = ScanKernel(r, avals, [v.aval for v in eqn.outputs])
    return kernel


def _strided_dummy(aval, strides):
    """A layout of ``aval``'s shape with these byte strides (None when they are odd)."""
    dtype = aval.dtype if aval.dtype.kind in "biuf" else _F64
    item = np.dtype(dtype).itemsize
    if len(strides) != len(aval.shape) or any(s % item for s in strides):
        return None
    lo = sum((n - 1) * s for n, s in zip(aval.shape, strides) if s < 0 and n > 0)
    hi = sum((n - 1) * s for n, s in zip(aval.shape, strides) if s > 0 and n > 0)
    buf = np.zeros((hi - lo) // item + 1, dtype)
    return np.lib.stride_tricks.as_strided(buf[-lo // item:], aval.shape, strides)


def why_not(eqn) -> str | None:
    """Why this scan equation keeps the Python loop (None: it has a C form)."""
    try:
        render(eqn)
    except Refused as exc:
        return str(exc)
    return None


def render(eqn, layouts=None) -> Rendered:
    """The C source of function ``dp_scan(const double *in, double *out[, void *const
    *ext])`` and what running it needs, for inputs of ``layouts`` (see scan_kernel);
    raises Refused."""
    p = eqn.params
    body, n_carry, n_x, length, reverse = (p["body"], p["n_carry"], p["n_x"], p["length"],
                                           p["reverse"])
    if length == 0:  # nothing to loop over: the Python loop's answer is immediate
        raise Refused("a loop of no steps")
    graph = body.graph
    used = _used(graph)
    skip = set()
    for k, (a, v) in enumerate(zip(eqn.inputs, graph.invars)):
        if k >= n_carry and _integer(a.aval) and a.aval.dtype == v.aval.dtype:
            pass  # packed as float64 (NumPy's cast where they meet floats)
        elif not (_ok_input(a.aval) and _ok_input(v.aval)):
            if id(v) in used or k < n_carry:
                raise Refused(f"an operand {a.aval}" if not _ok_input(a.aval)
                              else f"a body input {v.aval}")
            skip.add(k)  # never read: not packed (a loop counter of another dtype, say)
            continue
        if int(np.prod(a.aval.shape)) > MAX_ELEMENTS * max(1, length):
            raise Refused(f"an operand {a.aval}")
        if int(np.prod(v.aval.shape)) > MAX_ELEMENTS:
            raise Refused(f"a body input {v.aval}")
    b = _Body()
    env: dict = {}
    lays: dict = {}
    lines_before: list[str] = []   # declarations before the loop
    lines_step: list[str] = []     # reads of this step's xs
    at = 0                          # offset in the packed inputs
    carry_names: list[np.ndarray] = []
    for k, a in enumerate(eqn.inputs):
        var = graph.invars[k]
        if k in skip:
            continue
        shape = var.aval.shape
        size = int(np.prod(shape))
        names = np.empty(shape, object)
        for j, idx in enumerate(np.ndindex(shape)):
            if k < n_carry:
                nm = f"c{k}_{j}"
                lines_before.append(f"double {nm} = in[{at + j}];")
            elif k < n_carry + n_x:
                nm = f"x{k}_{j}"
                lines_step.append(f"const double {nm} = in[{at} + i * {size} + {j}];")
            else:
                nm = f"k{k}_{j}"
                lines_before.append(f"const double {nm} = in[{at + j}];")
                b.in_offset[nm] = at + j
            names[idx] = nm
        at += size * (length if n_carry <= k < n_carry + n_x else 1)
        env[var] = names
        given = layouts[k] if layouts is not None else None
        d = _fresh(a.aval) if given is None else _strided_dummy(a.aval, given)
        if n_carry <= k < n_carry + n_x and d is not None:
            d = np.asarray(d[0])  # the Python loop hands the body x[i]
        lays[var] = d
        if k < n_carry:
            carry_names.append(names)

    # outputs: final carries, then ys stacked over the steps
    sizes = [int(np.prod(v.aval.shape)) for v in graph.outvars]
    starts = [0]
    for k, size in enumerate(sizes):
        starts.append(starts[-1] + size * (1 if k < n_carry else length))
    carry_at = starts[:n_carry]

    def finish(outs):
        for o, v in zip(outs, graph.outvars):
            if any(b.ctype.get(e) == "int" for e in o.flat) or _integer(v.aval):
                raise Refused(f"an output {v.aval}")
        y_lines = [f"out[{starts[n_carry + m]} + i * {o.size} + {j}] = {e};"
                   for m, o in enumerate(outs[n_carry:]) for j, e in enumerate(o.reshape(-1))]
        new_lines, assign = [], []
        for k in range(n_carry):
            for j, (old, new) in enumerate(zip(carry_names[k].reshape(-1), outs[k].reshape(-1))):
                new_lines.append(f"const double n{k}_{j} = {new};")
                assign.append(f"{old} = n{k}_{j};")
        return y_lines + new_lines + assign

    b.steps(graph, env, lays, n_carry, finish, "s == 0", length)
    final = [f"out[{carry_at[k] + j}] = {nm};" for k in range(n_carry)
             for j, nm in enumerate(carry_names[k].reshape(-1))]
    step = "(int64_t)" + (f"{length - 1} - s" if reverse else "s")
    calls = bool(b.externals)
    src = ["int dp_scan(const double *restrict in, double *restrict out"
           + (", void *const *ext)" if calls else ")"), "{",
           "    fexcept_t saved;", "    fegetexceptflag(&saved, FE_ALL_EXCEPT);",
           "    feclearexcept(FE_ALL_EXCEPT);"]
    if calls:  # flags before each call: a routine may clear them
        src += ["    int dp_fl = 0;"]
    src += ["    " + t for t in lines_before]
    src += [f"    for (int64_t s = 0; s < {length}; s++) {{",
            f"        const int64_t i = {step};", "        (void)i;"]
    src += ["        " + t for t in lines_step + b.lines]
    src += ["    }"]
    src += ["    " + t for t in final]
    if calls:
        src += ["    (void)in; (void)out; (void)ext;",
                "    const int raised = dp_flag_bits(dp_fl | fetestexcept(FE_ALL_EXCEPT));"]
    else:
        src += ["    (void)in; (void)out;", "    const int raised = dp_raised();"]
    src += ["    fesetexceptflag(&saved, FE_ALL_EXCEPT);", "    return raised;", "}"]
    text = "\n".join(src) + "\n"
    if calls:
        width = cextern.blas().int_bytes if cextern.blas() is not None else 8
        defaults = "".join(f"#ifndef DP_LOOP_{n}\n#define DP_LOOP_{n} 0\n#endif\n"
                           for n in sorted(b.loops))
        text = _HEADER.format(blasint=f"int{8 * width}_t") + defaults + text
    tag = hashlib.sha256(text.encode()).hexdigest()[:8]
    source = f"/* diffprog scan loop {tag} */\n#define DP_USE_SINCOS 0\n" + text
    return Rendered(source, b, frozenset(skip))
