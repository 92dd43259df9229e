"""diffprog.distributed on a LocalCluster started here: 2 worker processes, 1 thread each,
loopback addresses only. Gradients against single-process ones, data sent once, programs
compiled once per worker, ensembles, errors naming the shard and the worker, and a worker
killed in the middle of training."""
from __future__ import annotations

import doctest
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import diffprog as dp
from diffprog.tree import flatten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_without_dask_the_module_says_how_to_install_it():
    code = ("import sys\n"
            "sys.modules['distributed'] = None  # as if dask[distributed] were not installed\n"
            "from diffprog.errors import EngineUnavailable\n"
            "try:\n"
            "    import diffprog.distributed\n"
            "except EngineUnavailable as e:\n"
            "    print('EngineUnavailable:', e, isinstance(e, ImportError))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "EngineUnavailable:" in out.stdout
    assert 'pip install "diffprog[distributed]"' in out.stdout
    assert out.stdout.strip().endswith("True")  # `except ImportError` catches it too


distributed = pytest.importorskip("distributed")
dpd = importlib.import_module("diffprog.distributed")
from diffprog.sciml import odeint  # noqa: E402


def start_cluster():
    return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                    silence_logs=logging.CRITICAL)


@pytest.fixture(scope="module")
def client():
    with start_cluster() as cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(2)
        yield c


# ------------------------------------------------------------------ a small model

def mlp_loss(params, shard):
    """W2's model (bench/workloads.py) with the shard as (x, y)."""
    x, y = shard
    h = np.tanh(x @ params["w1"])
    return np.mean((h @ params["w2"] - y) ** 2)


def make_data(n_shards=16, rows=8, d_in=4, hidden=6, seed=0):
    rng = np.random.default_rng(seed)
    params = {"w1": rng.standard_normal((d_in, hidden)) * 0.5,
              "w2": rng.standard_normal((hidden, 1)) * 0.3}
    x = rng.standard_normal((n_shards * rows, d_in))
    y = rng.standard_normal((n_shards * rows, 1))
    shards = [(x[i * rows:(i + 1) * rows], y[i * rows:(i + 1) * rows]) for i in range(n_shards)]
    return params, x, y, shards


def assert_tree_close(a, b, rtol=1e-12):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=rtol * np.max(np.abs(b[k])))


# ------------------------------------------------------------------ gradients

def test_mean_gradient_equals_the_single_process_full_data_gradient(client):
    params, x, y, shards = make_data()
    value, grads = dpd.value_and_grad(mlp_loss, client=client, reduce="mean")(params, shards)
    ref_value, ref_grads = dp.value_and_grad(mlp_loss)(params, (x, y))
    assert abs(value - ref_value) <= 1e-12 * abs(ref_value)
    assert_tree_close(grads, ref_grads)


def test_sum_gradient_is_the_sum_of_shard_gradients(client):
    params, _, _, shards = make_data(n_shards=5)
    got = dpd.grad(mlp_loss, client=client)(params, shards)
    per_shard = [dp.grad(mlp_loss)(params, s) for s in shards]
    assert_tree_close(got, {k: sum(g[k] for g in per_shard) for k in params})


def test_result_bits_do_not_depend_on_how_the_tree_is_cut_into_tasks(client):
    params, _, _, shards = make_data(n_shards=13)
    handle = dpd.shard(shards, client)
    results = [dpd.grad(mlp_loss, client=client, leaf_tasks=k)(params, handle)
               for k in (1, 3, 13)]
    for r in results[1:]:
        for key in params:
            np.testing.assert_array_equal(r[key], results[0][key])


def test_extra_arguments_reach_every_shard(client):
    params, x, y, shards = make_data(n_shards=4)

    def scaled(p, shard, scale):
        return scale * mlp_loss(p, shard)
    got = dpd.grad(scaled, client=client)(params, shards, 3.0)
    ref = dpd.grad(mlp_loss, client=client)(params, shards)
    assert_tree_close(got, {k: 3.0 * v for k, v in ref.items()})


def test_dask_array_shards_are_blocks_along_axis_0(client):
    da = pytest.importorskip("dask.array")
    params, x, y, _ = make_data(n_shards=6, rows=5)
    shards = dpd.shard((da.from_array(x, chunks=(5, 2)), da.from_array(y, chunks=5)), client)
    assert len(shards) == 6
    got = dpd.grad(mlp_loss, client=client, reduce="mean")(params, shards)
    assert_tree_close(got, dp.grad(mlp_loss)(params, (x, y)))
    with pytest.raises(dp.ShapeError, match="same chunks along axis 0"):
        dpd.shard((da.from_array(x, chunks=5), da.from_array(y, chunks=10)), client)


