"""The GPU engine: the numpy engine's generated source with ``xp = cupy``.

Arrays stay on the device for the whole program; results come back as CuPy arrays.
"""
from __future__ import annotations

from ..errors import EngineUnavailable
from .numpy import NumpyEngine


def _import_cupy():
    try:
        import cupy
    except Exception as e:  # ImportError, or CUDA libraries missing at import
        raise EngineUnavailable(
            f"the cupy engine needs CuPy and a CUDA GPU; importing cupy failed ({e}). Fix: "
            f"pip install 'diffprog[gpu]' on a machine with an NVIDIA GPU, or use "
            f"engine='numpy'.") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise EngineUnavailable(f"the cupy engine found no usable CUDA device ({e}). Fix: run on "
                                f"a machine with an NVIDIA GPU and driver, or use engine='numpy'.") from None
    if count < 1:
        raise EngineUnavailable("the cupy engine found no CUDA device; use engine='numpy'.")
    return cupy


class CupyEngine(NumpyEngine):
    name = "cupy"

    def __init__(self):
        self._cupy = None
        super().__init__(xp_module=None)

    def check_available(self) -> None:
        self._cupy = _import_cupy()
        self.xp = self._cupy
