"""The GPU engine: the numpy engine's generated source with ``xp = cupy``.

A program runs entirely on the device: its inputs are CuPy arrays, its constants are
copied to the device once when it is compiled (never per call), and its results are
CuPy arrays. Nothing inside a program synchronizes with or copies to the host.

Elementwise chains are fused: each run of consecutive elementwise equations becomes
one Python function decorated with ``cupy.fuse``, which traces the function's CuPy
ufunc calls into a single CUDA kernel. The primitive table's ``xp`` templates are
all CuPy ufuncs, operators or ``cupy.where`` (which ``cupy.fuse`` supports), so no
per-primitive CUDA C spelling is needed. Set ``DIFFPROG_CUPY_FUSE=0`` to turn
fusion off.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from ..errors import EngineUnavailable
from ..ir import Graph
from .numpy import DevicePlacement, NumpyEngine, generate_source

#: CuPy 14 follows NumPy 2's promotion rules (NEP 50), which diffprog's dtype rules assume.
MIN_CUPY = (14, 0)

_NO_GPU_FIX = ("Fix: run on a machine with an NVIDIA GPU and a CUDA driver (check with "
               "nvidia-smi), or use engine='numpy' with NumPy arrays.")


def _version_tuple(text: str) -> tuple:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def import_cupy():
    """The ``cupy`` module, checked usable: importable, recent enough, with a device.

    Raises :class:`EngineUnavailable` saying why and how to fix it. Fast (well under a
    second) where CuPy or the GPU is missing.
    """
    try:
        import cupy
    except Exception as e:  # ImportError, or CUDA libraries missing at import time
        raise EngineUnavailable(
            f"the cupy engine needs CuPy and a CUDA GPU, but importing cupy failed "
            f"({type(e).__name__}: {e}). Fix: pip install 'diffprog[gpu]' (CuPy for CUDA 12) "
            f"on a machine with an NVIDIA GPU, or use engine='numpy'.") from None
    version = getattr(cupy, "__version__", "0")
    if _version_tuple(version) < MIN_CUPY:
        raise EngineUnavailable(
            f"the cupy engine needs CuPy >= {'.'.join(map(str, MIN_CUPY))} (NumPy 2 type "
            f"promotion); found CuPy {version}. Fix: pip install -U 'cupy-cuda12x>=14'.")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, insufficient driver, no device
        raise EngineUnavailable(
            f"the cupy engine found no usable CUDA device ({type(e).__name__}: {e}). "
            f"{_NO_GPU_FIX}") from None
    if count < 1:
        raise EngineUnavailable(f"the cupy engine found no CUDA device. {_NO_GPU_FIX}")
    return cupy


class FusedKernel:
    """``cupy.fuse`` of one generated elementwise run.

    If CuPy cannot fuse the run (its first call raises), the same run is tried op by op:
    when that works, the run stays op by op from then on, with a warning naming CuPy's
    error (same results, more kernel launches); when it fails too, the error is the
    run's own (bad input, say), so it propagates and fusion is tried again next call.
    Running out of device memory is never a reason to give up fusion: it propagates.
    After the first successful fused call the kernel is used directly.
    """

    def __init__(self, fn, fuse):
        self.fn = fn
        self.fused = fuse(kernel_name=f"diffprog{fn.__name__}")(fn)
        self.state = "untried"  # then "fused" or "unfused"
        self.error: Exception | None = None

    def __call__(self, *args):
        if self.state == "fused":
            return self.fused(*args)
        if self.state == "unfused":
            return self.fn(*args)
        try:
            result = self.fused(*args)
        except MemoryError:  # cupy's OutOfMemoryError is one: not fusion's fault
            raise
        except Exception as fuse_error:  # cupy.fuse could not trace/compile this run?
            result = self.fn(*args)  # raises the run's own error if that is what it was
            self.state, self.error = "unfused", fuse_error
            warnings.warn(
                f"diffprog cupy engine: cupy.fuse could not fuse {self.fn.__name__} "
                f"({type(fuse_error).__name__}: {fuse_error}); running it op by op (same "
                f"results, more kernel launches).", RuntimeWarning, stacklevel=2)
            return result
        self.state = "fused"
        return result


def fusion_enabled() -> bool:
    return os.environ.get("DIFFPROG_CUPY_FUSE", "1").strip().lower() not in ("0", "false", "no", "off")


class CupyEngine(NumpyEngine):
    """Runs generated Python source with ``xp = cupy`` on CuPy arrays."""

    name = "cupy"

    def __init__(self, fuse: bool | None = None):
        super().__init__(xp_module=None)
        self.fuse = fusion_enabled() if fuse is None else fuse
        self.placement: DevicePlacement | None = None

    def check_available(self) -> None:
        self.xp = import_cupy()
        self.placement = DevicePlacement(self.xp.asarray)

    def with_fast_math(self) -> "CupyEngine":
        """Itself: fast math is about the numpy engine's compiled C kernels (libmvec);
        CuPy's kernels are the same either way."""
        return self

    def compile(self, graph: Graph):
        """As the numpy engine, plus: host scalars handed in where the graph has a 0-d
        array (a NumPy scalar argument, a cotangent ``1.0`` given to a pullback) become
        0-d device arrays first; CuPy functions such as ``broadcast_to`` refuse them."""
        program = super().compile(graph)
        scalar_slots = [i for i, v in enumerate(graph.invars) if v.aval.shape == () and not v.aval.weak]
        if not scalar_slots:
            return program
        run, xp = program.fn, self.xp
        host_scalars = (np.generic, float, int, bool)

        def on_device(*args):
            args = list(args)
            for i in scalar_slots:
                if isinstance(args[i], host_scalars):
                    args[i] = xp.asarray(args[i], dtype=graph.invars[i].aval.dtype)
            return run(*args)
        program.fn = on_device
        return program

    def generate(self, graph: Graph, fn_name: str) -> tuple[str, dict]:
        if self.placement is None:
            self.check_available()
        fuse = (lambda fn: FusedKernel(fn, self.xp.fuse)) if self.fuse else None
        return generate_source(graph, self.xp, fn_name, placement=self.placement, fuse=fuse)
