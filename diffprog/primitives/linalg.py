"""Linear algebra: matmul, einsum, and the np.linalg functions (solve, inv, det, slogdet,
cholesky, eigh, eigvalsh, eig, eigvals, svd, pinv, qr), on single matrices and on stacks
of them as NumPy does, real and complex. Every entry has complex rules (JAX's convention,
see core.py): the Hermitian functions read a Hermitian matrix from one triangle, and the
derivatives of NumPy's eigenvectors and singular vectors follow the norm and phase LAPACK
gives them (see each section)."""
from __future__ import annotations

import string

import numpy as np

from ..errors import ArgumentError, ArgumentValueError, ShapeError, UnsupportedFunctionError
from ..ir import Aval
from ..tracing import unsupported
from ..transforms.batch import by, einsum_rule, matmul_rule, solve_rule
from .core import (Case, Primitive, Unsupported, broadcast_shapes, is_inexact, normal,
                   real_dtype)
from .rules import (add_all, batch_stacked, in_dtype_of, lower_triangle, onto_lower, sum_to,
                    swap_last_axes, symmetric_from_lower, vjp_by_transposing)


def _single_matrix_julia(template):
    """The Julia spelling for one matrix; stacks of matrices are refused with the reason."""
    def spell(eqn, jl):
        a = eqn.inputs[0].aval
        if len(a.shape) != 2:
            return Unsupported(f"{eqn.prim.name} of a stack of matrices (shape {a.shape}) has "
                               f"no Julia spelling yet; the julia engine takes one matrix")
        return template
    return spell


def _square(a, what):
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ShapeError(f"{what}: expected a square matrix (or a stack of them), got shape {a.shape}")


def _well_conditioned(*shape):
    def make(rng):
        return [rng.standard_normal(shape) + 3.0 * np.eye(shape[-1])]
    return make


def _rank(n, r, *batch):
    """A matrix (or stack) of rank r: det is 0 for r < n, its gradient is not for r = n - 1."""
    return lambda rng: [rng.standard_normal(batch + (n, r)) @ rng.standard_normal(batch + (r, n))]


# ------------------------------------------------------------------ products

def _matmul_shape(a, b):
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError("matmul: operands must be at least 1-D (use * for scalars)")
    ka = a.shape[-1]
    kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if ka != kb:
        raise ShapeError(f"matmul: shapes {a.shape} and {b.shape} are not aligned: "
                         f"{ka} (last dim of the first) != {kb} (the contracted dim of the "
                         f"second). Fix: transpose one operand or check the weight shapes.")
    batch_a = a.shape[:-2] if a.ndim > 1 else ()
    batch_b = b.shape[:-2] if b.ndim > 1 else ()
    batch = broadcast_shapes(batch_a, batch_b)
    rows = (a.shape[-2],) if a.ndim > 1 else ()
    cols = (b.shape[-1],) if b.ndim > 1 else ()
    return Aval(batch + rows + cols, np.result_type(a.dtype, b.dtype))


def _matmul_vjp(g, a, b, *, out):
    a_nd, b_nd = np.ndim(a), np.ndim(b)
    A = a if a_nd > 1 else np.reshape(a, (1, -1))
    B = b if b_nd > 1 else np.reshape(b, (-1, 1))
    G = g  # restore the dims matmul dropped for 1-D operands (b's first: order matters)
    if b_nd == 1:
        G = np.expand_dims(G, -1)
    if a_nd == 1:
        G = np.expand_dims(G, -2)
    # b's cotangent first: in ``x @ w`` (activations on the left, how NumPy code writes a
    # dense layer) x's cotangent then comes last, next to the elementwise derivative it
    # feeds (tanh's, say), so the numpy engine fuses the two into one kernel (W2)
    gb = sum_to(swap_last_axes(A) @ G, np.shape(B)) if is_inexact(np.result_type(b)) else None
    ga = sum_to(G @ swap_last_axes(B), np.shape(A)) if is_inexact(np.result_type(a)) else None
    if ga is not None and a_nd == 1:
        ga = np.reshape(ga, np.shape(a))
    if gb is not None and b_nd == 1:
        gb = np.reshape(gb, np.shape(b))
    return (in_dtype_of(ga, a) if ga is not None else None,
            in_dtype_of(gb, b) if gb is not None else None)


def _julia_matmul(eqn, jl):
    a, b = (v.aval for v in eqn.inputs)
    if len(a.shape) <= 2 and len(b.shape) <= 2:
        return "DiffProg.npmatmul({0}, {1})"
    if len(b.shape) <= 2:  # a stack of matrices times one matrix/vector
        return "DiffProg.npmatmul_stacked({0}, {1})"
    return "DiffProg.npmatmul_batched({0}, {1})"  # stacks broadcast as in NumPy


matmul = Primitive(
    "matmul", shape=_matmul_shape, operator="@", numpy=np.matmul, vjp=_matmul_vjp,
    jvp=lambda ts, a, b, *, out: add_all([None if ts[0] is None else ts[0] @ b,
                                          None if ts[1] is None else a @ ts[1]]),
    julia=_julia_matmul,
    cases=[Case(lambda rng: [rng.standard_normal((3, 4)), rng.standard_normal((4, 2))]),
           Case(lambda rng: [rng.standard_normal((4,)), rng.standard_normal((4, 2))]),
           Case(lambda rng: [rng.standard_normal((2, 3, 4)), rng.standard_normal((4,))]),
           Case(lambda rng: [rng.standard_normal((4,)), rng.standard_normal((4,))]),
           Case(lambda rng: [rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5))])],
    batch=by(matmul_rule, lambda: matmul), complex=True)


def _einsum_parse(subscripts: str):
    inputs, output = subscripts.split("->")
    return inputs.split(","), output


def _einsum_shape(*ops, subscripts, optimize=False):
    ins, out = _einsum_parse(subscripts)
    sizes: dict = {}
    for sub, op in zip(ins, ops):
        if len(sub) != op.ndim:
            raise ShapeError(f"einsum {subscripts!r}: operand subscripts {sub!r} do not match "
                             f"an operand of shape {op.shape}")
        for ch, d in zip(sub, op.shape):
            if sizes.setdefault(ch, d) != d:
                if sizes[ch] == 1:
                    sizes[ch] = d
                elif d != 1:
                    raise ShapeError(f"einsum {subscripts!r}: index {ch!r} has sizes {sizes[ch]} and {d}")
    return Aval(tuple(sizes[c] for c in out), np.result_type(*[o.dtype for o in ops]))


def _einsum_vjp(g, *ops, out, subscripts, optimize):
    ins, outsub = _einsum_parse(subscripts)
    cts = []
    for i, op in enumerate(ops):
        if not is_inexact(np.result_type(op)):
            cts.append(None)
            continue
        target = ins[i]
        if len(set(target)) != len(target):
            raise UnsupportedFunctionError(
                f"gradient of einsum {subscripts!r}: operand {i} repeats an index (a diagonal). "
                f"Fix: take the diagonal with np.diagonal-free code, e.g. np.sum(a * np.eye(n), ...).")
        others = [s for j, s in enumerate(ins) if j != i]
        available = set(outsub).union(*others) if others else set(outsub)
        kept = "".join(c for c in target if c in available)
        spec = ",".join([outsub] + others) + "->" + kept
        rest = [o for j, o in enumerate(ops) if j != i]
        ct = einsum(g, *rest, subscripts=spec, optimize=_derivative_order(g, *rest))
        if kept != target:  # indices only in this operand were summed: broadcast back
            shape_kept = tuple(np.shape(op)[target.index(c)] if c in kept else 1 for c in target)
            perm_src = kept + "".join(c for c in target if c not in kept)
            ct = np.reshape(ct, tuple(np.shape(ct)) + (1,) * (len(target) - len(kept)))
            ct = np.transpose(ct, tuple(perm_src.index(c) for c in target))
            ct = np.broadcast_to(np.reshape(ct, shape_kept), np.shape(op))
        cts.append(in_dtype_of(sum_to(ct, np.shape(op)), op))
    return tuple(cts)


def _einsum_jvp(ts, *ops, out, subscripts, optimize):
    terms = []
    for i, t in enumerate(ts):
        if t is not None:
            args = list(ops)
            args[i] = t
            terms.append(einsum(*args, subscripts=subscripts, optimize=_derivative_order(*args)))
    return add_all(terms)


