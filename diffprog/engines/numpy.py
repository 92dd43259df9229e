"""The embedded engine: a Graph becomes straight-line Python source over ``xp``.

One line per equation, using each primitive's source template, so the compiled
program has no per-op dispatch. Intermediates are deleted right after their last
use (peak memory). Constants and non-literal parameters are bound as names in the
program's namespace, never pasted as text: generated code contains only names we
made, numbers and our own templates.

A long program (``PARTS_FROM`` equations and more: an unrolled loop) is written in
*parts*, functions of a few hundred equations the program calls in turn. Parts are cut
where the equations themselves say (content-defined), so the steps of an unrolled loop
split alike and repeat: a repeated part is one function, written and compiled once, and
each piece of source is compiled on its own, so first-call time and memory grow linearly
with the program's length.
"""
from __future__ import annotations

import copy
import itertools
import math
import string
import weakref

import numpy as np

from ..ir import Graph, Lit, Var, gc_paused
from ..tracing import is_operator, python_scalar
from ..transforms.closed import Closed
from . import cscan, fusion, peephole
from .base import Engine, Program

_compile_ids = itertools.count()


def _is_safe_literal(v) -> bool:
    """Values whose repr we paste: ints, bools, None, finite floats, slices, tuples of them."""
    if type(v) is float:  # the common case, without a NumPy call
        return math.isfinite(v)
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


class CompiledScan:
    """A scan's impl with its compiled C loop in front (:mod:`diffprog.engines.cscan`):
    ``impl`` runs whenever the loop cannot (not built yet, an input of another type, a
    floating-point flag NumPy would report). A body with products or NumPy's own loops
    depends on its inputs' memory layouts: its C loop is made for the layouts of the
    inputs it is called with, one per layout seen (up to 8)."""

    def __init__(self, eqn, impl, rendered):
        self.eqn, self.impl, self.rendered = eqn, impl, rendered
        self.kernel = None if rendered.sensitive else cscan.scan_kernel(eqn, None, rendered)
        self.by_layout: dict = {}
        self.last = self.kernel  # the loop used by the latest call
        self.outer = Outer(self)

    @property
    def state(self) -> str:
        return self.last.state if self.last is not None else "compiling"

    def __call__(self, xp, *args, **params):
        kernel = self.kernel or self._for_layouts(args)
        self.last = kernel
        out = kernel(args)
        return out if out is not None else self.impl(xp, *args, **params)

    def _for_layouts(self, args):
        key = cscan.layout_key(args)
        kernel = self.by_layout.get(key)
        if kernel is None:
            if len(self.by_layout) < 8:
                kernel = cscan.scan_kernel(self.eqn, key, self.rendered)
            self.by_layout[key] = kernel = kernel or cscan.NO_KERNEL
        return kernel


class Outer:
    """Stands for a :class:`CompiledScan` in the bodies inside it (and in the cache key
    of their compiled code) without holding it: it holds the scan equation, whose body is
    a key of that weak cache, which a strong reference would keep alive for good."""

    __slots__ = ("ref", "__weakref__")

    def __init__(self, scan):
        self.ref = weakref.ref(scan)

    @property
    def state(self) -> str:
        scan = self.ref()
        return scan.state if scan is not None else "gone"


class NestedScan:
    """A scan inside the body of a scan that has a compiled loop (``outer``, its
    :class:`Outer`), which computes this one too: its own C loop is made only once the
    outer one turns out refused or failed (then the Python loop of the outer body calls
    this one), so a nested loop is not compiled for nothing."""

    def __init__(self, eqn, impl, outer):
        self.eqn, self.impl, self.outer = eqn, impl, outer
        self.compiled = None

    def __call__(self, xp, *args, **params):
        compiled = self.compiled
        if compiled is None:
            state = self.outer.state
            if state == "compiling" or state.startswith("ready"):
                return self.impl(xp, *args, **params)
            rendered = cscan.rendered(self.eqn)
            compiled = self.compiled = self.impl if rendered is None else \
                CompiledScan(self.eqn, self.impl, rendered)
        return compiled(xp, *args, **params)


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


def compiled_body(closed: Closed, xp_module, placement: Placement | None = None,
                  outer=None) -> CompiledBody:
    """``closed`` compiled as a function over ``xp_module`` (NumPy bodies get the numpy
    engine's cheaper small-array spellings, as its programs do). ``outer``: the
    :class:`Outer` of the compiled loop (cscan) of the scan whose body this is, which
    computes the scans inside it too (they wait for it: :class:`NestedScan`)."""
    placement = placement or placement_for(xp_module)
    compiled = _BODIES.setdefault(closed, {})
    hit = compiled.get((xp_module, placement, outer))
    if hit is None:
        if xp_module is np and placement is HOST:
            source, namespace = generate_source(peephole.lower(closed.graph), xp_module, "body",
                                                host_fast=True, outer=outer)
        else:
            source, namespace = generate_source(closed.graph, xp_module, "body",
                                                placement=placement)
        compile_pieces(source, "<diffprog body>", namespace)
        hit = compiled[(xp_module, placement, outer)] = CompiledBody(namespace["body"], closed)
    return hit


