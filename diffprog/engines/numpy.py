"""The embedded engine: a Graph becomes straight-line Python source over ``xp``.

One line per equation, using each primitive's source template, so the compiled
program has no per-op dispatch. Intermediates are deleted right after their last
use (peak memory). Constants and non-literal parameters are bound as names in the
program's namespace, never pasted as text: generated code contains only names we
made, numbers and our own templates.
"""
from __future__ import annotations

import itertools
import string
import weakref

import numpy as np

from ..ir import Graph, Lit, Var
from ..tracing import is_operator, python_scalar
from ..transforms.closed import Closed
from . import fusion, peephole
from .base import Engine, Program

_compile_ids = itertools.count()


def _is_safe_literal(v) -> bool:
    """Values whose repr we paste: ints, bools, None, finite floats, slices, tuples of them."""
    if v is None or v is Ellipsis or isinstance(v, bool):
        return True
    if isinstance(v, int) and not isinstance(v, np.integer):
        return True
    if isinstance(v, float) and not isinstance(v, np.floating):
        return np.isfinite(v)
    if isinstance(v, slice):
        return all(_is_safe_literal(x) for x in (v.start, v.stop, v.step))
    if isinstance(v, tuple):
        return all(_is_safe_literal(x) for x in v)
    return False


class SourceBuilder:
    """Accumulates generated lines and the namespace of bound constants."""

    def __init__(self, xp_module):
        self.namespace = {"xp": xp_module}
        self.lines: list[str] = []
        self._consts = itertools.count()
        self._bound_ids: dict[int, str] = {}

    def bind_value(self, value, prefix="c") -> str:
        key = id(value)
        if key in self._bound_ids:
            return self._bound_ids[key]
        name = f"_{prefix}{next(self._consts)}"
        self.namespace[name] = value
        self._bound_ids[key] = name
        return name

    def param_text(self, value) -> str:
        return repr(value) if _is_safe_literal(value) else self.bind_value(value, "k")


class Placement:
    """Where a program's values live. The numpy engine keeps everything on the host as is.

    Device engines (cupy) override it: constants move to the device once, at compile
    time (never per call), and Python scalars meet non-elementwise functions as arrays.
    """

    #: wrap Python-scalar operands of non-elementwise primitives in ``xp.asarray``
    #: (NumPy does this implicitly; device libraries want arrays there).
    scalars_as_arrays = False
    #: results are always arrays of ``xp`` (a device engine never hands back host scalars).
    outputs_as_arrays = False

    def constant(self, value):
        """The value bound into the program for a constant operand (called once)."""
        return value


HOST = Placement()


class DevicePlacement(Placement):
    """Constants go to the device once, at compile time; scalars become device arrays
    where a CuPy function needs an array; results are always CuPy arrays."""

    scalars_as_arrays = True
    outputs_as_arrays = True

    def __init__(self, to_device):
        self.to_device = to_device

    def constant(self, value):
        if isinstance(value, (np.ndarray, np.generic)):
            return self.to_device(value)  # the one host -> device copy of this constant
        return value


class CompiledBody:
    """A loop or branch body compiled with the program that holds it: called like the
    :class:`~diffprog.transforms.closed.Closed` it comes from (``body(*args) ->
    outputs``), with the same avals, by the control-flow entries' impls."""

    __slots__ = ("run", "in_avals", "out_avals")

    def __init__(self, run, closed: Closed):
        self.run = run
        self.in_avals, self.out_avals = closed.in_avals, closed.out_avals

    def __call__(self, *args):
        return self.run(*args)


_PLACEMENTS: dict = {}


def placement_for(xp_module) -> Placement:
    """Where constants of a body run on ``xp_module``'s values outside a program live (a
    loop evaluated while tracing): as they are for NumPy; on the device for CuPy, copied
    once when the body is compiled, as the cupy engine does for its programs."""
    if xp_module is np:
        return HOST
    placement = _PLACEMENTS.get(xp_module)
    if placement is None:
        placement = _PLACEMENTS[xp_module] = DevicePlacement(xp_module.asarray)
    return placement


# Closed -> {(xp, placement): CompiledBody}: a body held by several programs (a value and
# a gradient program share the forward loop) is compiled once per array module/placement
_BODIES: "weakref.WeakKeyDictionary[Closed, dict]" = weakref.WeakKeyDictionary()


