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
and returns the lower factor `L` in Julia layout, i.e. the dense upper factor `Lᵀ`. The
gradient is NumPy's convention in diffprog (symmetric: `(S + Sᵀ) / 2`).
"""
function npcholesky(At::AbstractMatrix)
    F = LinearAlgebra.cholesky(LinearAlgebra.Hermitian(At, :U))
    return LinearAlgebra.triu(F.factors)
end

# Lower triangle with the diagonal halved.
function lower_half_diagonal(X::AbstractMatrix)
    diagonal = LinearAlgebra.tril(LinearAlgebra.triu(X))
    return LinearAlgebra.tril(X, -1) .+ diagonal ./ 2
end

function ChainRulesCore.rrule(::typeof(npcholesky), At::AbstractMatrix)
    U = npcholesky(At)
    function npcholesky_pullback(Δ)
        ḡ = unthunk(Δ)
        ḡ isa AbstractZero && return (NoTangent(), ZeroTangent())
        # In NumPy terms: L = Uᵀ, g = ḡᵀ, P = Φ(Lᵀ g), S = L⁻ᵀ P L⁻¹, dA = (S + Sᵀ) / 2,
        # which is symmetric, so it is its own Julia layout.
        L = transpose_dense(U)
        P = lower_half_diagonal(U * transpose_dense(ḡ))
        Linv = inv(L)
        S = transpose_dense(Linv) * P * Linv
        return (NoTangent(), (S .+ transpose_dense(S)) ./ 2)
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

"""
    npeigh(At)

The eigenvalues (ascending) and eigenvectors of the symmetric matrix NumPy's `eigh` reads
from the lower triangle of `A` (the upper triangle of `At`), each eigenvector with its
largest-magnitude component positive (diffprog's choice of sign, the same on every engine);
the eigenvectors are the columns of NumPy's result, returned in Julia layout.
"""
function npeigh(At::AbstractMatrix)
    F = LinearAlgebra.eigen(LinearAlgebra.Symmetric(At, :U))
    return F.values, transpose_dense(F.vectors .* eigenvector_signs(F.vectors))
end

# the sign of the largest-magnitude component of each column (the first of equal ones)
eigenvector_signs(V::AbstractMatrix) = sign.(V[argmax(abs.(V); dims = 1)])
@non_differentiable eigenvector_signs(::Any)

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
