# NumPy-compatible helpers for generated code. Everything works in JULIA layout: the code
# generator has already reversed the axes, so `dims` below are Julia dims (NumPy axis `k`
# of an `n`-d array is Julia dim `n - k`). None of these functions mutate their inputs or
# index GPU arrays element by element. Derivative rules are in rules.jl.

# The values that carry derivatives: real or complex floating point. (Integers and Bools
# get none; rules.jl and control.jl dispatch on this.)
const FloatLike = Union{AbstractFloat, Complex{<:AbstractFloat}}

# ---------------------------------------------------------------------------------------
# Reductions

"""
    reduced_dims(x, dims) -> Tuple{Vararg{Int}}

Normalize `dims` (`:`, an integer or a tuple of integers, Julia dims) to a sorted tuple of
distinct dims of `x`.
"""
reduced_dims(x, ::Colon) = Tuple(1:ndims(x))
reduced_dims(x, dim::Integer) = reduced_dims(x, (dim,))
function reduced_dims(x, dims::Union{Tuple, AbstractVector})
    normalized = Tuple(sort!(unique!([Int(d) for d in dims])))
    for d in normalized
        1 <= d <= ndims(x) ||
            throw(ArgumentError(
                "dim $d is out of range for an array with $(ndims(x)) dims",
            ))
    end
    return normalized
end

covers_all_dims(x, dims::Tuple) = length(dims) == ndims(x)
reduced_length(x, dims::Tuple) = prod((size(x, d) for d in dims); init = 1)

# NumPy drops reduced axes unless keepdims; reducing every axis gives a scalar.
function reduce_like_numpy(whole, partial, x::AbstractArray, dims, keepdims::Bool)
    d = reduced_dims(x, dims)
    isempty(d) && return x
    covers_all_dims(x, d) && !keepdims && return whole(x)
    kept = partial(x, d)
    return keepdims ? kept : dropdims(kept; dims = d)
end

"""
    npsum(x; dims = :, keepdims = false)

`numpy.sum(x, axis, keepdims=keepdims)` in Julia layout. Reducing all dims without
`keepdims` returns a number; `dims = ()` returns `x` unchanged (as NumPy's `axis=()`).
"""
npsum(x::Number; dims = :, keepdims::Bool = false) = x
function npsum(x::AbstractArray; dims = :, keepdims::Bool = false)
    return reduce_like_numpy(sum, (a, d) -> sum(a; dims = d), x, dims, keepdims)
end

"""
    npmean(x; dims = :, keepdims = false)

`numpy.mean` in Julia layout (same conventions as [`npsum`](@ref)).
"""
npmean(x::Number; dims = :, keepdims::Bool = false) = x
function npmean(x::AbstractArray; dims = :, keepdims::Bool = false)
    whole = a -> sum(a) / length(a)
    partial = (a, d) -> sum(a; dims = d) ./ reduced_length(a, d)
    return reduce_like_numpy(whole, partial, x, dims, keepdims)
end

"""
    npprod(x; dims = :, keepdims = false)

`numpy.prod` in Julia layout (same conventions as [`npsum`](@ref)). Its derivative is
exact at zeros and runs on GPU arrays: the rule in rules.jl replaces ChainRules' `prod`
rule, whose zero handling loops over elements (scalar indexing on a GPU).
"""
npprod(x::Number; dims = :, keepdims::Bool = false) = x
function npprod(x::AbstractArray; dims = :, keepdims::Bool = false)
    whole = a -> npscalar(prod_kept(a, Tuple(1:ndims(a))))
    return reduce_like_numpy(whole, prod_kept, x, dims, keepdims)
end

# `prod` over `dims`, keeping them (length 1); the rrule is in rules.jl.
prod_kept(x::AbstractArray, dims::Tuple) = prod(x; dims = dims)

"""
    npcumprod(x; dims)

`numpy.cumprod` along Julia dim `dims`. Its derivative (rules.jl) is exact at zeros to
second order and runs on GPU arrays, unlike ChainRules' `cumprod` rule, which loops over
elements.
"""
npcumprod(x::AbstractArray; dims::Integer) = cumprod(x; dims = Int(dims))

