"""scipy.stats distributions called unchanged inside differentiated functions; tests
generated from diffprog.scipy_api.stats.FAMILIES: every covered method of every family,
values against SciPy (support edges, outside the support, invalid parameters, NaN) and
gradients against finite differences of SciPy's own functions."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st

import diffprog as dp
from diffprog.errors import NotDifferentiableError, UnsupportedFunctionError

from .helpers import assert_grads_match_scipy, assert_matches_scipy

pytest.importorskip("scipy")
dp.scipy_api.install_all()
from diffprog.scipy_api.stats import FAMILIES  # noqa: E402

#: per family: shape parameters (valid), points covering the support's edges and beyond,
#: interior points for gradients, and an invalid parameter set
CASES = {
    "norm": dict(shapes=(), x=[-np.inf, -40.0, -3.0, -0.5, 0.0, 0.7, 2.0, 9.0, np.inf, np.nan],
                 interior=[-1.3, 0.2, 0.9, 2.4], bad=None),
    "t": dict(shapes=(3.5,), x=[-50.0, -2.0, 0.0, 0.3, 4.0, np.nan], interior=[-1.1, 0.4, 2.2],
              bad=(-1.0,)),
    "beta": dict(shapes=(2.5, 1.5), x=[-0.1, 0.0, 0.1, 0.5, 0.99, 1.0, 1.3],
                 interior=[0.2, 0.45, 0.8], bad=(2.0, 0.0)),
    "gamma": dict(shapes=(2.2,), x=[-1.0, 0.0, 0.3, 1.0, 5.0, 40.0], interior=[0.4, 1.3, 2.9],
                  bad=(-0.5,)),
    "chi2": dict(shapes=(3.0,), x=[-1.0, 0.0, 0.3, 2.0, 9.0], interior=[0.5, 1.7, 4.2],
                 bad=(0.0,)),
    "poisson": dict(shapes=(2.3,), x=[-1.0, 0.0, 1.0, 2.5, 3.0, 12.0, np.inf],
                    interior=[0.0, 1.0, 4.0], bad=(-0.5,)),
}
LOC, SCALE = 0.25, 1.3
METHODS = [pytest.param(name, m, id=f"{name}.{m}")
           for name, family in sorted(FAMILIES.items()) for m in family.methods]
#: derivatives SciPy's formulas have no closed form for: with respect to the shape
#: parameters of the incomplete gamma/beta functions and Student's t distribution function
NO_SHAPE_DERIVATIVE = {("t", m) for m in ("cdf", "logcdf", "sf", "logsf")} | \
    {(d, m) for d in ("beta", "gamma", "chi2") for m in ("cdf", "logcdf", "sf", "logsf")}


def _call(name, method, x, shapes, **kwargs):
    dist = getattr(st, name)
    if method == "entropy":
        return dist.entropy(*shapes, **kwargs)
    return getattr(dist, method)(x, *shapes, **kwargs)


def _kwargs(name):
    return {"loc": LOC} if FAMILIES[name].discrete else {"loc": LOC, "scale": SCALE}


def test_every_scipy_stats_family_is_tested():
    assert set(CASES) == set(FAMILIES)


@pytest.mark.parametrize("name,method", METHODS)
def test_values_match_scipy(name, method):
    case = CASES[name]
    kwargs = _kwargs(name)
    x = np.array(case["x"])
    if method in ("ppf", "isf"):
        x = np.array([-0.5, 0.0, 1e-12, 0.3, 0.5, 0.99, 1.0, 1.5, np.nan])
    shapes = tuple(np.float64(s) for s in case["shapes"])
    assert_matches_scipy(lambda x, *s: _call(name, method, x, s, **kwargs), (x,) + shapes)
    if method != "entropy":  # a traced loc/scale and plain x
        assert_matches_scipy(lambda loc: _call(name, method, x, shapes, **{**kwargs, "loc": loc}),
                             (np.float64(LOC),))
    if case["bad"] is not None:  # invalid parameters: NaN, as SciPy
        bad = tuple(np.float64(s) for s in case["bad"])
        assert_matches_scipy(lambda x, *s: _call(name, method, x, s, **kwargs), (x,) + bad)
    if not FAMILIES[name].discrete:  # scale <= 0 is invalid too
        assert_matches_scipy(lambda x: _call(name, method, x, shapes, loc=LOC, scale=-1.0), (x,))


@pytest.mark.parametrize("name,method", METHODS)
def test_gradients_match_finite_differences_of_scipy(name, method):
    case = CASES[name]
    kwargs = _kwargs(name)
    family = FAMILIES[name]
    x = np.array([0.1, 0.4, 0.8]) if method in ("ppf", "isf") else np.array(case["interior"])
    if not family.discrete and method not in ("ppf", "isf"):
        x = x * SCALE + LOC  # interior in standard form
    shapes = tuple(np.float64(s) for s in case["shapes"])
    n_shapes = len(shapes)

    def fn(x, loc, *rest):
        extra = {"loc": loc} if family.discrete else {"loc": loc, "scale": rest[-1]}
        return _call(name, method, x, rest[:n_shapes], **extra)

    loc = np.float64(0.0 if family.discrete else LOC)  # a discrete one: integers k - loc
    args = (x, loc) + shapes + (() if family.discrete else (np.float64(SCALE),))
    wrt = [] if method == "entropy" else ([] if family.discrete else [0])
    wrt += [] if family.discrete else [1]  # a discrete distribution is flat in loc
    scale_pos = [len(args) - 1] if not family.discrete else []
    shape_pos = list(range(2, 2 + n_shapes))
    if (name, method) in NO_SHAPE_DERIVATIVE:
        assert_grads_match_scipy(fn, args, wrt + scale_pos)
        with pytest.raises(NotDifferentiableError, match="no closed form"):
            dp.grad(lambda *a: np.sum(fn(*a)), argnums=shape_pos[0])(*args)
    else:
        assert_grads_match_scipy(fn, args, wrt + scale_pos + shape_pos)


@pytest.mark.parametrize("name,method", [p for p in METHODS if p.values[1] != "entropy"])
def test_frozen_distributions_with_traced_parameters(name, method):
    case = CASES[name]
    x = np.array(case["interior"])
    if method in ("ppf", "isf"):
        x = np.array([0.1, 0.4, 0.8])
    shapes = tuple(np.float64(s) for s in case["shapes"])

    def fn(loc, *s):
        return getattr(getattr(st, name)(*s, loc=loc), method)(x)
    assert_matches_scipy(fn, (np.float64(LOC),) + shapes)


def test_user_code_unchanged_norm_logpdf_fit():
    """The issue's example: `from scipy.stats import norm; norm.logpdf(x)` inside a
    decorated function, here a maximum-likelihood fit of mu and log sigma."""
    from scipy.stats import norm
    data = np.random.default_rng(0).normal(1.5, 0.5, 200)

    @dp.differentiable
    def nll(params):
        return -np.sum(norm.logpdf(data, params["mu"], np.exp(params["log_sigma"])))

    params = {"mu": np.array(0.0), "log_sigma": np.array(0.0)}
    opt = dp.optim.Adam(lr=0.05)
    state = opt.init(params)
    for _ in range(300):
        params, state = opt.update(dp.grad(nll)(params), state, params)
    assert abs(float(params["mu"]) - data.mean()) < 1e-2
    assert abs(float(np.exp(params["log_sigma"])) - data.std()) < 1e-2


def test_bound_method_taken_before_tracing_is_diverted():
    logpdf = st.norm.logpdf  # a bound method kept in a variable
    assert_grads_match_scipy(lambda x: logpdf(x, 0.5, 2.0), (np.array([0.3, -1.0]),), [0])


def test_uncovered_distribution_and_method_name_themselves():
    x = np.array([0.5, 1.0])
    with pytest.raises(UnsupportedFunctionError, match=r"(?s)scipy\.stats\.cauchy\.logpdf.*test_stats"):
        dp.differentiable(lambda x: st.cauchy.logpdf(x))(x)
    with pytest.raises(UnsupportedFunctionError, match=r"scipy\.stats\.norm\.median"):
        dp.differentiable(lambda loc: st.norm.median(loc=loc))(0.3)
    with pytest.raises(UnsupportedFunctionError, match=r"(?s)scipy\.stats\.poisson\.entropy.*closed form"):
        dp.differentiable(lambda mu: st.poisson.entropy(mu))(0.3)
    with pytest.raises(UnsupportedFunctionError, match=r"scipy\.stats\.gamma\.ppf"):
        dp.differentiable(lambda q: st.gamma.ppf(q, 2.0))(x / 2)


def test_plain_calls_inside_traced_functions_run_scipy():
    x = np.array([0.5, 1.0])
    assert_matches_scipy(lambda x: x * st.cauchy.logpdf(np.array([0.1, 0.2])), (x,))


# --------------------------------------------------------------------- multivariate

def _mvn_case(dim=3, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((dim, dim))
    return rng.standard_normal((5, dim)), rng.standard_normal(dim), a @ a.T + dim * np.eye(dim)


@pytest.mark.parametrize("method", ["logpdf", "pdf"])
def test_multivariate_normal_density(method):
    x, mean, cov = _mvn_case()
    fn = lambda x, mean, cov: getattr(st.multivariate_normal, method)(x, mean, cov)
    assert_matches_scipy(fn, (x, mean, cov))
    # the covariance's lower triangle is what SciPy reads: gradients say so too
    assert_grads_match_scipy(fn, (x, mean, cov), [0, 1, 2], rtol=1e-5)
    frozen = lambda mean, cov: getattr(st.multivariate_normal(mean, cov), method)(x)
    assert_matches_scipy(frozen, (mean, cov))
    plain = st.multivariate_normal(mean, cov)
    assert_matches_scipy(lambda x: getattr(plain, method)(x), (x,))


@pytest.mark.parametrize("x,mean,cov", [
    (np.array(0.3), None, 2.0), (np.array([0.3, 0.1]), np.zeros(2), np.array([1.0, 2.0])),
    (np.array([[0.3, 0.1]]), np.array([0.0, 1.0]), np.array([[2.0, 0.5], [0.5, 1.0]])),
    (np.array([0.3, -0.4, 2.0]), np.array([0.5]), np.array(1.5))])
def test_multivariate_normal_shapes_follow_scipy(x, mean, cov):
    assert_matches_scipy(lambda x: st.multivariate_normal.logpdf(x, mean, cov), (x,))


def test_multivariate_normal_entropy_and_refusals():
    _, mean, cov = _mvn_case()
    fn = lambda cov: st.multivariate_normal.entropy(mean, cov)
    assert_matches_scipy(fn, (cov,))
    assert_grads_match_scipy(fn, (cov,), [0])
    with pytest.raises(UnsupportedFunctionError, match=r"multivariate_normal\.cdf"):
        dp.differentiable(lambda m: st.multivariate_normal.cdf(np.zeros(3), m, cov))(mean)


def test_dirichlet():
    alpha, x = np.array([1.5, 2.0, 3.0]), np.array([0.2, 0.3, 0.5])
    xs = np.array([[0.2, 0.1], [0.3, 0.6]])  # K-1 rows: the last component implied
    for fn, args in [(lambda x, a: st.dirichlet.logpdf(x, a), (x, alpha)),
                     (lambda x, a: st.dirichlet.pdf(x, a), (x, alpha)),
                     (lambda x, a: st.dirichlet.logpdf(x, a), (xs, alpha)),
                     (lambda x, a: st.dirichlet(a).logpdf(x), (x, alpha))]:
        assert_matches_scipy(fn, args)
        assert_grads_match_scipy(fn, args, [1], rtol=1e-5)
    for method in ("entropy", "mean", "var"):
        fn = lambda a: getattr(st.dirichlet, method)(a)
        assert_matches_scipy(fn, (alpha,))
        assert_grads_match_scipy(fn, (alpha,), [0], rtol=1e-5)
    with pytest.raises(ValueError, match="normal simplex"):
        dp.differentiable(lambda x: st.dirichlet.logpdf(x, alpha))(np.array([0.2, 0.3, 0.6]))
    with pytest.raises(ValueError, match="greater than 0"):
        dp.differentiable(lambda a: st.dirichlet.logpdf(x, a))(np.array([1.0, -1.0, 2.0]))
