"""Compiled C loops for ``dp.scan`` over small values (the numpy engine).

Why: a scan runs its body once per step, and a body of a few hundred equations on
scalars or 2-element arrays costs ~100 us of Python and NumPy dispatch per step (W3s in
bench/: 100 RK4 steps forward and backward, 16 ms by hand-written NumPy 14 ms). Here the
whole loop becomes one C function: every value of the body is *scalarised* (an array of
shape (2,) is two C doubles, all shapes being static), shape operations (slice, reshape,
concatenate, broadcast_to, transpose, pack_scalars, static scatter_add) only rename
elements, elementwise equations become one C statement per element spelled from the
primitive table's ``c`` entries, and a sum is NumPy's own summation order (pairwise, on
the identity 0.0). The carry stays in registers for all steps.

Results are bit-identical to the Python loop: the same probes as the fused kernels
(:mod:`diffprog.engines.ckernel`) decide which C spellings reproduce NumPy here, the
compiler runs without fast-math or contraction, and when a step raises a floating-point
flag that ``np.errstate`` wants reported the loop runs again in Python (which reports it
as NumPy does). A body holding anything else (matmul, gathers with index arrays, other
dtypes, nested loops, values over ``MAX_ELEMENTS``) keeps the Python loop; so does every
call until the library is built on the background compile thread. ``status()`` in
ckernel lists these loops beside the block kernels; ``DIFFPROG_CKERNELS=0`` turns them off.
"""
from __future__ import annotations

import ctypes
import hashlib

import numpy as np

from ..ir import Lit
from . import ckernel
from .ckernel import c_literal, dtype_refusal

_F64, _BOOL = np.dtype(np.float64), np.dtype(np.bool_)
MAX_ELEMENTS = 256         # elements of one body value
MAX_STATEMENTS = 20000     # C statements of one loop body (compile time grows with them)


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


class _Body:
    """The scalarised body: C statements per step, each value an object array of C names."""

    def __init__(self):
        self.lines: list[str] = []
        self.ctype: dict[str, str] = {}
        self.needs: set[str] = set()
        self.count = 0

    def fresh(self, ctype="double") -> str:
        self.count += 1
        name = f"t{self.count}"
        self.ctype[name] = ctype
        return name

    def stmt(self, expr: str, ctype="double") -> str:
        name = self.fresh(ctype)
        self.lines.append(f"const {ctype} {name} = {expr};")
        if len(self.lines) > MAX_STATEMENTS:
            raise Refused(f"more than {MAX_STATEMENTS} C statements per step")
        return name

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

    def equation(self, eqn, ins: list[np.ndarray]) -> list[np.ndarray]:
        name, p = eqn.prim.name, eqn.params
        for v in eqn.outputs:
            if v.aval.dtype not in (_F64, _BOOL) or int(np.prod(v.aval.shape)) > MAX_ELEMENTS:
                raise Refused(f"{name} gives {v.aval}")
        if eqn.prim.elementwise and eqn.prim.c is not None:
            why = dtype_refusal(eqn)
            if why:
                raise Refused(why)
            self.needs.add(name)
            out_aval = eqn.outputs[0].aval
            ctype = "int" if out_aval.dtype == _BOOL else "double"
            shape = out_aval.shape
            wide = [np.broadcast_to(a, shape) for a in ins]
            out = np.empty(shape, object)
            first = 1 if name == "where" else 0
            for idx in np.ndindex(shape):
                values = [w[idx] for w in wide]
                if name not in ckernel._ON_INTS:  # bools take part as 0.0/1.0
                    values[first:] = [f"((double){o})" if self.ctype.get(o) == "int" else o
                                      for o in values[first:]]
                out[idx] = self.stmt(eqn.prim.c.format(*values, **p), ctype)
            return [out]
        if any(a.dtype == object and any(self.ctype.get(e) == "int" for e in a.flat)
               for a in ins) and name not in ("slice", "reshape", "broadcast_to", "transpose"):
            raise Refused(f"{name} on bools")
        x = ins[0] if ins else None
        if name == "slice" and len(ins) == 1 and _static_index(p["index"]):
            return [np.asarray(x[p["index"]], dtype=object)]
        if name == "reshape":
            return [x.reshape(p["shape"])]
        if name == "transpose":
            return [x.transpose(p["axes"])]
        if name == "broadcast_to":
            return [np.broadcast_to(x, p["shape"])]
        if name == "concatenate":
            return [np.concatenate(ins, axis=p["axis"])]
        if name == "pack_scalars" and np.dtype(p.get("dtype", _F64)) == _F64:
            out = np.empty(len(ins), object)
            for k, a in enumerate(ins):
                out[k] = a.reshape(())[()]
            return [out]
        if name == "scatter_add" and len(ins) == 1 and _static_index(p["index"]):
            out = np.full(tuple(p["shape"]), "(0.0)", dtype=object)
            target = out[p["index"]]  # zeros, then the values set (no index arrays: no repeats)
            if isinstance(target, np.ndarray):
                target[...] = x
            else:
                out[p["index"]] = x.reshape(())[()]
            return [out]
        if name == "reduce_sum" and eqn.outputs[0].aval.dtype == _F64:
            axes = tuple(a % x.ndim for a in p["axes"]) if x.ndim else ()
            out_shape = eqn.outputs[0].aval.shape
            long_axes = [a for a in axes if x.shape[a] > 1]
            if not axes or int(np.prod(out_shape)) != 1 or len(long_axes) > 1:
                raise Refused(f"reduce_sum over axes {p['axes']} of shape {x.shape}")
            total = self.stmt(f"(0.0 + {_pairwise(list(x.reshape(-1)))})")
            return [np.full(out_shape, total, dtype=object)]
        raise Refused(f"{name} has no scalar C form here")