"""
    npmax(x; dims = :, keepdims = false)

`numpy.max` (`amax`) in Julia layout. NaN propagates as in NumPy. The gradient is shared
equally among tied maxima (the convention of JAX's reduce_max).
"""
npmax(x::Number; dims = :, keepdims::Bool = false) = x
npmax(x::AbstractArray; dims = :, keepdims::Bool = false) = extremum(
    maximum,
    x,
    reduced_dims(x, dims),
    keepdims,
)

"""
    npmin(x; dims = :, keepdims = false)

`numpy.min` (`amin`) in Julia layout; ties share the gradient as in [`npmax`](@ref).
"""
npmin(x::Number; dims = :, keepdims::Bool = false) = x
npmin(x::AbstractArray; dims = :, keepdims::Bool = false) = extremum(
    minimum,
    x,
    reduced_dims(x, dims),
    keepdims,
)

# `op` is `maximum` or `minimum`; positional so that one rrule covers both.
function extremum(op, x::AbstractArray, dims::Tuple, keepdims::Bool)
    return reduce_like_numpy(op, (a, d) -> op(a; dims = d), x, dims, keepdims)
end

# ---------------------------------------------------------------------------------------
# Elementwise

"""
    npmaximum(x, y)

`numpy.maximum` (broadcasting, NaN propagates). At ties the gradient is split 1/2 each:
the central difference of NumPy's function there, and diffprog's Python rule (one
convention on every engine). Complex values are ordered as NumPy orders them
(lexicographically, real part first; see [`numpy_max`](@ref)); Julia's `max` has no
method for them.
"""
npmaximum(x, y) = numpy_max.(x, y)

"""
    npminimum(x, y)

`numpy.minimum` (broadcasting, NaN propagates). At ties the gradient is split 1/2 each, as
for [`npmaximum`](@ref); complex values in NumPy's order.
"""
npminimum(x, y) = numpy_min.(x, y)

"""
    numpy_max(a, b), numpy_min(a, b), numpy_greater(a, b), numpy_less(a, b)

NumPy's `maximum`, `minimum`, `>` and `<` of two numbers. Real numbers as Julia's `max`,
`min`, `>`, `<`. Complex numbers (a real operand is promoted) in NumPy's lexicographic
order, with NumPy's NaN handling (numpy/_core/src/umath/loops.c.src, `CGE`/`CGT`):
`a ≥ b` when `re(a) > re(b)` and neither imaginary part is NaN, or `re(a) == re(b)` and
`im(a) ≥ im(b)`; `maximum` keeps `a` when `a` has a NaN part or `a ≥ b`, else `b` (so a NaN
in either operand propagates).
"""
numpy_max(a::Real, b::Real) = max(a, b)
numpy_max(a::Number, b::Number) = numpy_max(promote(a, b)...)
numpy_max(a::Complex, b::Complex) = has_nan(a) || complex_ge(a, b) ? a : b
numpy_min(a::Real, b::Real) = min(a, b)
numpy_min(a::Number, b::Number) = numpy_min(promote(a, b)...)
numpy_min(a::Complex, b::Complex) = has_nan(a) || complex_ge(b, a) ? a : b
numpy_greater(a::Real, b::Real) = a > b
numpy_greater(a::Number, b::Number) = numpy_greater(promote(a, b)...)
function numpy_greater(a::Complex, b::Complex)
    return (real(a) > real(b) && !isnan(imag(a)) && !isnan(imag(b))) ||
        (real(a) == real(b) && imag(a) > imag(b))
end
numpy_less(a::Number, b::Number) = numpy_greater(b, a)

has_nan(z::Complex) = isnan(real(z)) || isnan(imag(z))
function complex_ge(a::Complex, b::Complex)
    return (real(a) > real(b) && !isnan(imag(a)) && !isnan(imag(b))) ||
        (real(a) == real(b) && imag(a) >= imag(b))
end

