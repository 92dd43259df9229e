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
    return (carry..., stack_steps(ys)...)
end

scan_order(n, backwards) = backwards ? (n:-1:1) : (1:n)

"""
    step_slice(x, i)

Step `i` of a scanned array: an element of a vector (NumPy 0-d), else a slice along the
last dim. GPU vectors are read through a one-element host copy (no scalar indexing).
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

"""
    stack_steps(ys)

The per-step outputs `ys[i] = (y1, y2, ...)` stacked per output along a new last dim
(numbers into a vector).
"""
function stack_steps(ys::Vector)
    isempty(ys) && return ()
    return ntuple(k -> stack_values([y[k] for y in ys]), length(first(ys)))
end

stack_values(values) = first(values) isa Number ? map(identity, values) : stack(values)

zero_like(x::Number) = zero(x)
zero_like(x::AbstractArray) = zero(x)

# A cotangent as a value: symbolic zeros become zeros shaped like the primal.
materialize(d, primal) = (d = unthunk(d); d isa AbstractZero ? zero_like(primal) : d)

component(Δ, k) = Δ isa AbstractZero ? Δ : Δ[k]

function add_step!(dx::AbstractVector, i, d)
    view(dx, i:i) .+= d
    return dx
end
function add_step!(dx::AbstractArray, i, d)
    selectdim(dx, ndims(dx), i) .+= d
    return dx
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
    stacked = stack_steps(ys)
    function npscan_pullback(dresult)
        Δ = unthunk(dresult)
        d_carry = ntuple(k -> materialize(component(Δ, k), carry[k]), N)
        d_stacked = ntuple(k -> component(Δ, N + k), length(stacked))
        d_xs = map(zero_like, xs)
        d_consts = Any[zero_like(c) for c in consts]
        for i in reverse(scan_order(n, backwards))
            y = ys[i]
            d_y = ntuple(k -> step_cotangent(d_stacked[k], i, y[k]), length(y))
            grads = backs[i]((d_carry..., d_y...)) # Zygote takes a plain tuple cotangent
            d_args = grads[2:end]
            d_carry = ntuple(k -> materialize(d_args[k], carry[k]), N)
            for j in eachindex(xs)
                d = unthunk(d_args[N + j])
                d isa AbstractZero || add_step!(d_xs[j], i, d)
            end
            for j in eachindex(consts)
                d = unthunk(d_args[N + length(xs) + j])
                d isa AbstractZero || (d_consts[j] = d_consts[j] .+ d)
            end
        end
        # No tangent for `body`: generated bodies close over the program's constants only
        # (every traced value reaches them as an argument), which need no gradient.
        return (
            NoTangent(),
            NoTangent(),
            Tangent{typeof(init)}(d_carry...),
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
    d = unthunk(d_stacked)
    d isa AbstractZero && return zero_like(primal)
    slice = step_slice(d, i)
    # a 0-dim array output (NumPy 0-d, e.g. from reshape(x, ())) was stacked into a
    # vector: its cotangent must be a 0-dim array again, not a number
    return primal isa AbstractArray && !(slice isa AbstractArray) ?
        fill!(similar(primal), slice) :
        slice
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
