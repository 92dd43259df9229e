"""NumPy's own compiled routines, called from the compiled scan loops (cscan.py).

Why: a C loop reproduces NumPy bit for bit only where it computes what NumPy computes.
Two things NumPy computes in code of its own, which plain C cannot spell with the same
bits: ``matmul`` calls the BLAS library NumPy is linked with (OpenBLAS kernels sum in
their own order, with fused multiply-adds), and many ufuncs (``tanh``, ``exp``... on
AVX-512 machines) are NumPy's own SIMD loops. A neural ODE's vector field holds both, so
its scan kept the Python loop (~0.7 us of dispatch per equation, ~14000 equations per
gradient step in notebooks/03-neural-ode).

Here the C loop calls those very routines:

* ``matmul``: :func:`matmul_plan` follows NumPy's ``DOUBLE_matmul`` (numpy/_core/src/
  umath/matmul.c.src) for one product of 1-d/2-d float64 operands with the strides they
  have in the Python loop: the plain loop NumPy runs itself (spelled in C, same order),
  ``cblas_ddot`` or ``cblas_dgemv`` with the arguments NumPy passes, through the
  function pointers NumPy's extension resolves (its BLAS, not another one loaded). A
  product of two matrices (gemm/syrk) is not planned: the loop stays in Python.
* a unary ufunc whose C spelling differs from NumPy here: its inner loop for float64,
  read from the ufunc object (``PyUFuncObject.functions``, public C API), called on the
  contiguous operand as NumPy calls it.

Nothing is trusted unverified: :func:`matmul_refusal` compares each planned product with
NumPy's ``@`` on random operands of those exact shapes and strides (and a misaligned copy
of them), :func:`loop_refusal` compares each loop with the ufunc; a refusal keeps the
Python loop, as does a process whose BLAS or ufunc layout is not recognised.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

_F8 = 8  # bytes of a float64

# CBLAS enums
ROW_MAJOR, COL_MAJOR, NO_TRANS, TRANS = 101, 102, 111, 112

_LOCK = threading.RLock()


# ============================================================================ BLAS

class Blas:
    """The BLAS NumPy calls: ``dgemv``/``ddot`` as ctypes functions and raw addresses,
    and the width of its integers (8 for an ILP64 build such as scipy-openblas64)."""

    def __init__(self, path, gemv, dot, int_bytes):
        self.path, self.int_bytes = path, int_bytes
        I = ctypes.c_int64 if int_bytes == 8 else ctypes.c_int32
        self.gemv = ctypes.cast(gemv, ctypes.CFUNCTYPE(
            None, ctypes.c_int, ctypes.c_int, I, I, ctypes.c_double, ctypes.c_void_p, I,
            ctypes.c_void_p, I, ctypes.c_double, ctypes.c_void_p, I))
        self.dot = ctypes.cast(dot, ctypes.CFUNCTYPE(
            ctypes.c_double, I, ctypes.c_void_p, I, ctypes.c_void_p, I))
        self.addresses = {"dgemv": gemv, "ddot": dot}


# (prefix, suffix, integer bytes) of the CBLAS symbol names NumPy's wheels and builds use
_SYMBOLS = (("scipy_cblas_", "64_", 8), ("cblas_", "64_", 8), ("scipy_cblas_", "", 4),
            ("cblas_", "", 4))
_BLAS: list = []  # [Blas or None, why not]


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (Linux), for status messages."""
    try:
        with open("/proc/self/maps") as fp:
            for line in fp:
                parts = line.split(None, 5)
                lo, _, hi = parts[0].partition("-")
                if int(lo, 16) <= address < int(hi, 16) and len(parts) == 6:
                    return parts[5].strip()
    except (OSError, ValueError):
        pass
    return None


def blas() -> Blas | None:
    """NumPy's BLAS, or None (``blas_refusal()`` says why)."""
    with _LOCK:
        if not _BLAS:
            _BLAS[:] = _find_blas()
        return _BLAS[0]


def blas_refusal() -> str | None:
    blas()
    return _BLAS[1]


