# Where arrays that generated code makes from numbers alone live. A NumPy 0-d value is a
# Julia number (see `import_array`), so `npreshape(x::Number, shape)`, `npbroadcast_to` of a
# scalar and the per-step scalars that `npscan` stacks have no array to take the device
# from. Built with `Array`, they would be host arrays that later meet the program's
# `CuArray`s (mixed broadcasts fail; reading them element by element is scalar indexing).
# So every entry point records the first array argument of the running call as a template,
# task-locally, and those arrays are made with `similar(template, T, shape)`: an `Array`
# for CPU calls, a `CuArray` for GPU calls.

const TEMPLATE_KEY = :DiffProg_array_template

"""
    with_array_template(f, args::Tuple)

Run `f()` with the first array in `args` as the template for arrays made from numbers
(see [`new_array`](@ref)); the previous template is restored afterwards.
"""
function with_array_template(f, args::Tuple)
    return task_local_storage(f, TEMPLATE_KEY, first_array(args))
end

first_array(::Tuple{}) = nothing
function first_array(args::Tuple)
    found = first_array(first(args))
    return found === nothing ? first_array(Base.tail(args)) : found
end
first_array(x::AbstractArray) = x
first_array(x) = nothing

"""
    array_template() -> Union{AbstractArray, Nothing}

The template array of the running call, or `nothing` outside one (plain Julia use): then
new arrays are `Array`s.
"""
array_template() = get(task_local_storage(), TEMPLATE_KEY, nothing)

"""
    new_array(T, shape::Tuple; like = array_template())

An uninitialized array of eltype `T` and size `shape` on the device of `like` (an `Array`
when `like` is `nothing`).
"""
function new_array(::Type{T}, shape::Tuple; like = array_template()) where {T}
    dims = map(Int, shape)
    return like === nothing ? Array{T}(undef, dims) : similar(like, T, dims)
end

"""
    device_vector(values; like = array_template())

The numbers `values` as a vector on the device of `like`: one host-to-device copy for a
GPU template, never element-by-element writes.
"""
function device_vector(values; like = array_template())
    T = mapreduce(typeof, promote_type, values)
    host = convert(Vector{T}, collect(values))
    return copyto!(new_array(T, (length(host),); like = like), host)
end

@non_differentiable first_array(::Any)
@non_differentiable array_template()
@non_differentiable new_array(::Any, ::Any)
