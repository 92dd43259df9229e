"""The julia engine: a Graph becomes Julia source for the DiffProg Julia package.

Code generation (no Julia needed, so ``f.source(..., engine="julia")`` works anywhere):
one Julia function ``program(a1, ..., c1, ...)`` per graph, inputs first and bound
constants as trailing arguments (constants travel as values, never as pasted text; the
only literals in the source are numbers, Booleans and ``nothing``). Every primitive's
spelling comes from its ``julia=`` entry in :mod:`diffprog.primitives`: a template over
operands ``{0}``, ``{args}``, ``{rest}``, parameters by name and the derived placeholders
of :func:`derived_placeholders` (axes, shapes and permutations converted once, here, to
Julia's reversed-axes layout), a callable ``(eqn, jl) -> template`` for spellings that
depend on shapes, or ``Unsupported(reason)``.

Julia holds every array with its axes reversed (NumPy axis ``k`` of an ``n``-d array is
Julia dim ``n - k``, 1-based): a C-contiguous NumPy array *is* a column-major Julia
array with reversed dims, so arrays cross by DLPack without copies, and NumPy's
right-aligned broadcasting is Julia's left-aligned broadcasting.

NumPy 0-d values are Julia numbers everywhere: inputs, constants and cotangents cross as
numbers of their dtype (:func:`julia_number`), and a reshape to ``()`` is spelled
``sum(x)``. A 0-dim Julia array would meet the numbers Base makes of 0-dim broadcasts, and
Zygote cannot add those two kinds of cotangent.

Complex values: dtypes complex64/complex128 are ComplexF32/ComplexF64; complex literals
are written ``ComplexF64(re, im)`` (never a product with ``im``, which turns an infinite
part into NaN), and real literals of an elementwise equation with a complex result are
written as complex ones, as NumPy converts them. Python complex scalars and 0-d complex
arrays cross as Julia numbers (PythonCall converts ``complex`` and ``numpy.complex128`` to
``ComplexF64``, ``numpy.complex64`` to ``ComplexF32``), arrays through DLPack (kDLComplex
64/128 are ComplexF32/ComplexF64 in DLPack.jl) and back through the array interface
(``<c8``/``<c16``). Entries without complex rules run on complex values only where their
Julia spelling computes NumPy's values (:data:`_COMPLEX_VALUES_SPELLED`); the others are
refused by name when the source is written (Julia does not order complex numbers).

Running (needs Julia): juliacall is imported only when this engine is asked for, after
a probe that finds no Julia in milliseconds instead of letting juliapkg try to download
one. Gradients come from Zygote (``native_gradients``: the API hands this engine the
forward graph for grad/value_and_grad/vjp instead of Python-side transformed graphs).
Hessians of programs with structured control flow are the exception: Zygote cannot
differentiate DiffProg.npscan's rule twice, so they are built by diffprog's transforms
and run forward (:meth:`JuliaEngine.compile_hessian_by_transforms`).

Zygote's complex convention is the conjugate of JAX's (diffprog's): the Julia side
(julia/src/derivatives.jl) returns ``conj(Zygote pullback(conj(c)))``, which is JAX's
pullback, so every engine gives the same complex derivatives. Jacobians and Hessians
follow JAX's rules for complex values (:func:`_check_jacobian_fields`,
:func:`_check_hessian_fields`); programs with complex values are differentiated only
with Zygote >= 0.7.11 (:meth:`_Bridge.require_complex_derivatives`).
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import string
import sys
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import (DiffprogError, EngineError, EngineUnavailable, NotDifferentiableError,
                      UnsupportedFunctionError)
from ..ir import Aval, Graph, Var
from ..primitives import Unsupported
from ..transforms.closed import Closed, holds_body
from ..transforms.vjp import vjp_graph
from .base import Derivative, Engine, Program

#: CUDA.jl's package UUID (julia/Project.toml lists it under [weakdeps])
CUDA_UUID = "052768ef-5323-5732-b1bb-66c8b64840ba"
#: CUDA.jl versions that work (julia/Project.toml [compat] says the same): 5.4 up to, not
#: including, 6. DLPack.jl 0.3.1's CUDA extension compares buffer types with
#: CUDA.Mem.DeviceBuffer, a deprecated alias of CUDA.DeviceMemory from CUDA.jl 5.4 on that
#: CUDA.jl 6.0 removed with the whole CUDA.Mem module; so every GPU export would fail there.
CUDA_COMPAT = "5.4"
#: the one command that adds CUDA.jl to diffprog's Julia environment (juliapkg)
CUDA_INSTALL = (f"python -c \"import juliapkg; juliapkg.add('CUDA', '{CUDA_UUID}', "
                f"version='{CUDA_COMPAT}'); juliapkg.resolve()\"")
#: Zygote's package UUID and the first version whose broadcasts differentiate complex values
#: correctly (FluxML/Zygote.jl#1601 mixed real/complex operands, #1529 abs at 0; both fixed
#: in 0.7.11); julia/src/derivatives.jl checks the loaded version (complex_derivative_problem)
ZYGOTE_UUID = "e88e6eb3-aa80-5325-afca-941959d7151f"
ZYGOTE_COMPLEX = "0.7.11"
ZYGOTE_COMPLEX_INSTALL = (f"python -c \"import juliapkg; juliapkg.add('Zygote', '{ZYGOTE_UUID}', "
                          f"version='{ZYGOTE_COMPLEX}'); juliapkg.resolve()\"")

# =============================================================== Julia spelling helpers


def jl_tuple(items) -> str:
    """A Julia tuple literal: ``()``, ``(3,)``, ``(3, 4)``."""
    items = [str(i) for i in items]
    if len(items) == 1:
        return f"({items[0]},)"
    return "(" + ", ".join(items) + ")"


def jl_shape(shape) -> str:
    """NumPy shape -> Julia dims tuple (reversed)."""
    return jl_tuple(int(d) for d in reversed(tuple(shape)))


def jl_dim(axis: int, ndim: int) -> int:
    """NumPy axis (negative allowed) of an ``ndim``-d array -> 1-based Julia dim."""
    return ndim - (int(axis) % ndim)


def jl_dims(axes, ndim: int) -> str:
    return jl_tuple(sorted(jl_dim(a, ndim) for a in axes))


def jl_perm(axes) -> str:
    """``np.transpose(x, axes)`` as the permutation for ``permutedims`` on reversed dims:
    output dim ``n - i`` is input dim ``n - axes[i]``."""
    n = len(axes)
    return jl_tuple(n - int(axes[n - j]) for j in range(1, n + 1))


_JULIA_TYPES = {
    "float64": "Float64", "float32": "Float32", "float16": "Float16",
    "int64": "Int64", "int32": "Int32", "int16": "Int16", "int8": "Int8",
    "uint64": "UInt64", "uint32": "UInt32", "uint16": "UInt16", "uint8": "UInt8",
    "bool": "Bool", "complex128": "ComplexF64", "complex64": "ComplexF32",
}


def jl_type(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in _JULIA_TYPES:
        raise UnsupportedFunctionError(
            f"the julia engine has no Julia element type for dtype {name}. Fix: convert to "
            f"float64/float32 (x.astype(np.float64)) or use engine='numpy'.")
    return _JULIA_TYPES[name]


def jl_float(value: float, dtype=np.float64) -> str:
    """A float literal of the right Julia type: ``2.0``, ``2.0f0``, ``Inf32``, ``(-1.5)``."""
    dtype = np.dtype(dtype)
    v = float(value)
    f32 = dtype == np.float32
    f16 = dtype == np.float16
    if np.isnan(v):
        text = "NaN32" if f32 else "NaN16" if f16 else "NaN"
    elif np.isinf(v):
        text = ("Inf32" if f32 else "Inf16" if f16 else "Inf")
        text = text if v > 0 else f"(-{text})"
        return text
    else:
        text = repr(abs(v))
        if "e" in text:
            mantissa, exponent = text.split("e")
            mantissa = mantissa if "." in mantissa else mantissa + ".0"
            text = f"{mantissa}f{int(exponent)}" if f32 else f"{mantissa}e{int(exponent)}"
        elif f32:
            text += "f0"
        if f16:
            text = f"Float16({text})"
        if v < 0 or (v == 0 and np.signbit(v)):
            text = f"(-{text})"
    return text


def jl_complex(value, dtype=np.complex128) -> str:
    """A complex literal of the right Julia type, never a juxtaposition with ``im`` (whose
    products would turn an infinite part into NaN): ``ComplexF64(1.5, (-2.0))``,
    ``ComplexF32(0.0f0, 1.0f0)`` for complex64 (or float32) ``dtype``."""
    value = complex(value)
    single = np.dtype(dtype) in (np.dtype(np.complex64), np.dtype(np.float32))
    part = np.float32 if single else np.float64
    name = "ComplexF32" if single else "ComplexF64"
    return f"{name}({jl_float(value.real, part)}, {jl_float(value.imag, part)})"


def jl_literal(value, dtype=np.float64) -> str | None:
    """Julia text for a number/bool/None (floats in ``dtype``, complex numbers in its
    complex counterpart), or None if not a literal."""
    if value is None:
        return "nothing"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value)) if value >= 0 else f"({int(value)})"
    if isinstance(value, (float, np.floating)):
        if not np.issubdtype(np.dtype(dtype), np.floating):  # e.g. a comparison's bool output
            dtype = type(value) if isinstance(value, np.floating) else np.float64
        return jl_float(value, dtype)
    if isinstance(value, (complex, np.complexfloating)):
        if not np.issubdtype(np.dtype(dtype), np.inexact):
            dtype = type(value) if isinstance(value, np.complexfloating) else np.complex128
        return jl_complex(value, dtype)
    if isinstance(value, tuple):
        parts = [jl_literal(v, dtype) for v in value]
        return None if any(p is None for p in parts) else jl_tuple(parts)
    return None


def jl_ranges(index: tuple, shape: tuple) -> tuple[list, tuple, tuple]:
    """A NumPy basic index (ints, slices, None, Ellipsis) on an array of ``shape`` as one
    Julia range per Julia dim (integers become length-1 ranges, so nothing is ever
    indexed element by element), plus the NumPy shape those ranges give (no dims dropped)
    and the ranges' Julia text in Julia dim order."""
    index = index if isinstance(index, tuple) else (index,)
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    if sum(1 for i in index if i is Ellipsis) > 1:
        raise UnsupportedFunctionError("an index can have only one Ellipsis (...)")
    expanded = []
    for i in index:
        if i is Ellipsis:
            expanded += [slice(None)] * (len(shape) - n_real)
        elif i is not None:
            expanded.append(i)
    expanded += [slice(None)] * (len(shape) - len(expanded))
    ranges, kept = [], []
    for item, d in zip(expanded, shape):
        if isinstance(item, slice):
            positions = range(*item.indices(d))
        elif isinstance(item, (int, np.integer)):
            k = int(item) % d if d else 0
            positions = range(k, k + 1)
        else:
            raise UnsupportedFunctionError(
                f"the julia engine cannot spell the index element {type(item).__name__} here")
        ranges.append(positions)
        kept.append(len(positions))
    texts = [_range_text(r) for r in ranges]
    return texts[::-1], tuple(kept), tuple(ranges)