def test_futures_already_on_the_workers_are_used_as_they_are(client):
    params, x, y, shards = make_data(n_shards=4)
    futures = [tuple(client.scatter(list(s))) for s in shards]
    got = dpd.grad(mlp_loss, client=client, reduce="mean")(params, futures)
    assert_tree_close(got, dp.grad(mlp_loss)(params, (x, y)))


def count_scatters(client, monkeypatch) -> list:
    calls = []
    real = client.scatter

    def scatter(data, *args, **kwargs):
        keys = list(data) if isinstance(data, dict) else ["(data)"]
        calls.append(str(keys[0]))
        return real(data, *args, **kwargs)
    monkeypatch.setattr(client, "scatter", scatter)
    return calls


def test_fit_sends_data_once_and_workers_compile_once(client, monkeypatch):
    params, x, y, shards = make_data(n_shards=8)

    def fresh_loss(p, shard):  # a function no other test sent: its own program key
        return mlp_loss(p, shard) + 0.0

    def worker_misses():
        return client.run(lambda: dp.cache_info()["misses"])

    calls = count_scatters(client, monkeypatch)
    before = worker_misses()
    opt = dp.optim.Adam(1e-2)
    p2, state = dpd.fit(fresh_loss, params, shards, opt, steps=2, client=client)
    after_two = worker_misses()
    dpd.fit(fresh_loss, p2, shards, opt, steps=5, client=client, state=state)
    after_seven = worker_misses()
    per_step = [c for c in calls if c.startswith("diffprog-params-")]
    once = [c for c in calls if not c.startswith("diffprog-params-")]
    assert len(per_step) == 7  # parameters: once per step
    assert len(once) == 2 * (2 + 1)  # per fit: one block of shards per worker + the function
    # each worker traced the loss at most once (it may not have run any task of the first
    # fit), and five more steps traced nothing anywhere
    assert all(after_two[w] - before[w] <= 1 for w in before)
    assert after_seven == after_two
    programs = client.run(dpd.worker_programs)
    assert all(len(set(v)) == len(v) for v in programs.values())


def test_a_fast_math_function_is_compiled_with_fast_math_on_the_workers(client):
    params, x, y, shards = make_data(n_shards=4)
    fast = dpd.value_and_grad(dp.differentiable(mlp_loss, fast_math=True), client=client,
                              reduce="mean")
    exact = dpd.value_and_grad(mlp_loss, client=client, reduce="mean")
    assert fast.fast_math is True and exact.fast_math is False and fast.token != exact.token
    value, grads = fast(params, shards)
    modes = client.run(lambda: {k: p.fast_math_now() for k, p in dpd._PROGRAMS.items()})
    assert any(m.get(fast.token) for m in modes.values())
    assert not any(m.get(exact.token, False) for m in modes.values())
    ref_value, ref_grads = dp.value_and_grad(mlp_loss)(params, (x, y))
    assert value == pytest.approx(ref_value, rel=1e-12)
    assert_tree_close(grads, ref_grads, rtol=1e-10)
    previous = dp.set_fast_math(True)  # a function that does not choose: this setting
    try:
        assert dpd.value_and_grad(mlp_loss, client=client).fast_math is True
    finally:
        dp.set_fast_math(previous)


def test_fit_matches_training_in_one_process(client):
    params, x, y, shards = make_data(n_shards=8)
    opt = dp.optim.Adam(5e-2)
    history = []
    got, _ = dpd.fit(mlp_loss, params, shards, opt, steps=5, client=client,
                     callback=lambda step, value, p: history.append(float(value)))
    ref, state = params, opt.init(params)
    for _ in range(5):
        ref, state = opt.update(dp.grad(mlp_loss)(ref, (x, y)), state, ref)
    assert_tree_close(got, ref, rtol=1e-10)
    assert len(history) == 5 and history[-1] < history[0]


# ------------------------------------------------------------------ errors

