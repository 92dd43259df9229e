# Shape, conversion and index helpers for generated code, in JULIA layout like
# numpy_compat.jl (`dims`, shapes and ranges are already reversed and 1-based). None of
# them mutate an array Zygote differentiates, or index GPU arrays element by element: the
# arrays they fill are made under `@non_differentiable` helpers.

"""
    npreshape(x, shape::Tuple)

`numpy.reshape` with the target shape already reversed. NumPy 0-d values are Julia numbers
throughout (inputs and constants arrive as numbers; Base unwraps 0-dim broadcasts into
numbers anyway), so `shape == ()` gives a number ([`npscalar`](@ref)), and a number is
broadcast into an array of `shape` on the device of the running call.
"""
npreshape(x::AbstractArray, shape::Tuple) = reshape(x, shape)
npreshape(x::AbstractArray, ::Tuple{}) = npscalar(x)
npreshape(x::Number, shape::Tuple) = npbroadcast_to(x, shape)
npreshape(x::Number, ::Tuple{}) = x

"""
    npscalar(x)

The single element of `x` (a one-element array, e.g. `x[2:2]`) as a number: NumPy's
reshape to `()`. `sum` for real and complex floats, which is differentiable (ChainRules'
`sum` rule, itself differentiable) and reads GPU arrays without scalar indexing; other
eltypes keep their type (`sum` would turn `Bool`s and small integers into `Int`).
"""
npscalar(x::Number) = x
npscalar(x::AbstractArray{<:FloatLike}) = (check_one_element(x); sum(x))
npscalar(x::AbstractArray{T}) where {T} = (check_one_element(x); convert(T, sum(x)))

function check_one_element(x::AbstractArray)
    length(x) == 1 && return nothing
    throw(DimensionMismatch("cannot make a 0-d value from an array of size $(size(x))"))
end

"""
    npbroadcast_to(x, shape::Tuple)

`numpy.broadcast_to(x, shape)`: NumPy's right-aligned broadcasting is Julia's
left-aligned broadcasting on reversed dims, so adding zeros of the target shape does it.
"""
npbroadcast_to(x, shape::Tuple) = x .+ zeros_like(x, shape)
function npbroadcast_to(x::Union{Bool, AbstractArray{Bool}}, shape::Tuple)
    return x .| falses_like(x, shape)
end

zeros_like(x::AbstractArray, shape) = fill!(similar(x, eltype(x), shape), zero(eltype(x)))
zeros_like(x::Number, shape) = fill!(new_array(typeof(x), Tuple(shape)), zero(x))
falses_like(x::AbstractArray, shape) = fill!(similar(x, Bool, shape), false)
falses_like(::Bool, shape) = fill!(new_array(Bool, Tuple(shape)), false)

"""
    convert_eltype(T, x)

`x.astype(T)`: floats and complex numbers convert (and carry gradients back), integers
truncate toward zero as NumPy does, `Bool` tests for nonzero. From complex to a real type
NumPy keeps the real part (with a `ComplexWarning`), where Julia's `convert` would throw an
`InexactError` for a nonzero imaginary part: so the real part is taken first (its cotangent
is the real cotangent, as np.real's).
"""
convert_eltype(::Type{T}, x) where {T <: AbstractFloat} = T.(real_part(x))
convert_eltype(::Type{T}, x) where {T <: Complex} = T.(x)
convert_eltype(::Type{T}, x) where {T <: Integer} = to_integer(T, real_part(x))
convert_eltype(::Type{Bool}, x) = nonzero(x) # a complex value is true when either part is

real_part(x::Union{Real, AbstractArray{<:Real}}) = x
real_part(x) = real.(x)

to_integer(::Type{T}, x) where {T} = trunc.(T, x)
nonzero(x) = x .!= 0

"""
    stop_gradient(x)

`x` itself, with no derivative (`diffprog.stop_gradient`).
"""
stop_gradient(x) = x

"""
    nppad(x, pad_width::Tuple, value)

`numpy.pad(x, pad_width, constant_values=value)`; `pad_width` holds `(before, after)` per
Julia dim.
"""
function nppad(x::AbstractArray, pad_width::Tuple, value)
    padded = x
    for (dim, (before, after)) in enumerate(pad_width)
        padded = pad_dim(padded, dim, before, after, value)
    end
    return padded
