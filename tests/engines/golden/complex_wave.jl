function program(a1, a2, c1, c2, c3, c4)
    v1 = conj.(a1)
    v2 = DiffProg.npreshape(a1, (1, 3))
    v3 = DiffProg.npreshape(v1, (3, 1))
    v4 = v2 .* v3
    v5 = v4 .+ c1
    v6 = ComplexF64(0.0, 1.0) .* a2
    v7 = v6 .* c2
    v8 = exp.(v7)
    v9 = v8 .* a1
    f10 = function (b11, b12)
        v13 = b11 .* ComplexF64(0.9, 0.1)
        v14 = sin.(b11)
        v15 = ComplexF64(0.1, 0.0) .* v14
        v16 = v13 .+ v15
        return (v16,)
    end
    (v17,) = DiffProg.npscan(f10, (v9,), (c3,), (), 2, false, Val(1))
    v18 = DiffProg.npreshape(v17[1:3], (1, 3))
    v19 = ComplexF64(0.0, 0.5) .* v18
    v20 = v19 .* c4
    v21 = v5 .+ v20
    v22, v23 = DiffProg.npslogdet(v21)
    v24 = DiffProg.npmatmul(v17, v5)
    v25 = abs.(v24)
    v26 = v25 .^ 2
    v27 = DiffProg.npsum(v26; dims = (1,), keepdims = false)
    v28 = real.(v22)
    v29 = v28 .* v23
    v30 = v27 .+ v29
    v31 = real.(v17)
    v32 = imag.(a1)
    v33 = v31 .* v32
    v34 = DiffProg.npsum(v33; dims = (1,), keepdims = false)
    v35 = v30 .+ v34
    return (v35,)
end
