# A small CPU workload cached at precompile time, so that the first real program does not
# pay for compiling Zygote's machinery for common array types. PrecompileTools is kept by
# the JuliaLang organization and is already a dependency of Zygote, so it adds nothing to a
# user's environment. The workload calls the workers directly: evaluating source into fresh
# modules (`load_program`) during precompilation would not survive into the cache.

# Stands in for a generated program: elementwise product, a reduction, a broadcast, and a
# NumPy-compat helper with a custom rule.
function precompile_program(x1, x2)
    v3 = x1 .* x2
    v4 = npsum(v3)
    v5 = npmaximum(x1, x2)
    return (v4, v5)
end

@setup_workload begin
    @compile_workload begin
        for T in (Float64, Float32)
            x1 = T[1, 2, 3]
            x2 = T[3, 2, 1]
            args = (x1, x2)
            precompile_program(args...)
            value_and_gradient_worker(precompile_program, args, (1, 2))
            pullback_worker(precompile_program, args, (one(T), ones(T, 3)))
            jacobian_worker(precompile_program, args, 2, (1,))
        end
    end
end
