"""scipy.stats distributions on traced values.

``from scipy.stats import norm; norm.logpdf(x, mu, sigma)`` inside a differentiated
function, unchanged. The public methods of SciPy's distribution classes
(``rv_continuous.logpdf``, ``rv_discrete.pmf``, ``multivariate_normal_gen.logpdf``, ...)
are diverted (see :mod:`diffprog.scipy_api`): called with a traced argument, they run the
re-implementations below, written with entries of the table (scipy.special's functions
among them), so every derivative is exact and differentiable again.

Univariate families are given in SciPy's standard form (``x`` standardized to
``z = (x - loc) / scale``; for discrete ones ``k - loc``), and the generic methods mirror
``rv_continuous``/``rv_discrete`` exactly: the same argument parsing
(``dist._parse_args``), the same conditions (NaN for invalid parameters or NaN input, 0 /
-inf / 1 outside the support, closed support for densities and open for distribution
functions), float64 results. The formulas are SciPy's own (``_logpdf``, ``_cdf``,
``_entropy`` with its asymptotic branches), so values agree to rounding. Inputs outside
a formula's domain are replaced by safe values before it is evaluated (and the result
then discarded), so that no infinity or NaN reaches a derivative that is not used.

A method or distribution not covered raises :class:`UnsupportedFunctionError` naming
it (``scipy.stats.cauchy.logpdf``) and listing what is covered: SciPy's own code would
turn the traced value into a plain array.
"""
from __future__ import annotations

import math

import numpy as np

from .. import numpy_api as npa
from ..errors import UnsupportedFunctionError
from ..primitives import special as sc
from ..tracing import Tracer
from . import caller_line, divert, operand

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_SQRT_2PI = 0.5 * _LOG_2PI
_HALF_LOG_PI = 0.5 * math.log(math.pi)
_GAMMALN_HALF = math.lgamma(0.5)
_LOG2 = math.log(2.0)
_NORM_ENTROPY = 0.5 * (_LOG_2PI + 1.0)


def f64(x):
    """``x`` as float64 (SciPy's distributions compute and return float64)."""
    x = operand(x)
    if isinstance(x, Tracer):
        return x if x.dtype == np.float64 else npa.astype(x, np.float64)
    return np.asarray(x, dtype=np.float64)


def _plain(x, value: bool) -> bool:
    """Is ``x`` a plain (not traced) condition that is ``value`` everywhere?"""
    return not isinstance(x, Tracer) and bool(np.all(np.asarray(x) == value))


def _keeps_shape(x, *others) -> bool:
    return tuple(np.shape(x)) == tuple(np.broadcast_shapes(np.shape(x), *map(np.shape, others)))


def _where(cond, x, y):
    """np.where, or the branch a plain constant condition picks (no equation)."""
    if _plain(cond, True) and _keeps_shape(x, cond, y):
        return x
    if _plain(cond, False) and _keeps_shape(y, cond, x):
        return y
    return np.where(cond, x, y)


def _and(a, b):
    """np.logical_and without an equation for a plain all-True operand."""
    if _plain(a, True) and _keeps_shape(b, a):
        return b
    if _plain(b, True) and _keeps_shape(a, b):
        return a
    return np.logical_and(a, b)


def _or(a, b):
    """np.logical_or without an equation for a plain all-False operand."""
    if _plain(a, False) and _keeps_shape(b, a):
        return b
    if _plain(b, False) and _keeps_shape(a, b):
        return a
    return np.logical_or(a, b)


# ====================================================================== families

