"""The NumPy functions of issue 15, item 4, as a user calls them: the new entries
(arcsinh, sinc, fmod, heaviside, svd, qr, pinv, eigh, searchsorted, argpartition, ...) and
the composites built from entries in the front end (linspace, kron, gradient, interp,
cov, lstsq, matrix_power, the SVD norms, ...), and the functions run as NumPy's own Python
code on traced values (meshgrid, isclose, trapezoid, polyval, the NumPy 2 linalg names, ...:
numpy_api.NUMPY_OWN). For each: the value equals NumPy's (shape,
dtype, numbers), first and second derivatives equal finite differences of NumPy's own
function in both modes (diffprog.testing.check_grads), and dp.vmap equals stacking the
examples. The entries' own rules are also checked case by case by tests/primitives/."""
from __future__ import annotations

import numpy as np
import pytest

import diffprog as dp
from diffprog.testing import check_grads

from .helpers import assert_close

R = np.random.default_rng(15)
V5 = R.standard_normal(5)
V3 = R.standard_normal(3)
A34 = R.standard_normal((3, 4))
B34 = R.standard_normal((3, 4))
A43 = R.standard_normal((4, 3))
M3 = R.standard_normal((3, 3))
M4 = R.standard_normal((4, 4))
T234 = R.standard_normal((2, 3, 4))
S3 = M3 @ M3.T + 3 * np.eye(3)
# NaN enters by addition (x * nan would make the derivative NaN before nansum sees it)
WITH_NAN = np.array([[0.0, np.nan, 0.0], [np.nan, np.nan, np.nan], [0.0, 0.0, np.nan]])
STARTS = np.array([0.5, -1.0])
XP = np.array([-1.0, 0.0, 0.7, 1.5, 3.0])
FP = R.standard_normal(5)
XQ = np.array([-1.5, -0.3, 0.2, 0.9, 1.2, 2.9, 3.5])  # inside, outside, away from the knots
SORTED = np.sort(R.standard_normal(6))


def _put_along(y):
    np.put_along_axis(y, np.array([[0], [2], [1]]), 5.0, axis=1)  # (changes y itself)
    return y


#: the cases run as NumPy's own code (numpy_api.NUMPY_OWN): none may fall back to arrays of
#: Python objects (exact but one equation per element)
OWN_CASES = ("isclose", "allclose", "array_equal", "meshgrid", "meshgrid_sparse", "trapezoid",
             "polyval", "dstack_unstack", "cross", "cumulative_sum", "matrix_transpose", "fix",
             "linalg_products", "multi_dot", "vector_norm", "matrix_norm",
             "linalg_trace_diagonal", "tensorinv", "cond", "svdvals", "put_along_axis",
             "polyder_polyint")


def _mult(x, y):
    k = np.array([[1, -2, 0, 3], [-1, 2, 1, -3], [0, 1, -2, 2]])
    return (k + np.clip(x, 0.1, 0.9)) * y  # away from the jumps of fmod


