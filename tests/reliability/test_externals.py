"""Values a function reads that are not its arguments (globals, closure cells, attributes)
are never frozen into a compiled program: a changed value gives the new result."""
import types

import numpy as np
import pytest

import diffprog as dp

X = np.array([1.0, 2.0, 3.0])


def _module(source: str) -> types.ModuleType:
    """A fresh module: globals of user code, as a script or notebook has them."""
    mod = types.ModuleType("user_code")
    exec(compile(source, "<user_code>", "exec"), mod.__dict__)
    return mod


def test_a_global_array_mutated_in_place_or_rebound_is_seen():
    mod = _module("import numpy as np\nW = np.ones(3)\ndef f(x):\n    return np.sum(W * x)\n")
    f, g = dp.differentiable(mod.f), dp.grad(mod.f)
    assert f(X) == 6.0 and list(g(X)) == [1, 1, 1]
    mod.W[:] = 2.0
    assert f(X) == 12.0 and list(g(X)) == [2, 2, 2]
    mod.W = np.full(3, 3.0)
    assert f(X) == 18.0 and list(g(X)) == [3, 3, 3]
    out, tangent = dp.jvp(mod.f, (X,), (np.ones(3),))
    assert out == 18.0 and tangent == 9.0
    _, pullback = dp.vjp(mod.f, X)
    assert list(pullback(1.0)[0]) == [3, 3, 3]


def test_values_computed_from_a_global_follow_it():
    mod = _module("import numpy as np\nC = np.zeros(3)\n"
                  "def f(x):\n    scale = np.exp(C) / np.sum(np.exp(C))\n    return np.sum(scale * x)\n")
    f = dp.differentiable(mod.f)
    np.testing.assert_allclose(f(X), 2.0)
    mod.C += np.array([0.0, 0.0, 50.0])
    np.testing.assert_allclose(f(X), mod.f(X))


def test_a_global_changing_shape_retraces():
    mod = _module("import numpy as np\nW = np.ones(3)\ndef f(x):\n    return np.sum(W) * np.sum(x)\n")
    f = dp.differentiable(mod.f)
    assert f(X) == 18.0
    mod.W = np.ones(5)
    assert f(X) == 30.0


def test_global_python_scalars_are_read_at_each_call():
    mod = _module("import numpy as np\nk = 2.0\nn = 2\nflag = True\n"
                  "def f(x):\n    y = np.sum(k * x[:n])\n    return y if flag else -y\n")
    f = dp.differentiable(mod.f)
    assert f(X) == 6.0
    mod.k = 5.0
    assert f(X) == 15.0
    mod.n = 3
    assert f(X) == 30.0
    mod.flag = False
    assert f(X) == -30.0
    np.testing.assert_allclose(dp.grad(mod.f)(X), [-5.0, -5.0, -5.0])


def test_globals_read_by_helper_functions_are_seen():
    mod = _module("import numpy as np\nB = np.zeros(3)\n"
                  "def layer(x):\n    return np.tanh(x + B)\n"
                  "def f(x):\n    return np.sum(layer(x))\n")
    f = dp.differentiable(mod.f)
    f(X)
    mod.B = np.full(3, -1.0)
    np.testing.assert_allclose(f(X), np.sum(np.tanh(X - 1.0)))
    np.testing.assert_allclose(dp.grad(mod.f)(X), 1 - np.tanh(X - 1.0) ** 2)


def test_closure_cells_are_read_at_each_call():
    def make():
        c = np.zeros(3)
        s = 1.0

        def f(x):
            return np.sum(np.exp(c) * x * s)

        def bump():
            nonlocal s
            c[:] += 1.0
            s = 2.0
        return f, bump
    f, bump = make()
    d = dp.differentiable(f)
    assert d(X) == 6.0
    bump()
    np.testing.assert_allclose(d(X), np.sum(np.e * X * 2.0))
    np.testing.assert_allclose(dp.grad(f)(X), np.full(3, 2 * np.e))


