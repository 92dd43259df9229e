"""The compiled sincos helper of the fusion pass (diffprog/engines/fastmath.py, _fastmath.c).

It may only ever be used where it reproduces np.sin and np.cos bit for bit; where the
extension is not built the fusion pass computes the two separately.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from diffprog.engines import fastmath


@pytest.fixture(autouse=True)
def fresh_check(monkeypatch):
    monkeypatch.delenv("DIFFPROG_FASTMATH", raising=False)
    fastmath.reset()
    yield
    fastmath.reset()


def _sincos_or_skip():
    ufunc = fastmath.sincos()
    if ufunc is None:
        pytest.skip(f"the sincos helper is not used here: {fastmath.status()}")
    return ufunc


def test_the_extension_is_built_by_the_install():
    # where a C compiler exists (CI, ./dev) the install must have built the extension;
    # whether it is *used* depends on the bit-identity check below
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here, so pip built diffprog without its C extension")
    from diffprog.engines import _fastmath  # noqa: F401
    assert fastmath.status().startswith("sincos: ")


def test_sincos_is_bit_identical_to_numpy(rng):
    sincos = _sincos_or_skip()
    x = np.concatenate([rng.standard_normal(10_000) * s for s in (1e-3, 1.0, 50.0, 1e8, 1e200)])
    s, c = sincos(x)
    assert s.dtype == c.dtype == np.float64
    assert s.tobytes() == np.sin(x).tobytes() and c.tobytes() == np.cos(x).tobytes()


def test_sincos_is_a_ufunc_with_out_strides_and_errstate(rng):
    sincos = _sincos_or_skip()
    x = rng.standard_normal((40, 30))[:, ::3]  # not contiguous
    s, c = np.empty((40, 10)), np.empty((40, 10))
    got = sincos(x, out=(s, c))
    assert got[0] is s and got[1] is c
    np.testing.assert_array_equal(s, np.sin(x))
    np.testing.assert_array_equal(c, np.cos(x))
    with pytest.warns(RuntimeWarning, match="invalid value"):
        sincos(np.array([np.inf]))
    with np.errstate(invalid="raise"), pytest.raises(FloatingPointError):
        sincos(np.array([np.inf]))


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("DIFFPROG_FASTMATH", "0")
    fastmath.reset()
    assert fastmath.sincos() is None
    assert "DIFFPROG_FASTMATH=0" in fastmath.status()


def test_a_helper_that_differs_from_numpy_is_never_used(monkeypatch):
    def wrong(x):
        return np.sin(x), np.cos(x) + 1e-16  # off by an ulp somewhere
    assert fastmath._reproduces_numpy(lambda x: (np.sin(x), np.cos(x)))
    assert not fastmath._reproduces_numpy(wrong)
    assert not fastmath._reproduces_numpy(lambda x: (np.sin(x), np.cos(x.astype(np.float32)).astype(float)))