class Family:
    """A distribution family of scipy.stats in standard form.

    ``logpdf(z, *shapes)`` (``logpmf`` for discrete families) and, when SciPy has them,
    ``pdf``, ``cdf``, ``sf``, ``logcdf``, ``logsf``, ``ppf``, ``isf`` of the standardized
    variable, ``entropy(*shapes)``; ``argcheck(*shapes)`` says where the shape parameters
    are valid; ``support`` is the standard support ``(a, b)``; ``safe_z`` a point inside
    it and ``safe_shapes`` valid shape parameters (evaluated in place of invalid inputs,
    whose results are discarded).
    """

    def __init__(self, name, *, logpdf, nshapes=0, pdf=None, cdf=None, sf=None, logcdf=None,
                 logsf=None, ppf=None, isf=None, entropy=None, argcheck=None,
                 support=(-np.inf, np.inf), safe_z=0.0, discrete=False, no_entropy=None):
        self.name = name
        self.nshapes = nshapes
        self.logpdf = logpdf
        self.pdf = pdf or (lambda z, *s: np.exp(logpdf(z, *s)))
        self.cdf = cdf
        self.sf = sf
        self.logcdf = logcdf or (cdf and (lambda z, *s: np.log(cdf(z, *s))))
        self.logsf = logsf or (sf and (lambda z, *s: np.log(sf(z, *s))))
        self.ppf = ppf
        self.isf = isf
        self.entropy = entropy
        self.no_entropy = no_entropy
        self.argcheck = argcheck or _all_positive
        self.support = support
        self.safe_z = safe_z
        self.discrete = discrete

    @property
    def methods(self) -> list[str]:
        kinds = ["pmf", "logpmf"] if self.discrete else ["pdf", "logpdf"]
        kinds += [m for m in ("cdf", "logcdf", "sf", "logsf", "ppf", "isf")
                  if getattr(self, m) is not None]
        return kinds + (["entropy"] if self.entropy is not None else [])


def _all_positive(*shapes):
    ok = True
    for s in shapes:
        ok = _and(ok, s > 0)
    return ok


def _safe_shapes(ok, shapes):
    """The shape parameters, valid ones kept and invalid ones replaced by 1.0 (a valid
    value of every covered family's parameters)."""
    return tuple(_where(ok, s, 1.0) for s in shapes)


# --------------------------------------------------------------------- normal

def _norm_logpdf(z):
    return -0.5 * z * z - _LOG_SQRT_2PI


NORM = Family(
    "norm", logpdf=_norm_logpdf, pdf=lambda z: np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi),
    cdf=sc.ndtr, sf=lambda z: sc.ndtr(-z), logcdf=sc.log_ndtr, logsf=lambda z: sc.log_ndtr(-z),
    ppf=sc.ndtri, isf=lambda q: -sc.ndtri(q), entropy=lambda: np.asarray(_NORM_ENTROPY))


# --------------------------------------------------------------------- Student's t

def _t_logpdf(z, df):
    finite = np.isfinite(df)
    d = _where(finite, df, 1.0)
    # log(poch(df/2, 1/2)) = gammaln(df/2 + 1/2) - gammaln(df/2), as SciPy computes it
    # through betaln (accurate for large df): gammaln(1/2) - betaln(df/2, 1/2)
    t = (_GAMMALN_HALF - sc.betaln(0.5 * d, 0.5) - 0.5 * (np.log(d) + math.log(math.pi))
         - 0.5 * (d + 1.0) * np.log1p(z * z / d))
    return _where(finite, t, _norm_logpdf(z))


def _t_entropy(df):
    large = df >= 100
    d = _where(large, 1.0, df)  # each branch on the values it is used for
    half, half1 = 0.5 * d, 0.5 * (d + 1.0)
    regular = (half1 * (sc.digamma(half1) - sc.digamma(half))
               + 0.5 * np.log(d) + sc.betaln(half, 0.5))
    big = _where(large, df, 100.0)
    asymptotic = (_NORM_ENTROPY + 1.0 / big + big ** -2.0 / 4 - big ** -3.0 / 6
                  - big ** -4.0 / 8 + 3.0 / 10 * big ** -5.0 + big ** -6.0 / 4)
    return _where(large, asymptotic, regular)


T = Family("t", nshapes=1, logpdf=_t_logpdf, cdf=lambda z, df: sc.stdtr(df, z),
           sf=lambda z, df: sc.stdtr(df, -z), entropy=_t_entropy)


# --------------------------------------------------------------------- beta

def _beta_logpdf(z, a, b):
    return sc.xlog1py(b - 1.0, -z) + sc.xlogy(a - 1.0, z) - sc.betaln(a, b)


