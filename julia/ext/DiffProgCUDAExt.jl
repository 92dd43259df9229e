"""
    DiffProgCUDAExt

GPU support, loaded when CUDA.jl is loaded next to DiffProg (`using CUDA`). DLPack.jl's own
CUDA extension then wraps CUDA DLPack tensors as `CuArray`s; this extension adds the
synchronization at the Python boundary and refuses to hand GPU memory to NumPy.
"""
module DiffProgCUDAExt

using CUDA: CUDA
using DiffProg: DiffProg

DiffProg.on_gpu(::CUDA.AnyCuArray) = true

DiffProg.gpu_functional(::Val{:cuda}) = CUDA.functional()

# Results are produced on this task's stream; Python may read them as soon as we return.
function DiffProg.synchronize_array(::CUDA.AnyCuArray)
    CUDA.synchronize()
    return nothing
end

# Python queued the producing work on its own stream (CuPy's current stream), which
# CUDA.jl's non-blocking task stream does not wait for: wait for the whole device.
function DiffProg.synchronize_import(::CUDA.AnyCuArray)
    CUDA.device_synchronize()
    return nothing
end

# Without a `from_dlpack` the array would reach Python as a juliacall ArrayValue whose array
# interface points at device memory, which NumPy would read as host memory.
function DiffProg.export_tree(x::CUDA.AnyCuArray, ::Nothing)
    throw(ArgumentError(
        "a GPU array must be shared with a `from_dlpack` function, e.g. export_outputs(x, cupy.from_dlpack)",
    ))
end

end # module DiffProgCUDAExt