def _range_text(r: range) -> str:
    if len(r) == 0:
        return "1:0"
    first, last = r[0] + 1, r[-1] + 1
    if r.step == 1:
        return f"{first}:{last}"
    return f"{first}:{r.step}:{last}" if r.step > 0 else f"{first}:({r.step}):{last}"


class JuliaSpelling:
    """The generic converters handed to callable ``julia=`` hooks (``jl`` in the table)."""

    tuple = staticmethod(jl_tuple)
    shape = staticmethod(jl_shape)
    dim = staticmethod(jl_dim)
    dims = staticmethod(jl_dims)
    ranges = staticmethod(jl_ranges)
    literal = staticmethod(jl_literal)
    type = staticmethod(jl_type)


JL = JuliaSpelling()


def real_dtype(dtype) -> np.dtype:
    """float32 for complex64, float64 for complex128; other dtypes unchanged."""
    dtype = np.dtype(dtype)
    return np.finfo(dtype).dtype if dtype.kind == "c" else dtype


def eqn_float_dtype(eqn) -> np.dtype:
    """The float dtype numbers in this equation are written in: the output's if it is a
    float (the real counterpart of a complex one), else that of the float (complex) array
    operands, else float64. (A Python float meeting a float32 or complex64 array stays
    single precision in NumPy; ``2.0`` would promote it in Julia, ``2.0f0`` does not.)"""
    for atom in list(eqn.outputs) + [a for a in eqn.inputs if isinstance(a, Var)]:
        if np.issubdtype(atom.aval.dtype, np.inexact):
            return real_dtype(atom.aval.dtype)
    return np.dtype(np.float64)


