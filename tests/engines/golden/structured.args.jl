# Arguments and expected results for the golden program structured.jl, in Julia
# layout (NumPy axes reversed, 0-d values as numbers); the expected values come
# from diffprog's numpy engine. Written by tests/engines/test_julia.py
# (DIFFPROG_UPDATE_GOLDEN=1), read by julia/test/runtests.jl.
(
    args = (
        Float64[1.0, 2.0],
        Float64[0.5, 0.25],
        Float64[0.0, 0.25, 0.5, 0.75, 1.0],
        0.0,
        true,
        Int64[0, 1, 2],
    ),
    wrt = (1, 2, 3),
    value = 7.750145841789033,
    gradients = (
        Float64[1.525390743483578, 1.0919157907528292],
        Float64[11.498488673318068, 3.7009858920657988],
        Float64[0.7287016280010046, 0.5926180678108393, 0.4583846788050933, 0.32014853887227696, 0.1708109273215984],
    ),
)
