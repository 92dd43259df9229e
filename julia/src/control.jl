# Structured control flow for generated code: `dp.scan`, `dp.cond`, `dp.while_loop` and
# `dp.checkpoint`. The generator writes each loop or branch body as a local function that
# takes and returns flat tuples of values (Julia layout), so these helpers never see
# diffprog's IR. Scanned inputs and stacked outputs carry the step along their LAST Julia
# dim (NumPy's leading axis).

"""
    npscan(body, init::Tuple, xs::Tuple, consts::Tuple, n, backwards, Val(N))

`diffprog.scan`: `n` steps of `(carry..., y...) = body(carry..., x_i..., consts...)` with
`x_i` step `i` of each scanned input (`n:-1:1` when `backwards`: NumPy's `reverse=True`);
returns `(final carry..., stacked y...)`. Reverse mode is the rrule below: each step's pullback
comes from the AD system (`rrule_via_ad`) and the steps are walked backwards.

First derivatives only: the rule keeps the steps' pullbacks and accumulates cotangents in
buffers it fills in place, which Zygote cannot differentiate again (a second derivative
stops with an `ArgumentError` that says so). diffprog's Python side builds Hessians of
programs with loops from its own transforms and runs them with [`value`](@ref).
"""
function npscan(
    body,
    init::Tuple,
    xs::Tuple,
    consts::Tuple,
    n::Integer,
    backwards::Bool,
    nc::Val,
)
    carry, ys, _ = scan_steps(body, init, xs, consts, n, backwards, nc, nothing)
    return (carry..., stack_steps(ys, (init, xs, consts))...)
end

scan_order(n, backwards) = backwards ? (n:-1:1) : (1:n)

"""
    step_slice(x, i)

Step `i` of a scanned array: an element of a vector (NumPy 0-d, a number), else a slice
along the last dim. GPU vectors are read through a one-element host copy (no scalar
indexing).
"""
step_slice(x::Array{<:Any, 1}, i) = x[i]
step_slice(x::AbstractVector, i) = only(Array(view(x, i:i)))
step_slice(x::AbstractArray, i) = selectdim(x, ndims(x), i)

# Run the steps; with a RuleConfig also keep each step's pullback (rrule_via_ad).
function scan_steps(body, init, xs, consts, n, backwards, ::Val{N}, config) where {N}
    carry = init
    ys = Vector{Any}(undef, n)
    backs = Vector{Any}(undef, config === nothing ? 0 : n)
    for i in scan_order(n, backwards)
        args = (carry..., map(x -> step_slice(x, i), xs)..., consts...)
        if config === nothing
            out = body(args...)
        else
            out, backs[i] = rrule_via_ad(config, body, args...)
        end
        carry = out[1:N]
        ys[i] = out[(N + 1):end]
    end
    return carry, ys, backs
end

# Reverse-over-reverse would differentiate the rule below, whose `scan_steps` fills `ys`
# and `backs` in place: Zygote's mutation error, deep inside. Say what is going on instead.
function ChainRulesCore.rrule(::RuleConfig, ::typeof(scan_steps), args...)
    throw(ArgumentError(SCAN_SECOND_ORDER))
end

const SCAN_SECOND_ORDER = """
second derivatives through DiffProg.npscan (dp.scan, fori_loop, while_loop with \
max_steps, odeint) are not available from Zygote: the scan's reverse rule fills buffers \
in place. diffprog computes such Hessians with its own transforms (dp.hessian does this \
on the julia engine); from Julia, differentiate the gradient program that diffprog \
generates instead"""

"""
    stack_steps(ys, arrays)

The per-step outputs `ys[i] = (y1, y2, ...)` stacked per output along a new last dim.
Numbers (and 0-dim arrays) become a vector on the device of the first array in `arrays`
(the scan's own operands), or of the running call's template.
"""
function stack_steps(ys::Vector, arrays::Tuple)
    isempty(ys) && return ()
    like = something(first_array(arrays), Some(array_template()))
    return ntuple(k -> stack_values([y[k] for y in ys], like), length(first(ys)))
end

scalar_like(v) = v isa Number || (v isa AbstractArray && ndims(v) == 0)
scalar_value(v::Number) = v
scalar_value(v::AbstractArray) = npscalar(v)

function stack_values(values, like)
    all(scalar_like, values) && return device_vector(map(scalar_value, values); like = like)
    return stack(values)
end

zero_like(x::Number) = zero(x)
zero_like(x::AbstractArray) = zero(x)

# Only floating-point values carry cotangents. Integer and Bool values (fori_loop's index,
# while_loop's "still running" flag, index arrays) get none: Zygote returns float cotangents
# for integer scalars (its broadcast `unbroadcast(x::Number, x̄)` does no projection), which
# an integer buffer cannot hold.
# (`FloatLike` is defined in numpy_compat.jl.)
differentiable_value(x::Number) = x isa FloatLike
differentiable_value(x::AbstractArray) = eltype(x) <: FloatLike
differentiable_value(x) = false

"""
    project_cotangent(primal, d)

`d` in the form of `primal`'s own tangent (ChainRulesCore's `ProjectTo`): the primal's
eltype, and Number versus 0-dim array as the primal is. Zygote mixes the two (Base unwraps
0-dim broadcasts into numbers, its broadcast rules project numbers back into 0-dim arrays),
and its `accum` cannot add a number to a 0-dim array.
"""
project_cotangent(primal, d) = ProjectTo(primal)(d)
project_cotangent(primal::Number, d::AbstractArray) = ProjectTo(primal)(npscalar(d))
project_cotangent(primal, d::AbstractZero) = d

