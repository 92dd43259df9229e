"""Gradient checks: diffprog's derivatives (or yours) against finite differences.

Cheap by default: each float argument is checked along one random direction ``v``
and, in reverse mode, against one random output cotangent ``u``: a couple of
function evaluations per argument whatever its size. Only when a check fails is the
failing argument checked element by element, and the failure diagnosed.
"""
from __future__ import annotations

# pytest hides the frames of modules that set this: a failing gradient check shows the
# user's test and the report, not diffprog's own source (`pytest --fulltrace` shows all)
__tracebackhide__ = True

import inspect
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .. import api
from .. import engines as _engines
from ..errors import ArgumentError, ArgumentValueError, GradCheckError, NotDifferentiableError
from ..leaves import is_dynamic
from ..primitives.core import real_dtype
from ..tree import TreeDef, flatten, unflatten
from . import diagnose
from .report import CheckResult, GradCheckReport

# (rtol, atol) by the dtype the analytic derivative is computed in. float32 gradients
# carry rounding errors of ~1e-7 per operation; the default must not fail a correct one.
DEFAULT_TOLERANCES = {
    np.dtype(np.float16): (5e-2, 1e-3),
    np.dtype(np.float32): (2e-3, 1e-5),
    np.dtype(np.float64): (1e-5, 1e-8),
}
DEFAULT_EPS = {np.dtype(np.float64): 1e-6, np.dtype(np.float32): 1e-3, np.dtype(np.float16): 1e-2}
DENSE_LIMIT = 2048  # at most this many elements in a per-element check (sampled beyond)
SEED_ENV = "DIFFPROG_TEST_SEED"
MODE_NAMES = {"rev": "reverse", "fwd": "forward"}


def default_seed() -> int:
    """$DIFFPROG_TEST_SEED if set (the pytest plugin's --diffprog-seed sets it), else 0."""
    return int(os.environ.get(SEED_ENV, "0"))


# ============================================================================ setup

def _is_float_leaf(leaf) -> bool:
    """A real or complex floating leaf: the values check_grads differentiates."""
    if isinstance(leaf, (float, complex)):
        return True
    return isinstance(leaf, (np.ndarray, np.inexact)) and np.issubdtype(leaf.dtype, np.inexact)


def _fd_dtype(dtype) -> np.dtype:
    """Where finite differences run: float64, or complex128 for complex values."""
    return np.dtype(np.complex128 if np.dtype(dtype).kind == "c" else np.float64)


def _random_like(rng: np.random.Generator, shape, dtype):
    """A standard-normal direction; complex for complex values, so one random direction
    moves every element along both its real and its imaginary axis."""
    if np.dtype(dtype).kind == "c":
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return rng.standard_normal(shape)


def _param_names(f, n_args: int) -> list[str]:
    try:
        params = [p for p in inspect.signature(f).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in params[:n_args]]
    except (TypeError, ValueError):
        names = []
    return names + [f"args[{i}]" for i in range(len(names), n_args)]


def _step_text(td: TreeDef, i: int) -> str:
    if td.kind == "dict":
        k = td.keys[i]
        return f'["{k}"]' if isinstance(k, str) and '"' not in k else f"[{k!r}]"
    if td.kind == "namedtuple":
        return f".{td.keys[i]}"
    return f"[{i}]"


def _leaf_names(treedef: TreeDef, names: list[str]) -> list[str]:
    """``params["w"]``-style paths of each leaf, rooted at the parameter names of f."""
    out = []

    def walk(td, prefix):
        if td.kind == "leaf":
            out.append(prefix)
            return
        for i, child in enumerate(td.children):
            walk(child, prefix + _step_text(td, i))

    for name, child in zip(names, treedef.children):
        walk(child, name)
    return out


def element_path(path: str, shape: tuple, flat_index: int) -> str:
    if not shape:
        return path
    idx = np.unravel_index(flat_index, shape)
    return f"{path}[{', '.join(str(int(i)) for i in idx)}]"


