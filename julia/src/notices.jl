# Telling the user, once, that the first call of a program is slow because Julia compiles.

const NOTICES_ENABLED = Ref(true)
const NOTICE_SHOWN = Ref(false)
const NOTICE_LOCK = ReentrantLock()
# (program id, kind of call, argument types): Julia compiles one specialization per entry.
const SEEN_SIGNATURES = Set{Tuple{Int, Symbol, Any}}()

"""
    compile_notices!(enabled::Bool) -> Bool

Turn the one-time "Julia is compiling" message on or off (on by default). The Python side
may turn it off and print its own message using the `Bool` that [`note_compilation!`]
returns.
"""
compile_notices!(enabled::Bool) = (NOTICES_ENABLED[] = enabled)

"""
    note_compilation!(p::Program, kind::Symbol, args::Tuple) -> Bool

Record that `p` is about to run as `kind` (`:value`, `:gradient`, `:pullback`,
`:jacobian`, `:hessian`) on arguments of these types. Return `true` when this combination
is new, which is when Julia compiles; the first such event of the session logs an `@info`
(unless turned off with [`compile_notices!`](@ref)).
"""
function note_compilation!(p::Program, kind::Symbol, args::Tuple)
    signature = (p.id, kind, map(typeof, args))
    is_new = lock(NOTICE_LOCK) do
        signature in SEEN_SIGNATURES && return false
        push!(SEEN_SIGNATURES, signature)
        return true
    end
    is_new && announce_compilation_once(kind)
    return is_new
end

function announce_compilation_once(kind::Symbol)
    NOTICES_ENABLED[] || return nothing
    NOTICE_SHOWN[] && return nothing
    NOTICE_SHOWN[] = true
    @info "DiffProg: Julia is compiling code for this program ($kind); the first call " *
        "of each new program or argument type is slow, later calls reuse the compiled code."
    return nothing
end