def test_a_shard_that_raises_names_the_shard_and_the_worker(client):
    params, _, _, shards = make_data(n_shards=6)
    shards[4] = (np.ones((3, 5)), np.ones((3, 1)))  # 5 features: the matmul cannot fit
    with pytest.raises(dpd.RemoteError) as info:
        dpd.grad(mlp_loss, client=client)(params, shards)
    err = info.value
    assert err.where == "shard 4" and "shard 4" in str(err)
    assert err.worker in client.nthreads() and err.worker in str(err)
    assert err.original_type and "shards.fetch(4)" in str(err)


def test_lost_shards_are_resent_unless_they_changed_or_were_futures(client):
    params, _, _, shards = make_data(n_shards=3)
    handle = dpd.shard(shards, client)
    first = dpd.grad(mlp_loss, client=client)(params, handle)
    handle.futures[1][0].cancel()  # as if the worker holding it had died
    assert handle.lost() == [1] and handle.restore() == [1] and handle.lost() == []
    again = dpd.grad(mlp_loss, client=client)(params, handle)
    for k in params:
        np.testing.assert_array_equal(again[k], first[k])
    handle.futures[2][1].cancel()
    shards[2][1][0, 0] += 1.0  # the caller modified the array in place meanwhile
    with pytest.raises(dp.EngineError, match=r"shards \[2\].*changed on the client"):
        handle.restore()
    futures = dpd.shard([tuple(client.scatter(list(s))) for s in shards], client)
    futures.futures[0][0].cancel()
    with pytest.raises(dp.EngineError, match=r"shards \[0\].*passed as futures"):
        futures.restore()


def test_reduction_refuses_a_sum_missing_or_repeating_a_shard():
    partial = dpd.Partial((0, 2, 2), 1.0, [np.zeros(2)], flatten(np.zeros(2))[1])
    with pytest.raises(dp.EngineError, match=r"missing: \[1\].*twice: \[2\]"):
        dpd._check_every_shard_once(partial, 3)
    dpd._check_every_shard_once(dpd.Partial((1, 0, 2), 1.0, [], partial.treedef), 3)


def test_bad_arguments_are_refused_with_the_fix(client):
    params, x, _, _ = make_data()
    with pytest.raises(dp.ArgumentError, match="list of shards"):
        dpd.grad(mlp_loss, client=client)(params, x)
    with pytest.raises(dp.ArgumentValueError, match="reduce"):
        dpd.grad(mlp_loss, client=client, reduce="max")
    with pytest.raises(dp.ArgumentValueError, match="empty"):
        dpd.shard([], client)
    with pytest.raises(dp.ArgumentError, match="Client"):
        dpd.grad(mlp_loss, client="tcp://127.0.0.1:8786")
    with pytest.raises(dp.ArgumentValueError, match="chunk"):
        dpd.map(np.sin, x, client=client, chunk=0)


# ------------------------------------------------------------------ ensembles

def lotka_volterra(y, t, p):
    return np.stack([p[0] * y[0] - p[1] * y[0] * y[1], p[2] * y[0] * y[1] - p[3] * y[1]])


def solve(p):
    return odeint(lotka_volterra, np.array([1.0, 1.0]), np.linspace(0.0, 2.0, 11), p,
                  method="rk4", steps_per_interval=4)


def test_map_runs_an_ensemble_in_order(client):
    P = np.random.default_rng(3).uniform(0.5, 1.5, (23, 4))
    ref = np.stack([dp.differentiable(solve)(p) for p in P])
    for how in ("vmap", "loop", "python"):
        got = dpd.map(solve, P, client=client, chunk=5, how=how)
        assert got.shape == (23, 11, 2)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0, err_msg=how)


def test_map_takes_lists_and_trees_of_members(client):
    members = [{"a": np.float64(i), "b": np.arange(3.0) * i} for i in range(7)]
    got = dpd.map(lambda m: (m["a"] * 2, np.sum(m["b"])), members, client=client, chunk=3)
    np.testing.assert_array_equal(got[0], 2.0 * np.arange(7))
    np.testing.assert_array_equal(got[1], 3.0 * np.arange(7))
    stacked = {"a": np.arange(7.0), "b": np.arange(21.0).reshape(7, 3)}
    got = dpd.map(lambda m: m["a"] + np.sum(m["b"]), stacked, client=client, chunk=2,
                  how="loop")
    np.testing.assert_array_equal(got, np.arange(7.0) + stacked["b"].sum(axis=1))


def fragile(p):
    if p[0] > 0.5:  # a Python branch on the member: fine member by member, not under vmap
        raise ValueError("no solution for this member")
    return p * 2