class Problem:
    """The function and its arguments, split into float leaves (checked) and the rest."""

    def __init__(self, f: Callable, args: tuple, name_source: Callable | None = None):
        self.f = f
        self.args = args
        self.leaves, self.treedef = flatten(args)
        self.paths = _leaf_names(self.treedef, _param_names(name_source or f, len(args)))
        self.float_idx = [i for i, l in enumerate(self.leaves) if _is_float_leaf(l)]
        if not self.float_idx:
            raise ArgumentError(
                "check_grads: no floating-point argument to differentiate; found leaves of types "
                f"{sorted({type(l).__name__ for l in self.leaves})}. Fix: pass float arrays "
                f"(e.g. np.asarray(x, dtype=float)).")

    def shape(self, i) -> tuple:
        return tuple(np.shape(self.leaves[i]))

    def dtype(self, i) -> np.dtype:
        leaf = self.leaves[i]
        if hasattr(leaf, "dtype"):
            return np.dtype(leaf.dtype)
        return np.dtype(np.complex128 if isinstance(leaf, complex) else np.float64)

    def args_with(self, values: dict) -> tuple:
        leaves = list(self.leaves)
        for i, v in values.items():
            leaves[i] = v
        return unflatten(self.treedef, leaves)

    def analytic_dtype(self) -> np.dtype:
        """The real precision the derivatives are computed in (float32 for complex64)."""
        dtype = np.result_type(*[self.dtype(i) for i in self.float_idx])
        return real_dtype(dtype)


def _flat_outputs(out) -> list[np.ndarray]:
    leaves, _ = flatten(out)
    return [np.asarray(l) for l in leaves if _is_float_leaf(l) or
            (hasattr(l, "dtype") and np.issubdtype(np.asarray(l).dtype, np.inexact))]


# ============================================================ finite differences

class FiniteDifferences:
    """Central differences of f along one argument's direction, in float64 when f allows."""

    def __init__(self, problem: Problem, eps: float | None):
        self.p = problem
        self.base = {i: self._as_fd(problem.leaves[i], _fd_dtype(problem.dtype(i)))
                     for i in problem.float_idx}
        self.dtype = np.dtype(np.float64)
        try:
            outs = _flat_outputs(problem.f(*problem.args_with(self.base)))
            reals = [real_dtype(o.dtype) for o in outs]
            if any(r != np.float64 for r in reals):  # f casts internally: FD inherits it
                self.dtype = np.result_type(*reals)
        except Exception:  # f does not accept float64 inputs: stay in its own dtype
            self.base = {i: problem.leaves[i] for i in problem.float_idx}
            self.dtype = problem.analytic_dtype()
        self.eps = eps if eps is not None else DEFAULT_EPS.get(np.dtype(self.dtype), 1e-6)
        self.evaluations = 0

    @staticmethod
    def _as_fd(leaf, dtype):
        if isinstance(leaf, (float, complex)):
            return complex(leaf) if isinstance(leaf, complex) else float(leaf)
        return np.asarray(leaf, dtype=dtype)

    def step(self, i) -> float:
        x = np.asarray(self.base[i])
        return self.eps * max(1.0, float(np.max(np.abs(x))) if x.size else 1.0)

    def evaluate(self, i, direction, t) -> list[np.ndarray]:
        """f with argument leaf i moved to x_i + t * direction (float64 or complex128
        outputs)."""
        x = self.base[i]
        moved = np.asarray(x, dtype=_fd_dtype(np.result_type(x))) + t * direction
        if isinstance(x, (float, complex)):
            moved = type(x)(moved)
        else:
            moved = moved.astype(np.asarray(x).dtype)
        self.evaluations += 1
        out = self.p.f(*self.p.args_with({**self.base, i: moved}))
        return [np.asarray(o, dtype=_fd_dtype(o.dtype)) for o in _flat_outputs(out)]

    def directional(self, i, direction, h=None) -> list[np.ndarray]:
        """(f(x + h v) - f(x - h v)) / 2h, one array per float output."""
        h = self.step(i) if h is None else h
        plus, minus = self.evaluate(i, direction, h), self.evaluate(i, direction, -h)
        return [(a - b) / (2 * h) for a, b in zip(plus, minus)]


