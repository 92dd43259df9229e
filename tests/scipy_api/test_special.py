"""scipy.special inside differentiated functions: its ufuncs (the table's entries of
diffprog/primitives/special.py, whose rules tests/test_primitives.py checks like every
entry's) reached unchanged through the NumPy protocol, and its Python functions
(logsumexp, softmax, log_softmax, polygamma, multigammaln) diverted."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.special as sc

import diffprog as dp
from diffprog.errors import UnsupportedFunctionError
from diffprog.primitives import PRIMITIVES
from diffprog.primitives import special as entries

from .helpers import assert_grads_match_scipy, assert_matches_scipy

dp.scipy_api.install_all()

#: a point inside each ufunc's domain (its entry's first case), per scipy.special name
UFUNCS = sorted(entries.UFUNC_ENTRIES)


def _inputs(function):
    prim = entries.UFUNC_ENTRIES[function]
    return prim.cases[0].make(np.random.default_rng(3))


@pytest.mark.parametrize("function", UFUNCS)
def test_ufunc_called_unchanged_matches_scipy(function):
    ufunc = getattr(sc, function)
    inputs = _inputs(function)
    assert_matches_scipy(lambda *xs: ufunc(*xs), inputs, rtol=1e-13)
    float_pos = [i for i, x in enumerate(inputs) if np.asarray(x).dtype.kind == "f"]
    assert_grads_match_scipy(lambda *xs: ufunc(*xs), inputs, float_pos, rtol=1e-5)


def test_every_bound_ufunc_has_its_scipy_name():
    for function, prim in entries.UFUNC_ENTRIES.items():
        assert PRIMITIVES[prim.name] is prim
        assert entries.SCIPY_NAMES[prim.name] == f"scipy.special.{function}" or function == "psi"


def test_float32_stays_float32():
    x = np.linspace(0.1, 0.9, 5, dtype=np.float32)
    out = dp.differentiable(lambda x: sc.erf(x) + sc.expit(x))(x)
    assert out.dtype == np.float32
    assert dp.grad(lambda x: np.sum(sc.gammaln(x)))(x).dtype == np.float32


def test_uncovered_ufunc_names_scipy_special():
    with pytest.raises(UnsupportedFunctionError, match=r"scipy\.special\.jv has no"):
        dp.grad(lambda x: np.sum(sc.jv(1.0, x)))(np.ones(2))


def test_shape_parameter_derivative_is_refused_only_when_asked_for():
    a, x = np.array([1.5, 2.5]), np.array([0.5, 1.0])
    # d/dx is exact although a is traced too
    g = dp.grad(lambda a, x: np.sum(sc.gammainc(a, x)), argnums=1)(a, x)
    np.testing.assert_allclose(g, np.exp(-x) * x ** (a - 1) / sc.gamma(a), rtol=1e-12)
    with pytest.raises(dp.NotDifferentiableError, match=r"scipy\.special\.gammainc.*no closed form"):
        dp.grad(lambda a, x: np.sum(sc.gammainc(a, x)), argnums=0)(a, x)


# ------------------------------------------------------------------ logsumexp and friends

def _lse_cases():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    b = np.array([1.0, 2.0, 0.0, 3.0])
    return [
        (lambda a: sc.logsumexp(a), (x,)),
        (lambda a: sc.logsumexp(a, axis=1), (x,)),
        (lambda a: sc.logsumexp(a, axis=(0, 1), keepdims=True), (x,)),
        (lambda a: sc.logsumexp(a, axis=1, b=b), (x,)),
        (lambda a, b: sc.logsumexp(a, axis=-1, b=b), (x, b + 0.5)),
        (lambda a: sc.logsumexp(a, axis=0, b=np.array([[1.0], [-1.0], [2.0]]),
                                return_sign=True)[0], (x,)),
        (lambda a: sc.logsumexp(a * 300.0), (x,)),  # exp overflows: the shift matters
        (lambda a: sc.logsumexp(np.concatenate([a[0], a[0]])), (x,)),  # ties at the maximum
        (lambda a: sc.softmax(a), (x,)),
        (lambda a: sc.softmax(a, axis=1), (x,)),
        (lambda a: sc.log_softmax(a, axis=0), (x,)),
        (lambda a: sc.log_softmax(a * 500.0), (x,)),
        (lambda a: sc.polygamma(2, np.abs(a) + 0.5), (x,)),
        (lambda a: sc.polygamma(np.array([0, 1, 2, 3]), np.abs(a) + 0.5), (x,)),
        (lambda a: sc.multigammaln(np.abs(a) + 2.0, 3), (x,)),
    ]


@pytest.mark.parametrize("case", range(len(_lse_cases())))
def test_logsumexp_softmax_match_scipy_values_and_gradients(case):
    fn, args = _lse_cases()[case]
    assert_matches_scipy(fn, args, rtol=1e-13)
    assert_grads_match_scipy(fn, args, list(range(len(args))), rtol=1e-5)


def test_logsumexp_edge_values_match_scipy():
    inf = np.inf
    for a, b in [(np.array([-inf, -inf]), None), (np.array([inf, 1.0]), None),
                 (np.array([1.0, 1.0]), np.array([1.0, -1.0])), (np.array([1.0, 2.0]), np.array([1.0, -3.0])),
                 (np.array([np.nan, 1.0]), np.array([0.0, 1.0])), (np.zeros((0,)), None)]:
        for sign in (False, True):
            fn = lambda a: sc.logsumexp(a, b=b, return_sign=sign)
            with np.errstate(all="ignore"):
                got, want = dp.differentiable(fn)(a), fn(a)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_logsumexp_hessian_is_softmax_jacobian():
    x = np.array([0.3, -1.2, 2.0])
    h = dp.hessian(lambda a: sc.logsumexp(a))(x)
    s = sc.softmax(x)
    np.testing.assert_allclose(h, np.diag(s) - np.outer(s, s), atol=1e-12)


def test_logsumexp_imported_before_diffprog_is_diverted():
    """`from scipy.special import logsumexp` binds the function before diffprog exists;
    the function object itself is diverted, so that reference works (and SciPy's own
    behaviour on plain values is unchanged)."""
    code = (
        "from scipy.special import logsumexp\n"
        "import numpy as np\n"
        "import diffprog as dp\n"
        "g = dp.grad(lambda x: logsumexp(x))(np.array([0.0, 1.0]))\n"
        "assert np.allclose(g, np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()), g\n"
        "assert logsumexp([1, 2], b=[1, -1], return_sign=True)[1] == -1.0\n"
        "import inspect; assert 'return_sign' in str(inspect.signature(logsumexp))\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