"""
    npclip(x, lo, hi)

`numpy.clip(x, lo, hi)`: `npminimum(npmaximum(x, lo), hi)`, so `hi` wins when `lo > hi`,
as in NumPy. `lo` and `hi` are numbers, arrays (broadcast) or `nothing` (no bound). The
gradient flows to `x` inside `(lo, hi)`, to the bound taken outside, and is split 1/2 each
at `x == lo` or `x == hi` (the rules of `npmaximum`/`npminimum`).
"""
npclip(x, lo, hi) = npminimum(npmaximum(x, lo), hi)
npclip(x, ::Nothing, hi) = npminimum(x, hi)
npclip(x, lo, ::Nothing) = npmaximum(x, lo)
npclip(x, ::Nothing, ::Nothing) = x

"""
    logaddexp(a::Real, b::Real)

`log(exp(a) + exp(b))` without overflow: `max(a, b) + log1p(exp(-abs(a - b)))`, with
`logaddexp(-Inf, -Inf) == -Inf` and infinities handled as NumPy does.
"""
function logaddexp(a::Real, b::Real)
    m = max(a, b)
    isinf(m) && return m
    return m + log1p(exp(-abs(a - b)))
end

"""
    nplogaddexp(x, y)

`numpy.logaddexp` (broadcasting). Derivatives `exp(x - out)` and `exp(y - out)`, which
never overflow; at `x == y` each gets one half.
"""
nplogaddexp(x, y) = logaddexp.(x, y)

"""
    npwhere(cond, x, y)

`numpy.where(cond, x, y)` (broadcasting); `cond` is a `Bool` or an array of `Bool`.
"""
npwhere(cond, x, y) = ifelse.(cond, x, y)

# ---------------------------------------------------------------------------------------
# Linear algebra

"""
    npmatmul(a, b)

`a @ b` of NumPy for 1-d and 2-d operands, given in Julia layout (each matrix is the
transpose of its NumPy counterpart): matrix-matrix is `b * a`, vector-matrix `b * a`,
matrix-vector `transpose(a) * b`, vector-vector the unconjugated dot product. Stacked
(batched) operands are not supported.
"""
npmatmul(a::AbstractMatrix, b::AbstractMatrix) = b * a
npmatmul(a::AbstractVector, b::AbstractMatrix) = b * a
npmatmul(a::AbstractMatrix, b::AbstractVector) = transpose(a) * b
npmatmul(a::AbstractVector, b::AbstractVector) = transpose(a) * b
function npmatmul(a::AbstractArray, b::AbstractArray)
    throw(ArgumentError(
        "npmatmul supports 1-d and 2-d operands only; got $(ndims(a))-d and $(ndims(b))-d",
    ))
end

"""
    npslogdet(A::AbstractMatrix) -> (sign, logabsdet)

`numpy.linalg.slogdet` for one square matrix (in NumPy order: sign first). Julia receives
the transpose of the NumPy matrix, which has the same determinant. For a real matrix the
sign is ±1; for a complex one it is the phase `det / |det|` (a complex number of modulus 1,
as NumPy's), and `logabsdet` is real for both. Singular matrices give `(0, -Inf)`.
Computed from an LU factorization by reductions over its diagonal, so it also runs on GPU
matrices (`LinearAlgebra.logabsdet` loops over elements).
"""
function npslogdet(A::AbstractMatrix{<:Number})
    F = LinearAlgebra.lu(A; check = false)
    diagonal = F.factors[LinearAlgebra.diagind(F.factors)]
    T = float(eltype(A))
    logabs = sum(v -> log(abs(v)), diagonal; init = zero(real(T)))
    # `sign(v)` is v / |v| for complex v (and 0 at 0), as NumPy's phase
    sign_ = prod(sign, diagonal; init = one(T)) * permutation_sign(F.ipiv)
    # A zero pivot times an odd permutation gives -0.0; NumPy reports 0.0.
    return (iszero(sign_) ? zero(sign_) : sign_, logabs)
end

# Each pivot entry that differs from its own row index is one row swap.
permutation_sign(ipiv::AbstractVector) = isodd(sum(ipiv .!= (1:length(ipiv)); init = 0)) ?
    -1 :
    1

# ---------------------------------------------------------------------------------------
# Indexing: gather, its adjoint scatter-add, one-hot

