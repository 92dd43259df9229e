"""Values a traced function reads that are not its arguments.

Ordinary Python reads globals, closure cells, attributes and module attributes freely,
and users change them between calls: ``W = new_weights`` in a notebook, ``c += 1`` on a
closed-over array, ``model.W = ...``. A compiled program that kept the values seen while
tracing would silently compute with stale data. So while the root trace of a call runs
(see :func:`diffprog.api.trace_call`), every such read goes through :class:`ExternalReads`,
which knows the *path* of the value (``global 'model' -> .layers[0] -> .W``) and either

* **lifts** it: float arrays and floats become inputs of the program, read again along
  their path at every call (rebinding and in-place changes are both seen, and everything
  computed from them is traced), or
* **guards** it: ints, strings, flags, index arrays and masks (by value, bitwise), other
  arrays that cannot be lifted (by content up to ``CONTENT_GUARD_MAX`` elements, by
  identity above), classes and functions (by identity); a changed value retraces.

How the reads are seen, without touching the user's objects (other threads may be using
them): the function runs as a copy over the same code (``types.FunctionType``) whose
globals are a lazy mapping (a read resolves, lifts or guards that name then, so only what
is read is guarded), whose closure cells hold the lifted values, and whose helpers (plain
Python functions it reads) are rebuilt the same way. Objects it reads (arguments that are
instances of user classes, ``self`` of a bound method, objects in globals and closures)
are replaced by *copies* of the same class whose attributes are lifted/guarded the same
way, recursively through attributes, lists, tuples and dicts, with their methods rebuilt.

A function that assigns globals or nonlocals, or (see diffprog.randomness) draws random
numbers, has effects a compiled program would not repeat: such a function is traced
anew at every call instead, so its effects happen at every call as plain Python's do.

Not seen (documented in the README): objects of classes from installed libraries and
``__slots__`` classes (guarded by identity), containers over 256 items, values more than
``MAX_DEPTH`` steps from a root, and code reached only through ``getattr`` with a computed
name. Identity checks (``isinstance(W, np.ndarray)``, ``obj is other``) see the stand-ins.
"""
from __future__ import annotations

import dis
import enum
import os
import struct
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import effects, numpy_standin
from .ir import Aval, aval_of
from .randomness import is_generator

#: how many steps (attribute, item) from a root a value may be and still be seen
MAX_DEPTH = 8
#: containers with more items are guarded by identity, not copied
MAX_CONTAINER = 256
#: guarded (not lifted) arrays up to this many elements are compared by content at each
#: call, bigger ones by identity (a copy and a comparison per call would cost too much)
CONTENT_GUARD_MAX = 1 << 20

_STATIC_TYPES = (int, bool, str, bytes, type(None), complex)
_LIBRARY_DIRS = tuple({os.path.dirname(os.path.dirname(os.__file__)), sys.prefix,
                       sys.base_prefix, os.path.dirname(os.path.abspath(__file__)),
                       os.path.dirname(np.__file__)})


class ExternalChanged(Exception):
    """A value read at call time no longer fits the program (private: the API turns it
    into a retrace, like a failed guard). ``line`` says which value, for warnings."""

    def __init__(self, where: str):
        super().__init__(f"{where} changed since the program was traced")
        self.line = where


# ------------------------------------------------------------------------------ paths

@dataclass(frozen=True)
class Path:
    """How to read a value at call time: a root, then attribute/item steps."""

    root: tuple  # ("leaf", position) | ("global", dict, name) | ("cell", cell) | ("const", obj)
    steps: tuple = ()
    where: str = ""

    def attr(self, name: str) -> "Path":
        return Path(self.root, self.steps + (("attr", name),), f"{self.where}.{name}")

    def item(self, key) -> "Path":
        return Path(self.root, self.steps + (("item", key),), f"{self.where}[{key!r}]")

    @property
    def key(self) -> tuple:
        kind, *rest = self.root
        ident = tuple(id(r) if kind in ("global", "cell", "const") and i == 0 else r
                      for i, r in enumerate(rest))
        return (kind,) + ident + self.steps

    def read(self, leaves):
        kind = self.root[0]
        if kind == "leaf":
            value = leaves[self.root[1]]
        elif kind == "global":
            value = self.root[1][self.root[2]]
        elif kind == "cell":
            value = self.root[1].cell_contents
        else:
            value = self.root[1]
        for step, name in self.steps:
            value = getattr(value, name) if step == "attr" else value[name]
        return value


