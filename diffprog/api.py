"""The public transformations: differentiable, grad, value_and_grad, vjp, jvp,
jacobian, hessian.

Each call flattens its arguments, looks up a compiled program for their signature
(tree structure, shapes, dtypes, static values, engine, kind) and runs it. Called on
traced values (inside another traced function) the same transformations record into
the enclosing trace instead, so they nest: ``dp.grad(dp.grad(f))``, or derivatives
inside a physics-informed loss.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
import sys
import threading
import types
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from . import engines as _engines
from .errors import (ArgumentError, ArgumentValueError, ConcretizationError, DiffprogError,
                     DiffprogWarning,
                     NotDifferentiableError, ShapeError)
from .primitives.control import GuardFailed
from .display import Source
from .randomness import RandomWatch
from .ir import Aval, Graph, Lit, gc_paused
from . import externals
from .tracing import (_TRACE_STACK, Tracer, eval_graph, refuse_array_subclass,
                      trace_function, trace_stack,
                      tracing_active)
from .transforms import jvp_graph, simplify, vjp_graph
from .transforms.closed import bodies
from .transforms.partial_eval import split_known
from .leaves import is_dynamic
from .tree import TreeDef, dict_orders, flatten, leaf_paths, unflatten

def _leaf_key(leaf, gpu: int | None):
    if type(leaf) is float or type(leaf) is complex:
        # Python's own numbers are weakly typed; NumPy scalars (np.float64 subclasses
        # float, np.complex128 complex) are strong and keyed by dtype below: float32 * 2.0
        # is float32, float32 * np.float64(2.0) float64, so they cannot share a program
        return type(leaf)
    if isinstance(leaf, Tracer):
        return (leaf.shape, leaf.dtype, leaf.aval.weak)
    if gpu is not None:  # a program's constants live on one GPU: one program per GPU
        return (type(leaf), leaf.shape, leaf.dtype, gpu)
    return (type(leaf), leaf.shape, leaf.dtype)


def _static_key(leaf, where: Callable[[], str]):  # noqa: C901
    """Static values are cache keys by value: an equal value reuses the program, a new
    one retraces. A value without a hash cannot be compared that way (keying it by id()
    reused stale programs for new objects at recycled addresses): refused."""
    try:
        hash(leaf)
    except TypeError:
        raise ArgumentError(
            f"{where()} is a static (non-traced) value of type {type(leaf).__name__}, which is "
            f"not hashable, so diffprog cannot tell whether a later call passes the same value. "
            f"Fix: pass arrays as traced arguments (not in static_argnums), make the value "
            f"hashable (a tuple instead of a list, a frozen dataclass), or close over it.") \
            from None
    if isinstance(leaf, (float, complex, np.generic, tuple, frozenset)):
        return externals.value_key(leaf)  # bitwise: 0.0 and -0.0 differ, NaN equals NaN
    return (type(leaf), leaf)


def _check_array_leaf(leaf, where: Callable[[], str]) -> None:
    """Refuse array inputs that diffprog would compute with as if they were something
    else: masked arrays (the mask would be ignored), np.matrix (``*`` is a matrix
    product there), other ndarray subclasses, and dtypes that are not numbers."""
    refuse_array_subclass(leaf, where)
    dtype = getattr(leaf, "dtype", None)
    try:
        kind = np.dtype(dtype).kind if dtype is not None else "f"
    except TypeError:  # a foreign dtype object (torch, jax): not one NumPy knows
        raise ArgumentError(
            f"{where()} is a {type(leaf).__module__}.{type(leaf).__qualname__} with dtype "
            f"{dtype!r}, which NumPy does not know. Fix: convert it to a NumPy array first "
            f"(np.asarray(x), or x.numpy() / x.cpu().numpy()).") from None
    if kind not in "biufc":
        raise ArgumentError(
            f"{where()} has dtype {dtype}; diffprog traces arrays of booleans, integers and "
            f"floating-point numbers. Fix: convert it (x.astype(float)), or pass it as a "
            f"static argument if it is not numeric data.")


@dataclass
class Signature:
    """How one call's arguments split into traced leaves and static values."""

    treedef: TreeDef
    leaves: list
    dynamic: list  # positions (in leaves) of traced leaves
    key: tuple
    nested: bool  # some leaf is a Tracer: record into the enclosing trace
    gpu: int | None = None  # the GPU of the first CuPy array leaf (see _engine_name)
    orders: tuple = ()  # each dict argument's key order (the function sees the caller's)

    def build_args(self, dyn_values):
        leaves = list(self.leaves)
        for pos, v in zip(self.dynamic, dyn_values):
            leaves[pos] = v
        return unflatten(self.treedef, leaves, self.orders)

    @property
    def dyn_leaves(self):
        return [self.leaves[p] for p in self.dynamic]


def make_signature(args: tuple, static_argnums: tuple = ()) -> Signature:
    leaves, treedef = flatten(tuple(a for i, a in enumerate(args)))
    static_leaf_pos = _static_positions(treedef, static_argnums) if static_argnums else set()
    dynamic, keys, nested, first_gpu = [], [], False, None
    for i, leaf in enumerate(leaves):
        if i not in static_leaf_pos and is_dynamic(leaf):
            if isinstance(leaf, (float, complex)) and type(leaf) not in (float, complex) and \
                    not isinstance(leaf, np.generic):
                # a float (complex) subclass: the number it holds
                leaf = leaves[i] = (complex if isinstance(leaf, complex) else float)(leaf)
            if type(leaf) is np.ndarray:
                if leaf.dtype.kind not in "biufc":
                    _check_array_leaf(leaf, lambda: f"args{leaf_paths(treedef)[i]}")
            elif not isinstance(leaf, (float, complex, Tracer)):
                _check_array_leaf(leaf, lambda: f"args{leaf_paths(treedef)[i]}")
            dynamic.append(i)
            gpu = _gpu_id(leaf)
            keys.append(_leaf_key(leaf, gpu))
            nested = nested or isinstance(leaf, Tracer)
            first_gpu = gpu if first_gpu is None else first_gpu
        else:
            keys.append(_static_key(leaf, lambda: f"args{leaf_paths(treedef)[i]}"))
    # Inside an enclosing trace the function may close over traced values even when its
    # arguments are plain: record into that trace rather than compiling a program.
    nested = nested or tracing_active()
    orders = dict_orders(args) if _has_dict(treedef) else ()
    return Signature(treedef, leaves, dynamic, (treedef, tuple(keys), orders), nested, first_gpu,
                     orders)


def _has_dict(treedef: TreeDef) -> bool:
    return treedef.kind == "dict" or any(_has_dict(c) for c in treedef.children)


def _static_positions(treedef: TreeDef, static_argnums) -> set:
    n = len(treedef.children)
    for i in static_argnums:
        if not -n <= i < n:
            raise ArgumentValueError(
                f"static_argnums={tuple(static_argnums)!r} is out of range: the function was "
                f"called with {n} positional argument(s). Fix: use positions between 0 and "
                f"{n - 1}.")
    static_argnums = {i % n for i in static_argnums}
    out, start = set(), 0
    for i, child in enumerate(treedef.children):
        n = child.num_leaves
        if i in static_argnums:
            out.update(range(start, start + n))
        start += n
    return out


def _arg_leaf_ranges(treedef: TreeDef) -> list[range]:
    ranges, start = [], 0
    for child in treedef.children:
        ranges.append(range(start, start + child.num_leaves))
        start += child.num_leaves
    return ranges


# =========================================================================== tracing

@dataclass
class Traced:
    graph: Graph
    out_tree: TreeDef
    captured: list  # outer tracers, bound to the graph's trailing inputs
    guarded: bool = False  # holds guards: valid only for inputs that pass them
    drew: list = field(default_factory=list)  # random generators the trace drew from
    writes: list = field(default_factory=list)  # globals/nonlocals the function assigns
    # reads the lifted globals/closure values (inputs after the explicit ones) at call
    # time and checks the guarded ones; None when the function reads none
    externals: Any = None
    #: explicit inputs whose shape/dtype the code looked at (checked on the fast path)
    inspected: frozenset = frozenset()

    def external_values(self, leaves, check: bool = True) -> list:
        return self.externals(leaves, check) if self.externals is not None else []

    @property
    def reusable(self) -> bool:
        """May a later call reuse this trace's program without checks? Not when it holds
        guards (checked per call) or random draws (frozen into it: traced per call)."""
        return not self.guarded and not self.drew and not self.writes

    @property
    def per_call(self) -> bool:
        """Effects a compiled program would not repeat (random draws, assignments to
        globals or nonlocals): the function is traced, so run, anew at every call."""
        return bool(self.drew or self.writes)


def trace_call(fn: Callable, sig: Signature) -> Traced:
    """Trace ``fn`` for this call. A root call (not nested in another trace) also reads
    the arrays and floats ``fn`` takes from its globals, closures and objects as program
    inputs, and guards the other values it reads (diffprog.externals); if tracing with
    those inputs fails (code that needs them as plain values), it traces again guarding
    them instead."""
    no_lift = _kept_plain(fn)
    for _ in range(8):  # a value that must stay plain is found per failed trace
        reads: list = []
        try:
            traced = _trace_call(fn, sig, True, reads, no_lift)
            _remember_plain(fn, no_lift)
            return traced
        except Exception as e:
            if sig.nested or not any(r.lifted for r in reads):
                raise
            culprit = reads[0].path_of(getattr(e, "tracer", None))
            if culprit is None:
                break
            no_lift = no_lift | culprit
    try:  # guard every value instead of lifting any
        return _trace_call(fn, sig, False, [])
    except Exception:
        pass
    return _trace_call(fn, sig, True, [], no_lift)  # raises the lifted trace's error


_PLAIN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _kept_plain(fn) -> frozenset:
    """Paths of values an earlier trace of ``fn`` found must stay plain (guarded)."""
    try:
        return _PLAIN.get(fn, frozenset())
    except TypeError:
        return frozenset()


def _remember_plain(fn, paths: frozenset) -> None:
    if paths:
        try:
            _PLAIN[fn] = paths
        except TypeError:  # not weak-referenceable: found again on the next trace
            pass


def _trace_call(fn: Callable, sig: Signature, lift: bool, reads: list,
                no_lift: frozenset = frozenset()) -> Traced:
    watch = RandomWatch(fn, sig.leaves)
    patched: dict = {}

    def prepare(trace, fn):
        if sig.nested:  # reads are lifted into the root trace (captured from there)
            return externals.for_nested_call(fn, trace_stack())
        root = trace.externals = externals.ExternalReads(trace, lift, watch, no_lift)
        reads.append(root)
        paths = leaf_paths(sig.treedef)
        dynamic = set(sig.dynamic)
        for pos, leaf in enumerate(sig.leaves):
            if pos not in dynamic and _holds_state(leaf):
                patched[pos] = root.read(leaf, externals.Path(("leaf", pos),
                                                              where=f"args{paths[pos]}"))
        return root.root_function(fn)

    def build_args(tracers):
        leaves = list(sig.leaves)
        for pos, v in zip(sig.dynamic, tracers):
            leaves[pos] = v
        for pos, v in patched.items():
            leaves[pos] = v
        return unflatten(sig.treedef, leaves, sig.orders)

    try:
        graph, out_tree, trace = trace_function(fn, sig.dyn_leaves, build_args,
                                                prepare=prepare)
    except ConcretizationError as e:
        hint = _list_argument_hint(sig)
        if hint is None:
            raise
        raise ConcretizationError(f"{e}\n{hint}") from None
    drew = watch.drawn()
    if drew and threading.active_count() > 1 and reads and not externals.may_draw(reads[0]):
        # only process-wide generators moved, other threads run, and nothing in the code
        # names a draw: those threads drew (Dask's size sampling, say), not this function
        drew = [d for d in drew if d not in watch.shared_names]
    _refuse_draws_in_bodies(watch.drawn_in_bodies())
    graph = simplify(graph)
    root = reads[0] if reads else None
    inspected = _inspected_inputs(trace, len(sig.dynamic))
    return Traced(graph, out_tree, [o for o, _ in trace.captured],
                  _has_guards(graph), drew=drew, writes=list(root.impure) if root else [],
                  externals=root.reader(sig.leaves) if root else None, inspected=inspected)