def _julia_einsum(eqn, jl):
    """Subscripts as integer labels (letters numbered; no user text reaches the source),
    each operand's and the output's reversed for Julia's reversed axes."""
    ins, out = _einsum_parse(eqn.params["subscripts"])
    if any(len(set(sub)) != len(sub) for sub in ins):
        return Unsupported(f"einsum {eqn.params['subscripts']!r} repeats an index within one "
                           f"operand (a diagonal or trace), which has no Julia spelling yet")
    number = {c: i + 1 for i, c in enumerate(dict.fromkeys("".join(ins) + out))}

    def labels(sub):
        return jl.tuple(number[c] for c in reversed(sub))
    return f"DiffProg.npeinsum({jl.tuple(labels(sub) for sub in ins)}, {labels(out)}, {{args}})"


def _derivative_order(*operands) -> bool:
    """optimize= for the einsums of a derivative: NumPy's optimized order (BLAS) for a
    contraction of several large operands. The user's own einsum keeps the optimize= it
    was called with (NumPy's default False: another summation order, other bits); a
    derivative has no NumPy spelling to match, so it may take the fast one."""
    return bool(len(operands) > 1 and sum(int(np.prod(np.shape(o))) for o in operands) > 4096)


def _einsum_call(subscripts, *operands, optimize=False, **kwargs):
    """np.einsum: the sublist form as subscripts (:func:`_from_sublists`), the subscripts
    made explicit (:func:`_explicit_subscripts`), an index repeated within one operand (a
    diagonal, a trace) read as that diagonal first (:func:`_without_repeats`); NumPy's
    optimize= (default False), so the result has NumPy's bits."""
    if not isinstance(subscripts, str):
        subscripts, operands = _from_sublists((subscripts,) + operands)
    if kwargs:
        raise ArgumentError(f"np.einsum: unsupported keyword(s) {sorted(kwargs)} on traced values")
    spec = _explicit_subscripts(subscripts, [np.ndim(o) for o in operands])
    spec, operands = _without_repeats(spec, list(operands))
    if not isinstance(optimize, bool):  # a path or "greedy"/"optimal": optimized
        optimize = True
    return einsum(*operands, subscripts=spec, optimize=optimize)


def _from_sublists(args):
    """np.einsum(op0, sublist0, op1, sublist1, ..., [sublist_out]) as a subscripts string:
    integer labels 0..51 become letters, Ellipsis becomes '...'."""
    operands, subs = list(args[0::2]), list(args[1::2])
    out = None
    if len(subs) < len(operands):  # an odd number: the last is the output sublist
        out = operands.pop()

    def letters(sub):
        text = []
        for item in sub:
            if item is Ellipsis:
                text.append("...")
            elif isinstance(item, (int, np.integer)) and 0 <= int(item) < len(_LETTERS):
                text.append(_LETTERS[int(item)])
            else:
                raise ArgumentError(f"np.einsum: subscript labels in sublists must be integers "
                                    f"in [0, 52) or Ellipsis, got {item!r}")
        return "".join(text)
    spec = ",".join(letters(sub) for sub in subs)
    if out is not None:
        spec += "->" + letters(out)
    return spec, operands


def _without_repeats(spec: str, operands: list):
    """An operand whose subscripts repeat an index (``'ii->i'``) reads a diagonal: that
    diagonal is taken first (np.diagonal, the repeated index last), and the contraction
    goes on without the repeat (``'i->i'``), so every rule, batching and spelling of
    einsum holds. (A product with the identity, ``'ij,ij->i'``, made inf * 0 = NaN of an
    infinite entry off the diagonal, and NaN parts of a complex one on it.)"""
    ins, out = _einsum_parse(spec)
    if all(len(set(sub)) == len(sub) for sub in ins):
        return spec, operands
    new_ins, new_ops = [], []
    for sub, op in zip(ins, operands):
        while len(set(sub)) != len(sub):
            c = next(c for c in sub if sub.count(c) > 1)
            first = sub.index(c)
            second = sub.index(c, first + 1)
            op = np.diagonal(op, axis1=first, axis2=second)  # the diagonal axis goes last
            sub = "".join(ch for i, ch in enumerate(sub) if i not in (first, second)) + c
        new_ins.append(sub)
        new_ops.append(op)
    return ",".join(new_ins) + "->" + out, new_ops


_LETTERS = string.ascii_letters


def _explicit_subscripts(subscripts: str, ndims: list) -> str:
    """Explicit form without spaces or ellipses: ``'...ij,...jk'`` -> ``'Zij,Zjk->Zik'``."""
    s = subscripts.replace(" ", "")
    if any(c not in _LETTERS + ",->." for c in s):
        raise ArgumentError(f"einsum subscripts {subscripts!r} may contain only letters, ',', '->' and '...'")
    ins, arrow, out = s.partition("->")
    in_list = ins.split(",")
    if len(in_list) != len(ndims):
        raise ArgumentError(f"einsum {subscripts!r} names {len(in_list)} operands but got {len(ndims)}")
    used = set(c for c in s if c in _LETTERS)
    spare = [c for c in reversed(_LETTERS) if c not in used]
    n_ell = max([nd - len(sub.replace("...", "")) for sub, nd in zip(in_list, ndims) if "..." in sub] or [0])
    ell = "".join(spare[:n_ell])[::-1]
    fixed = []
    for sub, nd in zip(in_list, ndims):
        if "..." in sub:
            k = nd - len(sub.replace("...", ""))
            sub = sub.replace("...", ell[len(ell) - k:] if k else "")
        fixed.append(sub)
    if arrow:
        out = out.replace("...", ell)
    else:
        counts = {c: "".join(fixed).count(c) for c in set("".join(fixed))}
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    return ",".join(fixed) + "->" + out


einsum = Primitive(
    "einsum", "xp.einsum({subscripts}, {args}, optimize={optimize})",
    _einsum_shape, vjp=_einsum_vjp, jvp=_einsum_jvp, numpy={np.einsum: _einsum_call},
    julia=_julia_einsum,
    cases=[Case(lambda rng: [rng.standard_normal((3, 4)), rng.standard_normal((4, 5))],
                {"subscripts": "ij,jk->ik", "optimize": False}),
           Case(lambda rng: [rng.standard_normal((3, 4)), rng.standard_normal((3, 4))],
                {"subscripts": "ij,ij->i", "optimize": False}),
           Case(lambda rng: [rng.standard_normal((3, 4))], {"subscripts": "ij->", "optimize": False}),
           Case(lambda rng: [rng.standard_normal((2, 3)), rng.standard_normal((3, 4)),
                             rng.standard_normal((4,))], {"subscripts": "ij,jk,k->i", "optimize": False})],
    batch=by(einsum_rule, lambda: einsum), complex=True)


# ------------------------------------------------------------------ solve, inv

def _solve_shape(a, b):
    _square(a, "linalg.solve")
    n = a.shape[-1]
    if b.ndim == 1:
        if b.shape[0] != n:
            raise ShapeError(f"linalg.solve: a has shape {a.shape} but b has shape {b.shape}; "
                             f"b must have {n} rows")
        return Aval(a.shape[:-2] + (n,), np.result_type(a.dtype, b.dtype))
    if b.shape[-2] != n:
        raise ShapeError(f"linalg.solve: a has shape {a.shape} but b has shape {b.shape}; "
                         f"b must have {n} rows (b.shape[-2])")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return Aval(batch + b.shape[-2:], np.result_type(a.dtype, b.dtype))


def _solve_vjp(g, a, b, *, out):
    vec = np.ndim(b) == 1
    G = np.expand_dims(g, -1) if vec else g
    X = np.expand_dims(out, -1) if vec else out
    gb = solve(swap_last_axes(a), G)
    ga = sum_to(-(gb @ swap_last_axes(X)), np.shape(a))
    gb = sum_to(np.reshape(gb, np.shape(gb)[:-1]) if vec else gb, np.shape(b))  # b may be unbatched
    return (in_dtype_of(ga, a), in_dtype_of(gb, b))


def _solve_jvp(ts, a, b, *, out):
    vec = np.ndim(b) == 1
    rhs = []
    if ts[1] is not None:
        rhs.append(np.expand_dims(ts[1], -1) if vec else ts[1])
    if ts[0] is not None:
        rhs.append(-(ts[0] @ (np.expand_dims(out, -1) if vec else out)))
    if not rhs:
        return None
    res = solve(a, add_all(rhs))
    return np.reshape(res, np.shape(out)) if vec else res