def generate_source(graph: Graph, xp_module, fn_name="program", *, placement: Placement = HOST,
                    fuse=None, blocks: int = 0, host_fast: bool = False,
                    outer=None, fast_math: bool = False) -> tuple[str, dict]:
    """Python source of ``graph`` over ``xp_module``, and the namespace to exec it in.

    ``fuse``: a decorator (``cupy.fuse``) applied to each run of two or more consecutive
    elementwise equations, emitted as its own function so the run becomes one kernel.
    ``blocks``: (NumPy only) elementwise runs over arrays of at least this many elements
    become blocked multi-threaded kernels (:mod:`diffprog.engines.fusion`); 0: off.
    ``host_fast`` (implied by ``blocks``): NumPy-only spellings with less call overhead
    (see ``_HOST_FAST``). ``outer``: see :func:`compiled_body`.
    ``fast_math``: the blocks' compiled C twins call libmvec's vector functions, within
    :data:`~diffprog.engines.ckernel.ULP_BOUND` ulp of NumPy (see ckernel's fast math).
    """
    blocked = blocks > 0 and fuse is None
    if blocked and fusion.all_small_and_pure(graph, blocks):
        blocked = False  # nothing to sink, nothing to fuse: each equation alone, as below
        segments = [[i] for i in range(len(graph.eqns))]
    elif blocked:
        graph = fusion.gather_runs(fusion.sink_small_work(graph, blocks), blocks)
        segments = fusion.block_segments(graph, blocks)
    else:
        segments = _segments(graph, fuse is not None)
    writer = ProgramWriter(graph, xp_module, placement, host_fast=blocks > 0 or host_fast,
                           outer=outer, fast_math=fast_math)
    helpers: list[list[str]] = []  # functions defined before the program: fused runs, kernels

    def lines_of(segments) -> list[str]:
        body: list[str] = []
        for segment in segments:
            if len(segment) == 1:
                body += writer.equation(segment[0])
                continue
            run = fusion.BlockKernel(writer, segment, len(helpers)) if blocked \
                else FusedRun(writer, segment, len(helpers), fuse)
            call = run.write()
            if call is not None:  # else nothing downstream reads the run (dead code)
                helpers.append(run.definition)
                body += call
        return body

    if len(graph.eqns) < PARTS_FROM:
        body = lines_of(segments)
        parts: list[str] = []
    else:  # a long program: its body in parts, each distinct part compiled once
        body, parts = [], []
        known: dict[str, str] = {}  # part text -> its function's name
        seen: dict[tuple, str] = {}  # part fingerprint -> its function's name
        for group in _part_groups(graph, segments):
            first, last = group[0][0], group[-1][-1]
            printed = writer.fingerprint(group, first, last)
            name = seen.get(printed[0]) if printed is not None else None
            if name is not None and not CHECK_REUSED_PARTS:
                call = writer.call_part(printed[1], first, last)  # the text is known
            else:
                writer.open_part()
                lines = lines_of(group)
                text, call = writer.close_part(lines, first, last)
                if name is not None:  # (tests: a reused part is the text written anew)
                    assert parts[int(name[5:])] == f"def {name}{text}\n", (name, text)
                name = known.get(text)
                if name is None:
                    name = known[text] = f"_part{len(known)}"
                    parts.append(f"def {name}{text}\n")
                if printed is not None:
                    seen[printed[0]] = name
            body += [line.replace("_part(", f"{name}(", 1) if i == 0 else line
                     for i, line in enumerate(call)]
    pieces = ["".join(line + "\n" for line in helper) + "\n" for helper in helpers] + parts
    pieces.append("\n".join(writer.function(fn_name, body)) + "\n")
    return GeneratedSource(pieces), writer.bound.namespace


#: the prefix of a part's own values: not "t" (a fused block kernel names its loop's values
#: t0, t1... and takes scalar operands under their outer names, so a part's t0 passed in
#: was read as the kernel's own t0), nor any other prefix the kernels use inside
PART_LOCAL = "w"
#: programs of this many equations and more are written in parts (see _part_groups)
PARTS_FROM = 1000
#: tests: write every part whose fingerprint was seen, and check it is the known text
CHECK_REUSED_PARTS = False
#: a part ends after at least PART_MIN equations where the program's recent entries hash to
#: a boundary, and after PART_MAX equations at the latest (840 = lcm(1..8): loop bodies of
#: up to 8 equations repeat at the same offsets in every part)
PART_MIN, PART_MAX, PART_SPACING = 96, 840, 8