def _dot(us, vs) -> float:
    """The pairing of cotangents and tangents: sum(u * v), of complex values its real part
    (no conjugate: JAX's convention, under which <J^T u, v> = <u, J v>)."""
    return float(sum(np.real(np.sum(np.asarray(u) * np.asarray(v))) for u, v in zip(us, vs)))


def _norm(vs) -> float:
    return float(np.sqrt(sum(np.sum(np.abs(np.asarray(v)) ** 2) for v in vs)))


# ================================================================ analytic sides

@dataclass
class Derivatives:
    """How to get the analytic derivatives of one function (f, or a derivative of f)."""

    label: str  # "order 1" or e.g. "forward-over-reverse"
    order: int
    fn: Callable  # plain function (finite differences call it directly)
    traced: Callable  # what dp.vjp / dp.jvp differentiate (engine applied)

    def vjp(self, problem: Problem, u: list) -> dict:
        out, pullback = api.vjp(self.traced, *problem.args)
        out_leaves, out_tree = flatten(out)
        ct_leaves, it = [], iter(u)
        for leaf in out_leaves:
            is_float = hasattr(leaf, "dtype") and np.issubdtype(np.asarray(leaf).dtype, np.inexact)
            ct_leaves.append(next(it).astype(np.asarray(leaf).dtype) if is_float
                             else np.zeros(np.shape(leaf), np.asarray(leaf).dtype))
        grads = pullback(unflatten(out_tree, ct_leaves))
        flat, _ = flatten(tuple(grads))
        return {i: np.asarray(flat[i], _fd_dtype(problem.dtype(i))) for i in problem.float_idx}

    def jvp(self, problem: Problem, i: int, direction) -> list[np.ndarray]:
        tangents = {j: np.zeros(problem.shape(j), problem.dtype(j)) for j in problem.float_idx}
        tangents[i] = np.asarray(direction, problem.dtype(i)).reshape(problem.shape(i))
        zero_static = [np.zeros(np.shape(l), np.asarray(l).dtype) if is_dynamic(l) else l
                       for l in problem.leaves]
        leaves = [tangents.get(j, z) for j, z in enumerate(zero_static)]
        _, t = api.jvp(self.traced, problem.args, unflatten(problem.treedef, leaves))
        return [np.asarray(o, _fd_dtype(o.dtype)) for o in _flat_outputs(t)]


def _reverse_function(d: Derivatives, problem: Problem, u: list) -> Callable:
    """x -> J(x)^T u (the gradients of the float leaves): checked at order 2."""
    def pulled(*args):
        out, pullback = api.vjp(d.traced, *args)
        out_leaves, out_tree = flatten(out)
        it = iter(u)
        cts = [next(it).astype(l.dtype) if np.issubdtype(l.dtype, np.inexact)
               else np.zeros(l.shape, l.dtype) for l in out_leaves]
        grads, _ = flatten(tuple(pullback(unflatten(out_tree, cts))))
        return [grads[i] for i in problem.float_idx]
    return pulled


def _forward_function(d: Derivatives, problem: Problem, v: dict) -> Callable:
    """x -> J(x) v (one tangent for every float leaf): checked at order 2."""
    def pushed(*args):
        leaves, td = flatten(args)
        tangents = [np.asarray(v[j], problem.dtype(j)).reshape(problem.shape(j))
                    if j in v else (np.zeros(np.shape(l), np.asarray(l).dtype)
                                    if is_dynamic(l) else l) for j, l in enumerate(leaves)]
        _, t = api.jvp(d.traced, args, unflatten(td, tangents))
        return t
    return pushed


# ===================================================================== the checks