def compiled_body(closed: Closed, xp_module, placement: Placement | None = None) -> CompiledBody:
    """``closed`` compiled as a function over ``xp_module`` (NumPy bodies get the numpy
    engine's cheaper small-array spellings, as its programs do)."""
    placement = placement or placement_for(xp_module)
    compiled = _BODIES.setdefault(closed, {})
    hit = compiled.get((xp_module, placement))
    if hit is None:
        if xp_module is np and placement is HOST:
            source, namespace = generate_source(peephole.lower(closed.graph), xp_module, "body",
                                                host_fast=True)
        else:
            source, namespace = generate_source(closed.graph, xp_module, "body",
                                                placement=placement)
        exec(compile(source, "<diffprog body>", "exec"), namespace)
        hit = compiled[(xp_module, placement)] = CompiledBody(namespace["body"], closed)
    return hit


def generate_source(graph: Graph, xp_module, fn_name="program", *, placement: Placement = HOST,
                    fuse=None, blocks: int = 0, host_fast: bool = False) -> tuple[str, dict]:
    """Python source of ``graph`` over ``xp_module``, and the namespace to exec it in.

    ``fuse``: a decorator (``cupy.fuse``) applied to each run of two or more consecutive
    elementwise equations, emitted as its own function so the run becomes one kernel.
    ``blocks``: (NumPy only) elementwise runs over arrays of at least this many elements
    become blocked multi-threaded kernels (:mod:`diffprog.engines.fusion`); 0: off.
    ``host_fast`` (implied by ``blocks``): NumPy-only spellings with less call overhead
    (see ``_HOST_FAST``).
    """
    if blocks and fuse is None:
        graph = fusion.sink_small_work(graph, blocks)
    b = SourceBuilder(xp_module)
    names: dict[int, str] = {}
    for i, v in enumerate(graph.invars):
        names[id(v)] = f"a{i}"
    counter = itertools.count()
    last_use = _last_uses(graph)
    out_ids = {id(v) for v in graph.outvars if isinstance(v, Var)}
    in_ids = {id(v) for v in graph.invars}
    constants: dict = {}

    def operand(atom, as_array=False) -> str:
        if isinstance(atom, Lit):
            v = atom.value
            if isinstance(v, (int, float, bool)) and not isinstance(v, np.generic) and _is_safe_literal(v):
                if not as_array:
                    return repr(v)
                key = ("scalar", type(v), v)
                if key not in constants:
                    constants[key] = b.bind_value(placement.constant(np.asarray(v)))
                return constants[key]
            if id(v) not in constants:
                constants[id(v)] = b.bind_value(placement.constant(v))
            return constants[id(v)]
        text = names[id(atom)]
        return f"xp.asarray({text})" if as_array and atom.aval.weak else text

    def operands(eqn) -> list[str]:
        as_array = placement.scalars_as_arrays and _needs_arrays(eqn)
        return [operand(a, as_array) for a in eqn.inputs]

    def define(eqn) -> list[str]:
        outs = []
        for o in eqn.outputs:
            names[id(o)] = f"v{next(counter)}"
            outs.append(names[id(o)])
        return outs

    def assign(outs, rhs, multiple) -> str:
        if not outs:  # an effect without results (a guard)
            return rhs
        return ", ".join(outs) + ("," if len(outs) == 1 and multiple else "") + " = " + rhs

    def body_of(closed):
        return compiled_body(closed, xp_module, placement)

    def dead_after(idx, atoms) -> list[str]:
        return [names[id(a)] for a in _unique_vars(atoms)
                if last_use.get(id(a)) == idx and id(a) not in out_ids and id(a) not in in_ids]

    body, helpers, kernels = [], [], []
    segments = fusion.block_segments(graph, blocks) if blocks and fuse is None \
        else _segments(graph, fuse is not None)
    for segment in segments:
        if len(segment) > 1 and blocks and fuse is None:
            line, kernel, consumed = fusion.render_block_kernel(
                graph, segment, len(kernels), names=names, define=define, operand=operand,
                last_use=last_use, out_ids=out_ids, b=b)
            if line is None:
                continue
            kernels.append(kernel)
            body.append(line)
            dead = [names[id(a)] for a in _unique_vars(consumed)
                    if segment[0] <= last_use.get(id(a), -1) <= segment[-1]
                    and id(a) not in out_ids and id(a) not in in_ids]
        elif len(segment) == 1:
            idx = segment[0]
            eqn = graph.eqns[idx]
            rhs = _render(eqn, operands(eqn), b, body_of, host_fast=blocks > 0 or host_fast)
            body.append(assign(define(eqn), rhs, eqn.prim.multiple_results))
            dead = dead_after(idx, eqn.inputs)
        else:
            line, helper, dead = _fused_call(graph, segment, operands, define, assign, names,
                                             last_use, out_ids, in_ids, b, len(helpers))
            if line is None:
                continue
            helpers.append(helper)
            body.append(line)
        if dead:
            body.append("del " + ", ".join(dead))
    rets = []
    returned: set = set()
    for o in graph.outvars:
        text = operand(o)
        if isinstance(o, Var) and (id(o) in in_ids or id(o) in returned):
            # an argument handed back (the gradient of x * y is y), or one value in two
            # results: a caller mutating one result must not change another or its input
            b.namespace["_fresh"] = _fresh_copy
            text = f"_fresh({text})"
        elif isinstance(o, Lit) and (isinstance(o.value, np.ndarray) or placement.outputs_as_arrays
                                     and not o.aval.weak):
            text = f"xp.array({text}, copy=True)"  # callers may mutate what we return
        elif placement.outputs_as_arrays and o.aval.weak:
            text = f"xp.asarray({text})"
        rets.append(text)
        if isinstance(o, Var):
            returned.add(id(o))
    args = ", ".join(f"a{i}" for i in range(len(graph.invars)))
    src = []
    for name, params, lines, exports in helpers:
        src.append(f"def {name}({', '.join(params)}):")
        src += ["    " + line for line in lines]
        src.append(f"    return {', '.join(exports)}")
        src.append(f"{name} = _fuse({name})")
        src.append("")
    if helpers:
        b.namespace["_fuse"] = fuse
    for kernel in kernels:
        src += kernel + [""]
    src.append(f"def {fn_name}({args}):")
    src += ["    " + line for line in body]
    src.append(f"    return ({', '.join(rets)}{',' if len(rets) == 1 else ''})")
    return "\n".join(src) + "\n", b.namespace