CASES = {
    # ---- elementwise entries
    "arcsinh": (lambda x: np.arcsinh(x), [A34]),
    "arccosh": (lambda x: np.arccosh(1.5 + x * x), [A34]),
    "arctanh": (lambda x: np.arctanh(np.tanh(x) * 0.9), [A34]),
    "sinc": (lambda x: np.sinc(x), [A34]),
    "sinc_near_zero": (lambda x: np.sinc(x * 1e-4), [V5]),
    "logaddexp2": (lambda x, y: np.logaddexp2(x, y), [A34, B34]),
    "logaddexp2_large": (lambda x, y: np.logaddexp2(x * 1e3, y), [A34, B34]),
    "fmod": (lambda x, y: np.fmod(x, y), [_mult(np.abs(A34), np.array([0.7, 1.1, 1.9, 0.6])),
                                          np.array([0.7, 1.1, 1.9, 0.6])]),
    "heaviside": (lambda x, h: np.heaviside(x, h), [A34, B34[0]]),
    "deg2rad_rad2deg": (lambda x: np.deg2rad(x) + np.rad2deg(x) + np.radians(x) + np.degrees(x), [A34]),
    "nan_to_num": (lambda x: np.nan_to_num(x + np.array([0.0, np.nan, np.inf, -np.inf])), [A34]),
    "nan_to_num_values": (lambda x: np.nan_to_num(x + np.array([1.0, np.nan, np.inf, -np.inf]),
                                                  nan=-1.0, posinf=9.0, neginf=-9.0), [A34]),
    # ---- shapes
    "linspace": (lambda a, b: np.linspace(a, b, 7), [np.float64(0.3), np.float64(2.5)]),
    "linspace_vector_axis": (lambda a, b: np.linspace(a, b, 4, axis=1), [STARTS, STARTS * 3 + 1]),
    "linspace_no_endpoint": (lambda a, b: np.linspace(a, b, 5, endpoint=False), [np.float64(-1.0), np.float64(1.5)]),
    "linspace_one": (lambda a, b: np.linspace(a, b, 1), [np.float64(0.3), np.float64(2.5)]),
    "linspace_retstep": (lambda a, b: np.linspace(a, b, 6, retstep=True)[1] * 1.0, [np.float64(0.3), np.float64(2.5)]),
    "linspace_plain_start": (lambda b: np.linspace(0.0, b, 5), [np.float64(2.5)]),
    "rot90": (lambda m: np.rot90(m) + 2 * np.rot90(m, 3), [M3]),
    "rot90_k2_axes": (lambda t: np.rot90(t, 2, axes=(1, 2)) + np.rot90(t, -1, axes=(2, 0)).sum(), [T234]),
    "kron": (lambda a, b: np.kron(a, b), [A34[:2, :3], M3[:, :2]]),
    "kron_1d_2d": (lambda a, b: np.kron(a, b), [V3, M3]),
    "select": (lambda x, y: np.select([x > 0.5, x < -0.5], [x * y, y], default=-1.0), [A34, B34]),
    "partition": (lambda x: np.partition(x, 2, axis=1), [A34]),
    "partition_kths": (lambda x: np.partition(x, (0, -1)) * np.arange(5.0), [V5]),
    "argpartition_values": (lambda x: np.take_along_axis(x, np.argpartition(x, 1, axis=0), axis=0), [A34]),
    "rollaxis": (lambda t: np.rollaxis(t, 2) + 0 * np.rollaxis(t, 0, 3).sum(), [T234]),
    "atleast_3d": (lambda a, v: np.atleast_3d(a).sum(axis=2) + np.atleast_3d(v)[0, :3, 0], [M3, V5]),
    "hsplit_vsplit_dsplit": (lambda t: np.hsplit(t, 3)[1].sum() + np.vsplit(t, 2)[0] ** 2
                             + np.dsplit(t, [1])[1].sum(), [T234]),
    "diagonal_offsets": (lambda a: np.diagonal(a, 1) + np.diagonal(a, -1).sum() + np.diagonal(a, 2).sum(), [A34]),
    "trace_offset": (lambda a: np.trace(a, 1) + np.trace(a, offset=-2) + a.trace(1), [A34]),
    "trace_3d": (lambda t: np.trace(t, 1, axis1=1, axis2=2), [T234]),
    "diag_k": (lambda v, a: np.diag(v, 1) + np.diag(v, -2).sum() + np.diag(a, -1).sum(), [V3, A34]),
    "einsum_sublist": (lambda a, b: np.einsum(a, [0, 1], b, [1, 2], [0, 2]), [A34, A43]),
    "einsum_sublist_ellipsis": (lambda t: np.einsum(t, [Ellipsis, 1], [1, Ellipsis]), [T234]),
    "einsum_diagonal_trace": (lambda m, a: np.einsum("ii->i", m) + np.einsum("ii", m)
                              + np.einsum("ii,ij->j", m, a)[:3], [M3, A34]),
    "gradient": (lambda f: np.gradient(f), [V5]),
    "gradient_2d": (lambda f: np.gradient(f, 0.5, axis=1), [A34]),
    "gradient_both_axes": (lambda f: np.gradient(f)[0] + 2 * np.gradient(f)[1], [A34]),
    "gradient_edge_order_2": (lambda f: np.gradient(f, edge_order=2), [V5]),
    "gradient_coordinates": (lambda f: np.gradient(f, np.array([0.0, 0.5, 1.5, 1.7, 3.0]), edge_order=2), [V5]),
    "gradient_traced_coordinates": (lambda f, x: np.gradient(f, x), [V5, np.array([0.0, 0.5, 1.5, 1.7, 3.0])]),
    "interp_in_x": (lambda x: np.interp(x, XP, FP), [XQ]),
    "interp_in_all": (lambda x, xp, fp: np.interp(x, xp, fp, left=-2.0, right=fp[2]), [XQ, XP, FP]),
    "searchsorted_gather": (lambda v: V5[np.searchsorted(SORTED, v) % 5] * v, [A34]),
    # ---- reductions and statistics
    "nansum_nanmean": (lambda x: np.nansum((x + WITH_NAN), axis=1) + np.nanmean((x + WITH_NAN) + 1.0, axis=0), [M3]),
    "nanmax_nanmin": (lambda x: np.nanmax(x + WITH_NAN, axis=0) + np.nanmin(x + WITH_NAN[[0, 2, 0]], axis=1), [M3]),
    "nansum_all": (lambda x: np.nansum((x + WITH_NAN)) + np.nanmean((x + WITH_NAN)), [M3]),
    "ptp": (lambda x: np.ptp(x, axis=1) + np.ptp(x), [A34]),
    "average_weights": (lambda x, w: np.average(x, axis=1, weights=w), [A34, np.abs(V5[:4]) + 0.5]),
    "average_full_weights": (lambda x, w: np.average(x, weights=w), [A34, np.abs(B34) + 0.5]),
    "average_returned": (lambda x: np.average(x, axis=0, returned=True)[0], [A34]),
    "cov": (lambda x: np.cov(x), [A34]),
    "cov_rowvar_bias": (lambda x, y: np.cov(x, y, rowvar=False, bias=True), [A43, A43[:, :1] * 2]),
    "cov_weights": (lambda x: np.cov(x, fweights=np.array([1, 2, 1, 3]), aweights=np.array([0.5, 1.0, 2.0, 1.5])), [A34]),
    "cov_traced_aweights": (lambda x, w: np.cov(x, aweights=w, ddof=0), [A34, np.abs(V5[:4]) + 0.5]),
    "corrcoef": (lambda x: np.corrcoef(x), [A34]),
    "corrcoef_pair": (lambda x, y: np.corrcoef(x, y), [V5, V5 ** 2 + R.standard_normal(5)]),
    # ---- linear algebra
    "matrix_power": (lambda m: np.linalg.matrix_power(m, 0) + np.linalg.matrix_power(m, 1)
                     + np.linalg.matrix_power(m, 3) + np.linalg.matrix_power(m, 6), [M3 / 3]),
    "matrix_power_negative": (lambda m: np.linalg.matrix_power(m, -2), [S3]),
    "svd_reduced": (lambda a: np.linalg.svd(a, full_matrices=False), [A43]),
    "svd_reduced_wide": (lambda a: np.linalg.svd(a, full_matrices=False).Vh, [A34]),
    "svd_square_full": (lambda a: np.linalg.svd(a), [M4]),
    "svd_values": (lambda a: np.linalg.svd(a, compute_uv=False), [A34]),
    "svd_stack": (lambda t: np.linalg.svd(t, full_matrices=False)[0], [T234]),
    "svd_full_tall_used_part": (lambda a: np.linalg.svd(a)[0][:, :3] * np.linalg.svd(a)[1], [A43]),
    "eigh": (lambda a: np.linalg.eigh(a), [M3]),
    "eigh_upper": (lambda a: np.linalg.eigh(a, UPLO="U").eigenvectors, [M4]),
    "eigh_stack": (lambda t: np.linalg.eigh(t[:, :3, :3])[1], [T234]),
    "pinv": (lambda a: np.linalg.pinv(a), [A34]),
    "pinv_tall_rtol": (lambda a: np.linalg.pinv(a, rtol=None), [A43]),
    "pinv_hermitian": (lambda a: np.linalg.pinv(a, hermitian=True), [S3]),
    "qr": (lambda a: np.linalg.qr(a), [A43]),
    "qr_square_r": (lambda a: np.linalg.qr(a, mode="r"), [M3]),
    "qr_wide": (lambda a: np.linalg.qr(a), [A34]),
    "qr_complete_square": (lambda a: np.linalg.qr(a, mode="complete").Q, [M3]),
    "lstsq_tall": (lambda a, b: np.linalg.lstsq(a, b)[0] + np.linalg.lstsq(a, b)[1].sum(), [A43, V5[:4]]),
    "lstsq_wide": (lambda a, b: np.linalg.lstsq(a, b, rcond=None)[0], [A34, V3]),
    "lstsq_matrix_rhs": (lambda a, b: np.linalg.lstsq(a, b)[1], [A43, A43[:, :2]]),
    "lstsq_singular_values": (lambda a, b: np.linalg.lstsq(a, b)[3], [A43, V5[:4]]),
    "norm_2": (lambda a: np.linalg.norm(a, 2) + np.linalg.norm(a, -2), [A34]),
    "norm_nuc": (lambda a: np.linalg.norm(a, "nuc"), [A34]),
    "norm_2_axes_keepdims": (lambda t: np.linalg.norm(t, 2, axis=(2, 1), keepdims=True), [T234]),
    # ---- run as NumPy's own Python code on traced values (numpy_api.NUMPY_OWN, vander)
    "isclose": (lambda a, b: np.where(np.isclose(a, b, rtol=0.5), a, 2.0 * b), [A34, A34 * np.where(B34 > 0, 1.1, 3.0)]),
    "allclose": (lambda a: a * (1.0 if np.allclose(a, a + 1e-12) else 2.0), [A34]),
    "array_equal": (lambda a: a * (3.0 if np.array_equal(a, a) and np.array_equiv(a, a[None]) else 2.0), [A34]),
    "meshgrid": (lambda a, b: sum(np.meshgrid(a, b)) + np.meshgrid(a, b, indexing="ij")[1].T, [V5, V3]),
    "meshgrid_sparse": (lambda a, b: np.meshgrid(a, b, sparse=True)[1] * a, [V5, V3]),
    "trapezoid": (lambda a, b: np.trapezoid(a ** 2, dx=0.1) + np.trapezoid(a, np.cumsum(np.abs(b))), [V5, V5]),
    "polyval": (lambda p, x: np.polyval(p, x), [V3, V5]),
    "dstack_unstack": (lambda a, b: np.dstack([a, b]) * np.unstack(a)[1][:, None], [A34, B34]),
    "cross": (lambda a, b: np.cross(a, b) + np.linalg.cross(b, a), [V3, V3 * 2.0 + 1.0]),
    "cumulative_sum": (lambda a: np.cumulative_sum(a, axis=1, include_initial=True), [A34]),
    "matrix_transpose": (lambda a: np.matrix_transpose(a) + np.linalg.matrix_transpose(a), [T234]),
    "astype_function": (lambda a: np.astype(a, np.float32) * 2.0, [A34]),
    "fix": (lambda a: np.fix(a * 3.0) * a, [A34]),
    "vander": (lambda a: np.vander(a) + np.vander(a, 5, increasing=True), [V5]),
    "linalg_products": (lambda a, b: np.linalg.outer(a[0], b[0]) @ np.linalg.matmul(a.T, b)
                        + np.linalg.tensordot(a.T, b, axes=1), [A34, B34]),
    "multi_dot": (lambda a, b: np.linalg.multi_dot([a, b.T, a]), [A34, B34]),
    "vector_norm": (lambda a: np.linalg.vector_norm(a) + np.linalg.vector_norm(a, axis=1, ord=3), [A34]),
    "matrix_norm": (lambda a: np.linalg.matrix_norm(a) + np.linalg.matrix_norm(a, ord=1), [A34]),
    "linalg_trace_diagonal": (lambda a: np.linalg.trace(a)[:, None] + np.linalg.diagonal(a), [T234]),
    "tensorinv": (lambda a: np.linalg.tensorinv(a + 3.0 * np.eye(3), ind=1), [M3]),
    "cond": (lambda a: np.linalg.cond(a + 3.0 * np.eye(3)), [M3]),
    "svdvals": (lambda a: np.linalg.svdvals(a), [A34]),
    "quantile": (lambda a: np.quantile(a, [0.1, 0.5, 0.95], axis=1) + np.quantile(a, 0.3), [A34]),
    "percentile": (lambda a: np.percentile(a, 37.5) + np.percentile(a, [0, 60, 100], axis=0,
                                                                   keepdims=True), [A34]),
    "put_along_axis": (lambda a: _put_along(a * 1.0), [A34]),
    "polyder_polyint": (lambda p: np.polyder(p, 2) + np.polyint(p, k=1.0)[:3], [V5]),
}


