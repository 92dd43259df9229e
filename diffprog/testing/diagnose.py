"""Why a gradient check failed: finite-difference noise, a kink, or a real bug (and
which common bug: a constant factor, a sign flip, a transposed or swapped gradient).

Runs only after a failure, so it may spend evaluations: finite differences at
``eps*10`` and ``eps/10``, one-sided differences, and a per-element check of the
failing argument.
"""
from __future__ import annotations

# pytest hides the frames of modules that set this: a failing gradient check shows the
# user's test and the report, not diffprog's own source (`pytest --fulltrace` shows all)
__tracebackhide__ = True

import numpy as np

from .report import CheckResult, ElementMismatch

_NAMED_FACTORS = {
    -1.0: "a sign flip (analytic = -1 x numeric)",
    2.0: "off by a factor of 2 (a missing 1/2, or a term counted twice)",
    0.5: "off by a factor of 1/2 (a missing factor 2, e.g. d(x^2) = 2x)",
    -2.0: "off by a factor of -2 (sign flip and a factor 2)",
    -0.5: "off by a factor of -1/2 (sign flip and a missing factor 2)",
}


def explain(checker, d, mode: str, i: int, u: list, result: CheckResult, dense_analytic=None):
    """Fill ``result.dense`` and ``result.diagnosis`` for a failed check of leaf ``i``."""
    from .checks import _dot
    p = checker.p
    v = checker.directions[i]
    if mode == "rev":
        analytic = result.analytic
    else:
        analytic = _dot(u, d.jvp(p, i, v))
    verdict, lines = _convergence(checker, i, u, v, analytic)
    dense = _dense(checker, d, mode, i, u, dense_analytic)
    result.dense = dense.summary
    result.diagnosis += lines
    if verdict == "bug":
        complex_arg = np.dtype(p.dtype(i)).kind == "c"
        found = (conjugated(dense.analytic, dense.numeric, checker.rtol) if complex_arg else "") \
            or patterns(dense.analytic, dense.numeric, _others(checker, i, u, dense), checker.rtol,
                        full=dense.full)
        result.diagnosis.append(found or "no simple pattern (constant factor, sign, transpose, "
                                         "swapped arguments) explains the difference")


def _convergence(checker, i, u, v, analytic):
    """Retry with eps*10 and eps/10; compare one-sided differences (kinks)."""
    from .checks import _dot
    fd = checker.fd
    h = fd.step(i)
    phi0 = _dot(u, fd.evaluate(i, v, 0.0))
    central, right, left = {}, {}, {}
    for hh in (h / 10, h, h * 10):
        plus, minus = _dot(u, fd.evaluate(i, v, hh)), _dot(u, fd.evaluate(i, v, -hh))
        central[hh] = (plus - minus) / (2 * hh)
        right[hh], left[hh] = (plus - phi0) / hh, (phi0 - minus) / hh
    scale = max([abs(analytic)] + [abs(c) for c in central.values()])
    tol = checker.tolerance(scale)
    eps_text = {hh: f"eps={fd.eps * hh / h:.0e}" for hh in central}
    values = ", ".join(f"{central[hh]:.6g} at {eps_text[hh]}" for hh in sorted(central))
    jumps = [abs(right[hh] - left[hh]) for hh in (h / 10, h, h * 10)]
    # A kink: one-sided derivatives differ by the same amount at every step size
    # (smooth: the gap shrinks like eps; rounding noise: it grows like 1/eps).
    if min(jumps) > 10 * tol and max(jumps) < 3 * min(jumps):
        return "kink", [
            f"a kink: the function is not differentiable here. One-sided differences disagree "
            f"by the same amount at every eps (left {left[h / 10]:.6g}, right "
            f"{right[h / 10]:.6g} at {eps_text[h / 10]}); abs/relu/max/clip at a tie or 0?",
            f"the analytic value {analytic:.6g} is one valid choice at the kink; move the test "
            f"point off it (e.g. avoid exact zeros)."]
    for hh in (h / 10, h * 10):
        if abs(central[hh] - analytic) <= tol:
            return "noise", [
                f"finite-difference noise: with {eps_text[hh]} the numeric value "
                f"{central[hh]:.6g} matches the analytic {analytic:.6g} (values: {values}). The "
                f"derivative looks right; pass eps={fd.eps * hh / h:.0e} or a looser rtol."]
    c_small, c_mid, c_big = central[h / 10], central[h], central[h * 10]
    if abs(c_small) > 5 * abs(c_mid) > 25 * abs(c_big) > 0:
        return "kink", [
            f"a jump: the central differences grow like 1/eps ({values}), so the function "
            f"being differentiated is discontinuous here. At order 2 this is a kink of f "
            f"(abs/relu/max/clip at a tie or 0?); move the test point off it."]
    spread = max(central.values()) - min(central.values())
    if spread > tol:
        return "unstable", [
            f"finite differences do not converge (values: {values}): the function may be "
            f"noisy, discontinuous or badly conditioned here; no verdict on the derivative. "
            f"Try another point or eps."]
    return "bug", [
        f"a real bug: finite differences agree for eps x10 and /10 ({values}) while the "
        f"analytic value is {analytic:.6g}."]


