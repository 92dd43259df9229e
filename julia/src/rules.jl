# ChainRulesCore rules for the helpers where Zygote cannot differentiate the code itself,
# would pick an inconvenient subgradient, or would mutate/scalar-index (slow or broken on
# GPU). Every pullback is written with broadcasts, reductions and products only, so Zygote
# can differentiate it again (hessians) and it runs on GPU arrays.
#
# Cotangents here are ChainRules' (Zygote's), not JAX's: for `y = f(x)` with complex values
# the pullback is `x̄ = conj(∂y/∂x) ȳ` for holomorphic `f`, i.e. the adjoint, not the
# transpose (ChainRulesCore docs/src/maths/complex.md). derivatives.jl converts at the
# boundary. `conj_values` is the identity on real arrays, so the real rules are unchanged.

# Integer bookkeeping: no derivative, and keeps Zygote from tracing into mutation.
@non_differentiable reduced_dims(::Any, ::Any)
@non_differentiable reduced_length(::Any, ::Any)
@non_differentiable wrap_indices(::Any, ::Any)
@non_differentiable onehot_matrix(::Any, ::Any, ::Any)
@non_differentiable nponehot(::Any...)
@non_differentiable zero_gradient(::Any)
@non_differentiable check_scalar(::Any)

"""
    unbroadcast_to(x, g)

Sum the cotangent `g` of a broadcast result down to the shape of the operand `x` (a number
or an array), the reverse of broadcasting's expansion of length-1 and missing dims.
"""
unbroadcast_to(x::Number, g::Number) = real_if(typeof(x), g)
unbroadcast_to(x::Number, g::AbstractArray) = real_if(typeof(x), sum(g))
unbroadcast_to(x::AbstractArray, g::Number) = zero(x) .+ real_if(eltype(x), g)
function unbroadcast_to(x::AbstractArray, g::AbstractArray)
    g = real_values(x, g) # a real operand's cotangent is real (ProjectTo{<:Real})
    size(g) == size(x) && return g
    expanded = Tuple(d for d in 1:ndims(g) if size(x, d) == 1 && size(g, d) != 1)
    summed = isempty(expanded) ? g : sum(g; dims = expanded)
    return reshape(summed, size(x))
end

# `g` (an array or a number) as a cotangent of the array `x`: its real part for a real `x`
real_values(x::AbstractArray{<:Real}, g::AbstractArray{<:Complex}) = real.(g)
real_values(x::AbstractArray{<:Real}, g::Complex) = real(g)
real_values(x, g) = g

"""
    conj_values(x)

`conj.(x)` for complex arrays and numbers, `x` itself for real ones (no copy).
"""
conj_values(x::Union{Real, AbstractArray{<:Real}}) = x
conj_values(x::Number) = conj(x)
conj_values(x::AbstractArray) = conj.(x)

# 1 where `a` was chosen, 0 where the other operand was, 1/2 at a tie.
choice_weight(a_wins::Bool, tie::Bool, ::Type{T}) where {T} = ifelse(
    tie,
    T(1 / 2),
    ifelse(a_wins, one(T), zero(T)),
)

weight_type(args...) = real(float(promote_type(map(eltype, args)...)))

# --- npmaximum / npminimum (and so npclip): ties split 1/2 each ------------------------------------------
# The weights are real (0, 1/2, 1), so the rule is the same in ChainRules' convention and
# JAX's, for complex operands too (NumPy's order, numpy_greater).

function ChainRulesCore.rrule(::typeof(npmaximum), x, y)
    return elementwise_choice_rrule(npmaximum(x, y), x, y, numpy_greater)
end

function ChainRulesCore.rrule(::typeof(npminimum), x, y)
    return elementwise_choice_rrule(npminimum(x, y), x, y, numpy_less)
end

