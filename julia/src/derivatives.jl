# Forward evaluation and Zygote derivatives of loaded programs.
#
# Every entry point calls the private worker through `Base.invokelatest`: the program's
# method was defined after the caller's world began, and running the whole worker (not just
# the program) in the latest world lets Zygote's generated pullbacks see that method too.
# It does so inside `with_array_template(args)` (devices.jl), so that arrays the program makes
# from numbers alone live on the arguments' device.

"""
    value(p::Program, args::Tuple) -> Tuple

Run the program forward on `args` (Julia layout) and return its outputs as a `Tuple`.
"""
function value(p::Program, args::Tuple)
    note_compilation!(p, :value, args)
    return as_tuple(with_array_template(() -> Base.invokelatest(p.func, args...), args))
end

(p::Program)(args...) = value(p, args)

"""
    value_and_gradient(p::Program, args::Tuple, wrt = 1:length(args)) -> (outputs, gradients)

Run the program and differentiate its FIRST output, which must be a real scalar (a
`Real`, or an array holding exactly one element), with respect to the arguments at the
1-based positions `wrt` (an integer or a tuple of integers). `outputs` is the tuple of all
outputs; `gradients` holds one gradient per position in `wrt`, in that order, each shaped
and typed like its argument (a `nothing` gradient from Zygote becomes zeros; integer
arguments get floating-point gradients).
"""
function value_and_gradient(p::Program, args::Tuple, wrt = all_positions(args))
    positions = checked_positions(wrt, args)
    note_compilation!(p, :gradient, args)
    return with_array_template(args) do
        Base.invokelatest(value_and_gradient_worker, p.func, args, positions)
    end
end

function value_and_gradient_worker(f, args::Tuple, positions::Tuple)
    outputs, back = Zygote.pullback(tupled(f), args...)
    isempty(outputs) &&
        throw(ArgumentError("the program returns no outputs to differentiate"))
    seed = (unit_seed(first(outputs)), map(_ -> nothing, Base.tail(outputs))...)
    gradients = gradients_or_zeros(back(seed), args)
    return outputs, map(k -> gradients[k], positions)
end

"""
    pullback(p::Program, args::Tuple, cotangents::Tuple) -> (outputs, gradients)

Reverse mode with a cotangent for every output (`nothing` means zero; a cotangent has the
shape of its output). Returns all outputs and one gradient per argument (zeros where Zygote
returns `nothing`), each shaped and typed like its argument.
"""
function pullback(p::Program, args::Tuple, cotangents::Tuple)
    note_compilation!(p, :pullback, args)
    return with_array_template(args) do
        Base.invokelatest(pullback_worker, p.func, args, cotangents)
    end
end

function pullback_worker(f, args::Tuple, cotangents::Tuple)
    outputs, back = Zygote.pullback(tupled(f), args...)
    if length(cotangents) != length(outputs)
        throw(DimensionMismatch(
            "got $(length(cotangents)) cotangents for $(length(outputs)) outputs",
        ))
    end
    seed = map(cotangent_for, cotangents, outputs)
    return outputs, gradients_or_zeros(back(seed), args)
end

"""
    jacobian(p::Program, args::Tuple; output = 1, wrt = 1:length(args)) -> (y, jacobians)

Jacobian of output number `output` (1-based) with respect to the arguments at positions
`wrt`. Returns that output `y` and one Jacobian per position. A Jacobian has Julia dims
`(size(x)..., size(y)...)`, so after the usual reversal NumPy sees `y.shape + x.shape`
(the NumPy convention). For scalar `x` it is shaped like `y`; for scalar `x` and `y` it is
a number.

Built from one Zygote pullback per element of `y` with one-hot cotangents, rather than
`Zygote.jacobian`, because the program returns a tuple (Zygote.jacobian wants one array)
and because this keeps the argument shapes. The one-hot basis is made with `similar` and a
broadcast over the diagonal, as Zygote's own `_eyelike`, so it works on GPU arrays.
"""
function jacobian(p::Program, args::Tuple; output::Integer = 1, wrt = all_positions(args))
    positions = checked_positions(wrt, args)
    note_compilation!(p, :jacobian, args)
    return with_array_template(args) do
        Base.invokelatest(jacobian_worker, p.func, args, Int(output), positions)
    end