def solve_impl(xp, a, b):
    """``linalg.solve`` with NumPy 2's broadcasting on any array library: batch dims of a
    and b broadcast against each other, and a 1-d b is one vector for every matrix of a.
    (CuPy wants equal batch dims and reads a (batch, n) b as vectors, as NumPy 1 did.)"""
    if xp is np or (b.ndim > 1 and a.shape[:-2] == b.shape[:-2]) or (b.ndim == 1 and a.ndim == 2):
        return xp.linalg.solve(a, b)
    if b.ndim == 1:
        return solve_impl(xp, a, b[:, None])[..., 0]
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return xp.linalg.solve(xp.broadcast_to(a, batch + a.shape[-2:]),
                           xp.broadcast_to(b, batch + b.shape[-2:]))


solve = Primitive(
    "solve", solve_impl, _solve_shape, vjp=_solve_vjp, jvp=_solve_jvp, numpy=np.linalg.solve,
    julia=_single_matrix_julia("DiffProg.npsolve({0}, {1})"),
    cases=[Case(lambda rng: _well_conditioned(3, 3)(rng) + [rng.standard_normal(3)]),
           Case(lambda rng: _well_conditioned(3, 3)(rng) + [rng.standard_normal((3, 2))]),
           Case(lambda rng: _well_conditioned(2, 3, 3)(rng) + [rng.standard_normal((2, 3, 2))]),
           Case(lambda rng: _well_conditioned(2, 3, 3)(rng) + [rng.standard_normal(3)])],
    batch=by(solve_rule, lambda: solve), complex=True)


def _inv_shape(a):
    _square(a, "linalg.inv")
    return Aval(a.shape, a.dtype)


inv = Primitive(
    "inv", "xp.linalg.inv({0})", _inv_shape, numpy=np.linalg.inv,
    vjp=lambda g, a, *, out: (-(swap_last_axes(out) @ g @ swap_last_axes(out)),),
    jvp=lambda ts, a, *, out: None if ts[0] is None else -(out @ ts[0] @ out),
    julia=_single_matrix_julia("DiffProg.npinv({0})"),
    cases=[Case(_well_conditioned(3, 3)), Case(_well_conditioned(2, 3, 3))],
    batch=batch_stacked(lambda: inv), complex=True)


# ------------------------------------------------------------------ determinants

def _adjugate_impl(xp, a):
    """adj(a) = det(a) inv(a), without the inverse: from the SVD a = U diag(s) V^T,
    adj(a) = det(U) det(V) V diag(prod of the s_j but s_i) U^T (conjugate transposes and
    det(U) conj(det(V)) for complex a, a = U diag(s) V^H). The products leaving one
    singular value out are prefix times suffix products, not det / s_i, so a rank n-1
    matrix (one s_i = 0) gets its exact, nonzero adjugate and lower ranks get zero."""
    if a.shape[-1] == 0:
        return xp.zeros_like(a)
    u, s, vh = xp.linalg.svd(a)
    one = xp.ones(s.shape[:-1] + (1,), s.dtype)
    before = xp.cumprod(xp.concatenate([one, s[..., :-1]], axis=-1), axis=-1)
    after = xp.flip(xp.cumprod(xp.concatenate([one, xp.flip(s[..., 1:], axis=-1)], axis=-1),
                               axis=-1), axis=-1)
    # +-1 (U and V orthogonal); a unit phase for complex a (U, V unitary: a = U S V^H)
    sign = xp.sign(xp.linalg.det(u) * xp.linalg.det(vh))
    v, u_h = xp.swapaxes(vh, -1, -2), xp.swapaxes(u, -1, -2)
    if xp.iscomplexobj(a):
        v, u_h = v.conj(), u_h.conj()
    adj = (v * (before * after)[..., None, :]) @ u_h
    return adj * sign[..., None, None]


def _adjugate_jvp(a, e):
    """d adj(a)[e], exact at every rank, written with adjugate itself so that every order
    traces. For a rank-one direction x y^T,
        d adj(a)[x y^T] = -adj([[a, x], [y^T, 0]])[:n, :n]
    (both sides are polynomials in a, and for invertible a both equal
    (tr(adj(a) x y^T) adj(a) - adj(a) x y^T adj(a)) / det(a)); e is the sum over k of
    its column k times e_k^T. That is n adjugates of (n+1)-matrices, O(n^4): only
    second and higher derivatives of det pay it."""
    n = np.shape(a)[-1]
    batch = tuple(np.shape(a)[:-2])
    dtype = np.result_type(a)
    copies = np.broadcast_to(np.expand_dims(a, -3), batch + (n, n, n))
    columns = np.expand_dims(swap_last_axes(e), -1)  # [..., k, :, 0] is column k of e
    last_rows = np.concatenate([np.eye(n, dtype=dtype)[:, None, :], np.zeros((n, 1, 1), dtype)],
                               axis=-1)  # [k] is [e_k^T, 0]
    bordered = np.concatenate([np.concatenate([copies, columns], axis=-1),
                               np.broadcast_to(last_rows, batch + (n, 1, n + 1))], axis=-2)
    return -np.sum(adjugate(bordered)[..., :n, :n], axis=-3)


def _adjugate_shape(a):
    _square(a, "adjugate")
    return Aval(a.shape, a.dtype)


def _adjugate_julia(eqn, jl):
    """Julia holds a^T, and adj(a^T) = adj(a)^T: the same SVD formula on the Julia matrix
    (slices and cumprod, no scalar indexing, so GPU matrices work)."""
    return _single_matrix_julia(
        "let F = LinearAlgebra.svd({0}), s = F.S, o = one(eltype(s)); "
        "sign(DiffProg.npdet(F.U) * DiffProg.npdet(F.Vt)) .* (F.V * LinearAlgebra.Diagonal("
        "cumprod(vcat(o, s[1:(end - 1)])) .* reverse(cumprod(vcat(o, reverse(s[2:end]))))"
        ") * F.U') end")(eqn, jl)


# The transposed adjugate is det's gradient at every matrix, singular ones included.
# Its VJP is its JVP transposed: <G, d adj(a)[E]> = <d adj(a)[G^T]^T, E> (check it on
# invertible a with d adj[E] = (tr(adj E) adj - adj E adj) / det; both sides are
# polynomials). Single matrices in the table (stacks are covered through det's cases).
adjugate = Primitive(
    "adjugate", _adjugate_impl, _adjugate_shape,
    vjp=lambda g, a, *, out: (swap_last_axes(_adjugate_jvp(a, swap_last_axes(g))),),
    jvp=lambda ts, a, *, out: None if ts[0] is None else _adjugate_jvp(a, ts[0]),
    julia=_adjugate_julia,
    cases=[Case(_well_conditioned(3, 3)), Case(_rank(3, 2)), Case(_rank(3, 1)),
           Case(_rank(4, 3)), Case(normal(1, 1))], batch=batch_stacked(lambda: adjugate), complex=True)


def _det_shape(a):
    _square(a, "linalg.det")
    return Aval(a.shape[:-2], a.dtype)


# d det(a)[t] = tr(adj(a) t): through the adjugate, not det(a) inv(a), which fails (or
# is garbage) at singular matrices where the gradient is well defined.
det = Primitive(
    "det", "xp.linalg.det({0})", _det_shape, numpy=np.linalg.det,
    vjp=lambda g, a, *, out: (np.expand_dims(g, (-1, -2)) * swap_last_axes(adjugate(a)),),
    jvp=lambda ts, a, *, out: (None if ts[0] is None
                               else np.sum(swap_last_axes(adjugate(a)) * ts[0], axis=(-2, -1))),
    julia=_single_matrix_julia("DiffProg.npdet({0})"),
    cases=[Case(_well_conditioned(3, 3)), Case(_well_conditioned(2, 3, 3)), Case(_rank(3, 2)),
           Case(_rank(4, 2)), Case(_rank(3, 2, 2))], batch=batch_stacked(lambda: det), complex=True)


def _slogdet_shape(a):
    _square(a, "linalg.slogdet")
    # log|det| is real for complex a too
    return [Aval(a.shape[:-2], a.dtype), Aval(a.shape[:-2], real_dtype(a.dtype))]


def _inverse_or_nan(a, sign):
    """inv(a), and NaN for each matrix NumPy's slogdet calls singular (sign 0, logabsdet
    -inf): log|det| has no derivative there. The same exact zero pivot of LAPACK's LU
    makes slogdet return sign 0 and inv raise, so those matrices are replaced by the
    identity before inverting (the other matrices of a stack keep their gradients)."""
    singular = np.expand_dims(sign == 0, (-1, -2))
    safe = np.where(singular, np.eye(np.shape(a)[-1], dtype=np.result_type(a)), a)
    return np.where(singular, np.nan, inv(safe))


