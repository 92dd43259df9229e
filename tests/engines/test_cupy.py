"""The cupy engine.

Three kinds of tests, labelled by what they really check:

* ``gpu``-marked tests run the primitive table's cases on a CUDA GPU and compare with
  the numpy engine. They skip, with the engine's own reason, where no GPU is present.
* Code-generation tests run the cupy engine's source generation (device placement of
  constants and scalars, fused elementwise runs) with ``xp = numpy`` on the CPU. They
  check the generated program's structure and numbers, not CuPy's kernels.
* Dispatch tests use stand-in objects whose type lives in a ``cupy`` module to check
  the device rules (which engine, which errors); nothing runs on a GPU there.
"""
from __future__ import annotations

import sys
import time
import types
import warnings

import numpy as np
import pytest

import diffprog as dp
from diffprog import engines
from diffprog.api import _as_tangent, _engine_name, cache_for, make_signature
from diffprog.engines.cupy import DevicePlacement, FusedKernel, import_cupy
from diffprog.engines.numpy import NumpyEngine, generate_source
from diffprog.errors import ArgumentError, EngineUnavailable

from ..helpers import assert_close
from ..primitives.generated import CASES, projected, setup_derivative_case

CUPY_STATUS = engines.available()["cupy"]
GPU = [pytest.mark.gpu,
       pytest.mark.skipif(CUPY_STATUS != "ok", reason=f"no usable GPU: {CUPY_STATUS}")]


def gpu(test):
    for mark in reversed(GPU):
        test = mark(test)
    return test


# =========================================================== availability (no GPU needed)

def test_engine_listed_with_status():
    status = engines.available()["cupy"]
    assert status == "ok" or ("cupy engine" in status and "Fix:" in status)


def test_unavailable_fails_fast_with_the_fix():
    if CUPY_STATUS == "ok":
        pytest.skip("a GPU is present: nothing to fail")
    start = time.perf_counter()
    with pytest.raises(EngineUnavailable, match="Fix:"):
        engines.get("cupy")
    assert time.perf_counter() - start < 1.0


def test_explicit_cupy_engine_without_gpu_raises_engine_unavailable():
    if CUPY_STATUS == "ok":
        pytest.skip("a GPU is present")
    f = dp.differentiable(lambda s: s * s, engine="cupy")
    with pytest.raises(EngineUnavailable, match="Fix:"):
        f(3.0)  # a Python float is fine on either device, so only the engine is missing
    g = dp.differentiable(lambda x: np.sum(x), engine="cupy")
    with pytest.raises(EngineUnavailable, match="Fix:"):
        g(np.ones(3))  # the missing engine is the first thing to fix, not the device


def test_missing_cupy_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    start = time.perf_counter()
    with pytest.raises(EngineUnavailable, match=r"pip install 'diffprog\[gpu\]'"):
        import_cupy()
    assert time.perf_counter() - start < 1.0


def test_old_cupy_is_refused_with_the_version(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(__version__="13.6.0"))
    with pytest.raises(EngineUnavailable, match=r"CuPy >= 14.0.*found CuPy 13.6.0"):
        import_cupy()


# ============================================= device rules (dispatch logic, stand-in arrays)

class StandInCupyArray:
    """Not a GPU array: an object typed like one, for the device-dispatch rules only."""

    __module__ = "cupy._core.core"

    def __init__(self, shape=(3,), dtype=np.float64):
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (0, False), "version": 3}


def test_dispatch_cupy_inputs_select_the_cupy_engine_python_floats_are_neutral():
    sig = make_signature((StandInCupyArray(), 2.0, np.float64(1.5)))
    assert _engine_name(sig, None) == "cupy"


def test_dispatch_numpy_inputs_select_the_default_engine():
    assert _engine_name(make_signature((np.ones(3), 2.0)), None) == engines.default_engine_name()