def _beta_entropy(a, b):
    return (sc.betaln(a, b) - (a - 1.0) * sc.digamma(a) - (b - 1.0) * sc.digamma(b)
            + (a + b - 2.0) * sc.digamma(a + b))


BETA = Family("beta", nshapes=2, logpdf=_beta_logpdf,
              cdf=lambda z, a, b: sc.betainc(a, b, z), sf=lambda z, a, b: sc.betaincc(a, b, z),
              entropy=_beta_entropy, support=(0.0, 1.0), safe_z=0.5)


# --------------------------------------------------------------------- gamma, chi2

def _gamma_entropy(a):
    small = a < 250
    s = _where(small, a, 1.0)
    regular = sc.digamma(s) * (1.0 - s) + s + sc.gammaln(s)
    big = _where(small, 250.0, a)
    asymptotic = (0.5 * (1.0 + _LOG_2PI + np.log(big)) - 1.0 / (3.0 * big)
                  - big ** -2.0 / 12 - big ** -3.0 / 90 + big ** -4.0 / 120)
    return _where(small, regular, asymptotic)


GAMMA = Family("gamma", nshapes=1, logpdf=lambda z, a: sc.xlogy(a - 1.0, z) - z - sc.gammaln(a),
               cdf=lambda z, a: sc.gammainc(a, z), sf=lambda z, a: sc.gammaincc(a, z),
               entropy=_gamma_entropy, support=(0.0, np.inf), safe_z=1.0)


def _chi2_entropy(df):
    half = 0.5 * df
    small = half < 125
    s = _where(small, half, 1.0)
    regular = s + _LOG2 + sc.gammaln(s) + (1.0 - s) * sc.digamma(s)
    big = _where(small, 125.0, half)
    h = 0.5 / big
    asymptotic = (h * (-2.0 / 3 + h * (-1.0 / 3 + h * (-4.0 / 45 + h / 7.5)))
                  + 0.5 * np.log(big) + _LOG2 + 0.5 * (1.0 + _LOG_2PI))
    return _where(small, regular, asymptotic)


CHI2 = Family(
    "chi2", nshapes=1,
    logpdf=lambda z, df: sc.xlogy(0.5 * df - 1.0, z) - 0.5 * z - sc.gammaln(0.5 * df) - _LOG2 * df / 2,
    cdf=lambda z, df: sc.gammainc(0.5 * df, 0.5 * z), sf=lambda z, df: sc.gammaincc(0.5 * df, 0.5 * z),
    entropy=_chi2_entropy, support=(0.0, np.inf), safe_z=1.0)


# --------------------------------------------------------------------- poisson

POISSON = Family(
    "poisson", nshapes=1, discrete=True,
    logpdf=lambda k, mu: sc.xlogy(k, mu) - sc.gammaln(k + 1.0) - mu,
    cdf=lambda k, mu: sc.gammaincc(np.floor(k) + 1.0, mu),  # pdtr(k, mu)
    sf=lambda k, mu: sc.gammainc(np.floor(k) + 1.0, mu),  # pdtrc(k, mu)
    argcheck=lambda mu: mu >= 0, support=(0.0, np.inf), safe_z=0.0,
    no_entropy="SciPy sums the series of the probabilities; it has no closed form")

#: SciPy distribution name -> its family
FAMILIES = {f.name: f for f in (NORM, T, BETA, GAMMA, CHI2, POISSON)}


# ====================================================================== generic methods

def _family(dist, method: str) -> Family:
    family = FAMILIES.get(getattr(dist, "name", None))
    if family is None or type(dist).__name__ != f"{family.name}_gen" or \
            method not in family.methods:
        raise _not_covered(f"scipy.stats.{getattr(dist, 'name', type(dist).__name__)}.{method}",
                           family.no_entropy if family is not None and method == "entropy"
                           else None)
    return family


def covered_methods() -> dict[str, list[str]]:
    """``{"scipy.stats.norm": ["pdf", "logpdf", ...], ...}``, and the multivariate ones."""
    out = {f"scipy.stats.{f.name}": f.methods for f in FAMILIES.values()}
    out["scipy.stats.multivariate_normal"] = ["pdf", "logpdf", "entropy"]
    out["scipy.stats.dirichlet"] = ["pdf", "logpdf", "entropy", "mean", "var"]
    return out