@dataclass
class External:
    """One value read along ``path``: a program input (``lifted``, checked against
    ``aval``) or a guard (``check(value) -> bool``). A guard's check is made from
    ``make_check(value)`` with the value at the END of the trace: what the trace itself
    changed (a counter a helper bumps, a table filled on first use) is what the next
    call must find."""

    path: Path
    lifted: bool
    aval: Aval | None = None
    make_check: Callable | None = field(default=None, repr=False)
    check: Callable | None = field(default=None, repr=False)


# ----------------------------------------------------------------------- comparisons

def _bits(x):
    """A key equal for values with the same bits: 0.0 and -0.0 differ, NaN equals NaN."""
    if isinstance(x, float):
        return (float, struct.pack("<d", x))
    if isinstance(x, complex):
        return (complex, struct.pack("<dd", x.real, x.imag))
    if isinstance(x, np.generic):
        return (type(x), x.tobytes())
    if isinstance(x, tuple):
        return (tuple,) + tuple(_bits(v) for v in x)
    if isinstance(x, frozenset):  # members by bits too: {2}, {2.0} and {True} are equal sets
        return (type(x), frozenset(_bits(v) for v in x))
    return (type(x), x)


def value_key(x):
    """A hashable key of a static value that tells apart what NumPy tells apart."""
    return _bits(x)


def _same_array(expected: np.ndarray):
    """Same type, shape, dtype and bits (NaN equals NaN, -0.0 differs from 0.0)."""
    copy = np.array(expected, order="C", copy=True)  # (ascontiguousarray makes 0-d 1-d)
    raw = copy.reshape(-1).view(np.uint8)

    def check(value):
        if type(value) is not np.ndarray or value.shape != copy.shape or value.dtype != copy.dtype:
            return False
        return np.array_equal(np.array(value, order="C").reshape(-1).view(np.uint8), raw)
    return check


def _same_layout(expected):
    """A list/tuple of the same length, a dict with the same keys in the same order."""
    kind = type(expected)
    if isinstance(expected, dict):
        keys = tuple(expected)
        return lambda v: type(v) is kind and tuple(v) == keys
    n = len(expected)
    return lambda v: type(v) is kind and len(v) == n


def _same_method(expected):
    func = expected.__func__
    return lambda v: getattr(v, "__func__", None) is func


def _same_value(expected):
    try:
        key = _bits(expected)
        hash(key)
    except TypeError:  # unhashable members: the same object
        return _same_object(expected)
    return lambda value: type(value) is type(expected) and _bits(value) == key


def _same_object(expected):
    return lambda value: value is expected


def _same_sparse(expected):
    """The same scipy.sparse matrix, with the same arrays: a CSR/CSC matrix's own arrays are
    the program's constants (their values changed in place are seen), so its data,
    indices and indptr must still be those arrays (``S.data = new`` or ``S[i, j] = v``
    makes new ones); other formats are converted when traced, so their entries are
    compared (a COO matrix's ``C.data *= 2`` retraces)."""
    shape, form = expected.shape, expected.format
    if form in ("csr", "csc"):
        data, indices, indptr = expected.data, expected.indices, expected.indptr
        return lambda v: (v is expected and v.shape == shape and v.data is data
                          and v.indices is indices and v.indptr is indptr)
    coo = expected.tocoo(copy=True)
    entries = (coo.row.copy(), coo.col.copy(), coo.data.copy())

    def check(value):
        if value is not expected or value.shape != shape or value.format != form:
            return False
        now = value.tocoo()
        return all(np.array_equal(a, b) for a, b in zip((now.row, now.col, now.data), entries))
    return check