# With t = tr(inv(a) da) (d log det, holomorphic): d log|det| = Re(t), and for complex a
# the sign (det / |det|) moves too, d sign = sign * i Im(t); for real a it is a step.
# In JAX's convention the cotangent of t is then g_logabs + i Im(g_sign sign), and that
# of a is it times inv(a)^T.

def _slogdet_vjp(gs, a, *, out):
    g_sign, g_logdet = gs
    complex_a = np.issubdtype(np.result_type(a), np.complexfloating)
    g_t = g_logdet
    if complex_a and g_sign is not None:
        g_t = add_all([g_t, 1j * np.imag(g_sign * out[0])])
    if g_t is None:
        return (None,)
    return (np.expand_dims(g_t, (-1, -2)) * swap_last_axes(_inverse_or_nan(a, out[0])),)


def _slogdet_jvp(ts, a, *, out):
    if ts[0] is None:
        return [None, None]
    t = np.sum(swap_last_axes(_inverse_or_nan(a, out[0])) * ts[0], axis=(-2, -1))
    if not np.issubdtype(np.result_type(a), np.complexfloating):
        return [None, t]
    return [out[0] * (1j * np.imag(t)), np.real(t)]


slogdet = Primitive(
    "slogdet", "tuple(xp.linalg.slogdet({0}))", _slogdet_shape, vjp=_slogdet_vjp,
    numpy={np.linalg.slogdet: lambda a: tuple(slogdet(a))},
    jvp=_slogdet_jvp, julia=_single_matrix_julia("DiffProg.npslogdet({0})"),
    multiple_results=True, missing_cotangents=True,
    cases=[Case(_well_conditioned(3, 3)), Case(_well_conditioned(2, 3, 3))],
    batch=batch_stacked(lambda: slogdet), complex=True)


# ------------------------------------------------------------------ symmetric matrices

def _half_diagonal_lower(x):
    """The lower triangle with the diagonal halved (the cholesky rule's projection); for
    complex x the real part of the diagonal (that of a Hermitian matrix's projection)."""
    if not _is_complex(x):
        return lower_triangle(x, 0.5)
    n = np.shape(x)[-1]
    return lower_triangle(x, 0.0) + np.real(x) * (0.5 * np.eye(n))


def _is_complex(x) -> bool:
    return np.result_type(x).kind == "c"


def _h(x):
    """The conjugate transpose of (a stack of) matrices: the transpose for real x."""
    return np.conj(swap_last_axes(x))


def hermitian_from_lower(x):
    """The Hermitian matrix LAPACK's Hermitian routines (cholesky, eigh, eigvalsh) read
    from ``x``'s lower triangle: ``tril(x, -1) + tril(x, -1)^H`` plus the real part of
    the diagonal (its imaginary part is never read); for real x the symmetric one."""
    if not _is_complex(x):
        return symmetric_from_lower(x)
    strict = lower_triangle(x, 0.0)
    return strict + _h(strict) + np.real(x) * np.eye(np.shape(x)[-1])


def _hermitian_from_upper(x):
    """The Hermitian matrix read from ``x``'s upper triangle (UPLO="U"): the transpose of
    the one read from the lower triangle of x^T."""
    return swap_last_axes(hermitian_from_lower(swap_last_axes(x)))


def _real_rule_or_transposed(real_vjp, jvp):
    """A VJP: ``real_vjp`` (a cotangent formula written for real values) where every
    operand and output is real, and the JVP ``jvp`` transposed (rules.vjp_by_transposing,
    JAX's complex convention through the conj/real/imag entries) where one is complex."""
    transposed = vjp_by_transposing(jvp)

    def vjp(gs, *xs, out, **params):
        outs = out if isinstance(out, (list, tuple)) else [out]
        if any(_is_complex(x) for x in list(xs) + list(outs)):
            return transposed(gs, *xs, out=out, **params)
        return real_vjp(gs, *xs, out=out, **params)
    return vjp


# NumPy's cholesky reads only the lower triangle of `a`: it factors the symmetric
# A = tril(a) + tril(a, -1)^T, whatever is above the diagonal (Hermitian for complex a:
# tril(a, -1)^H above and the real part of the diagonal, hermitian_from_lower). The rules
# are those of that function of `a` (what finite differences of NumPy see), not of a
# symmetric input: the JVP symmetrises the tangent's lower triangle, and the VJP takes
# the cotangent of A back through that map (onto_lower). On symmetric perturbations this
# agrees with the usual symmetric rule. Complex a: dL = L Phi(L^-1 dA L^-H), Phi the lower
# triangle with the (real) diagonal halved; the VJP is that JVP transposed.
def _cholesky_vjp(g, a, *, out):
    L = out
    L_inv = inv(L)
    S = swap_last_axes(L_inv) @ _half_diagonal_lower(swap_last_axes(L) @ g) @ L_inv
    return (onto_lower(S),)


def _cholesky_jvp(ts, a, *, out):
    if ts[0] is None:
        return None
    L = out
    L_inv = inv(L)
    return L @ _half_diagonal_lower(L_inv @ hermitian_from_lower(ts[0]) @ _h(L_inv))


def _cholesky_shape(a):
    _square(a, "linalg.cholesky")
    return Aval(a.shape, a.dtype)


def _spd(x):
    """A positive definite lower triangle (Hermitian for complex x), and noise above it
    that NumPy never reads (so the generated tests see the rules on non-symmetric
    perturbations too)."""
    n = np.shape(x)[-1]
    return x @ _h(x) + n * np.eye(n) + np.triu(x, 1)


def _cholesky_call(a, upper=False):
    """np.linalg.cholesky; with ``upper=True`` NumPy reads the upper triangle of ``a`` and
    returns the upper factor: chol_upper(a) = chol(a^T)^T (for complex a too: the
    Hermitian matrix read from the lower triangle of a^T is the conjugate of the one read
    from the upper triangle of a, and so is its factor)."""
    if upper:
        return swap_last_axes(cholesky(swap_last_axes(a)))
    return cholesky(a)


cholesky = Primitive(
    "cholesky", "xp.linalg.cholesky({0})", _cholesky_shape,
    vjp=_real_rule_or_transposed(_cholesky_vjp, _cholesky_jvp),
    numpy={np.linalg.cholesky: _cholesky_call},
    jvp=_cholesky_jvp, julia=_single_matrix_julia("DiffProg.npcholesky({0})"),
    cases=[Case(normal(3, 3), wrap=_spd), Case(normal(2, 3, 3), wrap=_spd)],
    batch=batch_stacked(lambda: cholesky), complex=True)


# ------------------------------------------------------------------ symmetric eigenproblems
# np.linalg.eigvalsh(a) reads the lower triangle of a (UPLO="L"): it gives the ascending
# eigenvalues of the symmetric A = tril(a) + tril(a, -1)^T. As for cholesky, the rules are
# those of that function of a (what finite differences of NumPy see, on non-symmetric
# perturbations too): the tangent's lower triangle makes the symmetric dA, and the
# cotangent of A goes back through onto_lower. dw_i = v_i^T dA v_i needs the eigenvectors
# as traced values: the eigh entry, whose own rules make every order exact wherever the
# eigenvalues are distinct (at a repeated eigenvalue there is no derivative).
# Complex a: the Hermitian A of hermitian_from_lower (the diagonal's imaginary part is
# never read), dw_i = Re(v_i^H dA v_i), dV = V (F * V^H dA V) + the phase each eigenvector
# keeps: the eigh entry makes its largest-magnitude component real and positive, NumPy's
# zheevd (through its tridiagonal reduction) the first component (UPLO="L") or the last
# (UPLO="U") real; dv_j gets i theta_j v_j keeping that component real, so the derivatives
# are those of the vectors the impl returns (as eig's, below).

