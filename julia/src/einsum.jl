# Stacked matrix products and `numpy.einsum`, in Julia layout, for generated code. Both
# reduce to `batched_product`, one matrix product per batch element with its own reverse
# rule (written with `batched_product` again, so Zygote can differentiate it once more).
# Base and ChainRules have no batched product; NNlib's `batched_mul` would be a new
# dependency, and a loop of `getindex` slices under Zygote would build a full-size zero
# array per slice in the reverse pass.

"""
    batched_product(a, b)

`c[:, :, t] = a[:, :, t] * b[:, :, t]` for 3-dim `a` (m × k × n_batch) and `b`
(k × n × n_batch): one `mul!` per batch element on views, which are BLAS (or CUBLAS) calls
for dense CPU (or GPU) arrays.
"""
function batched_product(a::AbstractArray{<:Number, 3}, b::AbstractArray{<:Number, 3})
    if size(a, 2) != size(b, 1) || size(a, 3) != size(b, 3)
        throw(DimensionMismatch(
            "batched_product of sizes $(size(a)) and $(size(b)): inner dims or batches differ",
        ))
    end
    T = promote_type(eltype(a), eltype(b))
    # equal eltypes keep mul! on BLAS (a generic fallback would index GPU arrays one by one)
    a, b = convert_eltype_if(T, a), convert_eltype_if(T, b)
    out = similar(a, T, size(a, 1), size(b, 2), size(a, 3))
    for t in axes(a, 3)
        LinearAlgebra.mul!(view(out, :, :, t), view(a, :, :, t), view(b, :, :, t))
    end
    return out
end

convert_eltype_if(::Type{T}, x::AbstractArray{T}) where {T} = x
convert_eltype_if(::Type{T}, x::AbstractArray) where {T} = T.(x)

batched_transpose(a::AbstractArray{<:Any, 3}) = permutedims(a, (2, 1, 3))

# The conjugate transpose of each matrix: ChainRules' cotangents of `C = A * B` are
# `C̄ * Bᴴ` and `Aᴴ * C̄` (its `*` rule); for real matrices the transpose.
batched_adjoint(a::AbstractArray{<:Any, 3}) = conj_values(batched_transpose(a))

function ChainRulesCore.rrule(::typeof(batched_product), a::AbstractArray, b::AbstractArray)
    project_a, project_b = ProjectTo(a), ProjectTo(b)
    function batched_product_pullback(Δ)
        ḡ = unthunk(Δ)
        ḡ isa AbstractZero && return (NoTangent(), ZeroTangent(), ZeroTangent())
        ḡ = dense_cotangent(ḡ)
        da = project_a(batched_product(ḡ, batched_adjoint(b)))
        db = project_b(batched_product(batched_adjoint(a), ḡ))
        return (NoTangent(), da, db)
    end
    return batched_product(a, b), batched_product_pullback
end

"""
    npmatmul_batched(a, b)

`a @ b` of NumPy where `b` is a stack of matrices (NumPy shape `(..., k, n)`) and `a` a
vector, a matrix or a stack (`(..., m, k)`); the stack dims broadcast as in NumPy. Julia
layout: `a` is `(k, m, batch...)`, `b` is `(n, k, batch...)`, the result
`(n, m, batch...)` (`m` dropped for a vector `a`), each matrix being `b_t * a_t` as in
[`npmatmul`](@ref).
"""
function npmatmul_batched(a::AbstractVector, b::AbstractArray)
    product = npmatmul_batched(reshape(a, length(a), 1), b)
    return dropdims(product; dims = 2)
end
function npmatmul_batched(a::AbstractArray, b::AbstractArray)
    batch = broadcast_batch(size(a)[3:end], size(b)[3:end])
    count = batch_count(batch)
    k, m, n = size(a, 1), size(a, 2), size(b, 1)
    a3 = reshape(expand_batch(a, batch), k, m, count)
    b3 = reshape(expand_batch(b, batch), n, k, count)
    return reshape(batched_product(b3, a3), (n, m, batch...))
end

# NumPy's broadcast of the stack dims (Julia layout: left-aligned, so pad on the right).
function broadcast_batch(x::Tuple, y::Tuple)
    n = max(length(x), length(y))
    return ntuple(d -> broadcast_size(get(x, d, 1), get(y, d, 1), "matmul stack"), n)
end