function elementwise_choice_rrule(out, x, y, x_wins)
    T = weight_type(x, y)
    weight_x = choice_weight.(x_wins.(x, y), x .== y, T)
    function choice_pullback(Δ)
        ḡ = unthunk(Δ)
        ḡ isa AbstractZero && return (NoTangent(), ZeroTangent(), ZeroTangent())
        dx = unbroadcast_to(x, ḡ .* weight_x)
        dy = unbroadcast_to(y, ḡ .* (1 .- weight_x))
        return (NoTangent(), dx, dy)
    end
    return out, choice_pullback
end

# --- npmax / npmin: ties share the cotangent ----------------------------------------------

function ChainRulesCore.rrule(
    ::typeof(extremum),
    op,
    x::AbstractArray,
    dims::Tuple,
    keepdims::Bool,
)
    out = extremum(op, x, dims, keepdims)
    kept = isempty(dims) ? x : op(x; dims = dims)
    hits = x .== kept
    counts = sum(hits; dims = dims)
    function extremum_pullback(Δ)
        ḡ = unthunk(Δ)
        ḡ isa AbstractZero &&
            return (NoTangent(), NoTangent(), ZeroTangent(), NoTangent(), NoTangent())
        ḡ_kept = ḡ isa Number ? ḡ : reshape(ḡ, size(kept))
        dx = hits .* (ḡ_kept ./ counts)
        return (NoTangent(), NoTangent(), dx, NoTangent(), NoTangent())
    end
    return out, extremum_pullback
end

# --- npprod, npcumprod: exact at zeros, no scalar indexing ----------------------------------
# ChainRules' `prod` and `cumprod` rules handle zeros (and `cumprod` everything) by looping
# over elements (ChainRules src/rulesets/Base/mapreduce.jl: `∇prod_one_zero!`,
# `∇prod_dims!`, `∇cumprod!`), which is scalar indexing on a GPU. These rules use masks,
# broadcasts and products of zero-free arrays only, so they run on GPUs and Zygote can
# differentiate them again: first and second derivatives are exact at zeros (the same
# construction as diffprog's own VJPs of reduce_prod and cumprod in primitives.py).

@non_differentiable prod_kept(::AbstractArray{<:Integer}, ::Any)

function ChainRulesCore.rrule(
    ::typeof(prod_kept),
    x::AbstractArray{<:FloatLike},
    dims::Tuple,
)
    function prod_kept_pullback(Δ)
        ḡ = unthunk(Δ)
        ḡ isa AbstractZero && return (NoTangent(), ZeroTangent(), NoTangent())
        # complex x: the product is holomorphic, so its pullback conjugates the partials
        return (NoTangent(), ḡ .* conj_values(prod_partials(x, dims)), NoTangent())
    end
    return prod_kept(x, dims), prod_kept_pullback
end

"""
    prod_partials(x, dims)

`∂ prod(x; dims) / ∂x`: at each element the product of the other elements of its slice.
Per slice, by the number of zeros in it: none, `p ./ x` (`p` the product of the slice);
one, `p` at the zero and `0` elsewhere; two, `0` everywhere; where `p` is then the product of
the nonzero elements. The zeros' own values enter as factors that are `0` (`zero_sum`), so
that the next derivative is exact too.
"""
function prod_partials(x::AbstractArray, dims::Tuple)
    T = eltype(x)
    zero_at = iszero.(x)
    zeros_in_slice = sum(zero_at; dims = dims)
    safe = ifelse.(zero_at, one(T), x)
    nonzero_product = prod(safe; dims = dims)
    zero_sum = sum(ifelse.(zero_at, x, zero(T)); dims = dims)
    no_zero = nonzero_product ./ safe
    one_zero = ifelse.(zero_at, nonzero_product, zero_sum .* no_zero)
    two_zeros = ifelse.(zero_at, (zero_sum .- x) .* nonzero_product, zero(T))
    return ifelse.(
        zeros_in_slice .== 0,
        no_zero,
        ifelse.(
            zeros_in_slice .== 1,
            one_zero,
            ifelse.(zeros_in_slice .== 2, two_zeros, zero(T)),
        ),
    )
end

