"""Compiled C kernels for the numpy engine's fused blocks, built at run time.

Why: a fused block (:mod:`diffprog.engines.fusion`) walks its arrays in cache-sized
blocks but still makes one NumPy ufunc call per equation per block, each a pass over
memory. On W4's gradient (bench/) those ten cheap passes cost 7-10 ms of the ~30 ms.
Here the block becomes one C function that computes every equation of an element in
registers, each equation spelled as its primitive's ``c`` entry in the primitive table,
and the NumPy block kernel stays as the fallback.

Results are bit-identical to the NumPy block kernel (which is bit-identical to the
unfused program for elementwise values), unless the program opted in to fast math
(below):

* the compiler runs without fast-math, FP contraction or builtins (``FLAGS``): arithmetic
  is IEEE round-to-nearest like NumPy's loops, and each libm function is a call into the
  libm NumPy itself calls;
* a primitive's spelling is used only after a probe compared it bit for bit with NumPy
  on values across every range libm treats differently (once per process). Where NumPy's
  loop is its own SIMD code (tanh, exp, log... on AVX-512 machines) the spelling differs;
  the kernel then calls that very loop (read from the ufunc, :mod:`.cextern`, checked
  once per process) on each tile of its operand, as NumPy would on the whole array: W4's
  gradient on this 2-core AVX-512 machine went from the NumPy block loop to compiled
  (0.43 -> 0.27-0.34 of hand-written NumPy). Otherwise the block stays on the NumPy path;
* sums use NumPy's pairwise summation over the same blocks (each a subtree of NumPy's
  own summation of the whole array: :func:`diffprog.engines.fusion.sum_plan`), so fused
  reductions match the NumPy block kernel, and ``np.sum``, exactly too;
* each call reports the floating-point flags it raised; where ``np.errstate`` would warn,
  raise or call on one of them, the NumPy kernel computes the block again and reports
  it as NumPy does.

Compiling takes ~0.1 s per kernel, so it happens on a background thread: calls before
the library is ready run the NumPy block kernel (a first call never waits for the
compiler). The thread never delays interpreter exit: queued compiles are cancelled and a
running compiler is killed. Libraries are cached on disk, keyed by source, flags and
compiler, so a later process loads them in about a millisecond; the cache directory must be
private to the user, and a library is loaded only if its bytes match the sha256 recorded
when it was built (see "building" below, and docs/threat-model.md). :func:`status` says
what is in use, and why not; :func:`wait` blocks until pending compiles are done.

Fast math (opt-in: ``dp.differentiable(fn, fast_math=True)``, ``dp.set_fast_math``,
``DIFFPROG_FAST_MATH=1``): a fast-math program's kernels call glibc's libmvec for exp, log,
sin, cos, tanh, pow and the other transcendental functions, several elements per call;
each result within ``ULP_BOUND`` (4) ulp of NumPy's, NaN/inf/zero results and reported
flags unchanged, checked by a probe of its own (see "fast math" below,
:func:`fast_math_state`). Where that cannot work, fast-math programs run these exact
kernels.

Settings (environment): ``DIFFPROG_CKERNELS=0`` turns compiled kernels off; ``CC`` the C
compiler (default: ``cc``, then ``gcc``); ``DIFFPROG_CACHE_DIR`` where libraries are kept
(in its ``ckernels`` folder; default ``$XDG_CACHE_HOME/diffprog`` or ``~/.cache/diffprog``,
else ``$TMPDIR/diffprog-ckernels-<uid>``).
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import functools
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import CancelledError, Future

import numpy as np

from ..errors import DiffprogWarning
from ..ir import Aval, Eqn, Var
from ..primitives import PRIMITIVES
from .fastmath import probe_values
from .threads import num_threads, run_shared

FLAGS = ("-O3", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off", "-fno-builtin")
FLAG_BITS = {"divide": 1, "over": 2, "under": 4, "invalid": 8}  # what kernels return

PREAMBLE = r"""
#define _GNU_SOURCE /* sincos */
#include <fenv.h>
#include <math.h>
#include <stdint.h>

/* NumPy's definitions, so results match its loops bit for bit. maximum/minimum follow
 * its SIMD loops (x86 maxpd/minpd: the second operand when equal, so signed zeros come
 * out as there) and propagate NaN from either side; the probe checks it on each machine.
 * Quiet comparisons (isgreater, not >) where NumPy raises no invalid flag for NaN. */
static inline double dp_sign(double x)
{ return isgreater(x, 0.0) ? 1.0 : isless(x, 0.0) ? -1.0 : x == 0.0 ? 0.0 : x; }
static inline double dp_maximum(double a, double b) { return (isgreater(a, b) || isnan(a)) ? a : b; }
static inline double dp_minimum(double a, double b) { return (isless(a, b) || isnan(a)) ? a : b; }
/* x ** n: NumPy's shortcuts for n = 2, -1, 1 (square, reciprocal, positive), else pow */
static inline double dp_ipow(double x, int n)
{ return n == 2 ? x * x : n == -1 ? 1.0 / x : n == 1 ? x : pow(x, (double)n); }
static inline double dp_logaddexp(double x, double y)
{
    if (x == y) return x + 0x1.62e42fefa39efp-1; /* log(2); infinities of one sign */
    const double d = x - y;
    if (d > 0) return x + log1p(exp(-d));
    if (d <= 0) return y + log1p(exp(d));
    return d; /* a NaN */
}
/* DP_USE_SINCOS is defined by each source, after this preamble: the macro reads it
 * where it is used (an #if here would see it undefined, and never call sincos). */
#define DP_SINCOS(x, s, c) \
    (DP_USE_SINCOS ? sincos((x), (s), (c)) : (void)(*(s) = sin(x), *(c) = cos(x)))

/* NumPy's pairwise summation (DOUBLE_pairwise_sum), so a block sums to the same bits
 * (a block is a subtree of NumPy's summation of the whole array). It starts from -0.0,
 * as NumPy's does, so that a sum of negative zeros stays -0.0. */
static double dp_pairwise(const double *a, int64_t n)
{
    if (n < 8) {
        double res = -0.0;
        for (int64_t i = 0; i < n; i++) res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8];
        int64_t i;
        for (int k = 0; k < 8; k++) r[k] = a[k];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int k = 0; k < 8; k++) r[k] += a[i + k];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    int64_t n2 = n / 2;
    n2 -= n2 % 8;
    return dp_pairwise(a, n2) + dp_pairwise(a + n2, n - n2);
}

/* the FLAG_BITS of floating-point exception flags f */
static inline int dp_flag_bits(int f)
{
    return ((f & FE_DIVBYZERO) ? 1 : 0) | ((f & FE_OVERFLOW) ? 2 : 0)
         | ((f & FE_UNDERFLOW) ? 4 : 0) | ((f & FE_INVALID) ? 8 : 0);
}
static inline int dp_raised(void) { return dp_flag_bits(fetestexcept(FE_ALL_EXCEPT)); }

/* a NumPy inner loop (PyUFuncGenericFunction) on n contiguous doubles, called as NumPy
 * calls it; it may clear the flags raised before it, so callers collect them first */
typedef void (*dp_loop_fn)(char **, const intptr_t *, const intptr_t *, void *);
static inline void dp_call_loop(void *fn, void *data, const double *x, double *y, intptr_t n)
{
    char *args[2] = {(char *)x, (char *)y};
    const intptr_t dims[1] = {n};
    const intptr_t steps[2] = {8, 8};
    ((dp_loop_fn)fn)(args, dims, steps, data);
}
"""

_F64, _BOOL = np.dtype(np.float64), np.dtype(np.bool_)
_ON_INTS = {"logical_and", "logical_or", "logical_xor", "logical_not", "bitwise_and",
            "bitwise_or", "bitwise_xor", "invert"}  # spellings that take bools as C ints
_BOOL_RESULTS = {"less", "less_equal", "greater", "greater_equal", "equal", "not_equal",
                 "logical_and", "logical_or", "logical_xor", "logical_not", "isfinite",
                 "isnan", "isinf", "bitwise_and", "bitwise_or", "bitwise_xor", "invert"}


_POW_SHORTCUTS = (2, -1, 1)  # exponents NumPy (and dp_ipow) compute without calling pow


def spelling_key(name: str, params) -> str:
    """The probe's name for a primitive's C spelling with these params: ``x ** n`` for
    n = 2, -1, 1 is arithmetic in NumPy and C alike, so a machine whose ``pow`` differs
    from NumPy's (NumPy's own SIMD power on AVX-512) still fuses squares."""
    if name == "integer_pow" and params.get("n") in _POW_SHORTCUTS:
        return "integer_pow_shortcut"
    return name


def loop_ufunc(eqn):
    """The ufunc whose float64 inner loop can stand in for this equation's C spelling: one
    operand, no params, spelled ``xp.<ufunc>(x)`` in NumPy and by a libm call in C. Why:
    where NumPy's own SIMD loop differs from libm (``tanh``, ``exp``, ``log``... on AVX-512
    machines), calling that loop from C gives NumPy's bits (:mod:`~diffprog.engines.cextern`)."""
    prim = eqn.prim
    uf = prim.ufunc
    if uf is None or eqn.params or not isinstance(uf, np.ufunc) or uf.nin != 1 or uf.nout != 1:
        return None
    if prim.impl != f"xp.{uf.__name__}({{0}})" or not _LIBM_CALL.search(prim.c or ""):
        return None
    return uf


