"""SciPy inside traced functions: the user's code stays unchanged.

Real programs call SciPy inside the functions they differentiate
(``scipy.special.logsumexp``, ``scipy.stats.norm.logpdf``, ``scipy.integrate.odeint``).
SciPy's Python code turns its arguments into plain arrays (``np.asarray``), which a traced
value refuses. JAX and autograd ship re-implementations under their own names
(``jax.scipy``, ``autograd.scipy``), so users must change their imports. diffprog instead
reaches SciPy's own objects, by three routes, each chosen for being exact and for not
depending on how or when the user imported SciPy:

* **ufuncs** (``scipy.special.erf``, ``gammaln``, ``xlogy``, ...): the NumPy protocol.
  A ufunc called on a traced value hands the call to ``Tracer.__array_ufunc__``; the
  entries of :mod:`diffprog.primitives.special` are bound to those ufuncs. Nothing of
  SciPy is touched.
* **SciPy's Python functions and methods** (logsumexp, softmax, the methods of
  ``scipy.stats`` distributions, odeint, solve_ivp, scipy.linalg and scipy.signal
  functions, sparse matrix products) are *diverted*: the function object keeps its
  identity, signature, name and docstring, but its code object is replaced by a
  trampoline with the same parameters that calls diffprog's implementation when an
  argument holds a traced value *and* this thread is tracing, and SciPy's original code
  otherwise (a copy of the function with the original code; ~1 us per call). Because the
  function object itself is changed, every reference to it takes the new route: ``from
  scipy.special import logsumexp`` executed before or after diffprog was imported, a
  bound method kept in a variable (``lp = norm.logpdf``), SciPy's internal calls, frozen
  distributions (``norm(loc=mu).logpdf(x)`` reaches ``rv_continuous.logpdf``).
* **SciPy objects as constants**: sparse matrices multiplied with traced dense arrays
  (:mod:`.sparse`).

Alternatives, and why not:

* *Wrapping SciPy functions only while tracing*: not thread-safe (another thread would
  see the wrapper mid-trace) and misses references taken before the wrapping (``from
  scipy.special import logsumexp`` binds the original object).
* *Replacing module attributes* (``scipy.special.logsumexp = ours``): misses the same
  references, and SciPy's internal imports.
* *Inspecting the call stack when a traced value reaches np.asarray* (which SciPy
  function is running?): ``Tracer.__array__`` cannot return a value for SciPy's function;
  it can only raise. It names no better than the trampolines do.
* *The array API* (``__array_namespace__``): SciPy honours other namespaces only under
  the experimental ``SCIPY_ARRAY_API=1`` (read at import), and covers few of these.

Diversions are installed once per SciPy module, at the first trace after that module
was imported (a hook of :mod:`diffprog.tracing` checks ``sys.modules``; SciPy is never
imported by diffprog itself), under a lock. Each implementation is written with NumPy
calls on traced values (and entries of the table), so derivatives of any order, dp.vmap
and every engine come with it. What is covered is listed in :data:`COVERED` (the README
section "SciPy inside your functions" says the same); everything else that receives a
traced value raises an error naming the SciPy function.
"""
from __future__ import annotations

import importlib
import inspect
import itertools
import linecache
import os
import sys
import threading
import types
from typing import Callable

import numpy as np

from .. import tracing
from ..errors import UnsupportedFunctionError
from ..tracing import Tracer, trace_stack

#: the global name (in the SciPy module of a diverted function) of the diversions table
TABLE_NAME = "__diffprog_diverted__"

#: SciPy name ("scipy.special.logsumexp") -> what diffprog does with traced arguments
COVERED: dict[str, str] = {}

_LOCK = threading.RLock()
_KEYS = itertools.count(1)
#: id(function) -> its Diversion, for every diverted function
_DIVERTED: dict[int, "Diversion"] = {}


# ====================================================================== traced arguments

def holds_tracer(args, kwargs=None, depth: int = 2) -> bool:
    """Does any argument hold a traced value (itself, or in a tuple, list or dict up to
    ``depth`` levels: ``odeint(f, y0, t, args=(k,))``, ``cho_solve((c, lower), b)``)?"""
    for a in args:
        if isinstance(a, Tracer) or depth and isinstance(a, (tuple, list)) and \
                holds_tracer(a, None, depth - 1) or depth and isinstance(a, dict) and \
                holds_tracer(a.values(), None, depth - 1):
            return True
    return bool(kwargs) and holds_tracer(kwargs.values(), None, depth)