def _find_blas():
    """The CBLAS functions NumPy's own extension resolves: looked up through its handle,
    which searches it and the libraries it links (another BLAS loaded in this process,
    such as SciPy's, is not the one NumPy calls)."""
    try:
        from numpy._core import _multiarray_umath
    except ImportError:  # NumPy 1.x
        from numpy.core import _multiarray_umath
    try:
        lib = ctypes.CDLL(_multiarray_umath.__file__)  # loaded: one more reference
    except (OSError, AttributeError) as exc:
        return [None, f"NumPy's extension cannot be opened ({exc}); products keep the "
                      f"Python loop"]
    for prefix, suffix, width in _SYMBOLS:
        try:
            gemv = getattr(lib, f"{prefix}dgemv{suffix}")
            dot = getattr(lib, f"{prefix}ddot{suffix}")
        except AttributeError:
            continue
        address = ctypes.cast(gemv, ctypes.c_void_p).value
        return [Blas(_mapped_file(address), address, ctypes.cast(dot, ctypes.c_void_p).value,
                     width), None]
    return [None, "NumPy links no CBLAS this process can find (dgemv/ddot); products keep "
                  "the Python loop"]


# ============================================================================ matmul plans

def _blasable2d(s1: int, s2: int, d1: int, d2: int) -> bool:
    """NumPy's is_blasable2d (byte strides)."""
    if s2 != _F8:
        return False
    return s1 % _F8 == 0 and s1 // _F8 >= d2 and s1 >= 0


def _blas_stride(s: int) -> int:
    return s // _F8 if s > 0 and s % _F8 == 0 else 0


class Plan:
    """How NumPy computes one product ``a @ b`` (1-d or 2-d float64 operands, byte strides
    as in the Python loop): ``kind`` is "loop" (NumPy's own triple loop: sums from 0.0 in
    order), "dot" (``0.0 + ddot``) or "gemv" with ``args`` (order, trans, M, N, lda, inc of
    the vector) and which operand is the matrix. ``key`` identifies it for the probe."""

    __slots__ = ("kind", "args", "matrix", "key", "dm", "dn", "dp")

    def __init__(self, kind, key, dm, dn, dp, args=(), matrix=0):
        self.kind, self.key, self.args, self.matrix = kind, key, args, matrix
        self.dm, self.dn, self.dp = dm, dn, dp