def _outputs(value):
    return [np.asarray(v) for v in (value if isinstance(value, tuple) else (value,))]


def _value_check(fn, args):
    expected, got = _outputs(fn(*args)), _outputs(dp.differentiable(fn)(*args))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, e.shape, g.dtype, e.dtype)
        assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_equals_numpy(name):
    _value_check(*CASES[name])


@pytest.mark.parametrize("name", sorted(CASES))
def test_derivatives_to_second_order_in_both_modes(name):
    fn, args = CASES[name]
    check_grads(fn, tuple(args), order=2, modes=("rev", "fwd"))


#: cases whose code branches in Python on a traced value (``if np.allclose(...)``, NumPy's
#: own ``if nan_mask.any()`` in linalg.cond): guarded per call, which dp.vmap, tracing once
#: for every example, refuses with a ConcretizationError (tested in tests/test_api_vmap.py)
PYTHON_BRANCHES = {"allclose", "array_equal", "cond"}


@pytest.mark.parametrize("name", sorted(set(CASES) - PYTHON_BRANCHES))
def test_vmap_equals_stacking_examples(name):
    fn, args = CASES[name]
    rng = np.random.default_rng(1)
    first = [args[0], args[0] + 1e-3 * rng.standard_normal(np.shape(args[0]))]
    batched = dp.vmap(fn, in_axes=(0,) + (None,) * (len(args) - 1))(np.stack(first), *args[1:])
    for b, x in enumerate(first):
        for got, want in zip(_outputs(batched), _outputs(fn(x, *args[1:]))):
            assert_close(got[b], want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", OWN_CASES)
def test_numpys_own_code_stays_traced_arrays(name):
    import warnings
    fn, args = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error", dp.DiffprogWarning)  # ("became an array of Python objects")
        dp.differentiable(fn)(*args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quantiles_are_numpys_bits_types_and_nans(dtype):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((7, 9)).astype(dtype)
    with_nan = a.copy()
    with_nan[2, 3] = np.nan
    for fn, x in [(lambda a: np.quantile(a, 0.3), a), (lambda a: np.quantile(a, [0.1, 0.95]), a),
                  (lambda a: np.percentile(a, 37.5, axis=1), a),
                  (lambda a: np.quantile(a, np.float64(0.7), axis=1, keepdims=True), a),
                  (lambda a: np.percentile(a, 50, axis=1), with_nan), (lambda a: np.quantile(a, 1), a)]:
        got, want = dp.differentiable(fn)(x), fn(x)
        assert type(got) is type(want) and np.shape(got) == np.shape(want)
        assert np.array_equal(got, want, equal_nan=True) and np.result_type(got) == np.result_type(want)


def test_all_nan_slices_give_nan_as_numpy_does():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for fn in (lambda x: np.nanmax(x + WITH_NAN, axis=1), lambda x: np.nanmin(x + WITH_NAN, axis=1),
                   lambda x: np.nanmean(x + WITH_NAN, axis=1)):
            assert_close(dp.differentiable(fn)(M3), fn(M3))


def test_heaviside_gradient_in_the_value_at_zero():
    x = np.array([0.0, 1.0, -2.0, 0.0])
    g = dp.grad(lambda h: np.sum(np.heaviside(x, h) * np.arange(1.0, 5.0)))(np.full(4, 0.5))
    assert_close(g, [1.0, 0.0, 0.0, 4.0])
    assert np.isnan(dp.differentiable(np.heaviside)(np.array([np.nan]), 0.5)[0])


def test_sinc_at_zero_to_second_order():
    d1 = dp.grad(lambda x: np.sinc(x))(0.0)
    d2 = dp.grad(dp.grad(lambda x: np.sinc(x)))(0.0)
    assert d1 == 0.0 and d2 == pytest.approx(-np.pi ** 2 / 3, rel=1e-12)


def test_full_svd_of_a_non_square_matrix_has_no_derivative_in_its_completion():
    """The completing columns of U are LAPACK's arbitrary choice: a result that uses them
    gets NaN, never a silently wrong number; the part that is defined stays exact."""
    g = dp.grad(lambda a: np.sum(np.linalg.svd(a)[0][:, 3:]))(A43)
    assert np.all(np.isnan(g))
    _, t = dp.jvp(lambda a: np.linalg.svd(a)[0], (A43,), (np.ones_like(A43),))
    assert np.all(np.isnan(t[:, 3:])) and np.all(np.isfinite(t[:, :3]))
    g = dp.grad(lambda a: np.sum(np.linalg.qr(a, mode="complete").Q[:, 3:] ** 2))(A43)
    assert np.all(np.isnan(g))


def test_partition_and_searchsorted_refuse_julia_or_spell_it():
    from diffprog.primitives import PRIMITIVES, Unsupported
    assert isinstance(PRIMITIVES["argpartition"].julia, Unsupported)
    assert not isinstance(PRIMITIVES["searchsorted"].julia, Unsupported)


def test_lstsq_rank_is_a_python_int_and_rank_deficient_residuals_are_empty():
    a = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])  # rank 1
    x, res, rank, s = dp.differentiable(lambda a, b: np.linalg.lstsq(a, b))(a, np.ones(3))
    ex, eres, erank, es = np.linalg.lstsq(a, np.ones(3))
    assert rank == erank == 1 and res.shape == eres.shape == (0,)
    assert_close(x, ex, rtol=1e-10) and assert_close(s, es, rtol=1e-12)