def operand(x):
    """An argument as diffprog's implementations take it: a traced value as it is, a list
    or an array of objects holding traced values as one traced array (NumPy reads a list
    as an array: ``norm.logpdf([a, b])``), anything else unchanged."""
    if type(x) in (list, tuple) or type(x) is np.ndarray and x.dtype == object:
        from ..object_arrays import traced
        x = traced(x)
        return np.asarray(x) if type(x) in (list, tuple) else x
    return x


def floating_operand(x):
    """:func:`operand` as a floating array, as SciPy computes: integers become float64,
    float32 and complex values keep their dtype."""
    from .. import numpy_api
    x = operand(x)
    x = x if hasattr(x, "dtype") else np.asarray(x)
    dtype = numpy_api.dtype_of(x)
    return x if np.issubdtype(dtype, np.inexact) else numpy_api.astype(x, np.float64)


# ====================================================================== diversion

class Diversion:
    """What a diverted SciPy function does: ``replacement`` on traced arguments while
    this thread traces, ``original`` (SciPy's own code) otherwise."""

    __slots__ = ("name", "original", "replacement", "when")

    def __init__(self, name: str, original: Callable, replacement: Callable, when=None):
        self.name = name
        self.original = original
        self.replacement = replacement
        self.when = when or holds_tracer

    def __call__(self, *args, **kwargs):
        if trace_stack() and self.when(args, kwargs):
            return self.replacement(*args, **kwargs)
        return self.original(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Diversion({self.name})"


def _parameters(code: types.CodeType, defaults: tuple | None) -> tuple[str, str]:
    """``(parameter list, call forwarding every parameter)`` with the parameters of
    ``code``. Defaults are placeholders: a function's defaults live on the function
    object, which keeps its own when its code is replaced."""
    names = code.co_varnames
    n_pos, n_kw = code.co_argcount, code.co_kwonlyargcount
    n_defaults = len(defaults or ())
    params, call = [], []
    for i, name in enumerate(names[:n_pos]):
        params.append(name + ("=None" if i >= n_pos - n_defaults else ""))
        call.append(name)
        if i + 1 == code.co_posonlyargcount:
            params.append("/")
    rest = n_pos + n_kw
    if code.co_flags & inspect.CO_VARARGS:
        params.append("*" + names[rest])
        call.append("*" + names[rest])
        rest += 1
    elif n_kw:
        params.append("*")
    for name in names[n_pos:n_pos + n_kw]:
        params.append(name + "=None")
        call.append(f"{name}={name}")
    if code.co_flags & inspect.CO_VARKEYWORDS:
        params.append("**" + names[rest])
        call.append("**" + names[rest])
    for name in names[:rest + 1]:
        if not name.isidentifier():  # pragma: no cover - SciPy's own parameter names
            raise ValueError(f"unexpected parameter name {name!r}")
    return ", ".join(params), ", ".join(call)


def _trampoline(fn: types.FunctionType, key: int, name: str) -> types.CodeType:
    """A code object with ``fn``'s parameters and free variables that calls the
    diversion ``key`` of the table in ``fn``'s globals."""
    code = fn.__code__
    params, call = _parameters(code, fn.__defaults__)
    free = code.co_freevars
    body = f"    return {TABLE_NAME}[{key}]({call})\n"
    if free:  # the same free variables, so that the function's closure still fits
        source = (f"def _outer():\n    {' = '.join(free)} = None\n"
                  f"    def {fn.__name__}({params}):\n        ({', '.join(free)},)\n"
                  f"    {body}    return {fn.__name__}\n")
    else:
        source = f"def {fn.__name__}({params}):\n{body}"
    filename = f"<diffprog.scipy_api: {name} runs diffprog's implementation on traced values>"
    namespace: dict = {}
    exec(compile(source, filename, "exec"), {}, namespace)  # our text; names from SciPy's code
    made = namespace["_outer" if free else fn.__name__].__code__
    if free:
        made = next(c for c in made.co_consts if isinstance(c, types.CodeType))
    if made.co_freevars != free:  # pragma: no cover - CPython orders free variables by name
        raise RuntimeError(f"cannot divert {name}: free variables {made.co_freevars} != {free}")
    return made.replace(co_name=code.co_name, co_qualname=code.co_qualname) \
        if hasattr(code, "co_qualname") else made.replace(co_name=code.co_name)


def divert(fn: Callable, replacement: Callable, name: str, covered: str | None = None,
           when: Callable | None = None) -> None:
    """Make SciPy's ``fn`` run ``replacement`` (same signature) when called on traced
    values while tracing (``when(args, kwargs)`` decides instead, for functions of
    callables); ``covered`` describes it for :data:`COVERED`."""
    fn = getattr(fn, "__func__", fn)
    if covered is not None:
        COVERED[name] = covered
    with _LOCK:
        known = _DIVERTED.get(id(fn))
        if known is not None:
            known.replacement, known.when = replacement, when or holds_tracer
            return
        original = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                                      fn.__closure__)
        original.__kwdefaults__ = fn.__kwdefaults__
        original.__qualname__ = fn.__qualname__
        original.__module__ = fn.__module__
        original.__doc__ = fn.__doc__
        original.__dict__.update(fn.__dict__)
        diversion = Diversion(name, original, replacement, when)
        key = next(_KEYS)
        code = _trampoline(fn, key, name)
        fn.__globals__.setdefault(TABLE_NAME, {})[key] = diversion
        fn.__diffprog_original__ = original
        _DIVERTED[id(fn)] = diversion
        fn.__code__ = code  # atomic: calls already running keep SciPy's code