def enabled() -> bool:
    return os.environ.get("DIFFPROG_CKERNELS", "1").strip() != "0" and os.name == "posix"


# ============================================================================ rendering

def _weak_number(aval) -> bool:
    return aval.weak and aval.dtype.kind in "biuf"


def dtype_refusal(eqn) -> str | None:
    """Why this equation has no C form on float64/bool values, or None when it has one.

    Bool operands take part as 0/1 (NumPy promotes them so too); an equation with a
    bool result must be a comparison or logical test (``True + True`` is not 2 in NumPy).
    """
    prim, out = eqn.prim, eqn.outputs[0].aval.dtype
    if prim.c is None:
        return f"{prim.name} has no C spelling"
    avals = [a.aval for a in eqn.inputs]
    ok = all(a.dtype in (_F64, _BOOL) or _weak_number(a) for a in avals)
    if prim.name == "where":
        ok = ok and out == _F64 and avals[0].dtype == _BOOL and not avals[0].weak
    elif out == _BOOL:
        ok = ok and prim.name in _BOOL_RESULTS
    else:
        ok = ok and out == _F64
    return None if ok else f"{prim.name} on {', '.join(str(a) for a in avals)}"


def c_literal(value) -> str | None:
    """An exact C double literal for a Python number (hexadecimal: no decimal rounding)."""
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if x != x:
        return "(NAN)"
    if x in (float("inf"), float("-inf")):
        return "(INFINITY)" if x > 0 else "(-INFINITY)"
    return f"({x.hex()})"


TILE = 512  # elements per inner loop: a tile of every crossing value stays in L1
# Elements a compiled kernel gives each thread at least. Below this a second thread costs
# more than it saves: in W2's gradient (65,536 elements, between BLAS calls whose OpenBLAS
# threads still spin) the block took 367 us on 2 threads and 119 us on one.
PER_THREAD = 131072

# A statement calling one of these is a loop of its own (see BlockBuilder.function).
_LIBM_CALL = re.compile(r"\b(exp|expm1|log|log1p|sin|cos|tan|asin|acos|atan|atan2|sinh|cosh"
                        r"|tanh|pow|hypot|dp_logaddexp|DP_SINCOS)\(|\bdp_ipow\([^()]*, (?!(2|-1|1)\))")
_NAME = re.compile(r"^[xtp]\d+$")


class _Stmt:
    __slots__ = ("lines", "defines", "uses", "costly", "loop")

    def __init__(self, lines, defines, uses, loop=None):
        self.lines, self.defines = lines, defines
        self.uses = [u for u in uses if _NAME.match(u)]
        self.costly = any(_LIBM_CALL.search(line) for line in lines)
        self.loop = loop  # (primitive name, operand): NumPy's loop may compute it instead