def test_attributes_of_an_object_argument_are_seen():
    class Model:
        def __init__(self):
            self.W = np.ones(3)
            self.scale = 1.0

        @dp.differentiable
        def __call__(self, x):
            return np.sum(self.W * x) * self.scale

    m = Model()
    assert m(X) == 6.0
    m.W = np.zeros(3)          # rebound
    assert m(X) == 0.0
    m.W[:] = 2.0               # in place
    assert m(X) == 12.0
    m.scale = 0.5              # a float attribute: guarded by value
    assert m(X) == 6.0


def test_optimiser_rebinding_an_attribute_each_step_does_not_retrace():
    traces = []

    class Model:
        def __init__(self):
            self.W = np.ones(3)

    def loss(model, x):
        traces.append(1)
        return np.sum((model.W * x - 1.0) ** 2)

    f = dp.differentiable(loss)
    m = Model()
    for _ in range(5):
        m.W = m.W - 0.01  # a new array each step, used directly: an input
        np.testing.assert_allclose(f(m, X), loss(m, X))
    assert len(traces) == 1 + 5  # the first trace, then one plain call per step above


def test_a_function_that_assigns_globals_runs_at_every_call_as_python_does():
    mod = _module("import numpy as np\ncalls = 0\nW = np.ones(3)\n"
                  "def f(x):\n    global calls\n    calls += 1\n    return np.sum(W * x)\n")
    f = dp.differentiable(mod.f)
    with pytest.warns(dp.DiffprogWarning, match="assigns calls"):
        assert f(X) == 6.0
    assert f(X) == 6.0 and mod.calls == 2  # its effect happens at every call
    mod.W = np.full(3, 2.0)
    assert f(X) == 12.0 and mod.calls == 3


def test_nonlocal_state_a_function_updates_stays_its_own():
    def make():
        count = 0
        w = np.ones(3)

        def f(x):
            nonlocal count
            count += 1
            return np.sum(w * x)
        return f, lambda: count
    f, count = make()
    d = dp.differentiable(f)
    with pytest.warns(dp.DiffprogWarning, match="assigns count"):
        assert d(X) == 6.0
    assert d(X) == 6.0 and count() == 2


def test_a_global_needed_as_a_plain_value_falls_back_to_a_guard():
    mod = _module("import numpy as np\nG = np.array([2.0, 0.0])\n"
                  "def f(x):\n    return np.sum(x) * float(G[0])\n")
    f = dp.differentiable(mod.f)
    assert f(X) == 12.0
    mod.G[0] = 3.0  # in place, guarded by content
    assert f(X) == 18.0
    np.testing.assert_allclose(dp.grad(mod.f)(X), [3.0, 3.0, 3.0])


def test_boolean_masks_and_index_arrays_stay_constants_guarded_by_value():
    mod = _module("import numpy as np\nMASK = np.array([True, False, True])\n"
                  "def f(x):\n    return np.sum(x[MASK] ** 2)\n")
    f = dp.differentiable(mod.f)
    assert f(X) == 10.0
    mod.MASK[1] = True
    assert f(X) == 14.0


def test_a_nested_derivative_reading_a_global_follows_it():
    mod = _module("import numpy as np\nA = np.ones(3)\n"
                  "def energy(x):\n    return np.sum(A * x ** 2)\n"
                  "def f(x):\n    import diffprog as dp\n"
                  "    return np.sum(dp.grad(energy)(x) ** 2)\n")
    f = dp.differentiable(mod.f)
    np.testing.assert_allclose(f(X), np.sum((2 * X) ** 2))
    mod.A = np.full(3, 2.0)
    np.testing.assert_allclose(f(X), np.sum((4 * X) ** 2))
    np.testing.assert_allclose(dp.grad(mod.f)(X), 2 * 16 * X)


