using DiffProg
using LinearAlgebra: LinearAlgebra
using Test

# Central finite differences of a real scalar function of one array (or number) argument.
# For a complex argument a + ib, the gradient in JAX's convention (diffprog's, and what
# DiffProg returns): ∂f/∂a - i ∂f/∂b.
function finite_difference_gradient(f, x::AbstractArray; h = 1.0e-6)
    return map(CartesianIndices(x)) do i
        step = zero(x)
        step[i] = h
        along(s) = (f(x .+ s) - f(x .- s)) / (2h)
        eltype(x) <: Complex ? along(step) - im * along(im .* step) : along(step)
    end
end
function finite_difference_gradient(f, x::Number; h = 1.0e-6)
    along(s) = (f(x + s) - f(x - s)) / (2h)
    return x isa Complex ? along(h) - im * along(im * h) : along(h)
end

# Finite differences of the first output of `p` with respect to argument `k`.
function finite_difference_gradient(p::Program, args::Tuple, k::Int; h = 1.0e-6)
    first_output = z -> value(p, Base.setindex(args, z, k))[1]
    return finite_difference_gradient(first_output, args[k]; h)
end

# The message of the exception `f()` throws (`nothing` if it returns).
function error_message(f)
    try
        f()
    catch e
        return sprint(showerror, e)
    end
    return nothing
end

# Generated programs pinned by tests/engines/golden (a git checkout; an installed package
# has no tests/ next to it) with their arguments and the NumPy engine's results.
const GOLDEN = normpath(joinpath(@__DIR__, "..", "..", "tests", "engines", "golden"))

const PRODUCT_SOURCE = """
function program(x1, x2)
    v3 = x1 .* x2
    v4 = sum(v3)
    return (v4, v3)
end
"""