class GeneratedSource(str):
    """A program's source text; ``pieces``: its top-level definitions, each compiled on
    its own (a long program's parts: memory and time stay linear in its length)."""

    pieces: list

    def __new__(cls, pieces: list):
        text = super().__new__(cls, "".join(pieces))
        text.pieces = pieces
        return text


def compile_pieces(source: str, filename: str, namespace: dict) -> None:
    """Compile and run ``source`` in ``namespace`` one piece at a time."""
    for piece in getattr(source, "pieces", None) or [source]:
        exec(compile(piece, filename, "exec"), namespace)


def _part_groups(graph: Graph, segments: list) -> list[list]:
    """The segments of a long program in groups of about PART_MIN..PART_MAX equations,
    each written as a function of its own (a *part*).

    Where a group ends depends on the equations there only (content-defined chunking):
    after PART_MIN equations, at the first equation whose entries, with those of the two
    before it, hash to a boundary. An unrolled loop then splits at the same places in
    every step, so its parts repeat: written with names of their own (parameters and
    locals numbered in order), repeated parts are the same text, compiled once."""
    codes: dict = {}
    defined_at: dict[int, int] = {}
    groups, group, size = [], [], 0
    c1 = c2 = 0
    for segment in segments:
        group.append(segment)
        size += len(segment)
        index = segment[-1]
        eqn = graph.eqns[index]
        code = codes.get(eqn.prim)
        if code is None:
            code = codes[eqn.prim] = len(codes) + 1
        code = code * 8 + len(eqn.inputs)
        for a in eqn.inputs:  # a constant, the previous equation's value, a recent one, older
            at = defined_at.get(id(a), -99) if a.__class__ is Var else None
            code = code * 4 + (0 if at is None else 1 if at == index - 1 else
                               2 if at >= index - 8 else 3)
        for o in eqn.outputs:
            defined_at[id(o)] = index
        boundary = (((c2 * 31 + c1) * 31 + code) * 2654435761 >> 7) % PART_SPACING == 0
        c2, c1 = c1, code
        if size >= PART_MAX or size >= PART_MIN and boundary:
            groups.append(group)
            group, size = [], 0
    if group:
        groups.append(group)
    return groups


class _Part:
    """The function a part of a long program is written as: its values' local names
    (``t0``...), its parameters (``p0``... values, ``_p0``... constants: numbers and bound
    values) numbered in order of first use, and what the program passes for them."""

    __slots__ = ("local", "defined", "params", "args", "by_key")

    def __init__(self):
        self.local: dict[int, str] = {}
        self.defined: list = []
        self.params: list[str] = []
        self.args: list[str] = []
        self.by_key: dict = {}

    def param(self, key, text: str, prefix: str) -> str:
        name = self.by_key.get(key)
        if name is None:
            name = self.by_key[key] = f"{prefix}{len(self.params)}"
            self.params.append(name)
            self.args.append(text)
        return name


REUSE_MIN = 16384  # elements (128 KiB of float64): smaller arrays come from malloc's caches
_REUSABLE_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
_NO_ALIAS = {"matmul", "reduce_sum", "reduce_max", "reduce_min", "reduce_prod"}


def reusable_inputs(graph: Graph, last_use: dict, kept: set) -> dict:
    """``{equation index: input}`` for each elementwise equation on big real arrays
    (``REUSE_MIN`` elements or more) that may write its result into an input dying there:
    ``v1 = xp.tanh(v0, out=v0)``, not a fresh array.

    Why: a fresh array of 128 KiB or more is a new ``mmap`` that the OS zero-fills page by
    page once glibc has trimmed its heap (it trims what was freed at the end of the last
    call); on W2's gradient that cost more than the ``tanh`` itself. The result is the same
    ufunc loop on the same values (NumPy handles an output that is exactly an input).

    An input qualifies when nothing else can see its memory: a value the program made
    (never an argument, constant or result), by an elementwise ufunc or a product (fresh
    arrays, or a block kernel's results), read until now only by equations that make no
    views of it (elementwise ones, products, reductions), of the result's shape and dtype
    (float64/float32: NumPy's complex loops are not always the same in place)."""
    fresh: set = set()   # ids of values made as new arrays, with no view of them made since
    reuse: dict = {}
    for idx, eqn in enumerate(graph.eqns):
        prim = eqn.prim
        ufunc = prim.elementwise and len(eqn.outputs) == 1 and prim.name != "where" \
            and prim.as_ufunc(eqn.params) is not None
        if ufunc:
            out = eqn.outputs[0].aval
            if out.dtype in _REUSABLE_DTYPES and len(out.shape) >= 1 and math.prod(out.shape) >= REUSE_MIN:
                for a in eqn.inputs:
                    if a.__class__ is Var and id(a) in fresh and last_use.get(id(a)) == idx \
                            and id(a) not in kept and a.aval.shape == out.shape \
                            and a.aval.dtype == out.dtype:
                        reuse[idx] = a
                        break
        elif prim.name not in _NO_ALIAS:  # it may make a view of what it reads
            fresh.difference_update(id(a) for a in eqn.inputs if a.__class__ is Var)
        if ufunc or prim.name == "matmul":
            fresh.update(id(o) for o in eqn.outputs)
    return reuse