def _same_members(expected: set):
    """The same set object, holding the same members (by bits) as at the end of the trace:
    a set the caller changes in place (``S.add(3)``) retraces."""
    try:
        key = _bits(frozenset(expected))
        hash(key)
    except TypeError:
        return _same_object(expected)
    return lambda value: value is expected and _bits(frozenset(value)) == key


# ------------------------------------------------------------------------- the reads

def _liftable(value) -> bool:
    """Data the program takes as an input: plain float arrays, NumPy and Python floats."""
    if type(value) is float:
        return True
    if type(value) is np.ndarray or isinstance(value, np.floating):
        return value.dtype.kind == "f"
    return False


def _is_static(value) -> bool:
    """Compared by value: numbers (and their subclasses, enum members), strings, None,
    dtypes, and tuples of those."""
    if type(value) in (tuple, frozenset):
        return len(value) <= 64 and all(_is_static(v) for v in value)
    return isinstance(value, (int, float, complex, str, bytes, type(None), np.dtype, np.generic,
                              enum.Enum))


def is_user_code(obj) -> bool:
    """A module, or a class's module, outside installed libraries, the standard library
    and diffprog (``__main__``, notebooks, the user's own files)."""
    module = obj if isinstance(obj, types.ModuleType) else \
        sys.modules.get(getattr(obj, "__module__", None) or "")
    if module is None:  # made by exec'd code (a notebook cell, a test): the user's
        return True
    filename = getattr(module, "__file__", None)
    if filename is None:  # built-in modules, and __main__ of an interactive session
        return module.__name__ == "__main__"
    path = os.path.abspath(filename)
    return not ("site-packages" in path or "dist-packages" in path or path.startswith(_LIBRARY_DIRS))


def _is_user_function(fn) -> bool:
    return isinstance(fn, types.FunctionType) and is_user_file(fn.__code__.co_filename)


def is_user_file(filename: str) -> bool:
    """Is code from ``filename`` the user's (not an installed library, the standard
    library, NumPy or diffprog)?"""
    if filename.startswith("<"):  # notebooks, exec'd code: the user's
        return True
    path = os.path.abspath(filename)
    return not ("site-packages" in path or "dist-packages" in path or path.startswith(_LIBRARY_DIRS))


