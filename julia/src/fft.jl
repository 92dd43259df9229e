# The discrete Fourier transforms of `numpy.fft` (diffprog/primitives/fft.py), in JULIA
# layout like numpy_compat.jl: `dims` are the Julia dims of NumPy's `axes`, IN NumPy's
# ORDER (not sorted: an axis may come twice, and NumPy's order is the order its 1-D
# transforms run in, which these helpers follow); `sizes` is NumPy's `s`. Each 1-D
# transform zero-pads or truncates its dim to its size first, as NumPy does, and is scaled
# by `size^(-halves / 2)`: NumPy's `norm` for the unnormalized transforms of AbstractFFTs
# (`fft`, `rfft` forward; `bfft` backward; `irfft` is rescaled): `halves` is 0, 1 or 2.
#
# Derivatives: Zygote uses the rrules of AbstractFFTs' ChainRulesCore extension for `fft`,
# `bfft`, `rfft` and `irfft` with `dims` (an Int here), `getindex` with ranges for
# truncation and `cat` for padding (`pad_dim`, numpy_shapes.jl); the scale is a constant.
# FFTW provides the plans for CPU arrays (CUDA.jl's CUFFT those for CuArrays).

using AbstractFFTs: AbstractFFTs
using FFTW: FFTW

"""
    npfftn(x, dims::Tuple, sizes::Tuple, halves::Integer)

`numpy.fft.fftn(x, s, axes, norm)` (and `fft`, `fft2`): one forward transform per dim of
`dims`, the last first as NumPy runs them, over `sizes[k]` points each.
"""
function npfftn(x::AbstractArray, dims::Tuple, sizes::Tuple, halves::Integer)
    return c2c_stages(AbstractFFTs.fft, x, dims, sizes, halves)
end

"""
    npifftn(x, dims::Tuple, sizes::Tuple, halves::Integer)

`numpy.fft.ifftn(x, s, axes, norm)` (and `ifft`, `ifft2`): as [`npfftn`](@ref) with
backward transforms (`bfft`, scaled by `halves`: 2 is NumPy's default `norm`).
"""
function npifftn(x::AbstractArray, dims::Tuple, sizes::Tuple, halves::Integer)
    return c2c_stages(AbstractFFTs.bfft, x, dims, sizes, halves)
end

# `transform` (`fft` or `bfft`) along each of `dims`, the last first (NumPy's order).
function c2c_stages(transform, x::AbstractArray, dims::Tuple, sizes::Tuple, halves::Integer)
    y = x
    for k in length(dims):-1:1
        y = stage(transform, y, dims[k], sizes[k], halves)
    end
    return y
end

"""
    nprfftn(x, dims::Tuple, sizes::Tuple, halves::Integer)

`numpy.fft.rfftn(x, s, axes, norm)` (and `rfft`, `rfft2`) of a real `x`: the
real-to-complex transform along the LAST of `dims` first (it keeps `size ÷ 2 + 1`
frequencies), then complex transforms along the others, from the back.
"""
function nprfftn(x::AbstractArray{<:Real}, dims::Tuple, sizes::Tuple, halves::Integer)
    d, n = dims[end], sizes[end]
    y = stage(AbstractFFTs.rfft, x, d, n, halves)
    return c2c_stages(AbstractFFTs.fft, y, Base.front(dims), Base.front(sizes), halves)
end

"""
    npirfftn(x, dims::Tuple, sizes::Tuple, halves::Integer)

`numpy.fft.irfftn(x, s, axes, norm)` (and `irfft`, `irfft2`, `hfft` of a conjugate):
complex backward transforms along all but the last of `dims`, from the front, then the
complex-to-real transform along the last one, whose `sizes` entry is the length of the
real output; it reads the first `size ÷ 2 + 1` entries along that dim (fewer are
zero-padded) and, as NumPy, ignores the imaginary parts of the zero and Nyquist
frequencies.
"""
function npirfftn(x::AbstractArray, dims::Tuple, sizes::Tuple, halves::Integer)
    y = x
    for k in 1:(length(dims) - 1)
        y = stage(AbstractFFTs.bfft, y, dims[k], sizes[k], halves)
    end
    d, n = dims[end], sizes[end]
    # irfft (scaled by 1/n) rather than brfft: the brfft rrule of AbstractFFTs 1.5
    # multiplies by a host array, which fails for CuArrays; irfft's converts it
    y = AbstractFFTs.irfft(fit_dim(y, d, n ÷ 2 + 1), n, d)
    return scaled(y, n, halves - 2)
end

# One 1-D transform (`fft`, `bfft`, `rfft`) along `dim` over `n` points, scaled.
function stage(transform, y, dim::Integer, n::Integer, halves::Integer)
    return scaled(transform(fit_dim(y, dim, n), dim), n, halves)
end

"""
    fit_dim(x, dim, n)

`x` zero-padded (at the end) or truncated along `dim` to `n` entries.
"""
function fit_dim(x::AbstractArray, dim::Integer, n::Integer)
    m = size(x, dim)
    m == n && return x
    m > n && return x[leading_ranges(x, dim, n)...]
    return pad_dim(x, dim, 0, n - m, zero(eltype(x)))
end

leading_ranges(x::AbstractArray, dim, n) = ntuple(d -> d == dim ? (1:n) : Colon(), ndims(x))

"""
    scaled(y, n, halves)

`y` times `n^(-halves / 2)` (`halves` from -2 to 2) in the precision of `y` (a Float64
factor would promote Float32 arrays).
"""
function scaled(y::AbstractArray, n::Integer, halves::Integer)
    halves == 0 && return y
    return y .* fft_scale(real(eltype(y)), n, halves)
end

function fft_scale(::Type{T}, n::Integer, halves::Integer) where {T}
    return iseven(halves) ? T(n)^(-(halves ÷ 2)) : sqrt(T(n))^(-halves)
end

@non_differentiable leading_ranges(::Any, ::Any, ::Any)
@non_differentiable fft_scale(::Any, ::Any, ::Any)