def _fresh_copy(value):
    """A copy of an array (NumPy or CuPy); scalars are immutable and pass as they are."""
    if isinstance(value, np.ndarray) or hasattr(value, "__cuda_array_interface__"):
        return value.copy()
    return value


def _needs_arrays(eqn) -> bool:
    """Library calls that want array operands where the program may hold Python scalars:
    every non-elementwise function; elementwise library functions that are not ufuncs
    (``cupy.where`` calls ``condition.astype``) when any operand is a Python scalar; and
    ufuncs on Python scalars only (NumPy turns those into float64 arrays itself, so the
    device library gets the same). Python operators take scalars as they are."""
    prim = eqn.prim
    if not prim.elementwise:
        return True
    if prim.operator is not None or not isinstance(prim.impl, str):
        return False
    weak = [a.aval.weak for a in eqn.inputs]
    return all(weak) if prim.ufunc is not None else any(weak)


def _fusable(eqn) -> bool:
    """Elementwise, one output, and at least one array operand (not all Python scalars)."""
    prim = eqn.prim
    return (prim.elementwise and not prim.multiple_results and isinstance(prim.impl, str)
            and any(not a.aval.weak for a in eqn.inputs))


def _segments(graph: Graph, fuse: bool) -> list[list[int]]:
    """Equation indices in program order, runs of consecutive fusable ones grouped."""
    segments: list[list[int]] = []
    run: list[int] = []
    for idx, eqn in enumerate(graph.eqns):
        if fuse and _fusable(eqn):
            run.append(idx)
            continue
        segments += [run] if len(run) > 1 else [[i] for i in run]
        run = []
        segments.append([idx])
    segments += [run] if len(run) > 1 else [[i] for i in run]
    return segments


def _fused_call(graph, segment, operands, define, assign, names, last_use, out_ids, in_ids, b, k):
    """One helper function for a run of elementwise equations, and the line calling it.

    Its parameters are the run's inputs from outside (variables and bound constants:
    a fused kernel cannot read globals); it returns the values used after the run.
    """
    first, last = segment[0], segment[-1]
    inside: set = set()
    params: list[str] = []
    lines: list[str] = []
    for idx in segment:
        eqn = graph.eqns[idx]
        ops = operands(eqn)
        for atom, text in zip(eqn.inputs, ops):
            external = isinstance(atom, Lit) and text.startswith("_") or \
                isinstance(atom, Var) and id(atom) not in inside
            if external and text not in params:
                params.append(text)
        outs = define(eqn)
        inside.update(id(o) for o in eqn.outputs)
        lines.append(assign(outs, _render(eqn, ops, b), False))
    exports = [names[id(o)] for idx in segment for o in graph.eqns[idx].outputs
               if id(o) in out_ids or last_use.get(id(o), -1) > last]
    if not exports:
        return None, None, []  # nothing downstream reads it (dead code)
    name = f"_fused{k}"
    consumed = [a for idx in segment for a in graph.eqns[idx].inputs
                if isinstance(a, Var) and id(a) not in inside]
    dead = [names[id(a)] for a in _unique_vars(consumed)
            if first <= last_use.get(id(a), -1) <= last and id(a) not in out_ids and id(a) not in in_ids]
    line = f"{', '.join(exports)} = {name}({', '.join(params)})"
    return line, (name, params, lines, exports), dead