def derived_placeholders(eqn) -> dict:
    """Placeholders computed from the equation's params and avals, in Julia layout.

    Lazy: each value is a function, called only when a template uses that field.
    """
    params = eqn.params
    x = eqn.inputs[0].aval if eqn.inputs else None
    ndim = len(x.shape) if x is not None else 0
    dtype = eqn_float_dtype(eqn)
    return {
        "jaxes": lambda: jl_dims(params["axes"], ndim),
        "jaxis": lambda: str(jl_dim(params["axis"], ndim)),
        "jshape": lambda: jl_shape(params["shape"]),
        "jperm": lambda: jl_perm(params["axes"]),
        "jpad_width": lambda: jl_tuple(jl_tuple((int(lo), int(hi)))
                                       for lo, hi in reversed(tuple(params["pad_width"]))),
        "jdtype": lambda: jl_type(params["dtype"]),
        "jout": lambda: jl_shape(eqn.outputs[0].aval.shape),
        "value": lambda: jl_literal(params["value"], dtype),
    }


def julia_template(eqn) -> str:
    """The Julia template of ``eqn``'s primitive, or raise naming the primitive."""
    prim = eqn.prim
    _check_complex_operands(eqn)
    spelling = getattr(prim, "julia", None)
    if callable(spelling) and not isinstance(spelling, Unsupported):
        spelling = spelling(eqn, JL)
    if spelling is None:
        spelling = Unsupported("it has no Julia spelling in the primitive table")
    if isinstance(spelling, Unsupported):
        raise UnsupportedFunctionError(
            f"the julia engine cannot run primitive {prim.name!r}: {spelling.reason}. "
            f"Fix: use engine='numpy' (or 'cupy') for this function, or rewrite that step "
            f"with operations the julia engine supports.")
    return spelling


#: entries spelled with Julia's ``ifelse``, which keeps each operand's type: NumPy's
#: ``where`` converts both to the result dtype, and Julia's broadcast would otherwise make
#: an array of a Union type (an ``Array{Number}`` for real and complex operands)
_SELECTIONS = frozenset({"where"})


def _in_eltype(text: str, atom, dtype) -> str:
    """``text`` (an operand) converted to ``dtype`` where it is a value of another dtype."""
    if isinstance(atom, Var) and np.dtype(atom.aval.dtype) != dtype:
        return f"{jl_type(dtype)}.({text})"
    return text


#: entries without complex rules whose Julia spelling computes NumPy's values on complex
#: operands too (values only: the API refuses derivatives through complex values of them).
#: Any other such entry meeting a complex value is refused when the source is written:
#: Julia's ordering functions (max, <, sortperm, argmax) have no methods for complex
#: numbers, where NumPy orders them lexicographically.
_COMPLEX_VALUES_SPELLED = frozenset({
    "equal", "not_equal", "isnan", "isinf", "isfinite", "logical_and", "logical_or",
    "logical_not", "logical_xor",
})


def _check_complex_operands(eqn) -> None:
    prim = eqn.prim
    if prim.complex or prim.name in _COMPLEX_VALUES_SPELLED:
        return
    atoms = [a for a in eqn.inputs if isinstance(a, Var)] + list(eqn.outputs)
    if any(np.dtype(a.aval.dtype).kind == "c" for a in atoms):
        raise UnsupportedFunctionError(
            f"the julia engine cannot run primitive {prim.name!r} on complex values: its "
            f"Julia spelling is for real numbers (Julia has no ordering of complex numbers, "
            f"where NumPy orders them lexicographically). Fix: use engine='numpy' for this "
            f"function, or apply it to real values (np.real(z), np.abs(z)).")


def _render_eqn(eqn, operand, subprogram=None) -> str:
    """One equation's right-hand side. ``subprogram(closed) -> name`` writes a body held in
    the params (a loop or branch body) as a local Julia function and names it."""
    template = julia_template(eqn)
    dtype = eqn_float_dtype(eqn)
    # an elementwise result's dtype: literals are written in it (see _JuliaWriter.operand)
    out_dtype = np.dtype(eqn.outputs[0].aval.dtype) \
        if eqn.prim.elementwise and not eqn.prim.multiple_results else None
    ops = [operand(a, dtype, out_dtype) for a in eqn.inputs]
    if eqn.prim.name in _SELECTIONS:
        ops = [ops[0]] + [_in_eltype(op, a, out_dtype) for op, a in zip(ops[1:], eqn.inputs[1:])]
    derived = derived_placeholders(eqn)
    # in template order (not a set): bodies are written, and named, in this order
    fields = list(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(template) if f))
    values = {}
    for f in fields:
        if f.isdigit():
            continue
        if f == "args":
            values[f] = ", ".join(ops)
        elif f == "rest":
            values[f] = ", ".join(ops[1:])
        elif f in derived and (f != "value" or "value" in eqn.params):
            values[f] = derived[f]()
        elif f in eqn.params and isinstance(eqn.params[f], Closed) and subprogram is not None:
            values[f] = subprogram(eqn.params[f])
        elif f in eqn.params:
            text = jl_literal(eqn.params[f], dtype)
            if text is None:
                raise EngineError(
                    f"internal: primitive {eqn.prim.name!r} parameter {f}={eqn.params[f]!r} "
                    f"has no Julia literal; its julia template must use a derived placeholder")
            values[f] = text
        else:
            raise EngineError(f"internal: julia template of {eqn.prim.name!r} uses unknown "
                              f"field {{{f}}}")
    return template.format(*ops, **values)