def _real_dtype(dtype) -> np.dtype:
    """The dtype of eigenvalues of a Hermitian matrix of ``dtype`` (LAPACK's: float64 for
    integers, the real type of a complex one)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        return np.finfo(dtype).dtype
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def _eigh_impl(xp, a):
    """Eigenvalues (ascending) and eigenvectors of the symmetric (Hermitian) matrix read
    from the lower triangle of ``a``, each eigenvector with its largest-magnitude component
    positive (a choice of sign, or of phase, NumPy leaves to LAPACK: fixed here so every
    engine gives the same)."""
    w, v = xp.linalg.eigh(a)
    largest = xp.argmax(xp.abs(v), axis=-2)[..., None, :]
    top = xp.take_along_axis(v, largest, axis=-2)
    if xp.iscomplexobj(v):  # the unit phase that makes it real and positive
        return w, v * (xp.conj(top) / xp.abs(top))
    return w, v * xp.sign(top)


def _eigh_shape(a):
    _square(a, "linalg.eigh")
    vectors = a.dtype if a.dtype.kind == "c" else _real_dtype(a.dtype)
    return [Aval(a.shape[:-1], _real_dtype(a.dtype)), Aval(a.shape, np.dtype(vectors))]


def _inverse_gaps(w):
    """F[..., i, j] = 1 / (w_j - w_i) off the diagonal, 0 on it."""
    n = np.shape(w)[-1]
    gaps = np.expand_dims(w, -2) - np.expand_dims(w, -1)
    diagonal = np.eye(n, dtype=bool)
    return np.where(diagonal, 0.0, 1.0 / np.where(diagonal, 1.0, gaps))


def _hermitian_eig_jvp(da, w, v, real_row):
    """(dw, dV) for the symmetric (Hermitian) tangent ``da``: dw = Re diag(M),
    dV = V (F * M), M = V^H dA V; for complex V plus i theta_j v_j keeping the component
    that the impl makes real real: row ``real_row`` of V, or the largest-magnitude one
    (``"largest"``)."""
    m = _h(v) @ da @ v
    n = np.shape(w)[-1]
    dw = np.real(np.sum(np.eye(n) * m, axis=-1))
    dv = v @ (_inverse_gaps(w) * m)
    if not _is_complex(v):
        return dw, dv
    if real_row == "largest":
        row = np.expand_dims(np.argmax(np.abs(v), axis=-2), -2) == np.arange(n)[:, None]
        v_r = np.real(np.sum(np.where(row, v, 0.0), axis=-2))
        dv_r = np.sum(np.where(row, dv, 0.0), axis=-2)
    else:
        v_r, dv_r = np.real(v[..., real_row, :]), dv[..., real_row, :]
    theta = -np.imag(dv_r) / v_r
    return dw, dv + v * np.expand_dims(1j * theta, -2)


def _eigh_jvp(ts, a, *, out):
    if ts[0] is None:
        return [None, None]
    w, v = out
    dw, dv = _hermitian_eig_jvp(hermitian_from_lower(ts[0]), w, v, "largest")
    return [in_dtype_of(dw, w), in_dtype_of(dv, v)]


def _eigh_vjp(gs, a, *, out):
    """The cotangent of A is V (diag(g_w) + F * V^T g_V) V^T, then onto a's lower triangle."""
    w, v = out
    g_w, g_v = gs
    inner = np.zeros(np.shape(v), np.result_type(v)) if g_v is None \
        else _inverse_gaps(w) * (swap_last_axes(v) @ g_v)
    if g_w is not None:
        inner = inner + np.expand_dims(g_w, -1) * np.eye(np.shape(w)[-1])
    return (in_dtype_of(onto_lower(v @ inner @ swap_last_axes(v)), a),)


# not bound to np.linalg.eigh: NumPy leaves the eigenvectors' signs to LAPACK
eigh = Primitive(
    "eigh", _eigh_impl, _eigh_shape, vjp=_real_rule_or_transposed(_eigh_vjp, _eigh_jvp),
    jvp=_eigh_jvp, multiple_results=True, missing_cotangents=True,
    julia=_single_matrix_julia("DiffProg.npeigh({0})"),
    cases=[Case(normal(3, 3)), Case(normal(2, 3, 3))], batch=batch_stacked(lambda: eigh),
    complex=True)


def _eigvalsh_shape(a):
    _square(a, "linalg.eigvalsh")
    return Aval(a.shape[:-1], _real_dtype(a.dtype))


def _eigvalsh_vjp(g, a, *, out):
    v = eigh(a)[1]
    return (in_dtype_of(onto_lower((v * np.expand_dims(g, -2)) @ swap_last_axes(v)), a),)


def _eigvalsh_jvp(ts, a, *, out):
    if ts[0] is None:
        return None
    v = eigh(a)[1]
    return in_dtype_of(np.real(np.sum(np.conj(v) * (hermitian_from_lower(ts[0]) @ v), axis=-2)), out)


def _eigvalsh_call(a, UPLO="L"):  # noqa: N803 (NumPy's keyword)
    """np.linalg.eigvalsh; ``UPLO="U"`` reads the upper triangle: the lower one of a^T
    (for complex a that matrix is the conjugate, with the same eigenvalues)."""
    if UPLO not in ("L", "U"):
        raise ArgumentValueError(f"np.linalg.eigvalsh: UPLO must be 'L' or 'U', got {UPLO!r}")
    return eigvalsh(swap_last_axes(a) if UPLO == "U" else a)


eigvalsh = Primitive(
    "eigvalsh", "xp.linalg.eigvalsh({0})", _eigvalsh_shape,
    vjp=_real_rule_or_transposed(_eigvalsh_vjp, _eigvalsh_jvp),
    jvp=_eigvalsh_jvp, numpy={np.linalg.eigvalsh: _eigvalsh_call},
    julia=_single_matrix_julia("DiffProg.npeigvalsh({0})"),
    cases=[Case(normal(3, 3)), Case(normal(2, 3, 3)), Case(normal(4, 4), wrap=_spd)],
    batch=batch_stacked(lambda: eigvalsh), complex=True)


# ------------------------------------------------------------------ NumPy's own factorizations
# np.linalg.eigh, svd and qr return vectors whose signs LAPACK chooses. The rules below are
# written in the factors themselves, so they hold for whichever signs the impl returns, and
# the impl returns NumPy's: the gradients are those of NumPy's own functions (finite
# differences of NumPy see the same signs, locally constant). Complex vectors have a phase
# instead of a sign, which moves with the matrix: the rules differentiate the phase LAPACK
# fixes (eigh: _hermitian_eig_jvp, svd: _reduced_svd_jvp, qr: R's real diagonal). Other array libraries would
# choose other signs: their impl runs NumPy's function on the host. The Julia engine has no
# spelling (Julia's LAPACK calls see the transposed matrix and may choose other signs);
# the sign-free functions (eigvalsh, svdvals, pinv, norms) have one.

_LAPACK_SIGNS = ("the signs of its vectors are LAPACK's choice on the row-major matrix, which "
                 "the julia engine (holding the transpose) cannot promise to reproduce; the "
                 "sign-free functions (np.linalg.eigvalsh, svd(compute_uv=False), pinv, norm) "
                 "have Julia spellings")


def _numpy_on_host(xp, fn, *arrays, **kwargs):
    """``fn`` (a NumPy function) of arrays living in ``xp``: on the host for other array
    libraries (NumPy's signs on every engine), the results moved back."""
    if xp is np:
        return fn(*arrays, **kwargs)
    res = fn(*[xp.asnumpy(a) for a in arrays], **kwargs)
    return tuple(xp.asarray(r) for r in res) if isinstance(res, tuple) else xp.asarray(res)


def _result(kind: str, *values):
    """NumPy's named result tuple (np.linalg.svd's SVDResult, ...) holding ``values``."""
    from numpy.linalg import _linalg
    named = getattr(_linalg, kind, None)
    return named(*values) if named is not None else tuple(values)


def _nan_block(shape, dtype):
    return np.full(shape, np.nan, dtype=dtype)


def _poisoned(ct, *extras):
    """``ct`` made NaN (per matrix of a stack) where a cotangent in ``extras`` is nonzero:
    the completing columns of a full/complete factorization are LAPACK's arbitrary choice
    and have no derivative, so a result that uses them gets NaN, never a silent zero."""
    used = None
    for e in extras:
        if e is None:
            continue
        nonzero = np.sum(1.0 * (e != 0), axis=(-2, -1))
        used = nonzero if used is None else used + nonzero
    if used is None:
        return ct
    return ct + np.where(used != 0, np.nan, 0.0)[..., None, None].astype(np.result_type(ct))


def _eigh_lapack_impl(xp, a, *, uplo):
    return _numpy_on_host(xp, lambda m: tuple(np.linalg.eigh(m, UPLO=uplo)), a)


