"""Linear-algebra rules against finite differences of NumPy's own functions.

``check_grads`` perturbs every input element independently, so a rule that assumes
structure NumPy does not (a symmetric input to cholesky, an invertible input to det)
fails here even where the table's own cases, made on the assumed structure, pass.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import diffprog as dp
from diffprog.testing import check_grads


def _spd(rng, *shape):
    x = rng.standard_normal(shape)
    n = shape[-1]
    return x @ np.swapaxes(x, -1, -2) + n * np.eye(n)


def _nonsymmetric_spd(rng, *shape):
    """SPD lower triangle, unrelated noise above the diagonal (NumPy never reads it)."""
    a = _spd(rng, *shape)
    return a + np.triu(rng.standard_normal(shape), 1)


def _projected(fn, out_shape, seed=3):
    w = np.random.default_rng(seed).standard_normal(out_shape)
    return lambda *xs: np.sum(fn(*xs) * w)


# ------------------------------------------------------------------ cholesky

@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4)])
def test_cholesky_gradient_is_numpys_lower_triangle_only(shape):
    a = _nonsymmetric_spd(np.random.default_rng(0), *shape)
    check_grads(_projected(np.linalg.cholesky, shape), (a,), order=2)


@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4)])
def test_cholesky_upper_reads_the_upper_triangle_as_numpy_does(shape):
    a = np.swapaxes(_nonsymmetric_spd(np.random.default_rng(1), *shape), -1, -2)
    f = dp.differentiable(lambda a: np.linalg.cholesky(a, upper=True))
    np.testing.assert_allclose(f(a), np.linalg.cholesky(a, upper=True), rtol=1e-12, atol=1e-12)
    check_grads(_projected(lambda a: np.linalg.cholesky(a, upper=True), shape), (a,), order=2)


def test_cholesky_gradient_ignores_the_strict_upper_triangle():
    rng = np.random.default_rng(2)
    a = _nonsymmetric_spd(rng, 4, 4)
    g = dp.grad(_projected(np.linalg.cholesky, (4, 4)))(a)
    assert np.all(np.triu(g, 1) == 0)
    upper_tangent = np.triu(rng.standard_normal((4, 4)), 1)
    _, t = dp.jvp(np.linalg.cholesky, (a,), (upper_tangent,))
    assert np.all(t == 0)


def test_cholesky_gradient_agrees_with_the_symmetric_rule_on_symmetric_perturbations():
    rng = np.random.default_rng(4)
    a = _spd(rng, 4, 4)
    s = rng.standard_normal((4, 4))
    s = s + s.T
    f = _projected(np.linalg.cholesky, (4, 4))
    along = dp.grad(lambda t: f(a + t * s))(0.0)
    np.testing.assert_allclose(along, np.sum(dp.grad(f)(a) * s), rtol=1e-12)


# ------------------------------------------------------------------ eigvalsh

@pytest.mark.parametrize("shape", [(3, 3), (4, 4), (2, 3, 3)])
def test_eigvalsh_gradient_is_numpys_lower_triangle_only(shape):
    """check_grads perturbs every element: the upper triangle (never read) gets 0, each
    entry below the diagonal counts twice; second order through the eigenvectors."""
    a = np.random.default_rng(5).standard_normal(shape)
    check_grads(_projected(np.linalg.eigvalsh, shape[:-1]), (a,), order=2)


@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4)])
def test_eigvalsh_upper_reads_the_upper_triangle_as_numpy_does(shape):
    a = np.random.default_rng(6).standard_normal(shape)
    check_grads(_projected(lambda x: np.linalg.eigvalsh(x, UPLO="U"), shape[:-1]), (a,), order=2)
    g = dp.grad(lambda x: np.sum(np.linalg.eigvalsh(x, UPLO="U") ** 2))(a)
    assert np.all(np.tril(g, -1) == 0)


def test_eigvalsh_gradient_agrees_with_the_symmetric_rule_on_symmetric_matrices():
    """On a symmetric matrix with distinct eigenvalues: d w_i / d A = v_i v_i^T, read
    through the lower triangle (entries below the diagonal twice)."""
    x = np.random.default_rng(7).standard_normal((4, 4))
    a = x + x.T
    w, v = np.linalg.eigh(a)
    weights = np.array([1.0, -2.0, 0.5, 3.0])
    symmetric = (v * weights) @ v.T
    expected = np.tril(2 * symmetric, -1) + np.diag(np.diag(symmetric))
    got = dp.grad(lambda m: np.sum(np.linalg.eigvalsh(m) * weights))(a)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert_values = dp.differentiable(np.linalg.eigvalsh)(a)
    np.testing.assert_array_equal(assert_values, np.linalg.eigvalsh(a))


def test_eigvalsh_float32_and_bad_uplo():
    a = np.random.default_rng(8).standard_normal((3, 3)).astype(np.float32)
    g = dp.grad(lambda m: np.sum(np.linalg.eigvalsh(m)))(a)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, np.eye(3), atol=1e-5)  # the trace: the diagonal only
    with pytest.raises(dp.ArgumentValueError, match="UPLO"):
        dp.grad(lambda m: np.sum(np.linalg.eigvalsh(m, UPLO="X")))(a)


# ------------------------------------------------------------------ det

def _rank(rng, n, r, *batch):
    return rng.standard_normal(batch + (n, r)) @ rng.standard_normal(batch + (r, n))


@pytest.mark.parametrize("n,r", [(3, 3), (3, 2), (4, 3), (4, 2), (1, 0), (2, 1)])
def test_det_gradient_at_regular_and_rank_deficient_matrices(n, r):
    a = _rank(np.random.default_rng(5 + n + r), n, r) if r else np.zeros((n, n))
    check_grads(np.linalg.det, (a,), order=2)


def test_det_gradient_at_a_singular_matrix_is_the_transposed_adjugate():
    a = np.array([[1.0, 2.0], [2.0, 4.0]])  # rank 1; adj(a) = [[4, -2], [-2, 1]]
    np.testing.assert_allclose(dp.grad(np.linalg.det)(a), [[4.0, -2.0], [-2.0, 1.0]], atol=1e-12)
    b = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])  # rank 2
    cof = np.array([[-3.0, 6.0, -3.0], [6.0, -12.0, 6.0], [-3.0, 6.0, -3.0]])
    np.testing.assert_allclose(dp.grad(np.linalg.det)(b), cof, atol=1e-11)
    assert np.all(dp.grad(np.linalg.det)(np.zeros((3, 3))) == 0)


def test_det_gradient_of_a_stack_with_singular_members():
    rng = np.random.default_rng(6)
    a = np.stack([_rank(rng, 3, 3), _rank(rng, 3, 2), _rank(rng, 3, 1), np.eye(3)])
    check_grads(lambda a: np.sum(np.linalg.det(a) * np.array([1.0, -2.0, 0.5, 3.0])), (a,),
                order=2)


def test_det_gradient_in_float32_keeps_the_dtype():
    a = _rank(np.random.default_rng(7), 3, 2).astype(np.float32)
    g = dp.grad(np.linalg.det)(a)
    assert g.dtype == np.float32
    check_grads(np.linalg.det, (a,))


def test_det_third_derivative_at_a_singular_matrix():
    rng = np.random.default_rng(8)
    a, v = _rank(rng, 3, 2), rng.standard_normal((3, 3))
    hvp = lambda a: np.sum(dp.grad(lambda b: np.sum(dp.grad(np.linalg.det)(b) * v))(a) * v)  # noqa: E731
    check_grads(hvp, (a,))


# ------------------------------------------------------------------ slogdet

@pytest.mark.parametrize("shape", [(3, 3), (2, 3, 3)])
def test_slogdet_gradient_at_regular_matrices(shape):
    a = np.random.default_rng(9).standard_normal(shape) + 2 * np.eye(shape[-1])
    check_grads(lambda a: np.sum(np.linalg.slogdet(a)[1]), (a,), order=2)


def test_slogdet_gradient_at_a_singular_matrix_is_nan_not_an_error():
    """log|det| is -inf there (NumPy: sign 0, logabsdet -inf) and has no derivative: the
    gradient is NaN for that matrix, as NumPy's value is non-finite; other matrices of
    a stack keep their exact gradients."""
    rng = np.random.default_rng(10)
    regular = rng.standard_normal((3, 3)) + 2 * np.eye(3)
    a = np.stack([regular, np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 1.0, 1.0]])])
    assert np.linalg.slogdet(a)[0][1] == 0
    f = lambda a: np.sum(np.linalg.slogdet(a)[1])  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g = dp.grad(f)(a)
        _, t = dp.jvp(f, (a,), (np.ones_like(a),))
    assert np.all(np.isnan(g[1])) and np.isnan(t)
    np.testing.assert_allclose(g[0], np.linalg.inv(regular).T, rtol=1e-12)


# ------------------------------------------------------------------ the other linalg rules

@pytest.mark.parametrize("fn,shapes", [
    (np.linalg.inv, [(3, 3)]),
    (np.linalg.inv, [(2, 3, 3)]),
    (np.linalg.solve, [(3, 3), (3,)]),
    (np.linalg.solve, [(2, 3, 3), (3, 2)]),
    (lambda a: np.linalg.norm(a, ord=1), [(3, 4)]),
    (lambda a: np.linalg.norm(a, ord=np.inf), [(3, 4)]),
    (lambda a: np.linalg.norm(a, "fro"), [(3, 4)]),
])
def test_other_linalg_rules_match_finite_differences_of_numpy(fn, shapes):
    rng = np.random.default_rng(11)
    args = tuple(rng.standard_normal(s) + (2 * np.eye(s[-1]) if i == 0 and s[-1] == s[-2] else 0)
                 for i, s in enumerate(shapes))
    out_shape = np.shape(fn(*args))
    check_grads(_projected(fn, out_shape), args, order=2)


# ------------------------------------------------------------------ complex matrices
# The generated tests run every case of these entries with complex inputs; these check
# NumPy's own conventions on complex values (the Hermitian matrix read from one triangle,
# UPLO="U", upper=True, hermitian=True) and functions of the factors at second order.

def _crandn(rng, *shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def _complex_projected(fn, seed=3):
    """Re(sum(fn(x) * w)) for fixed complex weights w shaped like each output."""
    def f(*xs):
        outs = fn(*xs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        rng = np.random.default_rng(seed)
        return sum(np.real(np.sum(o * _crandn(rng, *np.shape(o)))) for o in outs)
    return f


def _hermitian_pd_lower(rng, n):
    """A Hermitian positive definite lower triangle, unread noise above it and an
    imaginary part on the diagonal that LAPACK never reads."""
    x = _crandn(rng, n, n)
    return x @ x.conj().T + n * np.eye(n) + np.triu(_crandn(rng, n, n), 1) \
        + 1j * np.diag(rng.standard_normal(n))


@pytest.mark.parametrize("upper", [False, True])
def test_complex_cholesky_reads_a_hermitian_triangle_as_numpy_does(upper):
    a = _hermitian_pd_lower(np.random.default_rng(20), 4)
    a = a.T if upper else a
    fn = lambda a: np.linalg.cholesky(a, upper=upper)  # noqa: E731
    np.testing.assert_array_equal(dp.differentiable(fn)(a), fn(a))
    check_grads(_complex_projected(fn), (a,), order=2)
    g = dp.grad(_complex_projected(fn))(a)
    unread = np.triu(g, 1) if not upper else np.tril(g, -1)
    assert np.all(unread == 0) and np.all(np.imag(np.diag(g)) == 0)


@pytest.mark.parametrize("uplo", ["L", "U"])
def test_complex_eigh_vectors_are_numpys_with_lapacks_phases(uplo):
    """zheevd leaves the first (UPLO="L") or the last (UPLO="U") component of each
    eigenvector real; the derivatives of the vectors follow that phase."""
    a = _crandn(np.random.default_rng(21), 4, 4)
    fn = lambda a: np.linalg.eigh(a, UPLO=uplo)  # noqa: E731
    w, v = dp.differentiable(fn)(a)
    w0, v0 = fn(a)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(v, v0)
    check_grads(_complex_projected(fn), (a,), order=2)
    check_grads(_complex_projected(lambda a: np.linalg.eigvalsh(a, UPLO=uplo)), (a,), order=2)


@pytest.mark.parametrize("shape", [(4, 3), (3, 3), (3, 4), (3, 7), (2, 3, 5)])
def test_complex_svd_vectors_are_numpys_with_lapacks_phases(shape):
    a = _crandn(np.random.default_rng(22), *shape)
    fn = lambda a: np.linalg.svd(a, full_matrices=False)  # noqa: E731
    for got, expected in zip(dp.differentiable(fn)(a), fn(a)):
        np.testing.assert_array_equal(got, expected)
    check_grads(_complex_projected(fn), (a,), order=2)


def test_complex_svd_gauge_invariant_functions_and_norms():
    a = _crandn(np.random.default_rng(23), 4, 3)

    def f(a):
        u, s, vh = np.linalg.svd(a, full_matrices=False)
        projector = u[:, :1] @ np.conj(u[:, :1]).T  # no phase: u u^H
        return np.real(np.sum(projector * np.arange(16.0).reshape(4, 4))) + np.sum(s ** 3)

    check_grads(f, (a,), order=2)
    check_grads(lambda a: np.linalg.norm(a, 2) + np.linalg.norm(a, "nuc"), (a,), order=2)


@pytest.mark.parametrize("shape,mode", [((4, 3), "reduced"), ((3, 5), "reduced"),
                                        ((3, 3), "r"), ((2, 4, 3), "reduced")])
def test_complex_qr_keeps_lapacks_real_diagonal(shape, mode):
    a = _crandn(np.random.default_rng(24), *shape)
    fn = lambda a: np.linalg.qr(a, mode=mode)  # noqa: E731
    check_grads(_complex_projected(fn), (a,), order=2)
    _, dr = dp.jvp(lambda a: np.linalg.qr(a)[1], (a,), (_crandn(np.random.default_rng(1), *shape),))
    assert np.all(np.abs(np.imag(np.diagonal(dr, axis1=-2, axis2=-1))) < 1e-12)


def test_complex_qr_complete_completing_columns_have_no_derivative():
    a = _crandn(np.random.default_rng(25), 4, 2)
    g = dp.grad(lambda a: np.real(np.sum(np.linalg.qr(a, mode="complete")[0])))(a)
    assert np.all(np.isnan(g))


@pytest.mark.parametrize("shape", [(4, 3), (3, 5), (2, 3, 3)])
def test_complex_pinv(shape):
    a = _crandn(np.random.default_rng(26), *shape)
    np.testing.assert_allclose(dp.differentiable(np.linalg.pinv)(a), np.linalg.pinv(a),
                               rtol=1e-12, atol=1e-14)
    check_grads(_complex_projected(np.linalg.pinv), (a,), order=2)


def test_complex_pinv_hermitian_reads_the_lower_triangle():
    a = _hermitian_pd_lower(np.random.default_rng(27), 3)
    fn = lambda a: np.linalg.pinv(a, hermitian=True)  # noqa: E731
    np.testing.assert_allclose(dp.differentiable(fn)(a), fn(a), rtol=1e-10)
    check_grads(_complex_projected(fn), (a,), order=2)


def test_complex_eig_and_a_real_input_meeting_complex_vectors():
    """A real matrix's eigenvectors are complex: the gradient with respect to the real
    matrix is real (the real part of the complex cotangent)."""
    a = np.random.default_rng(28).standard_normal((4, 4))
    f = _complex_projected(np.linalg.eig)
    g = dp.grad(f)(a)
    assert g.dtype == np.float64
    check_grads(f, (a,), order=2)
    check_grads(_complex_projected(np.linalg.eig), (_crandn(np.random.default_rng(29), 3, 3),),
                order=2)


@pytest.mark.parametrize("fn, expected", [
    (lambda a: np.sum(np.linalg.eigh(a)[0] ** 2), 2 * np.eye(3)),
    (lambda a: np.sum(np.linalg.eigvalsh(a) ** 2), 2 * np.eye(3)),
    (lambda a: np.sum(np.linalg.svd(a)[1]), np.eye(3)),
    (lambda a: np.sum(np.linalg.svd(a, full_matrices=False)[1]), np.eye(3)),
    (lambda a: np.sum(np.real(np.linalg.eig(a)[0])), np.eye(3)),
    (lambda a: np.linalg.slogdet(a)[1], np.eye(3)),
], ids=["eigh", "eigvalsh", "svd", "svd_reduced", "eig", "slogdet"])
def test_unused_vectors_at_repeated_eigenvalues_give_no_nan(fn, expected):
    # (a reviewer: the identity's eigenvalue gradient was all NaN: the unused eigenvectors'
    # zero cotangent met 1 / (w_j - w_i) = inf. A result without a cotangent is now None.)
    with np.errstate(all="raise"):
        np.testing.assert_allclose(dp.grad(fn)(np.eye(3)), expected, atol=1e-12)


def test_eigvals_at_repeated_eigenvalues_pairs_each_with_its_own():
    # (a reviewer: every copy of a repeated eigenvalue was paired with the first one)
    np.testing.assert_allclose(
        dp.grad(lambda a: np.sum(np.linalg.eigvals(a)).real)(np.eye(3)), np.eye(3), atol=1e-12)
    _, tangent = dp.jvp(np.linalg.eigvals, (np.diag([1.0, 1.0, 2.0]),), (np.diag([1.0, 2.0, 3.0]),))
    np.testing.assert_allclose(tangent, [1.0, 2.0, 3.0], atol=1e-12)
