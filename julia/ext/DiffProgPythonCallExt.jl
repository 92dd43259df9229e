"""
    DiffProgPythonCallExt

Array exchange with Python objects, loaded when PythonCall is loaded (always the case under
juliacall). Kept out of DiffProg proper so that plain Julia use and `Pkg.test()` do not
start a Python interpreter.
"""
module DiffProgPythonCallExt

using DiffProg: DiffProg
using DLPack: DLPack
using PythonCall: PythonCall, Py, PyArray

# juliacall converts a NumPy argument into a `PyArray`; other objects arrive as `Py`.
const PythonArray = Union{Py, PyArray}

function DiffProg.import_array(o::PythonArray, numpy_shape)
    wrapped = wrap_with_dlpack(Py(o))
    DiffProg.synchronize_import(wrapped)
    return DiffProg.to_julia_layout(wrapped, numpy_shape)
end

# The memory of a wrapped array belongs to the producer (NumPy, CuPy) until the
# `DLManagedTensor`'s deleter runs, and DLPack.jl runs it from the tensor's finalizer
# (src/DLPack.jl, `DLManagedTensor`'s inner constructor). `DLPack.unsafe_wrap(tensor, foreign)`
# keeps only `foreign` alive while the array lives (its `WRAPS_POOL`), not the tensor. With a
# bare capsule as `foreign`, nothing else holds the tensor: a GC runs CuPy's deleter and the
# memory goes back to CuPy's pool while the Julia array (say a cached constant) still points
# at it. So the tensor travels in `foreign` with the capsule and the Python owner: all three
# live exactly as long as the Julia array.
#
# An object with `__dlpack__` is asked for an unversioned capsule (`o.__dlpack__()` with no
# arguments, as DLPack.jl's own `from_dlpack` does); anything else must be such a capsule
# already, as returned by `x.__dlpack__()`.
function wrap_with_dlpack(o::Py)
    capsule = PythonCall.pyhasattr(o, "__dlpack__") ? o.__dlpack__() : o
    tensor = DLPack.DLManagedTensor(capsule)
    return DLPack.unsafe_wrap(tensor, (o, capsule, tensor))
end

function DiffProg.share_array(a::AbstractArray, from_dlpack::Py)
    dense = DiffProg.export_array(a)
    DiffProg.synchronize_array(dense)
    return DLPack.share(dense, from_dlpack)
end

end # module DiffProgPythonCallExt
