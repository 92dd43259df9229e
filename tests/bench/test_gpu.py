"""bench/gpu.py: its hand-written baselines are right (checked on the CPU with NumPy,
against diffprog's gradients), and without a GPU it says why and exits with status 3."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

import diffprog as dp

from ..helpers import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", os.path.join(ROOT, "bench", "gpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hand_written_mlp_gradient_matches_diffprog(bench):
    params, x, y = bench.mlp_problem(np, batch=32, d_in=5, hidden=7, d_out=3, dtype=np.float64)
    value, grads = bench.mlp_value_and_grad_by_hand(np, params, x, y)
    ref_value, ref_grads = dp.value_and_grad(bench.mlp_loss)(params, x, y)
    assert_close(value, ref_value, rtol=1e-12)
    for k in ref_grads:
        assert_close(grads[k], ref_grads[k], rtol=1e-10, atol=1e-12, what=k)


def test_hand_written_bump_gradient_matches_diffprog(bench):
    x = np.linspace(-3.0, 3.0, 101)
    value, grad = bench.bump_value_and_grad_by_hand(np, x)
    ref_value, ref_grad = dp.value_and_grad(bench.bump)(x)
    assert_close(value, ref_value, rtol=1e-12)
    assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_without_gpu_exits_with_the_reason(bench, capsys):
    if dp.engines.available()["cupy"] == "ok":
        pytest.skip("a GPU is present: the benchmark would run")
    with pytest.raises(SystemExit) as stop:
        bench.main(["--quick"])
    assert stop.value.code == bench.NO_GPU_EXIT
    assert "Fix:" in capsys.readouterr().err