def _not_covered(name: str, why: str | None = None) -> UnsupportedFunctionError:
    listing = "; ".join(f"{d.removeprefix('scipy.stats.')}: {', '.join(m)}"
                        for d, m in covered_methods().items())
    return UnsupportedFunctionError(
        f"{name} on a traced value is not supported by diffprog"
        f"{' (' + why + ')' if why else ''} (called at {caller_line()}).\n"
        f"Covered scipy.stats methods: {listing}.\n"
        f"Fix: write the density with NumPy and scipy.special functions (they are "
        f"differentiable), or call it on plain values (dp.stop_gradient).")


def _standardized(dist, family, x, args, kwds):
    """``(z, shapes, scale, ok)`` as rv_continuous computes them."""
    shapes, loc, scale = dist._parse_args(*args, **kwds)
    x, loc, scale = f64(x), f64(loc), f64(scale)
    shapes = tuple(f64(s) for s in shapes)
    z = (x - loc) / scale
    ok = _and(family.argcheck(*shapes), scale > 0)
    return z, shapes, scale, ok


def _inside(z, family, ok, closed: bool):
    lo, hi = family.support
    if closed:  # an infinite end excludes only NaN, which _finish makes NaN anyway
        above = z >= lo if np.isfinite(lo) else True
        below = z <= hi if np.isfinite(hi) else True
        return _and(ok, _and(above, below))
    return _and(ok, _and(z > lo, z < hi))


def _finish(value, z, ok):
    """NaN where the parameters are invalid or the input is NaN (SciPy's badvalue)."""
    return _where(_or(np.logical_not(ok), np.isnan(z)), np.nan, value)


def _density(log: bool):
    def method(dist, x, *args, **kwds):
        family = _family(dist, "logpdf" if log else "pdf")
        z, shapes, scale, ok = _standardized(dist, family, x, args, kwds)
        inside = _inside(z, family, ok, closed=True)
        zs, ss = _where(inside, z, family.safe_z), _safe_shapes(ok, shapes)
        safe_scale = _where(ok, scale, 1.0)
        if log:
            value = _where(inside, family.logpdf(zs, *ss) - np.log(safe_scale), -np.inf)
        else:
            value = _where(inside, family.pdf(zs, *ss) / safe_scale, 0.0)
        return _finish(value, z, ok)
    return method


def _distribution_function(kind: str):
    """cdf, logcdf, sf, logsf of a continuous family (rv_continuous's conditions)."""
    lower_tail = kind in ("cdf", "logcdf")
    log = kind.startswith("log")

    def method(dist, x, *args, **kwds):
        family = _family(dist, kind)
        z, shapes, scale, ok = _standardized(dist, family, x, args, kwds)
        lo, hi = family.support
        inside = _inside(z, family, ok, closed=False)
        zs, ss = _where(inside, z, family.safe_z), _safe_shapes(ok, shapes)
        saturated = _and(ok, z >= hi if lower_tail else z <= lo)
        value = _where(inside, getattr(family, kind)(zs, *ss), -np.inf if log else 0.0)
        value = _where(saturated, 0.0 if log else 1.0, value)
        return _finish(value, z, ok)
    return method


def _quantile(kind: str):
    """ppf, isf: the support's ends at q = 0 and 1, NaN outside [0, 1]."""
    def method(dist, q, *args, **kwds):
        family = _family(dist, kind)
        shapes, loc, scale = dist._parse_args(*args, **kwds)
        q, loc, scale = f64(q), f64(loc), f64(scale)
        shapes = tuple(f64(s) for s in shapes)
        ok = _and(_and(family.argcheck(*shapes), scale > 0), loc == loc)
        inside = _and(ok, _and(q > 0, q < 1))
        lo, hi = family.support
        first, last = (lo, hi) if kind == "ppf" else (hi, lo)
        qs, ss = _where(inside, q, 0.5), _safe_shapes(ok, shapes)
        z = _where(inside, getattr(family, kind)(qs, *ss), np.nan)
        z = _where(_and(ok, q == 0), first, _where(_and(ok, q == 1), last, z))
        return z * scale + loc
    return method


