"""Opt-in fast math (issue 19): fused blocks' compiled twins calling glibc's libmvec.

Fast math may change results only within ckernel.ULP_BOUND ulp of NumPy per libm call,
never NaN / infinite / zero results, never which warnings NumPy gives; it must never be
served to a call in the default mode (whose results stay bit-identical: the tests of
test_ckernel.py and test_fusion.py); where it cannot work it runs the exact kernels.
(tests/engines/test_fastmath.py is about something else: the bit-identical sincos ufunc.)
"""
from __future__ import annotations

import os
import subprocess
import types
import warnings

import numpy as np
import pytest

import diffprog as dp
from diffprog import api
from diffprog.engines import ckernel, fusion
from diffprog.ir import Aval, Eqn, Var
from diffprog.primitives import PRIMITIVES

BIG = 3 * fusion.BLOCK + 5  # several blocks and a ragged last one
HAVE_CC = ckernel.compiler() is not None


@pytest.fixture(autouse=True)
def settings(monkeypatch):
    monkeypatch.setenv("DIFFPROG_FUSE_MIN", "1000")
    monkeypatch.delenv("DIFFPROG_CKERNELS", raising=False)
    monkeypatch.setattr(ckernel, "PER_THREAD", 1000)  # several threads on test-sized arrays
    previous = dp.set_fast_math(False)
    yield
    ckernel.wait()
    dp.set_fast_math(previous)


def _fast_state_or_skip():
    if not HAVE_CC:
        pytest.skip("no C compiler here")
    state = ckernel.fast_math_state()
    if state.flags is None:
        pytest.skip(f"fast math runs the exact kernels here: {state.why}")
    return state


def _fresh(fn):
    """A new function object with the same code: diffprog's caches miss on it."""
    return types.FunctionType(fn.__code__, fn.__globals__, fn.__name__)


def _mixed(x, y):
    a = np.tanh(x) * np.exp(-x * x) + np.log(1.5 + y * y) * np.sin(2.0 * x)
    b = np.cos(x * y) + (1.25 + np.abs(y)) ** 1.7 + x ** 3
    return np.sum(a * b)


def _w4(x):
    return np.sum(np.exp(-x ** 2) * np.cos(3.0 * x))


def _ready(fn, *args):
    """Call ``fn`` until its compiled kernels are built; the result of a call after that."""
    fn(*args)
    ckernel.wait()
    return fn(*args)


def _bits_equal(a, b) -> bool:
    a, b = np.atleast_1d(a), np.atleast_1d(b)
    same = a.view(np.int64) == b.view(np.int64)
    return bool(np.all(same | (np.isnan(a) & np.isnan(b))))


# ---------------------------------------------------------------- the ulp measure

def test_ulp_distance_counts_the_doubles_between():
    x = np.array([1.0, 1.0, -2.0, 0.0, 5e-324, np.finfo(float).max, 1e-300])
    y = np.array([1.0, np.nextafter(1.0, 2.0), np.nextafter(np.nextafter(-2.0, 0), 0), -0.0,
                  -5e-324, np.inf, -1e-300])
    got = ckernel.ulp_distance(x, y)
    assert got.dtype == np.uint64
    assert got[:6].tolist() == [0, 1, 2, 0, 2, 1]
    assert got[6] == 2 * np.array(1e-300).view(np.int64)  # across zero: both distances


# ---------------------------------------------------------------- the spellings

def _fast_spelling(name, inputs, state, params=None):
    """Primitive ``name``'s C spelling compiled alone as a fast-math kernel, run on ``inputs``."""
    prim = PRIMITIVES[name]
    b = ckernel.BlockBuilder(block=inputs[0].size)
    ins = [Var(Aval(v.shape, v.dtype)) for v in inputs]
    b.op(Eqn(prim, ins, [Var(Aval(inputs[0].shape, np.dtype(np.float64)))], dict(params or {})),
         [b.array(f"in{k}", v.aval) for k, v in enumerate(ins)], "t0")
    b.export("t0", np.float64)
    lib = ckernel.library(state.header + b.function("f", fast=True), ["f"], state.flags,
                          ckernel.FAST_LIBS)
    (got,), _ = ckernel._run_probe(ckernel.load(lib, "f"), b, inputs)
    return got


