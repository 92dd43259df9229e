# Arguments and expected results for the golden program odeint_rk4.jl, in Julia
# layout (NumPy axes reversed, 0-d values as numbers); the expected values come
# from diffprog's numpy engine. Written by tests/engines/test_julia.py
# (DIFFPROG_UPDATE_GOLDEN=1), read by julia/test/runtests.jl.
(
    args = (
        0.7,
        Float64[1.0, (-0.5)],
        reshape(Float64[0.0, 0.3333333333333333, 0.3333333333333333, 0.6666666666666666], 2, 2, 1),
        Int64[0, 1, 2, 3, 4],
        reshape(Float64[0.6666666666666666, 1.0], 2, 1),
        Int64[0, 1, 2, 3, 4],
    ),
    wrt = (1, 2),
    value = 3.5118646584680726,
    gradients = (
        (-2.344700522230661),
        Float64[5.208771413767488, (-1.5920090203589399)],
    ),
)
