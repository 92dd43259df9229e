# Scalar helpers for the scipy.special entries (diffprog/primitives/special.py). Generated
# code broadcasts them, `DiffProg.npxlogy.(x, y)`, and calls SpecialFunctions.jl through
# `DiffProg.SpecialFunctions` where SciPy's function is SpecialFunctions' own (erf, gamma,
# digamma, polygamma, besseli, logbeta, ...). SciPy's conventions hold: xlogy(0, y) is 0
# unless y is NaN; the log of a negative number is NaN (Julia's `log` throws instead).

_nplog(y::Real) = y < zero(y) ? oftype(float(y), NaN) : log(y)
_nplog1p(y::Real) = y < -one(y) ? oftype(float(y), NaN) : log1p(y)

"""
    npexpit(x)

scipy.special.expit: the logistic function `1 / (1 + exp(-x))`.
"""
npexpit(x::Real) = inv(one(x) + exp(-x))

"""
    nplogit(x)

scipy.special.logit: `log(x / (1 - x))`, NaN outside `[0, 1]`.
"""
nplogit(x::Real) = _nplog(x / (one(x) - x))

"""
    nplog_expit(x)

scipy.special.log_expit: `log(expit(x))` without overflow for large `|x|`.
"""
nplog_expit(x::Real) = min(x, zero(x)) - log1p(exp(-abs(x)))

"""
    npxlogy(x, y)

scipy.special.xlogy: `x * log(y)`, 0 where `x == 0` and `y` is not NaN.
"""
npxlogy(x::Real, y::Real) = iszero(x) && !isnan(y) ? zero(x * y) : x * _nplog(y)

"""
    npxlog1py(x, y)

scipy.special.xlog1py: `x * log1p(y)`, 0 where `x == 0` and `y` is not NaN.
"""
npxlog1py(x::Real, y::Real) = iszero(x) && !isnan(y) ? zero(x * y) : x * _nplog1p(y)

"""
    npgammaln(x)

scipy.special.gammaln: `log(abs(gamma(x)))`.
"""
function npgammaln(x::Real)
    return x > zero(x) ?
        SpecialFunctions.loggamma(x) :
        first(SpecialFunctions.logabsgamma(x))
end

"""
    npndtr(x)

scipy.special.ndtr: the standard normal distribution function.
"""
npndtr(x::Real) = SpecialFunctions.erfc(-x / sqrt(oftype(float(x), 2))) / 2

"""
    nplog_ndtr(x)

scipy.special.log_ndtr: `log(ndtr(x))`, accurate in the lower tail (through `logerfc`).
"""
function nplog_ndtr(x::Real)
    two = oftype(float(x), 2)
    return SpecialFunctions.logerfc(-x / sqrt(two)) - log(two)
end

"""
    npndtri(p)

scipy.special.ndtri: the inverse of [`npndtr`](@ref).
"""
npndtri(p::Real) = -sqrt(oftype(float(p), 2)) * SpecialFunctions.erfcinv(2 * p)