def test_dispatch_mixing_devices_names_the_arguments():
    f = dp.differentiable(lambda x, p: np.sum(x * p["w"]))
    with pytest.raises(ArgumentError) as err:
        f(np.ones(3), {"w": StandInCupyArray()})
    msg = str(err.value)
    assert "args[0]" in msg and "args[1]['w']" in msg and "cupy.asarray" in msg


def test_dispatch_mixing_is_an_error_for_grad_too():
    with pytest.raises(ArgumentError, match="mix CuPy"):
        dp.grad(lambda x, y: np.sum(x * y))(StandInCupyArray(), np.ones(3))


@pytest.fixture
def cupy_engine_present(monkeypatch):
    """Dispatch checks as on a GPU machine: the cupy engine counts as usable (it would
    otherwise be reported missing first)."""
    real_get = engines.get
    monkeypatch.setattr(engines, "get", lambda name=None, check=True:
                        None if name == "cupy" else real_get(name, check))


def test_dispatch_cupy_engine_refuses_numpy_arrays_instead_of_copying(cupy_engine_present):
    f = dp.differentiable(lambda x: np.sum(x), engine="cupy")
    with pytest.raises(ArgumentError, match=r"engine='cupy' cannot take NumPy \(CPU\) arrays.*args\[0\]"):
        f(np.ones(3))


def test_dispatch_default_engine_from_environment_is_named_in_the_error(monkeypatch,
                                                                       cupy_engine_present):
    monkeypatch.setenv("DIFFPROG_ENGINE", "cupy")
    with pytest.raises(ArgumentError, match=r"DIFFPROG_ENGINE"):
        dp.differentiable(lambda x: np.sum(x))(np.ones(3))


def test_dispatch_numpy_engine_refuses_cupy_arrays():
    f = dp.differentiable(lambda x: np.sum(x), engine="numpy")
    with pytest.raises(ArgumentError, match=r"engine='numpy' cannot take CuPy \(GPU\) arrays.*get\(\)"):
        f(StandInCupyArray())


def test_dispatch_jvp_tangent_on_the_other_device_is_an_error():
    with pytest.raises(ArgumentError, match="tangent"):
        _as_tangent(StandInCupyArray(), np.ones(3), "[0]")


# ======================================= the cupy engine's code generation, run on the CPU

class HostRunEngine(NumpyEngine):
    """The cupy engine's code generation (device placement, fused runs) with xp = numpy.

    ``transfers`` counts constant placements: they must happen at compile time only.
    ``fuse`` stands in for cupy.fuse (it returns the function unchanged).
    """

    name = "cupy-codegen-on-host"

    def __init__(self):
        super().__init__(np)
        self.transfers = 0
        self.kernel_names: list[str] = []

    def to_device(self, value):
        self.transfers += 1
        return np.array(value, copy=True)

    def fake_fuse(self, kernel_name):
        self.kernel_names.append(kernel_name)
        return lambda fn: fn

    def generate(self, graph, fn_name):
        return generate_source(graph, np, fn_name, placement=DevicePlacement(self.to_device),
                               fuse=lambda fn: FusedKernel(fn, self.fake_fuse))


@pytest.fixture
def host_engine(monkeypatch):
    engine = HostRunEngine()
    monkeypatch.setitem(engines._FACTORIES, engine.name, lambda: engine)
    monkeypatch.setattr(engines, "_INSTANCES", dict(engines._INSTANCES))
    return engine


@pytest.mark.parametrize("prim,case_index", CASES)
def test_codegen_every_primitive_value_and_grad_match_numpy_engine(prim, case_index, host_engine):
    case, inputs, raw, float_pos = setup_derivative_case(prim, case_index)
    f = projected(prim, raw, inputs)
    expected = dp.value_and_grad(f, argnums=tuple(float_pos))(*inputs)
    got = dp.value_and_grad(dp.differentiable(f, engine=host_engine.name),
                            argnums=tuple(float_pos))(*inputs)
    assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12, what=f"{prim.name} value")
    for g, e in zip(got[1], expected[1]):
        assert_close(g, e, rtol=1e-12, atol=1e-12, what=f"{prim.name} grad")