@dataclass
class JuliaSource:
    """Generated source plus the constants it takes as trailing arguments."""

    text: str
    constants: list
    n_inputs: int


class _JuliaWriter:
    """Writes one graph as a Julia function; loop and branch bodies become local functions.

    Every name comes from one counter for the whole program (a1.. program inputs, b1..
    body inputs, v1.. values, f1.. bodies, c1.. constants): a body is a closure, and in
    Julia a closure assigning to a name the enclosing function also uses would rebind
    that variable. Bodies read constants from the program's own c arguments.
    """

    def __init__(self):
        self.constants: list = []
        self.const_names: dict[int, str] = {}
        self.counter = itertools.count(1)

    def constant(self, value) -> str:
        key = id(value)
        if key not in self.const_names:
            self.constants.append(value)
            self.const_names[key] = f"c{len(self.constants)}"
        return self.const_names[key]

    def function_lines(self, graph: Graph, header: str, arg_names: list[str], indent: str) -> list[str]:
        names = {id(v): n for v, n in zip(graph.invars, arg_names)}

        def operand(atom, dtype, out_dtype=None) -> str:
            """A Var's name, a literal's text, or a constant's argument name. ``out_dtype``:
            the result dtype of an elementwise equation, in which NumPy converts a Python
            number operand: to a float for a float result (`np.where(c, 1, x)` is float;
            in Julia `ifelse.(c, 1, x)` would have eltype Union{Int64, Float64}), to a
            complex number for a complex result (a real literal in `ifelse` would make a
            Union again, and NumPy's complex product with (2+0j) is not Julia's product
            with the real 2.0 at infinite parts). Booleans stay Booleans (a condition)."""
            if isinstance(atom, Var):
                return names[id(atom)]
            value = atom.value
            scalar = isinstance(value, (bool, int, float, complex, np.generic)) \
                and not isinstance(value, np.ndarray)
            number = scalar and not isinstance(value, (bool, np.bool_))
            if number and out_dtype is not None and out_dtype.kind == "c" \
                    and isinstance(value, (int, float, complex, np.number)):
                return jl_complex(value, out_dtype)
            if number and out_dtype is not None and out_dtype.kind == "f" \
                    and isinstance(value, (int, np.integer)):
                value = float(value)
            if scalar:
                text = jl_literal(value, dtype)
                if text is not None:
                    return text
            return self.constant(value)

        body: list[str] = []
        bodies: dict[int, str] = {}  # per scope: a name is visible where it was defined

        def subprogram(closed) -> str:
            if id(closed) not in bodies:
                name = f"f{next(self.counter)}"
                params = [f"b{next(self.counter)}" for _ in closed.graph.invars]
                body.extend(self.function_lines(closed.graph, f"{name} = function ({', '.join(params)})",
                                                params, indent + "    "))
                bodies[id(closed)] = name
            return bodies[id(closed)]

        used = {id(a) for e in graph.eqns for a in e.inputs} | {id(o) for o in graph.outvars}
        for eqn in graph.eqns:
            rhs = _render_eqn(eqn, operand, subprogram)
            outs = []
            for o in eqn.outputs:
                names[id(o)] = f"v{next(self.counter)}"
                # unused results of a multiple-result call are `_` (no unused local binding)
                unused = eqn.prim.multiple_results and id(o) not in used
                outs.append("_" if unused else names[id(o)])
            if not outs:
                body.append(f"{indent}    {rhs}")
            elif len(outs) == 1 and not eqn.prim.multiple_results:
                body.append(f"{indent}    {outs[0]} = {rhs}")
            else:
                body.append(f"{indent}    ({', '.join(outs)},) = {rhs}" if len(outs) == 1
                            else f"{indent}    {', '.join(outs)} = {rhs}")
        results = [operand(o, real_dtype(o.aval.dtype) if np.issubdtype(o.aval.dtype, np.inexact)
                           else np.float64) for o in graph.outvars]
        return ([f"{indent}{header}"] + body
                + [f"{indent}    return {jl_tuple(results) if results else '()'}", f"{indent}end"])


def generate_julia(graph: Graph, fn_name: str = "program") -> JuliaSource:
    """Julia source for ``graph``: one function, one line per equation (loop and branch
    bodies as local functions before the line that uses them)."""
    writer = _JuliaWriter()
    params = [f"a{i}" for i in range(1, len(graph.invars) + 1)]
    # the program's constants are known only after writing it: a placeholder header
    lines = writer.function_lines(graph, "HEADER", params, "")
    params += [f"c{i}" for i in range(1, len(writer.constants) + 1)]
    lines[0] = f"function {fn_name}({', '.join(params)})"
    return JuliaSource("\n".join(lines) + "\n", writer.constants, len(graph.invars))


# =============================================================== finding Julia

_INSTALL_FIX = (
    "Fix: install Julia >= 1.10 (https://julialang.org/install: juliaup) so that `julia` "
    "is on PATH; or point diffprog at an existing one with PYTHON_JULIAPKG_EXE=/path/to/julia "
    "(juliapkg then installs DiffProg's Julia dependencies), or with PYTHON_JULIACALL_EXE="
    "/path/to/julia plus PYTHON_JULIACALL_PROJECT=/path/to/a/julia/project that already has "
    "DiffProg, Zygote and DLPack; or set DIFFPROG_JULIA_INSTALL=1 to let juliapkg download "
    "Julia (minutes, needs the network). Meanwhile use engine='numpy'.")