class ExternalReads:
    """The externals of one root trace, in the order their inputs were created."""

    def __init__(self, trace, lift: bool = True, watch=None, no_lift: frozenset = frozenset()):
        self.trace = trace
        self.lift = lift  # False: guard everything (a retrace after lifting failed)
        self.no_lift = no_lift  # path keys to guard, not lift (a trace needed them plain)
        self.watch = watch  # diffprog.randomness.RandomWatch: generators read are watched
        self.items: list[External] = []
        self._lifted_paths: dict = {}  # id(input var) -> path key
        self.impure: list[str] = []  # effects a compiled program would not repeat
        self.lifted = 0
        self._seen: dict = {}
        self._rebuilt: dict = {}
        self._views: dict = {}
        self.names: set = set()  # names the rebuilt code mentions (see may_draw)

    # ------------------------------------------------------------------ at trace time
    def read(self, value, path: Path, depth: int = 0):
        """What the traced code sees instead of ``value`` read along ``path``."""
        key = path.key
        if key in self._seen:
            return self._seen[key][1]
        seen = self._resolve(value, path, depth)
        self._seen[key] = (value, seen)
        return seen

    def _resolve(self, value, path: Path, depth: int):
        if self.lift and _liftable(value) and path.key not in self.no_lift:
            tracer = self.trace.new_input(aval_of(value), value)
            self.items.append(External(path, True, aval=tracer.aval))
            self._lifted_paths[id(tracer._var)] = path.key
            self.lifted += 1
            return tracer
        if is_generator(value):
            if self.watch is not None:
                self.watch.add(value, path.where, _body_purpose())
            return value
        seen = numpy_standin.standin(value)  # np.array([x, y]) of traced values, np.mean([a, b])
        if seen is not value:
            if not isinstance(value, types.ModuleType):
                self._guard(path, _same_object)  # a rebound name retraces
            return seen
        if type(value).__module__.startswith("scipy.sparse") and hasattr(value, "format"):
            self._guard(path, _same_sparse)  # (before containers: a dok_matrix is a dict)
            return value
        effect = effects.standin(value)  # the clock, files, entropy: traced at every call
        if effect is not value:
            self._guard(path, _same_object)
            return effect
        if hasattr(type(value), "__next__") and hasattr(type(value), "__iter__"):
            effects.iterator_read(self, path.where)
        if _is_static(value):
            self._guard(path, _same_value)
        elif type(value) is np.ndarray:
            small = value.size <= CONTENT_GUARD_MAX or value.dtype.kind in "bi"
            self._guard(path, _same_array if small else _same_object)
        elif isinstance(value, types.FunctionType):
            self._guard(path, _same_object)
            return self.rebuilt(value, depth)
        elif isinstance(value, types.MethodType) and _is_user_function(value.__func__):
            self._guard(path, _same_method)
            owner = self.read(value.__self__, path.attr("__self__"), depth + 1)
            return types.MethodType(self.rebuilt(value.__func__, depth), owner)
        elif depth < MAX_DEPTH and isinstance(value, (list, tuple, dict)):
            return self._container(value, path, depth)
        elif depth < MAX_DEPTH and isinstance(value, types.ModuleType) and is_user_code(value):
            return _ModuleView(value, self, path, depth)
        elif depth < MAX_DEPTH and is_user_code(type(value)) and not isinstance(value, type):
            return self._object(value, path, depth)
        elif isinstance(value, type) and is_user_code(value) and depth < MAX_DEPTH:
            self._guard(path, _same_object)
            return _ClassView(value, self, path, depth)
        elif type(value) is set:
            self._guard(path, _same_members)
        else:  # a NumPy ufunc, a builtin, a library's object or class: rebinding retraces
            self._guard(path, _same_object)
        return value

    def _guard(self, path: Path, make_check: Callable) -> None:
        self.items.append(External(path, False, make_check=make_check))

    def _container(self, value, path: Path, depth: int):
        kind = type(value)
        if len(value) > MAX_CONTAINER or (kind not in (dict, list, tuple) and
                                          not hasattr(value, "_fields")):
            self._guard(path, _same_object)  # too big, or a container class of its own
            return value
        # Nothing substituted inside: the function gets the container itself (it may append
        # to it), guarded by identity; otherwise a copy, guarded by its layout.
        guard = External(path, False, make_check=_same_object)
        self.items.append(guard)
        if isinstance(value, dict):
            seen = {k: self.read(v, path.item(k), depth + 1) for k, v in value.items()}
            if all(seen[k] is v for k, v in value.items()):
                return value
            guard.make_check = _same_layout
            return seen
        items = [self.read(v, path.item(i), depth + 1) for i, v in enumerate(value)]
        if all(s is v for s, v in zip(items, value)):
            return value
        guard.make_check = _same_layout
        if kind is list:
            return items
        if kind is tuple:
            return tuple(items)
        try:  # a namedtuple
            return kind(*items)
        except TypeError:
            return value

    def _object(self, obj, path: Path, depth: int):
        """A stand-in for ``obj`` (which is never modified): an instance of a subclass made
        for this trace, whose attributes are read from ``obj`` along ``path`` when the code
        first reads them, and whose methods are rebuilt."""
        cls = type(obj)
        self._guard(path.attr("__class__"), _same_object)
        view = self._view_class(cls, depth)
        if view is None:
            self._guard(path, _same_object)  # a class we cannot stand in for
            return obj
        try:
            copy = object.__new__(view)
        except TypeError:  # a builtin base (int, dict subclasses...): guard, run the real one
            self._guard(path, _same_object)
            return obj
        copy.__dict__[_VIEW_KEY] = (obj, path, depth, self)
        return copy

    def _view_class(self, cls, depth: int):
        known = self._views.get(cls)
        if known is not None or cls in self._views:
            return known
        namespace = {"__getattr__": _view_getattr, "__module__": cls.__module__,
                     "__qualname__": cls.__qualname__}
        for klass in reversed(cls.__mro__):
            if klass is object or not is_user_code(klass):
                continue
            for name, value in vars(klass).items():
                seen = self._class_member(name, value, depth)
                if seen is not None:
                    namespace[name] = seen
        try:
            view = type(cls)(cls.__name__, (cls,), namespace)
        except Exception:  # a metaclass or __init_subclass__ that refuses: no stand-in
            view = None
        self._views[cls] = view
        return view

    def _class_member(self, name: str, value, depth: int):
        """A class member as the stand-in class holds it: methods rebuilt, data read per
        instance (:class:`_ClassData`); None keeps the original."""
        if name in _KEEP_MEMBERS:
            return None
        if isinstance(value, types.FunctionType):
            return self.rebuilt(value, depth + 1)
        if isinstance(value, staticmethod) and isinstance(value.__func__, types.FunctionType):
            return staticmethod(self.rebuilt(value.__func__, depth + 1))
        if isinstance(value, classmethod) and isinstance(value.__func__, types.FunctionType):
            return classmethod(self.rebuilt(value.__func__, depth + 1))
        if isinstance(value, property):
            getter = self.rebuilt(value.fget, depth + 1) if value.fget is not None else None
            return property(getter, value.fset, value.fdel, value.__doc__)
        if name.startswith("__") or callable(value) or isinstance(value, (classmethod, staticmethod)):
            return None
        return _ClassData(name)

    # ---------------------------------------------------------------- functions
    def rebuilt(self, fn: Callable, depth: int = 0) -> Callable:
        """``fn`` running on stand-ins for what it reads (see the module doc)."""
        if not _is_user_function(fn):
            return fn
        known = self._rebuilt.get(id(fn))
        if known is not None:
            return known[1]
        self.names |= _all_names(fn.__code__)
        written = _written_names(fn.__code__)
        if written:
            self.impure.append(f"{fn.__qualname__} assigns "
                               f"{', '.join(sorted(n for _, n in written))}")
            self._rebuilt[id(fn)] = (fn, fn)
            return fn
        glob = _Globals(fn.__globals__, self)
        self._rebuilt[id(fn)] = (fn, fn)  # a cell or default holding fn keeps the original
        defaults = self._defaults(fn)
        if fn.__closure__:
            new = types.FunctionType(fn.__code__, glob, fn.__name__, defaults, self._cells(fn))
        else:
            new = types.FunctionType(fn.__code__, glob, fn.__name__, defaults)
        self._rebuilt[id(fn)] = (fn, new)  # recursion through a global name finds the copy
        if fn.__kwdefaults__:
            base = Path(("const", fn), where=f"keyword default of {fn.__qualname__}")
            new.__kwdefaults__ = {k: self.read(v, base.attr("__kwdefaults__").item(k))
                                  for k, v in fn.__kwdefaults__.items()}
        new.__qualname__ = fn.__qualname__
        new.__dict__.update(fn.__dict__)
        return new

    def _defaults(self, fn: types.FunctionType):
        """Default values are objects made once: an array default changed in place is read
        again at each call, like any other external array."""
        if not fn.__defaults__:
            return fn.__defaults__
        base = Path(("const", fn), where=f"default of {fn.__qualname__}").attr("__defaults__")
        return tuple(self.read(v, base.item(i)) for i, v in enumerate(fn.__defaults__))

    def path_of(self, tracer) -> frozenset | None:
        """The paths of the lifted values ``tracer`` was computed from (in this root
        trace), or None: what a retrace should keep plain when ``tracer`` had to be."""
        var = getattr(tracer, "_var", None)
        if var is None or getattr(tracer, "_trace", None) is not self.trace:
            return None
        wanted, found = {id(var)}, set()
        for eqn in reversed(self.trace.eqns):
            if any(id(o) in wanted for o in eqn.outputs):
                wanted.update(id(a) for a in eqn.inputs if hasattr(a, "aval") and
                              not hasattr(a, "value"))
        for vid in wanted:
            if vid in self._lifted_paths:
                found.add(self._lifted_paths[vid])
        return frozenset(found) or None

    def _cells(self, fn: types.FunctionType) -> tuple:
        cells = []
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__):
            try:
                value = cell.cell_contents
            except ValueError:  # not assigned yet
                cells.append(cell)
                continue
            path = Path(("cell", cell), where=f"variable {name!r} closed over by {fn.__qualname__}")
            seen = self.read(value, path)
            cells.append(cell if seen is value else types.CellType(seen))
        return tuple(cells)

    def root_function(self, fn: Callable) -> Callable:
        """The function a root call traces: ``fn`` rebuilt; a bound method, a partial or a
        callable object becomes its function over stand-ins of what it holds."""
        if isinstance(fn, types.MethodType):
            owner = self.read(fn.__self__, Path(("const", fn.__self__), where="self"))
            return types.MethodType(self.rebuilt(fn.__func__), owner)
        if isinstance(fn, _partial_type()):
            base = Path(("const", fn), where=f"functools.partial of {getattr(fn.func, '__name__', '?')}")
            args = [self.read(a, base.attr("args").item(i)) for i, a in enumerate(fn.args)]
            kwargs = {k: self.read(v, base.attr("keywords").item(k)) for k, v in fn.keywords.items()}
            return _partial_type()(self.root_function(fn.func), *args, **kwargs)
        if not isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, type)) and \
                is_user_code(type(fn)) and callable(fn) and hasattr(fn, "__dict__"):
            call = getattr(type(fn), "__call__", None)
            if isinstance(call, types.FunctionType):
                owner = self.read(fn, Path(("const", fn), where=type(fn).__name__))
                return types.MethodType(self.rebuilt(call), owner)
        return self.rebuilt(fn)

    # ------------------------------------------------------------------- at call time
    def reader(self, leaves) -> "Reader | None":
        """The call-time reader, its guards made from the values as the trace left them."""
        items = []
        for item in self.items:
            if not item.lifted:
                try:
                    value = item.path.read(leaves)
                except Exception:  # gone during the trace: nothing left to compare
                    continue
                item.check = item.make_check(value)
            items.append(item)
        return Reader(tuple(items)) if items else None