def test_a_scan_body_reading_a_global_follows_it():
    mod = _module("import numpy as np\nimport diffprog as dp\nR = np.full(3, 0.5)\n"
                  "def f(x):\n    return np.sum(dp.scan(lambda c, _: (c * R, c), x, np.zeros(4))[0])\n")
    f = dp.differentiable(mod.f)
    np.testing.assert_allclose(f(X), np.sum(X * 0.5 ** 4))
    mod.R = np.full(3, 2.0)
    np.testing.assert_allclose(f(X), np.sum(X * 2.0 ** 4))
    np.testing.assert_allclose(dp.grad(mod.f)(X), np.full(3, 16.0))


# ----------------------------------------------------------- roots, objects, classes

class _Model:
    def __init__(self):
        self.W = np.ones(3)
        self.step = 0

    def loss(self, x):
        return np.sum(self.W * x)

    def __call__(self, x):
        return np.sum(self.W * x) * 2.0


def test_bound_methods_partials_and_callable_objects_read_their_state_at_each_call():
    import functools
    m = _Model()
    g_method, g_call = dp.grad(m.loss), dp.grad(m)
    G = np.ones(3)
    g_partial = dp.grad(functools.partial(lambda x, w: np.sum(w * x), w=G))
    for g in (g_method, g_call, g_partial):
        g(X)
    m.W = np.array([5.0, 6.0, 7.0])
    G[:] = [5.0, 6.0, 7.0]
    np.testing.assert_allclose(g_method(X), [5, 6, 7])
    np.testing.assert_allclose(g_call(X), [10, 12, 14])
    np.testing.assert_allclose(g_partial(X), [5, 6, 7])


def test_nested_objects_lists_of_layers_and_slots_are_seen():
    class Layer:
        def __init__(self):
            self.W = np.ones(3)

    class Slotted:
        __slots__ = ("W",)

        def __init__(self):
            self.W = np.ones(3)

    class Net:
        def __init__(self):
            self.layers = [Layer(), Layer()]
            self.head = Slotted()

    net = Net()
    f = dp.differentiable(lambda n, x: sum(np.sum(l.W * x) for l in n.layers) + np.sum(n.head.W))
    assert f(net, X) == 15.0
    net.layers[1].W[:] = 2.0
    net.head.W = np.zeros(3)
    assert f(net, X) == 18.0


def test_class_attributes_staticmethods_and_default_arguments_are_seen():
    mod = _module("import numpy as np\nclass Cfg:\n    W = np.ones(3)\n"
                  "    @staticmethod\n    def scale(v):\n        return v * Cfg.W\n"
                  "D = np.ones(3)\ndef f(x, w=D):\n    return np.sum(Cfg.scale(x) * w)\n")
    f = dp.differentiable(mod.f)
    assert f(X) == 6.0
    mod.Cfg.W = np.full(3, 2.0)
    mod.D[:] = 3.0
    assert f(X) == 36.0


def test_unused_attributes_and_unread_globals_do_not_cause_retraces():
    traces = []

    def loss(m, x):
        traces.append(1)
        return np.sum(m.W * x)
    f = dp.differentiable(loss)
    m = _Model()
    for k in range(10):
        m.step = k  # never read by loss
        f(m, X)
    assert len(traces) == 1


def test_a_value_needed_plain_is_guarded_alone_and_the_others_stay_inputs():
    mod = _module("import numpy as np\nTRACES = []\nW = np.ones(3)\nB = np.zeros(3)\n"
                  "def loss(x):\n    TRACES.append(1)\n"
                  "    return np.sum((x * W + np.asarray(B)) ** 2)\n")
    g = dp.grad(mod.loss)
    for _ in range(10):
        mod.W = mod.W - 0.01  # rebinding: an input, no retrace
        np.testing.assert_allclose(g(X), 2 * (X * mod.W) * mod.W)
    assert len(mod.TRACES) <= 3  # the lifted attempt, the retry keeping B plain


def test_guards_compare_bits_nan_and_signed_zero():
    mod = _module("import numpy as np\nB = np.array([np.nan, 1.0])\nZ = 0.0\n"
                  "def f(x):\n    return x * np.asarray(B)[1] + np.copysign(1.0, Z)\n")
    f = dp.differentiable(mod.f)
    assert f(2.0) == 3.0 and f(2.0) == 3.0  # a NaN guard holds on NaN
    mod.Z = -0.0
    assert f(2.0) == 1.0