def _inspected_inputs(trace, n: int) -> frozenset:
    """The explicit inputs whose shape or dtype the traced code relied on: the values it
    looked at (Tracer.shape/dtype/ndim/size) and every input they were computed from
    (``p["w"].T.shape`` relies on ``p["w"]``), over every equation recorded, even those
    dead code elimination later drops."""
    wanted = set(trace.inspected)
    if not wanted:
        return frozenset()
    if all(v in wanted for v in trace.invars[:n]):  # (the common case: no walk needed)
        return frozenset(range(n))
    for eqn in reversed(trace.eqns):
        if any(o in wanted for o in eqn.outputs):
            wanted.update(a for a in eqn.inputs if not isinstance(a, Lit))
    return frozenset(i for i, v in enumerate(trace.invars[:n]) if v in wanted)


def _holds_state(leaf) -> bool:
    """A static argument whose attributes the function may read (a user object), or a
    user function it may call: read through diffprog.externals."""
    if isinstance(leaf, (type, types.ModuleType)) or is_dynamic(leaf):
        return False
    return isinstance(leaf, types.FunctionType) or externals.is_user_code(type(leaf))


def _refuse_draws_in_bodies(draws: list) -> None:
    if draws:  # (body, generator) pairs from RandomWatch.drawn_in_bodies
        raise externals.draw_in_body_error(*draws[0])


def _list_argument_hint(sig: Signature) -> str | None:
    """Python lists/tuples of numbers are containers to diffprog (one traced input per
    element), so np.asarray(arg) inside the function fails: name the argument."""
    for i, child in enumerate(sig.treedef.children):
        if child.kind in ("list", "tuple") and child.children and \
                all(c.kind == "leaf" for c in child.children):
            kind = "list" if child.kind == "list" else "tuple"
            return (f"Note: argument {i} is a Python {kind} of {len(child.children)} values; "
                    f"diffprog treats lists and tuples as containers (each element a separate "
                    f"input), so converting it to an array inside the function is not "
                    f"traceable. Fix: pass np.array([...]) as argument {i} instead of the {kind}.")
    return None


#: set while jacobian/hessian evaluate their columns (each column is a separate call)
_IN_JACOBIAN: contextvars.ContextVar = contextvars.ContextVar("diffprog_jacobian", default=False)


def _random_jacobian_error(fn, drawn: list) -> DiffprogError:
    name = getattr(fn, "__qualname__", repr(fn))
    return DiffprogError(
        f"jacobian/hessian of {name}, which draws random numbers (from {', '.join(drawn)}): "
        f"each column is a separate evaluation and would see other draws, so the result "
        f"would be no one realization's derivative. Fix: draw the noise outside and pass it "
        f"in as an argument, then differentiate with the noise fixed.")


_PER_CALL_WARNED: "weakref.WeakSet" = weakref.WeakSet()


def _warn_per_call_once(fn, traced: Traced) -> None:
    try:
        if fn in _PER_CALL_WARNED:
            return
        _PER_CALL_WARNED.add(fn)
    except TypeError:  # not weak-referenceable: warn every time rather than never
        pass
    name = getattr(fn, "__qualname__", repr(fn))
    if traced.drew:
        what = (f"draws random numbers while it runs (from {', '.join(traced.drew)}). A "
                f"compiled program would freeze those draws")
        fix = ("draw the noise outside and pass it in as an argument (e.g. f(params, x, "
               "noise=rng.normal(size=n)))")
    else:
        what = (f"has effects a compiled program would not repeat ({'; '.join(traced.writes)})")
        assigns = any(" assigns " in w for w in traced.writes)
        reads = any(" assigns " not in w for w in traced.writes)
        fix = " and ".join(
            ([] if not assigns else ["return new values instead of assigning globals or nonlocals"])
            + ([] if not reads else ["read the clock, files or iterators outside the function "
                                     "and pass what they give in as arguments"]))
    warnings.warn(
        f"{name} {what}, so diffprog traces {name} anew at every call: its effects happen "
        f"at every call, as in plain Python, but each call pays a trace and a compile. "
        f"Fix, for speed: {fix}.", DiffprogWarning, stacklevel=5)


def _warn_retraces(fn, count: int, line: str) -> None:
    name = getattr(fn, "__qualname__", repr(fn))
    warnings.warn(
        f"{name} was traced {count} times for inputs of the same shapes, because Python "
        f"control flow on traced values took new paths, or a value it reads from outside "
        f"its arguments changed (guard at {line}). Each new path costs a trace and a "
        f"compile. Fix: pass values that change as arguments; express data-dependent control flow with "
        f"dp.cond (branches), dp.fori_loop / dp.scan (loops with a known count) or "
        f"dp.while_loop, which stay inside one program. Note that float() of a traced "
        f"value is frozen into the program too (no gradient flows through it).",
        DiffprogWarning, stacklevel=4)


class FunctionCache:
    """Compiled programs of one user function, keyed by signature/kind/engine.

    ``variants[key]`` is the tuple of :class:`Variant` kept for that key (several when
    guards failed: one per branch outcome / loop count), most recently used first;
    ``traced[sig.key]`` the latest trace of a signature. Both are LRU-bounded by
    :func:`set_cache_size`. Readers take no lock (a dict lookup and a tuple are safe
    under concurrent writers); writers hold ``lock``; a miss holds that key's own
    ``building`` lock while it traces, so concurrent first calls trace once.
    """

    def __init__(self):
        self.lock = threading.RLock()
        self.traced: OrderedDict = OrderedDict()
        self.variants: OrderedDict = OrderedDict()
        self.retraces: dict = {}  # key -> number of variants ever traced
        self.warned: set = set()
        self._building: dict = {}  # key -> lock held while one thread traces that key

    @property
    def programs(self) -> dict:
        """key -> (program, traced) of the most recently used variant of each key."""
        return {k: (v[0].programs[0], v[0].traced) for k, v in list(self.variants.items()) if v}

    def building(self, key) -> threading.Lock:
        with self.lock:
            lock = self._building.get(key)
            if lock is None:
                lock = self._building[key] = threading.Lock()
            return lock

    def store_traced(self, sig_key, traced) -> None:
        with self.lock:
            self.traced[sig_key] = traced
            self.traced.move_to_end(sig_key)
            _evict(self.traced, lambda k: None, count=False)

    def store_variants(self, key, variants: tuple) -> None:
        with self.lock:
            self.variants[key] = variants
            self.variants.move_to_end(key)
            _evict(self.variants, self._forget)

    def touch(self, key) -> None:
        """Mark ``key`` most recently used (it survives eviction longest)."""
        with self.lock:
            if key in self.variants:
                self.variants.move_to_end(key)

    def _forget(self, key) -> None:
        self.retraces.pop(key, None)
        self.warned.discard(key)
        self._building.pop(key, None)


def _evict(table: OrderedDict, forget, count: bool = True) -> None:
    """Drop least recently used entries beyond the configured size (caller holds the lock;
    only programs count as evictions, not the traces kept beside them)."""
    while len(table) > _CACHE_LIMIT[0]:
        key, _ = table.popitem(last=False)
        forget(key)
        if count:
            _STATS["evictions"] += 1


#: programs kept per function (per transformation for the fast call path), LRU
DEFAULT_CACHE_SIZE = 128
_CACHE_LIMIT = [DEFAULT_CACHE_SIZE]
_STATS = {"hits": 0, "misses": 0, "evictions": 0}


def _cache_size_from_env() -> int:
    raw = os.environ.get("DIFFPROG_CACHE_SIZE", "").strip()
    if not raw:
        return DEFAULT_CACHE_SIZE
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        warnings.warn(f"DIFFPROG_CACHE_SIZE={raw!r} is not a positive integer; using the "
                      f"default {DEFAULT_CACHE_SIZE}.", DiffprogWarning, stacklevel=2)
        return DEFAULT_CACHE_SIZE
    return size


_CACHE_LIMIT[0] = _cache_size_from_env()


def set_cache_size(size: int) -> int:
    """Keep at most ``size`` compiled signatures per function (least recently used are
    dropped first); returns the previous limit. The default, 128, can also be set with
    the environment variable ``DIFFPROG_CACHE_SIZE``.

    >>> import diffprog as dp
    >>> previous = dp.set_cache_size(16)
    >>> dp.set_cache_size(previous)
    16
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ArgumentValueError(f"set_cache_size: size must be a positive integer, got "
                                 f"{size!r}. Fix: pass e.g. dp.set_cache_size(256).")
    previous, _CACHE_LIMIT[0] = _CACHE_LIMIT[0], int(size)
    return previous


def _fast_math_from_env() -> bool:
    raw = os.environ.get("DIFFPROG_FAST_MATH", "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    warnings.warn(f"DIFFPROG_FAST_MATH={raw!r} is neither 1 nor 0; fast math stays off. Fix: "
                  f"set DIFFPROG_FAST_MATH=1 to turn it on.", DiffprogWarning, stacklevel=2)
    return False


#: fast math for functions that do not choose (fast_math=None): dp.set_fast_math
_FAST_MATH = [_fast_math_from_env()]


def _check_fast_math(value, where: str, allow_none: bool):
    """``value`` as a bool (or None), else an ArgumentValueError naming ``where``."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    choices = "True, False or None (None: follow dp.set_fast_math)" if allow_none else \
        "True or False"
    raise ArgumentValueError(f"{where}: fast_math must be {choices}, got {value!r}. Fix: pass "
                             f"fast_math=True to opt in to fast math, or leave it out.")


def set_fast_math(on: bool) -> bool:
    """Turn fast math on or off for every function that does not choose for itself (with
    ``dp.differentiable(fn, fast_math=...)``); returns the previous setting. The default
    is off, or on where the environment variable ``DIFFPROG_FAST_MATH=1`` is set when
    diffprog is imported.

    Fast math: the numpy engine's compiled kernels for large elementwise work call glibc's
    vector math library (libmvec) for exp, log, sin, cos, tanh, pow and the other
    transcendental functions, several elements per call. Each such result is within
    4 ulp (units in the last place) of NumPy's; NaN, infinities and signed zeros come out
    as in NumPy, and floating-point warnings are reported as before. Arithmetic is
    unchanged. Off (the default), results are bit-identical to NumPy. Where there is no C
    compiler or no libmvec (not glibc on x86-64), fast math changes nothing;
    ``dp.engines.ckernel.status()`` says what is in use.

    >>> import diffprog as dp
    >>> previous = dp.set_fast_math(True)
    >>> dp.set_fast_math(previous)
    True
    """
    on = _check_fast_math(on, "set_fast_math", allow_none=False)
    previous, _FAST_MATH[0] = _FAST_MATH[0], on
    return previous


def cache_info() -> dict:
    """Counters of the program caches of every function: ``hits`` and ``misses`` (calls
    through the full path that found / did not find a program), ``evictions`` (programs
    dropped to stay within :func:`set_cache_size`) and ``maxsize``.

    >>> import diffprog as dp
    >>> sorted(dp.cache_info())
    ['evictions', 'hits', 'maxsize', 'misses']
    """
    return {**_STATS, "maxsize": _CACHE_LIMIT[0]}