@testset "DiffProg" begin
    @testset "load_program: own module, cache by source" begin
        p = load_program(PRODUCT_SOURCE)
        @test p isa Program
        @test parentmodule(p.func) === p.mod
        @test p.mod !== Main
        @test !isdefined(Main, :program)
        @test load_program(PRODUCT_SOURCE) === p
        q = load_program(PRODUCT_SOURCE * "\n# another program\n")
        @test q !== p && q.mod !== p.mod
        @test program_source(p) == PRODUCT_SOURCE
        @test_throws ArgumentError load_program("f(x) = x")
        @test_throws ArgumentError load_program("program = 1")
    end

    @testset "world age: load and call inside one function" begin
        load_and_run() = value(load_program("program(x) = (2 .* x,)"), ([1.0, 2.0],))
        @test load_and_run() == ([2.0, 4.0],)
    end

    @testset "generated code can call DiffProg helpers qualified" begin
        p = load_program("program(x) = (DiffProg.npsum(x; dims = (1,), keepdims = false),)")
        @test value(p, ([1.0 2.0; 3.0 4.0],)) == ([4.0, 6.0],)
    end

    @testset "value" begin
        p = load_program(PRODUCT_SOURCE)
        x1, x2 = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
        outputs = value(p, (x1, x2))
        @test outputs == (32.0, [4.0, 10.0, 18.0])
        @test p(x1, x2) == outputs
        single = load_program("program(x) = sum(x)")
        @test value(single, ([1.0, 2.0],)) == (3.0,)
    end

    @testset "value_and_gradient" begin
        p = load_program(PRODUCT_SOURCE)
        x1, x2 = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
        outputs, gradients = value_and_gradient(p, (x1, x2), (1, 2))
        @test outputs[1] == 32.0
        @test gradients == (x2, x1)
        @test gradients[1] !== x2 # never an input array handed back
        _, (g2,) = value_and_gradient(p, (x1, x2), 2)
        @test g2 == x1
        @test_throws ArgumentError value_and_gradient(p, (x1, x2), (3,))
    end

    @testset "nothing gradients become zeros of the argument's shape and type" begin
        p = load_program("program(x, y, n) = (sum(abs2, x),)")
        x, y = Float32[1, 2], Float32[1 2; 3 4]
        _, (gx, gy, gn) = value_and_gradient(p, (x, y, 3))
        @test gx == Float32[2, 4] && eltype(gx) === Float32
        @test gy == zeros(Float32, 2, 2) && eltype(gy) === Float32
        @test gn === 0.0
    end

    @testset "gradient eltype follows the argument" begin
        p = load_program("program(x) = (sum(x .* 2.0),)") # Float64 literal promotes
        _, (g,) = value_and_gradient(p, (Float32[1, 2],))
        @test eltype(g) === Float32 && g == Float32[2, 2]
    end

    @testset "first output must be scalar" begin
        p = load_program("program(x) = (x .* 2,)")
        @test_throws ArgumentError value_and_gradient(p, ([1.0, 2.0],))
        zero_dim = load_program("program(x) = (fill(sum(x)),)")
        _, (g,) = value_and_gradient(zero_dim, ([1.0, 2.0],))
        @test g == [1.0, 1.0]
    end

    @testset "pullback" begin
        p = load_program(PRODUCT_SOURCE)
        x1, x2 = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
        outputs, (g1, g2) = pullback(p, (x1, x2), (2.0, [1.0, 0.0, -1.0]))
        @test outputs[1] == 32.0
        @test g1 ≈ 2.0 .* x2 .+ [1.0, 0.0, -1.0] .* x2
        @test g2 ≈ 2.0 .* x1 .+ [1.0, 0.0, -1.0] .* x1
        _, (h1, h2) = pullback(p, (x1, x2), (nothing, nothing))
        @test h1 == zeros(3) && h2 == zeros(3)
        @test_throws DimensionMismatch pullback(p, (x1, x2), (1.0,))
    end

    @testset "jacobian" begin
        p = load_program("program(A, x) = (A * x, sum(x))")
        A, x = [1.0 2.0; 3.0 4.0; 5.0 6.0], [1.0, -1.0]
        y, (JA, Jx) = jacobian(p, (A, x))
        @test y == A * x
        @test size(Jx) == (2, 3) # (size(x)..., size(y)...): NumPy sees y.shape + x.shape
        @test permutedims(Jx) == A
        @test size(JA) == (3, 2, 3)
        for k in 1:3, i in 1:3, j in 1:2
            @test JA[i, j, k] == (i == k ? x[j] : 0.0)
        end
        s, (Js,) = jacobian(p, (A, x); output = 2, wrt = 2)
        @test s == 0.0 && Js == [1.0, 1.0]
        scalar_in = load_program("program(a, x) = (a .* x,)")
        _, (Ja,) = jacobian(scalar_in, (2.0, [1.0, 2.0, 3.0]); wrt = 1)
        @test Ja == [1.0, 2.0, 3.0]
    end

    @testset "hessian" begin
        p = load_program("program(x, c) = (sum(c .* x .^ 3), x)")
        x, c = [1.0, 2.0], [3.0, 4.0]
        H = hessian(p, (x, c), 1)
        @test H ≈ LinearAlgebra.diagm(6 .* c .* x)
        q = load_program("program(A, x) = (x' * A * x,)")
        A = [2.0 1.0; 1.0 3.0]
        @test hessian(q, (A, [1.0, 1.0]), 2) ≈ 2A
    end

    @testset "compile notices" begin
        p = load_program("program(x) = (x,)")
        @test DiffProg.note_compilation!(p, :value, ([1.0],))
        @test !DiffProg.note_compilation!(p, :value, ([2.0],))
        @test DiffProg.note_compilation!(p, :value, (Float32[2.0],))
        @test !compile_notices!(false)
        compile_notices!(true)
    end

    @testset "exchange without Python" begin
        a = reshape(collect(1.0:6.0), 3, 2) # NumPy shape (2, 3) in Julia layout
        @test import_array(a, (2, 3)) === a
        b = import_array(reshape(collect(1.0:6.0), 2, 3), (2, 3)) # read unreversed
        @test size(b) == (3, 2) && vec(b) == 1.0:6.0
        @test import_array(2.5, ()) === 2.5
        @test_throws DimensionMismatch import_array(a, (4, 2))
        @test export_array(a) === a
        @test export_array(a') == permutedims(a) && export_array(a') isa Matrix
        outputs = export_outputs(((1.0, a), (a',)))
        @test outputs[1][2] === a && outputs[2][1] isa Matrix
        @test !DiffProg.on_gpu(a)
    end

    @testset "numpy-compatible reductions" begin
        x = reshape(collect(1.0:24.0), 2, 3, 4)
        @test npsum(x) == sum(x) && npsum(x) isa Float64
        @test npsum(x; dims = (1, 3)) == vec(sum(x; dims = (1, 3)))
        @test size(npsum(x; dims = 2, keepdims = true)) == (2, 1, 4)
        @test size(npsum(x; dims = :, keepdims = true)) == (1, 1, 1)
        @test npsum(x; dims = ()) === x
        @test npmean(x; dims = 3) == dropdims(sum(x; dims = 3) ./ 4; dims = 3)
        @test npprod([1.0 2.0; 3.0 4.0]; dims = 2) == [2.0, 12.0]
        @test npmax(x; dims = 1) == dropdims(maximum(x; dims = 1); dims = 1)
        @test npmin(x) == 1.0
        @test_throws ArgumentError npsum(x; dims = 4)
    end

    @testset "npmax gradient shares ties" begin
        p = load_program("program(x) = (DiffProg.npmax(x),)")
        _, (g,) = value_and_gradient(p, ([1.0, 3.0, 3.0],))
        @test g == [0.0, 0.5, 0.5]
        q = load_program("program(x) = (sum(DiffProg.npmin(x; dims = 1)),)")
        _, (h,) = value_and_gradient(q, ([1.0 5.0; 2.0 0.0],))
        @test h == [1.0 0.0; 0.0 1.0]
    end

    @testset "npmaximum, npclip, npwhere gradients" begin
        p = load_program("program(x, y) = (sum(DiffProg.npmaximum(x, y)),)")
        _, (gx, gy) = value_and_gradient(p, ([1.0, 2.0, 3.0], 2.0))
        @test gx == [0.0, 0.5, 1.0] && gy == 1.5
        clip = load_program("program(x, lo, hi) = (sum(DiffProg.npclip(x, lo, hi)),)")
        _, (cx, clo, chi) = value_and_gradient(clip, ([-2.0, 0.0, 0.5, 1.0, 3.0], 0.0, 1.0))
        # ties (x == lo, x == hi) split 1/2 each, as np.maximum/np.minimum in diffprog
        @test cx == [0.0, 0.5, 1.0, 0.5, 0.0] && clo == 1.5 && chi == 1.5
        @test npclip([-1.0, 5.0], 2.0, 1.0) == [1.0, 1.0] # hi wins when lo > hi, as NumPy
        @test npclip([-1.0, 5.0], nothing, 1.0) == [-1.0, 1.0]
        @test npclip([-1.0, 5.0], 0.0, nothing) == [0.0, 5.0]
        where_ = load_program("program(c, x, y) = (sum(DiffProg.npwhere(c, x, y)),)")
        _, (_, wx, wy) = value_and_gradient(where_, ([true, false], [1.0, 2.0], 3.0))
        @test wx == [1.0, 0.0] && wy == 1.0
    end

    @testset "logaddexp" begin
        @test logaddexp(1000.0, 1000.0) ≈ 1000.0 + log(2)
        @test logaddexp(-Inf, -Inf) == -Inf
        @test logaddexp(Inf, 1.0) == Inf
        @test nplogaddexp([0.0, 1.0], 0.0) ≈ log.(exp.([0.0, 1.0]) .+ 1)
        p = load_program("program(x, y) = (sum(DiffProg.nplogaddexp(x, y)),)")
        x, y = [0.5, -1.0, 800.0], [0.5, 2.0, 799.0]
        _, (gx, gy) = value_and_gradient(p, (x, y))
        @test gx ≈ [0.5, exp(-1.0) / (exp(-1.0) + exp(2.0)), 1 / (1 + exp(-1.0))]
        @test gx .+ gy ≈ ones(3)
    end

    @testset "npmatmul matches NumPy on reversed axes" begin
        A = [1.0 2.0 3.0; 4.0 5.0 6.0]  # NumPy (2, 3)
        B = [1.0 0.0; 0.0 1.0; 1.0 1.0] # NumPy (3, 2)
        a_j, b_j = permutedims(A), permutedims(B)
        @test npmatmul(a_j, b_j) == permutedims(A * B)
        v = [1.0, 1.0, 1.0]
        @test npmatmul(a_j, v) == A * v
        @test npmatmul(v, b_j) == permutedims(B) * v
        @test npmatmul(v, v) == 3.0
        @test_throws ArgumentError npmatmul(zeros(2, 2, 2), zeros(2, 2))
    end

    @testset "npslogdet" begin
        M = [2.0 1.0 0.0; 1.0 -3.0 1.0; 0.0 1.0 4.0]
        s, l = npslogdet(permutedims(M))
        @test s == sign(LinearAlgebra.det(M)) && l ≈ log(abs(LinearAlgebra.det(M)))
        @test npslogdet([1.0 2.0; 2.0 4.0]) === (0.0, -Inf)
        p = load_program("program(A) = (DiffProg.npslogdet(A)[2],)")
        _, (g,) = value_and_gradient(p, (M,))
        @test g ≈ permutedims(inv(M))
    end

    @testset "nptake, npscatter_add, nponehot" begin
        x = reshape(collect(1.0:12.0), 3, 4) # NumPy shape (4, 3)
        @test nptake(x, [0, 2, -1]; dim = 2) == x[:, [1, 3, 4]]
        @test size(nptake(x, [0 1; 2 3]; dim = 2)) == (3, 2, 2)
        @test nptake(x, 1; dim = 1) == x[2, :]
        g = ones(3, 3)
        @test npscatter_add(g, [0, 0, 3], 4; dim = 2) ==
            [2.0 0.0 0.0 1.0; 2.0 0.0 0.0 1.0; 2.0 0.0 0.0 1.0]
        @test nponehot([0, 2, -1], 3) == [1.0 0.0 0.0; 0.0 0.0 0.0; 0.0 1.0 1.0]
        p = load_program("program(x, i) = (sum(DiffProg.nptake(x, i; dim = 1) .^ 2),)")
        _, (gx, gi) = value_and_gradient(p, ([1.0, 2.0, 3.0], [0, 0, 2]))
        @test gx == [4.0, 0.0, 6.0]
        @test gi == zeros(3)
        # Second order through the gather/scatter pair.
        @test hessian(p, ([1.0, 2.0, 3.0], [0, 0, 2]), 1) ==
            LinearAlgebra.diagm([4.0, 0.0, 2.0])
    end

    @testset "gradients agree with finite differences" begin
        source = """
        function program(x, y)
            v1 = DiffProg.nplogaddexp(x, y)
            v2 = DiffProg.npclip(v1, 0.5, 2.5)
            v3 = DiffProg.npsum(v2 .* x; dims = (1,), keepdims = false)
            return (sum(v3), v3)
        end
        """
        p = load_program(source)
        x, y = [0.1 1.2; -0.7 2.0], [0.4 -0.3; 1.1 0.9]
        _, (gx, gy) = value_and_gradient(p, (x, y))
        @test gx ≈ finite_difference_gradient(z -> value(p, (z, y))[1], x) atol = 1.0e-6
        @test gy ≈ finite_difference_gradient(z -> value(p, (x, z))[1], y) atol = 1.0e-6
    end

    @testset "shape helpers match NumPy on reversed axes" begin
        x = reshape(collect(1.0:12.0), 4, 3) # NumPy shape (3, 4)
        @test npreshape(x, (6, 2)) == reshape(x, 6, 2)
        @test npreshape(2.0, (1, 1)) == fill(2.0, 1, 1)
        @test npbroadcast_to([1.0, 2.0], (2, 3)) == [1.0 1.0 1.0; 2.0 2.0 2.0]
        @test convert_eltype(Float32, [1.5, -2.5]) == Float32[1.5, -2.5]
        @test convert_eltype(Int, [1.7, -2.7]) == [1, -2]
        @test convert_eltype(Bool, [0.0, 3.0]) == [false, true]
        @test nppad([1.0, 2.0], ((1, 2),), 0.0) == [0.0, 1.0, 2.0, 0.0, 0.0]
        @test npargmax([1.0 5.0; 7.0 2.0]; dim = 1) == [1, 0]
        @test npargmin([1.0 5.0; 7.0 2.0]; dim = 2) == [0, 1]
        @test npargsort([3.0, 1.0, 2.0]; dim = 1) == [1, 2, 0]
        # npunslice is the adjoint of basic slicing, steps and reversal included.
        for range in (2:2:5, 5:-2:1, 1:5, 3:3, 4:3)
            g = collect(1.0:length(range))
            dense = zeros(5)
            dense[collect(range)] .+= g
            @test npunslice(g, (range,), (5,)) == dense
        end
        _, (gs,) = value_and_gradient(
            load_program("program(x) = (sum(x[5:-2:1] .^ 2),)"),
            (collect(1.0:5.0),),
        )
        @test gs == [2.0, 0.0, 6.0, 0.0, 10.0]
        _, (gu,) = value_and_gradient(
            load_program("program(g) = (sum(DiffProg.npunslice(g, (2:2:5,), (5,)) .^ 2),)"),
            ([1.0, 2.0],),
        )
        @test gu == [2.0, 4.0]
    end

    @testset "linear algebra helpers match NumPy on reversed axes" begin
        A = [4.0 1.3 0.5; 1.0 3.0 0.2; 0.6 0.2 2.0]
        At = permutedims(A, (2, 1))
        b = [1.0, 2.0, 3.0]
        B = [1.0 0.5; 2.0 -1.0; 3.0 0.0]
        @test npsolve(At, b) ≈ A \ b
        @test npsolve(At, permutedims(B, (2, 1))) ≈ permutedims(A \ B, (2, 1))
        @test npinv(At) ≈ permutedims(inv(A), (2, 1))
        @test npdet(At) ≈ LinearAlgebra.det(A)
        S = A * permutedims(A, (2, 1))
        L = LinearAlgebra.cholesky(LinearAlgebra.Symmetric(S)).L
        @test npcholesky(permutedims(S, (2, 1))) ≈ permutedims(Matrix(L), (2, 1))
        stack = reshape(collect(1.0:12.0), 3, 2, 2) # NumPy (2, 2, 3)
        w = [1.0 0.0 2.0; 0.0 1.0 -1.0]             # NumPy (3, 2)
        expected = cat(npmatmul(stack[:, :, 1], w), npmatmul(stack[:, :, 2], w); dims = 3)
        @test npmatmul_stacked(stack, w) ≈ expected
        p = load_program("program(a) = (DiffProg.npdet(a),)")
        _, (gdet,) = value_and_gradient(p, (At,))
        @test gdet ≈ finite_difference_gradient(z -> value(p, (z,))[1], At) atol = 1.0e-5
        q = load_program("program(a) = (sum(DiffProg.npcholesky(a) .^ 3),)")
        St = permutedims(S, (2, 1))
        _, (gchol,) = value_and_gradient(q, (St,))
        # NumPy reads the lower triangle of A, the upper one of At: the gradient is that of
        # this function of At, zero below the diagonal (diffprog's Python rule)
        @test gchol ≈ finite_difference_gradient(z -> value(q, (z,))[1], St) atol = 1.0e-4
        @test LinearAlgebra.tril(gchol, -1) == zeros(3, 3)
    end

    @testset "npscan: forward, stacked outputs, gradient" begin
        # carry c, step output c * x: c_i = 0.5 c + x_i
        source = """
        function program(a1, a2)
            f1 = function (b1, b2)
                v1 = 0.5 .* b1 .+ b2
                return (v1, v1 .* b2)
            end
            v2, v3 = DiffProg.npscan(f1, (a1,), (a2,), (), 3, false, Val(1))
            return (v2 .+ sum(v3),)
        end
        """
        p = load_program(source)
        c0, xs = 1.0, [0.5, -1.0, 2.0]
        c, ys = c0, Float64[]
        for x in xs
            c = 0.5 * c + x
            push!(ys, c * x)
        end
        @test value(p, (c0, xs))[1] ≈ c + sum(ys)
        _, (g_c0, g_xs) = value_and_gradient(p, (c0, xs))
        @test g_c0 ≈ finite_difference_gradient(p, (c0, xs), 1) rtol = 1.0e-6
        @test g_xs ≈ finite_difference_gradient(p, (c0, xs), 2) rtol = 1.0e-6
        @test g_xs isa Vector{Float64}
        # backwards (NumPy's reverse=True) and array carries with per-step scalars
        back = load_program(replace(source, "3, false" => "3, true"))
        _, (_, h_xs) = value_and_gradient(back, (c0, xs))
        @test h_xs ≈ finite_difference_gradient(back, (c0, xs), 2) rtol = 1.0e-6
        arrays_source = """
        function program(a1, a2)
            f1 = function (b1, b2)
                v1 = b1 .* b2
                return (v1, sum(v1))
            end
            v2, v3 = DiffProg.npscan(f1, (a1,), (a2,), (), 3, false, Val(1))
            return (sum(v2) + sum(v3 .^ 2), v3)
        end
        """
        arrays = load_program(arrays_source)
        y0, factors = [1.0, -2.0], [0.5, 1.5, -1.0]
        outputs = value(arrays, (y0, factors))
        @test outputs[2] isa Vector{Float64} && length(outputs[2]) == 3
        _, (g_y0, g_f) = value_and_gradient(arrays, (y0, factors))
        @test g_y0 ≈ finite_difference_gradient(arrays, (y0, factors), 1) rtol = 1.0e-6
        @test g_f ≈ finite_difference_gradient(arrays, (y0, factors), 2) rtol = 1.0e-6
    end

    @testset "npscan: integer index in float maths (fori_loop, odeint)" begin
        # fori_loop's index array is an Int64 constant scanned by the loop; the body uses
        # it in float maths, so Zygote returns a Float64 cotangent for the Int step value
        p_source = """
        function program(a1, a2, c1)
            f1 = function (b1, b2, b3)
                v1 = b1 .+ b3 .* (b2 .* 0.25) .* b1
                return (v1,)
            end
            (v2,) = DiffProg.npscan(f1, (a1,), (c1,), (a2,), 4, false, Val(1))
            return (sum(v2),)
        end
        """
        p = load_program(p_source)
        args = ([1.0, 2.0], 0.3, [0, 1, 2, 3])
        _, (g_y, g_dt, g_index) = value_and_gradient(p, args)
        @test g_y ≈ finite_difference_gradient(p, args, 1) rtol = 1.0e-6
        @test g_dt ≈ finite_difference_gradient(p, args, 2) rtol = 1.0e-6
        @test g_index == zeros(4) # no cotangent for integers (zeros, float eltype)
    end

    @testset "npscan: bodies that touch only integers, Bool carries" begin
        # rrule_via_ad gives one NoTangent() for a step whose pullback is all `nothing`
        p_source = """
        function program(a1, c1)
            f1 = function (b1, b2)
                return (b1 .+ b2,)
            end
            (v1,) = DiffProg.npscan(f1, (0,), (c1,), (), 3, false, Val(1))
            return (sum(a1 .* v1),)
        end
        """
        p = load_program(p_source)
        _, (g_x, _) = value_and_gradient(p, ([1.0, 2.0], [1, 2, 3]))
        @test g_x == [6.0, 6.0]
        flag_source = """
        function program(a1)
            f1 = function (b1, b2)
                v1 = b1 .& (sum(b2) .< 10.0)
                v2 = DiffProg.npcond(v1, b -> (b .* 2.0,), b -> (b,), (b2,))
                return (v1, v2[1])
            end
            _, v3 = DiffProg.npscan(f1, (true, a1), (), (), 4, false, Val(2))
            return (sum(v3),)
        end
        """
        flag = load_program(flag_source)
        x = [1.0, 2.0]
        _, (g,) = value_and_gradient(flag, (x,))
        @test g ≈ finite_difference_gradient(flag, (x,), 1) rtol = 1.0e-6
    end

    @testset "npscan: 0-d values are numbers; 0-dim step outputs" begin
        p_source = """
        function program(a1, a2)
            f1 = function (b1, b2)
                v1 = sin.(b1) .+ b1 .* b2
                return (v1, v1)
            end
            v2, v3 = DiffProg.npscan(f1, (a1,), (a2,), (), 3, false, Val(1))
            return (v2 .+ sum(v3 .^ 2),)
        end
        """
        p = load_program(p_source)
        args = (0.5, [0.1, 0.2, 0.3])
        outputs = value(p, args)
        @test outputs[1] isa Float64
        _, (g0, gx) = value_and_gradient(p, args)
        @test g0 isa Float64
        @test g0 ≈ finite_difference_gradient(p, args, 1) rtol = 1.0e-6
        @test gx ≈ finite_difference_gradient(p, args, 2) rtol = 1.0e-6
        # a 0-dim array step output (as `reshape(x, ())` made before 0-d values were
        # numbers) stacks into a vector and gets 0-dim cotangents back
        zero_dim_source = """
        function program(a1)
            f1 = function (b1)
                return (b1 .* 2.0, reshape(b1[1:1], ()))
            end
            _, v1 = DiffProg.npscan(f1, (a1,), (), (), 3, false, Val(1))
            return (sum(v1 .^ 2),)
        end
        """
        zero_dim = load_program(zero_dim_source)
        _, (gz,) = value_and_gradient(zero_dim, ([1.0, 3.0],))
        @test gz ≈ finite_difference_gradient(zero_dim, ([1.0, 3.0],), 1) rtol = 1.0e-6
    end

    @testset "npscan: second derivatives are refused with a clear error" begin
        p_source = """
        function program(a1)
            f1 = function (b1, b2)
                return (b1 .* b2,)
            end
            (v1,) = DiffProg.npscan(f1, (a1,), ([1.0, 2.0],), (), 2, false, Val(1))
            return (sum(v1 .^ 3),)
        end
        """
        p = load_program(p_source)
        message = error_message(() -> hessian(p, ([0.5, 1.0],), 1))
        @test message !== nothing && occursin("npscan", message)
    end

    @testset "npcond, npwhile, npremat" begin
        cond_source = """
        function program(a1)
            (v1,) = DiffProg.npcond(sum(a1) > 0, b -> (b .^ 2,), b -> (-b,), (a1,))
            return (sum(v1),)
        end
        """
        cond = load_program(cond_source)
        _, (g,) = value_and_gradient(cond, ([1.0, 2.0],))
        @test g == [2.0, 4.0]
        _, (h,) = value_and_gradient(cond, ([-1.0, -2.0],))
        @test h == [-1.0, -1.0]
        loop_source = """
        function program(a1)
            (v1,) = DiffProg.npwhile(b -> (sum(b) < 10.0,), b -> (b .* 1.5,), (a1,), (), ())
            return (sum(v1),)
        end
        """
        loop = load_program(loop_source)
        x = [1.0, 2.0]
        @test value(loop, (x,))[1] ≈ sum(x .* 1.5^3)
        _, (gl,) = value_and_gradient(loop, (x,))
        @test gl ≈ fill(1.5^3, 2)
        remat_source = """
        function program(a1, a2)
            (v1,) = DiffProg.npremat((b, c) -> (tanh.(b) .* c,), (a1, a2))
            return (sum(v1),)
        end
        """
        remat = load_program(remat_source)
        args = ([0.3, -0.7], [2.0, 3.0])
        _, (ga, gb) = value_and_gradient(remat, args)
        @test ga ≈ finite_difference_gradient(remat, args, 1) rtol = 1.0e-6
        @test gb ≈ finite_difference_gradient(remat, args, 2) rtol = 1.0e-6
    end

    @testset "0-d values: numbers in, numbers out" begin
        @test import_array(fill(2.5), ()) === 2.5
        @test npreshape([2.0], ()) === 2.0
        @test npreshape(3.0, ()) === 3.0
        @test npreshape(2.0, (2, 1)) == fill(2.0, 2, 1)
        @test npscalar([true]) === true && npscalar(Int32[7]) === Int32(7)
        @test_throws DimensionMismatch npscalar([1.0, 2.0])
        @test nptake([1.0, 2.0, 3.0], -1; dim = 1) === 3.0
        # dp.grad(lambda x: np.sin(x) + x) at a 0-d input
        p_source = """
        function program(a1)
            v1 = sin.(a1)
            v2 = v1 .+ a1
            return (v2,)
        end
        """
        p = load_program(p_source)
        _, (g,) = value_and_gradient(p, (0.5,))
        @test g ≈ cos(0.5) + 1
        # npreshape(b[1:1], ()) used twice (odeint's time grid)
        twice_source = """
        function program(a1)
            v1 = sum(a1[1:1])
            v2 = sum(a1[2:2])
            v3 = (v2 .- v1) .* v1
            return (v3 .+ v1,)
        end
        """
        twice = load_program(twice_source)
        _, (gt,) = value_and_gradient(twice, ([0.5, 2.0],))
        @test gt ≈ finite_difference_gradient(twice, ([0.5, 2.0],), 1) rtol = 1.0e-6
        # jacobian with respect to a number
        jac = load_program("program(a1, a2) = (sin.(a1) .* a2,)")
        _, (ja,) = jacobian(jac, (0.5, [1.0, 2.0]); wrt = 1)
        @test ja ≈ cos(0.5) .* [1.0, 2.0]
        @test hessian(load_program("program(a1) = (a1 .^ 3,)"), (2.0,), 1) ≈ 12.0
    end

    @testset "npprod and npcumprod: exact at zeros" begin
        # columns without, with one and with two zeros; products along Julia dim 1
        prod_source = "program(x) = (sum([1.0, -2.0, 0.5] .* DiffProg.npprod(x; dims = 1)),)"
        prod_p = load_program(prod_source)
        x = [2.0 2.0 0.0; 3.0 0.0 0.0; 4.0 4.0 4.0]
        _, (g,) = value_and_gradient(prod_p, (x,))
        weights = [1.0, -2.0, 0.5]
        others(col, i) = prod(x[j, col] for j in 1:3 if j != i)
        expected = [weights[col] * others(col, i) for i in 1:3, col in 1:3]
        @test g ≈ expected
        whole = load_program("program(x) = (DiffProg.npprod(x),)")
        x = [1.5 0.0; 2.0 -1.0]
        _, (gw,) = value_and_gradient(whole, (x,))
        @test gw ≈ [0.0 -3.0; 0.0 0.0]
        # second derivatives at one zero: d²/dxi dxj = product of the others (i != j)
        H = hessian(whole, ([2.0, 0.0, 4.0],), 1)
        @test H ≈ [0.0 4.0 0.0; 4.0 0.0 2.0; 0.0 2.0 0.0]
        cum = load_program("program(x, w) = (sum(w .* DiffProg.npcumprod(x; dims = 1)),)")
        w = [1.0, -2.0, 0.5, 3.0]
        for x in ([1.5, 2.0, -1.0, 0.5], [1.5, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, 0.5])
            _, (gc, _) = value_and_gradient(cum, (x, w))
            @test gc ≈ finite_difference_gradient(cum, (x, w), 1) atol = 1.0e-6
        end
        Hc = hessian(cum, ([1.5, 0.0, -1.0, 0.5], w), 1)
        gradient_entry(j) = z -> value_and_gradient(cum, (z, w))[2][1][j]
        x0 = [1.5, 0.0, -1.0, 0.5]
        columns = [finite_difference_gradient(gradient_entry(j), x0) for j in 1:4]
        @test Hc ≈ reduce(hcat, columns) atol = 1.0e-5
    end

    @testset "npeinsum and npmatmul_batched match loops" begin
        # NumPy a (3, 4), b (4, 5): "ij,jk->ik"; Julia holds the transposes
        A, B = reshape(collect(1.0:12.0), 3, 4), reshape(collect(1.0:20.0) ./ 7, 4, 5)
        at, bt = permutedims(A), permutedims(B)
        @test npeinsum(((2, 1), (3, 2)), (3, 1), at, bt) ≈ permutedims(A * B)
        # "ij,ij->i", "ij->", "ij,jk,k->i"
        C = sqrt.(reshape(collect(1.0:12.0), 3, 4))
        by_rows = vec(sum(A .* C; dims = 2))
        @test npeinsum(((2, 1), (2, 1)), (1,), at, permutedims(C)) ≈ by_rows
        @test npeinsum(((2, 1),), (), at) ≈ sum(A)
        v = [1.0, -1.0, 2.0, 0.5, 3.0]
        @test npeinsum(((2, 1), (3, 2), (3,)), (1,), at, bt, v) ≈ A * B * v
        # batch labels: "bij,bjk->bik" with b = 2
        S = reshape(collect(1.0:24.0), 2, 3, 4)      # NumPy (2, 3, 4)
        T = reshape(collect(1.0:40.0) ./ 9, 2, 4, 5) # NumPy (2, 4, 5)
        st, tt = permutedims(S, (3, 2, 1)), permutedims(T, (3, 2, 1))
        expected = cat([S[b, :, :] * T[b, :, :] for b in 1:2]...; dims = 3) # (3, 5, 2)
        @test npeinsum(((3, 2, 1), (4, 3, 1)), (4, 2, 1), st, tt) ≈
            permutedims(expected, (2, 1, 3))
        @test npmatmul_batched(st, tt) ≈ permutedims(expected, (2, 1, 3))
        # a matrix against a stack broadcasts; a vector drops its dim
        @test npmatmul_batched(at, tt) ≈
            cat([permutedims(A * T[b, :, :]) for b in 1:2]...; dims = 3)
        @test npmatmul_batched([1.0, 2.0, 0.5, -1.0], tt) ≈
            reduce(hcat, [permutedims(T[b, :, :]) * [1.0, 2.0, 0.5, -1.0] for b in 1:2])
        p_source = """
        function program(a1, a2)
            v1 = DiffProg.npeinsum(((3, 2, 1), (4, 3, 1)), (4, 2, 1), a1, a2)
            v2 = DiffProg.npmatmul_batched(a1, a2)
            return (sum(v1 .^ 2) + sum(sin.(v2)),)
        end
        """
        p = load_program(p_source)
        _, (gs, gt) = value_and_gradient(p, (st, tt))
        @test gs ≈ finite_difference_gradient(p, (st, tt), 1) rtol = 1.0e-5
        @test gt ≈ finite_difference_gradient(p, (st, tt), 2) rtol = 1.0e-5
        @test_throws ArgumentError npeinsum(((1, 1),), (1,), [1.0 2.0; 3.0 4.0])
    end

    @testset "arrays made from numbers follow the call's device (template)" begin
        @test DiffProg.array_template() === nothing
        inside = DiffProg.with_array_template((Float32[1, 2], 3.0)) do
            (DiffProg.array_template(), npreshape(1.0f0, (2,)))
        end
        @test inside[1] == Float32[1, 2]
        @test inside[2] == Float32[1, 1] && inside[2] isa Vector{Float32}
        @test DiffProg.array_template() === nothing
    end

    @testset "complex values: JAX's convention" begin
        z = [0.5 + 1.0im, -1.0 + 0.25im, 0.75 - 0.5im]
        # a real function of complex z = a + ib: ∂f/∂a - i ∂f/∂b (Zygote's is the conjugate)
        abs2_sum = load_program("program(z) = (sum(abs2.(z)),)")
        _, (g,) = value_and_gradient(abs2_sum, (z,))
        @test g ≈ 2 .* conj.(z)
        @test g ≈ finite_difference_gradient(abs2_sum, (z,), 1) atol = 1.0e-6
        @test eltype(g) === ComplexF64
        mixed = """
        function program(z, k)
            v1 = exp.(ComplexF64(0.0, 1.0) .* k .* z)
            return (sum(real.(v1) .* imag.(z)) + sum(abs.(v1 .* z)),)
        end
        """
        q = load_program(mixed)
        _, (gz, gk) = value_and_gradient(q, (z, 0.7))
        @test gz ≈ finite_difference_gradient(q, (z, 0.7), 1) atol = 1.0e-6
        @test gk isa Float64 # the cotangent of a real argument is real
        @test gk ≈ finite_difference_gradient(q, (z, 0.7), 2) atol = 1.0e-6
        # holomorphic: a complex scalar output seeded with 1 gives f'(z)
        cube = load_program("program(z) = (sum(z .^ 3),)")
        _, (gc,) = value_and_gradient(cube, (z,))
        @test gc ≈ 3 .* z.^2
        _, (gs,) = value_and_gradient(
            load_program("program(z) = (sin(z) * z,)"),
            (0.3 + 0.2im,),
        )
        @test gs ≈ cos(0.3 + 0.2im) * (0.3 + 0.2im) + sin(0.3 + 0.2im)
        # pullback: JAX's vjp of the C-linear map z ↦ w z is c ↦ c w (no conjugate)
        w = ComplexF64(2.0, 1.0)
        linear = load_program("program(z) = (z .* ComplexF64(2.0, 1.0),)")
        c = [1.0 - 1.0im, 0.5im, 2.0 + 0.0im]
        _, (gl,) = pullback(linear, (z,), (c,))
        @test gl ≈ c .* w
        # conj is its own transpose: the vjp of conj is conj
        _, (gconj,) = pullback(load_program("program(z) = (conj.(z),)"), (z,), (c,))
        @test gconj ≈ conj.(c)
        # a real argument of a complex output keeps the real part of the cotangent
        _, (gr,) = pullback(
            load_program("program(x) = (x .* ComplexF64(2.0, 1.0),)"),
            ([1.0, 2.0, 3.0],),
            (c,),
        )
        @test gr ≈ real.(c .* w) && eltype(gr) === Float64
        # jacobians as JAX's jacrev: holomorphic for complex to complex, gradients as rows
        # for a real output, refused for a complex output of a real argument
        square = load_program("program(z) = (z .^ 2,)")
        _, (J,) = jacobian(square, (z,))
        @test J ≈ LinearAlgebra.diagm(2 .* z) # Julia dims (x, y): diagonal either way
        _, (Jr,) = jacobian(load_program("program(z) = (abs2.(z),)"), (z,))
        @test Jr ≈ LinearAlgebra.diagm(2 .* conj.(z))
        to_complex = load_program("program(x) = (x .* ComplexF64(2.0, 1.0),)")
        @test_throws ArgumentError jacobian(to_complex, ([1.0, 2.0],))
        # hessians: f''(z) for a holomorphic f, refused for a real f of complex z
        @test hessian(cube, (z,), 1) ≈ LinearAlgebra.diagm(6 .* z)
        @test_throws ArgumentError hessian(abs2_sum, (z,), 1)
        # Zygote 0.7.11 or later differentiates complex broadcasts correctly
        problem = DiffProg.complex_derivative_problem()
        version = pkgversion(DiffProg.Zygote)
        @test (problem === nothing) == (version === nothing || version >= v"0.7.11")
    end

    @testset "complex values: helpers" begin
        Z = [
            2.0 + 1.0im 0.5 - 0.5im 0.0 + 0.3im
            1.0 + 0.0im -1.0 + 2.0im 0.5 + 0.0im
            0.2 - 0.1im 0.0 + 1.0im 3.0 - 1.0im
        ]
        Zt = permutedims(Z)
        s, l = npslogdet(Zt)
        d = LinearAlgebra.det(Z)
        @test s ≈ d / abs(d) && l ≈ log(abs(d)) && l isa Float64
        @test npdet(Zt) ≈ d
        @test npslogdet(ComplexF64[1 2; 2 4]) == (0.0 + 0.0im, -Inf)
        # d/dA of Re(conj(u) sign) + logabsdet against finite differences (JAX's convention)
        slog = load_program(
            """
        function program(A)
            s, l = DiffProg.npslogdet(A)
            return (real(ComplexF64(0.3, -0.7) * s) + l,)
        end
        """,
        )
        _, (gsl,) = value_and_gradient(slog, (Zt,))
        @test gsl ≈ finite_difference_gradient(slog, (Zt,), 1) atol = 1.0e-6
        det_p = load_program("program(A) = (abs2(DiffProg.npdet(A)),)")
        _, (gd,) = value_and_gradient(det_p, (Zt,))
        @test gd ≈ finite_difference_gradient(det_p, (Zt,), 1) rtol = 1.0e-6
        # NumPy's lexicographic order of complex numbers, NaN parts propagating
        a = [1.0 + 2.0im, 2.0 + 0.0im, complex(2.0, NaN), 1.0 + 0.0im]
        b = [1.0 + 3.0im, 1.0 + 5.0im, 1.0 + 0.0im, 1.0 + 0.0im]
        @test isequal(npmaximum(a, b), [b[1], a[2], a[3], a[4]])
        @test isequal(npminimum(a, b), [a[1], b[2], a[3], a[4]])
        @test npmaximum([0.5, 3.0], 1.0 + 1.0im) == [1.0 + 1.0im, 3.0 + 0.0im]
        choose = load_program(
            "program(x, y) = (real(sum(DiffProg.npmaximum(x, y) .* " *
                "ComplexF64(1.0, -2.0))),)",
        )
        _, (gx, gy) = value_and_gradient(choose, (a[[1, 2, 4]], b[[1, 2, 4]]))
        # JAX's cotangent of each operand: the weight (1, 1/2 at a tie, 0) times 1 - 2i
        @test gx ≈ [0.0, 1.0, 0.5] .* (1.0 - 2.0im)
        @test gy ≈ [1.0, 0.0, 0.5] .* (1.0 - 2.0im)
        # conversions: complex to real keeps the real part, as NumPy's astype
        @test convert_eltype(Float64, [1.5 + 2.0im, -0.5 - 1.0im]) == [1.5, -0.5]
        @test convert_eltype(Int64, [1.7 + 2.0im, -2.7 + 0.0im]) == [1, -2]
        @test convert_eltype(Bool, [0.0 + 0.0im, 0.0 + 1.0im]) == [false, true]
        @test convert_eltype(ComplexF32, [1.5, -2.0]) == ComplexF32[1.5, -2.0]
        @test npscalar([1.0 + 2.0im]) === 1.0 + 2.0im
        to_real = load_program(
            "program(z) = (sum(DiffProg.convert_eltype(Float64, z) .^ 2),)",
        )
        _, (gt,) = value_and_gradient(to_real, ([1.5 + 2.0im, -0.5 - 1.0im],))
        @test gt ≈ [3.0 + 0.0im, -1.0 + 0.0im]
        # products of complex values: holomorphic, so JAX's rule has no conjugate
        zs = [1.0 + 0.5im, 0.0 + 0.0im, -2.0 + 1.0im, 0.5 - 0.5im]
        weights = [1.0 - 1.0im, 0.5 + 2.0im, -1.0 + 0.0im, 0.25im]
        cum = load_program(
            "program(x, w) = (real(sum(w .* DiffProg.npcumprod(x; dims = 1))),)",
        )
        _, (gcum, _) = value_and_gradient(cum, (zs, weights))
        @test gcum ≈ finite_difference_gradient(cum, (zs, weights), 1) atol = 1.0e-6
        prodp = load_program(
            "program(x) = (real(ComplexF64(0.5, 1.0) * DiffProg.npprod(x)),)",
        )
        for x in (zs, [1.0 + 0.5im, -2.0 + 1.0im, 0.5 - 0.5im])
            _, (gp,) = value_and_gradient(prodp, (x,))
            @test gp ≈ finite_difference_gradient(prodp, (x,), 1) atol = 1.0e-6
        end
        # stacked products (batched_product's rule takes adjoints)
        bt = reshape(ComplexF64[1:12...] .* (1 - 0.5im) ./ 5, 2, 3, 2)
        batched = load_program(
            """
        function program(a, b)
            return (sum(abs2.(DiffProg.npmatmul_batched(a, b))),)
        end
        """,
        )
        at = ComplexF64[1 2; 0.5im -1; 2 1im]
        _, (ga, gb) = value_and_gradient(batched, (at, bt))
        @test ga ≈ finite_difference_gradient(batched, (at, bt), 1) rtol = 1.0e-6
        @test gb ≈ finite_difference_gradient(batched, (at, bt), 2) rtol = 1.0e-6
        # Hermitian matrices read from NumPy's lower triangle (At's upper one)
        H = Z * Z' + 3 * LinearAlgebra.I
        Ht = permutedims(H)
        @test npeigvalsh(Ht) ≈ LinearAlgebra.eigvals(LinearAlgebra.Hermitian(H, :L))
        L = LinearAlgebra.cholesky(LinearAlgebra.Hermitian(H, :L)).L
        @test npcholesky(Ht) ≈ permutedims(Matrix(L))
        w_, Vt = npeigh(Ht)
        V = permutedims(Vt) # NumPy's columns
        @test H * V ≈ V * LinearAlgebra.Diagonal(w_)
        top = [V[argmax(abs.(V[:, j])), j] for j in 1:3]
        @test all(t -> abs(imag(t)) < 1.0e-12 && real(t) > 0, top)
        chol = load_program("program(a) = (sum(abs2.(DiffProg.npcholesky(a) .^ 2)),)")
        _, (gch,) = value_and_gradient(chol, (Ht,))
        @test gch ≈ finite_difference_gradient(chol, (Ht,), 1) rtol = 1.0e-5
        eig = load_program(
            """
        function program(a)
            w, v = DiffProg.npeigh(a)
            m = [1.0 0.5 -1.0; 0.0 2.0 1.0; 1.0 1.0 0.5]
            return (sum(w .* [1.0, -0.5, 2.0]) + sum(real.(v) .* m),)
        end
        """,
        )
        _, (ge,) = value_and_gradient(eig, (Ht,))
        @test ge ≈ finite_difference_gradient(eig, (Ht,), 1) rtol = 1.0e-5
    end

    golden_names = ("rk4", "structured", "odeint_rk4", "complex_wave")
    if isdir(GOLDEN)
        @testset "golden $name: Zygote vs NumPy and finite differences" for name in golden_names
            p = load_program(read(joinpath(GOLDEN, "$name.jl"), String))
            fixture = include(joinpath(GOLDEN, "$name.args.jl"))
            args = fixture.args
            @test value(p, args)[1] ≈ fixture.value rtol = 1.0e-10
            _, gradients = value_and_gradient(p, args, fixture.wrt)
            for (k, g, expected) in zip(fixture.wrt, gradients, fixture.gradients)
                @test g ≈ expected rtol = 1.0e-8
                fd = finite_difference_gradient(p, args, k)
                @test g ≈ fd rtol = 1.0e-5 atol = 1.0e-7
            end
        end
    else
        @info "tests/engines/golden is not next to this package: golden programs skipped"
    end

    @testset "cache management" begin
        n = program_count()
        @test n >= 1
        clear_programs!()
        @test program_count() == 0
    end
end