def _unique_vars(atoms):
    seen, out = set(), []
    for a in atoms:
        if isinstance(a, Var) and id(a) not in seen:
            seen.add(id(a))
            out.append(a)
    return out


def _last_uses(graph: Graph) -> dict:
    last = {}
    for idx, eqn in enumerate(graph.eqns):
        for a in eqn.inputs:
            if isinstance(a, Var):
                last[id(a)] = idx
    return last


# NumPy spellings with less per-call overhead than the table's portable templates, for
# the numpy engine only (cupy keeps the templates). Each computes exactly what the
# template does: np.sum/np.max/np.min are thin Python wrappers around these ufunc
# reductions, np.reshape/np.transpose around these methods (1.3 us -> 0.4 us per call
# on small arrays; W3 has thousands of them). Programs may be handed Python floats
# where the graph says float64 (a cotangent 1.0), so the method spellings fall back.
_HOST_FAST = {
    "reshape": "_reshape({0}, {shape})",
    "transpose": "_transpose({0}, {axes})",
    "reduce_sum": "_add_reduce({0}, {axes}, None, None, {keepdims})",
    "reduce_max": "_max_reduce({0}, {axes}, None, None, {keepdims})",
    "reduce_min": "_min_reduce({0}, {axes}, None, None, {keepdims})",
}
def _reshape(x, shape):
    try:
        return x.reshape(shape)
    except AttributeError:  # a Python scalar (a caller's cotangent 1.0, say)
        return np.reshape(x, shape)


def _transpose(x, axes):
    try:
        return x.transpose(axes)
    except AttributeError:
        return np.transpose(x, axes)


_HOST_FAST_NAMES = {"_add_reduce": np.add.reduce, "_max_reduce": np.maximum.reduce,
                    "_min_reduce": np.minimum.reduce, "_reshape": _reshape,
                    "_transpose": _transpose}


def _scatter_static(g, shape, index):
    """scatter_add with a static index (the VJP of basic slicing): zeros, then one store."""
    out = np.zeros(shape, dtype=g.dtype if hasattr(g, "dtype") else np.result_type(g))
    out[index] = g
    return out


def _render(eqn, operands: list[str], b: SourceBuilder, body_of=None, host_fast: bool = False) -> str:
    impl = eqn.prim.impl
    if host_fast and not any(a.aval.weak for a in eqn.inputs):
        name = eqn.prim.name
        if name in _HOST_FAST:
            b.namespace.update(_HOST_FAST_NAMES)
            impl = _HOST_FAST[name]
        elif name == "scatter_add" and len(eqn.inputs) == 1:
            fname = b.bind_value(_scatter_static, "f")
            return f"{fname}({operands[0]}, {b.param_text(tuple(eqn.params['shape']))}, " \
                   f"{b.param_text(eqn.params['index'])})"
    if callable(impl):
        fname = b.bind_value(impl, "f")
        kw = ", ".join(f"{k}={b.bind_value(body_of(v), 'k') if isinstance(v, Closed) else b.param_text(v)}"
                       for k, v in eqn.params.items())
        return f"{fname}(xp, {', '.join(operands)}{', ' if kw else ''}{kw})"
    fields = {f for _, f, _, _ in string.Formatter().parse(impl) if f is not None}
    params = {k: b.param_text(v) for k, v in eqn.params.items() if k in fields}
    weak_scalars = _on_python_floats(eqn)
    if weak_scalars:  # NumPy's rules, not Python's (see tracing.is_operator)
        b.namespace.update(_f64=np.float64, _py=python_scalar)
        operands = [f"_f64({o})" for o in operands]
    params["args"] = ", ".join(operands)
    text = impl.format(*operands, **params)
    return f"_py({text})" if weak_scalars else text


def _on_python_floats(eqn) -> bool:
    """Does this operator equation run on Python floats only (weak float scalars)?"""
    avals = [a.aval for a in eqn.inputs]
    return is_operator(eqn.prim) and any(a.dtype.kind == "f" for a in avals) and all(
        a.weak and a.shape == () and a.dtype.kind in "fi" for a in avals)


class NumpyEngine(Engine):
    """Runs generated Python source with ``xp = numpy``."""

    name = "numpy"

    def __init__(self, xp_module=np):
        self.xp = xp_module

    def generate(self, graph: Graph, fn_name: str) -> tuple[str, dict]:
        return generate_source(peephole.lower(graph), self.xp, fn_name, blocks=fusion.min_size())

    def compile(self, graph: Graph) -> Program:
        fn_name = f"program_{next(_compile_ids)}"
        source, namespace = self.generate(graph, fn_name)
        code = compile(source, f"<diffprog {self.name} {fn_name}>", "exec")
        exec(code, namespace)
        return Program(namespace[fn_name], source, self.name, graph)