batch_count(batch::Tuple) = prod(batch; init = 1)

function broadcast_size(p::Int, q::Int, what)
    (p == q || p == 1 || q == 1) && return max(p, q)
    throw(DimensionMismatch("$what: sizes $p and $q do not broadcast"))
end

# `x` (two matrix dims, then its own stack dims) broadcast to the stack dims `batch`.
function expand_batch(x::AbstractArray, batch::Tuple)
    padded, target = expanded_sizes(size(x), batch)
    padded == target && return reshape(x, target)
    return npbroadcast_to(reshape(x, padded), target)
end

function expanded_sizes(x_size::Tuple, batch::Tuple)
    target = (x_size[1], x_size[2], batch...)
    padded = (x_size..., ntuple(_ -> 1, length(target) - length(x_size))...)
    return padded, target
end

"""
    npeinsum(inputs::Tuple, output::Tuple, operands...)

`numpy.einsum` for subscripts given as integer labels, one tuple per operand in Julia dim
order (the code generator reverses NumPy's subscripts and numbers the letters: no user text
reaches the source). Labels that appear in one operand only and not in the output are
summed first; then the operands are contracted left to right, each pair as one
[`batched_product`](@ref) after `permutedims`/`reshape` (labels shared and still needed are
the batch, shared and no longer needed are contracted); finally the labels are permuted into
the output's order. Length-1 dims broadcast against the other operands' sizes, as in NumPy.
A label repeated within one operand (a diagonal) is not supported. A result without labels
is a number (a NumPy 0-d value).
"""
function npeinsum(inputs::Tuple, output::Tuple, operands...)
    check_einsum(inputs, output, operands)
    sizes = einsum_sizes(inputs, operands)
    x, labels = einsum_operand(operands[1], inputs, output, 1, sizes)
    for k in 2:length(operands)
        y, y_labels = einsum_operand(operands[k], inputs, output, k, sizes)
        keep = einsum_needed(inputs, output, k)
        x, labels = einsum_pair(x, labels, y, y_labels, keep)
    end
    return einsum_output(x, labels, output)
end

function check_einsum(inputs::Tuple, output::Tuple, operands::Tuple)
    if length(inputs) != length(operands) || isempty(operands)
        throw(ArgumentError(
            "einsum: $(length(inputs)) subscript groups for $(length(operands)) operands",
        ))
    end
    for (labels, x) in zip(inputs, operands)
        if length(labels) != ndims(x)
            throw(ArgumentError("einsum: labels $labels for a $(ndims(x))-dim operand"))
        end
        if !allunique(labels)
            throw(ArgumentError("einsum: a repeated label in $labels (a diagonal)"))
        end
    end
    allunique(output) || throw(ArgumentError("einsum: repeated output label in $output"))
    return nothing
end

# label => size, the largest over the operands (the others are 1 and broadcast)
function einsum_sizes(inputs::Tuple, operands::Tuple)
    sizes = Dict{Int, Int}()
    for (labels, x) in zip(inputs, operands), (d, label) in enumerate(labels)
        sizes[label] = broadcast_size(
            get(sizes, label, 1),
            size(x, d),
            "einsum label $label",
        )
    end
    return sizes
end

# Labels the operands after `k` or the output still need.
function einsum_needed(inputs::Tuple, output::Tuple, k::Int)
    later = Int[output...]
    for j in (k + 1):length(inputs)
        append!(later, inputs[j])
    end
    return Tuple(unique(later))
end

# Labels of operand `k` that no other operand and not the output have: summed at once.
function einsum_lonely(inputs::Tuple, output::Tuple, k::Int)
    others = Int[output...]
    for (j, labels) in enumerate(inputs)
        j == k || append!(others, labels)
    end
    return Tuple(d for (d, label) in enumerate(inputs[k]) if !(label in others))
end

einsum_shape(labels::Tuple, sizes::Dict) = Tuple(sizes[label] for label in labels)
function einsum_kept(labels::Tuple, dims::Tuple)
    return Tuple(label for (d, label) in enumerate(labels) if !(d in dims))
end

function einsum_operand(x::Number, inputs, output, k, sizes)
    return x, ()