def copies_if_needed(graph: Graph, outputs: set) -> frozenset:
    """Indices of the ``copy`` equations whose value is read only by equations that make
    new arrays of it (ufuncs, products, reductions) and is not a result: those copy only
    when the array is not laid out as the copy would be (:func:`_as_laid_out`). Why: a
    copy of an already contiguous argument changes no bit, and a fresh array of 128 KiB
    or more costs page faults (0.6 ms for 1.6 MB); a view or a result of it must not
    share the caller's memory, so those copy always."""
    copies = {id(e.outputs[0]): k for k, e in enumerate(graph.eqns) if e.prim.name == "copy"}
    if not copies:
        return frozenset()
    always = {v for v in copies if v in outputs}  # (ids)
    for e in graph.eqns:
        makes_new = (e.prim.elementwise and e.prim.as_ufunc(e.params) is not None) \
            or e.prim.name in _NO_ALIAS
        if not makes_new:
            always.update(id(a) for a in e.inputs if a.__class__ is Var and id(a) in copies)
    return frozenset(k for v, k in copies.items() if v not in always)


def _as_laid_out(x, order: str):
    """``x`` when NumPy's copy of it in ``order`` would be laid out as x already is (the
    same bits follow from either), else that copy."""
    flags = x.flags
    if flags.c_contiguous if order == "C" else flags.f_contiguous if order == "F" \
            else (flags.c_contiguous or flags.f_contiguous):
        return x
    return np.array(x, copy=True, order=order)


def _into_if_c_ordered(target, *others):
    """``target`` when NumPy would lay out a ufunc's result of ``target`` and ``others``
    as ``target`` is laid out (all C-ordered), else None (``out=None``: a fresh array)."""
    if target.flags.c_contiguous and all(fusion.c_ordered(o) for o in others):
        return target
    return None