class ScanKernel:
    """The compiled twin of one scan equation; ``kernel(args)`` gives its outputs, or None
    when it cannot run this time (not built yet, refused, an input of another type, or a
    floating-point flag NumPy's errstate reports): the Python loop then runs."""

    def __init__(self, source: str, in_avals, x_len, out_avals, needs):
        self.source = source
        self.in_avals, self.out_avals = in_avals, out_avals
        self.needs = needs
        self.state = "compiling"
        self.runs = 0
        self._fn = None
        self.n_in_values = sum(int(np.prod(a.shape)) for a in in_avals)
        self.out_sizes = [int(np.prod(a.shape)) for a in out_avals]
        self.out_total = sum(self.out_sizes)
        ckernel._submit(self)

    def prepare(self) -> None:
        try:
            refused = ckernel.refusal(ckernel.probe(), self.needs)
            if refused is not None:
                self.state = refused
                return
            lib = ckernel.library(self.source, ("dp_scan",))
            fn = lib.dp_scan
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            self._fn = fn
            self.state = "ready (scan loop)"
        except Exception as exc:  # noqa: BLE001 - the Python loop stays in charge
            self.state = f"failed ({type(exc).__name__}: {exc})"

    def __call__(self, args):
        fn = self._fn
        if fn is None or len(args) != len(self.in_avals):
            return None
        values = []
        try:
            for a, aval in zip(args, self.in_avals):
                if isinstance(a, np.ndarray):
                    if a.dtype != _F64 or a.shape != aval.shape:
                        return None
                    values.append(a.ravel())
                elif aval.shape == () and isinstance(a, (float, int, np.float64)) \
                        and not isinstance(a, bool):
                    values.append((float(a),))
                else:
                    return None
        except (TypeError, ValueError, OverflowError):
            return None
        packed = np.concatenate(values) if values else np.zeros(1)
        out = np.empty(max(1, self.out_total))
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


_CACHE: dict[str, ScanKernel] = {}


def scan_kernel(eqn) -> ScanKernel | None:
    """The compiled loop of a scan equation, or None when its body has no C form (or
    compiled kernels are off)."""
    if not ckernel.enabled() or ckernel.compiler() is None:
        return None
    try:
        source, needs = render(eqn)
    except Refused:
        return None
    kernel = _CACHE.get(source)
    if kernel is None or kernel.state.startswith("failed"):
        if len(_CACHE) > 256:
            _CACHE.clear()
        kernel = _CACHE[source] = ScanKernel(source, [a.aval for a in eqn.inputs], None,
                                             [v.aval for v in eqn.outputs], frozenset(needs))
    return kernel


