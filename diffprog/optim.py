"""Small optimizers for notebooks: SGD, Adam (pytree parameters) and L-BFGS via SciPy.

Optimizers are stateless objects with an explicit state, so a training loop is plain
Python and nothing is hidden:

>>> import numpy as np, diffprog as dp
>>> loss = lambda p: np.sum((p["w"] - 3.0) ** 2) + (p["b"] + 1.0) ** 2
>>> params = {"w": np.zeros(2), "b": 0.0}
>>> opt = dp.optim.Adam(lr=0.1)
>>> state = opt.init(params)
>>> for _ in range(300):
...     params, state = opt.update(dp.grad(loss)(params), state, params)
>>> np.round(params["w"], 3), round(float(params["b"]), 3)
(array([3., 3.]), -1.0)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import ArgumentError, ArgumentValueError
from .progress import progress as _progress
from .tree import flatten, tree_map, unflatten


def _check_same_structure(grads, params):
    if flatten(grads)[1] != flatten(params)[1]:
        raise ArgumentError(f"optimizer update: grads have structure {flatten(grads)[1]} but "
                            f"params have {flatten(params)[1]}; pass dp.grad(loss)(params)")


def _zeros_like_param(p):
    """Optimizer state for one parameter: zeros of its dtype, on its device (np.zeros_like
    dispatches to CuPy for CuPy arrays), so float32 parameters stay float32; Python
    numbers and integer arrays get float64 state."""
    dtype = getattr(p, "dtype", None)
    if dtype is not None and np.issubdtype(dtype, np.inexact):
        return np.zeros_like(p)
    return np.zeros(np.shape(p), dtype=float)


@dataclass(frozen=True)
class SGD:
    """Gradient descent with optional (Nesterov-free) momentum: ``v = m v + g; p -= lr v``.

    >>> import numpy as np, diffprog as dp
    >>> opt = dp.optim.SGD(lr=0.5)
    >>> p, s = opt.update(np.array([2.0]), opt.init(np.array([1.0])), np.array([1.0]))
    >>> p
    array([0.])
    """

    lr: float = 1e-2
    momentum: float = 0.0

    def init(self, params) -> Any:
        return tree_map(_zeros_like_param, params)

    def update(self, grads, state, params):
        """Return ``(new params, new state)``; nothing passed in is modified."""
        _check_same_structure(grads, params)
        # (a None gradient: a static leaf, an int in a params dict, which stays as it is)
        velocity = tree_map(lambda v, g: v if g is None else self.momentum * v + g, state, grads)
        return tree_map(lambda p, v, g: p if g is None else p - self.lr * v,
                        params, velocity, grads), velocity


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba) with bias correction; state = (step, first, second moments)."""

    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def init(self, params) -> Any:
        zeros = tree_map(_zeros_like_param, params)
        return (0, zeros, zeros)

    def update(self, grads, state, params):
        """Return ``(new params, new state)``; nothing passed in is modified."""
        _check_same_structure(grads, params)
        step, m, v = state
        step += 1
        m = tree_map(lambda m, g: m if g is None else self.b1 * m + (1 - self.b1) * g, m, grads)
        v = tree_map(lambda v, g: v if g is None else self.b2 * v + (1 - self.b2) * np.square(g),
                     v, grads)
        c1, c2 = 1 - self.b1 ** step, 1 - self.b2 ** step
        new = tree_map(lambda p, m, v, g: p if g is None else
                       p - self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps), params, m, v, grads)
        return new, (step, m, v)


@dataclass
class LBFGSResult:
    params: Any
    value: float
    success: bool
    message: str
    iterations: int
    evaluations: int


def minimize_lbfgs(fun: Callable, params, *args, maxiter: int = 500, tol: float | None = None,
                   progress: bool | None = None, **options) -> LBFGSResult:
    """Minimise ``fun(params, *args)`` (a scalar) with SciPy's L-BFGS-B, using diffprog's
    ``value_and_grad`` (one compiled program) on the flattened parameter pytree.

    A run longer than two seconds shows a progress bar (iterations, loss) when tqdm is
    installed (:mod:`diffprog.progress`); ``progress=False`` turns it off. ``options``
    go to SciPy's ``options`` (``ftol``, ``gtol``, ``maxcor``, ...).

    >>> import numpy as np, diffprog as dp
    >>> rosen = lambda p: (1 - p["x"]) ** 2 + 100 * (p["y"] - p["x"] ** 2) ** 2
    >>> res = dp.optim.minimize_lbfgs(rosen, {"x": np.array(-1.0), "y": np.array(2.0)})
    >>> res.success, round(float(res.params["x"]), 4), round(float(res.params["y"]), 4)
    (True, 1.0, 1.0)
    """
    try:
        from scipy.optimize import minimize
    except ImportError:  # pragma: no cover - scipy is in the test extra
        raise ImportError("diffprog.optim.minimize_lbfgs needs SciPy: pip install scipy "
                          "(or use dp.optim.Adam / dp.optim.SGD)") from None
    from .api import value_and_grad
    leaves, tree = flatten(params)
    shapes = [np.shape(x) for x in leaves]
    dtypes = [np.result_type(x) for x in leaves]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    for i, x in enumerate(leaves):
        if not np.issubdtype(np.result_type(x), np.floating):
            raise ArgumentValueError(f"minimize_lbfgs: parameter leaf {i} has dtype "
                                     f"{np.result_type(x)}; every parameter must be floating")

    def unpack(flat):
        out, start = [], 0
        for shape, size, dtype in zip(shapes, sizes, dtypes):  # SciPy works in float64;
            # the loss sees the parameters' own dtypes (float32 stays float32: one program)
            out.append(np.asarray(flat[start:start + size], dtype=dtype).reshape(shape))
            start += size
        return unflatten(tree, out)

    vg = value_and_grad(fun)
    bar = _progress(total=maxiter, desc="L-BFGS", unit="it", leave=False, enabled=progress)
    last = [np.nan]

    def objective(flat):
        value, grads = vg(unpack(flat), *args)
        last[0] = float(value)
        g = np.concatenate([np.ravel(np.asarray(x, dtype=float)) for x in flatten(grads)[0]]) \
            if sizes else np.zeros(0)
        return float(value), g
    x0 = np.concatenate([np.ravel(np.asarray(x, dtype=float)) for x in leaves])
    def step(_):
        bar.set_postfix(loss=f"{last[0]:.4g}", refresh=False)  # shown by the next refresh
        bar.update(1)

    try:
        res = minimize(objective, x0, jac=True, method="L-BFGS-B", tol=tol, callback=step,
                       options={"maxiter": maxiter, **options})
    finally:
        bar.close()
    return LBFGSResult(unpack(res.x), float(res.fun), bool(res.success), str(res.message),
                       int(res.nit), int(res.nfev))