def find_julia() -> str | None:
    """Where a Julia executable is, without starting it or touching the network:
    $PYTHON_JULIACALL_EXE, $PYTHON_JULIAPKG_EXE, juliapkg's record of the Julia it
    found or installed, ``julia`` or ``juliaup`` on PATH. None when there is none."""
    for var in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIAPKG_EXE"):
        exe = os.environ.get(var)
        if exe and shutil.which(exe):
            return shutil.which(exe)
    for meta in _juliapkg_meta_files():
        try:
            with open(meta) as fp:
                exe = json.load(fp).get("executable")
        except (OSError, ValueError):
            continue
        if exe and shutil.which(exe):
            return exe
    return shutil.which("julia") or shutil.which("juliaup")


def _juliapkg_meta_files() -> list[str]:
    """juliapkg keeps ``meta.json`` (with the Julia executable) next to its project."""
    projects = [os.environ.get("PYTHON_JULIAPKG_PROJECT", "")]
    if sys.prefix != sys.base_prefix:
        projects.append(os.path.join(sys.prefix, "julia_env"))
    if os.environ.get("CONDA_PREFIX"):
        projects.append(os.path.join(os.environ["CONDA_PREFIX"], "julia_env"))
    depot = os.environ.get("JULIA_DEPOT_PATH", "").split(os.pathsep)[0] or \
        os.path.join(os.path.expanduser("~"), ".julia")
    projects.append(os.path.join(depot, "environments", "pyjuliapkg"))
    return [os.path.join(p, "pyjuliapkg", "meta.json") for p in projects if p]


def _named_but_missing() -> list[str]:
    """The Julia environment variables that name a file that is not an executable."""
    bad = []
    for var in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIAPKG_EXE"):
        exe = os.environ.get(var)
        if exe and not shutil.which(exe):
            kind = "does not exist" if not os.path.exists(exe) else "is not an executable file"
            bad.append(f"{var}={exe!r} {kind}")
    return bad


def probe_julia() -> str:
    """Raise :class:`EngineUnavailable` (fast) unless juliacall can start a Julia here."""
    bad = _named_but_missing()
    if bad:  # said first: the user pointed at a Julia, and that is what went wrong
        raise EngineUnavailable(
            f"the julia engine was pointed at a Julia that is not there: {'; '.join(bad)}: "
            f"set it to the path of the julia executable (`which julia`, or juliaup's "
            f"`julia` launcher), or unset it to let diffprog look on PATH. " + _INSTALL_FIX)
    if importlib.util.find_spec("juliacall") is None:
        raise EngineUnavailable(
            "the julia engine needs the juliacall package (not installed here: pip install "
            "'diffprog[julia]') and Julia >= 1.10. " + _INSTALL_FIX)
    exe = find_julia()
    if exe is None and os.environ.get("DIFFPROG_JULIA_INSTALL") != "1":
        raise EngineUnavailable("the julia engine could not find a Julia executable "
                                "(looked at PYTHON_JULIACALL_EXE, PYTHON_JULIAPKG_EXE, "
                                "juliapkg's state and PATH). " + _INSTALL_FIX)
    return exe or "(juliapkg will install one)"


# =============================================================== running through juliacall

class _Bridge:
    """The live Julia session: DiffProg loaded, arrays in and out."""

    def __init__(self):
        from juliacall import Main as jl  # starts Julia; resolves juliapkg.json deps
        jl.seval("using DiffProg")
        self.jl = jl
        self.dp = jl.DiffProg
        self.cuda = False
        self.lock = threading.Lock()
        self.dp.compile_notices_b(False)  # we print our own, once, from Python
        self.noticed = False

    def use_cuda(self):
        if not self.cuda:
            try:
                self.jl.seval("using CUDA")
            except Exception as e:  # CUDA is a weak dependency: not installed by default
                raise EngineUnavailable(
                    f"the julia engine got CuPy arrays, but Julia could not load CUDA.jl "
                    f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}). "
                    f"Fix: add it to diffprog's Julia environment once: {CUDA_INSTALL} (CUDA.jl "
                    f"{CUDA_COMPAT}.x: DLPack.jl does not support CUDA.jl 6 yet), or pass NumPy "
                    f"arrays to run on the CPU.") from None
            self.cuda = True

    def to_julia(self, value, device: str, keep: list | None = None):
        """A NumPy/CuPy value as a Julia argument: 0-d values as numbers of their dtype
        (:func:`julia_number`), arrays through DLPack without a copy (after making them
        C-contiguous). ``keep`` collects the Python arrays whose memory Julia now reads, so
        that the caller keeps them alive and can spot outputs that share that memory."""
        number = julia_number(value)
        if number is not None:
            return number
        if device == "gpu" and _is_cupy(value):
            import cupy
            self.use_cuda()
            a = cupy.ascontiguousarray(value)
            if keep is not None:
                keep.append(a)
            return self.dp.import_array(a.__dlpack__(), tuple(a.shape))
        if isinstance(value, np.ndarray):
            if device == "gpu":
                import cupy
                return self.to_julia(cupy.asarray(value), device, keep)
            a = np.ascontiguousarray(value)
            if not a.flags.writeable:  # NumPy refuses to export read-only arrays by DLPack
                a = a.copy()
            if keep is not None:
                keep.append(a)
            return self.dp.import_array(a, tuple(a.shape))
        raise EngineError(f"the julia engine cannot pass a {type(value).__name__} to Julia; "
                          f"expected NumPy/CuPy arrays or numbers")

    def outputs(self, result, avals, device: str) -> list:
        """Julia results (a tuple, possibly nested one level) -> NumPy/CuPy values."""
        if device == "gpu":
            import cupy
            exported = self.dp.export_outputs(result, cupy.from_dlpack)
        else:
            exported = self.dp.export_outputs(result)
        return [_to_python(v, aval, device) for v, aval in zip(_flatten(exported), avals)]

    def require_complex_derivatives(self) -> None:
        """Refuse derivatives of programs with complex values when the Julia side says it
        cannot take them soundly (``DiffProg.complex_derivative_problem``: an old Zygote).
        Asked once per session."""
        if not hasattr(self, "complex_problem"):
            self.complex_problem = self.dp.complex_derivative_problem()
        if self.complex_problem is not None:
            raise NotDifferentiableError(
                f"the julia engine cannot differentiate this program's complex values: "
                f"{self.complex_problem}. Fix: update Zygote in diffprog's Julia environment "
                f"({ZYGOTE_COMPLEX_INSTALL}), or use engine='numpy' for this function.")

    def notice(self, kind: str):
        if not self.noticed:
            self.noticed = True
            print(f"diffprog: Julia is compiling this program ({kind}); the first call of each "
                  f"new program or argument type is slow, later calls reuse the compiled code.",
                  file=sys.stderr)