end

function jacobian_worker(f, args::Tuple, output::Int, positions::Tuple)
    selected = (xs...) -> select_output(tupled(f)(xs...), output)
    y, back = Zygote.pullback(selected, args...)
    basis = identity_like(y)
    rows = [
        gradients_or_zeros(back(basis_cotangent(basis, y, k)), args)
        for k in 1:length(y)
    ]
    jacobians = map(j -> assemble_jacobian(args[j], y, [row[j] for row in rows]), positions)
    return y, jacobians
end

"""
    hessian(p::Program, args::Tuple, wrt::Integer) -> H

Hessian of the first output (a real scalar) with respect to the argument at position `wrt`.
`H` has Julia dims `(size(x)..., size(x)...)` (NumPy sees `x.shape + x.shape`).

Reverse-over-reverse: the Jacobian of the Zygote gradient, one outer pullback per element.
`Zygote.hessian` (ForwardDiff over Zygote) is faster on the CPU, but its `extract` step
indexes dual numbers one by one, which fails on GPU arrays (Zygote src/lib/forward.jl), and
it would force every helper in this package to accept dual numbers. Python's own IR
transforms (vjp of vjp) are an alternative that runs through [`value`](@ref).

Programs with `npscan` (scan, fori_loop, while_loop with max_steps, odeint) have no
second derivatives here: the scan's reverse rule fills buffers in place, which Zygote
cannot differentiate again, and the call stops with an `ArgumentError` saying so. diffprog's
Python side computes those Hessians with its own transforms and runs them with `value`.
"""
function hessian(p::Program, args::Tuple, wrt::Integer)
    k = only(checked_positions(wrt, args))
    note_compilation!(p, :hessian, args)
    return with_array_template(args) do
        Base.invokelatest(hessian_worker, p.func, args, k)
    end
end

function hessian_worker(f, args::Tuple, k::Int)
    scalar = (xs...) -> scalar_output(tupled(f)(xs...))
    gradient_k = (xs...) -> gradient_or_zero(Zygote.gradient(scalar, xs...)[k], xs[k])
    g, back = Zygote.pullback(gradient_k, args...)
    basis = identity_like(g)
    columns = [
        gradients_or_zeros(back(basis_cotangent(basis, g, j)), args)[k]
        for j in 1:length(g)
    ]
    return assemble_jacobian(args[k], g, columns)
end

# ---------------------------------------------------------------------------------------
# Helpers shared by the workers.

as_tuple(y::Tuple) = y
as_tuple(y) = (y,)

tupled(f) = (xs...) -> as_tuple(f(xs...))

all_positions(args::Tuple) = Tuple(1:length(args))

checked_positions(wrt::Integer, args::Tuple) = checked_positions((wrt,), args)
function checked_positions(wrt::Union{Tuple, AbstractVector}, args::Tuple)
    positions = Tuple(Int(k) for k in wrt)
    for k in positions
        if !(1 <= k <= length(args))
            throw(ArgumentError(
                "argument position $k is out of range 1:$(length(args)) (positions are 1-based)",
            ))
        end
    end
    return positions
end

function select_output(outputs::Tuple, k::Int)
    if !(1 <= k <= length(outputs))
        throw(ArgumentError(
            "output $k is out of range 1:$(length(outputs)) (outputs are 1-based)",
        ))
    end
    return outputs[k]
end

# The first output of a program being differentiated as a scalar. A one-element array is
# summed rather than indexed: `sum` is differentiable and avoids scalar GPU indexing.
function scalar_output(outputs::Tuple)
    y = select_output(outputs, 1)
    check_scalar(y)
    return y isa Number ? y : sum(y)
end

check_scalar(y::Real) = nothing
function check_scalar(y::AbstractArray{<:Real})
    length(y) == 1 && return nothing
    throw(ArgumentError(
        "the first output must be a scalar to take its gradient; it has size $(size(y))",
    ))
end
check_scalar(y) = throw(ArgumentError(
    "the first output must be a real scalar; got a $(typeof(y))",
))

