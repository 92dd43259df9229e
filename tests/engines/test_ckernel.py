"""Compiled C twins of fused blocks (diffprog/engines/ckernel.py).

A compiled kernel may only ever change how fast a block runs: its elementwise results
and its sums must be bit-identical to the NumPy block kernel's, which tests/engines/
test_fusion.py compares with the unfused program. Where a C spelling differs from
NumPy on this machine, the probe must refuse it and the NumPy kernel must run instead.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import signal
import stat
import time
import types
import warnings

import numpy as np
import pytest

import diffprog as dp
from diffprog.engines import ckernel, fusion
from diffprog.engines.fastmath import probe_values
from diffprog.engines.numpy import generate_source
from diffprog.ir import Aval
from diffprog.primitives import PRIMITIVES
from diffprog.transforms import vjp_graph

BIG = 3 * fusion.BLOCK + 5  # several blocks and a ragged last one
SPELLED = sorted(n for n, p in PRIMITIVES.items() if p.c is not None)
HAVE_CC = ckernel.compiler() is not None
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler here (compiled kernels off)")


@pytest.fixture(autouse=True)
def small_fusion(monkeypatch):
    monkeypatch.setenv("DIFFPROG_FUSE_MIN", "1000")
    monkeypatch.delenv("DIFFPROG_CKERNELS", raising=False)
    monkeypatch.setattr(ckernel, "PER_THREAD", 1000)  # several threads on test-sized arrays
    yield
    ckernel.wait()


def _program(fn, *args, kind="grad"):
    """The fused program of ``fn``'s value or value+gradient graph, its compiled kernels
    (ready), and the same program with compiled kernels off."""
    graph = dp.differentiable(fn).ir(*args)
    if kind == "grad":
        graph = vjp_graph(graph, list(range(len(args))), seed="ones")
    src, ns = generate_source(graph, np, "prog", blocks=1000)
    exec(compile(src, "<test>", "exec"), ns)
    ckernel.wait()
    compiled = [v for k, v in ns.items() if k.startswith("_ck")]
    os.environ["DIFFPROG_CKERNELS"] = "0"
    try:
        src0, ns0 = generate_source(graph, np, "prog", blocks=1000)
    finally:
        del os.environ["DIFFPROG_CKERNELS"]
    exec(compile(src0, "<test>", "exec"), ns0)
    assert "_ck" not in src0
    return ns["prog"], compiled, ns0["prog"]


def _assert_bit_identical(got, expect):
    assert len(got) == len(expect)
    for i, (a, b) in enumerate(zip(got, expect)):
        a, b = np.atleast_1d(a), np.atleast_1d(b)
        assert a.dtype == b.dtype and a.shape == b.shape, i
        if a.dtype == np.float64:  # same bits, or NaN on both sides
            same = a.view(np.int64) == b.view(np.int64)
            assert np.all(same | (np.isnan(a) & np.isnan(b))), i
        else:
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- the table's spellings

def _libm(name, arity=1):
    path = ctypes.util.find_library("m")
    fn = getattr(ctypes.CDLL(path), name)
    fn.restype, fn.argtypes = ctypes.c_double, [ctypes.c_double] * arity
    return fn


def _compiled_spelling(prim, inputs, params=None):
    """The C spelling of ``prim`` compiled on its own and run on ``inputs`` (float64)."""
    from diffprog.ir import Eqn, Var
    b = ckernel.BlockBuilder(block=inputs[0].size)
    ins = [Var(Aval(v.shape, v.dtype)) for v in inputs]
    out = Var(Aval(inputs[0].shape, np.dtype(np.float64)))
    b.op(Eqn(prim, ins, [out], dict(params or {})),
         [b.array(f"in{k}", v.aval) for k, v in enumerate(ins)], "t0")
    b.export("t0", np.float64)
    fn = ckernel.load(ckernel.library("#define DP_USE_SINCOS 0\n" + b.function("f"), ["f"]), "f")
    return ckernel._run_probe(fn, b, inputs)


# a libm call of any arity, its operands in order: atan2({0}, {1}), hypot, pow, exp({0})...
_LIBM_SPELLING = re.compile(r"(\w+)\((\{0\}(?:, \{\d\})*)\)")


@needs_cc
@pytest.mark.parametrize("name", SPELLED)
def test_each_c_spelling_matches_numpy_or_is_refused_for_cause(name):
    """Generated from the table: a spelling the probe accepts reproduces NumPy (the probe
    compares bits on values across every libm range); one it refuses must be a libm
    function (of any arity) whose NumPy loop is NumPy's own code here (so our spelling
    is right and NumPy's loop is what differs), never a helper or an operator of ours;
    integer_pow's helper only where it defers to pow and NumPy's power loop differs."""
    verdict = ckernel.probe()[name]
    if verdict is None:
        return
    assert "differs from NumPy" in verdict or "does not raise" in verdict, verdict
    x = np.concatenate([np.linspace(-3, 3, 401), np.geomspace(1e-9, 20, 200), probe_values()])
    prim = PRIMITIVES[name]
    if name == "integer_pow":
        _assert_ipow_refused_for_pow(prim, x)
        return
    m = _LIBM_SPELLING.fullmatch(prim.c)
    assert m and not m.group(1).startswith("dp_"), f"{name}: {verdict}"
    arity = len(re.findall(r"\{\d\}", m.group(2)))
    assert re.findall(r"\{(\d)\}", m.group(2)) == [str(k) for k in range(arity)], prim.c
    inputs = [np.random.default_rng(k).permutation(x) if k else x for k in range(arity)]
    got, raised = _compiled_spelling(prim, inputs)
    libm = _libm(m.group(1), arity)
    assert got[0].tobytes() == np.array([libm(*map(float, v)) for v in zip(*inputs)]).tobytes()
    expect, numpy_flags = ckernel._with_numpy_flags(lambda: prim.evaluate(np, *inputs))
    if "differs from NumPy" in verdict:
        assert not ckernel._same_bits(got[0], np.asarray(expect)), "NumPy agrees with libm here"


def _assert_ipow_refused_for_pow(prim, x):
    """dp_ipow is NumPy's shortcuts for n = 2, -1, 1 (bit-identical here) and libm's pow
    for every other n: refusing it is right only where NumPy's power loop is not libm's."""
    pow_ = _libm("pow", 2)
    numpy_differs = False
    for n in (2, -1, 1, 0, 3, -2, 5):
        got = _compiled_spelling(prim, [x], {"n": n})[0][0]
        with np.errstate(all="ignore"):
            expect = prim.evaluate(np, x, n=n)
        if n in (2, -1, 1):
            assert ckernel._same_bits(got, expect), n
        else:
            assert got.tobytes() == np.array([pow_(float(v), float(n)) for v in x]).tobytes(), n
            numpy_differs |= not ckernel._same_bits(got, expect)
    assert numpy_differs and ckernel.probe()["pow"] is not None


@needs_cc
def test_the_probe_accepts_the_arithmetic_and_libm_core():
    verdicts = ckernel.probe()
    for name in ("add", "sub", "mul", "div", "neg", "integer_pow", "where", "less", "sqrt",
                 "abs", "maximum", "minimum", "sign", "logical_and", "isnan"):
        if name == "integer_pow" and verdicts["pow"] is not None:
            continue  # x ** 3 is libm's pow, and NumPy's power loop is its own here
        assert verdicts[name] is None, (name, verdicts[name])


@needs_cc
def test_the_probe_refuses_a_wrong_spelling(monkeypatch):
    ckernel.reset()
    monkeypatch.setattr(PRIMITIVES["expm1"], "c", "(exp({0}) - 1.0)")  # loses digits near 0
    try:
        assert ckernel.probe()["expm1"] is not None
    finally:
        monkeypatch.undo()
        ckernel.reset()


@needs_cc
@pytest.mark.parametrize("use", [0, 1])
def test_dp_use_sincos_decides_whether_sincos_is_called(use):
    """Each source defines DP_USE_SINCOS after the preamble, so DP_SINCOS must read it
    where it is used (an #if in the preamble saw it undefined: kernels never called
    sincos, and the probe's "sincos" case tested sin and cos). Either way: NumPy's bits."""
    b = ckernel.BlockBuilder(block=1001)
    b.sin_cos(b.array("in0", Aval((1001,), np.dtype(np.float64))), "t0", "t1")
    b.export("t0", np.float64)
    b.export("t1", np.float64)
    source = f"#define DP_USE_SINCOS {use}\n" + b.function("f")
    with open(ckernel.build(source), "rb") as fp:
        assert (b"sincos" in fp.read()) == bool(use)  # among the library's imports
    if any(ckernel.probe()[n] is not None for n in ("sin", "cos", "sincos")):
        pytest.skip("sin/cos spellings refused on this machine")
    x = np.concatenate([np.linspace(-50.0, 50.0, 995), [0.0, -0.0, 1e300, 5e-324, np.pi, 1e22]])
    (s, c), _ = ckernel._run_probe(ckernel.load(ckernel.library(source, ["f"]), "f"), b, [x])
    _assert_bit_identical([s, c], [np.sin(x), np.cos(x)])


def test_c_literals_are_exact():
    rng = np.random.default_rng(7)
    for v in list(rng.standard_normal(200) * 10.0 ** rng.integers(-300, 300, 200)) + [
            0.1, -0.0, 5e-324, 1e308, 3, -2, True, 2 ** 60 + 1]:
        text = ckernel.c_literal(v)
        assert float.fromhex(text.strip("()")) == float(v)
        assert np.signbit(float.fromhex(text.strip("()"))) == np.signbit(float(v))
    assert ckernel.c_literal(float("inf")) == "(INFINITY)"
    assert ckernel.c_literal(10 ** 400) is None


# ---------------------------------------------------------------- whole programs

def _w4(x):
    return np.sum(np.exp(-x ** 2) * np.cos(3.0 * x))


def _fresh_w4():
    """A new function object each time, so diffprog's program cache misses."""
    return types.FunctionType(_w4.__code__, globals(), "_w4")


def _mixed(x, y, s):
    a = np.exp(-x ** 2) * np.cos(3.0 * x) + x ** 3 / (1.5 + y * y) - s * np.sin(y)
    b = np.where(x > 0.1, np.arctan(a), np.sqrt(np.abs(y) + 1.0)) - x ** -1
    c = np.maximum(a, b) * np.minimum(x, 0.5) + np.hypot(a, y) + np.logaddexp(x, y)
    return np.sum(a * b) + np.sum(np.log1p(c * c)) + np.sum(np.sign(y) * np.floor(x * 4))


def _skip_unless_probed(*names):
    """Skip where one of these has neither a C spelling that matches NumPy here nor a NumPy
    loop the kernel can call (integer_pow of a general n, where NumPy's SIMD pow differs
    from libm's), since blocks using it then rightly stay on the NumPy kernel."""
    refused = {n: ckernel.spelling_refusal(n) for n in names if ckernel.spelling_refusal(n)}
    if refused:
        pytest.skip(f"spellings refused on this machine: {refused}")


@needs_cc
def test_w4_gradient_runs_compiled_and_matches_the_numpy_kernel(rng):
    _skip_unless_probed("exp", "sin", "cos")
    x = rng.standard_normal(BIG)
    prog, compiled, numpy_prog = _program(_w4, x)
    assert compiled and all(k.state.startswith("ready") for k in compiled), [k.state for k in compiled]
    runs = compiled[0].runs
    _assert_bit_identical(prog(x), numpy_prog(x))
    assert compiled[0].runs == runs + 1
    assert "DP_SINCOS" in compiled[0].source  # the sin/cos pair is one libm call


@needs_cc
def test_a_mixed_program_matches_bit_for_bit(rng):
    _skip_unless_probed("exp", "sin", "cos", "log1p", "arctan", "hypot", "logaddexp", "integer_pow")
    x = rng.uniform(0.2, 2.0, BIG)
    y = rng.standard_normal(BIG)
    prog, compiled, numpy_prog = _program(_mixed, x, y, 0.3)
    ready = [k for k in compiled if k.state.startswith("ready")]
    assert ready, [k.state for k in compiled]
    before = [k.runs for k in ready]
    _assert_bit_identical(prog(x, y, 0.3), numpy_prog(x, y, 0.3))
    assert [k.runs for k in ready] == [r + 1 for r in before]


@needs_cc
def test_bool_results_scalars_and_literals(rng):
    x = rng.standard_normal(BIG)

    def f(x, s):
        m = (x > s) | (x < -2.0)       # a bool array leaves the block
        return m, np.where(m, x * s, -x) + 2, np.sum(np.where(np.isfinite(x), x, 0.0))

    graph = dp.differentiable(f).ir(x, 0.25)
    src, ns = generate_source(graph, np, "prog", blocks=1000)
    exec(compile(src, "<test>", "exec"), ns)
    ckernel.wait()
    compiled = [v for k, v in ns.items() if k.startswith("_ck")]
    assert compiled and compiled[0].state == "ready"
    got = ns["prog"](x, 0.25)
    assert compiled[0].runs == 1
    m = (x > 0.25) | (x < -2.0)
    np.testing.assert_array_equal(got[0], m)
    assert got[0].dtype == np.bool_
    np.testing.assert_array_equal(got[1], np.where(m, x * 0.25, -x) + 2)
    assert got[2] == np.sum(np.where(np.isfinite(x), x, 0.0))  # NumPy's bits


@needs_cc
def test_thread_count_changes_nothing_not_even_sums(monkeypatch, rng):
    _skip_unless_probed("exp", "sin", "cos")
    x = rng.standard_normal(BIG)
    prog, compiled, numpy_prog = _program(_w4, x)
    results = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("DIFFPROG_THREADS", threads)
        results += [prog(x), numpy_prog(x)]
    for r in results[1:]:
        _assert_bit_identical(r, results[0])


@needs_cc
def test_floating_point_errors_are_reported_as_numpy_reports_them():
    _skip_unless_probed("exp", "sin", "cos")
    x = np.full(BIG, 2.0)
    x[BIG - 3] = 1000.0  # exp overflows in the last block only
    with np.errstate(over="ignore"):
        prog, compiled, numpy_prog = _program(lambda x: np.sum(np.exp(x) * x), x, kind="value")
    assert compiled[0].state.startswith("ready")
    with np.errstate(over="raise"):
        with pytest.raises(FloatingPointError, match="overflow"):
            prog(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(over="warn"):
            assert prog(x)[0] == np.inf
    assert [str(w.message) for w in caught] == ["overflow encountered in exp"]
    runs = compiled[0].runs
    with np.errstate(over="ignore"):
        assert prog(x)[0] == np.inf
    assert compiled[0].runs == runs + 1  # ignored flags: the compiled kernel's result stands


@needs_cc
def test_unaligned_and_strided_inputs_fall_back_or_copy(rng):
    _skip_unless_probed("exp", "sin", "cos")
    x = rng.standard_normal(BIG)
    prog, compiled, _ = _program(_w4, x)
    expect = prog(x)
    raw = np.zeros(BIG * 8 + 1, np.uint8)
    unaligned = np.frombuffer(raw.data, np.float64, BIG, offset=1)
    unaligned[...] = x
    assert not unaligned.flags.aligned
    runs = compiled[0].runs
    _assert_bit_identical(prog(unaligned), expect)
    assert compiled[0].runs == runs  # the NumPy kernel ran
    # strided and reversed inputs run unfused: NumPy's SIMD loops may give a strided
    # array other bits than the contiguous copy a kernel would walk
    for strided in (np.repeat(x, 2)[::2], x[::-1].copy()[::-1]):
        _assert_bit_identical(prog(strided), _program(_w4, x)[2](strided))
    assert compiled[0].runs == runs
    _assert_bit_identical(prog(x), expect)
    assert compiled[0].runs == runs + 1


# ---------------------------------------------------------------- building

def _script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@needs_cc
def test_first_calls_do_not_wait_for_the_compiler(monkeypatch, tmp_path, rng):
    _skip_unless_probed("exp", "sin", "cos")
    cc = ckernel.compiler()
    monkeypatch.setenv("DIFFPROG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", _script(tmp_path, "slowcc", f'sleep 2; exec "{cc}" "$@"'))
    ckernel.reset()
    x = rng.standard_normal(BIG)
    f = dp.value_and_grad(_fresh_w4())
    value, grad = f(x)  # the probe and the kernel build for seconds meanwhile
    kernel = ckernel.kernels()[-1]
    assert kernel.state == "compiling" and kernel.runs == 0
    ckernel.wait()
    assert kernel.state.startswith("ready")
    v2, g2 = f(x)
    assert kernel.runs == 1
    _assert_bit_identical((v2, g2), (value, grad))
    ckernel.reset()


@needs_cc
def test_libraries_are_cached_on_disk(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFPROG_CACHE_DIR", str(tmp_path))
    source = "int dp_cached_probe(void) { return 42; }\n"
    before = dict(ckernel.BUILDS)
    first = ckernel.build(source)
    second = ckernel.build(source)
    assert first == second and os.path.dirname(first).startswith(str(tmp_path))
    assert ckernel.BUILDS["compiled"] == before["compiled"] + 1
    assert ckernel.BUILDS["cached"] == before["cached"] + 1
    digest = first[:-len(".so")] + ".sha256"  # recorded at build time, checked before loading
    files = sorted(os.listdir(os.path.dirname(first)))
    assert files == sorted(map(os.path.basename, [first, digest]))
    assert stat.S_IMODE(os.stat(os.path.dirname(first)).st_mode) == 0o700


def test_without_a_compiler_the_numpy_kernel_runs(monkeypatch, tmp_path, rng):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    ckernel.reset()
    assert "no C compiler" in ckernel.status()
    x = rng.standard_normal(BIG)
    f = _fresh_w4()
    assert "# no compiled twin: no C compiler found" in dp.differentiable(f).source(x, kind="grad")
    made = len(ckernel.kernels())
    value, grad = dp.value_and_grad(f)(x)
    assert len(ckernel.kernels()) == made  # nothing was handed to a compiler
    np.testing.assert_allclose(grad, np.exp(-x ** 2) * (-2 * x * np.cos(3 * x) - 3 * np.sin(3 * x)),
                               rtol=1e-12, atol=1e-15)
    monkeypatch.undo()
    ckernel.reset()


@needs_cc
def test_a_failing_compiler_is_reported_and_changes_nothing(monkeypatch, tmp_path, rng):
    monkeypatch.setenv("DIFFPROG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", _script(tmp_path, "badcc", 'echo "cc1: out of cheese" >&2; exit 3'))
    ckernel.reset()
    x = rng.standard_normal(BIG)
    f = dp.value_and_grad(_fresh_w4())
    first = f(x)
    ckernel.wait()
    state = ckernel.kernels()[-1].state
    assert state.startswith("failed (probe library not built:") and "out of cheese" in state
    assert "exited with 3" in ckernel.status()
    _assert_bit_identical(f(x), first)
    monkeypatch.undo()
    ckernel.reset()


def test_off_switch(monkeypatch, rng):
    monkeypatch.setenv("DIFFPROG_CKERNELS", "0")
    x = rng.standard_normal(BIG)
    src = dp.differentiable(_w4).source(x, kind="grad")
    assert "_block" in src and "_ck" not in src
    assert "off" in ckernel.status()


@needs_cc
def test_status_names_compiler_cache_and_refusals():
    ckernel.probe()
    text = ckernel.status()
    assert "compiler" in text and "cache" in text and "spellings match NumPy" in text


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_fused_programs_without_hanging(rng):
    x = rng.standard_normal(BIG)
    f = dp.value_and_grad(_fresh_w4())
    expect = f(x)  # the parent's worker pool and compile thread exist now
    pid = os.fork()
    if pid == 0:  # the child: must finish, with the parent's results
        code = 1
        try:
            got = f(x)
            g = dp.value_and_grad(_fresh_w4())(x)  # a new program: a new compile
            ckernel.wait(timeout=60)
            code = 0 if got[0] == expect[0] and np.array_equal(g[1], expect[1]) else 2
        finally:
            os._exit(code)
    for _ in range(1200):  # up to 60 s, then the child counts as hung
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.WEXITSTATUS(status) == 0


@needs_cc
def test_the_probe_refuses_a_spelling_that_hides_a_numpy_warning(monkeypatch):
    ckernel.reset()
    # sqrt(-1) is NaN with NumPy's "invalid value" warning; a NaN literal gives the same
    # value and no flag, so the C path would swallow the warning
    monkeypatch.setattr(PRIMITIVES["sqrt"], "c", "(isless({0}, 0.0) ? NAN : sqrt({0}))")
    try:
        assert "does not raise (invalid)" in ckernel.probe()["sqrt"]
    finally:
        monkeypatch.undo()
        ckernel.reset()


# ---------------------------------------------------------------- NumPy's loops called from C

@needs_cc
def test_numpy_loops_stand_in_where_the_c_spelling_differs(rng):
    """tanh/exp/log of an input and of a value computed in the block: where libm differs
    from NumPy's own SIMD loop here, the kernel calls that loop (on tiles) and its results
    are still NumPy's, bit for bit."""
    names = ("tanh", "exp", "log", "sin")
    _skip_unless_probed(*names)
    x = rng.uniform(0.1, 3.0, BIG)

    def f(x):
        h = np.tanh(x)
        return np.sum(np.exp(h * 0.5) * np.log(x + h) - np.sin(x)), h * 2.0

    prog, compiled, numpy_prog = _program(f, x)
    assert compiled and all(k.state.startswith("ready") for k in compiled), [k.state for k in compiled]
    looped = sorted(n for n in names if ckernel.probe()[n] is not None)
    if looped:  # this machine's libm differs from NumPy for these: the kernel says so
        assert any("NumPy's loops for" in k.state for k in compiled)
        assert any(all(n in k.state for n in looped) for k in compiled), [k.state for k in compiled]
        assert any("dp_call_loop" in k.source for k in compiled)
    before = [k.runs for k in compiled]
    _assert_bit_identical(prog(x), numpy_prog(x))
    assert [k.runs for k in compiled] == [r + 1 for r in before]


def test_a_numpy_loop_is_called_only_on_float64_arrays_of_the_block():
    """A scalar operand (a kernel parameter) is no tile NumPy's loop could walk: that
    occurrence keeps the C spelling, and the kernel is refused where it differs."""
    from diffprog.ir import Eqn, Var
    exp = PRIMITIVES["exp"]
    b = ckernel.BlockBuilder(block=8)
    x = b.array("x", Aval((8,), np.dtype(np.float64)))
    b.op(Eqn(exp, [Var(Aval((8,), np.dtype(np.float64)))], [Var(Aval((8,), np.dtype(np.float64)))], {}),
         [x], "t0")
    assert b.externals == ["loop:exp", "data:exp"] and not b.loop_gaps
    p = b.scalar("s", Aval((), np.dtype(np.float64)))
    b.op(Eqn(exp, [Var(Aval((), np.dtype(np.float64)))], [Var(Aval((8,), np.dtype(np.float64)))], {}),
         [p], "t1")
    assert b.loop_gaps == {"exp"}
    b.export("t0", np.float64)
    kernel_source = b.function("dp_block")
    assert "#if DP_LOOP_exp" in kernel_source and kernel_source.count("dp_call_loop(") == 1


@needs_cc
def test_squares_and_reciprocals_fuse_even_where_pow_differs(rng):
    """x ** 2, x ** -1 and x ** 1 are arithmetic in NumPy and in C: their verdict is apart
    from general powers (NumPy's SIMD pow differs from libm's on AVX-512 machines)."""
    assert ckernel.probe()["integer_pow_shortcut"] is None
    x = rng.uniform(0.5, 2.0, BIG)
    prog, compiled, numpy_prog = _program(lambda x: np.sum(x ** 2 + x ** -1 * x ** 1), x, kind="value")
    assert compiled and all(k.state.startswith("ready") for k in compiled), [k.state for k in compiled]
    _assert_bit_identical(prog(x), numpy_prog(x))
    if ckernel.probe()["integer_pow"] is not None:  # a general power still refuses
        _, cubed, _ = _program(lambda x: np.sum(x ** 3), x, kind="value")
        assert all("integer_pow" in k.state for k in cubed), [k.state for k in cubed]


@needs_cc
@pytest.mark.parametrize("small", [(300,), (60, 1), (1, 1)])
def test_broadcast_inputs_run_compiled_with_numpy_bits(rng, small):
    """A bias or a column read by the C twin through its tile buffer: the same bits as
    the NumPy kernel (which walks a full-size copy) and the unfused program."""
    _skip_unless_probed("tanh")
    x, b = rng.standard_normal((60, 300)), rng.standard_normal(small)

    def f(x, b):
        h = np.tanh(x * b + b)
        return np.sum(h * b), h - b

    prog, compiled, numpy_prog = _program(f, x, b)
    ready = [k for k in compiled if k.state.startswith("ready")]
    assert ready and any(k.n_tiles for k in ready), [k.state for k in compiled]
    assert any("b0[k]" in k.source or "b1[k]" in k.source or "b2[k]" in k.source for k in ready)
    before = [k.runs for k in ready]
    _assert_bit_identical(prog(x, b), numpy_prog(x, b))
    assert [k.runs for k in ready] == [r + 1 for r in before]


@needs_cc
def test_small_kernels_stay_on_the_calling_thread(monkeypatch, rng):
    """Fewer than PER_THREAD elements per thread: one copy of the work, no hand-off (a
    worker's wake-up cost more than W2's whole block); copies a worker has not started
    when the caller's copy ends are cancelled, not waited for."""
    from diffprog.engines import threads
    x = rng.standard_normal(BIG)
    prog, compiled, _ = _program(lambda x: np.sum(np.sin(x) * x), x, kind="value")
    copies = []
    real = threads.run_shared
    monkeypatch.setattr(ckernel, "run_shared", lambda work, n: copies.append(n) or real(work, n))
    monkeypatch.setenv("DIFFPROG_THREADS", "4")
    monkeypatch.setattr(ckernel, "PER_THREAD", BIG + 1)
    prog(x)
    monkeypatch.setattr(ckernel, "PER_THREAD", 1000)
    prog(x)
    assert copies == [1, 4]
    done = threads.run_shared(lambda: 7, 3)
    assert done[0] == 7 and 1 <= len(done) <= 3 and set(done) == {7}