def _partial_type():
    import functools
    return functools.partial


def _user_methods(cls) -> dict:
    """Plain functions of ``cls`` and its user-defined bases, by name (not dunders)."""
    out = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not is_user_code(klass):
            continue
        for name, value in vars(klass).items():
            if isinstance(value, types.FunctionType) and not name.startswith("__"):
                out[name] = value
    return out


_VIEW_KEY = "__diffprog_view__"
#: class members the stand-in class leaves alone (object protocol, construction, pickling)
_KEEP_MEMBERS = frozenset({
    "__init__", "__new__", "__init_subclass__", "__getattribute__", "__getattr__",
    "__setattr__", "__delattr__", "__del__", "__reduce__", "__reduce_ex__", "__getstate__",
    "__setstate__", "__class_getitem__", "__set_name__", "__dict__", "__weakref__",
    "__module__", "__qualname__", "__doc__", "__slots__", "__annotations__"})


def _view_getattr(self, name):
    """An instance attribute of the original object, read (lifted/guarded) on first use."""
    try:
        obj, path, depth, reads = self.__dict__[_VIEW_KEY]
    except KeyError:  # an instance the code made itself from the stand-in class
        raise AttributeError(name) from None
    own = getattr(obj, "__dict__", {})
    if name in own:
        value = own[name]
    elif any(name in getattr(k, "__slots__", ()) for k in type(obj).__mro__):
        value = getattr(obj, name)  # a slot (its descriptor found the stand-in's empty)
    else:
        user = getattr(type(obj), "__getattr__", None)
        if user is None:
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute {name!r}")
        value = user(obj, name)
    seen = reads.read(value, path.attr(name), depth + 1)
    self.__dict__[name] = seen
    return seen