@dataclass
class Variant:
    """The compiled program(s) of one trace of the function, checked by its guards."""

    programs: tuple
    traced: Traced

    def run(self, leaves, inputs, extra=(), check: bool = True):
        """Run the first program on the call's inputs, externals read now, and ``extra``
        (``check=False``: right after tracing, without re-checking what the trace read)."""
        return self.programs[0](*inputs, *self.traced.external_values(leaves, check), *extra)

    def fast_program(self) -> Callable:
        """The first program taking the call's arrays only (reading externals itself):
        for the fast call path, whose arguments are all plain arrays (leaves == args)."""
        program, reader = self.programs[0], self.traced.externals
        if reader is None:  # the generated function itself: one call frame less
            return getattr(program, "fn", program)
        return lambda *args: program(*args, *reader(args))


#: variants kept per key (least recently used dropped), and when to warn about them
MAX_VARIANTS = 32
WARN_AFTER_VARIANTS = 8


#: what _fast_call returns when the full path must take the call (None is a valid result)
_MISS = object()


def _picked(picks, args) -> list:
    """The leaves a fast plan passes, after checking every leaf: a trace may depend on
    the shape, dtype or type of a leaf its program never reads (np.zeros(p["w"].shape))."""
    checks, passes = picks
    for arg, kinds, full in checks:  # (dict arguments only: see _fast_plan)
        values = args[arg].values()
        if tuple(map(type, values)) != kinds:  # every leaf: still an array (a None, a
            raise _NotThisPlan                 # list would change what the code does)
        if full is not None:  # shapes and dtypes the program or code relies on
            keys, shapes, dtypes = full
            if keys is not None:
                given = args[arg]
                values = [given[k] for k in keys]
            if [v.shape for v in values] != shapes or [v.dtype for v in values] != dtypes:
                raise _NotThisPlan
    return [args[arg] if name is None else args[arg][name] for arg, name in passes]


class _NotThisPlan(Exception):
    """A leaf no longer matches the plan: the full path takes this call."""


def _fast_plan(variant, sig, args, check_all: bool):
    """(program, picks) for calls with dict arguments: the program takes only the leaves
    its graph uses; every leaf is checked (type, shape, dtype) at each call."""
    program = variant.programs[0]
    graph = getattr(program, "graph", None)
    where = []  # leaf position -> (argument, dict key or None)
    for i, child in enumerate(sig.treedef.children):
        if child.kind == "leaf":
            where.append((i, None))
        elif child.kind == "dict" and all(c.kind == "leaf" for c in child.children):
            where.extend((i, k) for k in child.keys)
        else:
            return None
    if graph is None or len(where) != len(sig.leaves) or len(sig.dynamic) != len(sig.leaves) \
            or any(type(leaf) is not np.ndarray for leaf in sig.leaves):
        return None  # Python floats among the leaves (their type is part of the program)
    if any(type(k) is not str for a in args if type(a) is dict for k in a):
        return None  # keys compared by == in the fast key: {True: x} would find {1: x}
    n = len(sig.dynamic)
    used = {id(a) for e in graph.eqns for a in e.inputs} | {id(o) for o in graph.outvars}
    keep = [i for i in range(n) if id(graph.invars[i]) in used]
    if len(keep) < n:  # compile once more, taking only the used leaves
        pruned = Graph([graph.invars[i] for i in keep] + list(graph.invars[n:]), graph.eqns,
                       graph.outvars)
        program = _engines.get(program.engine,
                               fast_math=getattr(program, "fast_math", False)).compile(pruned)
    reader = variant.traced.externals
    # (the generated function itself where there is one: one call frame less)
    run = getattr(program, "fn", program) if reader is None else \
        (lambda *a, p=program: p(*a, *reader(())))
    # every leaf's type; shape and dtype of the leaves the program reads, the code looked
    # at (variant.traced.inspected), or, for gradients (whose zeros take every leaf's
    # shape), all of them
    relied = set(range(n)) if check_all else set(keep) | set(variant.traced.inspected)
    position = {}  # leaf position -> (argument, index among its values in caller's order)
    for i, arg in enumerate(args):
        if type(arg) is dict:
            order = {name: k for k, name in enumerate(arg)}
            for pos, (a, name) in enumerate(where):
                if a == i:
                    position[pos] = (i, order[name])
        else:
            position[[pos for pos, (a, _) in enumerate(where) if a == i][0]] = (i, 0)
    checks = []
    for i, arg in enumerate(args):
        if type(arg) is not dict:
            continue  # an array's type, shape and dtype are in the fast key already
        values = list(arg.values())
        checked = [pos for pos in sorted(relied) if position[pos][0] == i]
        full = None
        if checked:
            index = [position[pos][1] for pos in checked]
            every = index == list(range(len(values)))
            full = (None if every else [where[pos][1] for pos in checked],  # keys; None: all
                    [sig.leaves[pos].shape for pos in checked],
                    [sig.leaves[pos].dtype for pos in checked])
        checks.append((i, tuple(map(type, values)), full))
    passes = tuple(where[pos] for pos in keep)
    return run, (tuple(checks), passes)


def _try_variants(cache: FunctionCache, key, leaves, inputs, extra):
    """Run the first kept variant of ``key`` whose guards hold: ``((outputs, variant),
    None)``, or ``(None, the last GuardFailed or None)`` when none does. A program's
    inputs are ``inputs``, then the values it reads from outside (externals), then
    ``extra`` (tangents)."""
    variants = cache.variants.get(key, ())
    failed = None
    for i, variant in enumerate(variants):
        try:
            out = variant.programs[0](*inputs, *variant.traced.external_values(leaves), *extra)
        except (GuardFailed, externals.ExternalChanged) as e:
            failed = e
            continue
        if i:  # most recently used first: the next call tries it first
            with cache.lock:
                now = cache.variants.get(key, ())
                if any(v is variant for v in now):
                    cache.variants[key] = (variant,) + tuple(v for v in now if v is not variant)
        cache.touch(key)
        return (out, variant), None
    return None, failed


def _has_guards(graph: Graph) -> bool:
    return any(getattr(e.prim, "effectful", False) for e in graph.eqns)


_CACHES: "weakref.WeakKeyDictionary[Callable, FunctionCache]" = weakref.WeakKeyDictionary()
_STRONG_CACHES: dict = {}  # id(fn) -> (fn, cache): holding fn keeps its id from being reused
_CACHES_LOCK = threading.Lock()


def cache_for(fn: Callable) -> FunctionCache:
    try:
        cache = _CACHES.get(fn)
        if cache is None:
            with _CACHES_LOCK:
                cache = _CACHES.get(fn)
                if cache is None:
                    cache = _CACHES[fn] = FunctionCache()
        return cache
    except TypeError:  # not weak-referenceable (e.g. a builtin or ufunc)
        with _CACHES_LOCK:
            held = _STRONG_CACHES.get(id(fn))
            if held is None or held[0] is not fn:
                held = _STRONG_CACHES[id(fn)] = (fn, FunctionCache())
            return held[1]


def _device_of(leaf) -> str | None:
    """"gpu" for a CuPy array, "cpu" for a NumPy array, None for scalars (fine anywhere)."""
    if type(leaf).__module__.startswith("cupy") and hasattr(leaf, "__cuda_array_interface__"):
        return "gpu"
    if isinstance(leaf, np.ndarray):
        return "cpu"
    return None


def _gpu_id(leaf) -> int | None:
    """The CUDA device number of a CuPy array; None for anything else."""
    if _device_of(leaf) != "gpu":
        return None
    return getattr(getattr(leaf, "device", None), "id", 0)


def _on_gpu(gpu: int | None):
    """Make ``gpu`` CuPy's current device for a compile or a run: constants are placed
    and kernels launched on the device of the inputs, not on whichever is current."""
    cupy = sys.modules.get("cupy")
    if gpu is None or cupy is None or not hasattr(cupy, "cuda"):
        return contextlib.nullcontext()
    return cupy.cuda.Device(gpu)


_DEVICE_WORDS = {"gpu": "CuPy (GPU)", "cpu": "NumPy (CPU)"}


def _engine_name(sig: Signature, requested: str | None) -> str:
    """The engine for this call: inputs decide the device; mixing devices is an error."""
    paths = leaf_paths(sig.treedef)
    where: dict[str, list] = {"gpu": [], "cpu": []}
    gpus: dict[int, list] = {}
    for pos in sig.dynamic:
        device = _device_of(sig.leaves[pos])
        if device is not None:
            where[device].append(f"args{paths[pos]}")
        if device == "gpu":
            gpus.setdefault(_gpu_id(sig.leaves[pos]), []).append(f"args{paths[pos]}")
    if where["gpu"] and where["cpu"]:
        raise ArgumentError(
            f"inputs mix CuPy (GPU) and NumPy (CPU) arrays: GPU {_listing(where['gpu'])}, CPU "
            f"{_listing(where['cpu'])}. Fix: move all inputs to one device (cupy.asarray(x) "
            f"once, before the loop, or x.get()); diffprog never copies between devices silently.")
    if len(gpus) > 1:
        found = "; ".join(f"GPU {g}: {_listing(p)}" for g, p in sorted(gpus.items()))
        raise ArgumentError(
            f"inputs are on different GPUs ({found}). Fix: copy them to one device once, "
            f"outside any loop (with cupy.cuda.Device(n): x = cupy.asarray(x)); diffprog never "
            f"copies between devices silently.")
    name = requested or ("cupy" if where["gpu"] else _engines.default_engine_name())
    accepted = _engines.devices(name)
    if accepted is not None:
        for device, found in where.items():
            if found and device not in accepted:
                _engines.get(name)  # an engine that cannot run here says so first
                origin = "" if requested or where["gpu"] else " (from $DIFFPROG_ENGINE)"
                raise ArgumentError(_wrong_device_message(name, origin, device, found))
    return name


def _listing(paths: list) -> str:
    return ", ".join(paths[:3]) + (f" (and {len(paths) - 3} more)" if len(paths) > 3 else "")


def _wrong_device_message(engine: str, origin: str, device: str, found: list) -> str:
    if engine == "cupy":
        fix = ("move them once with cupy.asarray(x), outside any loop (the cupy engine does not "
               "copy to the GPU on every call), or use engine='numpy'")
    else:
        fix = ("leave engine unset (CuPy inputs select the cupy engine), or copy them to the "
               "host with x.get()")
    return (f"engine={engine!r}{origin} cannot take {_DEVICE_WORDS[device]} arrays, found at "
            f"{_listing(found)}. Fix: {fix}.")