class _Dense:
    def __init__(self, analytic, numeric, summary, full, indices):
        self.analytic, self.numeric, self.summary = analytic, numeric, summary
        self.full, self.indices = full, indices


def _numeric_elements(checker, i, u, indices, unit=1.0):
    """<u, J e_k> by finite differences, e_k along element k's real axis (``unit`` 1j:
    its imaginary axis, for complex arguments)."""
    from .checks import _dot
    shape = checker.p.shape(i)
    out = np.empty(len(indices))
    h = checker.fd.step(i)
    for n, k in enumerate(indices):
        e = np.zeros(int(np.prod(shape, dtype=np.int64)), type(unit))
        e[k] = unit
        out[n] = _dot(u, checker.fd.directional(i, e.reshape(shape), h))
    return out


def _dense(checker, d, mode, i, u, dense_analytic) -> _Dense:
    """Element-by-element check of leaf i, of <u, J e_k>, on all (or a sample of) elements."""
    from .checks import DENSE_LIMIT, _dot, element_path
    p = checker.p
    shape = p.shape(i)
    size = int(np.prod(shape, dtype=np.int64))
    limit = DENSE_LIMIT if mode == "rev" else DENSE_LIMIT // 8  # forward: one jvp per element
    full = size <= limit
    indices = np.arange(size) if full else np.sort(checker.rng.choice(size, limit, replace=False))
    units = (1.0, 1j) if np.dtype(p.dtype(i)).kind == "c" else (1.0,)
    numeric = np.concatenate([_numeric_elements(checker, i, u, indices, unit) for unit in units])
    if mode == "rev":
        # <J^T u, unit e_k> = Re(grad_k * unit) (JAX's convention): Re(g), then -Im(g)
        g = np.asarray(dense_analytic).reshape(-1)[indices]
        analytic = np.concatenate([np.real(g * unit) for unit in units]).astype(np.float64)
    else:
        analytic = np.empty(len(numeric))
        for m, unit in enumerate(units):
            for n, k in enumerate(indices):
                e = np.zeros(size, type(unit))
                e[k] = unit
                analytic[m * len(indices) + n] = _dot(u, d.jvp(p, i, e.reshape(shape)))
    if len(units) == 2:
        return _complex_dense(checker, p, i, shape, size, indices, analytic, numeric, full)
    err = np.abs(analytic - numeric)
    scale = float(np.max(np.abs(numeric))) if numeric.size else 0.0
    bad = err > checker.atol + checker.rtol * np.maximum(np.abs(numeric), scale)
    k = int(np.argmax(err)) if err.size else 0
    rel = err[k] / max(abs(numeric[k]), abs(analytic[k]), 1e-300) if err.size else 0.0
    summary = ElementMismatch(
        checked=len(indices), size=size, mismatched=int(bad.sum()),
        worst_path=element_path(p.paths[i], shape, int(indices[k]) if err.size else 0),
        analytic=float(analytic[k]) if err.size else 0.0,
        numeric=float(numeric[k]) if err.size else 0.0,
        abs_err=float(err[k]) if err.size else 0.0, rel_err=float(rel))
    if full:
        analytic, numeric = analytic.reshape(shape), numeric.reshape(shape)
    return _Dense(analytic, numeric, summary, full, indices)


