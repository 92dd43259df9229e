# Forward evaluation and Zygote derivatives of loaded programs.
#
# Every entry point calls the private worker through `Base.invokelatest`: the program's
# method was defined after the caller's world began, and running the whole worker (not just
# the program) in the latest world lets Zygote's generated pullbacks see that method too.
# It does so inside `with_array_template(args)` (devices.jl), so that arrays the program makes
# from numbers alone live on the arguments' device.
#
# Complex values: every derivative this file returns, and every cotangent it takes, is in
# JAX's convention (diffprog's): the cotangent `c` of a complex `z` is the covector
# `dz -> Re(sum(c .* dz))`. Zygote and ChainRules use `dz -> Re(sum(conj(c̄) .* dz))`, the
# real inner product of C as R² (ChainRulesCore docs/src/maths/complex.md: the pullback of
# `f(x + iy) = u + iv` maps `Δu + iΔv` to `Δu ∂u/∂x + Δv ∂v/∂x + i(Δu ∂u/∂y + Δv ∂v/∂y)`;
# Zygote docs/src/complex.md: the gradient of a real `f` is `∂f/∂x + i ∂f/∂y`). So
# `c = conj(c̄)` for the same covector, and
#
#     JAX pullback(c) = conj(Zygote pullback(conj(c)))
#
# (the identity on real values). Hence `grad` of a real `f(x + iy)` is `∂f/∂x - i ∂f/∂y`, and
# a holomorphic `f` seeded with 1 gives `f'(z)`: Zygote's `back(1)` is `conj(f'(z))` (its
# docs: holomorphic derivatives "are the conjugate of the gradients for the real part").
# The cotangent of a real argument is the real part (ChainRulesCore's `ProjectTo{<:Real}`
# of a `Complex`, src/projection.jl), the same in both conventions.

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

Run the program and differentiate its FIRST output, which must be a scalar (a number, or
an array holding exactly one element), with respect to the arguments at the 1-based
positions `wrt` (an integer or a tuple of integers). `outputs` is the tuple of all
outputs; `gradients` holds one gradient per position in `wrt`, in that order, each shaped
and typed like its argument (a `nothing` gradient from Zygote becomes zeros; integer
arguments get floating-point gradients).

Complex values follow JAX's convention (see the top of this file): for a real output and a
complex argument `z = x + iy` the gradient is `∂f/∂x - i ∂f/∂y`; a complex output is
differentiated as a holomorphic function, seeded with 1, and the gradient is `f'(z)` (JAX's
`grad(f, holomorphic=True)`).
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
    gradients = jax_gradients(back(seed), args)
    return outputs, map(k -> gradients[k], positions)
end

"""
    pullback(p::Program, args::Tuple, cotangents::Tuple) -> (outputs, gradients)

Reverse mode with a cotangent for every output (`nothing` means zero; a cotangent has the
shape of its output). Returns all outputs and one gradient per argument (zeros where Zygote
returns `nothing`), each shaped and typed like its argument. Cotangents and gradients of
complex values are in JAX's convention (see the top of this file): this is JAX's `vjp`.
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
    seed = map((c, y) -> cotangent_for(conj_tangent(c), y), cotangents, outputs)
    return outputs, jax_gradients(back(seed), args)
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

Complex values as JAX's `jacrev`: each row is a pullback in JAX's convention, so a real `y`
gives rows that are gradients (`∂yᵢ/∂a - i ∂yᵢ/∂b` for a complex argument `a + ib`), and a
complex `y` of complex arguments the holomorphic Jacobian `∂yᵢ/∂xⱼ`
(`jacrev(holomorphic=True)`). A complex `y` of a real argument has no such Jacobian (JAX
refuses it too): `ArgumentError`.
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
    check_jacobian_fields(y, args, positions)
    basis = identity_like(y)
    # the basis is real, so conj(e_k) = e_k: JAX's row k is conj(Zygote's pullback of e_k)
    rows = [jax_gradients(back(basis_cotangent(basis, y, k)), args) for k in 1:length(y)]
    jacobians = map(j -> assemble_jacobian(args[j], y, [row[j] for row in rows]), positions)
    return y, jacobians
end

"""
    hessian(p::Program, args::Tuple, wrt::Integer) -> H

Hessian of the first output (a scalar) with respect to the argument at position `wrt`.
`H` has Julia dims `(size(x)..., size(x)...)` (NumPy sees `x.shape + x.shape`). A complex
first output is a holomorphic function of a complex argument, and `H` is `f''(z)` (JAX's
`hessian(holomorphic=True)`); a real function of a complex argument has no complex Hessian
(JAX refuses it too): `ArgumentError`.

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
    holomorphic = check_hessian_fields(scalar(args...), args[k])
    gradient_k = if holomorphic
        (xs...) -> holomorphic_gradient(scalar, xs, k)
    else
        (xs...) -> gradient_or_zero(Zygote.gradient(scalar, xs...)[k], xs[k])
    end
    g, back = Zygote.pullback(gradient_k, args...)
    basis = identity_like(g)
    # JAX's convention on both levels: `gradient_k` returns f'(z), and each row of its
    # Jacobian is conj(Zygote's pullback of a real basis vector)
    columns = [
        jax_gradients(back(basis_cotangent(basis, g, j)), args)[k]
        for j in 1:length(g)
    ]
    return assemble_jacobian(args[k], g, columns)
end

# f'(z) of a holomorphic scalar `f` w.r.t. argument `k`: Zygote's pullback seeded with 1 is
# conj(f'(z)) (Zygote's `gradient` refuses complex outputs, `sensitivity(y::Complex)`).
function holomorphic_gradient(f, xs::Tuple, k::Int)
    y, back = Zygote.pullback(f, xs...)
    return conj_tangent(gradient_or_zero(nth_gradient(back(one(y)), k), xs[k]))