class Checker:
    def __init__(self, problem: Problem, rng: np.random.Generator, eps, rtol, atol):
        self.p = problem
        self.rng = rng
        dt = problem.analytic_dtype()
        default_rtol, default_atol = DEFAULT_TOLERANCES.get(np.dtype(dt), (1e-5, 1e-8))
        self.fd = FiniteDifferences(problem, eps)
        if self.fd.dtype != np.float64 and rtol is None:  # FD in low precision: noisier
            default_rtol *= 5
        self.rtol = default_rtol if rtol is None else rtol
        self.atol = default_atol if atol is None else atol
        self.directions = {i: self._direction(i) for i in problem.float_idx}
        self.notes: list[str] = []  # checks that could not run, for the report

    def _direction(self, i):
        return _random_like(self.rng, self.p.shape(i), self.p.dtype(i))

    def tolerance(self, scale: float) -> float:
        return self.atol + self.rtol * scale

    def check(self, d: Derivatives, modes: Sequence[str]) -> list[CheckResult]:
        u = [_random_like(self.rng, o.shape, o.dtype) for o in
             _flat_outputs(d.fn(*self.p.args_with(self.fd.base)))]
        if not u:
            raise ArgumentError(f"check_grads: {d.label} returned no floating-point output")
        numeric = {i: self.fd.directional(i, self.directions[i]) for i in self.p.float_idx}
        results = []
        if "rev" in modes:
            grads = d.vjp(self.p, u)
            for i in self.p.float_idx:
                results.append(self._reverse(d, i, u, grads, numeric[i]))
        if "fwd" in modes:
            try:
                forward = [self._forward(d, i, u, numeric[i]) for i in self.p.float_idx]
            except NotDifferentiableError as e:
                # e.g. a dp.custom_vjp whose rule is not traceable has no forward mode;
                # with reverse mode also requested, check that and say what was skipped
                if "rev" not in modes:
                    raise
                self.notes.append(f"forward mode ({d.label}) not checked: {e}")
                forward = []
            results += forward
        return results

    def _name(self, d: Derivatives, mode: str) -> str:
        if d.order == 1:
            return f"{MODE_NAMES[mode]} mode, order 1"
        return f"{MODE_NAMES[mode]}-over-{d.label}, order {d.order}"

    def _result(self, d, mode, i, analytic, numeric, abs_err, scale, detail):
        return CheckResult(
            check=self._name(d, mode), argument=self.p.paths[i], shape=self.p.shape(i),
            dtype=str(self.p.dtype(i)), analytic=analytic, numeric=numeric, abs_err=abs_err,
            tolerance=self.tolerance(scale), passed=bool(abs_err <= self.tolerance(scale)),
            detail=detail)

    def _reverse(self, d, i, u, grads, numeric) -> CheckResult:
        v = self.directions[i]
        a, n = _dot([grads[i]], [v]), _dot(u, numeric)
        scale = max(abs(a), abs(n), _norm(numeric) * _norm(u) / np.sqrt(sum(x.size for x in u)))
        r = self._result(d, "rev", i, a, n, abs(a - n), scale,
                         "<J^T u, v> for a random output cotangent u and input direction v")
        if not r.passed:
            diagnose.explain(self, d, "rev", i, u, r, dense_analytic=grads[i])
        return r

    def _forward(self, d, i, u, numeric) -> CheckResult:
        t = d.jvp(self.p, i, self.directions[i])
        errs = [np.abs(a - n) for a, n in zip(t, numeric)]
        worst = int(np.argmax([e.max() if e.size else 0.0 for e in errs]))
        k = int(np.argmax(errs[worst])) if errs[worst].size else 0
        scale = max(max((float(np.max(np.abs(n))) for n in numeric if n.size), default=0.0),
                    max((float(np.max(np.abs(x))) for x in t if x.size), default=0.0))
        a_k = t[worst].reshape(-1)[k].item() if t[worst].size else 0.0
        n_k = numeric[worst].reshape(-1)[k].item() if numeric[worst].size else 0.0
        where = f"output[{worst}]" if len(t) > 1 else "output"
        r = self._result(d, "fwd", i, a_k, n_k, abs(a_k - n_k), scale,
                         f"J v for a random input direction v, elementwise; worst at "
                         f"{element_path(where, t[worst].shape, k)}")
        if not r.passed:
            diagnose.explain(self, d, "fwd", i, u, r, dense_analytic=None)
        return r


