"""diffprog: gradients of ordinary Python/NumPy code.

>>> import numpy as np, diffprog as dp
>>> dp.grad(lambda x: np.sum(np.tanh(x)))(np.zeros(2))
array([1., 1.])
"""
from . import engines, guards, optim
from .control import checkpoint, cond, fori_loop, scan, while_loop
from .custom import custom_jvp, custom_vjp
from .api import (cache_info, differentiable, grad, hessian, jacobian, jvp, set_cache_size,
                  set_fast_math, value_and_grad, vjp, vmap)
from .errors import (ArgumentError, ArgumentValueError, ConcretizationError, DiffprogError,
                     DiffprogWarning,
                     EngineError, EngineUnavailable, NotDifferentiableError, ShapeError,
                     SolverError, UnsupportedFunctionError)
from .ir import Graph
from .numpy_api import stop_gradient
from .primitives import PRIMITIVES
from . import scipy_api  # SciPy inside traced functions (imports no SciPy; see its docstring)

__version__ = "0.1.0"

__all__ = [
    "differentiable", "grad", "value_and_grad", "vjp", "jvp", "jacobian", "hessian", "vmap",
    "custom_vjp", "custom_jvp", "stop_gradient", "set_cache_size", "cache_info", "set_fast_math",
    "cond", "scan", "fori_loop", "while_loop", "checkpoint", "optim", "engines", "Graph", "PRIMITIVES",
    "DiffprogError", "ArgumentError", "ArgumentValueError", "ShapeError",
    "UnsupportedFunctionError", "ConcretizationError", "NotDifferentiableError",
    "EngineUnavailable", "EngineError", "SolverError", "DiffprogWarning",
]


# Submodules reachable as attributes without an explicit import (`dp.sciml.odeint`,
# `dp.testing.check_grads`, `dp.tree.map`), imported on first use so `import diffprog`
# stays light and optional dependencies are only needed by the modules that use them.
def __getattr__(name: str):
    import importlib
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # also sets it as an attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    import pkgutil

    return sorted(set(globals()) | {m.name for m in pkgutil.iter_modules(__path__)
                                    if not m.name.startswith("_")})