def matmul_plan(shape1, strides1, shape2, strides2) -> Plan | str:
    """NumPy's choice for ``a @ b`` (DOUBLE_matmul), or why no plan is made."""
    if len(shape1) not in (1, 2) or len(shape2) not in (1, 2):
        return f"matmul of shapes {tuple(shape1)} and {tuple(shape2)} (stacks of matrices)"
    if len(shape1) == 1:
        dm, dn, is1_m, is1_n = 1, shape1[0], 0, strides1[0]
    else:
        (dm, dn), (is1_m, is1_n) = shape1, strides1
    if len(shape2) == 1:
        dp, is2_n, is2_p = 1, strides2[0], 0
    else:
        (_, dp), (is2_n, is2_p) = shape2, strides2
    # strides of length-1 axes are never read below (NumPy's own choices do not read them
    # either): zero them, so the key depends on the layout only
    is1_m, is1_n = (is1_m if dm > 1 else 0), (is1_n if dn > 1 else 0)
    is2_n, is2_p = (is2_n if dn > 1 else 0), (is2_p if dp > 1 else 0)
    key = (len(shape1), len(shape2), dm, dn, dp, is1_m, is1_n, is2_n, is2_p)

    def loop():
        return Plan("loop", key, dm, dn, dp)

    if dm == 0 or dn == 0 or dp == 0:
        return loop()
    if dm == 1 or dn == 1 or dp == 1:
        if dm == 1 and dp == 1:
            if dn > 1 and _blas_stride(is1_n) and _blas_stride(is2_n):
                return Plan("dot", key, dm, dn, dp, (dn, is1_n // _F8, is2_n // _F8))
            return loop()  # DOUBLE_dot's own loop: 0 + a0*b0 + ...
        if dn == 1:
            return loop()
        i1 = _blasable2d(is1_m, is1_n, dm, dn) or _blasable2d(is1_n, is1_m, dn, dm)
        i2 = _blasable2d(is2_n, is2_p, dn, dp) or _blasable2d(is2_p, is2_n, dp, dn)
        if dm == 1 and i2 and _blasable2d(is1_n, _F8, dn, 1):
            # vector @ matrix: DOUBLE_gemv(ip2, is2_p, is2_n, ip1, is1_n, op, os_p, dp, dn)
            return Plan("gemv", key, dm, dn, dp, _gemv_args(is2_p, is2_n, dp, dn, is1_n), 2)
        if dp == 1 and i1 and _blasable2d(is2_n, _F8, dn, 1):
            return Plan("gemv", key, dm, dn, dp, _gemv_args(is1_m, is1_n, dm, dn, is2_n), 1)
        return loop()
    return f"matmul of a ({dm}, {dn}) and a ({dn}, {dp}) matrix (BLAS gemm/syrk is not " \
           f"called from compiled loops)"


def _gemv_args(is_m, is_n, m, n, inc):
    """DOUBLE_gemv's cblas_dgemv arguments for an m x n matrix of byte strides (is_m,
    is_n) times a vector of byte stride inc: (order, trans, N, M, lda, incx)."""
    if _blasable2d(is_m, is_n, m, n):
        order, lda = COL_MAJOR, is_m // _F8
    else:
        order, lda = ROW_MAJOR, is_n // _F8
    return (order, TRANS, n, m, lda, inc // _F8)


# ---------------------------------------------------------------- the probe

_VERDICTS: dict = {}


def _strided(rng, shape, strides, values, misalign):
    """A float64 array of ``shape`` and byte ``strides`` over a fresh buffer, holding
    ``values`` (drawn by ``values(rng, n)``); length-1 axes get stride 0 or 8 (NumPy's
    ddot path for a product of length 1 reads them), at random."""
    unit = int(rng.integers(2)) * _F8
    strides = tuple(s if d > 1 else unit for d, s in zip(shape, strides))
    lo = sum((d - 1) * s // _F8 for d, s in zip(shape, strides) if s < 0 and d > 1)
    hi = sum((d - 1) * s // _F8 for d, s in zip(shape, strides) if s > 0 and d > 1)
    buf = values(rng, hi - lo + 2)
    start = (1 if misalign else 0) - lo
    return np.lib.stride_tricks.as_strided(buf[start:], shape, strides)


def _moved(x: np.ndarray) -> np.ndarray:
    """``x``'s values, strides and layout in a buffer 8 bytes off its alignment."""
    lo = sum((d - 1) * s for d, s in zip(x.shape, x.strides) if s < 0 and d > 1)
    hi = sum((d - 1) * s for d, s in zip(x.shape, x.strides) if s > 0 and d > 1)
    base = x.ctypes.data + lo
    buf = np.empty((hi - lo) // _F8 + 3)
    shift = 1 if (buf.ctypes.data - base) % 16 == 0 else 2
    out = np.lib.stride_tricks.as_strided(buf[shift - lo // _F8:], x.shape, x.strides)
    out[...] = x
    return out


def _same_bits(x, y) -> bool:
    x, y = np.asarray(x), np.asarray(y)
    return bool(np.all((x.view(np.int64) == y.view(np.int64)) | (np.isnan(x) & np.isnan(y))))


def _normal(rng, n):
    return rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)


def _special(rng, n):
    pool = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 3.0, 1e-310, -2.5e-308, 1e300, np.inf,
                     -np.inf, np.nan])
    out = _normal(rng, n)
    mask = rng.random(n) < 0.3
    out[mask] = rng.choice(pool, int(mask.sum()))
    return out


def run_plan(plan: Plan, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` computed as the compiled loop computes it (the BLAS call through ctypes,
    NumPy's own loop in Python floats: the same IEEE operations in the same order)."""
    dm, dn, dp = plan.dm, plan.dn, plan.dp
    A = a.reshape(dm, dn) if a.ndim == 1 else a
    B = b.reshape(dn, dp) if b.ndim == 1 else b
    out_shape = _out_shape(a.shape, b.shape)
    if plan.kind == "loop":
        res = np.empty((dm, dp))
        for m in range(dm):
            for p in range(dp):
                s = 0.0
                for n in range(dn):
                    s += float(A[m, n]) * float(B[n, p])
                res[m, p] = s
        return res.reshape(out_shape)
    lib = blas()
    if plan.kind == "dot":
        n, inc1, inc2 = plan.args
        return np.array(0.0 + lib.dot(n, a.ctypes.data, inc1, b.ctypes.data, inc2)).reshape(out_shape)
    order, trans, n, m, lda, incx = plan.args
    matrix, vector = (b, a) if plan.matrix == 2 else (a, b)
    out = np.zeros(m)
    lib.gemv(order, trans, n, m, 1.0, matrix.ctypes.data, lda, vector.ctypes.data, incx,
             0.0, out.ctypes.data, 1)
    return out.reshape(out_shape)


def _out_shape(s1, s2):
    rows = (s1[0],) if len(s1) == 2 else ()
    cols = (s2[1],) if len(s2) == 2 else ()
    return rows + cols


def matmul_refusal(plan: Plan, shape1, shape2) -> str | None:
    """None when ``plan`` reproduces NumPy's ``@`` for operands of these shapes and the
    plan's strides, bit for bit (once per plan and process), else why not."""
    key = (plan.key, tuple(shape1), tuple(shape2))
    with _LOCK:
        if key in _VERDICTS:
            return _VERDICTS[key]
        verdict = _probe_matmul(plan, shape1, shape2)
        _VERDICTS[key] = verdict
        return verdict


def _probe_matmul(plan, shape1, shape2) -> str | None:
    if plan.kind != "loop" and blas() is None:
        return blas_refusal()
    _, _, _, _, _, is1_m, is1_n, is2_n, is2_p = plan.key
    st1 = (is1_n,) if len(shape1) == 1 else (is1_m, is1_n)
    st2 = (is2_n,) if len(shape2) == 1 else (is2_n, is2_p)
    rng = np.random.default_rng(20261202)
    try:
        for trial in range(24):
            values = _special if trial % 3 == 2 else _normal
            a = _strided(rng, shape1, st1, values, misalign=trial % 2 == 1)
            b = _strided(rng, shape2, st2, values, misalign=trial % 4 == 1)
            # the same values 8 bytes further on: the loop's buffers sit where NumPy's do not
            a2, b2 = _moved(a), _moved(b)
            with np.errstate(all="ignore"):
                expect, moved = a @ b, a2 @ b2
                got = run_plan(plan, a, b)
            if not (_same_bits(expect, got) and _same_bits(expect, moved)):
                why = "differs from NumPy" if _same_bits(expect, moved) else \
                    "depends on where NumPy's operands sit in memory"
                return f"matmul of {tuple(shape1)} and {tuple(shape2)} ({plan.kind}) {why} " \
                       f"on this machine"
    except Exception as exc:  # noqa: BLE001 - anything unexpected keeps the Python loop
        return f"matmul probe failed ({type(exc).__name__}: {exc})"
    return None


# ============================================================================ ufunc loops

_LOOPS: dict = {}
_LOOP_TYPE = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p),
                              ctypes.POINTER(ctypes.c_ssize_t), ctypes.POINTER(ctypes.c_ssize_t),
                              ctypes.c_void_p)


def _read_ufunc(ufunc, types: tuple):
    """(loop address, data address) of ``ufunc``'s inner loop for the type numbers
    ``types``, read from the PyUFuncObject (numpy/ufuncobject.h: PyObject_HEAD; int nin,
    nout, nargs, identity; functions; data; int ntypes, reserved1; name; types), or None
    when the object does not look like that."""
    if not isinstance(ufunc, np.ufunc):
        return None
    head = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
    base = id(ufunc)
    P, ptr = ctypes.c_void_p, ctypes.sizeof(ctypes.c_void_p)
    nin, nout, nargs, _ = (ctypes.c_int * 4).from_address(base + head)
    at = head + 16
    functions = P.from_address(base + at).value
    data = P.from_address(base + at + ptr).value
    ntypes = ctypes.c_int.from_address(base + at + 2 * ptr).value
    name = ctypes.c_char_p.from_address(base + at + 2 * ptr + 8).value
    type_chars = P.from_address(base + at + 3 * ptr + 8).value
    if (nin, nout, nargs) != (ufunc.nin, ufunc.nout, ufunc.nargs) or ntypes != ufunc.ntypes \
            or name != ufunc.__name__.encode() or not functions or not type_chars:
        return None
    table = (ctypes.c_ubyte * (ntypes * nargs)).from_address(type_chars)
    for i in range(ntypes):
        if tuple(table[i * nargs:(i + 1) * nargs]) == types:
            fn = P.from_address(functions + i * ptr).value
            payload = P.from_address(data + i * ptr).value if data else None
            return (fn, payload) if fn else None
    return None


def ufunc_loop(ufunc):
    """(loop address, data address or None) of ``ufunc``'s float64 -> float64 loop (one
    operand), or None."""
    with _LOCK:
        if ufunc not in _LOOPS:
            try:
                d = np.dtype(np.float64).num
                _LOOPS[ufunc] = _read_ufunc(ufunc, (d, d)) if ufunc.nin == 1 and ufunc.nout == 1 \
                    else None
            except (ValueError, TypeError, OSError):
                _LOOPS[ufunc] = None
        return _LOOPS[ufunc]


def loop_address(what: str, loops: dict):
    """The address a compiled loop's table of externals holds for ``what``: "loop:<name>"
    (the inner loop of ``loops[name]``, a ufunc) or "data:<name>" (its data pointer); None
    when the loop was not found."""
    kind, name = what.split(":")
    found = ufunc_loop(loops[name])
    return (found[0] if kind == "loop" else found[1]) if found else None


def call_loop(ufunc, x: np.ndarray) -> np.ndarray:
    """``ufunc(x)`` for a contiguous float64 ``x`` by calling its loop as the C code does."""
    fn, data = ufunc_loop(ufunc)
    out = np.empty_like(x)
    args = (ctypes.c_void_p * 2)(x.ctypes.data, out.ctypes.data)
    dims = (ctypes.c_ssize_t * 1)(x.size)
    steps = (ctypes.c_ssize_t * 2)(_F8, _F8)
    _LOOP_TYPE(fn)(args, dims, steps, data)
    return out


_LOOP_VERDICTS: dict = {}


def loop_refusal(ufunc) -> str | None:
    """None when calling ``ufunc``'s float64 loop gives ``ufunc``'s bits (probed once per
    process on values across its ranges, arrays of 1 to 33 elements and a long one)."""
    with _LOCK:
        if ufunc in _LOOP_VERDICTS:
            return _LOOP_VERDICTS[ufunc]
        verdict = _probe_loop(ufunc)
        _LOOP_VERDICTS[ufunc] = verdict
        return verdict


def _probe_loop(ufunc) -> str | None:
    from .fastmath import probe_values
    if ufunc_loop(ufunc) is None:
        return f"{getattr(ufunc, '__name__', ufunc)}: its float64 loop was not found"
    x = np.concatenate([probe_values(), np.linspace(-40, 40, 2001)])
    rng = np.random.default_rng(7)
    cases = [x] + [rng.permutation(x)[:n].copy() for n in range(1, 34)]
    try:
        with np.errstate(all="ignore"):
            for case in cases:
                moved = _moved(case)  # 8 bytes off: NumPy's result must not depend on it
                expect = ufunc(case)
                if not (_same_bits(expect, call_loop(ufunc, case))
                        and _same_bits(expect, call_loop(ufunc, moved))
                        and _same_bits(expect, ufunc(moved))):
                    return f"{ufunc.__name__}: its loop called directly differs from NumPy"
    except Exception as exc:  # noqa: BLE001
        return f"{ufunc.__name__}: loop probe failed ({type(exc).__name__}: {exc})"
    return None