class ProgramWriter:
    """Writes one graph as a Python function over ``xp``: names its values (``a0``...
    inputs, ``v0``... the rest), binds its constants and functions into the namespace
    (never pasted as text), spells each equation and frees values after their last use.
    Fused runs and block kernels write their parts through it."""

    def __init__(self, graph: Graph, xp_module, placement: Placement = HOST, host_fast=False,
                 outer=None, fast_math=False):
        self.graph = graph
        self.outer = outer  # the compiled loop computing this body's scans, if any
        self.bound = SourceBuilder(xp_module)
        self.placement = placement
        self.host_fast = host_fast
        self.fast_math = fast_math  # block kernels' C twins may call libmvec (ckernel)
        self.names = {id(v): f"a{i}" for i, v in enumerate(graph.invars)}
        self._values = itertools.count()
        self._constants: dict = {}
        self._literals: dict = {}
        self.last_use = _last_uses(graph)
        self.output_ids = {id(v) for v in graph.outvars if isinstance(v, Var)}
        self.input_ids = {id(v) for v in graph.invars}
        self._kept = self.output_ids | self.input_ids  # never deleted
        self.part: _Part | None = None  # the part of a long program being written
        self._params_keys: dict = {}  # id(params) -> _params_fingerprint(params)
        self._var_by_id = {id(v): v for v in graph.invars}
        # equation index -> the dying input its result is written into (see reusable_inputs)
        self.reuse = reusable_inputs(graph, self.last_use, self._kept) \
            if host_fast and xp_module is np and len(graph.eqns) < PARTS_FROM else {}
        self.copies_if_needed = copies_if_needed(graph, self.output_ids) \
            if xp_module is np else frozenset()

    # ------------------------------------------------------------ names

    def operand(self, atom, as_array=False) -> str:
        """The text of an operand: a value's name, a number, or a bound constant."""
        if atom.__class__ is Var:
            text = self.name(atom)
            return f"xp.asarray({text})" if as_array and atom.aval.weak else text
        if not as_array:
            text = self._literals.get(id(atom))  # (Lits live as long as the graph)
            if text is None:
                text = self._literals[id(atom)] = self._literal(atom, False)
        else:
            text = self._literal(atom, True)
        if self.part is not None:  # a constant (a number, a bound value): a parameter, so
            return self.part.param(text, text, "_p")  # parts differing in one are one text
        return text

    def name(self, var) -> str:
        """The name of a defined value (in a part: its local name, or a parameter)."""
        part = self.part
        if part is None:
            return self.names[id(var)]
        text = part.local.get(id(var))
        return text if text is not None else part.param(id(var), self.names[id(var)], "p")

    def open_part(self) -> None:
        self.part = _Part()

    def close_part(self, lines: list[str], first: int, last: int) -> tuple[str, list[str]]:
        """The part of equations ``first..last`` written as ``lines``: its function's text
        after its name, ``(params):`` and the body, and the program's lines calling it
        (``_part(`` names the function there) and deleting values last used in it."""
        part, self.part = self.part, None
        exports = [v for v in part.defined if self.needed_after(v, last)]
        results = ", ".join(part.local[id(v)] for v in exports)
        text = "\n".join([f"({', '.join(part.params)}):"] + ["    " + line for line in lines]
                         + ([f"    return {results}"] if exports else [])) + "\n"
        return text, self.call_part(part, first, last)

    def call_part(self, part: "_Part", first: int, last: int) -> list[str]:
        """The program's lines calling a part (``_part(`` names its function) and deleting
        the values last used in it."""
        exports = [v for v in part.defined if self.needed_after(v, last)]
        call = f"_part({', '.join(part.args)})"
        if exports:
            call = ", ".join(self.define(v) for v in exports) + " = " + call
        used = [v for v in map(self._var_by_id.get, part.by_key) if v is not None]
        dead = self.freed(used, first, last)
        return [call] + (["del " + ", ".join(dead)] if dead else [])

    def fingerprint(self, segments: list, first: int, last: int):
        """``(key, part)`` for the part of equations ``first..last``, or None: equal keys
        are parts written as the same text, so a part seen before is not written again.

        The key holds what the text is made of, in the order it is written: each
        equation's entry and params, each operand as the part names it (a local, or a
        parameter numbered by first use: values by variable, constants by their text)
        with its aval (by identity for variables: they share aval objects), and where each
        result dies in the part or that it leaves it. ``part`` has the parameters and
        locals the text would have (what the program's call line needs). Parts of single
        equations only, on the host (no fused runs, no kernels, no device arrays), no
        loop with a compiled C twin (bound per equation)."""
        if self.placement.scalars_as_arrays:
            return None
        part = _Part()
        eqns, names, literals = self.graph.eqns, self.names, self._literals
        last_use, keep = self.last_use, self._kept
        params_keys = self._params_keys
        key: list = []
        for segment in segments:
            if len(segment) != 1:
                return None
            eqn = eqns[segment[0]]
            prim = eqn.prim
            if prim.name == "scan":
                return None
            key.append(prim)
            if eqn.params:
                pk = params_keys.get(id(eqn.params))
                if pk is None:
                    pk = params_keys[id(eqn.params)] = _params_fingerprint(eqn.params)
                key.append(pk)
            else:
                key.append(None)
            for a in eqn.inputs:
                if a.__class__ is Var:
                    text = part.local.get(id(a))
                    key.append(text if text is not None else
                               part.param(id(a), names[id(a)], "p"))
                    key.append(id(a.aval))
                else:
                    text = literals.get(id(a))
                    if text is None:
                        text = literals[id(a)] = self._literal(a, False)
                    key.append(part.param(text, text, "_p"))
                    key.append(a.aval)
            key.append(len(eqn.outputs))
            for o in eqn.outputs:
                part.local[id(o)] = f"{PART_LOCAL}{len(part.defined)}"
                part.defined.append(o)
                use = last_use.get(id(o), -1)
                key.append("out" if id(o) in keep or use > last else use - first)
        return tuple(key), part

    def _literal(self, atom, as_array: bool) -> str:
        v = atom.value
        if isinstance(v, (int, float, bool)) and not isinstance(v, np.generic) and _is_safe_literal(v):
            if not as_array:
                return repr(v)
            key = ("scalar", type(v), v)
            if key not in self._constants:
                self._constants[key] = self.bound.bind_value(self.placement.constant(np.asarray(v)))
            return self._constants[key]
        if id(v) not in self._constants:
            self._constants[id(v)] = self.bound.bind_value(self.placement.constant(v))
        return self._constants[id(v)]

    def operands(self, eqn) -> list[str]:
        as_array = self.placement.scalars_as_arrays and _needs_arrays(eqn)
        return [self.operand(a, as_array) for a in eqn.inputs]

    def define(self, var) -> str:
        """A new name for ``var``, the value an equation defines."""
        part = self.part
        if part is not None:
            name = part.local[id(var)] = f"{PART_LOCAL}{len(part.defined)}"
            part.defined.append(var)
            self._var_by_id[id(var)] = var
            return name
        name = self.names[id(var)] = f"v{next(self._values)}"
        self._var_by_id[id(var)] = var
        return name

    def needed_after(self, var, index: int) -> bool:
        """Is ``var`` read after equation ``index`` (or returned)?"""
        return id(var) in self.output_ids or self.last_use.get(id(var), -1) > index

    def freed(self, atoms, first: int, last: int) -> list[str]:
        """Names of the values among ``atoms`` last used in equations ``first..last`` (not
        inputs or outputs of the program): deleted there, for peak memory."""
        part = self.part
        return [self.name(a) for a in _unique_vars(atoms)
                if first <= self.last_use.get(id(a), -1) <= last
                and id(a) not in self.output_ids and id(a) not in self.input_ids
                and (part is None or id(a) in part.local)]  # (a part's parameters stay)

    # ------------------------------------------------------------ equations

    def equation(self, index: int) -> list[str]:
        """The lines of equation ``index`` alone: its assignment, then what dies there."""
        eqn = self.graph.eqns[index]
        prim = eqn.prim
        impl = prim.impl
        reused = self.reuse.get(index) if self.reuse else None
        if index in self.copies_if_needed:
            self.bound.namespace["_as_laid_out"] = _as_laid_out
            line = f"{self.define(eqn.outputs[0])} = _as_laid_out({self.operands(eqn)[0]}, " \
                   f"{eqn.params['order']!r})"
        elif reused is not None:  # (host arrays of REUSE_MIN elements or more only: none of
            # the checks below for Python-float operands and device placement can apply)
            ufunc, extra = prim.as_ufunc(eqn.params)
            operands = self.operands(eqn)
            args = operands + [repr(v) for v in extra]
            target = self.name(reused)
            others = [text for a, text in zip(eqn.inputs, operands)
                      if a is not reused and a.aval.shape != ()]
            if others:  # NumPy lays out a result of several arrays in C order unless all agree
                self.bound.namespace["_into"] = _into_if_c_ordered
                target = f"_into({target}, {', '.join(others)})"
            line = f"{self.define(eqn.outputs[0])} = xp.{ufunc.__name__}({', '.join(args)}, " \
                   f"out={target})"
        elif not eqn.params and impl.__class__ is str and not self.placement.scalars_as_arrays \
                and len(eqn.outputs) == 1 and not prim.multiple_results \
                and prim.name not in _HOST_FAST_ENTRIES and _positional_only(impl) \
                and (prim.operator is None or not _on_python_floats(eqn)):
            # the common case (what expression() and _template() write for it): the
            # entry's template filled with the operands' names and numbers
            part = self.part
            local = self.names if part is None else part.local
            operands = []
            for a in eqn.inputs:
                if a.__class__ is Var:
                    text = local.get(id(a))
                    operands.append(text if text is not None else self.name(a))
                else:
                    operands.append(self.operand(a))
            line = self.define(eqn.outputs[0]) + " = " + impl.format(*operands)
        else:
            rhs = self.expression(eqn, self.operands(eqn))
            line = assignment([self.define(o) for o in eqn.outputs], rhs, prim.multiple_results)
        dead = []  # self.freed(eqn.inputs, index, index), spelled out: the common case
        last_use, keep = self.last_use, self._kept
        names = self.names if self.part is None else self.part.local
        for a in eqn.inputs:
            if a.__class__ is Var and last_use[id(a)] == index and id(a) not in keep:
                name = names.get(id(a))  # (None: a part's parameter, which stays)
                if name is not None and name not in dead:
                    dead.append(name)
        return [line, "del " + ", ".join(dead)] if dead else [line]

    def expression(self, eqn, operands: list[str], host_fast: bool | None = None) -> str:
        """The right-hand side computing ``eqn`` from ``operands``."""
        host_fast = self.host_fast if host_fast is None else host_fast
        if host_fast and eqn.prim.name in _HOST_FAST_ENTRIES and \
                not any(a.aval.weak for a in eqn.inputs):
            fast = self._host_fast(eqn, operands)
            if fast is not None:
                return fast
        impl = eqn.prim.impl
        if callable(impl):
            return self._call(impl, eqn, operands)
        return self._template(impl, eqn, operands, _template_fields(impl))

    def _host_fast(self, eqn, operands):
        name, bound = eqn.prim.name, self.bound
        if name in _HOST_FAST:
            bound.namespace.update(_HOST_FAST_NAMES)
            return self._template(_HOST_FAST[name], eqn, operands,
                                  _template_fields(_HOST_FAST[name]))
        if name == "scatter_add" and len(eqn.inputs) == 1:
            fname = bound.bind_value(_scatter_static, "f")
            return f"{fname}({operands[0]}, {bound.param_text(tuple(eqn.params['shape']))}, " \
                   f"{bound.param_text(eqn.params['index'])})"
        return None

    def _call(self, impl, eqn, operands) -> str:
        """``impl(xp, *operands, **params)`` with the function and its params bound; a loop
        or branch body in the params is compiled here, with this program's settings. A
        scan over small values on the host also gets its compiled C loop (cscan.py): the
        bound function runs it, and ``impl`` when it cannot."""
        outer = self.outer
        if eqn.prim.name == "scan" and self.bound.namespace["xp"] is np:
            if outer is not None:
                impl = NestedScan(eqn, impl, outer)
            else:
                rendered = cscan.rendered(eqn)
                if rendered is not None:
                    impl = CompiledScan(eqn, impl, rendered)
                    outer = impl.outer
        fname = self.bound.bind_value(impl, "f")
        params = [f"{k}={self._param(v, outer)}" for k, v in eqn.params.items()]
        return f"{fname}(xp, {', '.join(operands + params)})"

    def _param(self, value, outer=None) -> str:
        if isinstance(value, Closed):
            return self.bound.bind_value(compiled_body(value, self.bound.namespace["xp"],
                                                       self.placement, outer), "k")
        return self.bound.param_text(value)

    def _template(self, template, eqn, operands, fields) -> str:
        params = {k: self.bound.param_text(v) for k, v in eqn.params.items() if k in fields} \
            if eqn.params else {}
        python_floats = eqn.prim.operator is not None and _on_python_floats(eqn)
        if python_floats:  # NumPy's rules, not Python's (see tracing.is_operator)
            self.bound.namespace.update(_f64=np.float64, _py=python_scalar)
            operands = [f"_f64({o})" for o in operands]
        if "args" in fields:
            params["args"] = ", ".join(operands)
        text = template.format(*operands, **params)
        return f"_py({text})" if python_floats else text

    # ------------------------------------------------------------ the function

    def function(self, fn_name: str, body: list[str]) -> list[str]:
        args = ", ".join(f"a{i}" for i in range(len(self.graph.invars)))
        results = self.results()
        return ([f"def {fn_name}({args}):"] + ["    " + line for line in body]
                + [f"    return ({', '.join(results)}{',' if len(results) == 1 else ''})"])

    def results(self) -> list[str]:
        """The returned values: never an argument itself, nor one value twice (a caller
        mutating one result must not change another or its input), never a constant the
        program keeps (callers may mutate what we return)."""
        texts, returned = [], set()
        for o in self.graph.outvars:
            text = self.operand(o)
            if isinstance(o, Var) and (id(o) in self.input_ids or id(o) in returned):
                self.bound.namespace["_fresh"] = _fresh_copy
                text = f"_fresh({text})"
            elif isinstance(o, Lit) and isinstance(o.value, np.ndarray) \
                    and self.bound.namespace.get("xp") is np:
                text = f"{text}.copy(order=\"K\")"  # (a zero gradient of an unused leaf: 0.25 us, not 0.34)
            elif isinstance(o, Lit) and (isinstance(o.value, np.ndarray) or
                                         self.placement.outputs_as_arrays and not o.aval.weak):
                text = f"xp.array({text}, copy=True)"
            elif self.placement.outputs_as_arrays and o.aval.weak:
                text = f"xp.asarray({text})"
            texts.append(text)
            if isinstance(o, Var):
                returned.add(id(o))
        return texts