def _w4(x):
    return np.sum(np.exp(-x ** 2) * np.cos(3.0 * x))


def test_codegen_elementwise_chains_become_fused_functions(host_engine):
    x = np.linspace(-1.0, 1.0, 7)
    f = dp.differentiable(_w4, engine=host_engine.name)
    value, grad = dp.value_and_grad(f)(x)
    assert_close(value, _w4(x))
    assert_close(grad, np.exp(-x ** 2) * (-2 * x * np.cos(3 * x) - 3 * np.sin(3 * x)))
    src = f.source(x, kind="grad")
    assert "_fused0 = _fuse(_fused0)" in src and "_fused1" in src
    assert host_engine.kernel_names[:2] == ["diffprog_fused0", "diffprog_fused1"]
    program_line = src.split("def program_")[1]
    assert "xp.exp" not in program_line  # the chain lives in the fused function only


def test_codegen_constants_placed_once_at_compile_time_not_per_call(host_engine):
    c = np.arange(4.0)  # made again inside f: a constant (closed over, it would be an input)
    f = dp.differentiable(lambda x: np.sum(np.sin(x) * np.arange(4.0) + np.float64(2.0)),
                          engine=host_engine.name)
    g = dp.grad(f)
    x = np.linspace(0.0, 1.0, 4)
    g(x)
    after_compile = host_engine.transfers
    assert after_compile >= 2  # the array and the NumPy scalar
    for _ in range(3):
        assert_close(g(x), np.cos(x) * c)
    assert host_engine.transfers == after_compile


def test_codegen_python_scalars_become_arrays_where_functions_need_them(host_engine):
    def f(s, x):
        return np.sum(np.broadcast_to(s, x.shape) * x)

    src = dp.differentiable(f, engine=host_engine.name).source(2.0, np.ones(3))
    assert "xp.broadcast_to(xp.asarray(a0)" in src
    value, grads = dp.value_and_grad(dp.differentiable(f, engine=host_engine.name),
                                     argnums=(0, 1))(2.0, np.arange(3.0))
    assert_close(value, 6.0)
    assert_close(grads[0], 3.0)
    assert_close(grads[1], np.full(3, 2.0))


def test_codegen_results_are_arrays_even_from_python_scalars(host_engine):
    out = dp.differentiable(lambda s: s * 2.0, engine=host_engine.name)(3.0)
    assert isinstance(out, np.ndarray) and out.shape == () and float(out) == 6.0


def test_codegen_library_calls_on_python_scalars_get_arrays_operators_do_not(host_engine):
    f = dp.differentiable(lambda s, x: np.sin(s) * x + s * 2.0, engine=host_engine.name)
    src = f.source(0.5, np.ones(2))
    # operators on Python scalars run on NumPy scalars (NumPy's rules: 1.0 / 0.0 is inf)
    # and hand back a Python float, never a device array
    assert "xp.sin(xp.asarray(a0))" in src and "_py(_f64(a0) * _f64(2.0))" in src
    assert_close(f(0.5, np.ones(2)), np.sin(0.5) + 1.0)


def test_codegen_source_compiles_against_the_real_cupy_module():
    cupy = pytest.importorskip("cupy")  # importing CuPy needs no GPU; running kernels does
    f = dp.differentiable(lambda x, s: np.sum(np.tanh(x * s) ** 2 + np.exp(-x) * 0.5))
    x = np.linspace(0.0, 1.0, 5)
    from diffprog.api import _graph_for_kind
    sig = make_signature((x, 2.0))
    graph = _graph_for_kind("grad", f._traced(sig), sig, (0, 1))
    placed = []
    source, namespace = generate_source(
        graph, cupy, "program", placement=DevicePlacement(lambda v: placed.append(v) or v),
        fuse=lambda fn: fn)
    exec(compile(source, "<cupy program>", "exec"), namespace)  # defines, runs nothing
    assert namespace["xp"] is cupy and callable(namespace["program"])
    assert "np." not in source  # every call goes through xp = cupy
    assert "_fused0" in source