def check_grads(f: Callable, args, order: int = 1, modes: Sequence[str] = ("rev", "fwd"),
                eps: float | None = None, rtol: float | None = None, atol: float | None = None,
                seed: int | None = None, engine: str | None = None, raise_: bool = True
                ) -> GradCheckReport:
    """Check diffprog's derivatives of ``f`` at ``args`` against finite differences.

    ``args`` is the tuple of positional arguments (a single array is accepted); every
    floating-point leaf of it (arrays, Python floats, inside dicts/lists/tuples) is
    checked. ``modes``: "rev" (vector-Jacobian products, what ``dp.grad`` uses) and/or
    "fwd" (Jacobian-vector products). ``order=2`` also checks the derivatives of the
    derivatives (reverse-over-reverse, forward-over-reverse, ...).

    By default each argument is checked along one random direction (a few evaluations
    whatever its size); a failing argument is then checked element by element and the
    failure diagnosed (finite-difference noise, a kink, or a real bug such as a factor
    of 2, a sign flip, a transposed or swapped gradient). Finite differences run in
    float64 where ``f`` allows, and tolerances default by dtype (float32: rtol 2e-3).
    ``seed`` (default $DIFFPROG_TEST_SEED or 0) fixes the random directions; it is
    printed in the report. Complex arguments and outputs are checked in JAX's convention
    (``<J^T u, v> = Re(sum(u * J v))``, no conjugate), with complex random directions, so
    every element moves along its real and its imaginary axis. ``engine`` picks the engine that computes the analytic side.

    Returns a :class:`GradCheckReport`; raises :class:`~diffprog.errors.GradCheckError`
    (an ``AssertionError``) on failure unless ``raise_=False``.

    >>> import numpy as np
    >>> from diffprog.testing import check_grads
    >>> report = check_grads(lambda x, w: np.sum(np.tanh(x @ w)),
    ...                      (np.ones((2, 3)), np.full((3, 4), 0.1)), order=2)
    >>> report.passed, len(report.results)
    (True, 12)
    """
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    if order not in (1, 2):
        raise ArgumentValueError(f"check_grads: order must be 1 or 2, got {order!r}")
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    bad = [m for m in modes if m not in MODE_NAMES]
    if bad or not modes:
        raise ArgumentValueError(f"check_grads: modes must be a non-empty subset of "
                                 f"('rev', 'fwd'); got {modes!r}")
    if engine is not None:
        _engines.get(engine)  # unknown or unavailable engines fail here, with the fix
    seed = default_seed() if seed is None else int(seed)
    rng = np.random.default_rng(seed)
    problem = Problem(f, args)
    traced = api.differentiable(f, engine=engine) if engine is not None else f
    first = Derivatives("order 1", 1, f, traced)
    checker = Checker(problem, rng, eps, rtol, atol)
    report = GradCheckReport(_describe(f), seed, checker.fd.eps, str(checker.fd.dtype))
    report.results += checker.check(first, modes)
    if order == 2:
        if report.passed:
            _check_second_order(checker, first, modes, engine, report)
        else:
            report.notes.append("order 2 not checked: order 1 already fails")
    report.notes += checker.notes
    report.notes.append(f"{checker.fd.evaluations} evaluations of the function for finite "
                        f"differences")
    if raise_ and not report.passed:
        raise GradCheckError(str(report), report)
    return report


def _check_second_order(checker: Checker, first: Derivatives, modes, engine, report):
    p = checker.p
    u = [_random_like(checker.rng, o.shape, o.dtype) for o in
         _flat_outputs(first.fn(*p.args_with(checker.fd.base)))]
    derived = []
    if "rev" in modes:
        derived.append(("reverse", _reverse_function(first, p, u)))
    if "fwd" in modes:
        derived.append(("forward", _forward_function(first, p, checker.directions)))
    for label, fn in derived:
        traced = api.differentiable(fn, engine=engine) if engine is not None else fn
        d = Derivatives(label, 2, fn, traced)
        inner = Checker.__new__(Checker)
        inner.__dict__.update(checker.__dict__)
        inner.p = Problem(fn, p.args, name_source=p.f)
        inner.fd = FiniteDifferences(inner.p, checker.fd.eps)
        inner.fd.evaluations = 0
        report.results += inner.check(d, modes)
        checker.fd.evaluations += inner.fd.evaluations


def _describe(f) -> str:
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or repr(f)
    return name