def assignment(names: list[str], rhs: str, multiple: bool) -> str:
    """``a, b = rhs`` (``a, = rhs`` for one result of a multiple-result call; just ``rhs``
    for an effect without results, a guard)."""
    if not names:
        return rhs
    return ", ".join(names) + ("," if len(names) == 1 and multiple else "") + " = " + rhs


def _fresh_copy(value):
    """A copy of an array (NumPy or CuPy); scalars are immutable and pass as they are."""
    if isinstance(value, np.ndarray):
        return value.copy(order="K")  # laid out as the argument (F stays F)
    if hasattr(value, "__cuda_array_interface__"):
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


class FusedRun:
    """A run of elementwise equations as one helper function, decorated with ``fuse``
    (``cupy.fuse``), and the line calling it. Its parameters are the run's inputs from
    outside (values and bound constants: a fused kernel cannot read globals); it returns
    the values used after the run."""

    def __init__(self, writer: ProgramWriter, segment: list[int], index: int, fuse):
        self.writer, self.segment, self.fuse = writer, segment, fuse
        self.name = f"_fused{index}"
        self.definition: list[str] = []

    def write(self) -> list[str] | None:
        """The program's lines calling the run (None when nothing reads its results);
        its function's lines go to ``definition``."""
        writer, eqns = self.writer, [self.writer.graph.eqns[i] for i in self.segment]
        inside: set = set()
        params: list[str] = []
        lines: list[str] = []
        for eqn in eqns:
            ops = writer.operands(eqn)
            for atom, text in zip(eqn.inputs, ops):
                external = isinstance(atom, Lit) and text.startswith("_") or \
                    isinstance(atom, Var) and id(atom) not in inside
                if external and text not in params:
                    params.append(text)
            outs = [writer.define(o) for o in eqn.outputs]
            inside.update(id(o) for o in eqn.outputs)
            lines.append(assignment(outs, writer.expression(eqn, ops, host_fast=False), False))
        last = self.segment[-1]
        exports = [writer.name(o) for eqn in eqns for o in eqn.outputs
                   if writer.needed_after(o, last)]
        if not exports:
            return None
        writer.bound.namespace["_fuse"] = self.fuse
        self.definition = ([f"def {self.name}({', '.join(params)}):"] + ["    " + line for line in lines]
                           + [f"    return {', '.join(exports)}", f"{self.name} = _fuse({self.name})"])
        consumed = [a for eqn in eqns for a in eqn.inputs if isinstance(a, Var) and id(a) not in inside]
        dead = writer.freed(consumed, self.segment[0], last)
        call = f"{', '.join(exports)} = {self.name}({', '.join(params)})"
        return [call] + (["del " + ", ".join(dead)] if dead else [])


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