def test_errors_name_what_numpy_names():
    with pytest.raises(ValueError, match="Axes must be different"):
        dp.differentiable(lambda m: np.rot90(m, axes=(0, 0)))(M3)
    with pytest.raises(TypeError, match="should be boolean"):
        dp.differentiable(lambda x: np.select([x], [x]))(V3)
    with pytest.raises(dp.UnsupportedFunctionError, match="period"):
        dp.differentiable(lambda x: np.interp(x, XP, FP, period=1.0))(V3)


def test_complex_helpers_on_real_arrays_follow_numpy():
    import diffprog as dp
    x = np.array([-1.0, -0.0, 0.0, 2.0, np.nan])
    for f in (np.imag, np.angle, lambda v: np.angle(v, deg=True), np.real_if_close, np.real):
        np.testing.assert_array_equal(dp.differentiable(f)(x), f(x))
    g = dp.grad(lambda v: np.sum(np.angle(v) + np.imag(v) + np.real_if_close(v) * 2))(x[:4])
    np.testing.assert_array_equal(g, [2.0, 2.0, 2.0, 2.0])
    z = np.array([1j, -1.0 - 0.0j, 2.0 + 3.0j])  # complex values: tests/test_complex.py
    np.testing.assert_array_equal(dp.differentiable(np.angle)(z), np.angle(z))
    with pytest.raises(dp.UnsupportedFunctionError, match="real_if_close"):
        dp.differentiable(np.real_if_close)(z)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_norms_of_any_order_are_numpys_bits_and_type(dtype):
    # (a reviewer: ord=3 differed from NumPy by 1 ulp, and came back a 0-d array: NumPy's
    # final power is scalar math on a NumPy scalar)
    rng = np.random.default_rng(3)
    for order in (3, 4, 1.5, -3, 0.5):
        for _ in range(10):
            a = rng.standard_normal(12).astype(dtype)
            got = dp.differentiable(lambda x: np.linalg.norm(x, order))(a)
            want = np.linalg.norm(a, order)
            assert type(got) is type(want) and got == want, (order, got, want)