def _complex_dense(checker, p, i, shape, size, indices, analytic, numeric, full) -> _Dense:
    """The per-element check of a complex argument: each element along its real axis,
    then along its imaginary axis; a conjugated gradient (PyTorch's convention instead
    of JAX's) agrees on the first and flips sign on the second."""
    from .checks import element_path
    err = np.abs(analytic - numeric)
    scale = float(np.max(np.abs(numeric))) if numeric.size else 0.0
    bad = err > checker.atol + checker.rtol * np.maximum(np.abs(numeric), scale)
    k = int(np.argmax(err)) if err.size else 0
    n = len(indices)
    axis = "real" if k < n else "imaginary"
    rel = err[k] / max(abs(numeric[k]), abs(analytic[k]), 1e-300) if err.size else 0.0
    summary = ElementMismatch(
        checked=len(analytic), size=2 * size, mismatched=int(bad.sum()),
        worst_path=element_path(p.paths[i], shape, int(indices[k % n]) if n else 0)
        + f" ({axis} axis)",
        analytic=float(analytic[k]) if err.size else 0.0,
        numeric=float(numeric[k]) if err.size else 0.0,
        abs_err=float(err[k]) if err.size else 0.0, rel_err=float(rel))
    return _Dense(analytic, numeric, summary, False, indices)


def conjugated(analytic, numeric, rtol: float) -> str:
    """'' unless ``analytic`` is the conjugate of ``numeric`` (real axes first, then
    imaginary axes, as _complex_dense orders them)."""
    a, n = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    half = len(n) // 2
    flipped = np.concatenate([n[:half], -n[half:]])
    tol = max(10 * rtol, 1e-3) * max(float(np.linalg.norm(n)), 1e-300)
    if half and np.linalg.norm(n[half:]) > tol and np.linalg.norm(a - flipped) <= tol:
        return ("the conjugate of the expected gradient: diffprog uses JAX's convention "
                "(grad of a real f(x + iy) is df/dx - i df/dy); the rule returns df/dx + i "
                "df/dy (PyTorch's). Fix: conjugate the cotangents the rule returns.")
    return ""


def _others(checker, i, u, dense: _Dense) -> dict:
    """Numeric derivatives of the other arguments with the same shape (swapped gradients)."""
    if not dense.full:
        return {}
    p = checker.p
    out = {}
    for j in p.float_idx:
        if j != i and p.shape(j) == p.shape(i):
            out[p.paths[j]] = _numeric_elements(checker, j, u, dense.indices).reshape(p.shape(j))
    return out


def patterns(analytic, numeric, others: dict, rtol: float, full: bool = True) -> str:
    """Name the common rule bug that maps ``numeric`` to ``analytic``, or ''."""
    a = np.asarray(analytic, np.float64)
    n = np.asarray(numeric, np.float64)
    tol = max(10 * rtol, 1e-3)
    na, nn = float(np.linalg.norm(a)), float(np.linalg.norm(n))
    tiny = 1e-12 * max(na, nn, 1e-300)
    if nn <= tiny:
        return ("the numeric derivative is zero but the analytic one is not: the output does "
                "not depend on this argument here; the rule returns a gradient for it anyway "
                "(gradient of the wrong argument?)")
    if na <= tol * nn:
        return ("the analytic derivative is zero: the rule returns None/zeros for this argument, "
                "or the value reaches the output through a path diffprog does not see")
    for path, other in others.items():
        if np.linalg.norm(a - other) <= tol * max(np.linalg.norm(other), tiny):
            return (f"the analytic derivative equals the numeric derivative with respect to "
                    f"{path}: the rule returns the gradients in the wrong order (swapped "
                    f"arguments) or differentiates the wrong argument")
    if full and a.ndim >= 2:
        t = n.T.reshape(a.shape)
        if np.linalg.norm(n - t) > tol * nn and np.linalg.norm(a - t) <= tol * nn:
            return ("the analytic derivative is the transpose of the numeric one: a transposed "
                    "gradient (e.g. g @ x instead of x.T @ g, or a missing .T)")
    c = float(np.sum(a * n) / np.sum(n * n))
    if abs(c - 1) > tol and np.linalg.norm(a - c * n) <= tol * na:
        for value, text in _NAMED_FACTORS.items():
            if abs(c - value) <= tol * abs(value):
                return text
        return f"off by a constant factor: analytic = {c:.6g} x numeric"
    return ""