end
function einsum_operand(x::AbstractArray, inputs, output, k, sizes)
    labels = inputs[k]
    target = einsum_shape(labels, sizes)
    full = size(x) == target ? x : npbroadcast_to(x, target)
    lonely = einsum_lonely(inputs, output, k)
    isempty(lonely) && return full, labels
    kept = einsum_kept(labels, lonely)
    summed = dropdims(sum(full; dims = lonely); dims = lonely)
    return (isempty(kept) ? npscalar(summed) : summed), kept
end

einsum_pair(x::Number, labels, y, y_labels, keep) = (x .* y, y_labels)
einsum_pair(x::AbstractArray, labels, y::Number, y_labels, keep) = (x .* y, labels)
function einsum_pair(x::AbstractArray, labels, y::AbstractArray, y_labels, keep)
    plan = einsum_pair_plan(labels, y_labels, keep, size(x), size(y))
    x3 = reshape(permute_if(x, plan.x_perm), plan.m, plan.k, plan.batch)
    y3 = reshape(permute_if(y, plan.y_perm), plan.k, plan.n, plan.batch)
    product = reshape(batched_product(x3, y3), plan.shape)
    return (isempty(plan.labels) ? npscalar(product) : product), plan.labels
end

# Which dims of x and y are free, contracted or batch; the permutations that order them
# (x: free, contracted, batch; y: contracted, free, batch), the flattened sizes m × k,
# k × n and the batch count, and the result's labels (x free, y free, batch) and size.
function einsum_pair_plan(labels::Tuple, y_labels::Tuple, keep::Tuple, x_size, y_size)
    dim_of(ls, label) = findfirst(==(label), ls)
    shared = Tuple(l for l in labels if l in y_labels)
    batch = Tuple(l for l in shared if l in keep)
    contracted = Tuple(l for l in shared if !(l in keep))
    x_only = Tuple(l for l in labels if !(l in y_labels))
    y_only = Tuple(l for l in y_labels if !(l in labels))
    x_free = map(l -> dim_of(labels, l), x_only)
    x_contracted = map(l -> dim_of(labels, l), contracted)
    x_batch = map(l -> dim_of(labels, l), batch)
    y_free = map(l -> dim_of(y_labels, l), y_only)
    y_contracted = map(l -> dim_of(y_labels, l), contracted)
    y_batch = map(l -> dim_of(y_labels, l), batch)
    sizes_of(dims, sz) = map(d -> sz[d], dims)
    return (
        x_perm = (x_free..., x_contracted..., x_batch...),
        y_perm = (y_contracted..., y_free..., y_batch...),
        m = prod(sizes_of(x_free, x_size); init = 1),
        k = prod(sizes_of(x_contracted, x_size); init = 1),
        n = prod(sizes_of(y_free, y_size); init = 1),
        batch = prod(sizes_of(x_batch, x_size); init = 1),
        labels = (x_only..., y_only..., batch...),
        shape = (
            sizes_of(x_free, x_size)...,
            sizes_of(y_free, y_size)...,
            sizes_of(x_batch, x_size)...,
        ),
    )
end

function permute_if(x::AbstractArray, perm::Tuple)
    return perm == Tuple(1:ndims(x)) ? x : permutedims(x, perm)
end

function einsum_output(x::Number, labels::Tuple, output::Tuple)
    isempty(output) || throw(ArgumentError("einsum: output labels $output of a number"))
    return x
end
function einsum_output(x::AbstractArray, labels::Tuple, output::Tuple)
    perm = map(label -> findfirst(==(label), labels), output)
    any(isnothing, perm) &&
        throw(ArgumentError("einsum: output labels $output not among $labels"))
    length(perm) == ndims(x) ||
        throw(ArgumentError("einsum: output $output does not name all of $labels"))
    return permute_if(x, perm)
end

@non_differentiable check_einsum(::Any, ::Any, ::Any)
@non_differentiable einsum_sizes(::Any, ::Any)
@non_differentiable einsum_needed(::Any, ::Any, ::Any)
@non_differentiable einsum_lonely(::Any, ::Any, ::Any)
@non_differentiable einsum_shape(::Any, ::Any)
@non_differentiable einsum_pair_plan(::Any, ::Any, ::Any, ::Any, ::Any)
@non_differentiable einsum_kept(::Any, ::Any)
@non_differentiable broadcast_batch(::Any, ::Any)
@non_differentiable batch_count(::Any)
@non_differentiable broadcast_size(::Any, ::Any, ::Any)
@non_differentiable expanded_sizes(::Any, ::Any)