def test_a_member_that_raises_names_the_member_and_the_worker(client):
    P = np.array([[0.1], [0.2], [0.9], [0.3]])
    with pytest.raises(dpd.RemoteError, match="ensemble member 2") as info:
        dpd.map(fragile, P, client=client, chunk=3, how="python")
    assert info.value.worker in client.nthreads()
    assert info.value.original_type == "ValueError"
    vmap_chunk = r"(?s)members (0\.\.2|3\.\.3) \(one dp.vmap call\).*how='loop'"
    with pytest.raises(dpd.RemoteError, match=vmap_chunk):
        dpd.map(fragile, P, client=client, chunk=3)
    with pytest.raises(dp.ArgumentValueError, match="how must be one of"):
        dpd.map(fragile, P, client=client, how="pmap")


def random_state_moves(seconds: float) -> int:
    import random
    import diffprog.distributed  # noqa: F401  (imported by every task of dpd on a worker)
    state, moves, end = random.getstate(), 0, time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
        if random.getstate() != state:
            moves, state = moves + 1, random.getstate()
    return moves


def test_dask_does_not_draw_from_the_random_module_a_trace_watches(client):
    # dask.sizeof drew from Python's global random several times a second on an idle worker,
    # and a trace running meanwhile was taken for a function that draws random numbers
    # (retraced at every call; dp.vmap refused it)
    assert client.submit(random_state_moves, 1.0, pure=False).result() == 0


# ------------------------------------------------------------------ faults

@pytest.mark.slow
def test_a_worker_killed_during_fit_changes_nothing_in_the_result(monkeypatch):
    params, x, y, shards = make_data(n_shards=16, rows=400, d_in=8, hidden=32)
    restored, real_restore = [], dpd.Shards.restore

    def recording_restore(self):
        indices = real_restore(self)
        restored.extend(indices)
        return indices
    monkeypatch.setattr(dpd.Shards, "restore", recording_restore)
    opt = dp.optim.Adam(1e-2)
    with start_cluster() as cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(2)
        undisturbed, _ = dpd.fit(mlp_loss, params, shards, opt, steps=6, client=c)
        pids = c.run(os.getpid)
        victim = sorted(pids)[0]
        killed = threading.Event()

        def kill_soon(step, value, p):
            if step == 2:  # while step 3 is being sent out and computed
                threading.Timer(0.01, lambda: (os.kill(pids[victim], signal.SIGKILL),
                                               killed.set())).start()

        disturbed, _ = dpd.fit(mlp_loss, params, shards, opt, steps=6, client=c,
                               callback=kill_soon)
        assert killed.is_set()
        deadline = time.monotonic() + 30
        while victim in c.nthreads() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert victim not in c.nthreads()  # it really died (its Nanny starts a new one)
    assert restored  # the shards it held were lost, sent again, and the step rerun
    for k in params:
        np.testing.assert_array_equal(disturbed[k], undisturbed[k])


# ------------------------------------------------------------------ GPU workers

@pytest.mark.gpu
def test_cupy_shards_run_on_the_workers_gpu(client):
    cupy = pytest.importorskip("cupy")
    if not dp.engines.available().get("cupy") == "ok":
        pytest.skip(f"cupy engine: {dp.engines.available().get('cupy')}")
    params, x, y, shards = make_data(n_shards=4)
    on_gpu = [tuple(client.submit(cupy.asarray, a, pure=False) for a in s) for s in shards]
    got = dpd.grad(mlp_loss, client=client, reduce="mean")(params, on_gpu)
    assert all(type(v) is np.ndarray for v in got.values())
    assert_tree_close(got, dp.grad(mlp_loss)(params, (x, y)), rtol=1e-10)


# ------------------------------------------------------------------ docs and bench

def test_doctests():
    failures, _ = doctest.testmod(dpd, verbose=False)
    assert failures == 0


def test_bench_runs_on_tiny_sizes(client):
    sys.path.insert(0, ROOT)
    try:
        from bench import distributed as bench
    finally:
        sys.path.remove(ROOT)
    grad = bench.gradient_benchmark(client, n_shards=8, size="tiny", repeats=2)
    assert grad["max_abs_diff"] <= 1e-12 and grad["step_s"] > 0
    ens = bench.ensemble_seconds(client, n_members=12, chunk=4)
    assert ens > 0
