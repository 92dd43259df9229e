"""The julia engine.

Without Julia (our CI machines): the generated source for every primitive case and for
realistic programs parses with tree-sitter-julia (no ERROR/MISSING nodes) and passes
``fatou lint``; golden files pin a few sources; the Julia package itself is lint- and
format-clean; hostile pytree keys never reach the source; asking for the engine fails
fast with EngineUnavailable.

With Julia (tests marked ``julia``): the same cases run on the julia and numpy engines and
the gradients agree with each other and with finite differences.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import diffprog as dp
from diffprog import engines
from diffprog.engines import julia as julia_engine
from diffprog.engines.julia import (CUDA_COMPAT, CUDA_UUID, JuliaEngine, JuliaProgram,
                                    generate_julia, has_control_flow, hessian_vjp_graph,
                                    has_complex_values, jl_complex, jl_float, jl_perm,
                                    jl_ranges, julia_number, julia_template, unaliased)
from diffprog.errors import EngineError, EngineUnavailable, UnsupportedFunctionError
from diffprog.primitives import PRIMITIVES, Unsupported
from diffprog.tree import flatten

from ..helpers import assert_close, numeric_grad
from .test_numpy import HOSTILE_KEYS

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = pathlib.Path(__file__).parent / "golden"


# ------------------------------------------------------------------ static checkers

def _fatou() -> str | None:
    found = shutil.which("fatou")
    if found:
        return found
    beside = pathlib.Path(sys.executable).parent / "fatou"
    return str(beside) if beside.exists() else None


FATOU = _fatou()
needs_fatou = pytest.mark.skipif(FATOU is None, reason="fatou is not installed "
                                 "(pip install 'diffprog[test]')")

try:
    import tree_sitter
    import tree_sitter_julia
    _PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_julia.language()))
except ImportError:  # pragma: no cover - the test extra has both
    _PARSER = None
needs_tree_sitter = pytest.mark.skipif(_PARSER is None, reason="tree-sitter-julia is not "
                                       "installed (pip install 'diffprog[test]')")


def parse_errors(source: str) -> list[str]:
    tree = _PARSER.parse(source.encode())
    bad, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            bad.append(f"line {node.start_point[0] + 1}: {node.text[:60]!r}")
        stack.extend(node.children)
    return bad


def fatou_lint(sources: dict[str, str], tmp_path) -> str:
    """Lint many generated sources in one fatou run; '' when clean."""
    for name, text in sources.items():
        (tmp_path / f"{name}.jl").write_text(text)
    proc = subprocess.run([FATOU, "lint", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    return "" if proc.returncode == 0 else proc.stdout + proc.stderr


# ------------------------------------------------------------------ sources per primitive

def _case_graph(prim, i):
    case = prim.cases[i]
    inputs = case.make(np.random.default_rng(7 + i))
    wrap = case.wrap or (lambda *xs: xs[0] if len(xs) == 1 else xs)

    def f(*xs):
        wrapped = wrap(*xs)
        wrapped = wrapped if isinstance(wrapped, (tuple, list)) else (wrapped,)
        return prim.bind(*wrapped, **case.params)
    return dp.differentiable(f).ir(*inputs)


def _spelled_cases():
    """(id, graph) per primitive case whose spelling exists; the others must raise."""
    out = []
    for name, prim in sorted(PRIMITIVES.items()):
        for i in range(len(prim.cases)):
            out.append((f"{name}-{i}", prim, i))
    return out


CASES = _spelled_cases()


def _source_or_reason(prim, i):
    graph = _case_graph(prim, i)
    if not any(e.prim is prim for e in graph.eqns):
        return None, "folded away"
    try:
        return generate_julia(graph).text, None
    except UnsupportedFunctionError as e:
        return None, str(e)


@needs_tree_sitter
@needs_fatou
def test_every_primitive_case_gives_parseable_lint_clean_julia_or_a_named_reason(tmp_path):
    sources, refused = {}, {}
    for ident, prim, i in CASES:
        source, reason = _source_or_reason(prim, i)
        if source is None:
            refused[ident] = reason
            if reason != "folded away":
                named = re.search(r"cannot run primitive '(\w+)'", reason)
                assert named and "Fix:" in reason, reason
                refused[ident] = (named.group(1), reason)
            continue
        errors = parse_errors(source)
        assert not errors, f"{ident}: tree-sitter-julia errors {errors}\n{source}"
        sources[ident.replace("-", "_")] = source
    assert fatou_lint(sources, tmp_path) == ""
    # Refusals are only the documented ones: entries the table marks Unsupported (they run
    # Python code, or exist only in the numpy engine) and linear algebra on stacks of
    # matrices (the julia engine spells single matrices). einsum and matmul of stacks have
    # spellings (DiffProg.npeinsum, DiffProg.npmatmul_batched).
    for ident, refusal in refused.items():
        if refusal == "folded away":
            continue
        name, reason = refusal
        assert isinstance(PRIMITIVES[name].julia, Unsupported) or "stack of matrices" in reason, \
            (ident, reason)
    for ident in ("einsum_0", "einsum_1", "einsum_2", "einsum_3"):
        assert "DiffProg.npeinsum(" in sources[ident], (ident, refused.get(ident))
    assert len(sources) >= 80
    # structured control flow is lowered to local Julia functions run by DiffProg helpers
    for ident in ("scan_0", "cond_0", "cond_1", "while_loop_0", "remat_0"):
        assert ident in sources, (ident, refused.get(ident.replace("_", "-")))
    assert "DiffProg.npscan(f" in sources["scan_0"] and " = function (b" in sources["scan_0"]


def test_every_primitive_has_a_spelling_or_a_reason():
    for name, prim in PRIMITIVES.items():
        assert isinstance(prim.julia, (str, Unsupported)) or callable(prim.julia), name
        if isinstance(prim.julia, Unsupported):
            assert prim.julia.reason.strip(), name


def test_unsupported_primitive_raises_naming_it():
    @dp.differentiable
    def f(a):
        return np.sum(np.linalg.inv(a))
    with pytest.raises(UnsupportedFunctionError, match="'inv'"):
        f.source(np.ones((2, 3, 3)) + np.eye(3), engine="julia")


# ------------------------------------------------------------------ conventions

def test_reversed_axes_conventions():
    assert jl_perm((1, 0)) == "(2, 1)"
    # np.transpose(x, (2, 0, 1)) of x with NumPy shape (A, B, C) has shape (C, A, B):
    # Julia dims reversed: out (B, A, C) from in (C, B, A) -> out dims are in dims (2, 3, 1).
    assert jl_perm((2, 0, 1)) == "(2, 3, 1)"
    x = np.arange(24).reshape(2, 3, 4)
    julia_in = x.transpose()  # what Julia holds
    perm = [int(p) - 1 for p in jl_perm((2, 0, 1)).strip("()").split(",")]
    assert np.array_equal(np.transpose(julia_in, perm), np.transpose(x, (2, 0, 1)).transpose())
    ranges, kept, _ = jl_ranges((slice(None, None, -2), 1), (5, 4))
    assert ranges == ["2:2", "5:(-2):1"] and kept == (3, 1)


def test_float_literals_follow_the_equation_dtype():
    assert jl_float(2.0, np.float32) == "2.0f0"
    assert jl_float(1e-5, np.float32) == "1.0f-5"
    assert jl_float(-2.5, np.float64) == "(-2.5)"
    assert jl_float(np.inf, np.float32) == "Inf32"
    assert jl_float(-np.inf, np.float64) == "(-Inf)"
    assert jl_float(np.nan, np.float64) == "NaN"
    src = dp.differentiable(lambda x: np.sum(x * 2.0)).source(np.ones(3, np.float32),
                                                              engine="julia")
    assert "2.0f0" in src and " 2.0 " not in src
    src = dp.differentiable(lambda x: np.sum(x * 2.0)).source(np.ones(3), engine="julia")
    assert ".* 2.0" in src
    # an int operand of a float elementwise result is written as a float (no Union eltype)
    src = dp.differentiable(lambda x: np.where(x > 0, 1, x)).source(np.ones(3), engine="julia")
    assert "ifelse.(v1, 1.0, a1)" in src
    src = dp.differentiable(lambda x: np.where(x > 0, 1, x)).source(np.ones(3, np.float32),
                                                                   engine="julia")
    assert "ifelse.(v1, 1.0f0, a1)" in src


def test_constants_are_trailing_arguments_not_pasted_text():
    def f(x):
        c = np.arange(4.0) + 0.125  # made inside: a constant of the program
        return np.sum(x * c)
    src = dp.differentiable(f).source(np.ones(4), engine="julia")
    assert src.startswith("function program(a1, c1)")
    assert "0.125" not in src and "1.125" not in src


def test_no_mutation_and_no_scalar_indexing_in_generated_code():
    for ident, prim, i in CASES:
        source, _ = _source_or_reason(prim, i)
        if source is None:
            continue
        assert not re.search(r"\.[-+*/^]?=(?!=)", source), (ident, source)  # x .= y, x .+= y
        assert "setindex" not in source and "push!" not in source and "mul!" not in source
        for line in source.splitlines():
            if "[" in line:  # only range indexing: every index has a colon
                inside = line[line.index("[") + 1:line.rindex("]")]
                assert all(":" in part for part in inside.split(",")), (ident, line)


@needs_tree_sitter
def test_hostile_pytree_keys_never_enter_generated_julia():
    params = {k: np.full(2, float(i + 1)) for i, k in enumerate(HOSTILE_KEYS)}

    def f(p):
        return sum(np.sum(v * v) for v in p.values())
    src = dp.differentiable(f).source(params, engine="julia")
    for k in HOSTILE_KEYS:
        if len(k) > 3:
            assert k not in src
    assert not parse_errors(src)


# ------------------------------------------------------------------ realistic programs

def mlp_loss(params, x, y):
    h = np.tanh(x @ params["w1"] + params["b1"])
    pred = h @ params["w2"] + params["b2"]
    return np.mean((pred - y) ** 2)


def rk4(y0, k):
    def rhs(y):
        return -k * y + 0.1 * np.sin(y)
    y, dt = y0, 0.1
    for _ in range(4):
        k1 = rhs(y)
        k2 = rhs(y + 0.5 * dt * k1)
        k3 = rhs(y + 0.5 * dt * k2)
        k4 = rhs(y + dt * k3)
        y = y + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return np.sum(y ** 2)


def linear_solve(a, b):
    x = np.linalg.solve(a, b)
    return np.sum(x ** 2) + np.linalg.slogdet(a)[1]


def structured(p, y0, xs):
    """scan (with stacked outputs), cond, a bounded while loop, checkpoint, fori_loop."""
    def step(carry, x):
        y, total = carry
        y = y + 0.1 * np.sin(p * y) * x
        return (y, total + np.sum(y * y)), y[0]
    (y, total), ys = dp.scan(step, (y0, np.zeros(())), xs)
    y = dp.cond(total > 1.0, lambda v: v * 2.0, lambda v: -v, y)
    y = dp.while_loop(lambda v: np.sum(v) < 10.0, lambda v: v * 1.5, np.abs(y) + 0.1,
                      max_steps=6)
    y = dp.fori_loop(0, 3, lambda i, v: v + 0.01 * np.tanh(v), y)
    return total + np.sum(ys) + np.sum(dp.checkpoint(lambda a: np.tanh(a) * p)(y))


def odeint_rk4(k, y0):
    from diffprog.sciml import odeint
    ys = odeint(lambda y, t, k: -k * y + np.sin(t), y0, np.linspace(0.0, 1.0, 4), k,
                steps_per_interval=5)
    return np.sum(ys ** 2)


def complex_wave(z, k):
    """A real loss of complex values: a phase ramp with a real wavenumber (real and complex
    operands mixed), an outer product with the conjugate, a fori_loop with a complex carry,
    a complex slogdet, |.|, real and imaginary parts."""
    m = np.outer(z, np.conj(z)) + 3.0 * np.eye(3)
    w = np.exp(1j * k * np.arange(3.0)) * z
    w = dp.fori_loop(0, 2, lambda i, v: v * (0.9 + 0.1j) + 0.1 * np.sin(v), w)
    sign, logdet = np.linalg.slogdet(m + 0.5j * w[:, None] * np.eye(3))
    return (np.sum(np.abs(w @ m) ** 2) + np.real(sign) * logdet
            + np.sum(np.real(w) * np.imag(z)))


def _programs():
    rng = np.random.default_rng(0)
    params = {"w1": rng.standard_normal((3, 8)), "b1": np.zeros(8),
              "w2": rng.standard_normal((8, 1)), "b2": np.zeros(1)}
    x, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 1))
    a = rng.standard_normal((3, 3)) + 3 * np.eye(3)
    return {
        "mlp_loss": (mlp_loss, (params, x, y)),
        "rk4": (rk4, (rng.standard_normal(5), 0.7)),
        "linear_solve": (linear_solve, (a, rng.standard_normal(3))),
        "mlp_loss_float32": (mlp_loss, (
            {k: v.astype(np.float32) for k, v in params.items()},
            x.astype(np.float32), y.astype(np.float32))),
        "structured": (structured, (np.array([1.0, 2.0]), np.array([0.5, 0.25]),
                                    np.linspace(0.0, 1.0, 5))),
        "odeint_rk4": (odeint_rk4, (np.array(0.7), np.array([1.0, -0.5]))),
        "complex_wave": (complex_wave, (np.array([0.5 + 1.0j, -1.0 + 0.25j, 0.75 - 0.5j]), 0.7)),
    }


@needs_tree_sitter
@needs_fatou
def test_realistic_programs_parse_and_lint(tmp_path):
    sources = {}
    for name, (fn, args) in _programs().items():
        f = dp.differentiable(fn)
        sources[name] = f.source(*args, engine="julia")
        # the gradient graphs the Python transforms build also spell in Julia
        sources[name + "_grad"] = f.source(*args, engine="julia", kind="grad")
        # and so do the Hessian programs of those with control flow (the engine runs
        # them instead of a Zygote Hessian)
        graph = f.ir(*args)
        if has_control_flow(graph):
            sources[name + "_hessian"] = generate_julia(hessian_vjp_graph(graph, 0)).text
    assert {"structured_hessian", "odeint_rk4_hessian"} <= set(sources)
    for name, src in sources.items():
        assert not parse_errors(src), (name, parse_errors(src), src)
    assert fatou_lint(sources, tmp_path) == ""


@pytest.mark.parametrize("name", ["mlp_loss", "rk4", "linear_solve", "mlp_loss_float32",
                                  "structured", "odeint_rk4", "complex_wave"])
def test_golden_sources(name):
    fn, args = _programs()[name]
    src = dp.differentiable(fn).source(*args, engine="julia")
    path = GOLDEN / f"{name}.jl"
    if os.environ.get("DIFFPROG_UPDATE_GOLDEN") == "1":  # regenerate deliberately
        path.write_text(src)
    assert src == path.read_text(), f"generated Julia for {name} changed; if intended, " \
        f"rerun with DIFFPROG_UPDATE_GOLDEN=1 and review the diff"


# Programs julia/test/runtests.jl loads from the golden files and differentiates with
# Zygote, against these NumPy-engine results and its own finite differences.
JULIA_TESTED_GOLDEN = ("rk4", "structured", "odeint_rk4", "complex_wave")


def _julia_literal(value) -> str:
    """A NumPy value as Julia text in Julia layout (test fixtures only: our own numbers)."""
    a = np.asarray(value)
    if a.dtype == np.bool_:
        items, eltype = ["true" if v else "false" for v in a.ravel()], "Bool"
    elif np.issubdtype(a.dtype, np.integer):
        items, eltype = [str(int(v)) for v in a.ravel()], julia_engine.jl_type(a.dtype)
    elif np.issubdtype(a.dtype, np.complexfloating):  # ComplexF64(re, im): typed already
        items, eltype = [jl_complex(v, a.dtype) for v in a.ravel()], julia_engine.jl_type(a.dtype)
    else:
        items, eltype = [jl_float(v, a.dtype) for v in a.ravel()], julia_engine.jl_type(a.dtype)
    if a.ndim == 0:
        return items[0] if eltype in ("Bool", "Float64", "Float32", "Int64", "ComplexF64",
                                      "ComplexF32") else f"{eltype}({items[0]})"
    flat = f"{eltype}[{', '.join(items)}]"  # C order = column-major with dims reversed
    return flat if a.ndim == 1 else f"reshape({flat}, {', '.join(map(str, a.shape[::-1]))})"


def julia_fixture(name: str) -> str:
    """Arguments (inputs, then the program's constants) and the NumPy engine's value and
    gradients for golden program ``name``, as a Julia NamedTuple expression."""
    fn, args = _programs()[name]
    f = dp.differentiable(fn, engine="numpy")
    source = generate_julia(f.ir(*args))
    leaves = [np.asarray(v) for v in flatten(args)[0]] + [np.asarray(c) for c in source.constants]
    value, grads = dp.value_and_grad(f, argnums=tuple(range(len(args))))(*args)
    lines = [f"# Arguments and expected results for the golden program {name}.jl, in Julia",
             "# layout (NumPy axes reversed, 0-d values as numbers); the expected values come",
             "# from diffprog's numpy engine. Written by tests/engines/test_julia.py",
             "# (DIFFPROG_UPDATE_GOLDEN=1), read by julia/test/runtests.jl.",
             "(", "    args = ("]
    lines += [f"        {_julia_literal(v)}," for v in leaves]
    lines += ["    ),",
              f"    wrt = {julia_engine.jl_tuple(range(1, len(args) + 1))},",
              f"    value = {_julia_literal(value)},",
              "    gradients = ("]
    lines += [f"        {_julia_literal(g)}," for g in grads]
    lines += ["    ),", ")"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", JULIA_TESTED_GOLDEN)
def test_golden_fixtures_for_the_julia_tests(name):
    fn, args = _programs()[name]  # the fixture's constants are those of the golden source
    assert generate_julia(dp.differentiable(fn).ir(*args)).text == (GOLDEN / f"{name}.jl").read_text()
    text = julia_fixture(name)
    path = GOLDEN / f"{name}.args.jl"
    if os.environ.get("DIFFPROG_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"the Julia test fixture for {name} changed; if " \
        f"intended, rerun with DIFFPROG_UPDATE_GOLDEN=1 and review the diff"
    if _PARSER is not None:
        assert not parse_errors(text)
    runtests = (ROOT / "julia" / "test" / "runtests.jl").read_text()
    assert f'"{name}"' in runtests  # julia/test/runtests.jl differentiates it


# ------------------------------------------------------------------ issue 18 (without Julia)
# Each fix is pinned by the generated source, by the Python path to Julia (a recording
# stand-in for DiffProg, no Julia needed), or by the Julia code path it relies on.

def julia_file(relative: str) -> str:
    return (ROOT / "julia" / relative).read_text()


def assert_julia_code(relative: str, *snippets: str, absent: tuple = ()):
    text = julia_file(relative)
    for snippet in snippets:
        assert snippet in text, f"{relative} should contain: {snippet}"
    for snippet in absent:
        assert snippet not in text, f"{relative} should no longer contain: {snippet}"


class _RecordingDiffProg:
    """Stands in for juliacall's DiffProg module: records what reaches `import_array`."""

    def __init__(self):
        self.imported = []

    def import_array(self, array, shape):
        self.imported.append((array, shape))
        return ("julia array", shape)

    def load_program(self, text):
        return ("program", text)


def _recording_bridge():
    bridge = julia_engine._Bridge.__new__(julia_engine._Bridge)
    bridge.dp = _RecordingDiffProg()
    bridge.cuda = False
    return bridge


def test_integer_scan_inputs_get_no_cotangent_buffer():
    """Bug 1: fori_loop scans an int64 index array; the body uses the index in float maths
    (every odeint rk4 program), so Zygote hands back Float64 cotangents for Int values."""
    def f(y):
        return np.sum(dp.fori_loop(0, 3, lambda i, v: v + (i * 0.1) * v, y))
    source = generate_julia(dp.differentiable(f).ir(np.ones(2)))
    scanned = re.search(r"DiffProg\.npscan\(f\d+, \((\w+),\), \((c\d+),\)", source.text)
    assert scanned, source.text
    index = source.constants[int(scanned.group(2)[1:]) - 1]
    assert np.asarray(index).dtype == np.int64  # the scanned input is an integer array
    odeint = dp.differentiable(odeint_rk4).source(*_programs()["odeint_rk4"][1], engine="julia")
    assert "(v19, v16, b12," in odeint and "v36 = b24 .* b25" in odeint  # index .* dt
    assert_julia_code(
        "src/control.jl",
        "cotangent_buffer(x) = differentiable_value(x) ? zero_like(x) : NoTangent()",
        "d_xs = map(cotangent_buffer, xs)",
        "differentiable_value(primal) || return ZeroTangent()",
        absent=("d_xs = map(zero_like, xs)",))


def test_zero_d_values_are_julia_numbers():
    """Bug 2: 0-d values enter Julia as numbers of their dtype, never as 0-dim arrays."""
    assert julia_number(np.array(2.5, np.float32)) == 2.5
    assert type(julia_number(np.array(2.5, np.float32))) is np.float32
    assert type(julia_number(np.array(True))) is np.bool_
    assert type(julia_number(np.array(3))) is np.int64
    assert julia_number(0.5) == 0.5 and julia_number(np.float64(1.5)) == 1.5
    assert julia_number(np.ones(1)) is None and julia_number(np.ones((2, 2))) is None
    bridge = _recording_bridge()
    assert bridge.to_julia(np.array(0.5), "cpu") == 0.5
    assert bridge.dp.imported == []  # no DLPack import for a 0-d value
    bridge.to_julia(np.ones(3), "cpu")
    assert len(bridge.dp.imported) == 1
    # a program's 0-d constants (structured's scan carry np.zeros(())) are numbers too
    fn, args = _programs()["structured"]
    source = generate_julia(dp.differentiable(fn).ir(*args))
    program = JuliaProgram(source, None)
    bridge = _recording_bridge()
    julia_args = program.julia_args(bridge, [np.asarray(a) for a in args], "cpu", [])
    constants = julia_args[len(args):]
    assert [type(c) for c in constants[:2]] == [np.float64, np.bool_]
    # arrays (the fori index constant, then the inputs) go through DLPack
    assert [shape for _, shape in bridge.dp.imported] == [(3,), (2,), (2,), (5,)]


def test_reshape_to_zero_d_is_spelled_as_a_sum():
    """Bug 2: npreshape(x, ()) made a 0-dim array; it is `sum(x)` (differentiable, no
    scalar GPU indexing), or DiffProg.npscalar for non-float eltypes."""
    src = dp.differentiable(lambda b: b[1] * 2.0 + b[2]).source(np.ones(3), engine="julia")
    assert "sum(a1[2:2])" in src and "sum(a1[3:3])" in src
    src = dp.differentiable(lambda b: np.reshape(b, ()) * 2.0).source(np.ones(1), engine="julia")
    assert "v1 = sum(a1)" in src
    src = dp.differentiable(lambda b: np.where((b > 0)[0], b, -b)).source(np.ones(2),
                                                                       engine="julia")
    assert "DiffProg.npscalar(v1[1:1])" in src
    structured_src = (GOLDEN / "structured.jl").read_text()
    assert "v14 = sum(v10[1:1])" in structured_src
    odeint_src = (GOLDEN / "odeint_rk4.jl").read_text()
    assert "v16 = sum(b11[1:1])" in odeint_src and "v17 = sum(b11[2:2])" in odeint_src
    for name, (fn, args) in _programs().items():
        f = dp.differentiable(fn)
        for kind in ("value", "grad"):
            src = f.source(*args, engine="julia", kind=kind)
            assert not re.search(r"npreshape\([^\n]*, \(\)\)", src), (name, kind, src)
    # the Julia side agrees wherever a 0-d value still meets it
    assert_julia_code("src/numpy_shapes.jl",
                      "npreshape(x::AbstractArray, ::Tuple{}) = npscalar(x)",
                      "npreshape(x::Number, ::Tuple{}) = x",
                      "npscalar(x::AbstractArray{<:FloatLike}) = (check_one_element(x); sum(x))")
    assert_julia_code("src/exchange.jl", "shape == () && return only_element(a)")
    assert_julia_code("src/derivatives.jl",
                      "gradient_like(g::AbstractArray{<:Number, 0}, x::Number) =",
                      "function gradient_like(g::Number, x::AbstractArray{<:Any, 0})")
    assert_julia_code("src/control.jl",
                      "project_cotangent(primal, d) = ProjectTo(primal)(d)",
                      "project_cotangent(primal::Number, d::AbstractArray) =",
                      "d_init = ntuple(k -> materialize(d_carry[k], init[k]), N)")


def test_zero_d_gradient_source():
    """Bug 2's first example: dp.grad(lambda x: np.sin(x) + x) at a 0-d input is plain
    broadcasting on a number (the input arrives as one)."""
    src = dp.differentiable(lambda x: np.sin(x) + x).source(np.array(0.5), engine="julia")
    assert src == "function program(a1)\n    v1 = sin.(a1)\n    v2 = v1 .+ a1\n    return (v2,)\nend\n"


def test_julia_keeps_dlpack_tensors_and_python_owners_alive():
    """Bug 3: the DLManagedTensor travels with the array (its finalizer frees CuPy memory);
    the Python side keeps constants' owners for the program's life and copies outputs
    that share memory with what it handed to Julia."""
    assert_julia_code("ext/DiffProgPythonCallExt.jl",
                      "tensor = DLPack.DLManagedTensor(capsule)",
                      "return DLPack.unsafe_wrap(tensor, (o, capsule, tensor))",
                      absent=("DLPack.unsafe_wrap(DLPack.DLManagedTensor(o), o)",))
    strided = np.arange(12.0).reshape(3, 4)[:, ::2]  # not contiguous: a temporary copy
    source = generate_julia(dp.differentiable(lambda x: np.sum(x * (np.arange(2.0) + 1)))
                            .ir(strided))
    program = JuliaProgram(source, None)
    bridge = _recording_bridge()
    keep: list = []
    program.julia_args(bridge, [strided], "cpu", keep)
    owners = program._constant_owners["cpu"]
    (constant, _), (copied, _) = bridge.dp.imported  # constants are passed first
    assert len(owners) == 1 and owners[0] is constant
    assert any(k is copied for k in keep) and any(k is constant for k in keep)
    assert copied.flags.c_contiguous and copied is not strided
    # outputs that may share memory with those arrays are copied, others are not
    owner = np.arange(6.0)
    alias, fresh = owner.reshape(2, 3).T, np.ones(3)
    out = unaliased([alias, fresh, 2.5], [owner])
    assert out[0] is not alias and np.array_equal(out[0], alias)
    assert not np.may_share_memory(out[0], owner)
    assert out[1] is fresh and out[2] == 2.5


def test_cuda_compat_excludes_cuda_6():
    """Bug 4: DLPack.jl 0.3.1's CUDA extension uses CUDA.Mem.DeviceBuffer, which CUDA.jl 6
    removed: CUDA.jl must stay below 6, in Project.toml and in the install hint."""
    project = julia_file("Project.toml")
    compat = project[project.index("[compat]"):]
    assert re.search(r'^CUDA = "5\.4"$', compat, re.M), compat
    assert CUDA_COMPAT == "5.4"
    assert re.search(r'^DLPack = "0\.3\.1"$', compat, re.M)  # the reason for the bound
    assert CUDA_UUID in project
    bridge = julia_engine._Bridge.__new__(julia_engine._Bridge)
    bridge.cuda = False

    class NoCuda:
        def seval(self, code):
            raise RuntimeError("ArgumentError: Package CUDA not found in current path")
    bridge.jl = NoCuda()
    with pytest.raises(EngineUnavailable) as info:
        bridge.use_cuda()
    message = str(info.value)
    assert f"juliapkg.add('CUDA', '{CUDA_UUID}', version='5.4')" in message
    assert "CUDA.jl 6" in message and "NumPy arrays" in message
    notes = julia_file("NOTES-for-python-side.md")
    assert '"version": "5.4"}' in notes and '"5.4, 6"' not in notes


def test_hessians_of_control_flow_come_from_the_transforms():
    """Likely problem: Zygote cannot differentiate npscan's rule again (it fills buffers
    in place), so such Hessians are the VJP of the gradient graph, run forward in Julia."""
    for name in ("structured", "odeint_rk4"):
        fn, args = _programs()[name]
        f = dp.differentiable(fn, engine="numpy")
        graph = f.ir(*args)
        assert has_control_flow(graph)
        hvp = hessian_vjp_graph(graph, 0)
        assert len(hvp.invars) == len(graph.invars) + 1  # the unit cotangent u
        # the construction is right: on the numpy engine it gives dp.hessian's numbers
        run = engines.get("numpy").compile(hvp)
        x = np.asarray(args[0], np.float64)
        inputs = [np.asarray(a) for a in flatten(args)[0]]
        rows = []
        for i in range(x.size):
            unit = np.zeros(x.size)
            unit[i] = 1
            rows.append(run(*inputs, unit.reshape(x.shape))[1])
        assert_close(np.stack(rows).reshape(x.shape * 2), dp.hessian(f)(*args), rtol=1e-10)
        # the julia engine compiles that program for a hessian request (no Julia needed
        # until it runs)
        request = engines.Derivative("hessian", graph, (0,))
        (program,) = JuliaEngine().compile_native(request)
        assert program.source == generate_julia(hvp).text
    mlp = dp.differentiable(mlp_loss).ir(*_programs()["mlp_loss"][1])
    assert not has_control_flow(mlp)
    assert_julia_code("src/control.jl",
                      "function ChainRulesCore.rrule(::RuleConfig, ::typeof(scan_steps), args...)",
                      "throw(ArgumentError(SCAN_SECOND_ORDER))")


def test_gpu_arrays_made_from_numbers_follow_the_call():
    """Likely problems on the GPU: arrays made from numbers alone (stacked per-step
    scalars, a number reshaped or broadcast) take the call's device; prod and cumprod
    rules never index GPU arrays element by element."""
    assert_julia_code("src/devices.jl",
                      "return task_local_storage(f, TEMPLATE_KEY, first_array(args))",
                      "return like === nothing ? Array{T}(undef, dims) : similar(like, T, dims)")
    assert_julia_code("src/numpy_shapes.jl",
                      "zeros_like(x::Number, shape) = fill!(new_array(typeof(x), Tuple(shape)), zero(x))",
                      "npreshape(x::Number, shape::Tuple) = npbroadcast_to(x, shape)",
                      absent=("zeros(typeof(x), shape)", "falses(shape)",
                              "npreshape(x::Number, shape::Tuple) = fill(x, shape)"))
    assert_julia_code("src/control.jl",
                      "all(scalar_like, values) && return device_vector(",
                      absent=("map(identity, values)",))
    assert_julia_code("src/derivatives.jl", "with_array_template(args) do",
                      "reshape(device_vector(rows; like = y), size(y))")
    assert_julia_code("src/rules.jl", "::typeof(prod_kept),", "::typeof(npcumprod),")
    for ident, prim, i in CASES:
        if prim.name == "cumprod":
            source, _ = _source_or_reason(prim, i)
            assert "DiffProg.npcumprod(" in source and " cumprod(" not in source


def test_integer_only_scan_bodies():
    """Likely problem: rrule_via_ad gives one NoTangent() (not a tuple) for a body whose
    pullback returned nothing, e.g. one that only touches integers."""
    assert_julia_code("src/control.jl",
                      "argument_cotangent(grads::AbstractZero, k) = grads",
                      "argument_cotangent(grads::Tuple, k) = grads[k + 1]",
                      absent=("d_args = grads[2:end]",))


def test_einsum_and_batched_matmul_have_julia_spellings():
    def spelled(fn, *args):
        return dp.differentiable(fn).source(*args, engine="julia")
    a, b, v = np.ones((3, 4)), np.ones((4, 5)), np.ones(5)
    # letters are numbered in order of appearance; each operand's labels reversed
    src = spelled(lambda a, b: np.sum(np.einsum("ij,jk->ik", a, b)), a, b)
    assert "DiffProg.npeinsum(((2, 1), (3, 2)), (3, 1), a1, a2)" in src
    src = spelled(lambda a, b, v: np.einsum("ij,jk,k", a, b, v), a, b, v)
    assert "DiffProg.npeinsum(((2, 1), (3, 2), (3,)), (1,), a1, a2, a3)" in src
    src = spelled(lambda a: np.einsum("ij->", a), a)
    assert "DiffProg.npeinsum(((2, 1),), (), a1)" in src
    src = spelled(lambda s, t: np.sum(np.einsum("...ij,...jk->...ik", s, t)),
                  np.ones((2, 3, 4)), np.ones((2, 4, 5)))
    assert "DiffProg.npeinsum(((3, 2, 1), (4, 3, 1)), (4, 2, 1), a1, a2)" in src
    assert "ij" not in src  # no user text in the source
    # an index repeated in one operand (a diagonal) is taken apart before npeinsum (with
    # the identity matrix, or by a mask: the NumPy front end's choice)
    src = spelled(lambda m: np.sum(np.einsum("ii->i", m)), np.ones((3, 3)))
    assert "DiffProg.npeinsum(" in src
    src = spelled(lambda s, t: np.sum(s @ t), np.ones((2, 3, 4)), np.ones((2, 4, 5)))
    assert "DiffProg.npmatmul_batched(a1, a2)" in src
    src = spelled(lambda s, t: np.sum(s @ t), np.ones((3, 4)), np.ones((6, 2, 4, 5)))
    assert "DiffProg.npmatmul_batched(a1, a2)" in src
    grad_src = dp.differentiable(lambda s, t: np.sum(np.sin(s @ t))).source(
        np.ones((2, 3, 4)), np.ones((2, 4, 5)), engine="julia", kind="grad")
    if _PARSER is not None:
        assert not parse_errors(grad_src)
    assert_julia_code("src/einsum.jl", "function npeinsum(inputs::Tuple, output::Tuple, operands...)",
                      "function npmatmul_batched(a::AbstractArray, b::AbstractArray)",
                      "function ChainRulesCore.rrule(::typeof(batched_product), a::AbstractArray, b::AbstractArray)")


# ------------------------------------------------------------------ complex values (without Julia)

def _complex_variant_cases():
    """(id, prim, case index) for every case of an entry with complex rules run with complex
    inputs: the generated tests' complex and mixed variants, and cases complex already."""
    from ..primitives.generated import complex_variants
    out = []
    for name, prim in sorted(PRIMITIVES.items()):
        if not prim.complex:
            continue
        for i, case in enumerate(prim.cases):
            for variant in complex_variants(prim, case):
                out.append((f"{name}-{i}-{variant}", prim, (i, variant)))
            if any(np.iscomplexobj(x) for x in case.make(np.random.default_rng(0))):
                out.append((f"{name}-{i}", prim, i))
    return out


def _complex_case_graph(prim, index):
    from ..primitives.generated import setup_case
    _, inputs, raw, _ = setup_case(prim, index)
    return dp.differentiable(raw).ir(*inputs)


@needs_tree_sitter
@needs_fatou
def test_complex_variants_give_parseable_lint_clean_julia(tmp_path):
    cases = _complex_variant_cases()
    assert len(cases) >= 60
    sources = {}
    for ident, prim, index in cases:
        graph = _complex_case_graph(prim, index)
        assert has_complex_values(graph), ident
        try:
            sources[re.sub(r"\W", "_", ident)] = generate_julia(graph).text
        except UnsupportedFunctionError as e:  # documented refusals only
            assert isinstance(prim.julia, Unsupported) or "stack of matrices" in str(e) \
                or "do not order complex numbers" in str(e), (ident, str(e))
            continue
        source = sources[re.sub(r"\W", "_", ident)]
        assert not parse_errors(source), (ident, parse_errors(source), source)
        # complex numbers are typed literals or arguments, never products with `im`
        assert not re.search(r"\bim\b", source), (ident, source)
    assert fatou_lint(sources, tmp_path) == ""
    assert {"exp_0_complex", "matmul_0_mixed", "slogdet_0_complex", "real_0",
            "convert_1_complex", "maximum_0_mixed"} <= set(sources), sorted(sources)


def test_complex_literals_are_typed():
    assert jl_complex(1j) == "ComplexF64(0.0, 1.0)"
    assert jl_complex(-1.5 + 2j, np.complex64) == "ComplexF32((-1.5f0), 2.0f0)"
    assert jl_complex(complex(np.inf, np.nan)) == "ComplexF64(Inf, NaN)"
    assert julia_engine.jl_literal(2 - 1j, np.float32) == "ComplexF32(2.0f0, (-1.0f0))"
    src = dp.differentiable(lambda z: z * 1j + 2.0).source(np.ones(2, complex), engine="julia")
    assert "a1 .* ComplexF64(0.0, 1.0)" in src and ".+ ComplexF64(2.0, 0.0)" in src
    # single precision stays single: a Float64 literal would promote ComplexF32 arrays
    src = dp.differentiable(lambda z: z * 2.5 + 1j).source(np.ones(2, np.complex64),
                                                           engine="julia")
    assert "ComplexF32(2.5f0, 0.0f0)" in src and "ComplexF32(0.0f0, 1.0f0)" in src
    assert "ComplexF64" not in src and "2.5)" not in src
    # a Python complex scalar argument is a Julia number of its type
    assert julia_number(1.5 - 2j) == 1.5 - 2j
    assert type(julia_number(np.array(1j, np.complex64))) is np.complex64
    src = dp.differentiable(lambda z, w: np.real(z * w)).source(1j, np.ones(2), engine="julia")
    assert src.startswith("function program(a1, a2)")


def test_where_operands_take_the_result_dtype():
    """Julia's ifelse keeps each operand's type (a Union eltype, an Array{Number} for real
    and complex operands); NumPy's where converts both to the result dtype."""
    c, x, z = np.array([True, False]), np.ones(2), np.ones(2) + 1j
    src = dp.differentiable(lambda c, x, z: np.where(c, x, z)).source(c, x, z, engine="julia")
    assert "ifelse.(a1, ComplexF64.(a2), a3)" in src
    src = dp.differentiable(lambda c, z: np.where(c, 0.5, z)).source(c, z, engine="julia")
    assert "ifelse.(a1, ComplexF64(0.5, 0.0), a2)" in src
    src = dp.differentiable(lambda c, x, y: np.where(c, x, y)).source(
        c, x.astype(np.float32), x, engine="julia")
    assert "ifelse.(a1, Float64.(a2), a3)" in src
    src = dp.differentiable(lambda c, x: np.where(c, x, x)).source(c, x, engine="julia")
    assert "ifelse.(a1, a2, a2)" in src
    # a literal condition stays a Bool (Julia's ifelse takes nothing else)
    where = PRIMITIVES["where"]
    src = dp.differentiable(lambda x, z: where.bind(True, x, z)).source(x, z, engine="julia")
    assert "ifelse.(true, ComplexF64.(a1), a2)" in src
    src = dp.differentiable(lambda x: where.bind(False, 1, x)).source(x, engine="julia")
    assert "ifelse.(false, 1.0, a1)" in src


def test_complex_operands_of_real_only_entries_are_refused_by_name():
    z = np.array([1 + 2j, 3 - 1j])
    for fn, name in [(lambda z: np.max(z), "reduce_max"),
                     (lambda z: z > 1, "greater"),
                     (lambda z: np.argmax(z), "argmax"),
                     (lambda z: np.sort(z), "argsort")]:
        with pytest.raises(UnsupportedFunctionError, match=rf"(?s)'{name}'.*complex.*Fix"):
            dp.differentiable(fn).source(z, engine="julia")
    # entries whose Julia spelling computes NumPy's values on complex numbers run
    for fn, text in [(np.isnan, "isnan.(a1)"), (lambda z: z == 1, "a1 .== 1")]:
        assert text in dp.differentiable(fn).source(z, engine="julia")
    # entries with complex rules: Julia helpers that order complex numbers as NumPy does
    assert "DiffProg.npmaximum(a1, v1)" in dp.differentiable(
        lambda z: np.maximum(z, 2 * z)).source(z, engine="julia")
    assert_julia_code("src/numpy_compat.jl", "npmaximum(x, y) = numpy_max.(x, y)",
                      "numpy_max(a::Complex, b::Complex) = has_nan(a) || complex_ge(a, b) ? a : b")
    # real values of those entries are not affected
    assert "npmax" in dp.differentiable(lambda z: np.max(np.abs(z))).source(z, engine="julia")


def test_complex_jacobians_and_hessians_follow_jax_rules_before_julia_runs():
    """The engine refuses, without Julia, what JAX's jacrev and hessian refuse."""
    engine = JuliaEngine()
    to_complex = dp.differentiable(lambda x: x * (1 + 2j)).ir(np.ones(2))
    with pytest.raises(dp.NotDifferentiableError, match="jacrev refuses"):
        engine.compile_jacobian(to_complex, [0])
    real_of_complex = dp.differentiable(lambda z: np.sum(np.abs(z) ** 2)).ir(np.ones(2) + 1j)
    with pytest.raises(dp.NotDifferentiableError, match="holomorphic"):
        engine.compile_hessian(real_of_complex, 0)
    # allowed: rows of gradients (real output), holomorphic Jacobians and Hessians
    engine.compile_jacobian(real_of_complex, [0])
    holomorphic = dp.differentiable(lambda z: np.sum(z ** 3)).ir(np.ones(2) + 1j)
    engine.compile_hessian(holomorphic, 0)
    engine.compile_jacobian(dp.differentiable(lambda z: z ** 2).ir(np.ones(2) + 1j), [0])


class _ComplexCheckingDiffProg(_RecordingDiffProg):
    """Also answers DiffProg.complex_derivative_problem and records the derivative calls."""

    def __init__(self, problem):
        super().__init__()
        self.problem, self.asked, self.called = problem, 0, []

    def complex_derivative_problem(self):
        self.asked += 1
        return self.problem

    def value_and_gradient(self, p, args, positions):
        self.called.append("gradient")
        raise RuntimeError("stop: the call reached Julia")


def test_complex_derivatives_need_a_zygote_that_takes_them(monkeypatch):
    stub = _ComplexCheckingDiffProg("Zygote 0.7.10 is loaded; derivatives of complex "
                                    "values need Zygote 0.7.11 or later")
    fake = _recording_bridge()
    fake.dp, fake.lock = stub, __import__("threading").Lock()
    fake.noticed = True
    monkeypatch.setattr(julia_engine, "_BRIDGE", fake)
    engine = JuliaEngine()
    complex_graph = dp.differentiable(lambda z: np.sum(np.abs(z) ** 2)).ir(np.ones(2) + 1j)
    program = engine.compile_gradient(complex_graph, [0])
    with pytest.raises(dp.NotDifferentiableError, match=r"0\.7\.10.*Fix: update Zygote.*"
                                                        r"juliapkg\.add\('Zygote'.*0\.7\.11"):
        program(np.ones(2) + 1j)
    assert stub.called == [] and stub.asked == 1
    with pytest.raises(dp.NotDifferentiableError):
        program(np.ones(2) + 1j)
    assert stub.asked == 1  # asked once per session
    # real programs are not held back by it
    real_graph = dp.differentiable(lambda x: np.sum(x ** 2)).ir(np.ones(2))
    with pytest.raises(EngineError, match="stop: the call reached Julia"):
        engine.compile_gradient(real_graph, [0])(np.ones(2))
    assert stub.called == ["gradient"]


def test_julia_derivatives_convert_zygote_to_jax_convention():
    """The mapping JAX pullback(c) = conj(Zygote pullback(conj(c))) where Julia computes
    every derivative (pinned in the source: no Julia here to run it)."""
    assert_julia_code(
        "src/derivatives.jl",
        "#     JAX pullback(c) = conj(Zygote pullback(conj(c)))",
        "seed = map((c, y) -> cotangent_for(conj_tangent(c), y), cotangents, outputs)",
        "return outputs, jax_gradients(back(seed), args)",
        "gradients = jax_gradients(back(seed), args)",
        "rows = [jax_gradients(back(basis_cotangent(basis, y, k)), args) for k in 1:length(y)]",
        "jax_gradients(back(basis_cotangent(basis, g, j)), args)[k]",
        "return conj_tangent(gradient_or_zero(nth_gradient(back(one(y)), k), xs[k]))",
        "conj_tangent(x::AbstractArray{<:Number}) = conj.(x)",
        "real_if(::Type{<:Real}, g::Number) = real(g)",
        "dense .= real_values(dense, g)",
        'const COMPLEX_ZYGOTE = v"0.7.11"')
    assert julia_engine.ZYGOTE_COMPLEX == "0.7.11"
    # rules written in ChainRules' convention for complex values: adjoints, not transposes
    assert_julia_code("src/einsum.jl",
                      "da = project_a(batched_product(ḡ, batched_adjoint(b)))",
                      absent=("batched_product(ḡ, batched_transpose(b))",))
    assert_julia_code("src/rules.jl",
                      "ḡ .* conj_values(prod_partials(x, dims))",
                      "cumprod_cotangent(dense_cotangent(ḡ), conj_values(x), conj_values(y), Int(dims))",
                      "c̄ .* conj_values(permutedims(inv(A), (2, 1)))",
                      "phase = im * imag(s̄ * conj(sign_))")
    assert_julia_code("src/numpy_shapes.jl",
                      "convert_eltype(::Type{T}, x) where {T <: AbstractFloat} = T.(real_part(x))",
                      "convert_eltype(::Type{T}, x) where {T <: Complex} = T.(x)")


def test_julia_ci_workflow():
    workflow = (ROOT / ".github" / "workflows" / "julia.yml").read_text()
    for needed in ("julia-actions/setup-julia@v2", '"1.10"', '"1.11"', "ubuntu-latest",
                   "--project=julia", "Pkg.test()", ".[test,julia]", "-m julia",
                   "PYTHON_JULIAPKG_EXE"):
        assert needed in workflow, needed


# ------------------------------------------------------------------ the Julia package

@needs_fatou
def test_julia_package_is_lint_and_format_clean():
    lint = subprocess.run([FATOU, "lint", "."], cwd=ROOT / "julia", capture_output=True,
                          text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run([FATOU, "format", "--check", "--safe", "."], cwd=ROOT / "julia",
                         capture_output=True, text=True, timeout=120)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@needs_tree_sitter
def test_julia_package_parses():
    for path in sorted((ROOT / "julia").rglob("*.jl")):
        assert not parse_errors(path.read_text()), path


def test_juliapkg_json_points_at_the_julia_package():
    import json
    spec = json.loads((ROOT / "diffprog" / "juliapkg.json").read_text())
    path = (ROOT / "diffprog" / spec["packages"]["DiffProg"]["path"]).resolve()
    assert (path / "Project.toml").exists() and (path / "src" / "DiffProg.jl").exists()
    assert spec["packages"]["DiffProg"]["dev"] is True
    assert "PythonCall" not in spec["packages"]
    assert {"Zygote", "DLPack", "ChainRulesCore"} <= set(spec["packages"])


# ------------------------------------------------------------------ availability

JULIA_REASON = engines.available().get("julia", "not registered")
needs_julia = pytest.mark.skipif(JULIA_REASON != "ok", reason=f"Julia is not usable here: "
                                 f"{JULIA_REASON[:200]}")


def test_engine_is_registered_for_cpu_and_gpu_inputs():
    assert "julia" in engines.names()
    assert set(engines.devices("julia")) == {"cpu", "gpu"}


@pytest.mark.skipif(JULIA_REASON == "ok", reason="Julia is installed here")
def test_missing_julia_fails_fast_with_the_fix():
    engines._INSTANCES.pop("julia", None)
    start = time.perf_counter()
    with pytest.raises(EngineUnavailable) as info:
        dp.differentiable(lambda x: np.sum(x ** 2), engine="julia")(np.ones(3))
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, elapsed
    message = str(info.value)
    for hint in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_PROJECT", "PYTHON_JULIAPKG_EXE"):
        assert hint in message
    assert "julia" in engines.available() and engines.available()["julia"] != "ok"


def test_missing_julia_fails_fast_in_a_fresh_interpreter():
    """The whole path a user takes: import, ask for the engine, get the reason; no
    juliapkg download, no hang (juliacall installed or not)."""
    env = dict(os.environ, DIFFPROG_ENGINE="julia", PYTHON_JULIACALL_EXE="",
               PYTHON_JULIAPKG_EXE="", PATH="/usr/bin:/bin")
    code = ("import time, numpy as np, diffprog as dp\n"
            "t = time.perf_counter()\n"
            "try:\n    dp.differentiable(lambda x: np.sum(x))(np.ones(2)); print('RAN')\n"
            "except dp.EngineUnavailable as e:\n    print('UNAVAILABLE', time.perf_counter() - t)\n")
    if shutil.which("julia", path=env["PATH"]):
        pytest.skip("a julia executable is on the minimal PATH")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("UNAVAILABLE"), proc.stdout + proc.stderr
    assert float(proc.stdout.split()[1]) < 2.0
    assert time.perf_counter() - start < 30


# ------------------------------------------------------------------ with Julia

@pytest.mark.julia
@needs_julia
@pytest.mark.parametrize("ident,prim,i", [c for c in CASES if c[1].differentiable],
                         ids=[c[0] for c in CASES if c[1].differentiable])
def test_julia_gradients_agree_with_numpy_and_finite_differences(ident, prim, i):
    source, reason = _source_or_reason(prim, i)
    if source is None:
        pytest.skip(f"{ident}: {reason}")
    case = prim.cases[i]
    inputs = case.make(np.random.default_rng(7 + i))
    wrap = case.wrap or (lambda *xs: xs[0] if len(xs) == 1 else xs)

    def f(*xs):
        wrapped = wrap(*xs)
        out = prim.bind(*(wrapped if isinstance(wrapped, (tuple, list)) else (wrapped,)),
                        **case.params)
        outs = out if prim.multiple_results else [out]
        return sum(np.sum(o * 0.5) for o in outs if np.issubdtype(o.dtype, np.floating))
    float_pos = tuple(k for k, x in enumerate(inputs)
                      if np.issubdtype(np.asarray(x).dtype, np.floating))
    g_np = dp.grad(dp.differentiable(f, engine="numpy"), argnums=float_pos)(*inputs)
    g_jl = dp.grad(dp.differentiable(f, engine="julia"), argnums=float_pos)(*inputs)
    for a, b, k in zip(g_np, g_jl, float_pos):
        assert_close(b, a, rtol=case.rtol)
        if case.smooth:
            assert_close(b, numeric_grad(f, inputs, k), rtol=1e-4, atol=1e-6)


@pytest.mark.julia
@needs_julia
@pytest.mark.parametrize("name", ["mlp_loss", "rk4", "linear_solve", "structured", "odeint_rk4",
                                  "complex_wave"])
def test_julia_realistic_programs_agree_with_numpy(name):
    fn, args = _programs()[name]
    value_np, grad_np = dp.value_and_grad(dp.differentiable(fn, engine="numpy"))(*args)
    value_jl, grad_jl = dp.value_and_grad(dp.differentiable(fn, engine="julia"))(*args)
    assert_close(value_jl, value_np)
    for a, b in zip(flatten(grad_np)[0], flatten(grad_jl)[0]):
        assert_close(b, a, rtol=1e-6)


@pytest.mark.julia
@needs_julia
def test_julia_vjp_jacobian_hessian_agree_with_numpy():
    def f(x):
        return np.sin(x) * np.sum(x ** 2)
    x = np.array([0.3, -1.2, 2.0])
    fj, fn = dp.differentiable(f, engine="julia"), dp.differentiable(f, engine="numpy")
    out_j, pull_j = dp.vjp(fj, x)
    out_n, pull_n = dp.vjp(fn, x)
    assert_close(out_j, out_n)
    ct = np.array([1.0, -2.0, 0.5])
    assert_close(pull_j(ct)[0], pull_n(ct)[0])
    assert_close(dp.jacobian(fj)(x), dp.jacobian(fn)(x))
    loss_j = dp.differentiable(lambda x: np.sum(np.sin(x) * x ** 3), engine="julia")
    loss_n = dp.differentiable(lambda x: np.sum(np.sin(x) * x ** 3), engine="numpy")
    assert_close(dp.hessian(loss_j)(x), dp.hessian(loss_n)(x), rtol=1e-6)
    tangent = np.array([1.0, 0.0, 2.0])
    assert_close(dp.jvp(fj, (x,), (tangent,))[1], dp.jvp(fn, (x,), (tangent,))[1])


def _both_engines(fn):
    return dp.differentiable(fn, engine="julia"), dp.differentiable(fn, engine="numpy")


_COMPLEX_CASES = _complex_variant_cases()


@pytest.mark.julia
@needs_julia
@pytest.mark.parametrize("ident,prim,index", [c for c in _COMPLEX_CASES if c[1].differentiable],
                         ids=[c[0] for c in _COMPLEX_CASES if c[1].differentiable])
def test_julia_complex_gradients_agree_with_numpy(ident, prim, index):
    """Every entry with complex rules, complex (and mixed) inputs: Zygote's gradients,
    converted to JAX's convention, equal the numpy engine's (which the generated tests
    check against finite differences)."""
    from ..primitives.generated import projected, setup_derivative_case
    case, inputs, raw, float_pos = setup_derivative_case(prim, index)
    try:
        generate_julia(_complex_case_graph(prim, index))
    except UnsupportedFunctionError as e:
        pytest.skip(f"{ident}: {e}")
    f = projected(prim, raw, inputs)
    nums = tuple(float_pos)
    g_np = dp.grad(dp.differentiable(f, engine="numpy"), argnums=nums)(*inputs)
    g_jl = dp.grad(dp.differentiable(f, engine="julia"), argnums=nums)(*inputs)
    for a, b in zip(g_np, g_jl):
        assert np.asarray(b).dtype == np.asarray(a).dtype
        assert_close(b, a, rtol=max(case.rtol, 1e-7), atol=1e-9)


@pytest.mark.julia
@needs_julia
def test_julia_complex_derivatives_in_jax_convention():
    z = np.array([0.5 + 1.0j, -1.0 + 0.25j, 0.75 - 0.5j])
    real_f = lambda z: np.sum(np.abs(np.sin(z)) ** 2) + np.real(np.sum(z * z))  # noqa: E731
    fj, fn = _both_engines(real_f)
    assert_close(dp.grad(fj)(z), dp.grad(fn)(z), rtol=1e-10)
    # the convention itself: |z|^2 has gradient 2 conj(z) (Zygote alone gives 2 z)
    assert_close(dp.grad(dp.differentiable(lambda z: np.sum(np.abs(z) ** 2),
                                           engine="julia"))(z), 2 * np.conj(z))
    holo = lambda z: np.sum(np.exp(z) * z ** 2)  # noqa: E731
    hj, hn = _both_engines(holo)
    assert_close(dp.grad(hj, holomorphic=True)(z), dp.grad(hn, holomorphic=True)(z))
    assert_close(dp.grad(hj, holomorphic=True)(z), np.exp(z) * (z ** 2 + 2 * z))
    # vjp with complex cotangents, a real argument meeting complex values
    mixed = lambda x, z: np.sin(x * z) + np.conj(z) * x  # noqa: E731
    x = np.array([0.3, -1.2, 2.0])
    mj, mn = _both_engines(mixed)
    c = np.array([1.0 - 1.0j, 0.5j, 2.0])
    out_j, pull_j = dp.vjp(mj, x, z)
    out_n, pull_n = dp.vjp(mn, x, z)
    assert_close(out_j, out_n)
    for a, b in zip(pull_j(c), pull_n(c)):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        assert_close(a, b, rtol=1e-10)
    # jacobians (holomorphic; rows of gradients of a real output) and a holomorphic Hessian
    sq_j, sq_n = _both_engines(lambda z: np.sin(z) * z)
    assert_close(dp.jacobian(sq_j, holomorphic=True)(z), dp.jacobian(sq_n, holomorphic=True)(z))
    ab_j, ab_n = _both_engines(lambda z: np.abs(z * (1 + 2j)) ** 2)
    assert_close(dp.jacobian(ab_j)(z), dp.jacobian(ab_n)(z))
    cube_j, cube_n = _both_engines(lambda z: np.sum(z ** 3 * np.exp(z)))
    assert_close(dp.hessian(cube_j, holomorphic=True)(z), dp.hessian(cube_n, holomorphic=True)(z))
    # a Python complex scalar argument, complex64 arrays kept in single precision
    sj, sn = _both_engines(lambda w, z: np.sum(np.abs(w * z) ** 2))
    assert_close(dp.grad(sj, argnums=(0, 1))(0.5 - 1j, z)[0], dp.grad(sn, argnums=(0, 1))(0.5 - 1j, z)[0])
    z32 = z.astype(np.complex64)
    g32 = dp.grad(dp.differentiable(lambda z: np.sum(np.abs(z * 2.5 + 1j) ** 2), engine="julia"))(z32)
    assert g32.dtype == np.complex64
    # control flow with a complex carry (npscan's rule)
    loop = lambda z: np.sum(np.abs(dp.fori_loop(0, 3, lambda i, v: v * (0.9 + 0.2j) + np.sin(v), z)) ** 2)  # noqa: E731
    lj, ln = _both_engines(loop)
    assert_close(dp.grad(lj)(z), dp.grad(ln)(z), rtol=1e-10)


@pytest.mark.julia
@needs_julia
def test_julia_zero_d_values():
    """Issue 18, bug 2: 0-d inputs, 0-d scan carries, jacobians w.r.t. 0-d inputs."""
    fj, fn = _both_engines(lambda x: np.sin(x) + x)
    x = np.array(0.5)
    assert_close(dp.grad(fj)(x), np.cos(0.5) + 1.0)
    gj, gn = _both_engines(lambda k, y: np.sin(k) * y)
    args = (np.array(0.5), np.array([1.0, 2.0]))
    assert_close(dp.jacobian(gj, argnums=0)(*args), dp.jacobian(gn, argnums=0)(*args))

    def scan_0d(c0, xs):
        final, ys = dp.scan(lambda c, x: (c * 0.9 + np.sin(x), c * x), c0, xs)
        return final + np.sum(ys ** 2) + np.reshape(xs[1:2], ()) * final
    hj, hn = _both_engines(scan_0d)
    args = (np.array(0.3), np.linspace(0.1, 1.0, 4))
    for a, b in zip(dp.grad(hj, argnums=(0, 1))(*args), dp.grad(hn, argnums=(0, 1))(*args)):
        assert_close(a, b, rtol=1e-10)


@pytest.mark.julia
@needs_julia
def test_julia_fori_loop_index_in_float_maths():
    """Issue 18, bug 1: the loop index (int64) used in float maths."""
    fj, fn = _both_engines(lambda y: np.sum(dp.fori_loop(0, 4, lambda i, v: v + (i * 0.1) * v, y)))
    y = np.array([1.0, -2.0])
    assert_close(dp.grad(fj)(y), dp.grad(fn)(y), rtol=1e-10)


@pytest.mark.julia
@needs_julia
@pytest.mark.parametrize("name", ["structured", "odeint_rk4"])
def test_julia_hessians_of_programs_with_control_flow(name):
    fn, args = _programs()[name]
    hj = dp.hessian(dp.differentiable(fn, engine="julia"))(*args)
    hn = dp.hessian(dp.differentiable(fn, engine="numpy"))(*args)
    assert_close(hj, hn, rtol=1e-8)


@pytest.mark.julia
@needs_julia
def test_julia_einsum_batched_matmul_prod_cumprod():
    rng = np.random.default_rng(3)
    s, t, m = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 5)), rng.standard_normal((4, 5))
    cases = [
        (lambda s, t: np.sum(np.sin(np.einsum("bij,bjk->bik", s, t))), (s, t)),
        (lambda s, t: np.sum(np.einsum("bij,bij->j", s, s) ** 2) + np.sum(t), (s, t)),
        (lambda s, m: np.sum(np.cos(s @ m[None])), (s, m)),
        (lambda s, t: np.sum((s @ t) ** 2), (s, t)),
        (lambda x: np.sum(np.prod(x, axis=0) * np.array([1.0, -2.0, 0.5])),
         (np.array([[2.0, 2.0, 0.0], [3.0, 0.0, 0.0], [4.0, 4.0, 4.0]]),)),
        (lambda x: np.sum(np.cumprod(x, axis=1) * np.arange(1.0, 5.0)),
         (np.array([[1.5, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, 0.5]]),)),
    ]
    for f, args in cases:
        fj, fn = _both_engines(f)
        nums = tuple(range(len(args)))
        for a, b in zip(dp.grad(fj, argnums=nums)(*args), dp.grad(fn, argnums=nums)(*args)):
            assert_close(a, b, rtol=1e-9, atol=1e-12)
    for f, args in cases[4:]:  # second derivatives exact at zeros
        fj, fn = _both_engines(f)
        assert_close(dp.hessian(fj)(*args), dp.hessian(fn)(*args), rtol=1e-9, atol=1e-12)


