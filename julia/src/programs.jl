# Loading generated programs: one fresh module per distinct source text, cached.

"""
    Program

A generated program compiled into its own module.

Fields: `id` (a counter, also used in the module name), `mod` (the module the source was
evaluated in), `func` (the function named `program` that the source defines) and `source`
(the text it was built from).
"""
struct Program
    id::Int
    mod::Module
    func::Function
    source::String
end

Base.show(io::IO, p::Program) = print(io, "DiffProg.Program(#", p.id, ")")

const PROGRAMS_LOCK = ReentrantLock()
# Keyed by the source text itself: `Dict` hashes the string and compares on a hash hit, so
# two different sources can never share a cache slot, unlike a bare hash key.
const PROGRAMS = Dict{String, Program}()
const PROGRAM_COUNTER = Ref(0)

"""
    load_program(source::AbstractString) -> Program

Evaluate generated Julia `source` into a fresh module (never `Main`) and return the
[`Program`](@ref) wrapping the function named `program` that it defines. The result is
cached by source text: loading the same text again returns the same `Program` without
evaluating anything.

Inside the fresh module the names `DiffProg` and `LinearAlgebra` are bound, so generated
code can call `DiffProg.npsum(...)` or `LinearAlgebra.dot(...)` qualified.
"""
function load_program(source::AbstractString)
    text = String(source)
    return lock(PROGRAMS_LOCK) do
        get!(() -> compile_program(text, next_program_id()), PROGRAMS, text)
    end
end

next_program_id() = (PROGRAM_COUNTER[] += 1)

"""
    program_source(p::Program) -> String

The generated source `p` was loaded from (handy for showing users their gradient code).
"""
program_source(p::Program) = p.source

"""
    program_count() -> Int

How many distinct programs are cached.
"""
program_count() = lock(() -> length(PROGRAMS), PROGRAMS_LOCK)

"""
    clear_programs!() -> Nothing

Forget every cached program. Julia cannot unload modules, so this only drops the cache's
references; it is meant for tests and long sessions that generate many throwaway programs.
"""
function clear_programs!()
    lock(() -> empty!(PROGRAMS), PROGRAMS_LOCK)
    return nothing
end

function compile_program(source::String, id::Int)
    mod = fresh_program_module(id)
    Base.include_string(mod, source, "diffprog_program_$(id).jl")
    func = program_function(mod)
    return Program(id, mod, func, source)
end

function fresh_program_module(id::Int)
    mod = Module(Symbol("DiffProgProgram", id), true)
    # Bind the modules as values: an anonymous module has no package environment of its
    # own, so `import DiffProg` inside it could fail when DiffProg is not in the active
    # project (for example under juliacall's private project).
    Core.eval(mod, :(const DiffProg = $DiffProg))
    Core.eval(mod, :(const LinearAlgebra = $LinearAlgebra))
    return mod
end

function program_function(mod::Module)
    # The binding was created after the caller's world began; the latest world sees it.
    if !Base.invokelatest(isdefined, mod, :program)
        throw(ArgumentError("generated source must define a function named `program`"))
    end
    func = Base.invokelatest(getglobal, mod, :program)
    if !(func isa Function)
        throw(ArgumentError(
            "`program` in generated source is a $(typeof(func)), not a function",
        ))
    end
    return func
end
