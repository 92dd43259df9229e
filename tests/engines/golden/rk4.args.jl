# Arguments and expected results for the golden program rk4.jl, in Julia
# layout (NumPy axes reversed, 0-d values as numbers); the expected values come
# from diffprog's numpy engine. Written by tests/engines/test_julia.py
# (DIFFPROG_UPDATE_GOLDEN=1), read by julia/test/runtests.jl.
(
    args = (
        Float64[(-1.2803939447145731), (-0.7130680950592722), 0.6210178535400985, (-2.2501411735745918), 0.38636959756630584],
        0.7,
    ),
    wrt = (1, 2),
    value = 4.642523690266146,
    gradients = (
        Float64[(-1.5359283544876803), (-0.8733271134940921), 0.7624555320898518, (-2.5779778091865326), 0.4766636207609643],
        (-3.6687707424303424),
    ),
)