class BlockBuilder:
    """One fused block's C function, built step by step while fusion renders its NumPy
    twin; :meth:`kernel` gives the :class:`Kernel`, or None when some step has no C form
    (``refused`` says which)."""

    def __init__(self, block: int, fast_math: bool = False):
        self.block = block
        self.fast_math = fast_math  # also build the fast-math source (see fast_math_state)
        self.arrays: list[tuple[str, np.dtype]] = []   # (program name, dtype) of inputs
        self.scalars: list[str] = []                    # program names of 0-d inputs
        self.exports: list[np.dtype] = []               # dtype of each full-size result
        self.n_sums = 0
        self.stmts: list[_Stmt] = []                    # per element, in program order
        self.ctype: dict[str, str] = {}                 # C value name -> "double" / "int"
        self.needs: set[str] = set()                    # primitives whose spelling is used
        self.sincos = False
        self.broadcasts: dict[int, tuple[str, int]] = {}  # input k -> (kind, scalar of its L)
        self.loops: dict[str, np.ufunc] = {}  # primitive name -> ufunc whose loop may stand in
        self.loop_gaps: set[str] = set()      # names with an occurrence the loop cannot take
        self.externals: list[str] = []        # ext[k] of the C function: "loop:tanh", "data:tanh"
        self.refused: str | None = None
        if not enabled():
            self.refused = "off (DIFFPROG_CKERNELS=0)"
        elif compiler() is None:
            self.refused = "no C compiler found (set CC, or install gcc)"

    def refuse(self, why: str) -> None:
        self.refused = self.refused or why

    def array(self, name: str, aval) -> str:
        """The C value of a full-size input (``name`` in the program) at element ``e``."""
        if aval.dtype not in (_F64, _BOOL):
            self.refuse(f"an input of dtype {aval.dtype}")
        for k, (seen, _) in enumerate(self.arrays):
            if seen == name:
                return f"x{k}"
        self.arrays.append((name, aval.dtype))
        k = len(self.arrays) - 1
        self.ctype[f"x{k}"] = "int" if aval.dtype == _BOOL else "double"
        return f"x{k}"

    def broadcast_array(self, name: str, aval, kind: str, length: int) -> str:
        """The C value of an input broadcast to the block (fusion.broadcast_pattern): kind
        "inner" repeats its values every ``length`` elements, "outer" gives each value to
        ``length`` consecutive elements. Each tile copies its stretch into a tile buffer
        (one division per tile, not per element). ``length`` reaches the kernel as a
        scalar, so one library still serves every size."""
        if aval.dtype != _F64:
            self.refuse(f"a broadcast input of dtype {aval.dtype}")
        value = self.array(name, aval)
        text = str(int(length))
        if text not in self.scalars:
            self.scalars.append(text)
        self.broadcasts[int(value[1:])] = (kind, self.scalars.index(text))
        return value

    def scalar(self, name: str, aval) -> str:
        if not (aval.dtype == _F64 or _weak_number(aval)):
            self.refuse(f"a scalar of dtype {aval.dtype}")
        if name not in self.scalars:
            self.scalars.append(name)
        return f"p{self.scalars.index(name)}"

    def literal(self, value) -> str:
        text = c_literal(value)
        if text is None:
            self.refuse(f"the literal {value!r}")
            return "0"
        return text

    def op(self, eqn, operands: list[str], local: str) -> None:
        why = dtype_refusal(eqn)
        if why:
            self.refuse(why)
            return
        self.needs.add(spelling_key(eqn.prim.name, eqn.params))
        ctype = "int" if eqn.outputs[0].aval.dtype == _BOOL else "double"
        self.ctype[local] = ctype
        values = list(operands)
        if eqn.prim.name not in _ON_INTS:  # bools take part as 0.0/1.0 (in C, 1 / 2 is 0)
            first = 1 if eqn.prim.name == "where" else 0  # where's condition stays a bool
            values[first:] = [f"((double){o})" if self.ctype.get(o) == "int" else o
                              for o in values[first:]]
        expr = eqn.prim.c.format(*values, **eqn.params)
        self.stmts.append(_Stmt([f"const {ctype} {local} = {expr};"], [local], operands,
                                self._loop_of(eqn, operands)))

    def _loop_of(self, eqn, operands):
        """``(name, operand)`` when NumPy's loop may compute this equation on a tile of its
        operand (a float64 array input or a value computed in the block), else None."""
        ufunc = loop_ufunc(eqn)
        if ufunc is None:
            return None
        name = eqn.prim.name
        self.loops[name] = ufunc
        operand = operands[0]
        if not (re.match(r"^[xt]\d+$", operand) and self.ctype.get(operand) == "double"):
            self.loop_gaps.add(name)  # a scalar or bool operand: the C spelling only
            return None
        for what in (f"loop:{name}", f"data:{name}"):
            if what not in self.externals:
                self.externals.append(what)
        return name, operand

    def sin_cos(self, operand: str, sin_local: str, cos_local: str) -> None:
        self.needs.update(("sin", "cos"))
        self.sincos = True
        self.ctype[sin_local] = self.ctype[cos_local] = "double"
        self.stmts.append(_Stmt([f"double {sin_local}, {cos_local};",
                                 f"DP_SINCOS({operand}, &{sin_local}, &{cos_local});"],
                                [sin_local, cos_local], [operand]))

    def add_to_sum(self, operand: str) -> None:
        self.stmts.append(_Stmt([f"scratch[{self.n_sums * self.block} + (e - i)] = {operand};"],
                                [], [operand]))
        self.n_sums += 1

    def export(self, local: str, dtype) -> None:
        """Store ``local`` as the next full-size result (in the order fusion exports)."""
        k = len(self.exports)
        self.exports.append(np.dtype(dtype))
        cast = "(unsigned char)" if np.dtype(dtype) == _BOOL else ""
        self.stmts.append(_Stmt([f"o{k}[e] = {cast}{local};"], [], [local]))

    # ------------------------------------------------------------------ source

    def _loops(self) -> list[list[_Stmt]]:
        """Statements grouped into inner loops: each libm call alone, the cheap ones between
        them together. Why: a loop of one libm call lets the CPU overlap successive calls
        (no other live values to spill around them), and cheap runs become tight loops
        over L1 tiles; on W4's gradient this took the kernel from 56 to 52 ms per thread."""
        loops: list[list[_Stmt]] = []
        cheap: list[_Stmt] = []
        for st in self.stmts:
            if st.costly:
                if cheap:
                    loops.append(cheap)
                    cheap = []
                loops.append([st])
            else:
                cheap.append(st)
        if cheap:
            loops.append(cheap)
        return loops

    def n_tiles(self) -> int:
        """Tiles of scratch: one per crossing value, one per broadcast input."""
        return len(self._crossing(self._loops())) + len(self.broadcasts)

    @staticmethod
    def _crossing(loops) -> list[str]:
        """Values defined in one inner loop and used in a later one (kept in tiles), and
        those NumPy's loops may compute (they write tiles)."""
        where = {d: li for li, loop in enumerate(loops) for st in loop for d in st.defines}
        crossing: list[str] = []
        for li, loop in enumerate(loops):
            for st in loop:
                if st.loop is not None:
                    crossing += [d for d in st.defines if d not in crossing]
                for u in st.uses:
                    if where.get(u, li) < li and u not in crossing:
                        crossing.append(u)
        return crossing

    def function(self, name: str, fast: bool = False) -> str:
        """The C source of this block as function ``name``. Threads call it together: each
        takes the next block from the shared counter ``*next`` until none is left (block
        ``b`` is elements ``starts[b]`` to ``starts[b + 1]``, at most ``self.block`` of them),
        and stores each fused sum of block ``b`` in ``sums[r * n_blocks + b]`` (so the caller
        adds them up in NumPy's order, whichever thread ran which block). ``fast``: each
        inner loop is marked ``#pragma omp simd``, so that the compiler calls libmvec's
        vector functions there (fast math: see :func:`fast_math_state`)."""
        ptr = {_F64: "double", _BOOL: "unsigned char"}
        loops = self._loops()
        crossing = self._crossing(loops)
        tile = {u: q for q, u in enumerate(crossing)}
        block = self.block
        lines = [f"int {name}(int64_t *next, int64_t n_blocks, const int64_t *starts, void *const *arrays,",
                 "         const double *scalars, double *sums, double *scratch, void *const *ext)", "{"]
        lines += [f"    const {ptr[dt]} *restrict a{k} = (const {ptr[dt]} *)arrays[{k}];"
                  for k, (_, dt) in enumerate(self.arrays)]
        base = len(self.arrays)
        lines += [f"    {ptr[dt]} *restrict o{k} = ({ptr[dt]} *)arrays[{base + k}];"
                  for k, dt in enumerate(self.exports)]
        lines += [f"    const double p{k} = scalars[{k}];" for k in range(len(self.scalars))]
        lines += [f"    double *restrict w{q} = scratch + {self.n_sums * block + q * TILE};"
                  for q in range(len(crossing))]
        lines += [f"    double *restrict b{k} = scratch + {self.n_sums * block + (len(crossing) + q) * TILE};"
                  f" const int64_t L{k} = (int64_t)scalars[{at}];"
                  for q, (k, (_, at)) in enumerate(sorted(self.broadcasts.items()))]
        lines += ["    (void)scalars; (void)sums; (void)scratch; (void)ext;",
                  "    int dp_fl = 0; /* flags collected before each call of a NumPy loop */",
                  "    fexcept_t saved;",
                  "    fegetexceptflag(&saved, FE_ALL_EXCEPT);",
                  "    feclearexcept(FE_ALL_EXCEPT);",
                  "    for (;;) {",
                  "        const int64_t b = __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);",
                  "        if (b >= n_blocks) break;",
                  "        const int64_t i = starts[b], j = starts[b + 1];",
                  f"        for (int64_t s = i; s < j; s += {TILE}) {{",
                  f"            const int64_t m = j - s > {TILE} ? {TILE} : j - s;"]
        lines += self._broadcast_fills()
        defined: set[str] = set()
        for loop in loops:
            used = [u for st in loop for u in st.uses]
            here = {d for st in loop for d in st.defines}
            called = loop[0].loop if len(loop) == 1 and not fast else None
            if called is not None:
                lines += self._numpy_loop_call(called, loop[0].defines[0], tile)
            if fast:
                lines.append("            #pragma omp simd")
            lines.append("            for (int64_t k = 0; k < m; k++) {")
            lines.append("                const int64_t e = s + k;")
            for u in dict.fromkeys(used):
                if u.startswith("x"):
                    cond = " != 0" if self.ctype[u] == "int" else ""
                    source = f"b{u[1:]}[k]" if int(u[1:]) in self.broadcasts else f"a{u[1:]}[e]"
                    lines.append(f"                const {self.ctype[u]} {u} = {source}{cond};")
                elif u in defined and u not in here:
                    lines.append(f"                const {self.ctype[u]} {u} = "
                                 f"({self.ctype[u]})w{tile[u]}[k];")
            for st in loop:
                lines += [f"                {text}" for text in st.lines]
            for d in sorted(here & set(crossing), key=crossing.index):
                lines.append(f"                w{tile[d]}[k] = {d};")
            lines.append("                (void)e;")
            lines.append("            }")
            if called is not None:
                lines.append("#endif")
            defined |= here
        lines.append("        }")
        lines += [f"        sums[{r} * n_blocks + b] = dp_pairwise(scratch + {r * block}, j - i);"
                  for r in range(self.n_sums)]
        lines += ["    }",
                  "    const int raised = dp_flag_bits(dp_fl | fetestexcept(FE_ALL_EXCEPT));",
                  "    fesetexceptflag(&saved, FE_ALL_EXCEPT);",
                  "    return raised;", "}"]
        defaults = "".join(f"#ifndef DP_LOOP_{n}\n#define DP_LOOP_{n} 0\n#endif\n"
                           for n in sorted(self.loops))
        return defaults + "\n".join(lines) + "\n"

    def _broadcast_fills(self) -> list[str]:
        """Lines copying each broadcast input's stretch of tile ``s..s+m`` into its buffer
        ``b<k>``, a run at a time: ``n`` elements up to the next wrap (inner: a contiguous
        stretch of the operand) or the next value (outer: one value repeated). Each run
        is a branch-free loop the compiler vectorises; a per-element wrap test cost more
        than the arithmetic (W2's block: 128 -> 29 us)."""
        lines = []
        for k, (kind, _) in sorted(self.broadcasts.items()):
            run = (f"const double *restrict from = a{k} + r; for (int64_t t = 0; t < n; t++) "
                   f"to[t] = from[t];" if kind == "inner" else
                   f"const double v = a{k}[q]; for (int64_t t = 0; t < n; t++) to[t] = v;")
            lines += [f"            for (int64_t q = s / L{k}, r = s % L{k}, k = 0; k < m; r = 0, q++) {{",
                      f"                const int64_t n = L{k} - r < m - k ? L{k} - r : m - k;",
                      f"                double *restrict to = b{k} + k;",
                      f"                {run}",
                      "                k += n;",
                      "            }"]
        return lines

    def _numpy_loop_call(self, called, local: str, tile: dict) -> list[str]:
        """Lines computing ``local`` on the tile by NumPy's loop where the kernel's source
        is built with ``DP_LOOP_<name>`` 1 (its C spelling differs from NumPy here: see
        :meth:`Kernel.prepare`); the C spelling's loop follows under ``#else``."""
        name, operand = called
        if operand.startswith("x"):
            k = int(operand[1:])
            source = f"b{k}" if k in self.broadcasts else f"a{k} + s"
        else:
            source = f"w{tile[operand]}"
        fn, data = self.externals.index(f"loop:{name}"), self.externals.index(f"data:{name}")
        return [f"#if DP_LOOP_{name}",
                "            dp_fl |= fetestexcept(FE_ALL_EXCEPT);",
                f"            dp_call_loop(ext[{fn}], ext[{data}], {source}, w{tile[local]}, m);",
                "#else"]

    def kernel(self, spans) -> "Kernel | None":
        """The compiled twin walking the blocks ``spans`` (``[(start, stop), ...]``, each at
        most ``self.block`` elements), or None when some step has no C form."""
        if self.refused is not None or not self.stmts:
            return None
        return Kernel(self.function("dp_block"), spans=spans, block=self.block,
                      n_arrays=len(self.arrays) + len(self.exports), n_scalars=len(self.scalars),
                      n_sums=self.n_sums, n_tiles=self.n_tiles(), needs=frozenset(self.needs),
                      sincos=self.sincos, loops=dict(self.loops), loop_gaps=frozenset(self.loop_gaps),
                      externals=tuple(self.externals),
                      fast_source=self.function("dp_block", fast=True) if self.fast_math else None)


# ============================================================================ building
#
# Code we load is code we built (docs/threat-model.md). Libraries live in a private
# directory: owned by this user, writable by no one else, not a symbolic link; anything
# else could hold a library another local user planted under a predictable name. Each
# library's sha256 is recorded beside it when it is built, and a library is loaded only
# from bytes that match it, through a private copy (so the file cannot be swapped between
# the check and dlopen), and only if it carries the marker of the kernel asked for. A
# library that fails a check is deleted and built again, with a warning: never a crash.

ABI = 4  # kernels' calling convention; part of every key, so a change never loads old ones
# (2: fused blocks take a starts array; 3: and scan loops take a table of external loops;
# 4: and fused blocks too)
MARK_SYMBOL = "dp_kernel_mark"  # a string each library exports: the ABI and its key


def compiler() -> str | None:
    """Path of the C compiler kernels are built with, or None."""
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for name in names:
        path = shutil.which(name.split()[0])
        if path:
            return path
    return None