def _eigh_lapack_jvp(ts, a, *, out, uplo):
    """The eigh entry's rule on the matrix NumPy reads (UPLO="U": the upper triangle),
    with zheevd's phases (the first or the last component real)."""
    if ts[0] is None:
        return [None, None]
    w, v = out
    read = hermitian_from_lower if uplo == "L" else _hermitian_from_upper
    dw, dv = _hermitian_eig_jvp(read(ts[0]), w, v, 0 if uplo == "L" else -1)
    return [in_dtype_of(dw, w), in_dtype_of(dv, v)]


def _eigh_lapack_vjp(gs, a, *, out, uplo):
    (ct,) = _eigh_vjp(gs, a, out=out)
    return (ct if ct is None or uplo == "L" else swap_last_axes(ct),)


def _eigh_call(a, UPLO="L"):  # noqa: N803 (NumPy's keyword)
    if UPLO not in ("L", "U"):
        raise ArgumentValueError(f"np.linalg.eigh: UPLO must be 'L' or 'U', got {UPLO!r}")
    return _result("EighResult", *eigh_lapack(a, uplo=UPLO))


# np.linalg.eigh: the eigh entry's rules (written in w and V, so sign-agnostic), NumPy's
# signs (the eigh entry fixes its own so that engines agree; this one is NumPy's function)
eigh_lapack = Primitive(
    "eigh_lapack", _eigh_lapack_impl, lambda a, *, uplo: _eigh_shape(a),
    vjp=_real_rule_or_transposed(_eigh_lapack_vjp, _eigh_lapack_jvp),
    jvp=_eigh_lapack_jvp, multiple_results=True, missing_cotangents=True,
    batch=batch_stacked(lambda: eigh_lapack),
    julia=Unsupported(f"np.linalg.eigh: {_LAPACK_SIGNS}"), numpy={np.linalg.eigh: _eigh_call},
    cases=[Case(normal(3, 3), {"uplo": "L"}), Case(normal(2, 4, 4), {"uplo": "L"}),
           Case(normal(4, 4), {"uplo": "U"}), Case(normal(4, 4), {"uplo": "L"}, wrap=_spd)],
    complex=True)


# ------------------------------------------------------------------ SVD

def _at_least_matrix(a, what):
    if a.ndim < 2:
        raise ShapeError(f"{what}: expected a matrix (or a stack of them), got shape {a.shape}")


def _svd_shape(a, *, full_matrices):
    _at_least_matrix(a, "linalg.svd")
    m, n = a.shape[-2:]
    k = min(m, n)
    dtype = _vectors_dtype(a.dtype)
    return [Aval(a.shape[:-2] + (m, m if full_matrices else k), dtype),
            Aval(a.shape[:-2] + (k,), _real_dtype(a.dtype)),
            Aval(a.shape[:-2] + (n if full_matrices else k, n), dtype)]


def _vectors_dtype(dtype) -> np.dtype:
    """The dtype of LAPACK's factors of a matrix of ``dtype``: complex stays complex."""
    dtype = np.dtype(dtype)
    return dtype if dtype.kind == "c" else _real_dtype(dtype)


def _svd_impl(xp, a, *, full_matrices):
    return _numpy_on_host(xp, lambda m: tuple(np.linalg.svd(m, full_matrices=full_matrices)), a)


def _inverse_square_gaps(s):
    """F[..., i, j] = 1 / (s_j^2 - s_i^2) off the diagonal, 0 on it."""
    k = np.shape(s)[-1]
    row, col = np.expand_dims(s, -2), np.expand_dims(s, -1)
    gaps = (row + col) * (row - col)
    diagonal = np.eye(k, dtype=bool)
    return np.where(diagonal, 0.0, 1.0 / np.where(diagonal, 1.0, gaps))


def _reduced_svd_jvp(da, u, s, vh):
    """Tangents of the reduced SVD a = U diag(s) Vh along da (JAX's rule):
    dS = U^H da V, ds = Re diag(dS), dU = U (F * (dS S + S dS^H)) (+ the part of da V
    outside U's span / s for tall a), dV likewise. Distinct nonzero singular values needed.
    Complex a: a pair (u_j, v_j) is fixed only up to a common phase. JAX's rule gives dU
    the imaginary diagonal i Im(dS_jj) / s_j and v_j^H dv_j = 0; then both get
    i theta_j (u_j, v_j) keeping real the component LAPACK's zgesdd (through its real
    bidiagonal) returns real: the first of each v_j for m >= n, of each u_j for m < n. So
    the derivatives are those of NumPy's own vectors (as eig's and eigh's)."""
    m, n = np.shape(da)[-2:]
    v = _h(vh)
    ds_full = _h(u) @ da @ v
    k = np.shape(s)[-1]
    ds = np.real(np.sum(ds_full * np.eye(k), axis=-1))
    f = _inverse_square_gaps(s)
    row = np.expand_dims(s, -2)
    col = np.expand_dims(s, -1)
    dss, sds = ds_full * row, col * ds_full
    du = u @ (f * (dss + _h(dss)))
    dv = v @ (f * (sds + _h(sds)))
    if m > n:
        dav = da @ v
        du = du + (dav - u @ (_h(u) @ dav)) / row
    if n > m:
        dau = _h(da) @ u
        dv = dv + (dau - v @ (_h(v) @ dau)) / row
    if _is_complex(u):
        du = du + u * (1j * np.imag(np.expand_dims(np.sum(ds_full * np.eye(k), axis=-1), -2)) / row)
        kept, d_kept = (v, dv) if m >= n else (u, du)
        theta = np.expand_dims(-np.imag(d_kept[..., 0, :]) / np.real(kept[..., 0, :]), -2)
        du, dv = du + u * (1j * theta), dv + v * (1j * theta)
    return du, ds, _h(dv)


def _svd_reduced_parts(a, out, full_matrices):
    u, s, vh = out
    m, n = np.shape(a)[-2:]
    k = min(m, n)
    if full_matrices:
        u, vh = u[..., :, :k], vh[..., :k, :]
    return u, s, vh


def _svd_jvp(ts, a, *, out, full_matrices):
    if ts[0] is None:
        return [None, None, None]
    u, s, vh = _svd_reduced_parts(a, out, full_matrices)
    du, ds, dvh = _reduced_svd_jvp(ts[0], u, s, vh)
    m, n = np.shape(a)[-2:]
    k, batch, dtype = min(m, n), tuple(np.shape(a)[:-2]), np.result_type(du)
    if full_matrices and m > k:  # the completing columns: no derivative
        du = np.concatenate([du, _nan_block(batch + (m, m - k), dtype)], axis=-1)
    if full_matrices and n > k:
        dvh = np.concatenate([dvh, _nan_block(batch + (n - k, n), dtype)], axis=-2)
    return [in_dtype_of(du, out[0]), in_dtype_of(ds, out[1]), in_dtype_of(dvh, out[2])]


def _reduced_svd_jvp_rule(ts, a, *, out):
    return list(_reduced_svd_jvp(ts[0], *out))


_reduced_svd_vjp = vjp_by_transposing(_reduced_svd_jvp_rule)


def _svd_vjp(gs, a, *, out, full_matrices):
    g_u, g_s, g_vh = gs
    m, n = np.shape(a)[-2:]
    k = min(m, n)
    extras = []
    if full_matrices and m > k and g_u is not None:
        extras.append(g_u[..., :, k:])
        g_u = g_u[..., :, :k]
    if full_matrices and n > k and g_vh is not None:
        extras.append(g_vh[..., k:, :])
        g_vh = g_vh[..., :k, :]
    (ct,) = _reduced_svd_vjp([g_u, g_s, g_vh], a, out=list(_svd_reduced_parts(a, out, full_matrices)))
    return (None if ct is None else _poisoned(ct, *extras),)


def _tall_wide_and_stacked(*shapes):
    return [Case(normal(*shape)) for shape in shapes]


svd = Primitive(
    "svd", _svd_impl, _svd_shape, vjp=_svd_vjp, jvp=_svd_jvp, multiple_results=True, missing_cotangents=True,
    numpy={np.linalg.svd: lambda *args, **kwargs: _svd_call(*args, **kwargs)},
    batch=batch_stacked(lambda: svd), julia=Unsupported(f"np.linalg.svd: {_LAPACK_SIGNS}"),
    cases=[Case(normal(4, 3), {"full_matrices": False}), Case(normal(3, 5), {"full_matrices": False}),
           Case(normal(2, 3, 3), {"full_matrices": False}), Case(normal(3, 3), {"full_matrices": True}),
           Case(normal(3, 4), {"full_matrices": False}), Case(normal(9, 4), {"full_matrices": False}),
           Case(normal(4, 9), {"full_matrices": False})],
    complex=True)


