"""The intermediate representation: a Graph of equations in SSA form.

A :class:`Graph` has input variables, a list of equations and outputs. Each
:class:`Eqn` applies one primitive (from :mod:`diffprog.primitives`) to input atoms
(a :class:`Var` or a :class:`Lit` constant) and defines new output Vars. Every
transform maps Graph -> Graph; every engine compiles a Graph.
"""
from __future__ import annotations

import contextlib
import gc
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DiffprogError


@dataclass(frozen=True)
class Aval:
    """Abstract value: what is known about an array before it is computed.

    ``weak`` marks a Python scalar: like in NumPy (NEP 50) it does not promote the
    dtype of arrays it meets (``float32_array * 2.0`` stays float32).
    """

    shape: tuple
    dtype: np.dtype
    weak: bool = False

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)  # not np.prod: ~20x faster on small tuples

    def __str__(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        return f"{self.dtype.name}[{dims}]" + ("~" if self.weak else "")

    def __hash__(self) -> int:
        # the fields' hash, computed once: avals key the transforms' maps (templates, shape
        # rules), and a long program asks for the same few avals' hashes again and again
        known = self.__dict__.get("_hash")
        if known is None:
            known = hash((self.shape, self.dtype, self.weak))
            object.__setattr__(self, "_hash", known)
        return known

    def __getstate__(self) -> dict:  # the fields only (a hash is computed where it is used)
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}


def aval_of(value: Any) -> Aval:
    """The Aval of a concrete value (array, NumPy scalar or Python number)."""
    known = _PYTHON_SCALAR_AVALS.get(type(value))
    if known is not None:  # an exact bool, int, float or complex: the common constant
        return known
    if isinstance(value, (bool, int, float, complex)) and not isinstance(value, np.generic):
        return Aval((), np.result_type(type(value)), weak=True)
    value = np.asarray(value) if not hasattr(value, "dtype") else value
    return Aval(tuple(value.shape), np.dtype(value.dtype))


_PYTHON_SCALAR_AVALS = {t: Aval((), np.result_type(t), weak=True)
                        for t in (bool, int, float, complex)}

_var_ids = itertools.count()


class Var:
    """An SSA variable. Identity is the object; ``id`` only names it when printed."""

    __slots__ = ("id", "aval")

    def __init__(self, aval: Aval):
        self.id = next(_var_ids)
        self.aval = aval

    def __repr__(self) -> str:
        return f"v{self.id}"


class Lit:
    """A constant operand. Its value travels as a bound value, never as source text."""

    __slots__ = ("value", "aval")

    def __init__(self, value: Any):
        self.value = compact_constant(value)
        self.aval = aval_of(value)

    def __repr__(self) -> str:
        v = self.value
        if self.aval.shape == () and not isinstance(v, np.ndarray):
            return repr(v.item() if isinstance(v, np.generic) else v)
        return f"const:{self.aval}"


def is_scalar_number(atom) -> bool:
    """A constant operand holding one finite real number (not a bool)."""
    if not (isinstance(atom, Lit) and atom.aval.shape == () and not isinstance(atom.value, bool)):
        return False
    value = atom.value
    if type(value) is float:  # the common constant: math.isfinite, not a NumPy call
        return math.isfinite(value)
    if isinstance(value, (int, np.integer)):
        return True  # any int is finite (a Python int beyond int64 included)
    return isinstance(value, (float, np.floating)) and bool(np.isfinite(value))


#: arrays from this many elements up are checked for being one repeated value
COMPACT_MIN_SIZE = 4096


def compact_constant(value: Any) -> Any:
    """A large constant whose elements are all the same bits (``np.ones_like(x)``,
    ``np.full(shape, c)``, and what constant folding makes of them) becomes a read-only
    broadcast of one element: a compiled program then holds one element, not a buffer
    the size of its input, after the call returns. Compared bitwise, so -0.0 and 0.0
    (or two NaN payloads) are never merged."""
    if type(value) is not np.ndarray or value.size < COMPACT_MIN_SIZE or \
            not value.flags.c_contiguous or value.dtype.kind not in "biufc":
        return value
    flat = value.reshape(-1)
    bits = flat.view(f"V{value.dtype.itemsize}") if value.dtype.kind == "c" else \
        flat.view(f"u{value.dtype.itemsize}") if value.dtype.itemsize in (1, 2, 4, 8) else None
    if bits is None or not (bits == bits[0]).all():
        return value
    return np.broadcast_to(flat[:1].copy().reshape((1,) * value.ndim), value.shape)


@dataclass(slots=True)
class Eqn:
    """``outputs = prim(*inputs, **params)``."""

    prim: Any  # primitives.Primitive
    inputs: list
    outputs: list
    params: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        outs = ", ".join(f"{v}:{v.aval}" for v in self.outputs)
        args = " ".join(repr(a) for a in self.inputs)
        ps = " ".join(f"{k}={_short(v)}" for k, v in self.params.items())
        return f"{outs} = {self.prim.name}{('[' + ps + ']') if ps else ''} {args}"


def _short(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"array{v.shape}"
    text = repr(v)
    return text if len(text) < 60 else text[:57] + "..."


@dataclass
class Graph:
    """A traced program: ``outvars = f(*invars)`` as a list of equations."""

    invars: list
    eqns: list
    outvars: list  # Var or Lit

    def __str__(self) -> str:
        ins = ", ".join(f"{v}:{v.aval}" for v in self.invars)
        body = "\n".join("    " + repr(e) for e in self.eqns)
        outs = ", ".join(repr(v) for v in self.outvars)
        return f"{{ lambda {ins} .\n{body}\n    return ({outs}) }}"

    __repr__ = __str__

    def _repr_pretty_(self, p, cycle):  # IPython shows the program, not an object repr
        p.text(str(self))

    def _repr_html_(self) -> str:  # Jupyter: the program, highlighted when Pygments is there
        from .display import graph_html
        return graph_html(self)

    def _repr_markdown_(self) -> str:
        from .display import fenced
        return fenced(str(self), "text")

    def validate(self) -> None:
        """Check SSA form: every Var is defined once, before it is used."""
        defined = set(map(id, self.invars))
        if len(defined) != len(self.invars):
            raise DiffprogError("IR invalid: an input variable appears twice")
        for eqn in self.eqns:
            for a in eqn.inputs:
                if isinstance(a, Var) and id(a) not in defined:
                    raise DiffprogError(f"IR invalid: {a} used before definition in `{eqn}`")
            for o in eqn.outputs:
                if id(o) in defined:
                    raise DiffprogError(f"IR invalid: {o} defined twice (`{eqn}`)")
                defined.add(id(o))
        for o in self.outvars:
            if isinstance(o, Var) and id(o) not in defined:
                raise DiffprogError(f"IR invalid: output {o} is never defined")


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector off while a large graph is built or compiled:
    the graph's many long-lived objects (equations, variables, tracers) otherwise make
    each full collection walk all of them, again and again (about 15% of a 10k-equation
    first call). Nothing is leaked: cycles made meanwhile are collected later. Left off
    when it was off already (a caller's gc.disable())."""
    enabled = gc.isenabled()
    if enabled:
        gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