def _configured_dir() -> str | None:
    """Where the settings put the cache, or None when they name no absolute place (HOME
    unset: expanduser would return "~", a folder in the working directory)."""
    explicit = os.environ.get("DIFFPROG_CACHE_DIR")
    if explicit:
        return os.path.join(os.path.abspath(explicit), "ckernels")
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec says to ignore a relative one
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "diffprog", "ckernels")


def why_not_private(path: str) -> str | None:
    """Why directory ``path`` must not hold libraries we load, or None when it is private:
    a real directory (lstat: a symbolic link is refused), owned by this user and writable
    by no one else."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot be inspected ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.getuid():
        return f"is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})"
    if st.st_mode & 0o022:
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _create_private(path: str) -> bool:
    """Make ``path`` with mode 0700 (parents as usual) unless something is there; False
    when nothing is there and it cannot be made (a read-only home: the next place is
    tried, quietly)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    return True


_FALLBACK: list = [None, 0]  # this process's own cache folder (when needed), its pid
_WARNED: set = set()
_DIR_LOCK = threading.Lock()


def cache_dir() -> str:
    """The private directory libraries are kept in: the configured one, else one per user
    in the temporary directory. One that exists but is not private (:func:`why_not_private`)
    is refused, with a warning, for a fresh folder of this process, removed when it exits."""
    candidates = [_configured_dir(),
                  os.path.join(tempfile.gettempdir(), f"diffprog-ckernels-{os.getuid()}")]
    for path in filter(None, candidates):
        if not _create_private(path):
            continue
        why = why_not_private(path)
        if why is not None:
            return _private_fallback(path, why)
        if os.access(path, os.W_OK | os.X_OK):
            return path
    return _private_fallback(None, None)


def _private_fallback(refused: str | None, why: str | None) -> str:
    with _DIR_LOCK:
        if _FALLBACK[0] is None:
            _FALLBACK[:] = [tempfile.mkdtemp(prefix="diffprog-ckernels-"), os.getpid()]
        if refused is not None and refused not in _WARNED:
            _WARNED.add(refused)
            warnings.warn(f"diffprog: not loading compiled kernels from {refused}: it {why}; "
                          f"this process builds them in {_FALLBACK[0]} instead. Fix: remove it "
                          "(it is made again with mode 0700) or set DIFFPROG_CACHE_DIR to a "
                          "directory of your own", DiffprogWarning, stacklevel=2)
        return _FALLBACK[0]


class BuildError(Exception):
    """A kernel library could not be built (the message holds the compiler's output)."""


class _Unverified(Exception):
    """A library file failed a check before loading (the message says which)."""


# ---------------------------------------------------------------- compiler processes
#
# The compile thread is a daemon: interpreter exit never waits for it. At exit
# (_abandon_builds) queued builds are cancelled, a running compiler is killed (it runs in
# a session of its own, so its children go too) and its folder removed. Build folders and
# compiler processes are registered under _RUN_LOCK, which is never held while waiting, so
# the exit hook cannot block; once _CLOSING is set nothing new starts.

_RUN_LOCK = threading.Lock()
_PROCS: set = set()     # running compiler processes (subprocess.Popen)
_DIRS: set = set()      # build folders in use
_CLOSING = threading.Event()


def _run_compiler(argv: list, timeout: float, tmpdir: str | None = None):
    """``(returncode, stdout, stderr)`` of ``argv``, killable by the exit hook."""
    env = dict(os.environ, TMPDIR=tmpdir) if tmpdir else None  # its temporaries die with ours
    with _RUN_LOCK:
        if _CLOSING.is_set():
            raise BuildError("not built: the interpreter is exiting")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, env=env,
                                start_new_session=True)
        _PROCS.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise BuildError(f"{argv[0]} ran for more than {timeout:.0f} s") from None
    finally:
        with _RUN_LOCK:
            _PROCS.discard(proc)
    if _CLOSING.is_set():
        raise BuildError("not built: the interpreter is exiting")
    return proc.returncode, out, err


def _kill(proc) -> None:
    """Kill a compiler and whatever it started (its session), unless it has ended."""
    try:
        if proc.poll() is None:  # not reaped yet, so its pid is still its own
            os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.wait(timeout=1)
    except Exception:  # noqa: BLE001 - at exit, giving up on a zombie is fine
        pass


