# Arguments and expected results for the golden program complex_wave.jl, in Julia
# layout (NumPy axes reversed, 0-d values as numbers); the expected values come
# from diffprog's numpy engine. Written by tests/engines/test_julia.py
# (DIFFPROG_UPDATE_GOLDEN=1), read by julia/test/runtests.jl.
(
    args = (
        ComplexF64[ComplexF64(0.5, 1.0), ComplexF64((-1.0), 0.25), ComplexF64(0.75, (-0.5))],
        0.7,
        reshape(Float64[3.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 3.0], 3, 3),
        Float64[0.0, 1.0, 2.0],
        Int64[0, 1],
        reshape(Float64[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], 3, 3),
    ),
    wrt = (1, 2),
    value = 61.825123157091205,
    gradients = (
        ComplexF64[ComplexF64(89.8962811151124, (-18.376135159128122)), ComplexF64((-80.5437753154619), 27.55946518121432), ComplexF64(77.9372371981411, 1.733216614069386)],
        63.535325344305434,
    ),
)