@pytest.mark.julia
@needs_julia
def test_julia_outputs_never_point_into_python_temporaries():
    """Issue 18, bug 3 (CPU side): an output that is a reshape of an input shares its
    memory in Julia; it is copied before a temporary behind it is freed."""
    import gc
    f = dp.differentiable(lambda x: np.reshape(x, (-1,)), engine="julia")
    x = np.arange(12.0).reshape(3, 4)[:, ::2]  # strided: Julia reads a contiguous copy
    y = f(x)
    expected = np.ascontiguousarray(x).reshape(-1)
    del x
    gc.collect()
    from juliacall import Main as jl
    jl.seval("GC.gc()")
    junk = [np.full(6, 7.0) for _ in range(100)]  # reuse freed memory, if any
    assert_close(y, expected)
    assert junk


@pytest.mark.julia
@pytest.mark.gpu
@needs_julia
def test_julia_gpu_constants_survive_garbage_collection():
    """Issue 18, bug 3: a program's cached GPU constant stays valid after both GCs run and
    CuPy's pool hands memory out again; per-step scalars stack on the GPU."""
    cupy = pytest.importorskip("cupy")
    if engines.available().get("cupy") != "ok":
        pytest.skip("no usable GPU")
    import gc
    from juliacall import Main as jl

    def f(x):
        c = np.arange(1000.0) / 7.0  # a constant of the program, moved to the GPU once
        return np.sum(x * c)
    fj = dp.differentiable(f, engine="julia")
    x = cupy.linspace(0.0, 1.0, 1000)
    first = float(fj(x))
    for _ in range(3):
        gc.collect()
        jl.seval("GC.gc()")
        junk = [cupy.full(1000, 7.0) for _ in range(50)]
        assert abs(float(fj(x)) - first) <= 1e-12 * abs(first), "constant memory was reused"
        del junk

    def scan_scalars(y0, xs):
        _, ys = dp.scan(lambda c, x: (c * x, np.sum(c * x)), y0, xs)
        return np.sum(ys ** 2)
    args = (cupy.asarray([1.0, -0.5]), cupy.asarray([0.5, 1.5, -1.0]))
    gj = dp.grad(dp.differentiable(scan_scalars, engine="julia"), argnums=(0, 1))(*args)
    gn = dp.grad(dp.differentiable(scan_scalars, engine="numpy"), argnums=(0, 1))(
        *(cupy.asnumpy(a) for a in args))
    for a, b in zip(gj, gn):
        assert_close(cupy.asnumpy(a), b, rtol=1e-10)