# A cotangent as a value: symbolic zeros become zeros shaped like the primal; values are
# projected onto the primal. Non-differentiable primals get a symbolic zero.
function materialize(d, primal)
    differentiable_value(primal) || return ZeroTangent()
    d = unthunk(d)
    return d isa AbstractZero ? zero_like(primal) : project_cotangent(primal, d)
end

component(Δ, k) = Δ isa AbstractZero ? Δ : Δ[k]

# `rrule_via_ad`'s pullback returns one `NoTangent()` (not a tuple) when Zygote's pullback
# gave `nothing` for every argument, e.g. for a body that only touches integers.
argument_cotangent(grads::AbstractZero, k) = grads
argument_cotangent(grads::Tuple, k) = grads[k + 1] # grads[1] is the body's own tangent

# The accumulator for a scanned input's cotangent: float zeros, or no tangent at all; a
# constant's starts as a symbolic zero.
cotangent_buffer(x) = differentiable_value(x) ? zero_like(x) : NoTangent()
cotangent_start(c) = differentiable_value(c) ? ZeroTangent() : NoTangent()

# `real_values`: a step's complex cotangent of a real scanned input keeps its real part (the
# body's pullback from `rrule_via_ad` is not projected onto the arguments).
function add_step!(dx::AbstractVector, i, d)
    view(dx, i:i) .+= real_values(dx, d)
    return dx
end
function add_step!(dx::AbstractArray, i, d)
    selectdim(dx, ndims(dx), i) .+= real_values(dx, d)
    return dx
end

function add_cotangent(total, d, primal)
    total isa AbstractZero && return project_cotangent(primal, d)
    return project_cotangent(primal, total .+ project_cotangent(primal, d))
end

function ChainRulesCore.rrule(
    config::RuleConfig{>:HasReverseMode},
    ::typeof(npscan),
    body,
    init::Tuple,
    xs::Tuple,
    consts::Tuple,
    n::Integer,
    backwards::Bool,
    nc::Val{N},
) where {N}
    carry, ys, backs = scan_steps(body, init, xs, consts, n, backwards, nc, config)
    stacked = stack_steps(ys, (init, xs, consts))
    function npscan_pullback(dresult)
        Δ = unthunk(dresult)
        d_carry = ntuple(k -> materialize(component(Δ, k), carry[k]), N)
        d_stacked = ntuple(k -> component(Δ, N + k), length(stacked))
        d_xs = map(cotangent_buffer, xs)
        d_consts = Any[cotangent_start(c) for c in consts]
        for i in reverse(scan_order(n, backwards))
            y = ys[i]
            d_y = ntuple(k -> step_cotangent(d_stacked[k], i, y[k]), length(y))
            grads = backs[i]((d_carry..., d_y...)) # Zygote takes a plain tuple cotangent
            d_carry = ntuple(k -> materialize(argument_cotangent(grads, k), carry[k]), N)
            for j in eachindex(xs)
                d_xs[j] isa AbstractZero && continue
                d = unthunk(argument_cotangent(grads, N + j))
                d isa AbstractZero || add_step!(d_xs[j], i, d)
            end
            for j in eachindex(consts)
                d_consts[j] isa NoTangent && continue
                d = unthunk(argument_cotangent(grads, N + length(xs) + j))
                if !(d isa AbstractZero)
                    d_consts[j] = add_cotangent(d_consts[j], d, consts[j])
                end
            end
        end
        d_init = ntuple(k -> materialize(d_carry[k], init[k]), N)
        # No tangent for `body`: generated bodies close over the program's constants only
        # (every traced value reaches them as an argument), which need no gradient.
        return (
            NoTangent(),
            NoTangent(),
            Tangent{typeof(init)}(d_init...),
            Tangent{typeof(xs)}(d_xs...),
            Tangent{typeof(consts)}(d_consts...),
            NoTangent(),
            NoTangent(),
            NoTangent(),
        )
    end
    return (carry..., stacked...), npscan_pullback
end

function step_cotangent(d_stacked, i, primal)
    differentiable_value(primal) || return ZeroTangent()
    d = unthunk(d_stacked)
    d isa AbstractZero && return zero_like(primal)
    # per-step numbers were stacked into a vector: its element is a number again (and a
    # 0-dim array step output gets a 0-dim cotangent through the projection)
    return project_cotangent(primal, step_slice(d, i))
end

"""
    npcond(pred, true_body, false_body, operands::Tuple)

`diffprog.cond`: `true_body(operands...)` if `pred` holds, else `false_body(operands...)`.
"""
function npcond(pred, true_body, false_body, operands::Tuple)
    return truthy(pred) ? true_body(operands...) : false_body(operands...)
end

truthy(p::Bool) = p
truthy(p::Number) = p != 0
truthy(p::AbstractArray) = only(Array(p)) != 0
@non_differentiable truthy(::Any)

"""
    npwhile(cond_body, body, carry::Tuple, cond_consts::Tuple, body_consts::Tuple)

`diffprog.while_loop`: `carry = body(carry..., body_consts...)` while
`cond_body(carry..., cond_consts...)` holds; Zygote differentiates the loop itself.
"""
function npwhile(cond_body, body, carry::Tuple, cond_consts::Tuple, body_consts::Tuple)
    while truthy(first(cond_body(carry..., cond_consts...)))
        carry = body(carry..., body_consts...)
    end
    return carry
end

"""
    npremat(body, operands::Tuple)

`diffprog.checkpoint`: `body(operands...)`, recomputed in the backward pass instead of
keeping its intermediates (`Zygote.checkpointed`).
"""
npremat(body, operands::Tuple) = Zygote.checkpointed(body, operands...)