end

function pad_dim(x::AbstractArray, dim::Int, before::Integer, after::Integer, value)
    before == 0 && after == 0 && return x
    blocks = (filled_block(x, dim, before, value), x, filled_block(x, dim, after, value))
    return cat(blocks...; dims = dim)
end

function filled_block(x::AbstractArray, dim::Int, n::Integer, value)
    shape = ntuple(d -> d == dim ? Int(n) : size(x, d), ndims(x))
    return fill!(similar(x, shape), value)
end

"""
    npunslice(g, ranges::Tuple, shape::Tuple)

The adjoint of `x[ranges...]` (basic slicing, one range per Julia dim): an array of
`shape` holding `g` at the positions the ranges picked and zeros elsewhere. Built from
`reverse`, `cat` and `reshape` (no `setindex!`), so it is differentiable and runs on GPUs.
"""
npunslice(g::Number, ::Tuple{}, ::Tuple{}) = g # slicing a 0-d value is the value
function npunslice(g::AbstractArray, ranges::Tuple, shape::Tuple)
    out = g
    for (dim, range) in enumerate(ranges)
        out = unslice_dim(out, dim, range, shape[dim])
    end
    return out
end

function unslice_dim(g::AbstractArray, dim::Int, range::AbstractRange, n::Integer)
    range == 1:n && return g
    if isempty(range)
        return filled_block(g, dim, n, zero(eltype(g)))
    end
    if step(range) < 0
        g = reverse(g; dims = dim)
        range = reverse(range)
    end
    spread = spread_dim(g, dim, step(range))
    return pad_dim(spread, dim, first(range) - 1, n - last(range), zero(eltype(g)))
end

# Put `stride - 1` zeros between consecutive slices of `g` along `dim`.
function spread_dim(g::AbstractArray, dim::Int, stride::Integer)
    stride == 1 && return g
    before = prod(size(g)[1:(dim - 1)]; init = 1)
    after = prod(size(g)[(dim + 1):end]; init = 1)
    m = size(g, dim)
    g4 = reshape(g, before, 1, m, after)
    gaps = filled_block(g4, 2, stride - 1, zero(eltype(g)))
    interleaved = reshape(cat(g4, gaps; dims = 2), before, stride * m, after)
    kept = interleaved[:, 1:(stride * (m - 1) + 1), :]
    shape = (size(g)[1:(dim - 1)]..., size(kept, 2), size(g)[(dim + 1):end]...)
    return reshape(kept, shape)
end

"""
    npargmax(x; dim), npargmin(x; dim)

`numpy.argmax(x, axis)` / `argmin`: 0-based positions along Julia dim `dim` (first
occurrence wins), with that dim dropped.
"""
npargmax(x::AbstractArray; dim::Integer) = positions_along(argmax(x; dims = dim), dim)
npargmin(x::AbstractArray; dim::Integer) = positions_along(argmin(x; dims = dim), dim)

positions_along(found, dim::Integer) = dropdims(map(i -> i[dim] - 1, found); dims = dim)

"""
    npargsort(x; dim)

`numpy.argsort(x, axis, kind="stable")`: 0-based positions that sort each slice along
Julia dim `dim`; NaN sorts last as in NumPy. CPU arrays only (`mapslices`).
"""
npargsort(x::AbstractArray; dim::Integer) = mapslices(v -> sortperm(v) .- 1, x; dims = dim)

@non_differentiable zeros_like(::Any, ::Any)
@non_differentiable falses_like(::Any, ::Any)
@non_differentiable filled_block(::Any, ::Any, ::Any, ::Any)
@non_differentiable to_integer(::Any, ::Any)
@non_differentiable nonzero(::Any)
@non_differentiable npscalar(::AbstractArray{<:Integer})
@non_differentiable npcumprod(::AbstractArray{<:Integer})
@non_differentiable check_one_element(::Any)
@non_differentiable stop_gradient(::Any)
@non_differentiable npargmax(::Any)
@non_differentiable npargmin(::Any)
@non_differentiable npargsort(::Any)