def test_a_stale_trace_is_not_reused_after_an_external_change():
    mod = _module("import numpy as np\nK = 2\ndef f(x):\n    return np.sum(x ** K)\n")
    f = dp.differentiable(mod.f)
    f(X)
    mod.K = 3
    np.testing.assert_allclose(dp.grad(mod.f)(X), 3 * X ** 2)


def test_large_index_arrays_changed_in_place_are_seen():
    mod = _module("import numpy as np\nIDX = np.zeros(70000, dtype=np.int64)\n"
                  "def f(x):\n    return np.sum(x[IDX])\n")
    f = dp.differentiable(mod.f)
    assert f(X) == 70000.0
    mod.IDX[:] = 2
    assert f(X) == 210000.0


def test_a_rebound_ufunc_builtin_or_library_function_retraces():
    # (a reviewer: an activation held in a global or attribute was frozen at its first value)
    mod = _module("import numpy as np\nimport scipy.special as ss\nact = np.tanh\nmag = abs\n"
                  "def f(x):\n    return np.sum(act(x)) + np.sum(mag(x))\n")
    f = dp.differentiable(mod.f)
    assert f(X) == mod.f(X)
    for act, mag in [(np.sin, abs), (np.sin, np.negative), (mod.ss.expit, np.negative)]:
        mod.act, mod.mag = act, mag
        assert f(X) == mod.f(X), (act, mag)

    class Layer:
        def __init__(self):
            self.act = np.tanh

        def __call__(self, x):
            return np.sum(self.act(x))

    layer = Layer()
    g = dp.differentiable(lambda x: layer(x))
    assert g(X) == layer(X)
    layer.act = np.sin
    assert g(X) == layer(X)


def test_static_and_global_sets_compare_members_by_type_and_bits():
    # {2}, {2.0} and {True} are equal Python sets, but 2 and 2.0 give different NumPy dtypes
    h = dp.differentiable(lambda x, s: x * max(s), static_argnums=(1,))
    x = np.array([100], np.int8)
    for s in (frozenset({2}), frozenset({2.0}), frozenset({True}), frozenset({2})):
        out = h(x, s)
        assert out.dtype == (x * max(s)).dtype and np.array_equal(out, x * max(s)), s
    mod = _module("import numpy as np\nS = frozenset({2})\nT = {1, 2}\n"
                  "def f(x):\n    return x * max(S) * len(T)\n")
    f = dp.differentiable(mod.f)
    assert np.array_equal(f(x), mod.f(x))
    mod.S = frozenset({2.0})
    assert f(x).dtype == np.float64 and np.array_equal(f(x), mod.f(x))
    mod.T.add(3)  # a set changed in place
    assert np.array_equal(f(x), mod.f(x))


def test_a_checkpointed_block_reads_its_globals_and_attributes_at_each_call():
    # (a reviewer: dp.checkpoint traced the block through a lambda of its own, so what the
    # block read was frozen at the first call)
    mod = _module("import numpy as np\nimport diffprog as dp\nB = 2.0\nW = np.ones(3)\n"
                  "blk = dp.checkpoint(lambda v: v * B * W)\n"
                  "def f(x):\n    return np.sum(blk(x))\n")
    f, g = dp.differentiable(mod.f), dp.grad(mod.f)
    assert f(X) == 12.0 and list(g(X)) == [2.0] * 3
    mod.B = 7.0
    mod.W[:] = 3.0
    assert f(X) == 126.0 and list(g(X)) == [21.0] * 3

    class Layer:
        def __init__(self):
            self.w = np.ones(3)

        def __call__(self, v):
            return np.tanh(v * self.w)

    layer = Layer()
    block = dp.checkpoint(layer)
    h = dp.grad(lambda x: np.sum(block(x)))
    h(X)
    layer.w = np.full(3, 2.0)
    np.testing.assert_allclose(h(X), 2.0 * (1.0 - np.tanh(2.0 * X) ** 2))