#: entries with a host-fast spelling of their own (_HOST_FAST, or _host_fast's scatter_add)
_HOST_FAST_ENTRIES = frozenset(_HOST_FAST) | {"scatter_add"}

_HOST_FAST_NAMES = {"_add_reduce": np.add.reduce, "_max_reduce": np.maximum.reduce,
                    "_min_reduce": np.minimum.reduce, "_reshape": _reshape,
                    "_transpose": _transpose}


def _scatter_static(g, shape, index):
    """scatter_add with a static index (the VJP of basic slicing): zeros, then one store."""
    out = np.zeros(shape, dtype=g.dtype if hasattr(g, "dtype") else np.result_type(g))
    out[index] = g
    return out


_TEMPLATE_FIELDS: dict = {}


def _template_fields(template: str) -> set:
    """The replacement fields of an impl template (parsed once per template)."""
    fields = _TEMPLATE_FIELDS.get(template)
    if fields is None:
        fields = _TEMPLATE_FIELDS[template] = frozenset(
            f for _, f, _, _ in string.Formatter().parse(template) if f is not None)
    return fields


def _params_fingerprint(params: dict):
    """Params as a part's fingerprint holds them: by value when plain (their text is the
    same, or names bound to equal values), else by identity (the dict lives as long as
    its equation)."""
    from ..transforms.templates import plain_key
    key = plain_key(params)
    return key if key is not None else ("id", id(params))