unit_seed(y::Real) = one(y)
unit_seed(y::AbstractArray{<:Real}) = (check_scalar(y); fill!(similar(y), one(eltype(y))))
unit_seed(y) = check_scalar(y)

cotangent_for(::Nothing, y) = nothing
cotangent_for(c::Number, y::AbstractFloat) = convert(typeof(y), c)
cotangent_for(c::Number, y::Number) = c
cotangent_for(c::Number, y::AbstractArray) = fill!(similar(y), c)
# A 0-d array cotangent for a scalar output: `sum` reads it without scalar GPU indexing.
cotangent_for(c::AbstractArray, y::Number) = (check_scalar(c); sum(c))
function cotangent_for(c::AbstractArray, y::AbstractArray)
    size(c) == size(y) && return c
    throw(DimensionMismatch(
        "cotangent of size $(size(c)) for an output of size $(size(y))",
    ))
end

# Zygote may return `nothing` for all arguments at once, or per argument.
gradients_or_zeros(::Nothing, args::Tuple) = map(zero_gradient, args)
function gradients_or_zeros(gradients::Tuple, args::Tuple)
    return map((g, x) -> unaliased(gradient_like(g, x), args), gradients, args)
end

gradient_eltype(::Type{T}) where {T <: Integer} = float(T)
gradient_eltype(::Type{T}) where {T} = T

zero_gradient(x::Number) = zero(gradient_eltype(typeof(x)))
zero_gradient(x::AbstractArray) = fill!(similar(x, gradient_eltype(eltype(x))), 0)
zero_gradient(x) = nothing

gradient_like(::Nothing, x) = zero_gradient(x)
gradient_like(::AbstractZero, x) = zero_gradient(x)
gradient_like(g::Number, x::Number) = convert(gradient_eltype(typeof(x)), g)
# Number and 0-dim array cotangents are two forms of one value (Zygote produces both).
gradient_like(g::AbstractArray{<:Number, 0}, x::Number) = gradient_like(only_element(g), x)
function gradient_like(g::Number, x::AbstractArray{<:Any, 0})
    T = gradient_eltype(eltype(x))
    return fill!(similar(x, T), convert(T, g))
end
function gradient_like(g::AbstractArray, x::AbstractArray)
    T = gradient_eltype(eltype(x))
    typeof(g) === typeof(x) && eltype(x) === T && return g
    # Zygote can return lazy or wrapped arrays (Fill, Transpose, ...) or a promoted eltype;
    # hand Python a dense array of the argument's own kind (Array or CuArray).
    dense = similar(x, T)
    dense .= g
    return dense
end
gradient_like(g, x) = g

# Never hand back an input array as a gradient: Python owns that memory.
unaliased(g, args::Tuple) = any(a -> a === g, args) ? copy(g) : g

# Used INSIDE differentiated code (hessian), so it must not mutate.
gradient_or_zero(g, x) = g
gradient_or_zero(::Nothing, x) = zero_gradient(x)

# Identity matrix shaped for the elements of `y`; built like Zygote's `_eyelike` so it runs
# on GPU arrays (no scalar indexing).
identity_like(y::Number) = nothing
function identity_like(y::AbstractArray)
    n = length(y)
    basis = fill!(similar(y, float(eltype(y)), n, n), 0)
    view(basis, LinearAlgebra.diagind(basis)) .= 1
    return basis
end

basis_cotangent(::Nothing, y::Number, k::Int) = one(y)
basis_cotangent(basis::AbstractMatrix, y::AbstractArray, k::Int) = reshape(
    basis[:, k],
    size(y),
)

# Stack per-output-element gradients of `x` into Julia dims (size(x)..., size(y)...).
function assemble_jacobian(x::AbstractArray, y, rows::Vector)
    stacked = reduce(hcat, map(vec, rows)) # length(x) × length(y)
    return reshape(stacked, (size(x)..., size(y)...))
end
assemble_jacobian(x::Number, y::Number, rows::Vector) = only(rows)
function assemble_jacobian(x::Number, y::AbstractArray, rows::Vector)
    # one host-to-device transfer when `y` lives on the GPU
    return reshape(device_vector(rows; like = y), size(y))
end
assemble_jacobian(x, y, rows::Vector) = nothing
