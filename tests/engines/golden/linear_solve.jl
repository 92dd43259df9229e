function program(a1, a2)
    v1 = DiffProg.npsolve(a1, a2)
    v2 = v1 .^ 2
    v3 = DiffProg.npsum(v2; dims = (1,), keepdims = false)
    _, v5 = DiffProg.npslogdet(a1)
    v6 = v3 .+ v5
    return (v6,)
end
