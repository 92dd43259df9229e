"""The README's "What you can differentiate" list against the table (issue 15, item 5):
every NumPy function it names has an entry binding it, a front-end handler or a ufunc
composite, so the list cannot claim what is missing; and every function the table and
the front end support that a user would look for is named (the list stays complete)."""
from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

from diffprog import numpy_api
from diffprog.primitives import core

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("- The NumPy a scientist writes")
    end = text.index("- Arrays built from traced values", start)
    return text[start:end]


def _bullets() -> list[tuple[str, str]]:
    """(label, text) of each sub-bullet: 'elementwise', 'np.linalg', ..."""
    out = []
    for chunk in re.split(r"\n  - ", _section())[1:]:
        label = chunk.split(":", 1)[0].strip().strip("`")
        out.append((label, chunk))
    return out


def _named() -> list[tuple[str, object]]:
    """(name, NumPy callable or method name) of every function the list names."""
    names = []
    for label, text in _bullets():
        module = np.linalg if label == "np.linalg" else np
        for token in re.findall(r"`([^`]+)`", text):
            if token in ("np.linalg", "np.fft"):
                continue
            if re.fullmatch(r"np\.(fft|linalg)\.\w+", token):  # (names written in full)
                part = np.fft if token.split(".")[1] == "fft" else np.linalg
                names.append((token, getattr(part, token.split(".")[-1])))
            elif re.fullmatch(r"\.[A-Za-z_]\w*(\(\))?", token):  # a method or property
                names.append((token, token.strip(".()")))
            elif re.fullmatch(r"[A-Za-z_]\w*", token) and token != "None":
                names.append((f"{module.__name__.replace('numpy', 'np')}.{token}",
                              getattr(module, token)))
    return names


#: NumPy functions whose own Python code runs on traced values as it is (no entry needed)
_NUMPY_CODE = {np.fft.fftfreq: lambda d: np.sum(np.fft.fftfreq(8, d)),
               np.fft.rfftfreq: lambda d: np.sum(np.fft.rfftfreq(8, d))}


def _supported(fn) -> bool:
    if fn in _NUMPY_CODE:  # checked by running it: its derivative in the spacing d
        import diffprog as dp
        return np.isfinite(dp.grad(_NUMPY_CODE[fn])(0.5))
    if isinstance(fn, str):
        return fn in numpy_api.TRACER_METHODS
    return fn in numpy_api.HANDLERS or fn in core.NUMPY_BINDINGS or \
        fn in numpy_api._UFUNC_COMPOSITES or fn in numpy_api.NUMPY_OWN


NAMED = _named()


def test_the_list_is_parsed():
    assert len(NAMED) > 140
    assert ("np.linalg.svd", np.linalg.svd) in NAMED and ("np.sinc", np.sinc) in NAMED
    assert ("np.fft.rfft2", np.fft.rfft2) in NAMED


@pytest.mark.parametrize("name,fn", NAMED, ids=[n for n, _ in NAMED])
def test_every_named_function_is_supported(name, fn):
    assert _supported(fn), f"the README names {name}, which has no entry or handler"


def test_every_supported_numpy_function_is_named():
    named = {fn for _, fn in NAMED}
    known = set(numpy_api.HANDLERS) | set(core.NUMPY_BINDINGS) | set(numpy_api._UFUNC_COMPOSITES) \
        | set(numpy_api.NUMPY_OWN)
    # plumbing, aliases and operators the list covers with words ("arithmetic", "comparisons
    # and logical ops", "building arrays") rather than names
    unlisted = {fn for fn in known if getattr(fn, "__name__", "") in _COVERED_BY_WORDS}
    public = {fn for fn in known - unlisted
              if any(getattr(module, getattr(fn, "__name__", ""), None) is fn
                     for module in (np, np.linalg, np.fft))}
    missing = sorted(fn.__name__ for fn in public - named)
    assert not missing, (f"supported but not in the README's list: {missing}; add them to "
                         f"'What you can differentiate' in README.md")


_COVERED_BY_WORDS = {
    # arithmetic and `**`
    "add", "subtract", "multiply", "true_divide", "divide", "negative", "positive", "power",
    "float_power", "floor_divide", "mod", "conjugate", "conj",
    # comparisons and logical ops
    "less", "less_equal", "greater", "greater_equal", "equal", "not_equal", "logical_and",
    "logical_or", "logical_xor", "logical_not", "bitwise_and", "bitwise_or", "bitwise_xor",
    "invert", "bitwise_not", "isfinite", "isnan", "isinf", "any", "all",
    # aliases of listed names, and plumbing that is no computation
    "absolute", "fabs", "amax", "amin", "around", "rint", "radians", "degrees", "row_stack",
    "shape", "ndim", "size", "result_type", "copy", "real", "empty_like", "astype",
    "broadcast_arrays", "stop_gradient",
}
