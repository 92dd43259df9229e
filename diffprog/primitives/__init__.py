"""THE primitive table: one entry per primitive, every rule of it in one place.

:mod:`.core` says what an entry holds and keeps the registry; the entries live in one
module per family, :mod:`.elementwise`, :mod:`.reductions`, :mod:`.shapes` (and
indexing), :mod:`.linalg`, :mod:`.control`; :mod:`.rules` holds what their rules share.
"""
from .core import (NUMPY_BINDINGS, PRIMITIVES, Binding, Case, Primitive, Unsupported,
                   as_untraced_code_reads, broadcast_shapes)
from .control import cond, error_if, guard, remat, scan, while_loop, while_loop_grad
from .elementwise import (abs_, add, arccos, arcsin, arctan, arctan2, bitwise_and, bitwise_or,
                          bitwise_xor, cbrt, ceil, convert, copy, cos, cosh, div, equal, exp, exp2,
                          expm1, floor, floor_divide, greater, greater_equal, hypot,
                          integer_pow, invert, isfinite, isinf, isnan, less, less_equal, log,
                          log1p, log2, log10, logaddexp, logical_and, logical_not, logical_or,
                          logical_xor, maximum, minimum, mul, neg, not_equal, pow_, remainder,
                          round_, sign, sin, sinh, sqrt, stop_gradient, sub, tan, tanh, trunc,
                          where)
from .fft import fftn, ifftn, irfftn, rfftn
from .linalg import (adjugate, cholesky, det, eig, eigvals, einsum, inv, matmul, slogdet,
                     solve)
from .reductions import (argmax, argmin, argsort, cumprod, cumsum, reduce_max, reduce_min,
                         reduce_prod, reduce_sum)
from .shapes import (ArraySlot, broadcast_to, concatenate, gather, pack_scalars, pad, reshape,
                     scatter_add, slice_, transpose)
from . import sparse, special  # SciPy's entries, defined where SciPy is importable (no import of it)
