# Linear algebra helpers for generated code. Julia holds the TRANSPOSE of every NumPy
# matrix (reversed dims), so each helper receives `At = Aᵀ` and returns the transpose of
# NumPy's result. Single matrices only; the code generator refuses stacks.

transpose_dense(A::AbstractMatrix) = permutedims(A, (2, 1))

"""
    npsolve(At, b)

`numpy.linalg.solve(A, b)`: `x = A⁻¹ b` for a vector `b`; for a matrix `B` (Julia holds
`Bᵀ`) the result `Xᵀ = Bᵀ A⁻ᵀ` is `Bt / At`.
"""
npsolve(At::AbstractMatrix, b::AbstractVector) = transpose_dense(At) \ b
npsolve(At::AbstractMatrix, Bt::AbstractMatrix) = Bt / At

"""
    npinv(At)

`numpy.linalg.inv`: `inv(Aᵀ) = inv(A)ᵀ`, already in Julia layout.
"""
npinv(At::AbstractMatrix) = inv(At)

"""
    npdet(At)

`numpy.linalg.det` (`det(Aᵀ) = det(A)`), from [`npslogdet`](@ref) so that it runs on GPU
matrices and its gradient is `det(A) A⁻ᵀ`.
"""
function npdet(At::AbstractMatrix)
    sign_, logabs = npslogdet(At)
    return sign_ * exp(logabs)
end

"""
    npcholesky(At)

`numpy.linalg.cholesky(A)`: reads the lower triangle of `A` (the upper triangle of `At`)
and returns the lower factor `L` in Julia layout, i.e. the dense upper factor `Lᵀ`. A
complex `A` is read as the Hermitian matrix `M` NumPy builds from its lower triangle (the
diagonal's imaginary part unread); `Hermitian(At, :U)` is then `conj(M) = Uᴴ U` with
`U = Lᵀ`, so the result is `Lᵀ` for complex matrices too.

The gradient is that of NumPy's function of `A` (diffprog's Python rule): only the triangle
NumPy reads gets a cotangent, each entry below the diagonal standing for itself and its
mirror image.
"""
function npcholesky(At::AbstractMatrix)
    F = LinearAlgebra.cholesky(LinearAlgebra.Hermitian(At, :U))
    return LinearAlgebra.triu(F.factors)
end

# Lower triangle with the (real part of the) diagonal halved.
function lower_half_diagonal(X::AbstractMatrix)
    diagonal = real_part(LinearAlgebra.tril(LinearAlgebra.triu(X)))
    return LinearAlgebra.tril(X, -1) .+ diagonal ./ 2
end

adjoint_dense(A::AbstractMatrix) = conj_values(transpose_dense(A))

function ChainRulesCore.rrule(::typeof(npcholesky), At::AbstractMatrix)
    U = npcholesky(At)
    function npcholesky_pullback(Δ)
        ḡ = unthunk(Δ)
        ḡ isa AbstractZero && return (NoTangent(), ZeroTangent())
        # In NumPy terms, with L = Uᵀ and its cotangent L̄ = ḡᵀ (ChainRules' convention):
        # R = Φ(Lᴴ L̄) (lower triangle, real diagonal halved), S = L⁻ᴴ R L⁻¹ and the
        # cotangent of A is Φ(S + Sᴴ): the adjoint of dA ↦ L Φ(L⁻¹ M(dA) L⁻ᴴ), M(dA) the
        # Hermitian matrix read from dA's lower triangle. Back to Julia layout: transposed.
        L = transpose_dense(U)
        R = lower_half_diagonal(conj_values(U) * transpose_dense(ḡ))
        Linv = inv(L)
        S = adjoint_dense(Linv) * R * Linv
        return (NoTangent(), transpose_dense(lower_half_diagonal(S .+ adjoint_dense(S))))
    end
    return U, npcholesky_pullback
end

"""
    npeigvalsh(At)

`numpy.linalg.eigvalsh(A)`: the ascending eigenvalues of the symmetric matrix NumPy reads
from the lower triangle of `A`, which is the upper triangle of `At`. Zygote differentiates
it through ChainRules' rule for `eigvals` of a `Symmetric` matrix, and `Symmetric`'s own
rule takes the cotangent onto the triangle it reads: the gradient of NumPy's function, as
diffprog's Python rule (`primitives/linalg.py`).
"""
npeigvalsh(At::AbstractMatrix) = LinearAlgebra.eigvals(LinearAlgebra.Symmetric(At, :U))
# A complex A is read as the Hermitian matrix M that NumPy builds from its lower triangle;
# `Hermitian(At, :U)` is then conj(M), whose eigenvalues are M's (real).
function npeigvalsh(At::AbstractMatrix{<:Complex})
    return LinearAlgebra.eigvals(LinearAlgebra.Hermitian(At, :U))
end

"""
    npeigh(At)

The eigenvalues (ascending) and eigenvectors of the symmetric matrix NumPy's `eigh` reads
from the lower triangle of `A` (the upper triangle of `At`), each eigenvector with its
largest-magnitude component positive (diffprog's choice of sign, the same on every engine);
the eigenvectors are the columns of NumPy's result, returned in Julia layout.

A complex `A` is read as the Hermitian matrix `M` of its lower triangle; `Hermitian(At, :U)`
is `conj(M)`, whose eigenvectors `W` are the conjugates of `M`'s. Each is multiplied by the
unit phase that makes its largest-magnitude component real and positive (diffprog's choice,
as for the sign). That phase moves with `A`, so it is differentiated (ChainRules' `eigen`
rule returns LAPACK's phase, and the result does not depend on it).
"""
function npeigh(At::AbstractMatrix)
    F = LinearAlgebra.eigen(LinearAlgebra.Symmetric(At, :U))
    return F.values, transpose_dense(F.vectors .* eigenvector_signs(F.vectors))
end
function npeigh(At::AbstractMatrix{<:Complex})
    F = LinearAlgebra.eigen(LinearAlgebra.Hermitian(At, :U))
    W = F.vectors
    top = sum(W .* largest_component_mask(W); dims = 1)
    # conj(W ⋅ phase) are NumPy's columns, made positive at the largest component; Julia
    # layout is their transpose, i.e. the adjoint of W ⋅ phase
    return F.values, adjoint_dense(W .* (conj.(top) ./ abs.(top)))
end

# the sign of the largest-magnitude component of each column (the first of equal ones)
eigenvector_signs(V::AbstractMatrix) = sign.(V[argmax(abs.(V); dims = 1)])
@non_differentiable eigenvector_signs(::Any)

# true at the largest-magnitude component of each column (the first of equal ones)
function largest_component_mask(V::AbstractMatrix)
    mask = fill!(similar(V, Bool), false)
    mask[argmax(abs.(V); dims = 1)] .= true
    return mask
end
@non_differentiable largest_component_mask(::Any)

"""
    npmatmul_stacked(a, b)

`a @ b` for a stack of matrices `a` (NumPy shape `(..., m, k)`) times one matrix or
vector `b`: the stack is folded into the rows, one matrix product, unfolded again.
"""
function npmatmul_stacked(a::AbstractArray, b::AbstractVecOrMat)
    k, m = size(a, 1), size(a, 2)
    batch = size(a)[3:end]
    product = npmatmul(reshape(a, k, m * prod(batch; init = 1)), b)
    return reshape(product, (size(product)[1:(end - 1)]..., m, batch...))
end
