"""Which argument leaves are traced (shared by the transformations and custom rules).

A leaf is *dynamic* (a traced input of the program) when it is an array (NumPy, CuPy, or
anything with ``__cuda_array_interface__``/``__dlpack__``), a NumPy scalar, a Python
float or complex, or a traced value; everything else (ints, strings, None, objects) is *static*: part
of the cache key, passed through as it is.
"""
from __future__ import annotations

import numpy as np

from .tracing import Tracer


def is_dynamic(leaf) -> bool:
    """Does ``leaf`` become a traced input?

    >>> import numpy as np
    >>> [is_dynamic(v) for v in (np.ones(2), 1.5, np.float32(2), 3, "mode", None)]
    [True, True, True, False, False, False]
    """
    if isinstance(leaf, (np.ndarray, Tracer, np.generic)):
        return True
    if isinstance(leaf, (float, complex)):  # bool and int are not complex
        return True
    return hasattr(leaf, "__cuda_array_interface__") or hasattr(leaf, "__dlpack__")