function ChainRulesCore.rrule(
    ::typeof(npcumprod),
    x::AbstractArray{<:FloatLike};
    dims::Integer,
)
    # `npcumprod`, not `cumprod`: differentiating this rule again must meet this rule
    y = npcumprod(x; dims = dims)
    function npcumprod_pullback(Δ)
        ḡ = unthunk(Δ)
        ḡ isa AbstractZero && return (NoTangent(), ZeroTangent())
        # every partial is a product of elements of x, so conj(partial) is the same
        # product of the conjugates: the rule of conj.(x) (holomorphic, as for npprod)
        d = cumprod_cotangent(dense_cotangent(ḡ), conj_values(x), conj_values(y), Int(dims))
        return (NoTangent(), d)
    end
    return y, npcumprod_pullback
end

"""
    cumprod_cotangent(g, x, y, dim)

The cotangent of `x` for `y = cumprod(x; dims = dim)`. Dividing by `x` is used at nonzero
elements only; the first and second zero of a slice use running products that read that
zero as 1 (`skip_first`, `skip_second`); at later zeros every term holds two other zeros,
so the derivative is 0 and stays 0 under one more differentiation.
"""
function cumprod_cotangent(g, x::AbstractArray, y::AbstractArray, dim::Int)
    T = eltype(y)
    zero_at = iszero.(x)
    zeros_so_far = cumsum(zero_at; dims = dim)
    first_zero = zero_at .& (zeros_so_far .== 1)
    second_zero = zero_at .& (zeros_so_far .== 2)
    safe = ifelse.(zero_at, one(T), x)
    skip_first = npcumprod(ifelse.(first_zero, one(T), x); dims = dim)
    skip_second = npcumprod(ifelse.(second_zero, one(T), x); dims = dim)
    at_nonzero = ifelse.(zero_at, zero(T), reverse_cumsum(g .* y, dim) ./ safe)
    at_first = ifelse.(first_zero, reverse_cumsum(g .* skip_first, dim), zero(T))
    at_second = ifelse.(second_zero, reverse_cumsum(g .* skip_second, dim), zero(T))
    return at_nonzero .+ at_first .+ at_second
end

# sum over the positions at and after each one along `dim`
function reverse_cumsum(a::AbstractArray, dim::Int)
    return reverse(cumsum(reverse(a; dims = dim); dims = dim); dims = dim)
end

# --- logaddexp -------------------------------------------------------------------------------

# d out / d a = exp(a - out) <= 1, with the two corner cases NumPy's formula leaves open:
# equal operands (including both infinite) get 1/2, and an infinite result goes wholly to
# the operand equal to it.
function logaddexp_weight(a::Real, b::Real, out::Real)
    T = float(typeof(out))
    a == b && return T(1 / 2)
    isinf(out) && return ifelse(a == out, one(T), zero(T))
    return exp(a - out)
end

function ChainRulesCore.rrule(::typeof(logaddexp), a::Real, b::Real)
    out = logaddexp(a, b)
    weight_a = logaddexp_weight(a, b, out)
    function logaddexp_pullback(Δ)
        ḡ = unthunk(Δ)
        return (NoTangent(), ḡ * weight_a, ḡ * (1 - weight_a))
    end
    return out, logaddexp_pullback
end

function ChainRulesCore.rrule(::typeof(nplogaddexp), x, y)
    out = nplogaddexp(x, y)
    weight_x = logaddexp_weight.(x, y, out)
    function nplogaddexp_pullback(Δ)
        ḡ = unthunk(Δ)
        ḡ isa AbstractZero && return (NoTangent(), ZeroTangent(), ZeroTangent())
        dx = unbroadcast_to(x, ḡ .* weight_x)
        dy = unbroadcast_to(y, ḡ .* (1 .- weight_x))
        return (NoTangent(), dx, dy)
    end
    return out, nplogaddexp_pullback
end

# --- npwhere ---------------------------------------------------------------------------------