def test_quantile_axes_and_two_dimensional_q_as_numpy():
    a = np.array([3.0, 1.0, 2.0])
    got = dp.differentiable(lambda a: np.quantile(a, [[0.2, 0.9]]))(a)
    assert got.shape == (1, 2) and np.array_equal(got, np.quantile(a, [[0.2, 0.9]]))
    assert dp.differentiable(lambda a: np.quantile(a, 0.3, axis=(0,)))(a) == np.quantile(a, 0.3)
    with pytest.raises(dp.errors.ShapeError, match="out of bounds"):
        dp.differentiable(lambda a: np.quantile(a, 0.3, axis=1))(a)


@pytest.mark.parametrize("order", [np.int64(3), np.float32(3), -np.float64(1.5), -1, -3])
def test_norm_orders_given_as_numpy_scalars_keep_numpys_dtype(order):
    import warnings
    rng = np.random.default_rng(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (NumPy: 0 ** -1)
        for v in (rng.standard_normal(9).astype(np.float32), np.array([0.0, 1.5, -2.0])):
            got, want = dp.differentiable(lambda x: np.linalg.norm(x, order))(v), np.linalg.norm(v, order)
            assert type(got) is type(want) and got == want
    if order < 0:  # the norm is 0 around a zero element: its derivative 0, not NaN
        np.testing.assert_array_equal(
            dp.grad(lambda x: np.linalg.norm(x, order))(np.array([0.0, 1.5, -2.0])), 0.0)
    assert type(dp.differentiable(lambda m: np.linalg.norm(m, 1))(np.eye(2))) is np.float64