def _entropy(dist, *args, **kwds):
    family = _family(dist, "entropy")
    shapes, loc, scale = dist._parse_args(*args, **kwds)
    loc, scale = f64(loc), f64(scale)
    shapes = tuple(f64(s) for s in shapes)
    ok = _and(_and(family.argcheck(*shapes), scale > 0), loc == loc)
    value = family.entropy(*_safe_shapes(ok, shapes)) + np.log(_where(ok, scale, 1.0))
    return _where(ok, value, np.nan)


# --------------------------------------------------------------------- discrete

def _discrete_prepare(dist, family, k, args, kwds):
    shapes, loc, _ = dist._parse_args(*args, **kwds)
    k = f64(k) - f64(loc)
    shapes = tuple(f64(s) for s in shapes)
    return k, shapes, family.argcheck(*shapes)


def _mass(log: bool):
    def method(dist, k, *args, **kwds):
        family = _family(dist, "logpmf" if log else "pmf")
        k, shapes, ok = _discrete_prepare(dist, family, k, args, kwds)
        lo, hi = family.support
        inside = _and(_and(ok, _and(k >= lo, k <= hi)),
                                np.floor(k) == k)
        ks, ss = _where(inside, k, family.safe_z), _safe_shapes(ok, shapes)
        if log:
            value = _where(inside, family.logpdf(ks, *ss), -np.inf)
        else:
            value = _where(inside, np.clip(family.pdf(ks, *ss), 0.0, 1.0), 0.0)
        return _finish(value, k, ok)
    return method


def _discrete_distribution_function(kind: str):
    lower_tail = kind in ("cdf", "logcdf")
    log = kind.startswith("log")

    def method(dist, k, *args, **kwds):
        family = _family(dist, kind)
        k, shapes, ok = _discrete_prepare(dist, family, k, args, kwds)
        lo, hi = family.support
        inside = _and(ok, _and(k >= lo, k < hi))
        if not log:
            inside = _and(inside, np.isfinite(k))
        ks, ss = _where(inside, k, family.safe_z), _safe_shapes(ok, shapes)
        base = family.cdf if lower_tail else family.sf
        computed = np.log(base(ks, *ss)) if log else np.clip(base(ks, *ss), 0.0, 1.0)
        saturated = k >= hi if lower_tail else _or(k < lo, k == -np.inf)
        if not lower_tail:
            saturated = _and(saturated, ok)
        value = _where(inside, computed, -np.inf if log else 0.0)
        value = _where(saturated, 0.0 if log else 1.0, value)
        if kind == "logcdf":  # SciPy sets 0 past the support after the NaN of bad values
            return _where(saturated, 0.0, _finish(value, k, ok))
        return _finish(value, k, ok)
    return method


def _refused_method(name: str):
    def method(dist, *args, **kwds):
        raise _not_covered(f"scipy.stats.{getattr(dist, 'name', '?')}.{name}")
    return method


# ====================================================================== multivariate normal

def _mvn_parameters(mean, cov):
    """SciPy's ``_process_parameters_psd(None, mean, cov)`` on traced values."""
    if mean is None:
        if cov is None:
            dim = 1
        else:
            cov = f64(cov)
            dim = 1 if npa.ndim(cov) < 2 else npa.shape(cov)[0]
    else:
        mean = f64(mean)
        dim = int(np.prod(npa.shape(mean), dtype=np.int64))
    mean = f64(np.zeros(dim) if mean is None else mean)
    cov = f64(1.0 if cov is None else cov)
    if dim == 1:
        mean, cov = npa.reshape(mean, (1,)), npa.reshape(cov, (1, 1))
    if npa.ndim(mean) != 1 or npa.shape(mean)[0] != dim:
        raise ValueError(f"Array 'mean' must be a vector of length {dim}.")
    if npa.ndim(cov) == 0:
        cov = cov * np.eye(dim)
    elif npa.ndim(cov) == 1:
        cov = npa.diag(cov)
    elif npa.ndim(cov) == 2 and npa.shape(cov) != (dim, dim):
        rows, cols = npa.shape(cov)
        raise ValueError(f"Array 'cov' must be square if it is two dimensional, but "
                         f"cov.shape = {(rows, cols)}." if rows != cols else
                         f"Dimension mismatch: array 'cov' is of shape {(rows, cols)}, but "
                         f"'mean' is a vector of length {dim}.")
    elif npa.ndim(cov) > 2:
        raise ValueError(f"Array 'cov' must be at most two-dimensional, but cov.ndim = "
                         f"{npa.ndim(cov)}")
    return dim, mean, cov