def _svdvals_shape(a):
    _at_least_matrix(a, "linalg.svd")
    return Aval(a.shape[:-2] + (min(a.shape[-2:]),), _real_dtype(a.dtype))


def _svdvals_jvp(ts, a, *, out):
    """ds_j = Re(u_j^H da v_j)."""
    if ts[0] is None:
        return None
    u, _, vh = svd(a, full_matrices=False)
    return in_dtype_of(np.real(np.sum(np.conj(u) * (ts[0] @ _h(vh)), axis=-2)), out)


def _svdvals_vjp(g, a, *, out):
    """conj(U) diag(g) conj(Vh) (JAX's convention: the transpose of the JVP)."""
    u, _, vh = svd(a, full_matrices=False)
    return (in_dtype_of(np.conj((u * np.expand_dims(g, -2)) @ vh), a),)


# singular values only (np.linalg.svd(a, compute_uv=False), the SVD norms): no signs
svdvals = Primitive(
    "svdvals", "xp.linalg.svd({0}, compute_uv=False)", _svdvals_shape, vjp=_svdvals_vjp,
    jvp=_svdvals_jvp, batch=batch_stacked(lambda: svdvals),
    julia=_single_matrix_julia("LinearAlgebra.svdvals({0})"),
    cases=_tall_wide_and_stacked((4, 3), (3, 5), (2, 3, 3)), complex=True)


def _svd_call(a, full_matrices=True, compute_uv=True, hermitian=False):
    """np.linalg.svd. ``hermitian=True`` makes NumPy read the lower triangle only (eigh)."""
    if hermitian:
        raise unsupported("np.linalg.svd(..., hermitian=True)")
    if not compute_uv:
        return svdvals(a)
    m, n = np.shape(a)[-2:]
    return _result("SVDResult", *svd(a, full_matrices=bool(full_matrices) and m != n))




# ------------------------------------------------------------------ pseudo-inverse

def _pinv_shape(a, *, rcond):
    _at_least_matrix(a, "linalg.pinv")
    return Aval(a.shape[:-2] + (a.shape[-1], a.shape[-2]), _vectors_dtype(a.dtype))


def _pinv_jvp(ts, a, *, out, rcond):
    """Golub and Pereyra's derivative of the pseudo-inverse (constant rank), as in JAX
    (conjugate transposes for complex a)."""
    if ts[0] is None:
        return None
    p, da = out, ts[0]
    dah, ph = _h(da), _h(out)
    m, n = np.shape(a)[-2:]
    if m >= n:
        s = (p @ ph) @ dah
        t = (dah @ ph) @ p
        return -(p @ da) @ p + s - (s @ a) @ p + t - (p @ a) @ t
    s = p @ (ph @ dah)
    t = dah @ (ph @ p)
    return -p @ (da @ p) + s - s @ (a @ p) + t - p @ (a @ t)


def _pinv_impl(xp, a, *, rcond):
    return xp.linalg.pinv(a, rcond=rcond)


def _pinv_call(a, rcond=None, hermitian=False, **kwargs):
    """np.linalg.pinv (``rtol=`` as NumPy reads it); hermitian=True: NumPy reads the lower
    triangle (the symmetric, or Hermitian, matrix it stands for is pseudo-inverted here)."""
    m, n = np.shape(a)[-2:]
    dtype = _real_dtype(np.result_type(a))
    rtol = kwargs.pop("rtol", None) if "rtol" in kwargs else "unset"
    if kwargs:
        raise ArgumentError(f"np.linalg.pinv: unsupported keyword(s) {sorted(kwargs)}")
    if rcond is None:
        rcond = 1e-15 if rtol == "unset" else (max(m, n) * np.finfo(dtype).eps if rtol is None
                                               else rtol)
    if np.ndim(rcond) != 0:
        raise unsupported("np.linalg.pinv with one rcond per matrix")
    if hermitian:
        a = hermitian_from_lower(a)
    return pinv(a, rcond=float(rcond))


pinv = Primitive(
    "pinv", _pinv_impl, _pinv_shape, jvp=_pinv_jvp, vjp=vjp_by_transposing(_pinv_jvp),
    numpy={np.linalg.pinv: _pinv_call}, batch=batch_stacked(lambda: pinv),
    julia=_single_matrix_julia("LinearAlgebra.pinv({0}; rtol = {rcond})"),
    cases=[Case(normal(4, 3), {"rcond": 1e-15}), Case(normal(3, 5), {"rcond": 1e-15}),
           Case(normal(2, 3, 3), {"rcond": 1e-15})], complex=True)


# ------------------------------------------------------------------ QR

def _qr_shape(a, *, complete):
    _at_least_matrix(a, "linalg.qr")
    m, n = a.shape[-2:]
    k = m if complete else min(m, n)
    dtype = _vectors_dtype(a.dtype)
    return [Aval(a.shape[:-2] + (m, k), dtype), Aval(a.shape[:-2] + (k, n), dtype)]


def _qr_impl(xp, a, *, complete):
    mode = "complete" if complete else "reduced"
    return _numpy_on_host(xp, lambda m: tuple(np.linalg.qr(m, mode=mode)), a)


def _right_solve_upper(b, r):
    """b r^{-1} for a square upper triangular r."""
    return swap_last_axes(solve(swap_last_axes(r), swap_last_axes(b)))


def _square_or_tall_qr_jvp(da, q, r):
    """The reduced QR of a (m >= n) along da (JAX's rule): with X = Q^H da R^{-1},
    dO = tril(X, -1) - tril(X, -1)^H (+ i Im diag(X) for complex a, so that the diagonal
    of R stays real, as LAPACK's is), dQ = Q (dO - X) + da R^{-1}, dR = (X - dO) R."""
    da_rinv = _right_solve_upper(da, r)
    x = _h(q) @ da_rinv
    n = np.shape(x)[-1]
    low = x * np.tril(np.ones((n, n)), -1)
    do = low - _h(low)
    if _is_complex(x):
        do = do + 1j * np.imag(x * np.eye(n))
    return q @ (do - x) + da_rinv, (x - do) @ r


def _reduced_qr_jvp(da, q, r):
    m, n = np.shape(da)[-2:]
    if m >= n:
        return _square_or_tall_qr_jvp(da, q, r)
    # wide: Q and the first m columns of R come from the square block a[:, :m]; the rest
    # of R is Q^H a[:, m:]
    dq, dr_left = _square_or_tall_qr_jvp(da[..., :, :m], q, r[..., :, :m])
    dr_right = _h(dq) @ _wide_rest(r, q) + _h(q) @ da[..., :, m:]
    return dq, np.concatenate([dr_left, dr_right], axis=-1)


def _wide_rest(r, q):
    """a[:, m:] = Q R[:, m:] of a wide matrix."""
    m = np.shape(q)[-1]
    return q @ r[..., :, m:]


def _qr_jvp(ts, a, *, out, complete):
    if ts[0] is None:
        return [None, None]
    q, r = out
    m, n = np.shape(a)[-2:]
    if complete and m > n:
        dq, dr = _reduced_qr_jvp(ts[0], q[..., :, :n], r[..., :n, :])
        batch = tuple(np.shape(a)[:-2])
        dq = np.concatenate([dq, _nan_block(batch + (m, m - n), np.result_type(dq))], axis=-1)
        dr = np.concatenate([dr, np.zeros(batch + (m - n, n), np.result_type(dr))], axis=-2)
    else:
        dq, dr = _reduced_qr_jvp(ts[0], q, r)
    return [in_dtype_of(dq, q), in_dtype_of(dr, r)]


_reduced_qr_vjp = vjp_by_transposing(
    lambda ts, a, *, out: list(_reduced_qr_jvp(ts[0], *out)))


def _qr_vjp(gs, a, *, out, complete):
    g_q, g_r = gs
    q, r = out
    m, n = np.shape(a)[-2:]
    extras = []
    if complete and m > n:
        if g_q is not None:
            extras.append(g_q[..., :, n:])
            g_q = g_q[..., :, :n]
        if g_r is not None:
            g_r = g_r[..., :n, :]  # the rows below n are zeros whatever a is
        q, r = q[..., :, :n], r[..., :n, :]
    (ct,) = _reduced_qr_vjp([g_q, g_r], a, out=[q, r])
    return (None if ct is None else _poisoned(ct, *extras),)


