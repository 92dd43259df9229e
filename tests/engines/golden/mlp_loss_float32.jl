function program(a1, a2, a3, a4, a5, a6)
    v1 = DiffProg.npmatmul(a5, a3)
    v2 = v1 .+ a1
    v3 = tanh.(v2)
    v4 = DiffProg.npmatmul(v3, a4)
    v5 = v4 .+ a2
    v6 = v5 .- a6
    v7 = v6 .^ 2
    v8 = DiffProg.npsum(v7; dims = (1, 2), keepdims = false)
    v9 = v8 ./ 16.0f0
    return (v9,)
end
