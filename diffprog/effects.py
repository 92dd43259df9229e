"""Calls that read the world outside the program: the clock, files, the console, the
operating system's entropy.

A compiled program runs what its function computed when it was traced, so such a call
would happen once and its answer would be kept for good: ``time.time()`` the same instant
at every call, ``open("scale.txt").read()`` the file as it was, ``os.urandom`` the same
bytes. DESIGN.md's trust rule: effects run at call time or are refused, never frozen. So
a traced function that makes one of these calls is traced anew at every call (as one
that draws random numbers or assigns a global, see :mod:`diffprog.api`), with a
:class:`~diffprog.errors.DiffprogWarning` naming the call: its effects then happen at
every call, as in plain Python, and each call pays a trace.

Seen: the calls in :func:`_impure` however the function's own code reaches them (a
module it imports, ``from time import time``, the builtins ``open`` and ``input``,
``np.load``/``np.loadtxt``/``np.genfromtxt``/``np.fromfile``), and an iterator it reads
from outside (``next(it)`` advances it). Not seen: such calls made inside a library the
function calls (only the user's own code runs on stand-ins, diffprog.externals), and
methods of classes (``datetime.datetime.now()``); ``time.sleep`` (it changes no value: a
trace that sleeps keeps its program). The reliability docs say so.
"""
from __future__ import annotations

import builtins
import functools
import os
import time
import types

import numpy as np

_IMPURE: dict | None = None  # id(function) -> (function, what a call does)
_WRAPPERS: dict = {}         # id(function) -> its recording wrapper
#: modules whose impure functions are wrapped when the traced code reads the module
_MODULES = ("time", "os", "posixpath", "ntpath", "secrets", "uuid")  # (os.path is posixpath)


def _impure() -> dict:
    """The functions whose result depends on when or where they are called (built once)."""
    global _IMPURE
    if _IMPURE is None:
        import secrets
        import uuid
        found = {
            builtins.open: "opens a file (open)", builtins.input: "reads the console (input)",
            np.load: "reads a file (np.load)", np.loadtxt: "reads a file (np.loadtxt)",
            np.genfromtxt: "reads a file (np.genfromtxt)",
            np.fromfile: "reads a file (np.fromfile)",
            os.urandom: "reads fresh entropy (os.urandom)",
            os.getenv: "reads the environment (os.getenv)",
            os.stat: "reads a file's metadata (os.stat)",
            os.path.getmtime: "reads a file's metadata (os.path.getmtime)",
            os.path.getsize: "reads a file's metadata (os.path.getsize)",
            os.path.exists: "looks for a file (os.path.exists)",
            uuid.uuid1: "makes a new id (uuid.uuid1)", uuid.uuid4: "makes a new id (uuid.uuid4)",
        }
        if hasattr(os, "getrandom"):
            found[os.getrandom] = "reads fresh entropy (os.getrandom)"
        for name in ("time", "time_ns", "perf_counter", "perf_counter_ns", "monotonic",
                     "monotonic_ns", "process_time", "process_time_ns", "thread_time",
                     "thread_time_ns", "localtime", "gmtime", "ctime", "asctime", "strftime"):
            if hasattr(time, name):
                found[getattr(time, name)] = f"reads the clock (time.{name})"
        for name in ("token_bytes", "token_hex", "token_urlsafe", "randbelow", "randbits",
                     "choice"):
            found[getattr(secrets, name)] = f"reads fresh entropy (secrets.{name})"
        _IMPURE = {id(fn): (fn, what) for fn, what in found.items()}
    return _IMPURE


def _note(what: str) -> None:
    """Record on the root trace of this thread (if any) that its function ``what``."""
    from .tracing import trace_stack
    stack = trace_stack()
    reads = getattr(stack[0], "externals", None) if stack else None
    if reads is not None and what not in reads.impure:
        reads.impure.append(what)


def _recording(fn, what: str):
    wrapper = _WRAPPERS.get(id(fn))
    if wrapper is None:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            _note(what)
            return fn(*args, **kwargs)
        _WRAPPERS[id(fn)] = wrapper
    return wrapper


def standin(value):
    """What traced code should see instead of ``value``: an impure function's recording
    twin, a module of them as a view handing out those twins; anything else as it is."""
    if isinstance(value, types.ModuleType):
        return _ModuleView(value) if value.__name__ in _MODULES else value
    try:
        hit = _impure().get(id(value))
    except TypeError:
        return value
    if hit is None or hit[0] is not value:
        return value
    return _recording(value, hit[1])


def is_impure(value) -> bool:
    hit = _impure().get(id(value))
    return hit is not None and hit[0] is value


def iterator_read(reads, where: str) -> None:
    """An iterator read from outside: advancing it (``next(it)``) is an effect."""
    what = f"reads the iterator {where} (next() advances it)"
    if what not in reads.impure:
        reads.impure.append(what)


class _ModuleView(types.ModuleType):
    """A module as traced code sees it: its impure functions as recording twins."""

    def __init__(self, real):
        super().__init__(real.__name__, real.__doc__)
        self.__dict__["_real"] = real

    def __getattr__(self, name):
        return standin(getattr(self.__dict__["_real"], name))

    def __dir__(self):
        return dir(self.__dict__["_real"])

    def __repr__(self):
        return f"<diffprog stand-in for module {self.__name__!r}>"


def builtins_for(real) -> dict:
    """The builtins of a function rebuilt over stand-ins: the real ones, ``open`` and
    ``input`` as recording twins."""
    table = real.__dict__ if isinstance(real, types.ModuleType) else real
    if table.get("open") is not builtins.open and table.get("input") is not builtins.input:
        return real
    copy = dict(table)
    for name in ("open", "input"):
        if copy.get(name) is getattr(builtins, name):
            copy[name] = standin(copy[name])
    return copy