def assert_grad_close(my_grad: Callable, f: Callable, args, argnums=0, rtol: float | None = None,
                      atol: float | None = None, engine: str | None = None,
                      check_f: bool = True, eps: float | None = None, seed: int | None = None):
    """Assert that a hand-written gradient ``my_grad(*args)`` equals the gradient of the
    scalar function ``f`` with respect to ``args[argnums]``.

    The reference is diffprog's ``grad`` of ``f`` (itself first verified against finite
    differences with :func:`check_grads` when ``check_f``); mismatches are reported
    element by element with their pytree paths.

    >>> import numpy as np
    >>> from diffprog.testing import assert_grad_close
    >>> f = lambda x: np.sum(np.sin(x) ** 2)
    >>> assert_grad_close(lambda x: 2 * np.sin(x) * np.cos(x), f, (np.linspace(0, 1, 5),))
    """
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    if check_f:
        check_grads(f, args, order=1, modes=("rev",), eps=eps, rtol=rtol, atol=atol,
                    seed=seed, engine=engine)
    reference = api.grad(api.differentiable(f, engine=engine) if engine else f, argnums)(*args)
    mine = my_grad(*args)
    ref_leaves, ref_tree = flatten(reference)
    my_leaves, my_tree = flatten(mine)
    if ref_tree != my_tree:
        raise GradCheckError(f"assert_grad_close: the hand-written gradient has structure "
                             f"{my_tree}, the gradient of f has structure {ref_tree}")
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    names = _param_names(f, len(args))
    roots = [names[a] for a in nums]
    sub = ref_tree if not isinstance(argnums, int) else TreeDef("tuple", (), (ref_tree,))
    paths = _leaf_names(sub, roots)
    problems = []
    for path, ref, got in zip(paths, ref_leaves, my_leaves):
        problems += _compare_leaf(path, np.asarray(ref), np.asarray(got), rtol, atol)
    if problems:
        raise GradCheckError("assert_grad_close: hand-written gradient differs from the "
                             "gradient of f\n" + "\n".join(problems))


def _compare_leaf(path, ref, got, rtol, atol) -> list[str]:
    if ref.shape != got.shape:
        return [f"  {path}: shape {got.shape}, expected {ref.shape}"]
    dt = np.result_type(ref.dtype, got.dtype)
    r_default, a_default = DEFAULT_TOLERANCES.get(real_dtype(dt), (1e-5, 1e-8))
    rtol = r_default if rtol is None else rtol
    atol = a_default if atol is None else atol
    wide = _fd_dtype(dt)  # complex gradients are compared as complex numbers
    ref64, got64 = ref.astype(wide), got.astype(wide)
    scale = float(np.max(np.abs(ref64))) if ref64.size else 0.0
    err = np.abs(ref64 - got64)
    bad = err > atol + rtol * np.maximum(np.abs(ref64), scale)
    if not bad.any():
        return []
    k = int(np.argmax(np.where(bad, err, -1).reshape(-1)))
    lines = [f"  {path}: {int(bad.sum())} of {bad.size} elements mismatch; worst "
             f"{element_path(path, ref.shape, k)}: yours {got64.reshape(-1)[k]:.8g}, expected "
             f"{ref64.reshape(-1)[k]:.8g}, abs err {err.reshape(-1)[k]:.3g} (rtol {rtol:g}, "
             f"atol {atol:g})"]
    if wide.kind == "c" and np.allclose(got64, np.conj(ref64), rtol=rtol, atol=atol) \
            and not np.allclose(got64, ref64, rtol=rtol, atol=atol):
        pattern = diagnose.conjugated(np.concatenate([got64.real, -got64.imag]).ravel(),
                                      np.concatenate([ref64.real, -ref64.imag]).ravel(), 0.0) \
            or "the conjugate of the expected gradient (PyTorch's convention, not JAX's)"
    elif wide.kind == "c":  # real and imaginary parts side by side (no transpose test)
        pattern = diagnose.patterns(np.stack([got64.real, got64.imag]),
                                    np.stack([ref64.real, ref64.imag]), {}, rtol, full=False)
    else:
        pattern = diagnose.patterns(got64, ref64, {}, rtol)
    if pattern:
        lines.append(f"  diagnosis: {pattern}")
    return lines
