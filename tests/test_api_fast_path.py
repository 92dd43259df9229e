"""The fast call path for dict arguments: only the leaves a program uses are passed and
checked (values), every leaf is checked for gradients (their zeros take its shape)."""
import numpy as np

import diffprog as dp

P = {f"w{i}": np.full(2, float(i)) for i in range(20)}


def test_a_value_call_reads_and_checks_only_the_leaves_it_uses():
    f = dp.differentiable(lambda p, x: np.sum(p["w3"] * x))
    x = np.ones(2)
    assert f(P, x) == 6.0
    (program, _, (checks, passes)), = f._fast.values()
    assert passes == ((0, "w3"), (1, None)) and len(checks) == 1  # x: by the fast key
    q = dict(P, w5="not even an array")  # unused: as in plain NumPy, it does not matter
    assert f(q, x) == 6.0
    q = dict(P, w3=np.full(2, 7.0))
    assert f(q, x) == 14.0
    q = dict(P, w3=np.full(3, 1.0))  # a used leaf of a new shape: the full path retraces
    assert f(q, np.ones(3)) == 3.0


def test_gradients_check_every_leaf_of_the_dict():
    g = dp.grad(lambda p: np.sum(p["w1"] ** 2))
    grads = g(P)
    assert grads["w1"].tolist() == [2.0, 2.0] and grads["w7"].tolist() == [0.0, 0.0]
    q = dict(P, w7=np.zeros(5))  # an unused leaf changed shape: its zero gradient follows
    assert g(q)["w7"].shape == (5,)


def test_fast_calls_with_externals_and_nested_dicts_stay_correct():
    import types
    mod = types.ModuleType("user_code")
    exec(compile("import numpy as np\nK = np.ones(2)\n"
                 "def f(p):\n    return np.sum(p['w2'] * K)\n", "<user_code>", "exec"),
         mod.__dict__)
    f = dp.differentiable(mod.f)
    assert f(P) == 4.0
    mod.K[:] = 3.0
    assert f(P) == 12.0
    nested = dp.differentiable(lambda p: np.sum(p["a"]["b"]))
    assert nested({"a": {"b": np.ones(3)}}) == 3.0 and not nested._fast


def test_dicts_holding_python_floats_take_the_full_path():
    f = dp.differentiable(lambda p: np.sum(p["w"]) + p["b"])
    assert f({"w": np.ones(2), "b": 1.5}) == 3.5 and f({"w": np.ones(2), "b": 2.5}) == 4.5
    assert not f._fast


def test_a_value_call_sees_shape_dtype_and_type_changes_of_unused_leaves():
    f = dp.differentiable(lambda p, x: x * (p["w"].shape[0] + (0 if p["flag"] is None else 1)))
    x = np.arange(3.0)
    p = {"w": np.ones(3), "flag": np.ones(1)}
    np.testing.assert_allclose(f(p, x), 4 * x)
    np.testing.assert_allclose(f({"w": np.ones(5), "flag": np.ones(1)}, x), 6 * x)
    np.testing.assert_allclose(f({"w": np.ones(5), "flag": None}, x), 5 * x)


def test_dict_arguments_keep_the_callers_key_order_and_key_types():
    f = dp.differentiable(lambda p: np.concatenate(list(p.values())))
    p = {"b": np.ones(3), "a": np.zeros(2)}
    np.testing.assert_array_equal(f(p), np.concatenate(list(p.values())))
    g = dp.differentiable(lambda p: np.sum(list(p.values())[0]) * 2 +
                          (1 if type(next(iter(p))) is bool else 0))
    assert g({1: np.ones(2)}) == 4.0 and g({True: np.ones(2)}) == 5.0


def test_a_leaf_whose_shape_the_code_read_is_checked_and_others_only_by_type():
    f = dp.differentiable(lambda p, x: x * np.zeros(p["w"].shape).size + np.sum(p["v"]))
    x = np.ones(2)
    p = {"w": np.ones(3), "v": np.ones(2), "unused": np.ones(4)}
    np.testing.assert_allclose(f(p, x), [5.0, 5.0])
    (_, _, (checks, _)), = f._fast.values()
    _, kinds, full = checks[0]  # the dict argument
    keys, shapes, _ = full  # the keys checked for shape and dtype, and their shapes
    assert len(kinds) == 3 and sorted(keys) == ["v", "w"] and len(shapes) == 2  # w read, v used
    np.testing.assert_allclose(f(dict(p, w=np.ones(5)), x), [7.0, 7.0])
    np.testing.assert_allclose(f(dict(p, unused=np.ones(9)), x), [5.0, 5.0])


def test_a_shape_read_through_a_derived_value_is_checked_too():
    f = dp.differentiable(lambda p, x: x * p["w"].T.shape[0] + np.sum(p["v"]))
    x = np.ones(2)
    p = {"w": np.ones((3, 2)), "v": np.ones(2)}
    np.testing.assert_allclose(f(p, x), [4.0, 4.0])
    np.testing.assert_allclose(f(dict(p, w=np.ones((3, 5))), x), [7.0, 7.0])


def test_a_shape_read_through_aval_is_checked_too():
    f = dp.differentiable(lambda p, x: x * p["w"].aval.shape[0] + np.sum(p["v"]))
    x = np.ones(2)
    p = {"w": np.ones((2, 3)), "v": np.ones(2)}
    np.testing.assert_allclose(f(p, x), [4.0, 4.0])
    np.testing.assert_allclose(f(dict(p, w=np.ones((4, 3))), x), [6.0, 6.0])


def test_the_default_engine_follows_a_replaced_environment(monkeypatch):
    import os
    from diffprog import engines
    monkeypatch.setattr(os, "environ", {"DIFFPROG_ENGINE": "julia"})
    assert engines.default_engine_name() == "julia"