def _flatten(values) -> list:
    out = []
    for v in values:
        if isinstance(v, tuple):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def _is_cupy(x) -> bool:
    return type(x).__module__.startswith("cupy") and hasattr(x, "__cuda_array_interface__")


def julia_number(value):
    """The Julia form of a NumPy 0-d value: a number of its dtype (a NumPy scalar, which
    juliacall converts to the matching Julia type: np.float32 -> Float32), or None for
    arrays of rank >= 1. Generated code holds every 0-d value as a Julia number: a 0-dim
    Julia array would meet the numbers that Base makes of 0-dim broadcasts, and Zygote
    cannot add a number cotangent to a 0-dim array one."""
    if isinstance(value, (bool, int, float, complex, np.generic)):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value[()]
    if _is_cupy(value) and value.ndim == 0:
        return value.get()[()]  # one device-to-host copy
    return None


def _to_python(v, aval, device: str):
    dtype = np.dtype(aval.dtype)
    if device == "gpu":
        import cupy
        if _is_cupy(v):
            arr = v
        elif v is None:  # a `nothing` gradient that slipped through: zero
            arr = cupy.zeros(aval.shape, dtype)
        elif isinstance(v, (bool, int, float, complex, np.generic)):
            arr = cupy.full(aval.shape, v, dtype)
        else:  # a host array that a GPU call made from numbers alone (Julia order)
            arr = cupy.asarray(np.asarray(v).T)
        arr = arr.reshape(aval.shape) if tuple(arr.shape) != tuple(aval.shape) else arr
        return arr.astype(dtype, copy=False)
    if v is None:  # a `nothing` gradient that slipped through: zero
        return np.zeros(aval.shape, dtype)
    if isinstance(v, (bool, int, float, complex, np.generic)):
        return np.asarray(v, dtype=dtype)[()] if aval.shape == () else np.full(aval.shape, v, dtype)
    arr = np.asarray(v).T  # Julia column-major view -> NumPy C order, no copy
    if tuple(arr.shape) != tuple(aval.shape):
        arr = arr.reshape(aval.shape)
    return arr.astype(dtype, copy=False)