def _covariance_object(cov):
    if type(cov).__name__ in ("Covariance", "CovViaPrecision", "CovViaDiagonal",
                              "CovViaCholesky", "CovViaEigendecomposition", "CovViaPSD"):
        raise UnsupportedFunctionError(
            "scipy.stats.multivariate_normal with a scipy.stats.Covariance object and a "
            "traced argument is not supported by diffprog. Fix: pass the covariance matrix.")


def _quantiles(x, dim):
    x = f64(x)
    if npa.ndim(x) == 0:
        return npa.reshape(x, (1,))
    if npa.ndim(x) == 1:
        return npa.reshape(x, (-1, 1)) if dim == 1 else npa.reshape(x, (1, -1))
    return x


def _squeeze(out):
    return npa.squeeze(out)


def mvn_logpdf(x, mean, cov):
    """log N(x; mean, cov) over the last axis of ``x``, by the Cholesky factor of cov
    (its lower triangle is read, as SciPy's eigh does)."""
    dim = npa.shape(mean)[0]
    chol = np.linalg.cholesky(cov)
    dev = x - mean
    lead = npa.shape(dev)[:-1]
    flat = npa.reshape(dev, (-1, dim))
    white = np.linalg.solve(chol, npa.transpose(flat))  # (dim, n)
    maha = npa.reshape(np.sum(white * white, axis=0), lead)
    log_det = 2.0 * np.sum(np.log(npa.diagonal(chol)))
    return -0.5 * (dim * _LOG_2PI + log_det + maha)


def mvn_entropy(cov):
    dim = npa.shape(cov)[0]
    log_det = 2.0 * np.sum(np.log(npa.diagonal(np.linalg.cholesky(cov))))
    return 0.5 * (dim * (_LOG_2PI + 1.0) + log_det)


class _MultivariateNormal:
    """The methods of ``scipy.stats.multivariate_normal`` on traced values."""

    @staticmethod
    def logpdf(gen, x, mean=None, cov=1, allow_singular=False):
        _covariance_object(cov)
        dim, mean, cov = _mvn_parameters(mean, cov)
        return _squeeze(mvn_logpdf(_quantiles(x, dim), mean, cov))

    @staticmethod
    def pdf(gen, x, mean=None, cov=1, allow_singular=False):
        return np.exp(_MultivariateNormal.logpdf(gen, x, mean, cov, allow_singular))

    @staticmethod
    def entropy(gen, mean=None, cov=1):
        _covariance_object(cov)
        _, _, cov = _mvn_parameters(mean, cov)
        return mvn_entropy(cov)

    @staticmethod
    def call(gen, mean=None, cov=1, allow_singular=False, seed=None, **kwds):
        _covariance_object(cov)
        return FrozenMultivariateNormal(mean, cov, allow_singular)


class FrozenMultivariateNormal:
    """``scipy.stats.multivariate_normal(mean, cov)`` with traced parameters."""

    def __init__(self, mean=None, cov=1, allow_singular=False):
        self.dim, self.mean, self.cov = _mvn_parameters(mean, cov)
        self.allow_singular = allow_singular

    def logpdf(self, x):
        return _squeeze(mvn_logpdf(_quantiles(x, self.dim), self.mean, self.cov))

    def pdf(self, x):
        return np.exp(self.logpdf(x))

    def entropy(self):
        return mvn_entropy(self.cov)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise _not_covered(f"scipy.stats.multivariate_normal(...).{name}",
                           "only pdf, logpdf and entropy are computed from traced parameters")