def _test_values(seed):
    """Random and edge values other than the probe's: subnormals, huge, NaN, +-inf, +-0."""
    rng = np.random.default_rng(seed)
    sign = rng.choice([-1.0, 1.0], 3000)
    return np.concatenate([
        rng.uniform(-30.0, 30.0, 6000), rng.standard_normal(3000),
        sign * 10.0 ** rng.uniform(-323.0, 308.0, 3000), rng.uniform(-800.0, 800.0, 2000),
        rng.uniform(-1.0, 1.0, 2000) * 1e-310, rng.uniform(0.9, 1.1, 2000),
        [0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 709.78, 709.79, -745.2,
         np.finfo(float).max, -np.finfo(float).max, 1e22, np.pi / 2, 1.0, -1.0]])


UNARY = ["tanh", "exp", "log", "sin", "cos", "log1p", "expm1", "sinh", "cosh", "tan",
         "arctan", "arcsin", "arccos", "cbrt", "exp2", "log2", "log10", "arcsinh", "arccosh",
         "arctanh"]


def _assert_within_bound(got, expect, what):
    nan = np.isnan(expect)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg=f"{what}: NaN changed")
    exact = ~nan & (np.isinf(expect) | (expect == 0))
    assert np.array_equal(got[exact].view(np.int64), expect[exact].view(np.int64)), \
        f"{what}: an infinite or zero result changed"
    rest = ~nan & ~exact
    worst = int(ckernel.ulp_distance(got[rest], expect[rest]).max())
    assert worst <= ckernel.ULP_BOUND, f"{what}: {worst} ulp from NumPy"
    return worst


@pytest.mark.parametrize("name", UNARY)
def test_each_vector_spelling_is_within_the_bound_on_random_and_edge_values(name):
    state = _fast_state_or_skip()
    if state.verdicts.get(name) is not None:
        pytest.skip(f"{name} refused here: {state.verdicts[name]}")
    x = _test_values(hash(name) % 1000)
    with np.errstate(all="ignore"):
        expect = PRIMITIVES[name].evaluate(np, x)
    _assert_within_bound(_fast_spelling(name, [x], state), expect, name)