"""
    nptake(x, indices; dim)

`numpy.take(x, indices, axis)` in Julia layout: `dim` is the Julia dim, `indices` are
NumPy indices (0-based, negative counts from the end, out-of-range wraps as
`mode="wrap"`). An integer array of indices gives Julia dims
`(size(x)[1:dim-1]..., size(indices)..., size(x)[dim+1:end]...)`; a single integer index
drops the dim. The gradient is a scatter-add built from a one-hot matrix product (no
mutation, repeated indices accumulate).
"""
function nptake(x::AbstractArray, indices::AbstractArray{<:Integer}; dim::Integer)
    return take_positions(x, wrap_indices(indices, size(x, dim)), Int(dim))
end
# `selectdim` with a range is a view with a Zygote rule; `copy` makes it a dense array
# again. For 1-d `x` the result is a NumPy 0-d value, i.e. a number.
function nptake(x::AbstractArray, index::Integer; dim::Integer)
    position = mod(index, size(x, dim)) + 1
    picked = copy(selectdim(x, Int(dim), position:position))
    ndims(x) == 1 && return npscalar(picked)
    return dropdims(picked; dims = Int(dim))
end

"""
    npscatter_add(g, indices, n; dim)

The adjoint of [`nptake`](@ref): an array shaped like `x` (length `n` along `dim`) whose
slices are the sums of the slices of `g` taken by each index; NumPy's
`np.add.at(zeros, idx, g)` along an axis. `indices` follow NumPy conventions as in
`nptake`. Built as a one-hot matrix product, without mutation.
"""
function npscatter_add(
    g::AbstractArray,
    indices::AbstractArray{<:Integer},
    n::Integer;
    dim::Integer,
)
    return scatter_positions(g, wrap_indices(indices, n), Int(n), Int(dim))
end

"""
    nponehot(indices, n, T = Float64)

One-hot encoding: Julia dims `(n, size(indices)...)`, i.e. NumPy shape
`indices.shape + (n,)` as `numpy.eye(n)[indices]`. `indices` follow NumPy conventions.
"""
function nponehot(
    indices::AbstractArray{<:Integer},
    n::Integer,
    ::Type{T} = Float64,
) where {T}
    positions = wrap_indices(indices, n)
    return reshape(onehot_matrix(vec(positions), Int(n), T), Int(n), size(indices)...)
end

# NumPy index (0-based, negatives from the end) -> Julia position (1-based).
wrap_indices(indices, n::Integer) = mod.(indices, n) .+ 1

function take_positions(x::AbstractArray, positions::AbstractArray{<:Integer}, dim::Int)
    selector = ntuple(d -> d == dim ? vec(positions) : Colon(), ndims(x))
    picked = x[selector...]
    return reshape(
        picked,
        (size(x)[1:(dim - 1)]..., size(positions)..., size(x)[(dim + 1):end]...),
    )
end

function scatter_positions(
    g::AbstractArray,
    positions::AbstractArray{<:Integer},
    n::Int,
    dim::Int,
)
    before = size(g)[1:(dim - 1)]
    after = size(g)[(dim + ndims(positions)):end]
    m = length(positions)
    onehot = onehot_matrix(vec(positions), n, eltype(g)) # n × m
    g3 = reshape(g, prod(before; init = 1), m, prod(after; init = 1))
    scattered = left_multiply_middle(onehot, g3)
    return reshape(scattered, (before..., n, after...))
end

# O[i, j] = (positions[j] == i), made by broadcasting so it is built on the GPU for GPU
# positions.
function onehot_matrix(positions::AbstractVector, n::Int, ::Type{T}) where {T}
    return ifelse.((1:n) .== reshape(positions, 1, length(positions)), one(T), zero(T))
end

# out[p, i, q] = sum_j g3[p, j, q] * O[i, j]
function left_multiply_middle(O::AbstractMatrix, g3::AbstractArray{<:Any, 3})
    P, m, Q = size(g3)
    P == 1 && return reshape(O * reshape(g3, m, Q), 1, size(O, 1), Q)
    moved = reshape(permutedims(g3, (2, 1, 3)), m, P * Q)
    product = reshape(O * moved, size(O, 1), P, Q)
    return permutedims(product, (2, 1, 3))
end