def _frozen_mvn_method(kind: str):
    def method(frozen, x):
        mean, cov = frozen.mean, frozen.cov
        logpdf = _squeeze(mvn_logpdf(_quantiles(x, frozen.dim), f64(mean), f64(cov)))
        return logpdf if kind == "logpdf" else np.exp(logpdf)
    return method


# ====================================================================== Dirichlet

def _check(condition, message: str) -> None:
    """Raise ValueError(message) where ``condition`` holds, as SciPy does: on traced
    values the check is a guard (a later call that breaks it traces again and raises).
    Without values (inside dp.vmap) it cannot be checked: refused, not skipped."""
    if isinstance(condition, Tracer) and condition.val is None:
        raise _not_covered("scipy.stats.dirichlet (input checks) under dp.vmap",
                           "its ValueError checks need the values")
    if bool(condition):
        raise ValueError(message)


def _dirichlet_alpha(alpha):
    alpha = f64(alpha)
    _check(np.min(alpha) <= 0, "All parameters must be greater than 0")
    if npa.ndim(alpha) != 1:
        raise ValueError(f"Parameter vector 'a' must be one dimensional, but a.shape = "
                         f"{npa.shape(alpha)}.")
    return alpha


def _dirichlet_x(alpha, x):
    x = f64(x)
    k, n = npa.shape(alpha)[0], npa.shape(x)[0]
    if n + 1 != k and n != k:
        raise ValueError(f"Vector 'x' must have either the same number of entries as, or "
                         f"one entry fewer than, parameter vector 'a', but alpha.shape = "
                         f"{npa.shape(alpha)} and x.shape = {npa.shape(x)}.")
    if n != k:
        last = 1.0 - np.sum(x, axis=0, keepdims=True)
        if npa.ndim(x) > 2:
            raise ValueError("The input must be one dimensional or a two dimensional matrix "
                             "containing the entries.")
        x = npa.concatenate([x, last], axis=0)
    _check(np.min(x) < 0, "Each entry in 'x' must be greater than or equal to zero.")
    _check(np.max(x) > 1, "Each entry in 'x' must be smaller or equal one.")
    a = alpha if npa.ndim(x) == 1 else npa.reshape(alpha, (-1, 1))
    _check(np.any(_and(x == 0, a < 1)),
           "Each entry in 'x' must be greater than zero if its alpha is less than one.")
    _check(np.any(np.abs(np.sum(x, axis=0) - 1.0) > 10e-10),
           "The input vector 'x' must lie within the normal simplex.")
    return x


def _lnB(alpha):
    return np.sum(sc.gammaln(alpha)) - sc.gammaln(np.sum(alpha))


def dirichlet_logpdf(x, alpha):
    a = alpha if npa.ndim(x) == 1 else npa.reshape(alpha, (-1, 1))
    return _squeeze(np.sum(sc.xlogy(a - 1.0, x), axis=0) - _lnB(alpha))


def dirichlet_entropy(alpha):
    alpha0 = np.sum(alpha)
    k = npa.shape(alpha)[0]
    return (_lnB(alpha) + (alpha0 - k) * sc.digamma(alpha0)
            - np.sum((alpha - 1.0) * sc.digamma(alpha)))


class _Dirichlet:
    @staticmethod
    def logpdf(gen, x, alpha):
        alpha = _dirichlet_alpha(alpha)
        return dirichlet_logpdf(_dirichlet_x(alpha, x), alpha)

    @staticmethod
    def pdf(gen, x, alpha):
        return np.exp(_Dirichlet.logpdf(gen, x, alpha))

    @staticmethod
    def entropy(gen, alpha):
        return dirichlet_entropy(_dirichlet_alpha(alpha))

    @staticmethod
    def mean(gen, alpha):
        alpha = _dirichlet_alpha(alpha)
        return _squeeze(alpha / np.sum(alpha))

    @staticmethod
    def var(gen, alpha):
        alpha = _dirichlet_alpha(alpha)
        alpha0 = np.sum(alpha)
        return _squeeze(alpha * (alpha0 - alpha) / (alpha0 * alpha0 * (alpha0 + 1.0)))

    @staticmethod
    def call(gen, alpha, seed=None):
        return FrozenDirichlet(alpha)


