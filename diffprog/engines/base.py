"""What every engine provides: ``compile(graph) -> Program``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..ir import Graph


@dataclass
class Program:
    """A compiled graph: ``fn(*flat_inputs) -> tuple of flat outputs``, plus its source."""

    fn: Callable
    source: str
    engine: str
    graph: Graph
    fast_math: bool = False  # compiled by the engine's fast-math twin (Engine.with_fast_math)

    def __call__(self, *args: Any):
        return self.fn(*args)


@dataclass(frozen=True)
class Derivative:
    """A derivative of ``graph`` for an engine that differentiates natively
    (``native_gradients = True``, e.g. julia via Zygote): the API passes the forward
    graph instead of a Python-side transformed one. ``kind``: "gradient" (outputs, then
    gradients of the scalar first output w.r.t. inputs ``wrt``), "pullback" (a forward
    and a backward program, like :func:`~diffprog.transforms.partial_eval.split_known`),
    "jacobian" (output, then one Jacobian per ``wrt``) or "hessian" (``wrt`` has one
    input)."""

    kind: str
    graph: Graph
    wrt: tuple


class Engine:
    """Base class. Subclasses set ``name`` and implement ``compile``."""

    name = "base"
    #: True for the twin that compiles fast-math programs (see :meth:`with_fast_math`)
    fast_math = False

    def with_fast_math(self) -> "Engine":
        """The engine compiling fast-math programs (``dp.differentiable(fn,
        fast_math=True)``): the numpy engine's twin whose compiled kernels call libmvec;
        engines with nothing faster to offer return themselves (fast math changes
        nothing there)."""
        return self

    def check_available(self) -> None:
        """Raise :class:`~diffprog.errors.EngineUnavailable` (with the fix) if it cannot run."""

    def compile(self, graph: Graph) -> Program:  # pragma: no cover - interface
        raise NotImplementedError

    #: True for engines that differentiate forward graphs themselves (see Derivative)
    native_gradients = False

    def compile_native(self, request: Derivative) -> tuple:  # pragma: no cover - interface
        """Programs for a :class:`Derivative` (only for ``native_gradients`` engines)."""
        raise NotImplementedError