class Transformed:
    """Shared machinery of every transformed function: tracing, caching, engines."""

    def __init__(self, fn: Callable, engine: str | None = None, static_argnums: Sequence[int] = (),
                 fast_math: bool | None = None):
        fast_math = _check_fast_math(fast_math, "differentiable", allow_none=True)
        if not callable(fn):
            raise ArgumentError(
                f"expected a function to transform, got {type(fn).__name__} {fn!r}. Fix: pass "
                f"the function itself (dp.grad(f), not dp.grad(f(x))).")
        static_argnums = _checked_positions(static_argnums, "static_argnums")
        if fast_math is None and isinstance(fn, Transformed):
            fast_math = fn.fast_math  # grad(grad(f)) of a fast-math f is fast math too
        base = fn
        while isinstance(base, Differentiable):
            engine = engine or base.engine
            static_argnums = tuple(static_argnums) or base.static_argnums
            base = base.fn
        self.fn = base
        self.engine = engine
        self.fast_math = fast_math  # None: follow dp.set_fast_math at each call
        self.static_argnums = tuple(static_argnums)
        self._fast: dict = {}  # see _fast_key
        if engine is not None and engine not in _engines.names():
            _engines.get(engine)  # raises ArgumentValueError naming the known engines

    def _signature(self, args) -> Signature:
        return make_signature(args, self.static_argnums)

    # ------------------------------------------------------------ fast call path
    # Calls whose arguments are all plain NumPy arrays (the common case) skip building a
    # Signature: a dict keyed by (shape, dtype) of each argument gives the compiled
    # program and a function assembling its results, both taken from an earlier call
    # with the same key that went through the full path. Cuts W1's call overhead ~3x.

    def _fast_key(self, args):
        """Arrays by shape and dtype; a dict argument (of parameters, say) by its keys
        only: its leaves are checked by the stored plan, and only those the program uses
        (a dict of 50 arrays whose function reads one costs one check, not 50)."""
        if self.static_argnums or _TRACE_STACK.get():  # (tracing_active(), inlined: hot)
            return None
        fast = self.fast_math
        key = [self.engine or _engines.default_engine_name(),
               _FAST_MATH[0] if fast is None else fast]
        for a in args:
            kind = type(a)
            if kind is np.ndarray:
                key.append(a.shape)
                key.append(a.dtype)
            elif kind is dict:  # (plans are stored for string keys only: no True == 1)
                key.append(dict)
                key.append(tuple(a))
            else:
                return None
        return tuple(key)

    def _fast_call(self, key, args):
        """The result via the fast path, or _MISS to take the full path."""
        hit = self._fast.get(key)
        if hit is None:
            return _MISS
        program, assemble, picks = hit
        try:
            if picks is None:  # plain array arguments, passed as they are
                flat = program(*args)
            else:
                flat = program(*_picked(picks, args))
        except Exception:  # errors (and guard failures) are the full path's business
            return _MISS
        return assemble(flat)

    def _fast_store(self, key, variant, assemble, sig, args, check_all: bool = False):
        if key is None:
            return
        program, picks = variant.fast_program(), None
        if any(part is dict for part in key):
            plan = _fast_plan(variant, sig, args, check_all)
            if plan is None:
                return
            program, picks = plan
        fast = self._fast
        fast[key] = (program, assemble, picks)
        while len(fast) > _CACHE_LIMIT[0]:  # oldest first; a dropped key takes the full path
            try:
                del fast[next(iter(fast))]
            except (KeyError, RuntimeError, StopIteration):  # another thread got there first
                break

    def _traced(self, sig: Signature) -> Traced:
        if sig.nested:
            return trace_call(self.fn, sig)
        cache = cache_for(self.fn)
        hit = cache.traced.get(sig.key)
        # A guarded trace holds for the values it was traced with only: trace again.
        if hit is not None and hit.reusable and hit.externals is not None:
            try:  # values read outside the arguments may have changed since
                hit.externals(sig.leaves)
            except externals.ExternalChanged:
                hit = None
        if hit is None or not hit.reusable:
            hit = trace_call(self.fn, sig)
            if not hit.per_call:
                cache.store_traced(sig.key, hit)
        return hit

    def _run(self, sig: Signature, kind: tuple, build: Callable, extra=()):
        """Run the compiled program for this call: ``(flat outputs, variant)``.

        ``build(traced)`` makes the graph (or a tuple of graphs; the first one is run
        here, the others are returned compiled in ``variant.programs``) on a miss.
        Variants whose guards fail on these inputs are skipped; when none holds, the
        function is traced again for these inputs and the new variant kept.
        """
        engine_name = _engine_name(sig, self.engine)
        fast = self.fast_math_now()
        if sig.gpu is None:
            return self._run_on(sig, kind, build, extra, engine_name, fast)
        with _on_gpu(sig.gpu):
            return self._run_on(sig, kind, build, extra, engine_name, fast)

    def fast_math_now(self) -> bool:
        """Does a call now run fast-math programs (this function's choice, else the
        global setting, :func:`set_fast_math`)?"""
        return _FAST_MATH[0] if self.fast_math is None else self.fast_math

    def _run_on(self, sig, kind, build, extra, engine_name, fast=False):
        cache = cache_for(self.fn)
        key = (sig.key, kind, engine_name, fast)  # fast-math programs never serve exact calls
        inputs = sig.dyn_leaves
        done, failed = _try_variants(cache, key, sig.leaves, inputs, extra)
        if done is not None:
            _STATS["hits"] += 1
            return done
        # One thread traces a new key; concurrent first calls wait and then find it.
        with cache.building(key):
            done, failed_again = _try_variants(cache, key, sig.leaves, inputs, extra)
            if done is not None:
                _STATS["hits"] += 1
                return done
            failed = failed_again or failed
            _STATS["misses"] += 1
            variant = self._new_variant(sig, build, engine_name, fresh=failed is not None,
                                        fast=fast)
            if variant.traced.per_call:  # effects at every call: run once, keep nothing
                if variant.traced.drew and _IN_JACOBIAN.get():
                    raise _random_jacobian_error(self.fn, variant.traced.drew)
                _warn_per_call_once(self.fn, variant.traced)
                return variant.run(sig.leaves, inputs, extra, check=False), variant
            with cache.lock:
                kept = (variant,) + cache.variants.get(key, ())
                cache.store_variants(key, kept[:MAX_VARIANTS])
                count = cache.retraces[key] = cache.retraces.get(key, 0) + 1
                warn = failed is not None and count >= WARN_AFTER_VARIANTS and \
                    key not in cache.warned
                if warn:
                    cache.warned.add(key)
        if warn:
            _warn_retraces(self.fn, count, failed.line)
        try:
            return variant.run(sig.leaves, inputs, extra, check=False), variant
        except (GuardFailed, externals.ExternalChanged) as e:  # pragma: no cover
            raise DiffprogError(
                f"internal: a program traced for these inputs failed its own guard at {e.line} "
                f"(is the function non-deterministic?)") from None

    def _new_variant(self, sig, build, engine_name, fresh: bool, fast: bool = False) -> Variant:
        # the collector off while the program is traced, transformed and compiled: each of
        # its full collections would walk the growing graph again (ir.gc_paused)
        with gc_paused():
            return self._build_variant(sig, build, engine_name, fresh, fast)

    def _build_variant(self, sig, build, engine_name, fresh: bool, fast: bool) -> Variant:
        if fresh:
            traced = trace_call(self.fn, sig)
            if not traced.per_call:
                cache_for(self.fn).store_traced(sig.key, traced)
        else:
            traced = self._traced(sig)
        graphs = build(traced)
        graphs = graphs if isinstance(graphs, tuple) else (graphs,)
        engine = _engines.get(engine_name, fast_math=fast)
        programs = []
        for g in graphs:  # a Derivative asks a native_gradients engine for its programs
            programs.extend(engine.compile_native(g) if isinstance(g, _engines.Derivative)
                            else (engine.compile(g),))
        return Variant(tuple(programs), traced)

    def _native(self, sig: Signature) -> bool:
        """Does this call's engine differentiate forward graphs itself (julia: Zygote)?"""
        if sig.nested:  # recording into an enclosing trace: the IR transforms do it
            return False
        return getattr(_engines.get(_engine_name(sig, self.engine)), "native_gradients", False)


# ======================================================================= differentiable

class Differentiable(Transformed):
    """A function traced and compiled on first call; see :func:`differentiable`."""

    def __init__(self, fn, engine=None, static_argnums=(), fast_math=None):
        super().__init__(fn, engine, static_argnums, fast_math)
        functools.update_wrapper(self, self.fn, updated=())

    def __call__(self, *args, **kwargs):
        if kwargs:
            args = _as_positional(self.fn, args, kwargs)
        key = self._fast_key(args)
        if key is not None:
            done = self._fast_call(key, args)
            if done is not _MISS:
                return done
        sig = self._signature(args)
        if sig.nested:  # inside another trace: what fn reads is lifted into the root's
            return externals.for_nested_call(self.fn, trace_stack())(*args)
        flat, variant = self._run(sig, ("value",), lambda t: t.graph)
        out_tree = variant.traced.out_tree
        if variant.traced.reusable:  # guarded programs go through _run's variant checks
            assemble = (lambda flat: flat[0]) if out_tree.kind == "leaf" else \
                (lambda flat: unflatten(out_tree, flat))  # (one array: the common case)
            self._fast_store(key, variant, assemble, sig, args)
        return unflatten(out_tree, flat)

    def __get__(self, obj, objtype=None):  # usable as a method
        return self if obj is None else functools.partial(self, obj)

    def ir(self, *args) -> Graph:
        """The traced IR of this function for these arguments (printable like code)."""
        return self._traced(self._signature(args)).graph

    def source(self, *args, kind: str = "value", engine: str | None = None, argnums=0) -> str:
        """The generated program for these arguments.

        ``kind``: "value" (the function), "grad" (value and gradient w.r.t. argnums),
        "jvp" or "vjp". ``engine`` defaults to the function's engine.
        """
        sig = self._signature(args)
        traced = self._traced(sig)
        graph = _graph_for_kind(kind, traced, sig, argnums)
        eng = _engines.get(engine or _engine_name(sig, self.engine), check=False,
                           fast_math=self.fast_math_now())
        text = eng.render_source(graph) if hasattr(eng, "render_source") \
            else eng.compile(graph).source
        return Source(text, language="julia" if eng.name == "julia" else "python")

    def __repr__(self) -> str:
        return f"<diffprog.differentiable {getattr(self.fn, '__qualname__', self.fn)}>"