def original(fn: Callable) -> Callable:
    """SciPy's own code of a diverted function (``fn`` itself when it is not diverted)."""
    fn = getattr(fn, "__func__", fn)
    return getattr(fn, "__diffprog_original__", fn)


_SKIPPED_DIRS: tuple = ()


def caller_line() -> str:
    """'file.py:12: <source>' of the innermost frame outside diffprog, NumPy and SciPy
    (the user's call of the SciPy function)."""
    global _SKIPPED_DIRS
    if not _SKIPPED_DIRS:
        dirs = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
        for name in ("numpy", "scipy"):
            module = sys.modules.get(name)
            if module is not None:
                dirs.append(os.path.dirname(os.path.abspath(module.__file__)))
        _SKIPPED_DIRS = tuple(dirs)
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(("<diffprog", "<frozen")) and \
                not os.path.abspath(filename).startswith(_SKIPPED_DIRS):
            source = linecache.getline(filename, frame.f_lineno).strip()
            where = f"{os.path.basename(filename)}:{frame.f_lineno}"
            return f"{where}: {source}" if source else where
        frame = frame.f_back
    return "<unknown location>"


def computes_traced(fn: Callable, *probe) -> bool:
    """Does the callable ``fn`` (an ODE's right-hand side, an integrand) compute traced
    values at plain ``probe`` arguments? It may close over traced parameters (``lambda
    y, t: -k * y``) without any argument of the SciPy call being traced. An error here
    is left to SciPy's own call to raise."""
    try:
        out = fn(*probe)
    except Exception:
        return False
    return holds_tracer((out,))


def refuse(name: str, why: str, fix: str) -> Callable:
    """A replacement that raises: ``name`` on traced values is not computed, and why."""
    def refused(*args, **kwargs):
        raise UnsupportedFunctionError(
            f"{name} on a traced value is not supported by diffprog ({why}; called at "
            f"{caller_line()}).\nFix: {fix}")
    return refused


# ====================================================================== installation

#: SciPy module -> the diffprog module that diverts its functions (its ``install(module)``)
MODULES = {
    "scipy.special": ".special",
    "scipy.stats": ".stats",
    "scipy.integrate": ".integrate",
    "scipy.linalg": ".linalg",
    "scipy.signal": ".signal",
    "scipy.sparse": ".sparse",
}
_INSTALLED: set = set()


def install() -> None:
    """Divert the functions of every SciPy module imported so far (once per module).
    Runs before each trace (:data:`diffprog.tracing.BEFORE_TRACE`); imports no SciPy."""
    if len(_INSTALLED) == len(MODULES) or "scipy" not in sys.modules:
        return
    for scipy_name, ours in MODULES.items():
        if scipy_name in _INSTALLED:
            continue
        module = sys.modules.get(scipy_name)
        if module is None:
            continue
        with _LOCK:
            if scipy_name in _INSTALLED:
                continue
            importlib.import_module(ours, __name__).install(module)
            _INSTALLED.add(scipy_name)


def install_all() -> None:
    """Import the SciPy modules diffprog covers and divert their functions (tests, and
    users who import SciPy inside the traced function itself)."""
    for scipy_name in MODULES:
        importlib.import_module(scipy_name)
    install()


tracing.BEFORE_TRACE.append(install)