class FrozenDirichlet:
    """``scipy.stats.dirichlet(alpha)`` with a traced alpha."""

    def __init__(self, alpha):
        self.alpha = _dirichlet_alpha(alpha)

    def logpdf(self, x):
        return dirichlet_logpdf(_dirichlet_x(self.alpha, x), self.alpha)

    def pdf(self, x):
        return np.exp(self.logpdf(x))

    def entropy(self):
        return dirichlet_entropy(self.alpha)

    def mean(self):
        return _Dirichlet.mean(None, self.alpha)

    def var(self):
        return _Dirichlet.var(None, self.alpha)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise _not_covered(f"scipy.stats.dirichlet(...).{name}")


def _frozen_dirichlet_method(kind: str):
    def method(frozen, x):
        alpha = f64(frozen.alpha)
        logpdf = dirichlet_logpdf(_dirichlet_x(alpha, x), alpha)
        return logpdf if kind == "logpdf" else np.exp(logpdf)
    return method


# ====================================================================== installation

_CONTINUOUS = {"pdf": _density(False), "logpdf": _density(True),
               **{k: _distribution_function(k) for k in ("cdf", "logcdf", "sf", "logsf")},
               "ppf": _quantile("ppf"), "isf": _quantile("isf")}
_DISCRETE = {"pmf": _mass(False), "logpmf": _mass(True),
             **{k: _discrete_distribution_function(k) for k in ("cdf", "logcdf", "sf", "logsf")},
             "ppf": _refused_method("ppf"), "isf": _refused_method("isf")}
#: rv_generic methods that have no traced implementation: an error naming them
_REFUSED = ("rvs", "stats", "moment", "median", "mean", "var", "std", "interval", "expect",
            "support", "nnlf", "fit")


def install(module) -> None:
    from scipy.stats import _distn_infrastructure as infra, _multivariate as mv
    for name, method in _CONTINUOUS.items():
        divert(getattr(infra.rv_continuous, name), method, f"scipy.stats.rv_continuous.{name}")
    for name, method in _DISCRETE.items():
        divert(getattr(infra.rv_discrete, name), method, f"scipy.stats.rv_discrete.{name}")
    divert(infra.rv_generic.entropy, _entropy, "scipy.stats.rv_generic.entropy")
    for cls in (infra.rv_generic, infra.rv_continuous, infra.rv_discrete):
        for name in _REFUSED:
            fn = cls.__dict__.get(name)
            if fn is not None and callable(fn):
                divert(fn, _refused_method(name), f"scipy.stats.{cls.__name__}.{name}")
    gen = mv.multivariate_normal_gen
    for name in ("logpdf", "pdf", "entropy"):
        divert(getattr(gen, name), getattr(_MultivariateNormal, name),
               f"scipy.stats.multivariate_normal.{name}")
    divert(gen.__call__, _MultivariateNormal.call, "scipy.stats.multivariate_normal")
    for name in ("cdf", "logcdf", "rvs", "fit", "marginal"):
        divert(getattr(gen, name), _refused_method(name), f"scipy.stats.multivariate_normal.{name}")
    frozen = mv.multivariate_normal_frozen
    for name in ("logpdf", "pdf"):
        divert(getattr(frozen, name), _frozen_mvn_method(name),
               f"scipy.stats.multivariate_normal(...).{name}")
    gen = mv.dirichlet_gen
    for name in ("logpdf", "pdf", "entropy", "mean", "var"):
        divert(getattr(gen, name), getattr(_Dirichlet, name), f"scipy.stats.dirichlet.{name}")
    divert(gen.__call__, _Dirichlet.call, "scipy.stats.dirichlet")
    for name in ("cov", "rvs"):
        divert(getattr(gen, name), _refused_method(name), f"scipy.stats.dirichlet.{name}")
    for name in ("logpdf", "pdf"):
        divert(getattr(mv.dirichlet_frozen, name), _frozen_dirichlet_method(name),
               f"scipy.stats.dirichlet(...).{name}")
    from . import COVERED
    for dist, methods in covered_methods().items():
        for m in methods:
            COVERED[f"{dist}.{m}"] = "re-implemented (diffprog.scipy_api.stats)"