end

# Zygote's pullback returns `nothing` instead of a tuple when no argument has a gradient.
nth_gradient(::Nothing, k::Int) = nothing
nth_gradient(gradients::Tuple, k::Int) = gradients[k]

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

# A complex scalar is a holomorphic function's output (diffprog's holomorphic=True).
check_scalar(y::Number) = nothing
function check_scalar(y::AbstractArray{<:Number})
    length(y) == 1 && return nothing
    throw(ArgumentError(
        "the first output must be a scalar to take its gradient; it has size $(size(y))",
    ))
end
check_scalar(y) = throw(ArgumentError(
    "the first output must be a real or complex scalar; got a $(typeof(y))",
))

unit_seed(y::Number) = one(y)
unit_seed(y::AbstractArray{<:Number}) = (check_scalar(y); fill!(similar(y), one(eltype(y))))
unit_seed(y) = check_scalar(y)

cotangent_for(::Nothing, y) = nothing
cotangent_for(c::Number, y::AbstractFloat) = convert(typeof(y), real_if(typeof(y), c))
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

# Zygote's gradients as JAX's: dense, shaped and typed like the arguments, conjugated.
function jax_gradients(gradients, args::Tuple)
    return map(conj_tangent, gradients_or_zeros(gradients, args))
end

"""
    conj_tangent(x)

A tangent or cotangent between Zygote's complex convention and JAX's (either way): the
complex conjugate of complex numbers and arrays, real values unchanged (see the top of
derivatives.jl).
"""
conj_tangent(x::Union{Nothing, Real, AbstractZero}) = x
conj_tangent(x::Number) = conj(x)
conj_tangent(x::AbstractArray{<:Real}) = x
conj_tangent(x::AbstractArray{<:Number}) = conj.(x)

# The real part of a cotangent of a real value (ChainRulesCore's `ProjectTo{<:Real}` of a
# `Complex`); cotangents of complex values as they are.
real_if(::Type{<:Real}, g::Number) = real(g)
real_if(::Type, g::Number) = g

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
function gradient_like(g::Number, x::Number)
    T = gradient_eltype(typeof(x))
    return convert(T, real_if(T, g))
end
# Number and 0-dim array cotangents are two forms of one value (Zygote produces both).
gradient_like(g::AbstractArray{<:Number, 0}, x::Number) = gradient_like(only_element(g), x)
function gradient_like(g::Number, x::AbstractArray{<:Any, 0})
    T = gradient_eltype(eltype(x))
    return fill!(similar(x, T), convert(T, real_if(T, g)))
end
function gradient_like(g::AbstractArray, x::AbstractArray)
    T = gradient_eltype(eltype(x))
    typeof(g) === typeof(x) && eltype(x) === T && return g
    # Zygote can return lazy or wrapped arrays (Fill, Transpose, ...) or a promoted eltype
    # (a complex cotangent of a real argument keeps its real part); hand Python a dense
    # array of the argument's own kind (Array or CuArray).
    dense = similar(x, T)
    dense .= real_values(dense, g)
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

# JAX's complex rules for Jacobians and Hessians (diffprog's Python side refuses the same
# combinations before calling): `jacrev` needs a real output unless the function is
# holomorphic, and a holomorphic Jacobian needs complex arguments; `hessian` of a complex
# argument only for a holomorphic function (complex output).
function check_jacobian_fields(y, args::Tuple, positions::Tuple)
    is_complex(y) || return nothing
    for k in positions
        is_complex(args[k]) && continue
        throw(ArgumentError(
            "the Jacobian of a complex output with respect to the real argument $k is not " *
                "defined here (JAX's jacrev refuses it too): differentiate a real quantity " *
                "(real.(y), abs2.(y)), or make the argument complex for a holomorphic function",
        ))
    end
    return nothing
end

function check_hessian_fields(y, x)
    if is_complex(y) && !is_complex(x)
        throw(ArgumentError(
            "the Hessian of a complex output needs a complex argument (a holomorphic " *
                "function); differentiate a real quantity instead",
        ))
    end
    if !is_complex(y) && is_complex(x)
        throw(ArgumentError(
            "a real function of a complex argument has no complex Hessian (JAX refuses it " *
                "too): pass the real and imaginary parts as real arguments",
        ))
    end
    return is_complex(y)
end

is_complex(x::Number) = x isa Complex
is_complex(x::AbstractArray) = eltype(x) <: Complex
is_complex(x) = false

@non_differentiable is_complex(::Any)

"""
    complex_derivative_problem() -> Union{Nothing, String}

`nothing` when the loaded Zygote differentiates complex programs correctly, else why not
(the Python side asks once before the first derivative of a program with complex values).
Zygote 0.7.11 fixed two bugs in the broadcasts generated code is made of: mixed real and
complex operands in one broadcast gave wrong gradients (FluxML/Zygote.jl#1601, fixed by
#1606), and `abs.(z)` had a `NaN` gradient at `z == 0` (#1529, fixed by #1632).
"""
function complex_derivative_problem()
    version = pkgversion(Zygote)
    version === nothing && return nothing # a development checkout: trust it
    version >= COMPLEX_ZYGOTE && return nothing
    return "Zygote $version is loaded; derivatives of complex values need Zygote " *
        "$COMPLEX_ZYGOTE or later (earlier versions differentiate broadcasts that mix " *
        "real and complex operands wrongly, FluxML/Zygote.jl#1601)"
end

const COMPLEX_ZYGOTE = v"0.7.11"