class _ClassData:
    """A class-level data attribute of a stand-in class: read along the instance's path
    (``obj.name``, which finds the class attribute) on first use."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return getattr(owner.__mro__[1], self.name)
        info = instance.__dict__.get(_VIEW_KEY)
        if info is None:
            return getattr(type(instance).__mro__[1], self.name)
        obj, path, depth, reads = info
        seen = reads.read(getattr(obj, self.name), path.attr(self.name), depth + 1)
        instance.__dict__[self.name] = seen
        return seen


def _body_purpose():
    """The purpose of the innermost body trace open now (dp.scan, dp.vmap), or None."""
    from .tracing import trace_stack
    for trace in reversed(trace_stack()):
        purpose = getattr(trace, "purpose", None)
        if purpose:
            return purpose
    return None


class _ClassView:
    """A user class read by the function (``Model.scale``, ``Helpers.f(x)``): attribute
    reads go through the reads like globals (data lifted/guarded, functions rebuilt);
    calling it, isinstance and issubclass act on the class itself."""

    def __init__(self, cls, reads: ExternalReads, path: Path, depth: int):
        self.__dict__["_view"] = (cls, reads, path, depth)

    def __getattr__(self, name):
        cls, reads, path, depth = self.__dict__["_view"]
        raw = inspect_static(cls, name)
        if isinstance(raw, (staticmethod, classmethod)):
            func = raw.__func__
            if _is_user_function(func):
                new = reads.rebuilt(func, depth + 1)
                return new if isinstance(raw, staticmethod) else types.MethodType(new, cls)
            return getattr(cls, name)
        value = getattr(cls, name)
        if isinstance(value, types.FunctionType):  # an unbound method: rebuilt
            return reads.rebuilt(value, depth + 1)
        return reads.read(value, path.attr(name), depth + 1)

    def __call__(self, *args, **kwargs):
        return self.__dict__["_view"][0](*args, **kwargs)

    def __instancecheck__(self, instance):
        return isinstance(instance, self.__dict__["_view"][0])

    def __subclasscheck__(self, subclass):
        return issubclass(subclass, self.__dict__["_view"][0])

    def __eq__(self, other):
        return self.__dict__["_view"][0] == (other.__dict__["_view"][0]
                                             if isinstance(other, _ClassView) else other)

    def __hash__(self):
        return hash(self.__dict__["_view"][0])

    def __repr__(self):
        return repr(self.__dict__["_view"][0])


def inspect_static(cls, name):
    """The raw class member (a staticmethod stays a staticmethod), or None."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return None


