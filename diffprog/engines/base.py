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

    def __call__(self, *args: Any):
        return self.fn(*args)


class Engine:
    """Base class. Subclasses set ``name`` and implement ``compile``."""

    name = "base"

    def check_available(self) -> None:
        """Raise :class:`~diffprog.errors.EngineUnavailable` (with the fix) if it cannot run."""

    def compile(self, graph: Graph) -> Program:  # pragma: no cover - interface
        raise NotImplementedError

    def prepare_inputs(self, leaves: list) -> list:
        """Convert or check input leaves for this engine (device placement lives here)."""
        return leaves