# ------------------------------------------------------------------ the API hook

class _RecordingNativeEngine(engines.Engine):
    """A native_gradients engine built on the numpy engine: records what the API asks
    for (forward graphs + Derivative requests) and answers with IR transforms, so the
    hook the julia engine relies on is checked without Julia."""

    name = "recording"
    native_gradients = True

    def __init__(self):
        from diffprog.engines.numpy import NumpyEngine
        self.numpy = NumpyEngine()
        self.requests = []

    def compile(self, graph):
        return self.numpy.compile(graph)

    def compile_native(self, request):
        from diffprog.transforms import vjp_graph
        self.requests.append(request)
        g, wrt = request.graph, list(request.wrt)
        if request.kind == "gradient":
            return (self.numpy.compile(vjp_graph(g, wrt, seed="ones")),)
        if request.kind == "pullback":
            fwd = self.numpy.compile(g)
            back = self.numpy.compile(vjp_graph(g, wrt, seed="input"))
            n_in, n_out = len(g.invars), len(g.outvars)
            return (engines.Program(lambda *xs: list(fwd(*xs)) + list(xs), "", self.name, g),
                    engines.Program(lambda *f: list(back(*f))[n_out:], "", self.name, g))
        raise NotImplementedError(request.kind)


def test_api_hands_native_engines_the_forward_graph():
    engine = _RecordingNativeEngine()
    engines.register("recording", lambda: engine, devices=("cpu",))
    engines._INSTANCES["recording"] = engine
    try:
        f = dp.differentiable(lambda x, y: np.sum(np.sin(x) * y), engine="recording")
        x, y = np.array([0.1, 0.2]), np.array([3.0, 4.0])
        gx, gy = dp.grad(f, argnums=(0, 1))(x, y)
        assert_close(gx, np.cos(x) * y)
        assert_close(gy, np.sin(x))
        request = engine.requests[-1]
        assert request.kind == "gradient" and request.wrt == (0, 1)
        assert [e.prim.name for e in request.graph.eqns] == ["sin", "mul", "reduce_sum"]
        out, pullback = dp.vjp(f, x, y)
        assert engine.requests[-1].kind == "pullback"
        assert_close(pullback(1.0)[0], np.cos(x) * y)
        # a Hessian w.r.t. a pytree is never asked of the engine (it would see one leaf)
        n_requests = len(engine.requests)
        h = dp.differentiable(lambda p: np.sum(p["a"] ** 2) * np.sum(p["b"]), engine="recording")
        try:  # refused, or built by the transforms (pytree Hessians): never natively
            dp.hessian(h)({"a": np.ones(2), "b": np.ones(3)})
        except dp.DiffprogError:
            pass
        assert all(r.kind != "hessian" for r in engine.requests[n_requests:])
    finally:
        engines._FACTORIES.pop("recording", None)
        engines._DEVICES.pop("recording", None)
        engines._INSTANCES.pop("recording", None)