def _as_positional(fn, args: tuple, kwargs: dict) -> tuple:
    """The call's arguments in order, keyword arguments placed at their parameters'
    positions (defaults filling the positions skipped), as the transforms count positions:
    ``f(x, a=4.0)`` is ``f(x, 4.0)``. Keyword-only parameters and ``**kwargs`` have no
    position: refused (_keyword_error says the fix)."""
    if isinstance(fn, _Batched):  # (dp.vmap maps positional arguments: in_axes)
        raise _keyword_error(fn, kwargs)
    try:
        signature = inspect.signature(fn)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, TypeError) and "argument" in str(e):
            name = getattr(fn, "__qualname__", repr(fn))
            raise ArgumentError(f"{name}: {e}. Fix: call it with the arguments it takes.") \
                from None
        raise _keyword_error(fn, kwargs) from None
    params = signature.parameters
    unplaced = {name: value for name, value in bound.arguments.items()
                if params[name].kind in (inspect.Parameter.KEYWORD_ONLY,
                                         inspect.Parameter.VAR_KEYWORD)}
    if unplaced:  # keyword-only parameters, **kwargs
        raise _keyword_error(fn, unplaced)
    positional = [p for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    given = [i for i, p in enumerate(positional) if p.name in bound.arguments]
    values = []
    for p in positional[:given[-1] + 1] if given else ():
        values.append(bound.arguments[p.name] if p.name in bound.arguments else p.default)
    extra = [p for p in signature.parameters.values() if p.kind is p.VAR_POSITIONAL]
    if extra and extra[0].name in bound.arguments:
        values.extend(bound.arguments[extra[0].name])
    return tuple(values)


def _keywords_placed(fn, args: tuple, kwargs: dict, argnums) -> tuple:
    """:func:`_as_positional` for a transform with ``argnums`` (non-negative there)."""
    if any(a < 0 for a in _checked_positions(argnums, "argnums")):
        raise ArgumentValueError(
            f"argnums={argnums!r} counts from the end, which keyword arguments make "
            f"ambiguous. Fix: give non-negative positions.")
    return _as_positional(fn, args, kwargs)


def _keyword_error(fn, kwargs) -> ArgumentError:
    name = getattr(fn, "__qualname__", repr(fn))
    return ArgumentError(
        f"{name} was called with keyword argument(s) {', '.join(sorted(kwargs))} that have no "
        f"position in its signature (keyword-only parameters, **kwargs); diffprog's "
        f"transformed functions count arguments by position (argnums, in_axes and "
        f"static_argnums). Fix: pass them positionally, or fix them with functools.partial "
        f"before transforming.")


def _graph_for_kind(kind, traced, sig, argnums):
    if kind == "value":
        return traced.graph
    if kind == "grad":
        wrt = _wrt_positions(sig, _norm_argnums(argnums, len(sig.treedef.children)))
        _check_scalar_output(traced, "grad")
        return vjp_graph(traced.graph, wrt, seed="ones")
    float_pos = _float_positions(sig, range(len(sig.dynamic)))
    if kind == "jvp":
        return jvp_graph(traced.graph, float_pos)
    if kind == "vjp":
        return vjp_graph(traced.graph, float_pos, seed="input")
    raise ArgumentValueError(f"kind must be 'value', 'grad', 'jvp' or 'vjp', got {kind!r}")


def differentiable(fn: Callable | None = None, *, engine: str | None = None,
                   static_argnums: Sequence[int] = (), fast_math: bool | None = None):
    """Decorate an ordinary NumPy function so diffprog traces, compiles and differentiates it.

    >>> import numpy as np, diffprog as dp
    >>> @dp.differentiable
    ... def f(x):
    ...     return np.sum(np.sin(x) * x ** 2)
    >>> float(f(np.array([1.0, 2.0])))  # doctest: +ELLIPSIS
    4.47...
    >>> dp.grad(f)(np.array([0.0, 1.0]))  # doctest: +ELLIPSIS
    array([0.        , 2.2232...])

    ``fast_math=True`` opts this function (and ``grad``, ``value_and_grad``, ``vjp``,
    ``jvp``, ``jacobian``, ``hessian`` and ``vmap`` of it) in to fast math: compiled
    kernels for large elementwise work call glibc's vector math library (libmvec) for
    exp, log, sin, cos, tanh, pow and the other transcendental functions. Each such
    result is within 4 ulp of NumPy's (checked on this machine before a kernel is used);
    NaN, infinities and signed zeros are as in NumPy. ``False`` keeps results
    bit-identical to NumPy whatever the global setting; ``None`` (the default) follows
    :func:`set_fast_math` (off unless ``DIFFPROG_FAST_MATH=1``). Where no C compiler or no
    libmvec exists, fast math changes nothing.

    >>> g = dp.differentiable(lambda x: np.sum(np.tanh(x) ** 2), fast_math=True)
    >>> x = np.linspace(-3.0, 3.0, 1_000_000)
    >>> bool(np.isclose(g(x), np.sum(np.tanh(x) ** 2), rtol=1e-13))
    True
    """
    if fn is None:
        return lambda f: Differentiable(f, engine, static_argnums, fast_math)
    return Differentiable(fn, engine, static_argnums, fast_math)


# ============================================================================ helpers

def _checked_positions(positions, what: str) -> tuple:
    """``argnums`` / ``static_argnums`` as a tuple of ints (one int allowed), or the error
    naming what was given (a string "01" or a float 0.0 was read as positions before)."""
    single = isinstance(positions, (int, np.integer)) and not isinstance(positions, bool)
    items = (positions,) if single else positions
    if isinstance(positions, (str, bytes)) or not isinstance(items, (tuple, list)) or any(
            isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in items):
        raise ArgumentValueError(
            f"{what} must be an int or a tuple of ints (argument positions), got {positions!r}. "
            f"Fix: e.g. {what}=0 or {what}=(0, 2).")
    return tuple(int(a) for a in items)


def _norm_argnums(argnums, n_args: int) -> tuple:
    nums = _checked_positions(argnums, "argnums")
    for a in nums:
        if not -n_args <= a < n_args:
            raise ArgumentValueError(
                f"argnums={argnums!r} is out of range: the function was called with {n_args} "
                f"positional argument(s). Fix: use argnums between 0 and {n_args - 1}.")
    return tuple(a % n_args for a in nums)


def _wrt_positions(sig: Signature, argnums: tuple) -> list[int]:
    """Indices into the traced inputs for the leaves of the differentiated arguments."""
    ranges = _arg_leaf_ranges(sig.treedef)
    paths = leaf_paths(sig.treedef)
    dyn_index = {p: i for i, p in enumerate(sig.dynamic)}
    wrt = []
    for a in argnums:
        before = len(wrt)
        # a leaf of a container (a params dict) that is not floating is static there, as
        # transforms.md says: no gradient (None), the float leaves beside it differentiated
        inside = sig.treedef.children[a].kind != "leaf"
        for pos in ranges[a]:
            leaf = sig.leaves[pos]
            where = f"argument {a}{paths[pos][len(f'[{a}]'):]}"
            if pos not in dyn_index:
                if leaf is None or isinstance(leaf, str) or inside:
                    continue
                raise NotDifferentiableError(
                    f"cannot differentiate with respect to {where}: it is a Python "
                    f"{type(leaf).__name__} ({leaf!r}), not a float array. Fix: pass a float "
                    f"(e.g. {float(leaf) if isinstance(leaf, (int, bool)) else 'np.asarray(...)'}) "
                    f"or leave this argument out of argnums.")
            dt = _leaf_dtype(leaf)
            if not np.issubdtype(dt, np.inexact):
                if inside:
                    continue
                raise NotDifferentiableError(
                    f"cannot differentiate with respect to {where}: its dtype is {dt}, not a "
                    f"floating type. Fix: convert it with .astype(float) or leave it out of argnums.")
            wrt.append(dyn_index[pos])
        if len(wrt) == before:
            found = [type(sig.leaves[p]).__name__ for p in ranges[a]] or ["an empty container"]
            raise NotDifferentiableError(
                f"cannot differentiate with respect to argument {a}: it holds no floating-point "
                f"values (found {', '.join(sorted(set(found)))}). Fix: pass float arrays, or "
                f"leave argument {a} out of argnums.")
    return wrt


def _refuse_complex(graph: Graph, wrt: list[int], what: str) -> None:
    """Refuse derivatives that would flow through complex values of an entry whose rules
    are written for real values only (``Primitive.complex`` unset): they would be
    silently wrong. Bodies of loops and branches are checked too."""
    live = {id(graph.invars[i]) for i in wrt}
    _check_complex_flow(graph, live, what)


def _check_complex_flow(graph: Graph, live: set, what: str) -> None:
    for eqn in graph.eqns:
        for a in eqn.inputs:
            if id(a) in live:
                break
        else:
            continue
        prim = eqn.prim
        if prim.differentiable:
            if not prim.complex and any(
                    _is_complex_atom(a) for a in list(eqn.inputs) + list(eqn.outputs)):
                raise NotDifferentiableError(
                    f"{what}: the derivative would flow through complex values in "
                    f"the primitive {eqn.prim.name!r}, whose derivative rules are written for "
                    f"real values only. Fix: write that step with real arrays (real and "
                    f"imaginary parts separately), or wrap it in dp.custom_vjp with a rule in "
                    f"JAX's complex convention.")
            for body in bodies(eqn) if eqn.params else ():
                _check_complex_flow(body.graph, {id(v) for v in body.graph.invars}, what)
        for o in eqn.outputs:
            live.add(id(o))


def _is_complex_atom(atom) -> bool:
    aval = getattr(atom, "aval", None)
    return aval is not None and aval.dtype.kind == "c"


def _float_positions(sig: Signature, indices) -> list[int]:
    out = []
    for i in indices:
        leaf = sig.leaves[sig.dynamic[i]]
        if np.issubdtype(_leaf_dtype(leaf), np.inexact):
            out.append(i)
    return out


def _describe_tree(tree: TreeDef) -> str:
    if tree.kind == "leaf":
        return "a single array (not a pair)"
    if tree.kind in ("tuple", "list"):
        return f"a {tree.kind} of {len(tree.children)} item(s), structure {tree}"
    return f"a {tree.kind}, structure {tree}"


def _check_scalar_output(traced: Traced, what: str, has_aux: bool = False,
                         holomorphic: bool = False):
    outs = traced.graph.outvars
    if has_aux:
        if traced.out_tree.kind not in ("tuple", "list") or len(traced.out_tree.children) != 2:
            raise ArgumentError(
                f"{what}(has_aux=True) needs the function to return a pair (value, aux); it "
                f"returned {_describe_tree(traced.out_tree)}. Fix: return (loss, aux) with a "
                f"scalar loss first (aux may be any pytree), or drop has_aux=True.")
    elif len(outs) != 1 or traced.out_tree.kind != "leaf":
        raise NotDifferentiableError(
            f"{what} needs a function returning one scalar; it returned {traced.out_tree} "
            f"with {len(outs)} array(s). Fix: return a scalar loss, or use dp.vjp / dp.jacobian.")
    out = outs[0]
    if out.aval.size != 1:  # shape (1,) or (1, 1) is a scalar too, as in autograd
        raise NotDifferentiableError(
            f"{what} needs a scalar (one-element) output, but the function returned an array "
            f"of shape {out.aval.shape}. Fix: reduce it (np.sum / np.mean), or use dp.jacobian "
            f"or dp.vjp for non-scalar outputs.")
    if not np.issubdtype(out.aval.dtype, np.inexact):
        raise NotDifferentiableError(
            f"{what} needs a floating-point output; the function returned dtype {out.aval.dtype}.")
    _check_output_kind(out.aval.dtype, what, holomorphic)


def _check_output_kind(dtype, what: str, holomorphic: bool) -> None:
    """JAX's rule: a gradient (reverse-mode Jacobian) needs real outputs, except for a
    holomorphic function, declared with ``holomorphic=True``, whose outputs are complex."""
    is_complex = np.issubdtype(dtype, np.complexfloating)
    if is_complex and not holomorphic:
        raise NotDifferentiableError(
            f"{what} needs a real-valued output; the function returned {dtype}. Fix: for a "
            f"holomorphic function pass holomorphic=True (the result is the complex "
            f"derivative f'(z)); otherwise differentiate a real quantity (np.abs(z) ** 2, "
            f"np.real(z)), or use dp.vjp / dp.jvp directly.")
    if holomorphic and not is_complex:
        raise NotDifferentiableError(
            f"{what}(holomorphic=True) needs a complex output; the function returned {dtype}. "
            f"Fix: drop holomorphic=True for a real-valued function.")


def _check_holomorphic_inputs(sig: Signature, wrt: list[int], what: str) -> None:
    """holomorphic=True differentiates with respect to complex arguments only (as JAX)."""
    paths = leaf_paths(sig.treedef)
    for i in wrt:
        pos = sig.dynamic[i]
        dt = _leaf_dtype(sig.leaves[pos])
        if not np.issubdtype(dt, np.complexfloating):
            raise NotDifferentiableError(
                f"{what}(holomorphic=True): argument {paths[pos]} is {dt}, not complex. Fix: "
                f"pass it as a complex array (x.astype(complex)), or drop holomorphic=True.")


def _grads_tree(sig: Signature, argnums: tuple, wrt: list[int], grads, single: bool):
    """Place flat gradients back into the structure of the differentiated arguments."""
    return _grads_placer(sig, argnums, wrt, single)(grads)


def _grads_placer(sig: Signature, argnums: tuple, wrt: list[int], single: bool):
    """A function of the flat gradients (in ``wrt`` order) giving them in the structure of
    the differentiated arguments; everything that does not depend on the gradients is
    worked out once here (a 50-leaf parameter dict: 40 -> 10 us per call)."""
    ranges = _arg_leaf_ranges(sig.treedef)
    slot = {pos: k for k, pos in enumerate(wrt)}
    dyn_index = {p: i for i, p in enumerate(sig.dynamic)}
    placers = []
    for a in argnums:
        picks = [slot.get(dyn_index.get(pos)) for pos in ranges[a]]
        placers.append(_leaves_placer(sig.treedef.children[a], picks))
    if single:
        return placers[0]
    return lambda grads: tuple(place(grads) for place in placers)


def _leaves_placer(treedef: TreeDef, picks: list):
    """grads -> ``treedef`` filled with ``grads[k]`` for each k of ``picks`` (None: None)."""
    if treedef.kind == "dict" and all(c.kind == "leaf" for c in treedef.children) \
            and None not in picks:
        keys = treedef.keys  # a flat parameter dict: one dict() call

        def place(grads):
            return dict(zip(keys, [grads[k] for k in picks]))
        return place
    return lambda grads: unflatten(treedef, [None if k is None else grads[k] for k in picks])


def _run_nested(graph: Graph, traced: Traced, dyn_values: list) -> list:
    """Record ``graph`` into the enclosing trace (nesting), binding captured values."""
    return eval_graph(graph, list(dyn_values) + list(traced.captured))


# =============================================================================== grad

class _GradFunction(Transformed):
    def __init__(self, fn, argnums=0, has_aux=False, with_value=False, engine=None,
                 holomorphic=False):
        super().__init__(fn, engine)
        _checked_positions(argnums, "argnums")
        self.argnums = argnums
        self.has_aux = has_aux
        self.holomorphic = bool(holomorphic)
        self.with_value = with_value
        functools.update_wrapper(self, self.fn, updated=())

    def __call__(self, *args, **kwargs):
        if kwargs:
            args = _keywords_placed(self.fn, args, kwargs, self.argnums)
        key = self._fast_key(args)
        if key is not None:
            done = self._fast_call(key, args)
            if done is not _MISS:
                return done
        sig = self._signature(args)
        argnums = _norm_argnums(self.argnums, len(args))
        single = isinstance(self.argnums, (int, np.integer))
        wrt = _wrt_positions(sig, argnums)
        if self.holomorphic:
            _check_holomorphic_inputs(sig, wrt, self._name())
        native = self._native(sig)

        def build(traced):
            _check_scalar_output(traced, self._name(), self.has_aux, self.holomorphic)
            _refuse_complex(traced.graph, wrt, self._name())
            if native and traced.graph.outvars[0].aval.shape == ():  # Zygote: a scalar
                return _engines.Derivative("gradient", traced.graph, tuple(wrt))
            return vjp_graph(_value_only(traced.graph, self.has_aux), wrt, seed="ones") \
                if not self.has_aux else _aux_grad_graph(traced.graph, wrt)

        if sig.nested:
            traced = self._traced(sig)
            flat = _run_nested(build(traced), traced, sig.dyn_leaves)
        else:
            flat, variant = self._run(sig, ("grad", argnums, self.has_aux, self.holomorphic),
                                      build)
            traced = variant.traced
        assemble = self._assembler(traced, sig, argnums, wrt, single)
        if not sig.nested and traced.reusable:  # guarded: _run checks the variants
            self._fast_store(key, variant, assemble, sig, args, check_all=True)
        return assemble(flat)

    def _assembler(self, traced, sig, argnums, wrt, single):
        """flat program outputs -> what this call returns (keeps no argument values)."""
        n_out = len(traced.graph.outvars)
        out_tree, has_aux, with_value = traced.out_tree, self.has_aux, self.with_value
        shape = Signature(sig.treedef, None, sig.dynamic, None, False)
        if not has_aux and len(wrt) == len(argnums) and \
                all(sig.treedef.children[a].kind == "leaf" for a in argnums):
            # w.r.t. plain arrays (the common case): the gradients are the program's
            # outputs after the value, in argnums order; kept cheap (W1's call overhead)
            if single:
                return (lambda flat: (flat[0], flat[1])) if with_value else (lambda flat: flat[1])
            n = len(wrt)
            return (lambda flat: (flat[0], tuple(flat[1:1 + n]))) if with_value \
                else (lambda flat: tuple(flat[1:1 + n]))

        place = _grads_placer(shape, argnums, wrt, single)

        def assemble(flat):
            value = unflatten(out_tree, flat[:n_out]) if has_aux else flat[0]
            grads = place(flat[n_out if has_aux else 1:])
            if with_value:
                return value, grads
            if has_aux:
                return grads, value[1]
            return grads
        return assemble

    def _name(self):
        return "value_and_grad" if self.with_value else "grad"


def _value_only(graph: Graph, has_aux: bool) -> Graph:
    return graph if not has_aux else Graph(graph.invars, graph.eqns, graph.outvars[:1])


def _aux_grad_graph(graph: Graph, wrt):
    """Gradient of the first output while also returning every output (value and aux)."""
    from .tracing import new_trace
    from .transforms.vjp import _read, adopt_forward, backward_pass
    with new_trace(concrete=False) as trace:
        primals, env, tape = adopt_forward(graph, trace)
        outs = [_read(env, o) for o in graph.outvars]
        first = graph.outvars[0].aval
        seeds = [np.ones(first.shape, first.dtype)] + [None] * (len(outs) - 1)
        grads = backward_pass(graph, env, tape, seeds, [graph.invars[i] for i in wrt])
        result = trace.to_graph(outs + grads)
    return simplify(result)


def grad(fn: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False,
         holomorphic: bool = False):
    """Gradient of a scalar function with respect to argument(s) ``argnums``.

    Returns a function with the same arguments returning the gradient, shaped like the
    differentiated argument (nested dicts/lists/tuples are mirrored). With a tuple of
    argnums it returns a tuple of gradients. ``has_aux=True``: ``fn`` returns
    ``(value, aux)`` and the result is ``(grad, aux)``.

    Complex arguments follow JAX's convention: for a real ``f`` of ``z = x + iy`` the
    gradient is ``df/dx - i df/dy`` (its conjugate is the direction of steepest ascent).
    ``holomorphic=True`` differentiates a holomorphic ``f`` of complex arguments with a
    complex output and returns ``f'(z)``.


    >>> import numpy as np, diffprog as dp
    >>> dp.grad(lambda x: np.sum(x ** 2))(np.array([1.0, 2.0]))
    array([2., 4.])
    >>> g = dp.grad(lambda p, x: np.sum(p["w"] * x), argnums=(0, 1))
    >>> g({"w": np.array([1.0, 2.0])}, np.array([3.0, 4.0]))
    ({'w': array([3., 4.])}, array([1., 2.]))
    >>> dp.grad(lambda z: np.real(z) ** 2 + np.imag(z) ** 2)(3.0 + 4.0j)
    np.complex128(6-8j)
    >>> dp.grad(lambda z: z ** 2, holomorphic=True)(1.0 + 1.0j)
    np.complex128(2+2j)
    """
    return _GradFunction(fn, argnums, has_aux=has_aux, holomorphic=holomorphic)


def value_and_grad(fn: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False,
                   holomorphic: bool = False):
    """Like :func:`grad` but returns ``(value, gradient)`` from one compiled program.

    >>> import numpy as np, diffprog as dp
    >>> value, gradient = dp.value_and_grad(lambda x: np.sum(x ** 3))(np.array([1.0, 2.0]))
    >>> float(value), gradient
    (9.0, array([ 3., 12.]))
    """
    return _GradFunction(fn, argnums, has_aux=has_aux, with_value=True,
                         holomorphic=holomorphic)


# ================================================================================ vjp

def vjp(fn: Callable, *primals):
    """Evaluate ``fn(*primals)`` and return ``(out, pullback)``.

    ``pullback(cotangent)`` (cotangent shaped like ``out``) returns a tuple with one
    gradient per primal argument. The forward pass runs once, here; each pullback runs
    only the backward pass on the values it kept.

    >>> import numpy as np, diffprog as dp
    >>> out, pullback = dp.vjp(lambda x, y: x * y, np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    >>> pullback(np.array([1.0, 1.0]))
    (array([3., 4.]), array([1., 2.]))
    """
    t = Transformed(fn)
    sig = t._signature(primals)
    wrt = _float_positions(sig, range(len(sig.dynamic)))
    argnums = tuple(range(len(primals)))

    if sig.nested:
        traced = t._traced(sig)
        _refuse_complex(traced.graph, wrt, "vjp")
        n_out = len(traced.graph.outvars)
        out_flat = _run_nested(traced.graph, traced, sig.dyn_leaves)
        backward = None
    else:
        native = t._native(sig)

        def split(tr):
            _refuse_complex(tr.graph, wrt, "vjp")
            if native:
                return (_engines.Derivative("pullback", tr.graph, tuple(wrt)),)
            return split_known(vjp_graph(tr.graph, wrt, seed="input"), len(tr.graph.invars),
                               len(tr.graph.outvars))
        flat, variant = t._run(sig, ("vjp",), split)
        traced, backward = variant.traced, variant.programs[1]
        n_out = len(traced.graph.outvars)
        out_flat, residuals = list(flat[:n_out]), flat[n_out:]
    out = unflatten(traced.out_tree, out_flat)

    def pullback(cotangent):
        cts, ct_tree = flatten(cotangent)
        if ct_tree != traced.out_tree:
            raise ArgumentError(f"pullback: the cotangent must have the structure of the output "
                                f"{traced.out_tree}; got {ct_tree}")
        for c, o in zip(cts, traced.graph.outvars):
            if tuple(np.shape(c)) != o.aval.shape:
                raise ShapeError(f"pullback: cotangent of shape {tuple(np.shape(c))} for an "
                                 f"output of shape {o.aval.shape}; they must match")
            if np.issubdtype(_leaf_dtype(c), np.complexfloating) and o.aval.dtype.kind != "c":
                raise ArgumentError(
                    f"pullback: a complex cotangent for a real output ({o.aval}): a real "
                    f"output's cotangent is real (JAX refuses it too). Fix: pass its real "
                    f"part (np.real(c)), or make the output complex.")
        if backward is None or any(isinstance(c, Tracer) for c in cts):
            # vjp graph inputs: primals (explicit, then captured), then cotangents
            graph = vjp_graph(traced.graph, wrt, seed="input")
            flat = eval_graph(graph, list(sig.dyn_leaves) + traced.external_values(sig.leaves)
                              + list(traced.captured) + list(cts))
            grads = flat[n_out:]
        else:
            with _on_gpu(sig.gpu):  # the residuals' device, as for the forward run
                grads = backward(*residuals, *cts)
        return _grads_tree(sig, argnums, wrt, grads, single=False)

    return out, pullback


# ================================================================================ jvp

def jvp(fn: Callable, primals: Sequence, tangents: Sequence):
    """Forward mode: ``(fn(*primals), J @ tangents)``.

    >>> import numpy as np, diffprog as dp
    >>> dp.jvp(np.sin, (np.array([0.0, 1.0]),), (np.array([1.0, 1.0]),))  # doctest: +ELLIPSIS
    (array([0.        , 0.84147...]), array([1.        , 0.54030...]))
    """
    for name, given in (("primals", primals), ("tangents", tangents)):
        if not isinstance(given, (tuple, list)):
            raise ArgumentError(
                f"jvp: {name} must be a tuple with one entry per argument of the function "
                f"(as jax.jvp), got {type(given).__name__}. Fix: dp.jvp(f, (x,), (t,)) for a "
                f"function of one argument.")
    primals, tangents = tuple(primals), tuple(tangents)
    t = Transformed(fn)
    sig = t._signature(primals)
    tan_leaves, tan_tree = flatten(tangents)
    if tan_tree != sig.treedef:
        raise ArgumentError(f"jvp: tangents must have the structure of primals {sig.treedef}; "
                            f"got {tan_tree}")
    wrt = _float_positions(sig, range(len(sig.dynamic)))
    tans = []
    for i in wrt:
        pos = sig.dynamic[i]
        p, tg = sig.leaves[pos], tan_leaves[pos]
        if tuple(np.shape(tg)) != tuple(np.shape(p)):
            raise ShapeError(f"jvp: tangent {leaf_paths(sig.treedef)[pos]} has shape "
                             f"{tuple(np.shape(tg))} but its primal has shape {tuple(np.shape(p))}")
        tans.append(tg if isinstance(tg, Tracer) else _as_tangent(tg, p, leaf_paths(sig.treedef)[pos]))
    def build(tr):
        _refuse_complex(tr.graph, wrt, "jvp")
        return jvp_graph(tr.graph, wrt)

    if sig.nested or any(isinstance(x, Tracer) for x in tans):
        traced = t._traced(sig)
        # jvp graph inputs: primals (explicit, then captured), then tangents
        flat = eval_graph(build(traced), list(sig.dyn_leaves) + list(traced.captured) + tans)
    else:
        flat, variant = t._run(sig, ("jvp",), build, extra=list(tans))
        traced = variant.traced
    n_out = len(traced.graph.outvars)
    return unflatten(traced.out_tree, flat[:n_out]), unflatten(traced.out_tree, flat[n_out:])


def _as_tangent(tangent, primal, where: str):
    """The tangent in its primal's dtype, on the primal's device (never an implicit copy)."""
    t_dev, p_dev = _device_of(tangent), _device_of(primal)
    if t_dev is not None and p_dev is not None and t_dev != p_dev:
        raise ArgumentError(
            f"jvp: tangent {where} is a {_DEVICE_WORDS[t_dev]} array but its primal is a "
            f"{_DEVICE_WORDS[p_dev]} array. Fix: put both on one device (cupy.asarray / .get()).")
    dtype = primal.dtype if p_dev == "gpu" else np.result_type(primal)
    if np.issubdtype(_leaf_dtype(tangent), np.complexfloating) and \
            not np.issubdtype(dtype, np.complexfloating):
        raise ArgumentError(
            f"jvp: tangent {where} is complex but its primal is {np.dtype(dtype)}: a real "
            f"value moves along real directions only. Fix: pass a real tangent, or make the "
            f"primal complex (x.astype(complex)) to move it off the real line.")
    if t_dev == "gpu":
        return tangent.astype(dtype, copy=False)
    return np.asarray(tangent, dtype=dtype)


# =========================================================================== jacobian

def jacobian(fn: Callable, argnums: int | Sequence[int] = 0, mode: str = "rev",
             holomorphic: bool = False):
    """Jacobian of ``fn`` w.r.t. argument(s) ``argnums``: shape ``out.shape + x.shape``.

    Arguments and outputs may be pytrees (dicts, lists, tuples), as in JAX: the result
    has the output's structure, and each output leaf holds the argument's structure with
    leaves of shape ``out_leaf.shape + x_leaf.shape``. ``mode="rev"`` runs one pullback
    per output element; ``"fwd"`` one tangent per input element. Pick the one with fewer
    runs.

    Complex values follow JAX's ``jacrev``/``jacfwd``: reverse mode needs real outputs
    (its rows are gradients, in :func:`grad`'s convention), forward mode real arguments
    (its columns are complex tangents); ``holomorphic=True`` takes complex arguments and
    outputs and gives the complex derivative ``df_i/dz_j``.

    >>> import numpy as np, diffprog as dp
    >>> dp.jacobian(lambda x: x ** 2)(np.array([1.0, 2.0]))
    array([[2., 0.],
           [0., 4.]])
    >>> J = dp.jacobian(lambda p: p["a"] * p["b"])({"a": np.array([1.0, 2.0]), "b": 3.0})
    >>> J["a"].shape, J["b"].shape
    ((2, 2), (2,))
    """
    if mode not in ("rev", "fwd"):
        raise ArgumentValueError(f"jacobian: mode must be 'rev' or 'fwd', got {mode!r}")

    def jac(*args, **kwargs):
        if kwargs:
            args = _keywords_placed(fn, args, kwargs, argnums)
        nums = _norm_argnums(argnums, len(args))
        single = isinstance(argnums, (int, np.integer))
        for a in nums:
            _check_jacobian_argument(args[a], a, mode, holomorphic)
        token = _IN_JACOBIAN.set(True)
        try:
            result = (_native_derivative(fn, args, nums, "jacobian", holomorphic)
                      if mode == "rev" else None)
            if result is None:
                result = (_jac_rev if mode == "rev" else _jac_fwd)(fn, args, nums, holomorphic)
        finally:
            _IN_JACOBIAN.reset(token)
        return result[0] if single else tuple(result)

    return functools.wraps(fn)(jac) if hasattr(fn, "__name__") else jac


def _check_jacobian_argument(arg, a: int, mode: str = "rev", holomorphic: bool = False) -> None:
    leaves, _ = flatten(arg)
    paths = leaf_paths(flatten(arg)[1])
    floats = 0
    for leaf, path in zip(leaves, paths):
        if isinstance(leaf, (str, type(None))):
            continue
        if not is_dynamic(leaf):
            raise ArgumentError(
                f"jacobian: argument {a}{path} is a {type(leaf).__name__}, not a float array. "
                f"Fix: pass float arrays (np.asarray(..., dtype=float)) or Python floats, or "
                f"leave argument {a} out of argnums.")
        dtype = _leaf_dtype(leaf)
        if not np.issubdtype(dtype, np.inexact):
            raise NotDifferentiableError(
                f"jacobian: cannot differentiate with respect to argument {a}{path}: its dtype "
                f"is {dtype}, not a floating type. Fix: convert it with .astype(float) or "
                f"leave it out of argnums.")
        is_complex = np.issubdtype(dtype, np.complexfloating)
        if holomorphic and not is_complex:
            raise NotDifferentiableError(
                f"jacobian(holomorphic=True): argument {a}{path} is {dtype}, not complex. Fix: "
                f"pass it as a complex array (x.astype(complex)), or drop holomorphic=True.")
        if is_complex and mode == "fwd" and not holomorphic:
            raise NotDifferentiableError(
                f"jacobian(mode='fwd') needs real arguments (its columns are tangents along "
                f"real unit directions); argument {a}{path} is {dtype}. Fix: mode='rev' for a "
                f"real-valued function, holomorphic=True for a holomorphic one, or pass the "
                f"real and imaginary parts as separate real arguments.")
        floats += 1
    if not floats:
        raise NotDifferentiableError(
            f"jacobian: argument {a} holds no floating-point values. Fix: pass float arrays, "
            f"or leave argument {a} out of argnums.")


def _stack(rows, out_shape, in_shape, dtype):
    from . import numpy_api
    stacked = numpy_api.stack(rows, axis=0) if rows else np.zeros((0,) + tuple(in_shape), dtype)
    return numpy_api.reshape(stacked, tuple(out_shape) + tuple(in_shape))


def _jac_rev(fn, args, nums, holomorphic=False):
    """One pullback per output element; the result as out structure of args structures."""
    out, pullback = vjp(fn, *args)
    out_leaves, out_tree = flatten(out)
    for leaf in out_leaves:
        _check_output_kind(_leaf_dtype(leaf), "jacobian", holomorphic)
    in_flat = [flatten(args[a]) for a in nums]
    rows = [[[[] for _ in leaves] for leaves, _ in in_flat] for _ in out_leaves]
    for o, leaf in enumerate(out_leaves):
        shape, dtype = tuple(np.shape(leaf)), _leaf_dtype(leaf)
        xp = _array_module(leaf)
        for i in range(int(np.prod(shape, dtype=np.int64))):
            cts = [xp.zeros(np.shape(l), _leaf_dtype(l)) for l in out_leaves]
            basis = xp.zeros(cts[o].size, dtype)
            basis[i] = 1
            cts[o] = basis.reshape(shape)
            grads = pullback(unflatten(out_tree, cts))
            for k, a in enumerate(nums):
                for j, g in enumerate(flatten(grads[a])[0]):
                    rows[o][k][j].append(g)
    return _assemble_jacobian(out_leaves, out_tree, in_flat, lambda o, k, j, out_shape, in_leaf:
                              _stack(rows[o][k][j], out_shape, np.shape(in_leaf),
                                     _leaf_dtype(out_leaves[o])))


def _jac_fwd(fn, args, nums, holomorphic=False):
    """One tangent per input element; the same structure as :func:`_jac_rev`."""
    in_flat = [flatten(args[a]) for a in nums]
    columns: dict = {}  # (k, j) -> list of output tangent leaves, one per input element
    out = None
    for k, a in enumerate(nums):
        leaves, tree = in_flat[k]
        for j, leaf in enumerate(leaves):
            if not is_dynamic(leaf):
                continue
            shape = tuple(np.shape(leaf))
            xp = _array_module(leaf)
            cols = columns[(k, j)] = []
            for e in range(int(np.prod(shape, dtype=np.int64))):
                basis = xp.zeros(int(np.prod(shape, dtype=np.int64)), _leaf_dtype(leaf))
                basis[e] = 1
                tangent_leaves = [basis.reshape(shape) if m == j else _zero_tangent(l)
                                  for m, l in enumerate(leaves)]
                tangents = tuple(unflatten(tree, tangent_leaves) if i == a else _zero_tangent(v)
                                 for i, v in enumerate(args))
                out, t = jvp(fn, args, tangents)
                cols.append(flatten(t)[0])
    if out is None:
        out = fn(*args)
    out_leaves, out_tree = flatten(out)
    if holomorphic:
        for leaf in out_leaves:
            _check_output_kind(_leaf_dtype(leaf), "jacobian", holomorphic)

    def block(o, k, j, out_shape, in_leaf):
        from . import numpy_api
        cols = [c[o] for c in columns.get((k, j), [])]
        in_shape = tuple(np.shape(in_leaf))
        if not cols:
            return np.zeros(out_shape + in_shape, _leaf_dtype(out_leaves[o]))
        return numpy_api.reshape(numpy_api.stack(cols, axis=-1), out_shape + in_shape)
    return _assemble_jacobian(out_leaves, out_tree, in_flat, block)


def _assemble_jacobian(out_leaves, out_tree, in_flat, block):
    """For each differentiated argument: the output's structure holding, per output leaf,
    the argument's structure of ``block(o, k, j, out_shape, in_leaf)`` arrays."""
    results = []
    for k, (in_leaves, in_tree) in enumerate(in_flat):
        per_out = []
        for o, out_leaf in enumerate(out_leaves):
            out_shape = tuple(np.shape(out_leaf))
            per_in = [block(o, k, j, out_shape, leaf) if is_dynamic(leaf) else None
                      for j, leaf in enumerate(in_leaves)]
            per_out.append(unflatten(in_tree, per_in))
        results.append(unflatten(out_tree, per_out))
    return results


def _zero_tangent(v):
    from .tree import tree_map
    return tree_map(lambda l: _array_module(l).zeros(np.shape(l), l.dtype if hasattr(l, "dtype")
                                                     else float)
                    if is_dynamic(l) else l, v)


def _leaf_dtype(leaf) -> np.dtype:
    """The dtype of an argument leaf: an array's own, or NumPy's for a Python number."""
    return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.result_type(leaf)


def _array_module(x):
    """CuPy for CuPy arrays (unit vectors and zeros must live on the primal's device)."""
    return sys.modules["cupy"] if _device_of(x) == "gpu" else np


def hessian(fn: Callable, argnums: int = 0, holomorphic: bool = False):
    """Hessian of a scalar function: forward-mode Jacobian of the reverse-mode gradient.

    Real arguments, or complex ones with ``holomorphic=True`` (then ``f''(z)``); as in
    JAX, a real function of complex arguments has no complex Hessian here: pass the real
    and imaginary parts as real arguments.

    >>> import numpy as np, diffprog as dp
    >>> dp.hessian(lambda x: np.sum(x ** 3))(np.array([1.0, 2.0]))
    array([[ 6.,  0.],
           [ 0., 12.]])
    """
    by_transforms = jacobian(grad(fn, argnums, holomorphic=holomorphic), argnums, mode="fwd",
                             holomorphic=holomorphic)

    def hess(*args, **kwargs):
        if kwargs:
            args = _keywords_placed(fn, args, kwargs, argnums)
        nums = _norm_argnums(argnums, len(args))
        if not holomorphic:
            for a in nums:
                if any(is_dynamic(l) and np.issubdtype(_leaf_dtype(l), np.complexfloating)
                       for l in flatten(args[a])[0]):
                    raise NotDifferentiableError(
                        f"hessian: argument {a} is complex. A holomorphic function needs "
                        f"holomorphic=True (the result is f''(z)); a real function of complex "
                        f"values has no complex Hessian (JAX refuses it too): pass the real "
                        f"and imaginary parts as separate real arguments.")
        token = _IN_JACOBIAN.set(True)
        try:
            native = _native_derivative(fn, args, nums, "hessian", holomorphic)
            return by_transforms(*args) if native is None else native[0]
        finally:
            _IN_JACOBIAN.reset(token)

    return functools.wraps(fn)(hess) if hasattr(fn, "__name__") else hess


def _native_derivative(fn, args, nums, kind: str, holomorphic: bool = False):
    """Jacobians/Hessians from an engine that differentiates natively (julia: Zygote), or
    None where the engine does not (or the call is nested in a trace). The checks of
    complex outputs are the transforms' own (JAX's jacrev/hessian rules)."""
    t = Transformed(fn)
    sig = t._signature(args)
    if not t._native(sig) or (kind == "hessian" and len(nums) != 1):
        return None
    if any(sig.treedef.children[a].kind != "leaf" for a in nums):
        return None  # pytree arguments: the transforms path builds their structure
    wrt = _wrt_positions(sig, nums)
    if holomorphic:
        _check_holomorphic_inputs(sig, wrt, kind)

    def build(traced):
        _refuse_complex(traced.graph, wrt, kind)
        if kind == "hessian":
            _check_scalar_output(traced, "hessian", holomorphic=holomorphic)
            if traced.graph.outvars[0].aval.shape != ():
                raise _PytreeOutput()  # a one-element array: the transforms' path
        elif traced.out_tree.kind != "leaf":
            raise _PytreeOutput()
        else:
            _check_output_kind(traced.graph.outvars[0].aval.dtype, "jacobian", holomorphic)
        return (_engines.Derivative(kind, traced.graph, tuple(wrt)),)

    try:
        flat, _ = t._run(sig, (kind, nums, holomorphic), build)
    except _PytreeOutput:
        return None
    return list(flat[1:]) if kind == "jacobian" else list(flat)


class _PytreeOutput(Exception):
    """A jacobian of a pytree-valued function: built by the transforms, not natively."""


# =============================================================================== vmap

def vmap(fn: Callable, in_axes=0, out_axes=0, axis_size: int | None = None):
    """Vectorise ``fn`` over a batch axis: ``vmap(f)(xs)`` equals stacking ``f(x)`` for
    each ``x`` in ``xs``, computed as one batched program (as JAX's ``vmap``).

    ``in_axes``: the batch axis of each positional argument: an int, None (not batched:
    shared by every example), or per argument a tuple of those; an entry may also be a
    pytree prefix of its argument (``{"w": None, "b": 0}``). ``out_axes``: where the
    batch axis goes in each output (an int, or a pytree prefix of the output; None only
    for outputs that do not depend on the batch). ``axis_size``: the batch size when no
    argument is batched. Composes with every transform: ``vmap(grad(f))`` gives
    per-example gradients, ``grad(vmap(f))``, ``jacobian(vmap(f))`` and nested vmaps work.

    The function is traced once for one example, without values: Python ``if`` on a
    batched value is a ConcretizationError (use ``np.where`` or ``dp.cond``).

    >>> import numpy as np, diffprog as dp
    >>> dp.vmap(lambda x: np.sum(x ** 2))(np.array([[1.0, 2.0], [3.0, 4.0]]))
    array([ 5., 25.])
    >>> per_example = dp.vmap(dp.grad(lambda w, x: np.sum(w * x) ** 2), in_axes=(None, 0))
    >>> per_example(np.array([1.0, 1.0]), np.array([[1.0, 0.0], [0.0, 2.0]]))
    array([[2., 0.],
           [0., 8.]])
    """
    batched = _Batched(fn, in_axes, out_axes, axis_size)
    wrapped = Differentiable(batched, fast_math=fn.fast_math if isinstance(fn, Transformed)
                             else None)
    functools.update_wrapper(wrapped, fn, updated=()) if hasattr(fn, "__name__") else None
    return wrapped


class _Batched:
    """The batched function that vmap compiles: traces ``fn`` for one example and binds
    the batched computation (see diffprog.transforms.batch)."""

    def __init__(self, fn, in_axes, out_axes, axis_size):
        _check_axes_spec(in_axes, "in_axes")
        _check_axes_spec(out_axes, "out_axes")
        if axis_size is not None and (isinstance(axis_size, bool) or
                                      not isinstance(axis_size, (int, np.integer)) or axis_size < 0):
            raise ArgumentValueError(f"vmap: axis_size must be a non-negative int, got "
                                     f"{axis_size!r}")
        self.fn, self.in_axes, self.out_axes, self.axis_size = fn, in_axes, out_axes, axis_size
        self.__name__ = getattr(fn, "__name__", "vmapped")
        self.__qualname__ = f"vmap({getattr(fn, '__qualname__', self.__name__)})"

    def __call__(self, *args):
        from .tracing import new_trace
        from .transforms.batch import batch_eval, moved, with_batch
        axes = _leaf_axes(self.in_axes, args)
        leaves, in_tree = flatten(args)
        size = _batch_size(leaves, axes, in_tree, self.axis_size)
        with new_trace(concrete=False) as trace:
            trace.purpose = f"the function given to dp.vmap ({self.__qualname__})"
            example = []
            for leaf, axis in zip(leaves, axes):
                if axis is None:
                    example.append(leaf)
                else:
                    shape = tuple(np.shape(leaf))
                    aval = Aval(shape[:axis] + shape[axis + 1:], _leaf_dtype(leaf))
                    example.append(trace.new_input(aval))
            fn = externals.for_nested_call(self.fn, trace_stack())  # its reads: the root's
            with externals.draws_refused_in("the function given to dp.vmap"):
                out = fn(*unflatten(in_tree, example, dict_orders(args)))
            flat_out, out_tree = flatten(out)
            graph = trace.to_graph(flat_out)
        batched = [leaf for leaf, axis in zip(leaves, axes) if axis is not None]
        dims = [axis for axis in axes if axis is not None]
        captured = [o for o, _ in trace.captured]
        outs, out_dims = batch_eval(graph, batched + captured,
                                    dims + [None] * len(captured), size)
        placed = []
        for o, d, axis in zip(outs, out_dims, _out_leaf_axes(self.out_axes, out_tree)):
            if o is None:  # a None in the output stays None
                placed.append(o)
                continue
            if axis is None:
                if d is not None:
                    raise ArgumentError(
                        "vmap: out_axes is None for an output that depends on the batch. "
                        "Fix: give it an axis (out_axes=0), or return it from outside the "
                        "batched computation.")
                placed.append(o)
                continue
            o = with_batch(o, d, size)
            rank = np.ndim(o)
            if not -rank <= axis < rank:
                raise ArgumentValueError(f"vmap: out_axes={axis} is out of range for an output "
                                         f"of {rank - 1} dimension(s) per example.")
            placed.append(moved(o, 0, axis % rank))
        return unflatten(out_tree, placed)


def _check_axes_spec(spec, what: str) -> None:
    leaves, _ = flatten(spec)
    for leaf in leaves:
        if leaf is not None and (isinstance(leaf, bool) or not isinstance(leaf, (int, np.integer))):
            raise ArgumentValueError(f"vmap: {what} must hold ints or None (per argument, or as "
                                     f"a pytree prefix of it); found {leaf!r}.")


def _leaf_axes(in_axes, args) -> list:
    """The batch axis of every argument leaf (None: shared), from a prefix spec."""
    if isinstance(in_axes, (list, tuple)) and not _is_axis(in_axes):
        if len(in_axes) != len(args):
            raise ArgumentValueError(
                f"vmap: in_axes has {len(in_axes)} entries but the function was called with "
                f"{len(args)} positional argument(s). Fix: one entry per argument (an int, "
                f"None, or a pytree prefix of the argument).")
        per_arg = list(in_axes)
    else:
        per_arg = [in_axes] * len(args)
    axes = []
    for i, (spec, arg) in enumerate(zip(per_arg, args)):
        axes.extend(_prefix_axes(spec, arg, f"argument {i}"))
    return axes


def _is_axis(spec) -> bool:
    return spec is None or (isinstance(spec, (int, np.integer)) and not isinstance(spec, bool))


def _prefix_axes(spec, tree, where: str) -> list:
    leaves, treedef = flatten(tree)
    if _is_axis(spec):
        out = []
        for leaf, path in zip(leaves, leaf_paths(treedef)):
            out.append(_leaf_axis(spec, leaf, where + path))
        return out
    spec_leaves, spec_tree = flatten(spec)
    if treedef.kind != spec_tree.kind or len(treedef.children) != len(spec_tree.children) or \
            treedef.keys != spec_tree.keys:
        raise ArgumentValueError(f"vmap: in_axes for {where} has structure {spec_tree}, which is "
                                 f"not a prefix of the argument's structure {treedef}.")
    out = []
    keys = treedef.keys if treedef.kind == "dict" else range(len(treedef.children))
    for key in keys:  # in the order flatten puts the leaves
        out.extend(_prefix_axes(spec[key], _child(tree, key), f"{where}[{key!r}]"))
    return out


def _child(tree, key):
    return tree[key] if not hasattr(tree, "_fields") else tuple(tree)[key]


def _leaf_axis(axis, leaf, where: str):
    if axis is None or not is_dynamic(leaf):
        return None
    rank = np.ndim(leaf)
    if not -rank <= axis < rank:
        raise ArgumentValueError(
            f"vmap: in_axes={axis} is out of range for {where}, which has {rank} dimension(s) "
            f"(shape {tuple(np.shape(leaf))}). Fix: use an axis between {-rank} and "
            f"{rank - 1}, or None to share it across the batch." if rank else
            f"vmap: in_axes={axis} for {where}, a scalar: it has no axis to batch over. Fix: "
            f"use None for it (shared by every example).")
    return axis % rank


def _batch_size(leaves, axes, in_tree, axis_size) -> int:
    paths = leaf_paths(in_tree)
    sizes = [(np.shape(leaf)[axis], paths[i]) for i, (leaf, axis) in enumerate(zip(leaves, axes))
             if axis is not None]
    if not sizes:
        if axis_size is None:
            raise ArgumentValueError("vmap: no argument is batched (every in_axes is None). "
                                     "Fix: give axis_size=n, or batch an argument.")
        return int(axis_size)
    first, where = sizes[0]
    for n, other in sizes[1:]:
        if n != first:
            raise ShapeError(f"vmap: batch sizes differ: args{where} has {first} examples along "
                             f"its batch axis, args{other} has {n}. Fix: pass arguments with "
                             f"the same batch size, or in_axes=None for shared ones.")
    if axis_size is not None and axis_size != first:
        raise ShapeError(f"vmap: axis_size={axis_size} but args{where} has {first} examples.")
    return first


def _out_leaf_axes(out_axes, out_tree: TreeDef, where: str = "the output") -> list:
    """The out_axes entry of every output leaf, from a prefix of the output's structure."""
    if _is_axis(out_axes):
        return [out_axes] * out_tree.num_leaves
    spec_leaves, spec_tree = flatten(out_axes)
    if out_tree.kind == "leaf" or spec_tree.kind != out_tree.kind or \
            len(spec_tree.children) != len(out_tree.children) or spec_tree.keys != out_tree.keys:
        raise ArgumentValueError(f"vmap: out_axes has structure {spec_tree}, which is not a "
                                 f"prefix of {where}'s structure {out_tree}.")
    keys = out_tree.keys if out_tree.kind == "dict" else range(len(out_tree.children))
    out = []
    for k, child in zip(keys, out_tree.children):
        out.extend(_out_leaf_axes(out_axes[k], child, f"{where}[{k!r}]"))
    return out