def _may_share_memory(a, b) -> bool:
    """Whether arrays ``a`` and ``b`` (NumPy or CuPy) may overlap in memory (bounds only)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.may_share_memory(a, b))
    if _is_cupy(a) and _is_cupy(b):
        import cupy
        return bool(cupy.may_share_memory(a, b))
    return False


def unaliased(outputs: list, owners: list) -> list:
    """``outputs`` with every array that may share memory with one of ``owners`` (the
    Python arrays handed to Julia for this call, and the program's constants) copied.

    A Julia result can be an argument itself or a reshape of one (`reshape` shares memory
    in Julia). Returned as is, it would point into a temporary Python frees after the call
    (a contiguous copy of a strided input: the Julia wrapper keeps it alive only while that
    very wrapper lives, not its reshapes), or let the caller write into a program's cached
    constant."""
    out = []
    for v in outputs:
        if hasattr(v, "shape") and any(_may_share_memory(v, o) for o in owners):
            v = v.copy()
        out.append(v)
    return out


_BRIDGE: _Bridge | None = None
_BRIDGE_LOCK = threading.Lock()


def bridge() -> _Bridge:
    global _BRIDGE
    with _BRIDGE_LOCK:
        if _BRIDGE is None:
            _BRIDGE = _Bridge()
        return _BRIDGE


def _device_of(values) -> str:
    return "gpu" if any(_is_cupy(v) for v in values) else "cpu"


class JuliaProgram:
    """One generated Julia program, loaded into Julia on first use; constants are moved
    to Julia once per device and passed as the trailing arguments. The Python arrays
    whose memory those Julia constants read stay referenced here for the program's life
    (besides the DLPack tensors the Julia side keeps with each wrapped array)."""

    def __init__(self, source: JuliaSource, graph: Graph):
        self.source = source
        self.graph = graph
        self.complex_values = graph is not None and has_complex_values(graph)
        self._loaded = None
        self._constants: dict[str, tuple] = {}
        self._constant_owners: dict[str, list] = {}
        self._seen: set = set()

    def julia_args(self, b: _Bridge, inputs, device: str, keep: list) -> tuple:
        if self._loaded is None:
            self._loaded = b.dp.load_program(self.source.text)
        if device not in self._constants:
            owners: list = []
            self._constants[device] = tuple(b.to_julia(c if _is_cupy(c) else np.asarray(c),
                                                       device, owners)
                                            for c in self.source.constants)
            self._constant_owners[device] = owners
        keep.extend(self._constant_owners[device])
        return tuple(b.to_julia(x, device, keep) for x in inputs) + self._constants[device]

    def call(self, kind: str, inputs, run, avals, zygote: bool = False) -> list:
        """Run ``run(dp, program, args, keep)`` in Julia and return NumPy/CuPy outputs;
        ``keep`` lists the Python arrays Julia reads in this call (``run`` adds the ones it
        passes itself). ``zygote``: ``run`` differentiates with Zygote."""
        b = bridge()
        device = _device_of(inputs)
        if zygote and self.complex_values:
            b.require_complex_derivatives()
        with b.lock:
            key = (kind, device, tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in inputs))
            if key not in self._seen:
                self._seen.add(key)
                b.notice(kind)
            keep: list = []
            try:  # loading the program and passing the arguments can fail in Julia too
                args = self.julia_args(b, inputs, device, keep)
                result = run(b.dp, self._loaded, args, keep)
            except DiffprogError:
                raise
            except Exception as e:  # juliacall.JuliaError and conversion errors
                raise EngineError(_julia_error_message(kind, e, self.source.text)) from None
            return unaliased(b.outputs(result, avals, device), keep)


def _julia_error_message(kind: str, error: Exception, source: str) -> str:
    text = str(error).strip().splitlines()
    head = "\n".join(text[:12])
    return (f"Julia failed while running the generated program ({kind}):\n{head}\n"
            f"Generated source:\n{source}Fix: if this is a limitation of the julia engine, "
            f"use engine='numpy'; otherwise please report it with the source above.")


# =============================================================== the engine

class JuliaEngine(Engine):
    """Runs graphs as generated Julia; derivatives by Zygote (see module docstring)."""

    name = "julia"
    #: the API hands this engine forward graphs for reverse-mode kinds (grad,
    #: value_and_grad, vjp) and calls :meth:`compile_gradient` / :meth:`compile_pullback`.
    native_gradients = True

    def check_available(self) -> None:
        probe_julia()
        try:
            bridge()
        except EngineUnavailable:
            raise
        except Exception as e:  # juliacall/juliapkg failures: resolve, precompile, start
            raise EngineUnavailable(
                f"the julia engine could not start Julia with the DiffProg package "
                f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}). "
                + _INSTALL_FIX) from None

    def render_source(self, graph: Graph) -> str:
        """The Julia source for ``graph`` (works without Julia)."""
        return generate_julia(graph).text

    def compile(self, graph: Graph) -> Program:
        """Forward program: ``fn(*inputs) -> outputs``."""
        prog = JuliaProgram(generate_julia(graph), graph)
        avals = [o.aval for o in graph.outvars]

        def run(*inputs):
            return prog.call("value", inputs, lambda dp, p, args, keep: dp.value(p, args), avals)
        return Program(run, prog.source.text, self.name, graph)

    def compile_native(self, request: Derivative) -> tuple:
        g, wrt = request.graph, list(request.wrt)
        if request.kind == "gradient":
            return (self.compile_gradient(g, wrt),)
        if request.kind == "pullback":
            return self.compile_pullback(g, wrt)
        if request.kind == "jacobian":
            return (self.compile_jacobian(g, wrt),)
        if request.kind == "hessian":
            return (self.compile_hessian(g, wrt[0]),)
        raise EngineError(f"internal: unknown derivative kind {request.kind!r}")

    def compile_gradient(self, graph: Graph, wrt: list[int]) -> Program:
        """``fn(*inputs) -> (*outputs, *gradients of the first output w.r.t. wrt)``."""
        prog = JuliaProgram(generate_julia(graph), graph)
        avals = [o.aval for o in graph.outvars] + [graph.invars[i].aval for i in wrt]
        positions = tuple(i + 1 for i in wrt)

        def run(*inputs):
            return prog.call("gradient", inputs,
                             lambda dp, p, args, keep: dp.value_and_gradient(p, args, positions),
                             avals, zygote=True)
        return Program(run, prog.source.text, self.name, graph)

    def compile_pullback(self, graph: Graph, wrt: list[int]) -> tuple[Program, Program]:
        """Forward ``fn(*inputs) -> (*outputs, *inputs)`` (the inputs are the residuals
        the backward program needs) and backward ``fn(*inputs, *cotangents) -> gradients``
        for the inputs ``wrt`` (Zygote's pullback; it reruns the forward pass)."""
        prog = JuliaProgram(generate_julia(graph), graph)
        n_in = len(graph.invars)
        out_avals = [o.aval for o in graph.outvars]
        in_avals = [v.aval for v in graph.invars]
        forward_program = self.compile(graph)

        def forward(*inputs):
            return list(forward_program(*inputs)) + list(inputs)

        def backward(*flat):
            inputs, cts = flat[:n_in], flat[n_in:]
            cts = tuple(_cotangent(c, a) for c, a in zip(cts, out_avals))
            grads = prog.call("pullback", inputs,
                              lambda dp, p, args, keep: dp.pullback(p, args, _julia_cts(cts, keep)),
                              out_avals + in_avals, zygote=True)
            return [grads[len(out_avals) + i] for i in wrt]
        return (Program(forward, prog.source.text, self.name, graph),
                Program(backward, prog.source.text, self.name, graph))

    def compile_jacobian(self, graph: Graph, wrt: list[int]) -> Program:
        """``fn(*inputs) -> (output, *jacobians)`` of the single output, NumPy shapes
        ``out.shape + x.shape``; complex values as JAX's ``jacrev`` (rows are gradients of
        a real output; a complex output is holomorphic in complex arguments)."""
        y = graph.outvars[0].aval
        _check_jacobian_fields(y, [graph.invars[i].aval for i in wrt], "jacobian")
        prog = JuliaProgram(generate_julia(graph), graph)
        avals = [y] + [_jac_aval(y, graph.invars[i].aval) for i in wrt]
        positions = tuple(i + 1 for i in wrt)

        def run(*inputs):
            return prog.call("jacobian", inputs,
                             lambda dp, p, args, keep: dp.jacobian(p, args, output=1, wrt=positions),
                             avals, zygote=True)
        return Program(run, prog.source.text, self.name, graph)

    def compile_hessian(self, graph: Graph, wrt: int) -> Program:
        """``fn(*inputs) -> (hessian,)`` of the scalar first output w.r.t. input ``wrt``:
        Zygote reverse-over-reverse, except for programs with structured control flow
        (:meth:`compile_hessian_by_transforms`)."""
        x = graph.invars[wrt].aval
        _check_hessian_fields(graph.outvars[0].aval, x)
        if has_control_flow(graph):
            return self.compile_hessian_by_transforms(graph, wrt)
        prog = JuliaProgram(generate_julia(graph), graph)
        avals = [_jac_aval(x, x)]

        def run(*inputs):
            return prog.call("hessian", inputs,
                             lambda dp, p, args, keep: (dp.hessian(p, args, wrt + 1),), avals,
                             zygote=True)
        return Program(run, prog.source.text, self.name, graph)

    def compile_hessian_by_transforms(self, graph: Graph, wrt: int) -> Program:
        """The Hessian of a program with scan/cond/while_loop/checkpoint, from diffprog's
        own transforms: Zygote cannot differentiate DiffProg.npscan's reverse rule again (it
        fills buffers in place), so reverse-over-reverse happens in the IR (the VJP of the
        gradient graph, :func:`hessian_vjp_graph`) and Julia only runs that program forward,
        once per row of the Hessian, with a unit cotangent."""
        hvp = hessian_vjp_graph(graph, wrt)
        prog = JuliaProgram(generate_julia(hvp), hvp)
        x = graph.invars[wrt].aval
        avals = [o.aval for o in hvp.outvars]
        n = int(np.prod(x.shape, dtype=np.int64))

        def run(*inputs):
            xp = _array_module(_device_of(inputs))
            rows = []
            for i in range(n):
                unit = xp.zeros(n, dtype=x.dtype)
                unit[i] = 1
                outs = prog.call("hessian", tuple(inputs) + (unit.reshape(x.shape),),
                                 lambda dp, p, args, keep: dp.value(p, args), avals)
                rows.append(outs[1])
            hessian = xp.stack(rows) if rows else xp.zeros((0,) + tuple(x.shape), x.dtype)
            return [hessian.reshape(tuple(x.shape) * 2)]
        return Program(run, prog.source.text, self.name, hvp)


def _jac_aval(y, x):
    return Aval(tuple(y.shape) + tuple(x.shape), np.result_type(y.dtype, x.dtype))


def _is_complex(aval) -> bool:
    return np.dtype(aval.dtype).kind == "c"


def _check_jacobian_fields(y, xs, what: str) -> None:
    """JAX's rule for reverse-mode Jacobians, also in julia/src/derivatives.jl: a complex
    output needs complex arguments (a holomorphic function). diffprog's API checks the
    outputs of jacobian(holomorphic=False) before the engine sees them; this is the same
    refusal for a request that reaches the engine."""
    if _is_complex(y) and not all(_is_complex(x) for x in xs):
        raise NotDifferentiableError(
            f"{what}: the function returned {np.dtype(y.dtype)} for a real argument; a "
            f"reverse-mode Jacobian needs a real output, or complex arguments of a "
            f"holomorphic function (JAX's jacrev refuses it too). Fix: differentiate a real "
            f"quantity (np.real(y), np.abs(y) ** 2), or use dp.vjp / dp.jvp directly.")


def _check_hessian_fields(y, x) -> None:
    """JAX's rule for Hessians: complex only for a holomorphic function (complex output of
    a complex argument, then f''(z)); a real function of complex values has none."""
    if _is_complex(y) != _is_complex(x):
        raise NotDifferentiableError(
            f"hessian: the function maps {np.dtype(x.dtype)} to {np.dtype(y.dtype)}; a "
            f"complex Hessian exists only for a holomorphic function (complex argument and "
            f"output, holomorphic=True). Fix: pass the real and imaginary parts as real "
            f"arguments, or differentiate a real quantity.")


def has_complex_values(graph: Graph) -> bool:
    """Whether any value of ``graph`` (bodies of loops and branches included) is complex."""
    atoms = list(graph.invars) + list(graph.outvars)
    for eqn in graph.eqns:
        atoms += list(eqn.inputs) + list(eqn.outputs)
        for value in eqn.params.values():
            for item in (value if isinstance(value, (tuple, list)) else (value,)):
                if isinstance(item, Closed) and has_complex_values(item.graph):
                    return True
    return any(getattr(a, "aval", None) is not None and _is_complex(a.aval) for a in atoms)


def _cotangent(c, aval):
    if c is None:
        return None
    if _is_cupy(c):
        return c.astype(aval.dtype, copy=False)
    return np.asarray(c, dtype=aval.dtype)


def _julia_cts(cts, keep: list) -> tuple:
    """Cotangents in Julia: arrays through DLPack like inputs, 0-d as numbers."""
    b = bridge()
    return tuple(None if c is None else b.to_julia(c, "gpu" if _is_cupy(c) else "cpu", keep)
                 for c in cts)


def has_control_flow(graph: Graph) -> bool:
    """Whether ``graph`` runs structured control flow (scan, cond, while_loop, remat: the
    equations holding bodies). Their Julia rules have first derivatives only (DiffProg.npscan's
    rule fills buffers in place), so Hessians of such programs come from the Python transforms."""
    return any(holds_body(e) for e in graph.eqns)


def hessian_vjp_graph(graph: Graph, wrt: int) -> Graph:
    """``(*inputs, u) -> (gradient, u . H)`` for the scalar first output of ``graph``:
    the gradient graph (reverse mode, seeded with 1), then the VJP of its gradient output
    with the cotangent ``u`` (reverse over reverse). Row ``i`` of the Hessian is the second
    output for the unit vector ``u = e_i``."""
    first = Graph(graph.invars, graph.eqns, graph.outvars[:1])
    gradient = vjp_graph(first, [wrt], seed="ones")  # (value, gradient)
    gradient_only = Graph(gradient.invars, gradient.eqns, gradient.outvars[1:])
    return vjp_graph(gradient_only, [wrt], seed="input")


def _array_module(device: str):
    if device == "gpu":
        import cupy
        return cupy
    return np


__all__ = ["JuliaEngine", "generate_julia", "find_julia", "probe_julia", "julia_template",
           "derived_placeholders", "JuliaSource", "julia_number", "has_control_flow",
           "has_complex_values", "hessian_vjp_graph", "CUDA_COMPAT", "ZYGOTE_COMPLEX"]