function ChainRulesCore.rrule(::typeof(npwhere), cond, x, y)
    function npwhere_pullback(Δ)
        ḡ = unthunk(Δ)
        ḡ isa AbstractZero &&
            return (NoTangent(), NoTangent(), ZeroTangent(), ZeroTangent())
        dx = unbroadcast_to(x, ifelse.(cond, ḡ, zero(eltype(ḡ))))
        dy = unbroadcast_to(y, ifelse.(cond, zero(eltype(ḡ)), ḡ))
        return (NoTangent(), NoTangent(), dx, dy)
    end
    return npwhere(cond, x, y), npwhere_pullback
end

# --- npslogdet -------------------------------------------------------------------------------
# With t = tr(A⁻¹ dA) (d log det A, holomorphic): d logabsdet = Re(t). For real A the sign is
# piecewise constant; for complex A the phase s = det / |det| moves too, ds = s i Im(t).
# In ChainRules' convention the cotangent (s̄, l̄) is the covector
# Re(conj(s̄) ds) + l̄ Re(t) = Re(conj(c̄) t) with c̄ = l̄ + i Im(s̄ conj(s)), and the cotangent
# of A is c̄ (A⁻¹)ᴴ (for real A: l̄ (A⁻¹)ᵀ). The same rule as diffprog's Python slogdet rule,
# whose JAX-convention cotangent is the conjugate of this one.

function ChainRulesCore.rrule(::typeof(npslogdet), A::AbstractMatrix{<:Number})
    out = npslogdet(A)
    function npslogdet_pullback(Δ)
        ḡ = unthunk(Δ)
        ḡ isa AbstractZero && return (NoTangent(), ZeroTangent())
        c̄ = logdet_cotangent(out[1], unthunk(ḡ[1]), unthunk(ḡ[2]))
        c̄ isa AbstractZero && return (NoTangent(), ZeroTangent())
        return (NoTangent(), c̄ .* conj_values(permutedims(inv(A), (2, 1))))
    end
    return out, npslogdet_pullback
end

# c̄ above: the real sign takes no cotangent; zeros stay symbolic
logdet_cotangent(sign_::Real, s̄, l̄) = l̄
logdet_cotangent(sign_::Complex, s̄::AbstractZero, l̄) = l̄
function logdet_cotangent(sign_::Complex, s̄::Number, l̄)
    phase = im * imag(s̄ * conj(sign_))
    return l̄ isa AbstractZero ? phase : l̄ + phase
end

# --- gather / scatter-add --------------------------------------------------------------------
# Each is the other's adjoint, so both directions (and their second derivatives) stay free
# of `setindex!`, whose accumulation of repeated indices is racy on GPUs.

function ChainRulesCore.rrule(
    ::typeof(take_positions),
    x::AbstractArray,
    positions::AbstractArray{<:Integer},
    dim::Int,
)
    n = size(x, dim)
    function take_positions_pullback(Δ)
        ḡ = unthunk(Δ)
        ḡ isa AbstractZero && return (NoTangent(), ZeroTangent(), NoTangent(), NoTangent())
        dx = scatter_positions(dense_cotangent(ḡ), positions, n, dim)
        return (NoTangent(), dx, NoTangent(), NoTangent())
    end
    return take_positions(x, positions, dim), take_positions_pullback
end

function ChainRulesCore.rrule(
    ::typeof(scatter_positions),
    g::AbstractArray,
    positions::AbstractArray{<:Integer},
    n::Int,
    dim::Int,
)
    function scatter_positions_pullback(Δ)
        ḡ = unthunk(Δ)
        ḡ isa AbstractZero &&
            return (NoTangent(), ZeroTangent(), NoTangent(), NoTangent(), NoTangent())
        dg = take_positions(dense_cotangent(ḡ), positions, dim)
        return (NoTangent(), dg, NoTangent(), NoTangent(), NoTangent())
    end
    return scatter_positions(g, positions, n, dim), scatter_positions_pullback
end

# Cotangents can arrive lazy (e.g. FillArrays.Fill from `sum`); reshape and matmul want a
# plain array of the same device.
dense_cotangent(ḡ::DenseArray) = ḡ
dense_cotangent(ḡ::AbstractArray) = ḡ .+ zero(eltype(ḡ))
