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

# An object with `__dlpack__` goes through DLPack.from_dlpack (DLPack.jl's PythonCall
# extension calls `o.__dlpack__()` with no arguments, so an unversioned capsule). Anything
# else must be such a capsule already, as returned by `x.__dlpack__()`.
function wrap_with_dlpack(o::Py)
    PythonCall.pyhasattr(o, "__dlpack__") && return DLPack.from_dlpack(o)
    return DLPack.unsafe_wrap(DLPack.DLManagedTensor(o), o)
end

function DiffProg.share_array(a::AbstractArray, from_dlpack::Py)
    dense = DiffProg.export_array(a)
    DiffProg.synchronize_array(dense)
    return DLPack.share(dense, from_dlpack)
end

end # module DiffProgPythonCallExt