def why_not(eqn) -> str | None:
    """Why this scan equation keeps the Python loop (None: it has a C form)."""
    try:
        render(eqn)
    except Refused as exc:
        return str(exc)
    return None


def render(eqn) -> tuple[str, set]:
    """(C source of function ``dp_scan(const double *in, double *out)``, primitives whose
    spellings it uses); raises Refused."""
    p = eqn.params
    body, n_carry, n_x, length, reverse = (p["body"], p["n_carry"], p["n_x"], p["length"],
                                           p["reverse"])
    graph = body.graph
    for a in eqn.inputs:
        if not _ok_input(a.aval) or int(np.prod(a.aval.shape)) > MAX_ELEMENTS * max(1, length):
            raise Refused(f"an operand {a.aval}")
    for v in graph.invars:
        if not _ok_input(v.aval) or int(np.prod(v.aval.shape)) > MAX_ELEMENTS:
            raise Refused(f"a body input {v.aval}")
    b = _Body()
    env: dict = {}
    lines_before: list[str] = []   # declarations before the loop
    lines_step: list[str] = []     # reads of this step's xs
    at = 0                          # offset in the packed inputs
    carry_names: list[np.ndarray] = []
    for k, a in enumerate(eqn.inputs):
        var = graph.invars[k]
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
            names[idx] = nm
        at += size * (length if n_carry <= k < n_carry + n_x else 1)
        env[var] = names
        if k < n_carry:
            carry_names.append(names)

    def value(atom):
        if isinstance(atom, Lit):
            return b.literal(atom)
        return env[atom]

    for eqn_b in graph.eqns:
        outs = b.equation(eqn_b, [value(a) for a in eqn_b.inputs])
        for v, o in zip(eqn_b.outputs, outs):
            if o.shape != v.aval.shape:
                raise Refused(f"{eqn_b.prim.name}: shape {o.shape} for {v.aval}")
            env[v] = o
    outs = [value(a) for a in graph.outvars]
    for o in outs:
        if any(b.ctype.get(e) == "int" for e in o.flat):
            raise Refused("a bool output")
    # outputs: final carries, then ys stacked over the steps
    out_at, y_lines = 0, []
    carry_at = []
    for k in range(n_carry):
        carry_at.append(out_at)
        out_at += int(np.prod(outs[k].shape))
    for o in outs[n_carry:]:
        size = int(np.prod(o.shape))
        for j, e in enumerate(o.reshape(-1)):
            y_lines.append(f"out[{out_at} + i * {size} + {j}] = {e};")
        out_at += size * length
    new_lines, assign = [], []
    for k in range(n_carry):
        for j, (old, new) in enumerate(zip(carry_names[k].reshape(-1), outs[k].reshape(-1))):
            new_lines.append(f"const double n{k}_{j} = {new};")
            assign.append(f"{old} = n{k}_{j};")
    final = [f"out[{carry_at[k] + j}] = {nm};" for k in range(n_carry)
             for j, nm in enumerate(carry_names[k].reshape(-1))]
    step = "(int64_t)" + (f"{length - 1} - s" if reverse else "s")
    src = ["int dp_scan(const double *restrict in, double *restrict out)", "{",
           "    fexcept_t saved;", "    fegetexceptflag(&saved, FE_ALL_EXCEPT);",
           "    feclearexcept(FE_ALL_EXCEPT);"]
    src += ["    " + t for t in lines_before]
    src += [f"    for (int64_t s = 0; s < {length}; s++) {{",
            f"        const int64_t i = {step};", "        (void)i;"]
    src += ["        " + t for t in lines_step + b.lines + y_lines + new_lines + assign]
    src += ["    }"]
    src += ["    " + t for t in final]
    src += ["    (void)in; (void)out;", "    const int raised = dp_raised();",
            "    fesetexceptflag(&saved, FE_ALL_EXCEPT);", "    return raised;", "}"]
    text = "\n".join(src) + "\n"
    tag = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"/* diffprog scan loop {tag} */\n#define DP_USE_SINCOS 0\n" + text, b.needs