class _Globals(dict):
    """The globals of a rebuilt function: empty at first; a name is resolved (lifted,
    guarded, rebuilt) from the real module when the code first reads it."""

    def __init__(self, real: dict, reads: ExternalReads):
        super().__init__()
        self.real, self.reads = real, reads
        if "__builtins__" in real:  # (open and input: see diffprog.effects)
            dict.__setitem__(self, "__builtins__", effects.builtins_for(real["__builtins__"]))
        dict.__setitem__(self, "__name__", real.get("__name__"))

    def __missing__(self, name):
        value = self.real[name]  # KeyError: Python then looks in builtins
        module = self.real.get("__name__", "?")
        seen = self.reads.read(value, Path(("global", self.real, name),
                                           where=f"global {name!r} of module {module}"))
        dict.__setitem__(self, name, seen)
        return seen


class _ModuleView:
    """A user module read by the function (``import config; config.W``): its attributes
    are read like globals."""

    def __init__(self, module, reads: ExternalReads, path: Path, depth: int):
        self.__dict__["_view"] = (module, reads, path, depth)

    def __getattr__(self, name):
        module, reads, path, depth = self.__dict__["_view"]
        return reads.read(getattr(module, name), path.attr(name), depth + 1)


class Reader:
    """Reads a program's externals at call time: the lifted values, in input order, after
    checking every guard. Raises ExternalChanged when one no longer holds."""

    __slots__ = ("items",)

    def __init__(self, items: tuple):
        self.items = items

    def __call__(self, leaves, check: bool = True) -> list:
        """The lifted values; ``check=False`` skips the guards (the run right after the
        trace, which saw the values as they are now, even if another thread changed
        them since)."""
        values = []
        for item in self.items:
            if not item.lifted and not check:
                continue
            try:
                value = item.path.read(leaves)
            except Exception:  # the path no longer leads anywhere
                raise ExternalChanged(item.path.where) from None
            if item.lifted:
                if not _fits(value, item.aval):
                    raise ExternalChanged(item.path.where)
                values.append(value)
            elif not item.check(value):
                raise ExternalChanged(item.path.where)
        return values


