"""scipy.sparse matrices as constants in products with traced dense arrays, and traced
stored values (dp.scipy_api.sparse.with_data)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import diffprog as dp
from diffprog.errors import UnsupportedFunctionError
from diffprog.scipy_api.sparse import TracedSparse, with_data

from .helpers import assert_grads_match_scipy, assert_matches_scipy, scipy_grad

dp.scipy_api.install_all()
RNG = np.random.default_rng(0)
S = sp.random(30, 20, density=0.2, format="csr", random_state=0)
X, Y, Z = RNG.standard_normal(20), RNG.standard_normal(30), RNG.standard_normal((20, 3))
FORMATS = ["csr", "csc", "coo", "lil"]


def _dense(v):
    return v.toarray() if sp.issparse(v) else v


PRODUCTS = {
    "S @ x": lambda A, x: A @ x,
    "S @ X (matrix)": lambda A, x: A @ (x[:, None] * Z),
    "S.dot(x)": lambda A, x: A.dot(x),
    "x @ S": lambda A, x: (Y @ A) * x,
    "X @ S (matrix)": lambda A, x: (np.outer(Y, x[:3]).T @ A) * x,
    "S.T @ (S @ x)": lambda A, x: A.T @ (A @ x),
    "S * x (matrix: product)": lambda A, x: A * x,
    "S.multiply(x) @ x": lambda A, x: A.multiply(x[None, :]) @ x,
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("product", sorted(PRODUCTS))
def test_products_match_scipy_with_gradients(fmt, product):
    A, fn = S.asformat(fmt), PRODUCTS[product]
    assert_matches_scipy(lambda x: _dense(fn(A, x)), (X,), rtol=1e-12)
    assert_grads_match_scipy(lambda x: np.sin(_dense(fn(A, x))), (X,), [0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_sparse_arrays_multiply_elementwise(fmt):
    A = sp.csr_array(S).asformat(fmt)
    x = RNG.standard_normal((30, 20))
    fn = lambda x: (A * x) @ Z + (x * A) @ Z + A.multiply(x) @ Z
    assert_matches_scipy(fn, (x,), rtol=1e-12)
    assert_grads_match_scipy(lambda x: np.sin(fn(x)), (x,), [0])


def test_traced_values_of_the_matrix():
    w = S.data.copy()
    fn = lambda w: np.sum((with_data(S, w) @ Z - 1.0) ** 2)
    plain = lambda w: np.sum((sp.csr_matrix((w, S.indices, S.indptr), shape=S.shape) @ Z - 1.0) ** 2)
    np.testing.assert_allclose(dp.differentiable(fn)(w), plain(w), rtol=1e-12)
    np.testing.assert_allclose(dp.grad(fn)(w), scipy_grad(plain, (w,), 0), rtol=1e-6, atol=1e-8)
    C = S.tocoo()  # COO order of values, duplicates kept
    fn = lambda w: np.sum(np.tanh(Z.T @ (with_data(C, w).T @ Y)))
    plain = lambda w: np.sum(np.tanh(Z.T @ (sp.coo_matrix((w, C.coords), shape=C.shape).T @ Y)))
    np.testing.assert_allclose(dp.differentiable(fn)(C.data), plain(C.data), rtol=1e-12)
    np.testing.assert_allclose(dp.grad(fn)(C.data), scipy_grad(plain, (C.data,), 0),
                               rtol=1e-6, atol=1e-8)
    # second order, both operands traced
    h = dp.hessian(lambda w: np.sum((with_data(S, w) @ X) ** 2))(w)
    J = np.stack([sp.csr_matrix((np.eye(len(w))[k], S.indices, S.indptr), shape=S.shape) @ X
                  for k in range(len(w))], axis=1)
    np.testing.assert_allclose(h, 2 * J.T @ J, atol=1e-10)


def test_in_place_changes_of_a_csr_matrix_are_read():
    A = S.copy()
    f = dp.differentiable(lambda x: A @ x)
    first = f(X)
    A.data *= 2.0
    np.testing.assert_allclose(f(X), 2.0 * first, rtol=1e-12)


def test_transforms_compose():
    batch = RNG.standard_normal((4, 20))
    np.testing.assert_allclose(dp.vmap(lambda x: S @ x)(batch), (S @ batch.T).T, rtol=1e-12)
    h = dp.hessian(lambda x: np.sum((S @ x) ** 2))(X)
    np.testing.assert_allclose(h, 2 * (S.T @ S).toarray(), atol=1e-12)
    _, t = dp.jvp(lambda x: S @ x, (X,), (Z[:, 0],))
    np.testing.assert_allclose(t, S @ Z[:, 0], rtol=1e-12)


def test_what_is_not_a_product_is_refused():
    with pytest.raises(UnsupportedFunctionError, match=r"(?s)np\.dot.*S @ x"):
        dp.differentiable(lambda x: np.dot(S, x))(X)
    with pytest.raises(UnsupportedFunctionError, match="toarray"):
        dp.differentiable(lambda x: S + x)(RNG.standard_normal((30, 20)))
    with pytest.raises(UnsupportedFunctionError, match="sum"):
        dp.differentiable(lambda w: with_data(S, w).sum())(S.data)
    total = dp.differentiable(lambda w: np.sum(with_data(S, w).toarray()))(S.data)
    np.testing.assert_allclose(total, S.sum(), rtol=1e-12)


def test_traced_sparse_is_what_multiply_returns():
    seen = []

    def f(x):
        out = S.multiply(x[None, :])
        seen.append(type(out))
        return out @ X
    dp.differentiable(f)(X)
    assert seen == [TracedSparse]


def test_a_global_sparse_matrix_rebound_or_changed_is_seen():
    # (a reviewer: a rebound sparse global, a COO matrix changed in place and a CSR
    # matrix given new arrays all kept their first values)
    import types
    import warnings
    mod = types.ModuleType("user_code")
    exec("import numpy as np\nimport scipy.sparse as sps\nS = sps.eye(3, format='csr')\n"
         "C = sps.coo_matrix(np.eye(3))\ndef f(x):\n    return np.sum(S @ x) + np.sum(C @ x)\n",
         mod.__dict__)
    f, x = dp.differentiable(mod.f), np.ones(3)
    assert f(x) == 6.0
    mod.S = 2 * mod.sps.eye(3, format="csr")
    assert f(x) == mod.f(x) == 9.0
    mod.C.data *= 2
    assert f(x) == mod.f(x) == 12.0
    mod.S.data = mod.S.data * 3
    assert f(x) == mod.f(x) == 24.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (SciPy: changing the sparsity structure)
        mod.S[0, 1] = 5.0
    assert f(x) == mod.f(x)


@pytest.mark.parametrize("sparse_dtype", [np.float32, np.float64, bool, np.complex64])
def test_elementwise_products_keep_scipys_dtype(sparse_dtype):
    s = sp.csr_matrix(np.eye(2, dtype=sparse_dtype))
    x = np.full(2, 1.5, np.float32)
    want = s.multiply(x).toarray()
    got = dp.differentiable(lambda x: s.multiply(x).toarray())(x)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_a_global_dok_matrix_changed_in_place_is_seen():
    import warnings
    dok = sp.dok_matrix((3, 3))
    dok[0, 0] = 1.0
    f = dp.differentiable(lambda x: dok @ x)
    x = np.array([1.0, 2.0, 3.0])
    assert list(f(x)) == [1.0, 0.0, 0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dok[1, 1] = 5.0
    assert list(f(x)) == [1.0, 10.0, 0.0]
