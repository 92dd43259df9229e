"""
    DiffProg

Julia core of the diffprog toolkit. Python traces NumPy code into an IR, prints it as Julia
source that defines one function named `program`, and hands the source to this package,
which compiles it into its own module and evaluates it, differentiates it with Zygote, and
exchanges arrays with Python through DLPack (CPU `Array` or, with CUDA.jl loaded, `CuArray`).

See `NOTES-for-python-side.md` next to `Project.toml` for the contract with the code
generator.
"""
module DiffProg

using ChainRulesCore:
    ChainRulesCore,
    @non_differentiable,
    AbstractZero,
    HasReverseMode,
    NoTangent,
    ProjectTo,
    RuleConfig,
    Tangent,
    ZeroTangent,
    rrule_via_ad,
    unthunk
using LinearAlgebra: LinearAlgebra
using PrecompileTools: @compile_workload, @setup_workload
using SpecialFunctions: SpecialFunctions
using Zygote: Zygote

export Program, load_program, program_source, clear_programs!, program_count
export value, value_and_gradient, pullback, jacobian, hessian
export import_array, export_array, export_outputs, share_array, synchronize_arrays
export compile_notices!
export npsum,
    npmean,
    npprod,
    npmax,
    npmin,
    npmaximum,
    npminimum,
    npclip,
    logaddexp,
    nplogaddexp
export npwhere, npmatmul, npslogdet, nptake, npscatter_add, nponehot
export npreshape, npscalar, npbroadcast_to, convert_eltype, stop_gradient, nppad, npunslice
export npargmax, npargmin, npargsort, npcumprod
export npsolve, npinv, npdet, npcholesky, npeigvalsh, npeigh
export npmatmul_stacked, npmatmul_batched, npeinsum
export npscan, npcond, npwhile, npremat

include("programs.jl")
include("notices.jl")
include("devices.jl")
include("derivatives.jl")
include("exchange.jl")
include("numpy_compat.jl")
include("numpy_shapes.jl")
include("numpy_linalg.jl")
include("einsum.jl")
include("fft.jl")
include("rules.jl")
include("special.jl")
include("control.jl")
include("precompile.jl")

end # module DiffProg