def _fits(value, aval: Aval) -> bool:
    if aval.weak:
        return type(value) is float
    return (type(value) is np.ndarray or isinstance(value, np.floating)) and \
        value.shape == aval.shape and value.dtype == aval.dtype


#: names whose presence in a function's code makes a draw from a process-wide generator
#: its own (other threads may draw from those generators while it is traced)
RANDOM_WORDS = frozenset({
    "random", "rand", "randn", "randint", "random_sample", "normal", "uniform", "choice",
    "shuffle", "permutation", "permuted", "integers", "standard_normal", "exponential",
    "poisson", "binomial", "multinomial", "gamma", "beta", "dirichlet", "laplace",
    "lognormal", "rvs", "sample", "gauss", "randrange", "seed", "default_rng"})


def may_draw(reads: "ExternalReads | None") -> bool:
    """Could the traced code itself have drawn from a process-wide generator?"""
    return reads is None or bool(reads.names & RANDOM_WORDS)


def _all_names(code: types.CodeType) -> set:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _all_names(const)
    return names


def _written_names(code: types.CodeType) -> set:
    """("global", name) for names the code assigns with ``global``, ("cell", name) for
    free variables it assigns with ``nonlocal`` (nested code included)."""
    out = set()
    for ins in dis.get_instructions(code):
        if ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL"):
            out.add(("global", ins.argval))
        elif ins.opname in ("STORE_DEREF", "DELETE_DEREF") and ins.argval in code.co_freevars:
            out.add(("cell", ins.argval))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out |= {(k, n) for k, n in _written_names(const)
                    if k == "global" or n in code.co_freevars}
    return out


# ----------------------------------------------------------------- the active reads

def active(stack: tuple) -> ExternalReads | None:
    """The externals of the outermost trace that collects them (the root of a call)."""
    for trace in stack:
        reads = getattr(trace, "externals", None)
        if reads is not None:
            return reads
    return None


class draws_refused_in:
    """Around tracing a body that runs for many steps or examples (a dp.scan body, the
    function of dp.vmap): a draw from a watched generator there would be one draw reused
    by every step, so it is refused (the generators read inside the body are refused
    through the watch itself, see diffprog.randomness)."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        from .tracing import trace_stack
        reads = self.reads = active(trace_stack())
        self.watch = reads.watch if reads is not None else None
        self.before = self.watch.states() if self.watch is not None else None
        return self

    def __exit__(self, kind, error, tb):
        if kind is None and self.watch is not None:
            moved = self.watch.moved_since(self.before)
            if moved and set(moved) <= self.watch.shared_names and \
                    threading.active_count() > 1 and not may_draw(self.reads):
                # only a process-wide generator moved, and other threads may have drawn
                # from it: no error on a guess (the root trace still sees a draw, so the
                # function is traced per call: slower, never frozen)
                moved = []
            if moved:
                raise draw_in_body_error(self.what, moved[0])
        return False


def draw_in_body_error(body: str, source: str):
    """A random draw inside a body traced once for all its steps or examples."""
    from .errors import DiffprogError
    return DiffprogError(
        f"random numbers are drawn inside {body} (from {source}), which is traced once for "
        f"all its steps or examples: one draw would be reused by every step. Fix: draw all "
        f"the noise before (e.g. noise = rng.normal(size=(n_steps, ...))) and pass it in as "
        f"scanned inputs or vmapped arguments.")


def for_nested_call(fn: Callable, stack: tuple) -> Callable:
    """``fn`` as a nested call inside a root trace should run it (its reads lifted into
    the root), or ``fn`` itself outside any root."""
    reads = active(stack)
    return fn if reads is None else reads.root_function(fn)