@contextlib.contextmanager
def _build_folder(directory: str):
    with _RUN_LOCK:
        if _CLOSING.is_set():
            raise BuildError("not built: the interpreter is exiting")
        tmp = tempfile.mkdtemp(prefix="build-", dir=directory)
        _DIRS.add(tmp)
    try:
        yield tmp
    finally:
        with _RUN_LOCK:
            _DIRS.discard(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


_IDENTITY: dict[str, str] = {}


def _compiler_identity(cc: str) -> str:
    if cc not in _IDENTITY:
        try:
            _, out, _ = _run_compiler([cc, "--version"], timeout=60)
            _IDENTITY[cc] = out.splitlines()[0] if out else cc
        except (OSError, subprocess.SubprocessError, BuildError):
            if _CLOSING.is_set():
                raise BuildError("not built: the interpreter is exiting") from None
            _IDENTITY[cc] = cc
    return _IDENTITY[cc]


# ---------------------------------------------------------------- building and loading

BUILDS = {"compiled": 0, "cached": 0}  # how often build() compiled / found a library


def _mark(key: str) -> str:
    return f"diffprog-kernel-abi{ABI}-{key}"


def _where(source: str, flags: tuple = FLAGS, libs: tuple = ("-lm",), optimize: str | None = None):
    """(compiler, flags, text, key, cache folder, library path) of a build (see
    :func:`build` for the arguments)."""
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler found (set CC, or install gcc)")
    if optimize is not None:
        flags = (optimize,) + tuple(f for f in flags if not f.startswith("-O"))
    text = PREAMBLE + source
    options = " ".join(flags) + "".join(f" {lib}" for lib in libs if lib != "-lm")
    key = hashlib.sha256("\0".join((text, options, _compiler_identity(cc),
                                    sys.platform, f"abi{ABI}")).encode()).hexdigest()[:32]
    directory = cache_dir()
    return cc, flags, text, key, directory, os.path.join(directory, f"k{key}.so")


def cached(source: str, flags: tuple = FLAGS, libs: tuple = ("-lm",),
           optimize: str | None = None) -> bool:
    """Whether the disk cache holds a library of ``source`` built so (see :func:`build`)."""
    return os.path.lexists(_where(source, flags, libs, optimize)[-1])


def build(source: str, flags: tuple = FLAGS, libs: tuple = ("-lm",),
          optimize: str | None = None) -> str:
    """Path of a shared library built from ``source`` (PREAMBLE prepended, the marker of
    its key appended) with compiler ``flags``, linked with ``libs``, its sha256 recorded
    beside it (``.sha256``, sha256sum's format): from the disk cache when the same source,
    flags, libraries and compiler built it before. The path is not checked here:
    :func:`library` verifies what it loads. ``optimize`` (say ``"-O1"``), when given,
    replaces the flags' optimisation level (the arithmetic is the same at every level: no
    fast-math, no contraction; a lower one compiles a long loop body in half the time)."""
    cc, flags, text, key, directory, path = _where(source, flags, libs, optimize)
    if os.path.lexists(path):
        BUILDS["cached"] += 1
        return path
    text += f'\nconst char {MARK_SYMBOL}[] = "{_mark(key)}";\n'
    with _build_folder(directory) as tmp:
        src, lib = os.path.join(tmp, "kernel.c"), os.path.join(tmp, "kernel.so")
        with open(src, "w") as fp:
            fp.write(text)
        try:
            code, out, err = _run_compiler([cc, *flags, "-o", lib, src, *libs], 300, tmp)
        except OSError as exc:
            raise BuildError(f"{cc} failed to run: {exc}") from None
        if code != 0 or not os.path.exists(lib):
            tail = (err or out).strip().splitlines()[-5:]
            raise BuildError(f"{cc} exited with {code}: " + " | ".join(tail))
        os.chmod(lib, 0o700)  # whatever the umask: _read_private refuses writable files
        digest = hashlib.sha256(_read_private(lib)).hexdigest()
        fd = os.open(os.path.join(tmp, "digest"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fp:
            fp.write(f"{digest}  {os.path.basename(path)}\n")
        # atomic, the digest first: a process that sees the library sees its digest
        os.replace(os.path.join(tmp, "digest"), _digest_path(path))
        os.replace(lib, path)
    BUILDS["compiled"] += 1
    return path


def _digest_path(path: str) -> str:
    return path[:-len(".so")] + ".sha256"


def _read_private(path: str) -> bytes:
    """The bytes of the regular file ``path`` (never through a symbolic link), which this
    user owns and no one else may write."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) \
        | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise _Unverified(f"{os.path.basename(path)} is missing") from None
    except OSError as exc:
        if os.path.islink(path):
            raise _Unverified(f"{os.path.basename(path)} is a symbolic link") from None
        raise _Unverified(f"{os.path.basename(path)} cannot be read ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Unverified(f"{os.path.basename(path)} is not a regular file")
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise _Unverified(f"{os.path.basename(path)} is not private (uid {st.st_uid}, "
                              f"mode {stat.S_IMODE(st.st_mode):04o})")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _verified_bytes(path: str) -> bytes:
    """The library's bytes, when their sha256 is the one recorded at build time."""
    data = _read_private(path)
    recorded = _read_private(_digest_path(path)).decode("ascii", "replace").split()
    digest = hashlib.sha256(data).hexdigest()
    if not recorded or recorded[0] != digest:
        raise _Unverified(f"does not match the sha256 recorded when it was built "
                          f"({len(data)} bytes, sha256 {digest[:12]}..., recorded "
                          f"{recorded[0][:12] if recorded else 'nothing'}...)")
    return data


_LOADED: dict = {}  # sha256 -> (ctypes.CDLL, the fd it was loaded from, or None)
_LOAD_LOCK = threading.Lock()


def _dlopen_private(data: bytes, digest: str):
    """dlopen a private copy of ``data``: an anonymous memory file where Linux has them,
    else a fresh file in the private cache; nothing else can write either."""
    with _LOAD_LOCK:
        if digest in _LOADED:
            return _LOADED[digest][0]
        if hasattr(os, "memfd_create"):
            fd = None
            try:
                fd = os.memfd_create(f"diffprog-{digest[:16]}", os.MFD_CLOEXEC)
                _write_all(fd, data)
                # the fd stays open: the dynamic loader knows libraries by path, and a
                # reused /proc/self/fd/N would be taken for the library loaded before
                lib = ctypes.CDLL(f"/proc/self/fd/{fd}")
                _LOADED[digest] = (lib, fd)
                return lib
            except OSError:  # no /proc, or memory files may not be executed here
                if fd is not None:
                    os.close(fd)
        folder = tempfile.mkdtemp(prefix="load-", dir=cache_dir())
        try:
            copy = os.path.join(folder, f"{digest}-{os.getpid()}-{len(_LOADED)}.so")
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_NOFOLLOW", 0), 0o700)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            lib = ctypes.CDLL(copy)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        _LOADED[digest] = (lib, None)
        return lib


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _load_verified(path: str, names) -> "ctypes.CDLL":
    data = _verified_bytes(path)
    try:
        lib = _dlopen_private(data, hashlib.sha256(data).hexdigest())
    except OSError as exc:
        raise _Unverified(f"cannot be loaded ({exc})") from None
    key = os.path.basename(path)[1:-len(".so")]
    try:
        mark = ctypes.string_at(ctypes.addressof(ctypes.c_char.in_dll(lib, MARK_SYMBOL)))
    except ValueError:
        raise _Unverified(f"exports no {MARK_SYMBOL} (not a diffprog kernel library)") from None
    if mark.decode("ascii", "replace") != _mark(key):
        raise _Unverified(f"is marked {mark.decode('ascii', 'replace')!r}, not {_mark(key)!r} "
                          "(another kernel's library)")
    missing = [n for n in names if not hasattr(lib, n)]
    if missing:
        raise _Unverified(f"exports no {', '.join(missing)}")
    return lib


def library(source: str, names=("dp_block",), flags: tuple = FLAGS, libs: tuple = ("-lm",),
            optimize: str | None = None):
    """The library of ``source`` (see :func:`build`), loaded once verified: its sha256 is
    the one recorded at build time, it carries the marker of this source's key and exports
    ``names``. A cached library that fails is deleted and built again, with a warning."""
    for attempt in (1, 2):
        path = build(source, flags, libs, optimize)
        try:
            return _load_verified(path, names)
        except _Unverified as exc:
            _discard(path)
            if attempt == 2:
                raise BuildError(f"the library just built {exc}") from None
            warnings.warn(f"diffprog: the cached kernel library {path} {exc}; deleted it and "
                          "building it again", DiffprogWarning, stacklevel=2)
    raise AssertionError("unreachable")


def _discard(path: str) -> None:
    for p in (path, _digest_path(path)):
        try:
            os.unlink(p)  # a symbolic link itself, never what it points to
        except FileNotFoundError:
            pass
        except OSError:  # a directory planted there, say: left alone (never loaded either)
            pass


def load(lib, name: str):
    """Function ``name`` of a :func:`library`, callable through ctypes (which releases
    the GIL for the call, so worker threads run kernels in parallel)."""
    fn = getattr(lib, name)
    fn.restype = ctypes.c_int
    # (next, n_blocks, starts, arrays, scalars, sums, scratch, ext): see BlockBuilder.function
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return fn


# ============================================================================ probing

def _probe_inputs(prim, rng, x) -> list[list[np.ndarray]]:
    """Input sets (built around the values ``x``) on which a primitive's C spelling must
    reproduce NumPy."""
    special = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 3.0, -2.5, np.inf, -np.inf, np.nan,
                        1e308, 5e-324])
    gx, gy = (g.ravel() for g in np.meshgrid(special, special))
    if prim.name == "where":
        return [[rng.random(x.size) < 0.5, x, rng.permutation(x)]]
    if prim.name == "integer_pow":
        return [[x]]
    bools = [rng.random(x.size) < 0.5 for _ in range(2)]
    if prim.ufunc.nin == 1:
        return [[x], bools[:1]]
    exponents = np.concatenate([np.arange(-10.0, 11.0), np.arange(-10.0, 11.0) + 0.5])
    y = np.concatenate([rng.permutation(x), gy, np.resize(exponents, x.size)])
    # floats (with every pair of special values), bools, and floats with bools (0.0/1.0)
    return [[np.concatenate([x, gx, np.abs(x)]), y], bools, [x, bools[0]], [bools[1], x]]


_INTEGER_POWERS = (2, -1, 1, 0, 3, -2, 4, 5, -3, 7, 10)


def _probe_cases(fast: bool = False):
    """``(primitive name, builder, inputs, numpy)`` for every C spelling in the table;
    ``numpy()`` gives NumPy's result on the inputs and the flags it reported (computed
    when that primitive is probed: most of the probe's time). ``fast``: on more values
    (:func:`wide_values`), for the fast-math probe."""
    rng = np.random.default_rng(20261201)
    values = np.concatenate([probe_values(), wide_values()]) if fast else probe_values()
    cases = []
    for name, prim in sorted(PRIMITIVES.items()):
        if prim.c is None or not prim.elementwise:
            continue
        for inputs in _probe_inputs(prim, rng, values):
            param_sets = [{"n": n} for n in _INTEGER_POWERS] if name == "integer_pow" else [{}]
            for params in param_sets:
                ins = [Var(Aval(a.shape, a.dtype)) for a in inputs]
                try:  # the result's dtype, from one element of each input
                    with np.errstate(all="ignore"):
                        dtype = np.asarray(prim.evaluate(np, *[a[:1] for a in inputs],
                                                         **params)).dtype
                except TypeError:  # NumPy has no such loop (bitwise ops on floats)
                    continue
                out = Var(Aval(np.broadcast_shapes(*[a.shape for a in inputs]), dtype))
                eqn = Eqn(prim, ins, [out], dict(params))
                b = BlockBuilder(block=max(1, inputs[0].size))
                ops = [b.array(f"in{k}", v.aval) for k, v in enumerate(ins)]
                b.op(eqn, ops, "t0")
                b.export("t0", dtype)
                if b.refused is None:
                    cases.append((spelling_key(name, params), b, inputs, functools.partial(
                        _with_numpy_flags, functools.partial(prim.evaluate, np, *inputs, **params))))
    x = np.concatenate([values, np.linspace(-50, 50, 1001)])
    b = BlockBuilder(block=x.size)
    b.sin_cos(b.array("in0", Aval(x.shape, _F64)), "t0", "t1")
    b.export("t0", _F64)
    b.export("t1", _F64)
    cases.append(("sincos", b, [x], functools.partial(_with_numpy_flags,
                                                      lambda: (np.sin(x), np.cos(x)))))
    return cases


def _with_numpy_flags(compute):
    """``compute()`` and the floating-point flags NumPy reported for it (FLAG_BITS)."""
    raised = [0]

    def record(kind, flag):
        raised[0] |= flag  # NumPy's bits: 1 divide, 2 overflow, 4 underflow, 8 invalid

    previous = np.seterrcall(record)
    try:
        with np.errstate(all="call"):
            result = compute()
    finally:
        np.seterrcall(previous)
    return result, raised[0]


def _same_bits(got: np.ndarray, expect: np.ndarray) -> bool:
    if got.dtype != expect.dtype or got.shape != expect.shape:
        return False
    if got.dtype == _BOOL:
        return bool(np.array_equal(got, expect))
    same = got.view(np.int64) == expect.view(np.int64)
    return bool(np.all(same | (np.isnan(got) & np.isnan(expect))))  # any NaN matches a NaN


def _run_probe(fn, builder, inputs) -> list[np.ndarray]:
    n = inputs[0].size
    outs = [np.empty(n, dt) for dt in builder.exports]
    arrays = [np.ascontiguousarray(a) for a in inputs] + outs
    ptrs = (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
    counter, scratch = np.zeros(1, np.int64), np.empty(max(1, builder.n_tiles() * TILE))
    starts = np.array([0, n], np.int64)
    raised = fn(counter.ctypes.data, 1, starts.ctypes.data, ptrs, None, None, scratch.ctypes.data,
                None)
    return outs, raised


def probe(names=None) -> dict[str, str | None]:
    """``{primitive name or "sincos": None if its C spelling reproduces NumPy here, else
    why not}``; each computed once per process (compiling the probe library once per
    machine). ``names``: probe only these (a compiled scan asks for the few it spells;
    a name probed before is not probed again), else all of them."""
    with _LOCK:
        if _UNBUILT in _PROBED:
            return _PROBED
        wanted = None if names is None else set(names)
        if (wanted is None and _PROBE_STATE.get("all")) or \
                (wanted is not None and wanted <= set(_PROBED)):
            return _PROBED
        if "lib" not in _PROBE_STATE:
            cases = _probe_cases()
            sources = [b.function(f"dp_probe{k}") for k, (_, b, _, _) in enumerate(cases)]
            try:
                lib = library("#define DP_USE_SINCOS 1\n" + "".join(sources),
                              [f"dp_probe{k}" for k in range(len(cases))])
            except BuildError as exc:
                _PROBED[_UNBUILT] = f"probe library not built: {exc}"
                return _PROBED
            _PROBE_STATE.update(lib=lib, cases=cases)
        lib, cases = _PROBE_STATE["lib"], _PROBE_STATE["cases"]
        verdicts: dict[str, str | None] = {}
        for k, (name, b, inputs, numpy) in enumerate(cases):
            if name in _PROBED or (wanted is not None and name not in wanted):
                continue
            expect, numpy_flags = numpy()
            got, raised = _run_probe(load(lib, f"dp_probe{k}"), b, inputs)
            expected = expect if isinstance(expect, tuple) else (np.asarray(expect),)
            # flags NumPy reports that C would not raise: a warning the user would miss
            missed = [n for n, bit in FLAG_BITS.items() if numpy_flags & bit and not raised & bit]
            problem = None
            if not all(_same_bits(g, e) for g, e in zip(got, expected)):
                problem = "its C spelling differs from NumPy on this machine"
            elif missed:
                problem = f"NumPy reports floating-point errors it does not raise ({', '.join(missed)})"
            if verdicts.get(name) is None:  # the first problem of any input set stands
                verdicts[name] = problem
        _PROBED.update(verdicts)
        if wanted is None:
            _PROBE_STATE["all"] = True
        return _PROBED


_LOCK = threading.RLock()
_PROBED: dict[str, str | None] = {}
_PROBE_STATE: dict = {}  # the probe library and its cases, once built; "all": all probed
_UNBUILT = "(probe library)"  # the key under which a failed probe build is recorded


# ============================================================================ fast math
#
# Opt-in (``dp.differentiable(fn, fast_math=True)``, ``dp.set_fast_math(True)`` or
# ``DIFFPROG_FAST_MATH=1``): a fast-math program's fused blocks get a second C source whose
# inner loops are ``#pragma omp simd`` loops, and the libm functions libmvec provides are
# declared ``omp declare simd``, so the compiler calls glibc's vector variants there
# (``_ZGVeN8v_exp`` computes 8 exps per call on AVX-512) instead of one scalar libm call
# per element. Everything else stays as in the exact kernels: no -ffast-math (so NaN,
# infinities and signed zeros keep their IEEE meaning, -ffinite-math-only is never on),
# no FP contraction, arithmetic in IEEE round-to-nearest; only -fno-math-errno is added
# (libm's errno, which nothing reads, would forbid vector calls), and the ISA flag of the
# vector variants this CPU runs. Each spelling is probed as the exact ones are, with a
# tolerance: on the probe values (every range libm treats differently, plus the wide
# ranges of :func:`wide_values`), NaN results must stay NaN (and no NaN may appear),
# infinite and zero results must be the same (sign included), every other result within
# ``ULP_BOUND`` units in the last place of NumPy's, and every floating-point flag NumPy
# raises must still be raised. A vector function whose spelling fails is not declared
# ``simd`` (its scalar libm call, the exact spelling, is probed in its place); a spelling
# that still fails keeps its block on the exact or NumPy kernel. Where fast math cannot
# work (no libmvec, not x86-64, no compiler, the probe library fails to build), fast-math
# programs run the exact kernels: :func:`status` says why.

ULP_BOUND = 4  # libmvec's documented accuracy (glibc manual, "Errors in Math Functions")
FAST_FLAGS = ("-O3", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off",
              "-fno-math-errno", "-fopenmp-simd")
FAST_LIBS = ("-lmvec", "-lm")
# the libm functions of the table's C spellings that libmvec may provide (and their arity)
VECTOR_FUNCTIONS = {"exp": 1, "expm1": 1, "exp2": 1, "log": 1, "log1p": 1, "log2": 1,
                    "log10": 1, "cbrt": 1, "sin": 1, "cos": 1, "tan": 1, "asin": 1, "acos": 1,
                    "atan": 1, "sinh": 1, "cosh": 1, "tanh": 1, "asinh": 1, "acosh": 1,
                    "atanh": 1, "atan2": 2, "pow": 2, "hypot": 2}
_HELPER_CALLS = {"dp_ipow": ("pow",), "dp_logaddexp": ("exp", "log1p"),
                 "DP_SINCOS": ("sin", "cos")}
# x86-64 vector ISAs, best first: (CPU feature, name, compiler flags, the libmvec variants
# (ISA letter, lanes) its loops call: the widest for the loop, narrower for its remainder)
_ISAS = (("avx512f", "AVX-512", ("-mavx512f",), (("e", 8), ("d", 4), ("b", 2))),
         ("avx2", "AVX2", ("-mavx2",), (("d", 4), ("b", 2))),
         ("sse2", "SSE2", (), (("b", 2),)))


def wide_values() -> np.ndarray:
    """Values the fast-math probe adds to :func:`~diffprog.engines.fastmath.probe_values`:
    dense samples of the ranges where vector implementations switch paths (exp's overflow
    and subnormal results, arguments of every magnitude, logs near 1) and their edges."""
    rng = np.random.default_rng(20261202)
    sign = rng.choice([-1.0, 1.0], 6000)
    edges = [709.782712893384, 709.7827128933841, -708.3964185322641, -745.1332191019411,
             -745.1332191019412, 1.0 - 2.0 ** -53, 1.0 + 2.0 ** -52, 2.0 ** -1022,
             -(2.0 ** -1022), 2.0 ** -1074, 1e-300, 1e300, 2.0 ** 1023, 0.5, 1.5, 2.0 ** 60]
    return np.concatenate([rng.uniform(-750.0, 750.0, 4000), rng.uniform(-40.0, 40.0, 4000),
                           rng.uniform(-1.0, 1.0, 2000), rng.uniform(0.0, 2.0, 2000),
                           sign * 10.0 ** rng.uniform(-324.0, 308.0, 6000), edges,
                           np.negative(edges)])


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many float64 values lie between ``a`` and ``b``, elementwise (uint64; 0 when
    equal, +0.0 and -0.0 count as equal): the error in units in the last place. For
    finite values; an infinity counts as the value after the largest finite one.

    >>> ulp_distance(np.array([1.0, 0.0]), np.array([np.nextafter(1.0, 2.0), -5e-324]))
    array([1, 1], dtype=uint64)
    """
    ia, ib = a.view(np.int64), b.view(np.int64)
    low = np.int64(-2 ** 63)
    with np.errstate(over="ignore"):  # map the sign-magnitude bits to an ordered scale
        ia = np.where(ia < 0, low - ia, ia)
        ib = np.where(ib < 0, low - ib, ib)
        same = (ia < 0) == (ib < 0)
        near = np.abs(np.where(same, ia - ib, 0)).astype(np.uint64)
        far = np.abs(ia).astype(np.uint64) + np.abs(ib).astype(np.uint64)
    return np.where(same, near, far)


def _cpu_features() -> set:
    """Lower-case names of the vector extensions this CPU and OS run (NumPy's own dispatch
    table, which checks the OS saves the registers; else /proc/cpuinfo)."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            table = getattr(__import__(module, fromlist=["_"]), "__cpu_features__")
            return {name.lower() for name, on in table.items() if on} | {"sse2"}
        except (ImportError, AttributeError):
            continue
    try:
        with open("/proc/cpuinfo") as fp:
            for line in fp:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split()) | {"sse2"}
    except OSError:
        pass
    return {"sse2"}


def _libmvec():
    """glibc's vector math library, loaded, or None where it is not installed."""
    try:
        return ctypes.CDLL("libmvec.so.1")
    except OSError:
        return None


def _fast_math_setup():
    """``([(ISA name, compiler flags, functions libmvec provides), ...], None)``: the ways
    fast-math kernels may be built here, best first (a compiler that refuses the first
    ISA's flag gets the next), or ``(None, why not)``."""
    import platform
    if not enabled():
        return None, "compiled kernels are off (DIFFPROG_CKERNELS=0 or not a POSIX system)"
    if compiler() is None:
        return None, "no C compiler found (set CC, or install gcc)"
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return None, f"libmvec's vector functions are used on x86-64 only, not {machine}"
    mvec = _libmvec()
    if mvec is None:
        return None, "glibc's libmvec (libmvec.so.1) is not installed"
    features = _cpu_features()
    # no builtin forms of libm's functions: calls stay the libm (or libmvec) calls probed,
    # never merged (sin + cos into sincos) or folded; sqrt, fabs, floor... stay builtins
    no_builtin = tuple(f"-fno-builtin-{f}" for f in (*VECTOR_FUNCTIONS, "sincos"))
    setups = []
    for feature, isa, isa_flags, variants in _ISAS:
        functions = tuple(f for f, arity in VECTOR_FUNCTIONS.items()
                          if all(hasattr(mvec, f"_ZGV{letter}N{lanes}{'v' * arity}_{f}")
                                 for letter, lanes in variants))
        if feature in features and functions:
            setups.append((isa, FAST_FLAGS + isa_flags + no_builtin, functions))
    if not setups:
        return None, "libmvec here has no vector variant of the functions the kernels call"
    return setups, None


def _simd_header(functions) -> str:
    """The declarations making ``functions`` vector functions (before a fast kernel)."""
    lines = ["#define DP_USE_SINCOS 0"]
    for f in functions:
        lines += ["#pragma omp declare simd notinbranch",
                  f"double {f}({', '.join(['double'] * VECTOR_FUNCTIONS[f])});"]
    return "\n".join(lines) + "\n"


def _calls(name: str) -> set:
    """The vector-capable libm functions primitive ``name``'s spelling calls (``sincos``:
    the fused pair; ``integer_pow_shortcut``: arithmetic only)."""
    if name == "integer_pow_shortcut":
        return set()
    spelling = "DP_SINCOS(" if name == "sincos" else PRIMITIVES[name].c
    words = set(re.findall(r"\b(\w+)\(", spelling))
    found = {w for w in words if w in VECTOR_FUNCTIONS}
    for helper, functions in _HELPER_CALLS.items():
        if helper in words:
            found.update(functions)
    return found


class FastMath:
    """What fast math does here (from :func:`fast_math_state`): ``flags`` the compiler
    flags of fast-math kernels (None where fast math runs the exact kernels: ``why``
    says why), ``isa`` the vector extension, ``functions`` the libm functions called
    through libmvec, ``header`` their declarations, ``verdicts`` per spelling (None:
    within the bound, else why not), ``ulps`` the largest distance from NumPy per
    spelling on the probe values, ``vector_calls`` whether the compiler made libmvec
    calls at all (it may not: then fast kernels are scalar, and no faster)."""

    def __init__(self, flags=None, isa="", functions=(), header="", verdicts=None, ulps=None,
                 why=None, vector_calls=False):
        self.flags, self.isa, self.functions, self.header = flags, isa, tuple(functions), header
        self.verdicts, self.ulps = dict(verdicts or {}), dict(ulps or {})
        self.why, self.vector_calls = why, vector_calls


def fast_math_state() -> FastMath:
    """Fast math on this machine: probed once per process (building the probe library
    once per machine), on the compile thread when a fast-math kernel first needs it."""
    with _LOCK:
        if not _FAST:
            _FAST.append(_probe_fast_math())
        return _FAST[0]


_FAST: list = []


def _probe_fast_math() -> FastMath:
    setups, why = _fast_math_setup()
    if setups is None:
        return FastMath(why=f"unavailable ({why})")
    # the whole table (a fast kernel is built for a whole program's needs); NumPy's
    # results computed once, when the first library is built, for every setup and retry
    cases = [(name, b, inputs, functools.lru_cache(maxsize=None)(numpy))
             for name, b, inputs, numpy in _probe_cases(fast=True)]
    names = [f"dp_probe{k}" for k in range(len(cases))]
    sources = "".join(b.function(n, fast=True) for n, (_, b, _, _) in zip(names, cases))
    for isa, flags, functions in setups:
        try:
            return _probe_fast_setup(cases, names, sources, isa, flags, functions)
        except BuildError as exc:
            why = f"unavailable (its probe library was not built: {exc})"
    return FastMath(why=why)


def _probe_fast_setup(cases, names, sources, isa, flags, functions) -> FastMath:
    """The fast-math probe with one ISA's flags (raises BuildError)."""
    while True:
        header = _simd_header(functions)
        lib = library(header + sources, names, flags, FAST_LIBS)
        path = build(header + sources, flags, FAST_LIBS)  # (cached: where lib came from)
        verdicts: dict[str, str | None] = {}
        ulps: dict[str, int] = {}
        for k, (name, b, inputs, numpy) in enumerate(cases):
            expect, numpy_flags = numpy()
            got, raised = _run_probe(load(lib, names[k]), b, inputs)
            problem, worst = _within_bound(got, expect, numpy_flags, raised)
            ulps[name] = max(ulps.get(name, 0), worst)
            if verdicts.get(name) is None:
                verdicts[name] = problem
        failing = {f for n, v in verdicts.items() if v is not None for f in _calls(n)}
        if not failing & set(functions):
            break
        functions = tuple(f for f in functions if f not in failing)  # their scalar calls
    try:
        vector_calls = b"_ZGV" in _read_private(path)  # libmvec's names among its imports
    except _Unverified:
        vector_calls = False
    return FastMath(flags, isa, functions, header, verdicts, ulps, None, vector_calls)


def _within_bound(got, expect, numpy_flags: int, raised: int) -> tuple[str | None, int]:
    """(why a fast spelling's results ``got`` are not within the bound of NumPy's, or None;
    the largest ulp distance among finite results)."""
    expected = expect if isinstance(expect, tuple) else (expect,)
    worst, problem = 0, None
    for g, e in zip(got, expected):
        e = np.asarray(e)
        if g.dtype != e.dtype or g.shape != e.shape:
            return f"gives {g.dtype} {g.shape}, NumPy {e.dtype} {e.shape}", 0
        if g.dtype != _F64:
            if not np.array_equal(g, e):
                problem = problem or "its C spelling differs from NumPy on this machine"
            continue
        nan_e, nan_g = np.isnan(e), np.isnan(g)
        exact = ~nan_e & (np.isinf(e) | (e == 0))  # results that must keep their bits
        if np.any(nan_e != nan_g):
            problem = problem or "gives NaN where NumPy does not, or a number where it gives NaN"
        elif np.any(g[exact].view(np.int64) != e[exact].view(np.int64)):
            problem = problem or "changes an infinite or zero result (or its sign)"
        rest = ~nan_e & ~exact & ~nan_g
        if np.any(rest):
            worst = max(worst, int(ulp_distance(g[rest], e[rest]).max()))
    if problem is None and worst > ULP_BOUND:
        problem = f"differs from NumPy by {worst} ulp (more than {ULP_BOUND})"
    missed = [n for n, bit in FLAG_BITS.items() if numpy_flags & bit and not raised & bit]
    if problem is None and missed:
        problem = f"NumPy reports floating-point errors it does not raise ({', '.join(missed)})"
    return problem, worst


def fast_math_status() -> str:
    """One line: what fast math does here (for :func:`status`)."""
    fast = _FAST[0] if _FAST else None  # (no lock: the compile thread holds it while probing)
    if fast is None:
        return "fast math: not requested in this process yet"
    if fast.flags is None:
        return f"fast math: {fast.why}; fast-math programs run the exact kernels"
    used = sorted(n for n, v in fast.verdicts.items() if v is None and _calls(n) & set(fast.functions))
    bad = sorted(n for n, v in fast.verdicts.items() if v is not None)
    how = (f"libmvec {fast.isa} vector calls for {', '.join(fast.functions)}" if fast.vector_calls
           else "the compiler made no libmvec calls (scalar libm: no faster)")
    line = (f"fast math: {how}; within {ULP_BOUND} ulp of NumPy on the probe: "
            + ", ".join(f"{n} {fast.ulps[n]}" for n in used))
    return line + (f"; not used: {', '.join(bad)}" if bad else "")


# ============================================================================ running

def spelling_refusal(name: str) -> str | None:
    """None when a fused block can compute primitive ``name`` (an operand of float64
    values) bit for bit here, with its C spelling or by NumPy's own loop, else why not."""
    from . import cextern
    verdict = probe([name]).get(name, "not probed")
    if verdict is None:
        return None
    prim = PRIMITIVES.get(name)
    ufunc = None if prim is None else loop_ufunc(Eqn(prim, [], [], {}))
    why = "no NumPy loop stands in" if ufunc is None else cextern.loop_refusal(ufunc)
    return None if why is None else f"{verdict}; {why}"


def refusal(verdicts: dict, needs) -> str | None:
    """Why a kernel needing the spellings ``needs`` cannot be built from the probe's
    ``verdicts`` (a kernel's ``state``), or None when every one of them passed."""
    if _UNBUILT in verdicts:
        return f"failed ({verdicts[_UNBUILT]})"
    bad = sorted(f"{n}: {verdicts.get(n, 'not probed')}" for n in needs
                 if verdicts.get(n, "not probed") is not None)
    return "refused (" + "; ".join(bad) + ")" if bad else None


class Kernel:
    """A fused block's compiled twin. Calling it runs the block on the given arrays and
    returns its sums as ``[(block sums of reduction 0, ...)]`` (the shape the NumPy kernel's
    parts have, for :func:`diffprog.engines.fusion.combine`), or None when it cannot run
    this time (not compiled yet, refused, inputs not contiguous, or a floating-point flag
    NumPy's errstate wants reported): the caller then runs the NumPy block kernel, whose
    results are the same."""

    def __init__(self, source: str, *, spans, block, n_arrays, n_scalars, n_sums, n_tiles,
                 needs, sincos, loops=None, loop_gaps=frozenset(), externals=(),
                 fast_source: str | None = None):
        self.source, self.block = source, block
        self.spans = tuple(spans)  # the blocks: [(start, stop), ...], in order
        self.size = self.spans[-1][1] if self.spans else 0
        self.starts = np.array([i for i, _ in self.spans] + [self.size], np.int64)
        self.fast_source = fast_source  # a fast-math program's kernel: its libmvec twin
        self.n_arrays, self.n_scalars, self.n_sums, self.n_tiles = n_arrays, n_scalars, n_sums, n_tiles
        self.needs, self.uses_sincos = needs, sincos
        self.loops, self.loop_gaps, self.externals = loops or {}, loop_gaps, externals
        self._ext = None  # the table of NumPy loops the exact source calls (ext)
        self.state = "compiling"
        self.runs = 0
        self._fn = None
        _submit(self)

    def prepare(self) -> None:
        """Probe, build and load (on the background thread); sets ``state``. A fast-math
        kernel is built from ``fast_source`` when fast math works here and every spelling
        it needs stays within the bound (:func:`fast_math_state`), else as the exact
        kernel (its state says why)."""
        try:
            note = ""
            if self.fast_source is not None:
                fast = fast_math_state()
                why = fast.why if fast.flags is None else refusal(fast.verdicts, self.needs)
                if why is None:
                    lib = library(fast.header + self.fast_source, ("dp_block",), fast.flags,
                                  FAST_LIBS)
                    self._fn = load(lib, "dp_block")
                    self.state = "ready (fast math)"
                    return
                note = f" (exact kernel: fast math {why})"
            verdicts = probe()
            looped = self._looped(verdicts)
            refused = refusal(verdicts, self.needs - looped)
            if refused is not None:
                self.state = refused + note
                return
            use_sincos = self.uses_sincos and verdicts.get("sincos") is None
            defines = "".join(f"#define DP_LOOP_{n} {int(n in looped)}\n" for n in sorted(self.loops))
            lib = library(defines + f"#define DP_USE_SINCOS {int(use_sincos)}\n" + self.source)
            if looped:
                self._ext = self._ext_table()
            self._fn = load(lib, "dp_block")
            self.state = "ready" + note + (f" (NumPy's loops for {', '.join(sorted(looped))})"
                                           if looped else "")
        except Exception as exc:  # noqa: BLE001 - any failure leaves the NumPy kernel in charge
            self.state = f"failed ({type(exc).__name__}: {exc})"

    def _looped(self, verdicts) -> set:
        """Names whose C spelling differs from NumPy here and whose NumPy loop, called
        from C, was checked to give NumPy's bits (cextern's probe): the kernel calls it."""
        from . import cextern
        return {name for name, ufunc in self.loops.items()
                if verdicts.get(name) is not None and name not in self.loop_gaps
                and cextern.loop_refusal(ufunc) is None}

    def _ext_table(self):
        from . import cextern
        pointers = [cextern.loop_address(what, self.loops) for what in self.externals]
        return (ctypes.c_void_p * max(1, len(pointers)))(*pointers)

    def __call__(self, arrays, outputs, scalars):
        fn = self._fn
        if fn is None or len(arrays) + len(outputs) != self.n_arrays:
            return None
        for a in arrays:
            if not (a.flags.c_contiguous and a.flags.aligned):
                return None
        try:
            values = (ctypes.c_double * max(1, self.n_scalars))(*[float(s) for s in scalars])
        except (TypeError, ValueError, OverflowError):
            return None
        all_arrays = list(arrays) + list(outputs)
        ptrs = (ctypes.c_void_p * len(all_arrays))(*[a.ctypes.data for a in all_arrays])
        n_blocks, starts = len(self.spans), self.starts
        counter = np.zeros(1, np.int64)
        ext = self._ext
        sums = np.empty((self.n_sums, n_blocks))
        scratch_size = max(1, self.n_sums * self.block + self.n_tiles * TILE)

        def work():
            scratch = np.empty(scratch_size)
            return fn(counter.ctypes.data, n_blocks, starts.ctypes.data, ptrs, values,
                      sums.ctypes.data, scratch.ctypes.data, ext)

        raised = 0
        for flags in run_shared(work, min(num_threads(), n_blocks, self.size // PER_THREAD + 1)):
            raised |= flags
        if raised & _reported_flags():
            return None
        self.runs += 1
        return [tuple(row.tolist() for row in sums)]


def _reported_flags() -> int:
    err = np.geterr()
    return sum(bit for name, bit in FLAG_BITS.items() if err[name] != "ignore")


_PENDING: list = []      # futures of submitted kernels (wait() waits for them)
_KERNELS: list = []
_QUEUE: collections.deque = collections.deque()  # (kernel, future) not started yet
_QUEUE_READY = threading.Condition(threading.Lock())
_THREAD: list = [None]   # the compile thread


def _compile_loop() -> None:
    """The compile thread: one at a time, so compiles queue up instead of competing for
    the cores. A daemon: interpreter exit does not wait for it (see _abandon_builds)."""
    while True:
        with _QUEUE_READY:
            while not _QUEUE and not _CLOSING.is_set():
                _QUEUE_READY.wait()
            if _CLOSING.is_set():
                return
            kernel, future = _QUEUE.popleft()
        if future.set_running_or_notify_cancel():
            try:
                kernel.prepare()
            finally:
                future.set_result(None)


def _submit(kernel: Kernel) -> None:
    future = Future()
    with _QUEUE_READY:
        _KERNELS.append(kernel)
        del _KERNELS[:-64]
        if _CLOSING.is_set():
            kernel.state = "not compiled (the interpreter is exiting)"
            future.cancel()
            return
        _PENDING.append(future)
        _QUEUE.append((kernel, future))
        if _THREAD[0] is None:
            _THREAD[0] = threading.Thread(target=_compile_loop, name="diffprog-cc", daemon=True)
            _THREAD[0].start()
        _QUEUE_READY.notify()


def _abandon_builds() -> None:
    """At interpreter exit: cancel queued builds, kill a running compiler and remove the
    folders of unfinished builds, so exit never waits for the compiler and leaves nothing
    behind. Never blocks on a lock held while compiling."""
    _CLOSING.set()
    with _QUEUE_READY:
        queued = list(_QUEUE)
        _QUEUE.clear()
        _QUEUE_READY.notify_all()
    for kernel, future in queued:
        kernel.state = "not compiled (the interpreter exited first)"
        future.cancel()
    with _RUN_LOCK:
        procs, folders = list(_PROCS), list(_DIRS)
    for proc in procs:
        _kill(proc)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    if _FALLBACK[0] is not None and _FALLBACK[1] == os.getpid():
        shutil.rmtree(_FALLBACK[0], ignore_errors=True)  # this process's own cache


atexit.register(_abandon_builds)


def _forget_threads_in_child() -> None:
    # after fork the compile thread is gone: pending kernels stay on the NumPy path in the
    # child (their state says so) and new ones get a compile thread of the child's own.
    # The parent's compiler processes and folders are the parent's: the child's exit hook
    # must not touch them (nor the parent's fallback cache folder: _FALLBACK's pid)
    global _LOCK, _QUEUE_READY, _RUN_LOCK, _DIR_LOCK, _LOAD_LOCK, _CLOSING
    _LOCK, _RUN_LOCK, _DIR_LOCK, _LOAD_LOCK = threading.RLock(), threading.Lock(), \
        threading.Lock(), threading.Lock()
    _QUEUE_READY = threading.Condition(threading.Lock())
    _CLOSING = threading.Event()
    _THREAD[0] = None
    _QUEUE.clear()
    _PENDING.clear()
    _PROCS.clear()
    _DIRS.clear()
    for kernel in _KERNELS:
        if kernel.state == "compiling":
            kernel.state = "not compiled (the process forked while it was being built)"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads_in_child)


def kernels() -> list:
    """The most recently made kernels (up to 64), oldest first."""
    with _QUEUE_READY:
        return list(_KERNELS)


def wait(timeout: float | None = None) -> None:
    """Block until every kernel submitted so far is compiled (or refused, or cancelled)."""
    with _QUEUE_READY:
        pending = list(_PENDING)
    for future in pending:
        try:
            future.result(timeout=timeout)
        except CancelledError:
            pass
    with _QUEUE_READY:
        _PENDING[:] = [f for f in _PENDING if not f.done()]


def status() -> str:
    """One paragraph: whether compiled kernels are in use here, and the recent kernels'
    states (for bug reports and the README's performance notes)."""
    if not enabled():
        return "compiled kernels: off (DIFFPROG_CKERNELS=0 or not a POSIX system)"
    cc = compiler()
    if cc is None:
        return "compiled kernels: no C compiler found (set CC or install gcc); NumPy kernels run"
    with _QUEUE_READY:
        states = [k.state for k in _KERNELS]
    probed = dict(_PROBED)
    lines = [f"compiled kernels: compiler {cc}, cache {cache_dir()}"]
    if _UNBUILT in probed:
        lines.append(probed[_UNBUILT])
    elif probed:
        bad = sorted(n for n, v in probed.items() if v is not None)
        lines.append(f"probe: {len(probed) - len(bad)} spellings match NumPy"
                     + (f"; not used: {', '.join(bad)}" if bad else ""))
    lines.append(fast_math_status())
    lines += [f"kernel {k}: {s}" for k, s in enumerate(states)]
    return "\n".join(lines)


def reset() -> None:
    """Forget the probe and the kernel list (tests change compilers and settings)."""
    wait()
    with _LOCK:
        _PROBED.clear()
        _PROBE_STATE.clear()
        _FAST.clear()
        _IDENTITY.clear()
    with _QUEUE_READY:
        _KERNELS.clear()