@pytest.mark.parametrize("name", ["pow", "arctan2", "hypot"])
def test_binary_vector_spellings_are_within_the_bound(name):
    state = _fast_state_or_skip()
    if state.verdicts.get(name) is not None:
        pytest.skip(f"{name} refused here: {state.verdicts[name]}")
    x = _test_values(7)
    rng = np.random.default_rng(8)
    y = np.concatenate([rng.uniform(-12.0, 12.0, x.size // 2), rng.permutation(x)[:x.size - x.size // 2]])
    if name == "pow":  # pow of positive bases (negatives give NaN for non-integer y: still checked)
        x = np.abs(x)
    with np.errstate(all="ignore"):
        expect = PRIMITIVES[name].evaluate(np, x, y)
    _assert_within_bound(_fast_spelling(name, [x, y], state), expect, name)


def _is_gcc() -> bool:
    macros = subprocess.run([ckernel.compiler(), "-dM", "-E", "-"], input="", text=True,
                            capture_output=True).stdout
    return "__GNUC__" in macros and "__clang__" not in macros


def test_the_probe_accepts_tanh_exp_log_sin_cos_pow_through_libmvec():
    """On glibc x86-64 with gcc, these are libmvec calls in the fast kernels."""
    state = _fast_state_or_skip()
    for name in ("tanh", "exp", "log", "sin", "cos", "pow", "integer_pow", "sincos"):
        assert state.verdicts[name] is None, (name, state.verdicts[name])
        assert state.ulps[name] <= ckernel.ULP_BOUND
    for f in ("tanh", "exp", "log", "sin", "cos", "pow"):
        assert f in state.functions
    if _is_gcc():
        assert state.vector_calls, "gcc made no libmvec calls"
    assert "-ffast-math" not in state.flags and "-ffinite-math-only" not in state.flags
    assert "-ffp-contract=off" in state.flags
    assert "fast math: libmvec" in ckernel.status() or not state.vector_calls


def test_a_spelling_beyond_the_bound_or_changing_nan_is_refused(monkeypatch):
    _fast_state_or_skip()
    original = ckernel._probe_cases
    monkeypatch.setattr(ckernel, "_probe_cases", lambda fast=False: [
        c for c in original(fast) if c[0] in ("tanh", "sinh", "sin", "mul")])
    monkeypatch.setattr(PRIMITIVES["tanh"], "c", "(tanh({0}) * (1.0 + 0x1p-48))")  # ~16 ulp
    monkeypatch.setattr(PRIMITIVES["sinh"], "c", "(isnan({0}) ? 0.0 : sinh({0}))")
    ckernel.reset()
    try:
        state = ckernel.fast_math_state()
        assert "ulp (more than 4)" in state.verdicts["tanh"]
        assert "NaN" in state.verdicts["sinh"]
        assert state.verdicts["sin"] is None and state.verdicts["mul"] is None
        # their libm functions are scalar calls now (the exact spellings), the others stay
        assert "tanh" not in state.functions and "sinh" not in state.functions
        assert "sin" in state.functions
        assert "not used: sinh, tanh" in ckernel.status()
    finally:
        monkeypatch.undo()
        ckernel.reset()


def test_a_vector_function_beyond_the_bound_falls_back_to_its_exact_call(monkeypatch):
    """With a bound of 0 ulp, libmvec's sin (a few ulp from NumPy) fails, and libm's sin,
    which NumPy itself calls here, takes its place."""
    _fast_state_or_skip()
    if ckernel.probe().get("sin") is not None:
        pytest.skip("libm's sin is not NumPy's here")
    original = ckernel._probe_cases
    monkeypatch.setattr(ckernel, "_probe_cases", lambda fast=False: [
        c for c in original(fast) if c[0] in ("sin", "add")])
    monkeypatch.setattr(ckernel, "ULP_BOUND", 0)
    ckernel.reset()
    try:
        state = ckernel.fast_math_state()
        assert "sin" not in state.functions and state.verdicts["sin"] is None
        assert state.ulps["sin"] == 0
    finally:
        monkeypatch.undo()
        ckernel.reset()


def test_a_compiler_refusing_an_isa_flag_gets_the_next_isa(monkeypatch):
    state = _fast_state_or_skip()
    original = ckernel._probe_cases
    monkeypatch.setattr(ckernel, "_probe_cases", lambda fast=False: [
        c for c in original(fast) if c[0] in ("exp", "mul")])
    bogus = ("sse2", "bogus", ("-mno-such-vector-extension",), (("b", 2),))
    monkeypatch.setattr(ckernel, "_ISAS", (bogus,) + ckernel._ISAS)
    ckernel.reset()
    try:
        again = ckernel.fast_math_state()
        assert again.isa == state.isa and again.verdicts["exp"] is None
    finally:
        monkeypatch.undo()
        ckernel.reset()


# ---------------------------------------------------------------- whole programs

def test_fast_math_gradients_agree_with_the_default_within_the_bound(rng):
    _fast_state_or_skip()
    x, y = rng.standard_normal(BIG), rng.standard_normal(BIG)
    exact = _ready(dp.value_and_grad(_fresh(_mixed), argnums=(0, 1)), x, y)
    fast_fn = dp.value_and_grad(dp.differentiable(_fresh(_mixed), fast_math=True), argnums=(0, 1))
    fast = _ready(fast_fn, x, y)
    kernels = [k for k in ckernel.kernels() if k.fast_source is not None]
    assert kernels and kernels[-1].state == "ready (fast math)", [k.state for k in kernels]
    assert fast[0] == pytest.approx(exact[0], rel=1e-13)
    for g, e in zip(fast[1], exact[1]):
        np.testing.assert_allclose(g, e, rtol=1e-13, atol=1e-13 * np.max(np.abs(e)))
    assert not all(_bits_equal(g, e) for g, e in zip(fast[1], exact[1])), \
        "fast math changed nothing (were the libmvec kernels run?)"


def test_nan_inf_and_zero_results_are_unchanged(rng):
    _fast_state_or_skip()
    x = rng.standard_normal(BIG) * 30.0
    x[::97] = np.nan
    x[1::97], x[2::97], x[3::97], x[4::97] = np.inf, -np.inf, 0.0, -0.0
    x[5::97], x[6::97] = 800.0, -800.0  # exp overflows / underflows to zero

    def f(x):
        return np.tanh(x) * np.exp(x) + np.sin(x) * np.cos(x) + np.exp(-x) / np.log(np.abs(x))

    with np.errstate(all="ignore"):
        exact = _ready(dp.differentiable(_fresh(f)), x)
        fast = _ready(dp.differentiable(_fresh(f), fast_math=True), x)
    assert [k.state for k in ckernel.kernels()][-1] == "ready (fast math)"
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(exact))
    special = ~np.isnan(exact) & (np.isinf(exact) | (exact == 0))
    assert special.any()
    assert np.array_equal(fast[special].view(np.int64), exact[special].view(np.int64))
    finite = ~np.isnan(exact) & ~special
    with np.errstate(all="ignore"):  # a few ulp of each term (the sum may cancel)
        terms = np.abs(np.tanh(x) * np.exp(x)) + np.abs(np.sin(x) * np.cos(x)) + \
            np.abs(np.exp(-x) / np.log(np.abs(x)))
        assert np.all(np.abs(fast - exact)[finite] <= 1e-14 * terms[finite])


def test_numpy_warnings_are_still_reported(rng):
    _fast_state_or_skip()
    x = rng.standard_normal(BIG)
    f = dp.differentiable(lambda x: np.exp(np.log(x) * 0.5), fast_math=True)
    with pytest.warns(RuntimeWarning, match="invalid value"):
        _ready(f, x)  # log of negatives: NumPy's warning, however the block ran
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(f(np.abs(x) + 0.5), np.sqrt(np.abs(x) + 0.5), rtol=1e-14)


def test_fast_math_and_default_programs_never_share_a_cache_entry(rng):
    _fast_state_or_skip()
    x = rng.standard_normal(BIG)
    fn = _fresh(_w4)
    f = dp.value_and_grad(fn)
    exact = _ready(f, x)
    previous = dp.set_fast_math(True)
    try:
        fast = _ready(f, x)  # the same function object: a new program, fast math
        fast_again = f(x)
    finally:
        dp.set_fast_math(previous)
    again = f(x)  # default mode once more: the exact program (fast call path included)
    keys = {k[-1] for k in api.cache_for(fn).variants}
    assert keys == {False, True}
    assert {k[1] for k in f._fast} == {False, True}
    assert _bits_equal(again[0], exact[0]) and _bits_equal(again[1], exact[1])
    assert _bits_equal(fast_again[1], fast[1])
    assert not _bits_equal(fast[1], exact[1])
    # and the default program is NumPy's: bit-identical to the unfused, uncompiled one
    plain = dp.value_and_grad(lambda x: _w4(x))
    os.environ["DIFFPROG_FUSE_MIN"] = "0"
    try:
        unfused = plain(x)
    finally:
        os.environ["DIFFPROG_FUSE_MIN"] = "1000"
    assert _bits_equal(again[1], unfused[1])


def test_a_function_choosing_false_stays_exact_under_the_global_setting(rng):
    x = rng.standard_normal(BIG)
    exact = _ready(dp.value_and_grad(_fresh(_w4)), x)
    previous = dp.set_fast_math(True)
    try:
        f = dp.value_and_grad(dp.differentiable(_fresh(_w4), fast_math=False))
        got = _ready(f, x)
        assert not f.fast_math_now()
    finally:
        dp.set_fast_math(previous)
    assert _bits_equal(got[1], exact[1]) and _bits_equal(got[0], exact[0])


def test_results_do_not_depend_on_the_thread_count(rng, monkeypatch):
    _fast_state_or_skip()
    x = rng.standard_normal(BIG)
    f = dp.value_and_grad(dp.differentiable(_fresh(_mixed), fast_math=True), argnums=(0, 1))
    y = rng.standard_normal(BIG)
    monkeypatch.setenv("DIFFPROG_THREADS", "1")
    one = _ready(f, x, y)
    monkeypatch.setenv("DIFFPROG_THREADS", "3")
    three = f(x, y)
    assert _bits_equal(one[0], three[0])
    assert all(_bits_equal(a, b) for a, b in zip(one[1], three[1]))


def test_without_libmvec_fast_math_runs_the_exact_kernels(monkeypatch, rng):
    if not HAVE_CC:
        pytest.skip("no C compiler here")
    monkeypatch.setattr(ckernel, "_libmvec", lambda: None)
    ckernel.reset()
    try:
        x = rng.standard_normal(BIG)

        def g(x):  # sin, cos and arithmetic: spellings the exact probe accepts everywhere
            return np.sum(np.sin(x) * np.cos(2.0 * x) + x * x)

        exact = _ready(dp.value_and_grad(_fresh(g)), x)
        fast = _ready(dp.value_and_grad(dp.differentiable(_fresh(g), fast_math=True)), x)
        state = ckernel.kernels()[-1].state
        if ckernel.probe().get("sin") is None and ckernel.probe().get("cos") is None:
            assert state.startswith("ready (exact kernel: fast math unavailable (glibc's "
                                    "libmvec"), state
        assert _bits_equal(fast[0], exact[0]) and _bits_equal(fast[1], exact[1])
        assert "fast math: unavailable (glibc's libmvec (libmvec.so.1) is not installed)" \
            in ckernel.status()
    finally:
        monkeypatch.undo()
        ckernel.reset()


def test_without_a_compiler_fast_math_changes_nothing(monkeypatch, tmp_path, rng):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    ckernel.reset()
    try:
        x = rng.standard_normal(BIG)
        exact = dp.value_and_grad(_fresh(_w4))(x)
        fast = dp.value_and_grad(dp.differentiable(_fresh(_w4), fast_math=True))(x)
        assert _bits_equal(fast[1], exact[1])
        assert "no C compiler" in ckernel._fast_math_setup()[1]
    finally:
        monkeypatch.undo()
        ckernel.reset()


def test_the_generated_source_says_fast_math(rng):
    x = rng.standard_normal(BIG)
    fast = dp.differentiable(_fresh(_w4), fast_math=True).source(x, kind="grad")
    exact = dp.differentiable(_fresh(_w4)).source(x, kind="grad")
    if "_ck0" in exact:
        assert "# fast math:" in fast and "fast math" not in exact


# ---------------------------------------------------------------- the API

def test_every_transformation_of_a_fast_math_function_is_fast_math(rng):
    f = dp.differentiable(lambda x: np.sum(np.tanh(x)), fast_math=True)
    assert f.fast_math is True
    assert api._GradFunction(f).fast_math is True
    assert dp.grad(f).fast_math and dp.value_and_grad(f).fast_math
    assert dp.grad(dp.grad(f)).fast_math is True
    assert dp.vmap(f).fast_math is True
    assert dp.differentiable(f).fast_math is True  # re-wrapping keeps the choice
    assert dp.differentiable(f, fast_math=False).fast_math is False
    x = rng.standard_normal(4)
    fn = f.fn
    dp.grad(f)(x)
    dp.vjp(f, x)
    dp.jvp(f, (x,), (np.ones(4),))
    dp.jacobian(f)(x)
    kinds = {k[1][0]: k[-1] for k in api.cache_for(fn).variants}
    assert kinds == {"grad": True, "vjp": True, "jvp": True}, kinds


def test_the_decorator_form_and_the_global_setting(rng):
    @dp.differentiable(fast_math=True)
    def f(x):
        return np.sum(np.exp(x))

    assert f.fast_math is True and f.fast_math_now()
    g = dp.differentiable(lambda x: np.sum(np.exp(x)))
    assert g.fast_math is None and not g.fast_math_now()
    assert dp.set_fast_math(True) is False
    assert g.fast_math_now() and dp.grad(g).fast_math_now()
    assert dp.set_fast_math(False) is True
    assert not g.fast_math_now()
    assert float(f(np.zeros(3))) == 3.0


@pytest.mark.parametrize("bad", ["yes", 1, 0.0, "True"])
def test_bad_fast_math_values_are_refused_with_the_fix(bad):
    with pytest.raises(dp.ArgumentValueError, match=r"fast_math must be True, False or None.*Fix"):
        dp.differentiable(np.sin, fast_math=bad)
    with pytest.raises(dp.ArgumentValueError, match=r"set_fast_math: fast_math must be True or False"):
        dp.set_fast_math(bad)
    assert issubclass(dp.ArgumentValueError, dp.DiffprogError)


@pytest.mark.parametrize("raw, on", [("1", True), ("true", True), ("ON", True), ("0", False),
                                     ("", False), ("off", False)])
def test_the_environment_variable(monkeypatch, raw, on):
    monkeypatch.setenv("DIFFPROG_FAST_MATH", raw)
    assert api._fast_math_from_env() is on


def test_a_bad_environment_value_warns_and_stays_off(monkeypatch):
    monkeypatch.setenv("DIFFPROG_FAST_MATH", "fast")
    with pytest.warns(dp.DiffprogWarning, match="DIFFPROG_FAST_MATH='fast'.*DIFFPROG_FAST_MATH=1"):
        assert api._fast_math_from_env() is False
