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
from diffprog.engines.julia import (generate_julia, jl_float, jl_perm, jl_ranges,
                                    julia_template)
from diffprog.errors import EngineUnavailable, UnsupportedFunctionError
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
                refused[ident] = named.group(1)
            continue
        errors = parse_errors(source)
        assert not errors, f"{ident}: tree-sitter-julia errors {errors}\n{source}"
        sources[ident.replace("-", "_")] = source
    assert fatou_lint(sources, tmp_path) == ""
    # Refusals are only the documented ones: higher-order/Python-run primitives, einsum
    # and stacks of matrices (the julia engine spells single matrices; the stacked cholesky
    # case makes its input with a batched matmul).
    allowed = {"error_if", "einsum", "solve", "inv", "det", "slogdet", "cholesky"}
    assert set(refused.values()) - {"folded away"} <= allowed | {"matmul"}, refused
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
    def f(a, b):
        return np.sum(np.einsum("ij,jk->ik", a, b))
    with pytest.raises(UnsupportedFunctionError, match="'einsum'"):
        f.source(np.ones((2, 3)), np.ones((3, 2)), engine="julia")


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
    c = np.arange(4.0) + 0.125
    src = dp.differentiable(lambda x: np.sum(x * c)).source(np.ones(4), engine="julia")
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
    for name, src in sources.items():
        assert not parse_errors(src), (name, parse_errors(src), src)
    assert fatou_lint(sources, tmp_path) == ""


@pytest.mark.parametrize("name", ["mlp_loss", "rk4", "linear_solve", "mlp_loss_float32",
                                  "structured"])
def test_golden_sources(name):
    fn, args = _programs()[name]
    src = dp.differentiable(fn).source(*args, engine="julia")
    path = GOLDEN / f"{name}.jl"
    if os.environ.get("DIFFPROG_UPDATE_GOLDEN") == "1":  # regenerate deliberately
        path.write_text(src)
    assert src == path.read_text(), f"generated Julia for {name} changed; if intended, " \
        f"rerun with DIFFPROG_UPDATE_GOLDEN=1 and review the diff"


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
            assert_close(b, numeric_grad(lambda x: f(*[x if j == k else v for j, v in
                                                       enumerate(inputs)]), inputs[k]),
                         rtol=1e-4, atol=1e-6)


@pytest.mark.julia
@needs_julia
@pytest.mark.parametrize("name", ["mlp_loss", "rk4", "linear_solve", "structured", "odeint_rk4"])
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
        with pytest.raises(dp.DiffprogError):
            dp.hessian(h)({"a": np.ones(2), "b": np.ones(3)})
        assert all(r.kind != "hessian" for r in engine.requests[n_requests:])
    finally:
        engines._FACTORIES.pop("recording", None)
        engines._DEVICES.pop("recording", None)
        engines._INSTANCES.pop("recording", None)
