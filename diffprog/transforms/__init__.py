"""Graph -> Graph transforms: reverse mode (vjp), forward mode (jvp), simplify."""
from .jvp import jvp_graph
from .simplify import simplify
from .vjp import vjp_graph

__all__ = ["vjp_graph", "jvp_graph", "simplify"]
