# Array exchange with Python. The methods that take Python objects live in the PythonCall
# extension (ext/DiffProgPythonCallExt.jl); the GPU methods in the CUDA extension. This file
# holds the device-independent part, which also serves plain Julia callers and the tests.

"""
    import_array(a, numpy_shape) -> AbstractArray

Bring an argument into Julia layout (NumPy axes reversed). `numpy_shape` is the NumPy
`shape` tuple of the array on the Python side.

- `a` a Python object (with PythonCall loaded): a C-contiguous NumPy/CuPy array or any
  object with `__dlpack__`, or a DLPack `PyCapsule`. Wrapped with DLPack.jl without a
  copy: an `Array` for CPU data, a `CuArray` for CUDA data (needs `using CUDA`).
- `a` a Julia array: returned as is when its size is already `reverse(numpy_shape)`.
- `a` a number: returned as is.
- `numpy_shape == ()`: a NumPy 0-d array becomes a Julia number (read without scalar
  indexing). Generated code holds every 0-d value as a number: Zygote cannot add the
  number cotangents of unwrapped 0-dim broadcasts to the 0-dim array cotangents its
  broadcast rules project back (`accum`), so 0-dim arrays must not enter a program.

If the wrapped array's dims are not `reverse(numpy_shape)` (DLPack.jl can read a
C-contiguous array whose length-1 axes carry unusual strides as column-major), the data is
reshaped to Julia layout and copied so that the result owns its memory.
"""
function import_array end

import_array(x::Number, numpy_shape = ()) = x
import_array(a::AbstractArray, numpy_shape) = to_julia_layout(a, numpy_shape)

julia_shape(numpy_shape) = reverse(Tuple(Int(n) for n in numpy_shape))

# The one element of a (possibly GPU) array, through a host copy: no scalar indexing.
function only_element(a::AbstractArray)
    if length(a) != 1
        throw(DimensionMismatch("array of size $(size(a)) does not match NumPy shape ()"))
    end
    return only(Array(a))
end

function to_julia_layout(a::AbstractArray, numpy_shape)
    shape = julia_shape(numpy_shape)
    shape == () && return only_element(a)
    size(a) == shape && return a
    if length(a) != prod(shape; init = 1)
        throw(DimensionMismatch(
            "array of size $(size(a)) does not match NumPy shape $(Tuple(numpy_shape))",
        ))
    end
    # Same memory, only the dims were read the other way round. Copy, because DLPack.jl
    # ties the lifetime of the Python owner to the wrapper `a`, not to a reshape of it.
    return copy(reshape(a, shape))
end

"""
    export_array(x)

A value ready to hand to Python: numbers as they are, arrays as a dense array of the same
device (an `Array` or `CuArray`), materializing lazy or wrapped arrays. A returned `Array`
reaches Python as a `juliacall.ArrayValue`; `numpy.asarray(v)` views it without a copy in
Julia order, and `.T` gives NumPy layout.
"""
export_array(x::Number) = x
export_array(::Nothing) = nothing
export_array(a::DenseArray) = a
function export_array(a::AbstractArray)
    dense = similar(a, eltype(a), size(a))
    dense .= a
    return dense
end

"""
    export_outputs(x, from_dlpack = nothing)

Synchronize the device, then [`export_array`](@ref) every array in `x` (a value or nested
tuples of values, such as the `(outputs, gradients)` pair that the derivative functions
return). With a Python `from_dlpack` function (PythonCall loaded), each GPU array is
instead shared with [`share_array`](@ref); for CuPy use `cupy.from_dlpack`, which gives CuPy
arrays in NumPy layout with no copy. Host arrays are exported as without it.
"""
function export_outputs(x, from_dlpack = nothing)
    synchronize_arrays(x)
    return export_tree(x, from_dlpack)
end

export_tree(x::Tuple, from_dlpack) = map(v -> export_tree(v, from_dlpack), x)
export_tree(x::AbstractArray, ::Nothing) = export_array(x)
# Only device arrays are shared through `from_dlpack` (e.g. `cupy.from_dlpack`); a host
# array that a GPU call produced from numbers alone goes back as a host array.
function export_tree(x::AbstractArray, from_dlpack)
    return on_gpu(x) ? share_array(x, from_dlpack) : export_array(x)
end
export_tree(x, from_dlpack) = export_array(x)

"""
    share_array(a::AbstractArray, from_dlpack)

Share `a` with a Python array library through DLPack without a copy, calling the Python
function `from_dlpack` (e.g. `cupy.from_dlpack`) on the capsule. The Python array has the
dims reversed, i.e. NumPy layout. Methods are defined by the PythonCall extension.
"""
function share_array end

"""
    synchronize_arrays(x) -> Nothing

Wait until pending device work on every array in `x` (nested tuples allowed) is finished,
so Python can read the results. A no-op for CPU arrays; the CUDA extension adds the GPU
method.
"""
synchronize_arrays(x::Tuple) = foreach(synchronize_arrays, x)
synchronize_arrays(x::AbstractArray) = synchronize_array(x)
synchronize_arrays(x) = nothing

synchronize_array(::AbstractArray) = nothing

"""
    synchronize_import(a::AbstractArray) -> Nothing

Called after wrapping a Python array: make work that Python queued on the device visible to
Julia. A no-op for CPU arrays; the CUDA extension synchronizes the whole device, because
CuPy's stream and CUDA.jl's task stream do not order against each other.
"""
synchronize_import(::AbstractArray) = nothing

"""
    on_gpu(x) -> Bool

Whether `x` is a GPU array (`true` only for `CuArray`s, with CUDA.jl loaded).
"""
on_gpu(x) = false

"""
    gpu_functional() -> Bool

Whether a usable GPU is present. `false` unless CUDA.jl is loaded and reports a working
device.
"""
gpu_functional() = gpu_functional(Val(:cuda))
# The CUDA extension adds the `Val{:cuda}` method (a new method, not an overwrite).
gpu_functional(::Val) = false