def test_native_jacobians_and_hessians_keep_jaxs_complex_rules():
    # the engine cannot tell holomorphic=True from False: the API checks, as for the
    # transforms (a complex output's jacobian needs holomorphic=True; a holomorphic
    # Hessian is asked of the engine, not refused as a complex output)
    engine = _RecordingNativeEngine()
    engines.register("recording", lambda: engine, devices=("cpu",))
    engines._INSTANCES["recording"] = engine
    try:
        z = np.array([1.0 + 1.0j, 0.5 - 2.0j])
        square = dp.differentiable(lambda z: z ** 2, engine="recording")
        with pytest.raises(dp.NotDifferentiableError, match="holomorphic=True"):
            dp.jacobian(square)(z)
        with pytest.raises(NotImplementedError, match="jacobian"):  # reached the engine
            dp.jacobian(square, holomorphic=True)(z)
        cube_sum = dp.differentiable(lambda z: np.sum(z ** 3), engine="recording")
        with pytest.raises(NotImplementedError, match="hessian"):
            dp.hessian(cube_sum, holomorphic=True)(z)
        with pytest.raises(dp.NotDifferentiableError, match="not complex"):
            dp.hessian(dp.differentiable(lambda x: np.sum(x ** 3) + 0j, engine="recording"),
                       holomorphic=True)(np.ones(2))
    finally:
        engines._FACTORIES.pop("recording", None)
        engines._DEVICES.pop("recording", None)
        engines._INSTANCES.pop("recording", None)


def test_a_julia_path_that_is_not_there_is_named(monkeypatch, tmp_path):
    from diffprog.engines import julia as julia_engine
    monkeypatch.setenv("PYTHON_JULIAPKG_EXE", str(tmp_path / "missing" / "julia"))
    with pytest.raises(dp.EngineUnavailable, match=r"PYTHON_JULIAPKG_EXE=.*missing.*does not exist"):
        julia_engine.probe_julia()
    not_executable = tmp_path / "julia"
    not_executable.write_text("")
    monkeypatch.setenv("PYTHON_JULIAPKG_EXE", str(not_executable))
    with pytest.raises(dp.EngineUnavailable, match="is not an executable file"):
        julia_engine.probe_julia()