def test_fused_kernel_falls_back_when_cupy_cannot_fuse():
    def cannot_fuse(kernel_name):
        def decorate(fn):
            def fail(*args):
                raise TypeError("unsupported in fusion")
            return fail
        return decorate

    kernel = FusedKernel(lambda a, b: a * b + 1.0, cannot_fuse)
    with pytest.warns(RuntimeWarning, match="op by op"):
        assert kernel(2.0, 3.0) == 7.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernel(2.0, 4.0) == 9.0  # warned once; now runs unfused silently
    assert kernel.state == "unfused" and isinstance(kernel.error, TypeError)


def _fuse_raising(error):
    def fuse(kernel_name):
        def decorate(fn):
            def fail(*args):
                raise error
            return fail
        return decorate
    return fuse


def test_fused_kernel_keeps_fusion_when_the_run_itself_fails():
    # a bad input fails fused and unfused alike: the run's own error, no fallback
    def run(a, b):
        if a < 0:
            raise ValueError("the run's own error")
        return a * b
    kernel = FusedKernel(run, _fuse_raising(ValueError("fused failed too")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="the run's own error"):
            kernel(-1.0, 2.0)
    assert kernel.state == "untried"


def test_fused_kernel_out_of_memory_propagates_and_fusion_is_kept():
    class OutOfMemoryError(MemoryError):  # as cupy.cuda.memory.OutOfMemoryError
        pass
    calls = []
    kernel = FusedKernel(lambda a: calls.append(a) or a, _fuse_raising(OutOfMemoryError("oom")))
    with pytest.raises(OutOfMemoryError):
        kernel(1.0)
    assert kernel.state == "untried" and calls == []  # never ran op by op behind our back


# ==================================================================== on a GPU (marked gpu)

def _to_gpu(xs):
    import cupy
    return [cupy.asarray(x) for x in xs]


@gpu
@pytest.mark.parametrize("prim,case_index", CASES)
def test_gpu_every_primitive_value_grad_jvp_match_numpy_engine(prim, case_index):
    import cupy
    case, inputs, raw, float_pos = setup_derivative_case(prim, case_index)
    f = projected(prim, raw, inputs)
    expected = dp.value_and_grad(f, argnums=tuple(float_pos))(*inputs)
    got = dp.value_and_grad(f, argnums=tuple(float_pos))(*_to_gpu(inputs))
    assert isinstance(got[0], cupy.ndarray)
    assert_close(got[0].get(), expected[0], rtol=1e-9, atol=1e-9, what=f"{prim.name} value")
    for g, e in zip(got[1], expected[1]):
        assert isinstance(g, cupy.ndarray), f"{prim.name}: gradient is {type(g)}"
        assert g.dtype == np.asarray(e).dtype
        assert_close(g.get(), e, rtol=1e-9, atol=1e-9, what=f"{prim.name} grad")
    rng = np.random.default_rng(5)
    tangents = [rng.standard_normal(np.shape(x)) if i in float_pos else np.zeros(np.shape(x), np.asarray(x).dtype)
                for i, x in enumerate(inputs)]
    _, t_cpu = dp.jvp(f, tuple(inputs), tuple(tangents))
    _, t_gpu = dp.jvp(f, tuple(_to_gpu(inputs)), tuple(_to_gpu(tangents)))
    assert isinstance(t_gpu, cupy.ndarray)
    assert_close(t_gpu.get(), t_cpu, rtol=1e-9, atol=1e-9, what=f"{prim.name} jvp")


@gpu
def test_gpu_elementwise_chains_are_really_fused():
    import cupy
    x = cupy.linspace(-1.0, 1.0, 1001)
    vg = dp.value_and_grad(_w4)
    value, grad = vg(x)
    programs = [p for p, _ in cache_for(_w4).programs.values() if p.engine == "cupy"]
    kernels = [v for p in programs for v in p.fn.__globals__.values() if isinstance(v, FusedKernel)]
    assert kernels and all(k.state == "fused" for k in kernels), [k.error for k in kernels]
    xh = x.get()
    assert_close(value.get(), _w4(xh))
    assert_close(grad.get(), np.exp(-xh ** 2) * (-2 * xh * np.cos(3 * xh) - 3 * np.sin(3 * xh)))


@gpu
def test_gpu_program_never_synchronizes_with_the_host():
    import cupy
    import cupyx
    rng = np.random.default_rng(0)
    params = {"w": cupy.asarray(rng.standard_normal((4, 8))), "b": cupy.zeros(8)}
    x = cupy.asarray(rng.standard_normal((16, 4)))

    def loss(p, x):
        return np.mean(np.tanh(x @ p["w"] + p["b"]) ** 2)

    g = dp.value_and_grad(loss)
    g(params, x)  # trace and compile (tracing computes concrete values)
    # CuPy's own detector: deprecated since v10 (it warns that it can miss some
    # synchronizations) but still in CuPy 14. Its copy classes are Cython types that
    # cannot be patched, so there is no other in-process check to fall back on.
    if not hasattr(cupyx, "allow_synchronize"):
        pytest.skip("this CuPy has no cupyx.allow_synchronize (removed after its deprecation)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with cupyx.allow_synchronize(False):
            value, grads = g(params, x)
    assert isinstance(value, cupy.ndarray) and isinstance(grads["w"], cupy.ndarray)
    ref_value, ref_grads = g({k: v.get() for k, v in params.items()}, x.get())
    assert_close(value.get(), ref_value)
    assert_close(grads["w"].get(), ref_grads["w"])


@gpu
def test_gpu_python_floats_mix_with_cupy_arrays_and_float32_stays_float32():
    import cupy
    x = cupy.linspace(0.0, 1.0, 5, dtype=cupy.float32)
    value, (gs, gx) = dp.value_and_grad(lambda s, x: np.sum(np.sin(s * x)), argnums=(0, 1))(2.0, x)
    assert gx.dtype == np.float32 and isinstance(gs, cupy.ndarray)
    xh = x.get().astype(np.float64)
    assert_close(gx.get(), 2.0 * np.cos(2.0 * xh), rtol=1e-5)
    assert_close(gs.get(), np.sum(xh * np.cos(2.0 * xh)), rtol=1e-5)


@gpu
def test_gpu_explicit_engine_vjp_and_constants_live_on_the_device():
    import cupy
    c = np.arange(3.0)
    f = dp.differentiable(lambda x: np.sin(x) * c, engine="cupy")
    x = cupy.asarray([0.1, 0.2, 0.3])
    out, pullback = dp.vjp(f, x)
    (g,) = pullback(cupy.ones(3))
    assert isinstance(out, cupy.ndarray) and isinstance(g, cupy.ndarray)
    assert_close(g.get(), np.cos(x.get()) * c)
    programs = [p for p, _ in cache_for(f.fn).programs.values()]
    bound = [v for p in programs for k, v in p.fn.__globals__.items() if k.startswith("_c")]
    assert bound and all(isinstance(v, cupy.ndarray) for v in bound)


def test_codegen_non_ufunc_elementwise_calls_get_arrays_for_any_python_scalar(host_engine):
    # cupy.where calls condition.astype(): a Python bool condition must become an array
    f = dp.differentiable(lambda s, x, y: np.where(s > 0.0, x, y), engine=host_engine.name)
    src = f.source(0.5, np.ones(2), np.zeros(2))
    assert "xp.where(xp.asarray(v0), a1, a2)" in src
    assert_close(f(0.5, np.ones(2), np.zeros(2)), np.ones(2))
    assert_close(f(-0.5, np.ones(2), np.zeros(2)), np.zeros(2))


class _OtherArrayModule:
    """NumPy under another name: library code takes its non-NumPy (device) path."""

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.mark.parametrize("a_shape,b_shape", [((3, 3), (3,)), ((2, 3, 3), (3,)), ((3, 3), (4, 3, 2)),
                                             ((1, 3, 3), (4, 3, 1)), ((2, 3, 3), (2, 3, 2))])
def test_solve_broadcasts_batches_itself_on_device_libraries(a_shape, b_shape):
    # CuPy's solve wants equal batch dims and reads a (batch, n) b as vectors (NumPy 1)
    from diffprog.primitives.linalg import solve_impl
    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape) + 3 * np.eye(3)
    b = rng.standard_normal(b_shape)
    expected = np.linalg.solve(a, b)
    got = solve_impl(_OtherArrayModule(), a, b)
    assert got.shape == expected.shape
    assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_host_scalars_reach_cupy_programs_as_0d_device_arrays():
    from diffprog.engines.cupy import CupyEngine
    seen = []

    class RecordingModule(_OtherArrayModule):
        def asarray(self, value, dtype=None):
            seen.append(type(value))
            return np.asarray(value, dtype=dtype)

    engine = CupyEngine(fuse=False)
    engine.xp = RecordingModule()
    engine.placement = DevicePlacement(np.asarray)
    graph = dp.differentiable(lambda s, x: np.sum(np.broadcast_to(s, x.shape) * x)).ir(
        np.float64(2.0), np.ones(3))
    program = engine.compile(graph)
    seen.clear()
    (value,) = program(np.float64(2.0), np.arange(3.0))
    assert seen == [np.float64]  # the NumPy scalar argument, converted once before the call
    assert float(value) == 6.0


# ================================================ several GPUs (dispatch logic, stand-ins)

class StandInDevice:
    def __init__(self, id):
        self.id = id


class StandInCupyArrayOn(StandInCupyArray):
    __module__ = "cupy._core.core"

    def __init__(self, gpu, shape=(3,)):
        super().__init__(shape)
        self.device = StandInDevice(gpu)


def test_programs_are_cached_per_gpu():
    one, other = make_signature((StandInCupyArrayOn(0),)), make_signature((StandInCupyArrayOn(1),))
    assert one.key != other.key  # a program's constants live on the GPU it was compiled for
    assert make_signature((StandInCupyArrayOn(1),)).key == other.key


def test_inputs_on_two_gpus_are_an_error_naming_both():
    sig = make_signature((StandInCupyArrayOn(0), {"w": StandInCupyArrayOn(1)}))
    with pytest.raises(ArgumentError) as err:
        _engine_name(sig, None)
    msg = str(err.value)
    assert "GPU 0: args[0]" in msg and "GPU 1: args[1]['w']" in msg and "cupy.cuda.Device" in msg


def test_compile_and_run_happen_on_the_inputs_gpu(monkeypatch):
    """With a stand-in ``cupy`` module: the call enters ``cupy.cuda.Device(<input's id>)``."""
    from diffprog import api
    entered = []

    class Device:
        def __init__(self, id):
            self.id = id

        def __enter__(self):
            entered.append(self.id)

        def __exit__(self, *exc):
            entered.append(-1)
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(Device=Device)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    sig = make_signature((StandInCupyArrayOn(1), 2.0))
    assert sig.gpu == 1
    with api._on_gpu(sig.gpu):
        assert entered == [1]
    assert entered == [1, -1]
    assert make_signature((np.ones(3),)).gpu is None
    with api._on_gpu(None):  # NumPy calls: no device switch at all
        assert entered == [1, -1]
