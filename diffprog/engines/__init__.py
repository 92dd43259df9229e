"""Engines turn a Graph into something runnable.

``numpy`` is embedded and always available; ``cupy`` runs the same generated source
on the GPU; ``julia`` hands generated Julia source to the DiffProg Julia package.
"""
from __future__ import annotations

import os

from ..errors import ArgumentValueError, EngineUnavailable
from ..transforms import closed
from .base import Derivative, Engine, Program

_FACTORIES = {}
_DEVICES: dict[str, tuple] = {}
_INSTANCES: dict[str, Engine] = {}


def register(name: str, factory, devices: tuple | None = None) -> None:
    """Add an engine. ``devices``: where its inputs must live ("cpu" NumPy arrays, "gpu"
    CuPy arrays); None when the engine takes either (it places data itself)."""
    _FACTORIES[name] = factory
    if devices is not None:
        _DEVICES[name] = tuple(devices)


def devices(name: str) -> tuple | None:
    """The devices engine ``name`` accepts inputs on, or None for any."""
    return _DEVICES.get(name)


def _numpy_factory():
    from .numpy import NumpyEngine
    return NumpyEngine()


def _cupy_factory():
    from .cupy import CupyEngine
    return CupyEngine()


def _julia_factory():
    from .julia import JuliaEngine
    return JuliaEngine()


def _compile_body(body, xp_module):
    """A loop or branch body run on concrete values while tracing: compiled by the numpy
    engine (for CuPy values too, with its device placement), once per body."""
    from .numpy import compiled_body
    return compiled_body(body, xp_module)


closed.use_compiler(_compile_body)

register("numpy", _numpy_factory, devices=("cpu",))
register("cupy", _cupy_factory, devices=("gpu",))
register("julia", _julia_factory, devices=("cpu", "gpu"))


def names() -> list[str]:
    return sorted(_FACTORIES)


# The environment's own bytes mapping (POSIX): read on every call of the fast path, where
# os.environ.get's key encoding costs about as much as running a tiny program.
_ENVIRON = os.environ
_ENVIRON_BYTES = getattr(os.environ, "_data", None) if os.name == "posix" else None


def default_engine_name() -> str:
    """$DIFFPROG_ENGINE (read at each call: it may change while the program runs), or numpy."""
    if _ENVIRON_BYTES is not None and os.environ is _ENVIRON:  # (not replaced by a mock)
        raw = _ENVIRON_BYTES.get(b"DIFFPROG_ENGINE")
        return "numpy" if raw is None else os.fsdecode(raw)
    return os.environ.get("DIFFPROG_ENGINE", "numpy")


def get(name: str | None = None, check: bool = True, fast_math: bool = False) -> Engine:
    """The engine called ``name`` (default: $DIFFPROG_ENGINE or "numpy"), checked usable.

    ``check=False`` gives an unchecked instance, for work that needs no runtime (showing
    the generated source of an engine that is not installed here). ``fast_math``: its
    twin compiling fast-math programs (:meth:`Engine.with_fast_math`)."""
    engine = _get(name, check)
    return engine.with_fast_math() if fast_math else engine


def _get(name: str | None, check: bool) -> Engine:
    name = name or default_engine_name()
    if name not in _FACTORIES:
        status = available()
        listed = ", ".join(f"{n} ({'available' if r == 'ok' else 'not available here'})"
                           for n, r in status.items())
        usable = [n for n, r in status.items() if r == "ok"] or ["numpy"]
        raise ArgumentValueError(
            f"unknown engine {name!r}; diffprog's engines are {listed}. Fix: pass "
            f"engine={usable[0]!r} (or set DIFFPROG_ENGINE to one of "
            f"{', '.join(repr(n) for n in usable)}); dp.engines.available() says why an "
            f"engine cannot run here.")
    engine = _INSTANCES.get(name)
    if engine is None and not check:
        return _FACTORIES[name]()
    if engine is None:
        engine = _FACTORIES[name]()
        engine.check_available()
        _INSTANCES[name] = engine
    return engine


def available() -> dict[str, str]:
    """Map each engine name to "ok" or the reason it cannot run here.

    >>> available()["numpy"]
    'ok'
    """
    report = {}
    for name in names():
        try:
            get(name)
            report[name] = "ok"
        except EngineUnavailable as e:
            report[name] = str(e)
    return report


__all__ = ["Derivative", "Engine", "Program", "get", "available", "names", "register", "devices",
           "default_engine_name"]
