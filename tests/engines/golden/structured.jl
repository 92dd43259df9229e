function program(a1, a2, a3, c1, c2, c3)
    f1 = function (b2, b3, b4, b5)
        v6 = b5 .* b2
        v7 = sin.(v6)
        v8 = 0.1 .* v7
        v9 = v8 .* b4
        v10 = b2 .+ v9
        v11 = v10 .* v10
        v12 = DiffProg.npsum(v11; dims = (1,), keepdims = false)
        v13 = b3 .+ v12
        v14 = sum(v10[1:1])
        return (v10, v13, v14)
    end
    v15, v16, v17 = DiffProg.npscan(f1, (a2, c1), (a3,), (a1,), 5, false, Val(2))
    v18 = v16 .> 1.0
    f19 = function (b20)
        v21 = b20 .* 2.0
        return (v21,)
    end
    f22 = function (b23)
        v24 = -b23
        return (v24,)
    end
    (v25,) = DiffProg.npcond(v18, f19, f22, (v15,))
    v26 = abs.(v25)
    v27 = v26 .+ 0.1
    f28 = function (b29, b30)
        f31 = function (b32, b33)
            v34 = DiffProg.npsum(b33; dims = (1,), keepdims = false)
            v35 = v34 .< 10.0
            v36 = (b32 .!= 0) .& (v35 .!= 0)
            f37 = function (b38)
                v39 = b38 .* 1.5
                return (v39,)
            end
            f40 = function (b41)
                return (b41,)
            end
            (v42,) = DiffProg.npcond(v36, f37, f40, (b33,))
            return (v36, v42)
        end
        v43, v44 = DiffProg.npscan(f31, (b29, b30), (), (), 3, false, Val(2))
        return (v43, v44)
    end
    _, v46 = DiffProg.npscan(f28, (c2, v27), (), (), 2, false, Val(2))
    f47 = function (b48, b49)
        v50 = tanh.(b48)
        v51 = 0.01 .* v50
        v52 = b48 .+ v51
        return (v52,)
    end
    (v53,) = DiffProg.npscan(f47, (v46,), (c3,), (), 3, false, Val(1))
    v54 = DiffProg.npsum(v17; dims = (1,), keepdims = false)
    v55 = v16 .+ v54
    f56 = function (b57, b58)
        v59 = tanh.(b57)
        v60 = v59 .* b58
        return (v60,)
    end
    (v61,) = DiffProg.npremat(f56, (v53, a1))
    v62 = DiffProg.npsum(v61; dims = (1,), keepdims = false)
    v63 = v55 .+ v62
    return (v63,)
end