def _qr_call(a, mode="reduced"):
    """np.linalg.qr: 'reduced' and 'complete' give QRResult(Q, R), 'r' gives R."""
    if mode not in ("reduced", "complete", "r"):
        raise unsupported(f"np.linalg.qr(..., mode={mode!r})")
    m, n = np.shape(a)[-2:]
    q, r = qr(a, complete=mode == "complete" and m > n)
    return r if mode == "r" else _result("QRResult", q, r)


qr = Primitive(
    "qr", _qr_impl, _qr_shape, vjp=_qr_vjp, jvp=_qr_jvp, multiple_results=True, missing_cotangents=True,
    numpy={np.linalg.qr: _qr_call}, batch=batch_stacked(lambda: qr),
    julia=Unsupported(f"np.linalg.qr: {_LAPACK_SIGNS}"),
    cases=[Case(normal(4, 3), {"complete": False}), Case(normal(3, 3), {"complete": False}),
           Case(normal(3, 5), {"complete": False}), Case(normal(2, 4, 3), {"complete": False})],
    complex=True)


# ------------------------------------------------------------------ general eigenproblems
# np.linalg.eig(a) and eigvals(a) of a square (real or complex) matrix. NumPy returns a
# real array where every eigenvalue of a real matrix happens to be real and a complex one
# otherwise: a dtype that depends on the values, which tracing cannot know. These entries
# always give complex results (as JAX does), with NumPy's values (bit for bit: its own
# call, the real results converted to complex exactly). So `w.real`, `np.abs(w)` and
# friends agree with NumPy; code that relies on the dtype (np.sort(w) sorts complex
# values lexicographically, w.dtype) sees complex values where NumPy might give real ones.
#
# Rules (nondegenerate perturbation theory, JAX's eig rule): with P = V^-1 dA V,
#   dw = diag(P),  dV = U + V diag(c),  U = V (F * P),  F_ij = 1 / (w_j - w_i) (0 on the
# diagonal). The eigenvalue equation leaves each dv_j free along v_j (c_j); LAPACK's geev
# fixes v_j by a unit 2-norm and a real largest-magnitude component v_kj, and these rules
# differentiate through that choice:
#   c_j = -Re(v_j^H u_j) - i Im(u_kj) / v_kj,   k = argmax_i |v_ij|
# (the first keeps |v_j| = 1, the second keeps v_kj real). So the derivatives of V are
# those of NumPy's own eigenvectors (what finite differences of np.linalg.eig see), not
# merely of some gauge: any function of V has the derivative NumPy's values imply.
# At a repeated eigenvalue (and close to one) there is no derivative: F holds 1/0, and
# dV comes out inf/NaN (dw, from an ill-conditioned V, is unreliable there too).

def _eig_dtype(dtype) -> np.dtype:
    """The complex dtype of eigenvalues and eigenvectors of a matrix of ``dtype``
    (LAPACK's: complex64 for float32, complex128 for float64 and integers)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        return dtype
    return np.dtype(np.complex64) if dtype == np.float32 else np.dtype(np.complex128)


def _eig_shape(a):
    _square(a, "linalg.eig")
    c = _eig_dtype(a.dtype)
    return [Aval(a.shape[:-1], c), Aval(a.shape, c)]


def _eig_impl(xp, a):
    w, v = _numpy_on_host(xp, lambda m: tuple(np.linalg.eig(m)), a)
    c = _eig_dtype(a.dtype)
    return w.astype(c, copy=False), v.astype(c, copy=False)


def _eig_vectors_jvp(da, w, v):
    """(dw, dV) of NumPy's eig along da (see above)."""
    p = solve(v, da) @ v
    n = np.shape(w)[-1]
    dw = np.sum(p * np.eye(n), axis=-1)
    u = v @ (_inverse_gaps(w) * p)
    largest = np.expand_dims(np.argmax(np.abs(v), axis=-2), -2) == np.arange(n)[:, None]
    v_k = np.real(np.sum(np.where(largest, v, 0.0), axis=-2))  # real (LAPACK's choice)
    u_k = np.sum(np.where(largest, u, 0.0), axis=-2)
    c = -np.real(np.sum(np.conj(v) * u, axis=-2)) - 1j * (np.imag(u_k) / v_k)
    return dw, u + v * np.expand_dims(c, -2)


def _eig_jvp(ts, a, *, out):
    if ts[0] is None:
        return [None, None]
    w, v = out
    dw, dv = _eig_vectors_jvp(ts[0], w, v)
    return [in_dtype_of(dw, w), in_dtype_of(dv, v)]


def _eig_call(a):
    return _result("EigResult", *eig(a))


eig = Primitive(
    "eig", _eig_impl, _eig_shape, jvp=_eig_jvp, vjp=vjp_by_transposing(_eig_jvp),
    multiple_results=True, missing_cotangents=True, numpy={np.linalg.eig: _eig_call},
    batch=batch_stacked(lambda: eig),
    julia=Unsupported("np.linalg.eig: the order of the eigenvalues and the phases of the "
                      "eigenvectors are LAPACK's choices on the row-major matrix, which the "
                      "julia engine (holding the transpose; Julia's eigen also sorts) cannot "
                      "promise to reproduce"),
    cases=[Case(normal(3, 3)), Case(normal(4, 4)), Case(normal(2, 3, 3)),
           Case(lambda rng: [_real_spectrum(rng, 3)])], complex=True)


def _real_spectrum(rng, n):
    """A nonsymmetric matrix with distinct real eigenvalues (real eigenvectors)."""
    x = rng.standard_normal((n, n)) + n * np.eye(n)
    return x @ np.diag(np.arange(1.0, n + 1.0)) @ np.linalg.inv(x)


def _eigvals_shape(a):
    _square(a, "linalg.eigvals")
    return Aval(a.shape[:-1], _eig_dtype(a.dtype))


def _eigvals_impl(xp, a):
    w = _numpy_on_host(xp, np.linalg.eigvals, a)
    return w.astype(_eig_dtype(a.dtype), copy=False)


def _eigvals_pairing(a, w):
    """``(V, M)``: eig's eigenvectors of ``a`` and the 0/1 matrix M[..., i, j] pairing
    eigenvalue i of eigvals (``w``) with eigenvalue j of eig (the nearest: LAPACK computes
    the two separately, in the same order in practice, but nothing promises it)."""
    w_eig, v = eig(a)
    n = np.shape(w)[-1]
    gaps = np.abs(np.expand_dims(w, -1) - np.expand_dims(w_eig, -2))
    # ties (a repeated eigenvalue) go to the same position, so the pairing stays one to
    # one: argmin alone sent every copy of a repeated eigenvalue to its first position
    gaps = gaps + np.where(np.eye(n, dtype=bool), 0.0, np.finfo(np.float64).tiny)
    nearest = np.expand_dims(np.argmin(gaps, axis=-1), -1) == np.arange(n)
    return v, np.where(nearest, 1.0, 0.0)


def _eigvals_jvp(ts, a, *, out):
    """dw_i = (V^-1 dA V)_ii."""
    if ts[0] is None:
        return None
    v, pairing = _eigvals_pairing(a, out)
    dw = np.sum(solve(v, ts[0]) * swap_last_axes(v), axis=-1)
    return in_dtype_of(np.sum(pairing * np.expand_dims(dw, -2), axis=-1), out)


def _eigvals_vjp(g, a, *, out):
    """The transpose of the JVP: V^-T diag(g) V^T (JAX's convention: no conjugates)."""
    v, pairing = _eigvals_pairing(a, out)
    g_eig = np.sum(pairing * np.expand_dims(g, -1), axis=-2)
    vt = swap_last_axes(v)
    return (in_dtype_of(solve(vt, np.expand_dims(g_eig, -1) * vt), a),)


eigvals = Primitive(
    "eigvals", _eigvals_impl, _eigvals_shape, jvp=_eigvals_jvp, vjp=_eigvals_vjp,
    numpy=np.linalg.eigvals, batch=batch_stacked(lambda: eigvals),
    julia=Unsupported("np.linalg.eigvals: the order of the eigenvalues is LAPACK's choice on "
                      "the row-major matrix (Julia's eigvals sorts them, and the julia engine "
                      "holds the transpose), which it cannot promise to reproduce"),
    cases=[Case(normal(3, 3)), Case(normal(2, 4, 4)),
           Case(lambda rng: [_real_spectrum(rng, 3)])], complex=True)