_POSITIONAL: dict = {}


def _positional_only(template: str) -> bool:
    """Are the template's fields all operand positions ({0}, {1}, ...)?"""
    known = _POSITIONAL.get(template)
    if known is None:
        known = _POSITIONAL[template] = all(f.isdigit() for f in _template_fields(template))
    return known


def _on_python_floats(eqn) -> bool:
    """Does this operator equation run on Python floats only (weak float scalars)?"""
    if not is_operator(eqn.prim):
        return False
    floats = False
    for a in eqn.inputs:
        aval = a.aval
        if not aval.weak or aval.shape != ():
            return False
        kind = aval.dtype.kind
        if kind == "f":
            floats = True
        elif kind != "i":
            return False
    return floats


class NumpyEngine(Engine):
    """Runs generated Python source with ``xp = numpy``. Its fast-math twin
    (:meth:`with_fast_math`) gives fused blocks compiled C twins that call libmvec."""

    name = "numpy"

    def __init__(self, xp_module=np, fast_math: bool = False):
        self.xp = xp_module
        self.fast_math = fast_math
        self._fast_twin = self if fast_math else None

    def with_fast_math(self) -> "NumpyEngine":
        if self._fast_twin is None:
            twin = copy.copy(self)
            twin.fast_math, twin._fast_twin = True, twin
            self._fast_twin = twin
        return self._fast_twin

    def generate(self, graph: Graph, fn_name: str) -> tuple[str, dict]:
        return generate_source(peephole.lower(graph), self.xp, fn_name, blocks=fusion.min_size(),
                               fast_math=self.fast_math)

    def compile(self, graph: Graph) -> Program:
        fn_name = f"program_{next(_compile_ids)}"
        with gc_paused():
            source, namespace = self.generate(graph, fn_name)
            compile_pieces(source, f"<diffprog {self.name} {fn_name}>", namespace)
        return Program(namespace[fn_name], str(source), self.name, graph, self.fast_math)
