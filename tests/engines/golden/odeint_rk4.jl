function program(a1, a2, c1, c2, c3, c4)
    v1 = -a1
    f2 = function (b3, b4, b5, b6, b7, b8)
        f9 = function (b10, b11, b12, b13, b14, b15)
            v16 = sum(b11[1:1])
            v17 = sum(b11[2:2])
            v18 = v17 .- v16
            v19 = v18 ./ 5.0
            v20 = v19 ./ 2.0
            v21 = v19 ./ 6.0
            f22 = function (b23, b24, b25, b26, b27, b28, b29, b30, b31, b32, b33, b34, b35)
                v36 = b24 .* b25
                v37 = b26 .+ v36
                v38 = b27 .* b23
                v39 = sin.(v37)
                v40 = v38 .+ v39
                v41 = b28 .* v40
                v42 = b23 .+ v41
                v43 = v37 .+ b29
                v44 = b30 .* v42
                v45 = sin.(v43)
                v46 = v44 .+ v45
                v47 = b31 .* v46
                v48 = b23 .+ v47
                v49 = v37 .+ b32
                v50 = b33 .* v48
                v51 = sin.(v49)
                v52 = v50 .+ v51
                v53 = b25 .* v52
                v54 = b23 .+ v53
                v55 = v37 .+ b25
                v56 = b34 .* v54
                v57 = sin.(v55)
                v58 = v56 .+ v57
                v59 = 2.0 .* v46
                v60 = v40 .+ v59
                v61 = 2.0 .* v52
                v62 = v60 .+ v61
                v63 = v62 .+ v58
                v64 = b35 .* v63
                v65 = b23 .+ v64
                return (v65,)
            end
            (v66,) = DiffProg.npscan(f22, (b10,), (c2,), (v19, v16, b12, v20, v20, b13, v20, v20, b14, b15, v21), 5, false, Val(1))
            return (v66, v66)
        end
        v67, v68 = DiffProg.npscan(f9, (b3,), (b4,), (b5, b6, b7, b8), 2, false, Val(1))
        return (v67, v68)
    end
    v69, v70 = DiffProg.npscan(f2, (a2,), (c1,), (v1, v1, v1, v1), 1, false, Val(1))
    v71 = DiffProg.npreshape(v70, (2, 2))
    f72 = function (b73, b74, b75, b76, b77, b78)
        v79 = sum(b74[1:1])
        v80 = sum(b74[2:2])
        v81 = v80 .- v79
        v82 = v81 ./ 5.0
        v83 = v82 ./ 2.0
        v84 = v82 ./ 6.0
        f85 = function (b86, b87, b88, b89, b90, b91, b92, b93, b94, b95, b96, b97, b98)
            v99 = b87 .* b88
            v100 = b89 .+ v99
            v101 = b90 .* b86
            v102 = sin.(v100)
            v103 = v101 .+ v102
            v104 = b91 .* v103
            v105 = b86 .+ v104
            v106 = v100 .+ b92
            v107 = b93 .* v105
            v108 = sin.(v106)
            v109 = v107 .+ v108
            v110 = b94 .* v109
            v111 = b86 .+ v110
            v112 = v100 .+ b95
            v113 = b96 .* v111
            v114 = sin.(v112)
            v115 = v113 .+ v114
            v116 = b88 .* v115
            v117 = b86 .+ v116
            v118 = v100 .+ b88
            v119 = b97 .* v117
            v120 = sin.(v118)
            v121 = v119 .+ v120
            v122 = 2.0 .* v109
            v123 = v103 .+ v122
            v124 = 2.0 .* v115
            v125 = v123 .+ v124
            v126 = v125 .+ v121
            v127 = b98 .* v126
            v128 = b86 .+ v127
            return (v128,)
        end
        (v129,) = DiffProg.npscan(f85, (b73,), (c4,), (v82, v79, b75, v83, v83, b76, v83, v83, b77, b78, v84), 5, false, Val(1))
        return (v129, v129)
    end
    _, v131 = DiffProg.npscan(f72, (v69,), (c3,), (v1, v1, v1, v1), 1, false, Val(1))
    v132 = cat(v71, v131; dims = 2)
    v133 = DiffProg.npreshape(a2, (2, 1))
    v134 = cat(v133, v132; dims = 2)
    v135 = v134 .^ 2
    v136 = DiffProg.npsum(v135; dims = (1, 2), keepdims = false)
    return (v136,)
end
