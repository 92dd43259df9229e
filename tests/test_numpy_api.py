"""The NumPy a scientist writes: every supported function traced, compared with NumPy
itself (values) and with finite differences (gradients)."""
from __future__ import annotations

import numpy as np
import pytest

import diffprog as dp

from .helpers import assert_close, numeric_grad

R = np.random.default_rng(3)
A34 = R.standard_normal((3, 4))
B34 = R.standard_normal((3, 4))
V4 = R.standard_normal(4)
M3 = R.standard_normal((3, 3)) + 3 * np.eye(3)
P34 = R.uniform(0.5, 2.0, (3, 4))
T234 = R.standard_normal((2, 3, 4))

CASES = {
    "mean": (lambda x: np.mean(x), [A34]),
    "mean_axis_keepdims": (lambda x: np.mean(x, axis=0, keepdims=True), [A34]),
    "method_mean": (lambda x: x.mean(axis=1), [A34]),
    "var": (lambda x: np.var(x, axis=1), [A34]),
    "var_ddof": (lambda x: x.var(ddof=1), [A34]),
    "std": (lambda x: np.std(x, axis=0), [A34]),
    "sum_negative_axis": (lambda x: np.sum(x, axis=-1), [T234]),
    "prod": (lambda x: np.prod(x, axis=0), [P34]),
    "max_axis": (lambda x: np.max(x, axis=1), [A34]),
    "amin_method": (lambda x: x.min(), [A34]),
    "cumsum_flat": (lambda x: np.cumsum(x), [A34]),
    "cumprod": (lambda x: np.cumprod(x, axis=1), [P34]),
    "diff": (lambda x: np.diff(x, axis=1), [A34]),
    "diff_n2": (lambda x: np.diff(x, n=2), [A34]),
    "square_reciprocal": (lambda x: np.square(x) + np.reciprocal(x), [P34]),
    "log2_log10_exp2": (lambda x: np.log2(x) + np.log10(x) + np.exp2(x), [P34]),
    "power_float": (lambda x: x ** 2.5 + x ** -1 + x ** 0.5, [P34]),
    "rpow": (lambda x: 2.0 ** x, [A34]),
    "clip": (lambda x: np.clip(x, -0.5, 0.5), [A34]),
    "clip_method": (lambda x: x.clip(min=0.0), [A34]),
    "where": (lambda x, y: np.where(x > 0, x, y * 2), [A34, B34]),
    "hypot_logaddexp": (lambda x, y: np.hypot(x, y) + np.logaddexp(x, y), [A34, B34]),
    "arctan2": (lambda x, y: np.arctan2(x, y + 3.0), [A34, B34]),
    "maximum_minimum": (lambda x, y: np.maximum(x, y) - np.minimum(x, 0.1), [A34, B34]),
    "matmul_operator": (lambda a, b: a @ b.T, [A34, B34]),
    "dot_matrix_vector": (lambda a, v: np.dot(a, v), [A34, V4]),
    "dot_method": (lambda a, v: a.dot(v), [A34, V4]),
    "dot_nd": (lambda a, b: np.dot(a, b), [T234, R.standard_normal((5, 4, 2))]),
    "vdot_inner": (lambda a, b: np.vdot(a, b) + np.sum(np.inner(a, b)), [A34, B34]),
    "outer": (lambda a, b: np.outer(a, b), [V4, R.standard_normal(3)]),
    "tensordot": (lambda a, b: np.tensordot(a, b, axes=([1, 2], [0, 1])), [T234, R.standard_normal((3, 4, 2))]),
    "tensordot_int": (lambda a, b: np.tensordot(a, b, axes=1), [A34, R.standard_normal((4, 2))]),
    "einsum_matmul": (lambda a, b: np.einsum("ij,kj->ik", a, b), [A34, B34]),
    "einsum_implicit": (lambda a, b: np.einsum("ij,jk", a, b), [A34, R.standard_normal((4, 2))]),
    "einsum_ellipsis": (lambda a, b: np.einsum("...ij,...jk->...ik", a, b), [T234, R.standard_normal((2, 4, 3))]),
    "einsum_sum": (lambda a: np.einsum("ijk->j", a), [T234]),
    "trace": (lambda m: np.trace(m), [M3]),
    "trace_method": (lambda m: m.trace(), [M3]),
    "diag": (lambda v: np.diag(v) @ np.ones(4), [V4]),
    "diagonal": (lambda m: np.diagonal(m), [M3]),
    "triu_tril": (lambda m: np.triu(m) * 2 + np.tril(m, -1), [M3]),
    "solve_vector": (lambda a, b: np.linalg.solve(a, b), [M3, R.standard_normal(3)]),
    "solve_matrix": (lambda a, b: np.linalg.solve(a, b), [M3, R.standard_normal((3, 2))]),
    "inv": (lambda a: np.linalg.inv(a), [M3]),
    "det": (lambda a: np.linalg.det(a), [M3]),
    "slogdet": (lambda a: np.linalg.slogdet(a)[1], [M3]),
    "cholesky": (lambda a: np.linalg.cholesky(a @ a.T + 3 * np.eye(3)), [M3]),
    "norm_vector": (lambda v: np.linalg.norm(v), [V4]),
    "norm_fro": (lambda a: np.linalg.norm(a), [A34]),
    "norm_ord1_axis": (lambda a: np.linalg.norm(a, ord=1, axis=1), [A34]),
    "norm_inf_vector": (lambda v: np.linalg.norm(v, ord=np.inf), [V4]),
    "norm_p3": (lambda v: np.linalg.norm(v, ord=3), [V4]),
    "norm_matrix_1": (lambda a: np.linalg.norm(a, ord=1), [A34]),
    "norm_matrix_inf": (lambda a: np.linalg.norm(a, ord=np.inf), [A34]),
    "reshape": (lambda x: np.reshape(x, (4, 3)) * 2, [A34]),
    "reshape_method_varargs": (lambda x: x.reshape(2, -1), [A34]),
    "transpose": (lambda x: np.transpose(x, (2, 0, 1)), [T234]),
    "T_property": (lambda x: x.T @ x, [A34]),
    "swapaxes": (lambda x: np.swapaxes(x, 0, 2), [T234]),
    "moveaxis": (lambda x: np.moveaxis(x, 0, -1), [T234]),
    "expand_squeeze": (lambda x: np.squeeze(np.expand_dims(x, (0, 2)), axis=0), [A34]),
    "broadcast_to": (lambda v: np.broadcast_to(v, (3, 4)) * A34, [V4]),
    "concatenate": (lambda a, b: np.concatenate([a, b], axis=1), [A34, B34]),
    "concatenate_none": (lambda a, b: np.concatenate([a, b], axis=None), [A34, B34]),
    "stack": (lambda a, b: np.stack([a, b], axis=1), [A34, B34]),
    "hstack_vstack": (lambda a, b: np.hstack([a, b]).sum() + np.vstack([a, b]), [A34, B34]),
    "column_stack": (lambda v, w: np.column_stack([v, w]), [V4, R.standard_normal(4)]),
    "split": (lambda x: np.split(x, 2, axis=1)[1] * 3, [A34]),
    "split_indices": (lambda x: np.split(x, [1, 3], axis=1)[1], [A34]),
    "array_split": (lambda x: np.array_split(x, 3, axis=1)[0], [A34]),
    "flip": (lambda x: np.flip(x, axis=1), [A34]),
    "flip_all": (lambda x: np.flip(x), [A34]),
    "fliplr_flipud": (lambda x: np.fliplr(x) + np.flipud(x), [A34]),
    "roll": (lambda x: np.roll(x, 1, axis=1), [A34]),
    "roll_flat": (lambda x: np.roll(x, -5), [A34]),
    "roll_multi": (lambda x: np.roll(x, (1, 2), axis=(0, 1)), [A34]),
    "tile": (lambda x: np.tile(x, (2, 1)), [A34]),
    "tile_1d": (lambda v: np.tile(v, 3), [V4]),
    "repeat": (lambda x: np.repeat(x, 2, axis=0), [A34]),
    "repeat_flat": (lambda x: np.repeat(x, 3), [V4]),
    "repeat_array": (lambda x: np.repeat(x, [1, 0, 2, 3], axis=1), [A34]),
    "pad": (lambda x: np.pad(x, ((1, 0), (2, 1))), [A34]),
    "pad_value": (lambda x: np.pad(x, 1, constant_values=2.0), [A34]),
    "ravel_flatten": (lambda x: np.ravel(x) + x.flatten(), [A34]),
    "index_int_slice": (lambda x: x[1, 1:3], [A34]),
    "index_negative_step": (lambda x: x[::-1, ::2], [A34]),
    "index_newaxis_ellipsis": (lambda x: x[..., None, 1], [T234]),
    "index_int_array": (lambda x: x[np.array([0, 2, 2])], [A34]),
    "index_list": (lambda x: x[:, [3, 0]], [A34]),
    "index_two_arrays": (lambda x: x[np.array([0, 1]), np.array([3, 3])], [A34]),
    "index_bool_mask": (lambda x: x[np.array([True, False, True])], [A34]),
    "index_bool_mask_2d": (lambda x: x[A34 > 0], [A34]),
    "take": (lambda x: np.take(x, [0, 3, 3], axis=1), [A34]),
    "take_flat": (lambda x: np.take(x, [0, 11]), [A34]),
    "zeros_ones_like": (lambda x: np.zeros_like(x) + np.ones_like(x) * x + np.full_like(x, 2.0), [A34]),
    "abs_sign": (lambda x: np.abs(x) * 2 + np.sign(x), [A34]),
    "round_floor": (lambda x: x * np.round(x) + np.floor(x) + np.ceil(x), [A34]),
    "sort": (lambda x: np.sort(x, axis=1) * np.arange(4.0), [A34]),
    "sort_flat": (lambda x: np.sort(x, axis=None), [A34]),
    "take_along_axis": (lambda x: np.take_along_axis(x, np.argsort(x, axis=0), axis=0), [A34]),
    "median": (lambda x: np.median(x, axis=1) + np.median(x), [A34]),
    "cross": (lambda a, b: np.cross(a, b), [R.standard_normal((2, 3)), R.standard_normal((2, 3))]),
    "len_iter": (lambda x: sum(row * i for i, row in enumerate(x)) + len(x), [A34]),
    "tanh_sigmoid_softplus": (lambda x: np.tanh(x) + 1 / (1 + np.exp(-x)) + np.log1p(np.exp(x)), [A34]),
    # kinks where NumPy's function has a central difference: the gradient must be it
    # (ties split 1/2 each; 0 at the apex of a norm), not a one-sided choice or NaN
    "maximum_minimum_ties": (lambda x, y: np.maximum(x, y) + np.minimum(x, y) * 3,
                             [np.array([1.0, 2.0, -1.0]), np.array([1.0, 3.0, -1.0])]),
    "clip_at_bounds": (lambda x: np.clip(x, -0.5, 0.5), [np.array([-0.5, 0.5, 0.2, -2.0])]),
    "norm_zero_rows": (lambda a: np.linalg.norm(a, axis=1), [np.array([[0.0, 0.0], [3.0, 4.0]])]),
    "norm_zero": (lambda v: np.linalg.norm(v) + np.linalg.norm(v, 2), [np.zeros(3)]),
    "norm_p_zero_rows": (lambda a: np.linalg.norm(a, 3, axis=1) + np.linalg.norm(a, 1.5, axis=1),
                         [np.array([[0.0, 0.0], [1.0, -2.0]])]),
    "norm_fro_zero": (lambda a: np.linalg.norm(a, "fro") + np.linalg.norm(a), [np.zeros((2, 2))]),
    "pairwise_distances": (lambda x: np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1),
                           [R.standard_normal((3, 2))]),
    "std_constant_rows": (lambda x: np.std(x, axis=1), [np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 3.0]])]),
    "hypot_at_zero": (lambda x, y: np.hypot(x, y), [np.array([0.0, 3.0]), np.array([0.0, 4.0])]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_matches_numpy(name):
    fn, args = CASES[name]
    expected = fn(*args)
    got = dp.differentiable(fn)(*args)
    assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert np.shape(got) == np.shape(expected)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_finite_differences(name):
    fn, args = CASES[name]
    weights = np.random.default_rng(0).standard_normal(np.shape(fn(*args)))

    def scalar(*xs):
        return np.sum(fn(*xs) * weights)

    grads = dp.grad(scalar, argnums=tuple(range(len(args))))(*args)
    for i in range(len(args)):
        assert_close(grads[i], numeric_grad(scalar, args, i), what=f"{name} arg {i}")


def test_astype_round_trip_passes_the_gradient_through_in_the_input_dtype():
    w = np.arange(12.0).reshape(3, 4)
    g = dp.grad(lambda x: np.sum(x.astype(np.float32) * w))(A34)
    assert g.dtype == np.float64
    assert_close(g, w)


def test_np_array_of_tracers_is_a_traced_array():  # more in tests/test_array_building.py
    def f(x):
        return np.sum(np.array([x[0], 3.0 * x[1]]))
    assert_close(dp.grad(f)(np.ones(2)), [1.0, 3.0])


def test_item_assignment_is_a_clear_error():
    def f(x):
        x[0] = 1.0
        return np.sum(x)
    with pytest.raises(dp.DiffprogError, match="item assignment"):
        dp.grad(f)(np.ones(2))


def test_traced_boolean_mask_is_a_clear_error():
    with pytest.raises(dp.DiffprogError, match="np.where"):
        dp.grad(lambda x: np.sum(x[x > 0]))(np.ones(3))


def test_out_argument_is_rejected():
    with pytest.raises(dp.DiffprogError, match="out="):
        dp.grad(lambda x: np.sum(np.exp(x, out=np.empty(3))))(np.ones(3))


def test_indexing_works_in_a_fresh_interpreter_before_any_ufunc():
    """Tracer.__getitem__ is installed by importing diffprog, not by the first ufunc call."""
    import subprocess
    import sys
    code = ("import numpy as np, diffprog as dp; "
            "print(dp.grad(lambda p: p[0] * p[1])(np.array([2.0, 3.0])).tolist())")
    root = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[3.0, 2.0]"


@pytest.mark.parametrize("call", [
    lambda x, b: np.dot(x, x, out=b),
    lambda x, b: np.cumsum(x, out=b),
    lambda x, b: np.clip(x, 0, 1, b),
    lambda x, b: x.cumsum(0, None, b),
])
def test_out_arguments_are_refused_not_ignored(call):
    def f(x):
        b = np.zeros(3)
        call(x, b)
        return np.sum(x)
    with pytest.raises(dp.ArgumentError, match=r"out=\.\.\.\) writes into an array"):
        dp.grad(f)(np.array([1.0, 2.0, 3.0]))


def test_ufunc_accumulate_and_reduce_follow_numpy_axes():
    x = np.arange(1.0, 7.0).reshape(2, 3)
    for fn in (lambda x: np.add.accumulate(x), lambda x: np.multiply.accumulate(x, axis=1),
               lambda x: np.add.reduce(x), lambda x: np.add.reduce(x, axis=1),
               lambda x: np.multiply.accumulate(x, 1)):
        np.testing.assert_allclose(dp.differentiable(fn)(x), fn(x))
    grad = dp.grad(lambda x: np.sum(np.add.accumulate(x) * x))(x)
    expected = numeric_grad(lambda x: np.sum(np.add.accumulate(x) * x), [x], 0)
    assert_close(grad, expected, rtol=1e-6, atol=1e-8)


def test_operators_on_integers_are_bitwise_as_in_numpy():
    n, b = np.array([5, 6, -3]), np.array([True, False, True])
    fn = lambda n, b: (~n, n & 1, n | 4, n ^ 1, ~b, b & (n > 0), b | (n > 5), b ^ True)
    for ours, theirs in zip(dp.differentiable(fn)(n, b), fn(n, b)):
        np.testing.assert_array_equal(ours, theirs)
        assert ours.dtype == theirs.dtype


def test_nan_aware_and_wide_ufuncs_match_numpy():
    x, y = np.array([1.0, np.nan, 3.0]), np.array([np.nan, 2.0, 1.0])
    for fn in (np.fmax, np.fmin):
        np.testing.assert_array_equal(dp.differentiable(fn)(x, y), fn(x, y))
    np.testing.assert_array_equal(dp.grad(lambda x: np.sum(np.fmax(x, 2.0)))(np.array([1.0, 3.0])),
                                  [0.0, 1.0])
    x32 = np.full(2, 2.0, np.float32)
    assert dp.differentiable(lambda x: np.float_power(x, 2.0))(x32).dtype == np.float64
    g = dp.grad(lambda x: np.sum(np.float_power(x, 3)))(x32)
    assert g.dtype == np.float32 and np.allclose(g, 12.0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_degenerate_statistics_match_numpy():
    for fn, x in ((np.mean, np.ones(0)), (lambda v: np.var(v, ddof=2), np.array([1.0, 2.0])),
                  (lambda v: np.std(v, ddof=3), np.array([1.0, 1.0]))):
        np.testing.assert_array_equal(dp.differentiable(fn)(x), fn(x))


def test_exp2_log2_log10_cbrt_are_numpys_own_functions():
    """They were composites (exp(x log 2), log(x) / log 10, sign * |x| ** (1/3)), off by a
    few ulps where NumPy is exact: log10(1000) was 2.9999999999999996 (its floor 2)."""
    cases = {np.exp2: np.arange(-8.0, 9.0), np.log2: 2.0 ** np.arange(-60.0, 61.0),
             np.log10: 10.0 ** np.arange(-20.0, 21.0), np.cbrt: np.arange(-10.0, 11.0) ** 3}
    rng = np.random.default_rng(0)
    for fn, exact in cases.items():
        for x in (exact, rng.uniform(0.1, 50.0, 1000), exact.astype(np.float32)):
            got = dp.differentiable(fn)(x)
            assert got.dtype == fn(x).dtype
            np.testing.assert_array_equal(got, fn(x), err_msg=fn.__name__)
    assert np.floor(dp.differentiable(np.log10)(1000.0)) == 3.0


def test_integer_reciprocal_truncates_as_numpy():
    x = np.array([-3, -2, -1, 1, 2, 7])
    for dtype in (np.int64, np.int8, np.uint8):
        np.testing.assert_array_equal(dp.differentiable(np.reciprocal)(x.astype(dtype)),
                                      np.reciprocal(x.astype(dtype)))


def test_mean_and_var_divide_by_the_count_as_numpy():
    """sum * (1 / n) is not sum / n: the mean of ten 0.7s came out 0.7000000000000001."""
    rng = np.random.default_rng(1)
    for x in (np.full(10, 0.7), np.full(6, 9.9), rng.standard_normal((50, 7)),
              rng.standard_normal((4, 6)).astype(np.float32)):
        for fn in (np.mean, lambda v: np.mean(v, axis=0), np.var,
                   lambda v: np.var(v, axis=-1, ddof=1), lambda v: np.std(v, axis=0)):
            np.testing.assert_array_equal(dp.differentiable(fn)(x), fn(x))


def test_a_numpy_function_reaches_one_place_a_front_end_handler_or_an_entry():
    """NumPy functions bound by entries of the table (Primitive(numpy=...)) and those the
    front end normalises or composes are disjoint: the dispatch reads one or the other."""
    from diffprog import numpy_api
    from diffprog.primitives import NUMPY_BINDINGS
    both = set(numpy_api.HANDLERS) & set(NUMPY_BINDINGS)
    both |= set(numpy_api._UFUNC_COMPOSITES) & set(NUMPY_BINDINGS)
    assert not both, sorted(getattr(f, "__name__", str(f)) for f in both)
    x = np.array([[2.0, 0.5], [0.5, 1.0]])
    for fn in (np.linalg.inv, np.linalg.det, np.linalg.cholesky):
        assert NUMPY_BINDINGS[fn].prim.name in ("inv", "det", "cholesky")
        assert_close(dp.differentiable(fn)(x), fn(x))
    assert_close(dp.grad(lambda a: np.linalg.slogdet(a)[1])(x), np.linalg.inv(x).T)
    assert_close(dp.differentiable(lambda a: np.linalg.cholesky(a, upper=True))(x),
                 np.linalg.cholesky(x, upper=True))


def _same(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("name", ["norm", "norm 2-d", "fro", "keepdims", "complex norm",
                                  "vdot", "vdot reversed", "vdot 2-d", "einsum matmul",
                                  "einsum rows", "einsum all"])
def test_reductions_sum_in_numpys_own_order(name):
    """np.linalg.norm (axis=None) and np.vdot are BLAS dots in NumPy, and np.einsum's
    default is optimize=False: other summation orders than sum(x * x), other bits."""
    rng = np.random.default_rng(4)
    x, X = rng.standard_normal(40000), rng.standard_normal((200, 300))
    z = x + 1j * rng.standard_normal(40000)
    f, args = {
        "norm": (lambda x: np.linalg.norm(x), (x,)),
        "norm 2-d": (lambda x: np.linalg.norm(x), (X,)),
        "fro": (lambda x: np.linalg.norm(x, "fro"), (X,)),
        "keepdims": (lambda x: np.linalg.norm(x, keepdims=True), (X,)),
        "complex norm": (lambda x: np.linalg.norm(x), (z,)),
        "vdot": (lambda a, b: np.vdot(a, b), (x, x * 0.5)),
        "vdot reversed": (lambda a: np.vdot(a, a[::-1]), (x,)),
        "vdot 2-d": (lambda a: np.vdot(a, a * 2.0), (X[::-1],)),
        "einsum matmul": (lambda a: np.einsum("ij,jk->ik", a, a.T), (X,)),
        "einsum rows": (lambda a: np.einsum("ij,ij->i", a, a), (X,)),
        "einsum all": (lambda a: np.einsum("ij,ij->", a, a), (X,)),
    }[name]
    _same(dp.differentiable(f)(*args), f(*args))
