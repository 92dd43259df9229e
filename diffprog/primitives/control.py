"""Control-flow entries: scan, cond, while_loop (and its reverse-mode program
while_loop_grad), remat (checkpoint), error_if, and guard.

Each holds its traced bodies (:class:`~diffprog.transforms.closed.Closed`) in its params
and runs them as callables: ``body(*args) -> outputs``. Under tracing a body runs its
equations one by one; in a compiled program it is the body the engine compiled (engines
compile the bodies they meet; nothing here compiles). The derivative rules transform the
bodies (:func:`~diffprog.transforms.vjp_graph`, :func:`~diffprog.transforms.jvp_graph`)
and bind these same entries again, so derivatives of any order stay structured.

The user-facing functions (dp.scan, dp.cond, ...) are in :mod:`diffprog.control`; Python
``if``/``int()`` on traced values records guards (:mod:`diffprog.guards`).
"""
from __future__ import annotations

import numpy as np

from ..errors import NotDifferentiableError, ShapeError, SolverError
from ..ir import Aval
from ..tracing import bind, eval_graph
from ..transforms.batch import (NOT_BATCHED, batch_eval, batched_aval, batched_body, by,
                               moved, reaches, with_batch)
from ..transforms.closed import Closed, close
from ..transforms.jvp import jvp_graph
from ..transforms.vjp import vjp_graph
# The example cases hold bodies traced on real values, so the generated tests do not
# complexify them (complex=False); tests/test_complex.py runs complex loops and branches
# through the public API.
from .core import Case, Primitive, Unsupported


def strong(aval: Aval) -> Aval:
    """``aval`` without the weak type of Python scalars (loop values are arrays)."""
    return Aval(aval.shape, aval.dtype)


def _is_float(aval) -> bool:
    return np.issubdtype(aval.dtype, np.inexact)


def _zeros(aval):
    return np.zeros(aval.shape, aval.dtype)


def _or_zeros(t, aval):
    return t if t is not None else _zeros(aval)


def _float_positions(avals, start=0, stop=None) -> list:
    """Positions of the float avals among ``avals[start:stop]`` (those with derivatives)."""
    stop = len(avals) if stop is None else stop
    return [i for i in range(start, stop) if _is_float(avals[i])]


def bind_all(prim, inputs, **params) -> list:
    """Bind a multiple-result entry and return its outputs as a list."""
    return list(prim.bind(*inputs, **params))


# ------------------------------------------------------------------ Julia spellings
# The bodies become local Julia functions (``{body}``), run by DiffProg.npscan / npcond /
# npwhile / npremat (julia/src/control.jl).

def _jl_operands(jl, positions) -> str:
    """A Julia tuple of the equation's operands at ``positions``: ``({2}, {3})``."""
    return jl.tuple([f"{{{i}}}" for i in positions])


def _scan_julia(eqn, jl):
    p, n = eqn.params, len(eqn.inputs)
    if p["length"] == 0:
        return Unsupported("a scan of length 0 has no steps to stack outputs from in Julia")
    nc, nx = p["n_carry"], p["n_x"]
    return (f"DiffProg.npscan({{body}}, {_jl_operands(jl, range(nc))}, "
            f"{_jl_operands(jl, range(nc, nc + nx))}, {_jl_operands(jl, range(nc + nx, n))}, "
            f"{int(p['length'])}, {'true' if p['reverse'] else 'false'}, Val({nc}))")


def _cond_julia(eqn, jl):
    return (f"DiffProg.npcond({{0}}, {{true_body}}, {{false_body}}, "
            f"{_jl_operands(jl, range(1, len(eqn.inputs)))})")


def _while_julia(eqn, jl):
    nc, ncc, n = eqn.params["n_carry"], eqn.params["n_cond_consts"], len(eqn.inputs)
    return (f"DiffProg.npwhile({{cond_body}}, {{body}}, {_jl_operands(jl, range(nc))}, "
            f"{_jl_operands(jl, range(nc, nc + ncc))}, {_jl_operands(jl, range(nc + ncc, n))})")


def _remat_julia(eqn, jl):
    return f"DiffProg.npremat({{body}}, {_jl_operands(jl, range(len(eqn.inputs)))})"


_PYTHON_ONLY = ("{} exists only in derivative programs the Python engines build; the julia "
                "engine differentiates the forward loop with Zygote instead")


# ================================================================================ scan
# inputs: (*carry, *xs, *consts); outputs: (*final carry, *stacked ys)


# ======================================================= dp.vmap's rules of these entries

def _scan(prim):
    """A scan over batched values is one scan whose body is batched: carries that any
    batched value reaches are batched (found by iterating to a fixed point), scanned
    inputs carry their batch at axis 1 (axis 0 is the loop), stacked outputs come back
    batched at axis 1."""
    def rule(values, dims, size, *, body, n_carry, n_x, length, reverse):
        graph = body.graph
        carry_b = [d is not NOT_BATCHED for d in dims[:n_carry]]
        rest_b = [d is not NOT_BATCHED for d in dims[n_carry:]]
        while True:
            out_b = reaches(graph, carry_b + rest_b)
            grown = [c or o for c, o in zip(carry_b, out_b[:n_carry])]
            if grown == carry_b:
                break
            carry_b = grown
        y_b = out_b[n_carry:]
        carries = [with_batch(v, d, size) if b else v
                   for v, d, b in zip(values[:n_carry], dims[:n_carry], carry_b)]
        xs = [moved(v, d, 1) if d is not NOT_BATCHED else v
              for v, d in zip(values[n_carry:n_carry + n_x], dims[n_carry:n_carry + n_x])]
        consts = [moved(v, d) if d is not NOT_BATCHED else v
                  for v, d in zip(values[n_carry + n_x:], dims[n_carry + n_x:])]
        in_dims = [0 if b else NOT_BATCHED for b in carry_b + rest_b]
        in_avals = [batched_aval(a, b, size) for a, b in zip(body.in_avals, carry_b + rest_b)]

        def batched_body(*args):
            outs, out_dims = batch_eval(graph, list(args), in_dims, size)
            return [with_batch(o, d, size) if want else o
                    for o, d, want in zip(outs, out_dims, carry_b + y_b)]
        new_body = close(batched_body, in_avals)
        outs = bind(prim, *carries, *xs, *consts, body=new_body, n_carry=n_carry, n_x=n_x,
                    length=length, reverse=reverse)
        out_dims = [0 if b else NOT_BATCHED for b in carry_b] + \
            [1 if b else NOT_BATCHED for b in y_b]
        return outs, out_dims
    return rule


def _cond(prim):
    """A shared predicate keeps one cond with batched branches; a batched predicate runs
    both branches for every example and selects per example (as JAX does: the branch
    not taken is computed and discarded)."""
    def rule(values, dims, size, *, true_body, false_body):
        pred, ops, op_dims = values[0], values[1:], dims[1:]
        if dims[0] is NOT_BATCHED:
            flags = [d is not NOT_BATCHED for d in op_dims]
            out_b = [a or b for a, b in zip(reaches(true_body.graph, flags),
                                            reaches(false_body.graph, flags))]
            in_avals = [batched_aval(a, f, size) for a, f in zip(true_body.in_avals, flags)]
            ops = [moved(v, d) if d is not NOT_BATCHED else v for v, d in zip(ops, op_dims)]
            in_dims = [0 if f else NOT_BATCHED for f in flags]
            bodies = [close(batched_body(b.graph, in_dims, out_b, size), in_avals)
                      for b in (true_body, false_body)]
            outs = bind(prim, pred, *ops, true_body=bodies[0], false_body=bodies[1])
            return outs, [0 if b else NOT_BATCHED for b in out_b]
        # a batched predicate: both branches, each example keeping its own (select_cond,
        # whose derivatives select per example too, so no 0 * inf from the other branch)
        # Every operand is batched for it (shared ones broadcast): its derivative selects
        # each example's cotangent before the broadcast's derivative sums them.
        ops = [with_batch(v, d, size) for v, d in zip(ops, op_dims)]
        in_dims = [0] * len(ops)
        in_avals = [batched_aval(a, True, size) for a in true_body.in_avals]
        every = [True] * len(true_body.out_avals)
        bodies = [close(batched_body(b.graph, in_dims, every, size), in_avals)
                  for b in (true_body, false_body)]
        outs = bind(select_cond, moved(pred, dims[0]), *ops, true_body=bodies[0],
                    false_body=bodies[1])
        return outs, [0] * len(outs)
    return rule




def _while(prim):
    """Carries that a batched value reaches are batched. A shared predicate keeps one
    loop; a batched one loops while any example's predicate holds, and an example whose
    predicate is false keeps its carry (each runs exactly its own number of steps)."""
    def rule(values, dims, size, *, cond_body, body, n_carry, n_cond_consts):
        if size == 0:  # no example runs a step: the carries as they came, batched
            return [with_batch(v, d, 0) for v, d in zip(values[:n_carry], dims[:n_carry])], \
                [0] * n_carry
        carry_b = [d is not NOT_BATCHED for d in dims[:n_carry]]
        cc_b = [d is not NOT_BATCHED for d in dims[n_carry:n_carry + n_cond_consts]]
        bc_b = [d is not NOT_BATCHED for d in dims[n_carry + n_cond_consts:]]
        while True:
            pred_b = reaches(cond_body.graph, carry_b + cc_b)[0]
            grown = carry_b if not pred_b else [True] * n_carry
            grown = [c or o for c, o in zip(grown, reaches(body.graph, grown + bc_b))]
            if grown == carry_b:
                break
            carry_b = grown
        carry = [with_batch(v, d, size) if b else v
                 for v, d, b in zip(values[:n_carry], dims[:n_carry], carry_b)]
        consts = [moved(v, d) if d is not NOT_BATCHED else v
                  for v, d in zip(values[n_carry:], dims[n_carry:])]
        cond_dims = [0 if b else NOT_BATCHED for b in carry_b + cc_b]
        body_dims = [0 if b else NOT_BATCHED for b in carry_b + bc_b]
        cond_avals = [batched_aval(a, b, size) for a, b in zip(cond_body.in_avals, carry_b + cc_b)]
        body_avals = [batched_aval(a, b, size) for a, b in zip(body.in_avals, carry_b + bc_b)]
        step = batched_body(body.graph, body_dims, carry_b, size)
        if not pred_b:
            new_cond = close(batched_body(cond_body.graph, cond_dims, [False], size), cond_avals)
            new_body = close(step, body_avals)
            cc_avals = cond_avals[n_carry:]
        else:
            def still(args):
                outs, out_dims = batch_eval(cond_body.graph, list(args), cond_dims, size)
                return with_batch(outs[0], out_dims[0], size)

            def any_running(*args):  # (*carry, *cond consts)
                return [np.any(still(args))]

            n_cc = n_cond_consts
            # select_cond takes every operand batched (see _cond): shared consts broadcast
            body_consts_avals = [batched_aval(a, True, size) for a in body.in_avals[n_carry:]]
            step_avals = body_avals[:n_carry] + body_consts_avals
            step_dims = [0] * len(step_avals)
            stepping = close(batched_body(body.graph, step_dims, [True] * n_carry, size),
                             step_avals)
            staying = close(lambda *a: list(a[:n_carry]), step_avals)
            shared = [not b for b in bc_b]

            def masked_step(*args):  # (*carry, *cond consts, *body consts)
                running = still(args[:n_carry + n_cc])  # a finished example keeps its carry
                consts = [with_batch(v, NOT_BATCHED, size) if s else v
                          for v, s in zip(args[n_carry + n_cc:], shared)]
                return bind(select_cond, running, *args[:n_carry], *consts,  # and its
                            true_body=stepping, false_body=staying)  # derivatives their own
            cc_avals = cond_avals[n_carry:]
            new_cond = close(any_running, cond_avals)
            new_body = close(masked_step, body_avals[:n_carry] + cc_avals + body_avals[n_carry:])
            # the body now also reads the cond consts: pass them twice
            consts = consts[:n_cond_consts] + consts[:n_cond_consts] + consts[n_cond_consts:]
        outs = bind(prim, *carry, *consts, cond_body=new_cond, body=new_body, n_carry=n_carry,
                    n_cond_consts=n_cond_consts)
        return outs, [0 if b else NOT_BATCHED for b in carry_b]
    return rule


def _error_if(prim):
    """A run-time check of a batch fails when any example's does; the error names the
    first failing example (its index in the batch) and that example's values."""
    def rule(values, dims, size, *, message):
        x, pred, info = values[0], values[1], values[2:]
        pred = with_batch(pred, dims[1], size)
        first = np.argmax(pred)
        picked = [v if d is NOT_BATCHED else with_batch(v, d, size)[first]
                  for v, d in zip(info, dims[2:])]
        renumbered = _shift_fields(message, 1)
        out = bind(prim, x, np.any(pred), first, *picked,
                   message="example {0:.0f} of the dp.vmap batch: " + renumbered)
        return out, dims[0]
    return rule


def _shift_fields(message: str, offset: int) -> str:
    """``"t={0:.3g}"`` -> ``"t={1:.3g}"``, ``"{} {}"`` -> ``"{1} {2}"``: room for a new
    first format field (automatic fields are numbered first)."""
    import re
    counter = iter(range(1000))

    def shift(m):
        number = m.group(1) if m.group(1) else str(next(counter))
        return "{" + str(int(number) + offset) + (m.group(2) or "") + "}"
    return re.sub(r"(?<!\{)\{(\d*)([!:][^{}]*)?\}(?!\})", shift, message)


def _scan_impl(xp, *args, body, n_carry, n_x, length, reverse):
    carry = list(args[:n_carry])
    xs = args[n_carry:n_carry + n_x]
    consts = args[n_carry + n_x:]
    y_avals = body.out_avals[n_carry:]
    ys = [[None] * length for _ in y_avals]
    for i in (range(length - 1, -1, -1) if reverse else range(length)):
        out = body(*carry, *[x[i] for x in xs], *consts)
        carry = list(out[:n_carry])
        for k, y in enumerate(out[n_carry:]):
            ys[k][i] = y
    stacked = [xp.stack([xp.asarray(v, dtype=a.dtype) for v in col]) if length else
               xp.zeros((0,) + a.shape, a.dtype) for col, a in zip(ys, y_avals)]
    return tuple(carry) + tuple(stacked)


def _scan_shape(*avals, body, n_carry, n_x, length, reverse):
    outs = body.out_avals
    return [strong(a) for a in avals[:n_carry]] + \
        [Aval((length,) + a.shape, a.dtype) for a in outs[n_carry:]]


def _scan_vjp(gs, *ins, out, body, n_carry, n_x, length, reverse):
    avals = body.in_avals
    carry_avals, x_avals = avals[:n_carry], avals[n_carry:n_carry + n_x]
    const_avals = avals[n_carry + n_x:]
    init, xs, consts = ins[:n_carry], ins[n_carry:n_carry + n_x], ins[n_carry + n_x:]
    n_y = len(body.out_avals) - n_carry

    # 1. re-run the loop keeping the carry *entering* each step, after every primal
    # output, so that a program needing the primal loop too runs this one loop only
    # (simplify merges the two)
    def keep_carries(*a):
        return list(eval_graph(body.graph, list(a))) + list(a[:n_carry])
    collect = Closed(close(keep_carries, avals).graph, extends=body)
    carries = bind_all(scan, list(init) + list(xs) + list(consts), body=collect, n_carry=n_carry,
                       n_x=n_x, length=length, reverse=reverse)[n_carry + n_y:]
    # 2. scan backwards: carry = (d carry, accumulated d consts), xs = (carry_i, x_i, d y_i)
    float_carry = _float_positions(carry_avals)
    float_xs = _float_positions(x_avals)
    float_consts = _float_positions(const_avals)
    wrt = float_carry + [n_carry + i for i in float_xs] + [n_carry + n_x + i for i in float_consts]
    body_vjp = vjp_graph(body.graph, wrt, seed="input")
    out_avals = [strong(a) for a in body.out_avals]

    def backward_step(*a):
        pos = 0
        g_carry = list(a[pos:pos + len(float_carry)]); pos += len(float_carry)
        g_acc = list(a[pos:pos + len(float_consts)]); pos += len(float_consts)
        carry = list(a[pos:pos + n_carry]); pos += n_carry
        x = list(a[pos:pos + n_x]); pos += n_x
        g_y = list(a[pos:pos + n_y]); pos += n_y
        kc = list(a[pos:])
        cts = [_zeros(out_avals[i]) for i in range(n_carry)] + g_y
        for j, i in enumerate(float_carry):
            cts[i] = g_carry[j]
        grads = eval_graph(body_vjp, carry + x + kc + cts)[len(out_avals):]
        n_fc, n_fx = len(float_carry), len(float_xs)
        gc, gx, gk = grads[:n_fc], grads[n_fc:n_fc + n_fx], grads[n_fc + n_fx:]
        return list(gc) + [acc + g for acc, g in zip(g_acc, gk)] + list(gx)

    backward = close(backward_step, [carry_avals[i] for i in float_carry]
                     + [const_avals[i] for i in float_consts] + carry_avals + x_avals
                     + out_avals[n_carry:] + const_avals)
    g_final = [_or_zeros(gs[i], carry_avals[i]) for i in float_carry]
    g_ys = [_or_zeros(g, Aval((length,) + a.shape, a.dtype)) for g, a in
            zip(gs[n_carry:], out_avals[n_carry:])]
    res = bind_all(scan, g_final + [_zeros(const_avals[i]) for i in float_consts] + carries
                   + list(xs) + g_ys + list(consts), body=backward,
                   n_carry=len(float_carry) + len(float_consts), n_x=n_carry + n_x + n_y,
                   length=length, reverse=not reverse)
    n_fc, n_fk = len(float_carry), len(float_consts)
    g_init, g_consts, g_xs = res[:n_fc], res[n_fc:n_fc + n_fk], res[n_fc + n_fk:]
    cts = [None] * len(ins)
    for j, i in enumerate(float_carry):
        cts[i] = g_init[j]
    for j, i in enumerate(float_xs):
        cts[n_carry + i] = g_xs[j]
    for j, i in enumerate(float_consts):
        cts[n_carry + n_x + i] = g_consts[j]
    return cts


def _scan_jvp(ts, *ins, out, body, n_carry, n_x, length, reverse):
    avals = body.in_avals
    wrt = _float_positions(avals)
    body_jvp = jvp_graph(body.graph, wrt)
    n_out = len(body.out_avals)
    float_outs = _float_positions(body.out_avals)
    groups = [range(0, n_carry), range(n_carry, n_carry + n_x), range(n_carry + n_x, len(avals))]
    # new layout per group: primals of the group, then tangents of its float members
    layout = [list(g) + [("t", i) for i in g if i in wrt] for g in groups]
    t_carry_out = [k for k in float_outs if k < n_carry]
    t_y_out = [k for k in float_outs if k >= n_carry]

    def step(*a):
        named = dict(zip([k for grp in layout for k in grp], a))
        res = eval_graph(body_jvp, [named[i] for i in range(len(avals))]
                         + [named[("t", i)] for i in wrt])
        outs, touts = res[:n_out], res[n_out:]
        return (outs[:n_carry] + [touts[k] for k in t_carry_out] + outs[n_carry:]
                + [touts[k] for k in t_y_out])

    def aval_of_key(k):
        return avals[k] if not isinstance(k, tuple) else avals[k[1]]
    new_body = close(step, [aval_of_key(k) for grp in layout for k in grp])
    stacked = [lambda a: a, lambda a: Aval((length,) + a.shape, a.dtype), lambda a: a]
    new_ins = []
    for gi, grp in enumerate(layout):
        for k in grp:
            if isinstance(k, tuple):
                new_ins.append(_or_zeros(ts[k[1]], stacked[gi](avals[k[1]])))
            else:
                new_ins.append(ins[k])
    res = bind_all(scan, new_ins, body=new_body, n_carry=len(layout[0]), n_x=len(layout[1]),
                   length=length, reverse=reverse)
    n_new_carry = n_carry + len(t_carry_out)
    tangents = [None] * len(out)
    for j, k in enumerate(t_carry_out):
        tangents[k] = res[n_carry + j]
    for j, k in enumerate(t_y_out):
        tangents[k] = res[n_new_carry + (n_out - n_carry) + j]
    return tangents


def _example_scan_body():
    f64 = Aval((3,), np.dtype(float))

    def step(c, x, k):  # carry (3,), x (3,), const (3,): a smooth nonlinear recurrence
        new = np.tanh(c * k) + x * c
        return [new, np.sum(new * x)]
    return close(step, [f64, f64, f64])


scan = Primitive(
    "scan", _scan_impl, _scan_shape, vjp=_scan_vjp, jvp=_scan_jvp,
    julia=_scan_julia, multiple_results=True,
    cases=[Case(lambda rng: [rng.standard_normal(3) * 0.5, rng.standard_normal((4, 3)) * 0.5,
                             rng.standard_normal(3)],
                {"body": _example_scan_body(), "n_carry": 1, "n_x": 1, "length": 4,
                 "reverse": False}, complex=False)], batch=by(_scan, lambda: scan), complex=True)


# ================================================================================ cond
# inputs: (pred, *operands); both bodies take the operands

def _cond_impl(xp, pred, *args, true_body, false_body):
    return tuple((true_body if bool(pred) else false_body)(*args))


def _cond_shape(pred, *avals, true_body, false_body):
    if pred.shape != ():
        raise ShapeError(f"dp.cond: the predicate must be a scalar, got shape {pred.shape}")
    return [strong(a) for a in true_body.out_avals]


def _cond_vjp(gs, pred, *ins, out, true_body, false_body):
    avals = true_body.in_avals
    wrt = _float_positions(avals)
    out_avals = [strong(a) for a in true_body.out_avals]
    gs = [_or_zeros(g, a) for g, a in zip(gs, out_avals)]
    n_out = len(out_avals)

    def gradients_of(branch):
        branch_vjp = vjp_graph(branch.graph, wrt, seed="input")
        return close(lambda *a: eval_graph(branch_vjp, list(a))[n_out:], avals + out_avals)
    res = bind_all(_cond_for(pred), [pred] + list(ins) + gs, true_body=gradients_of(true_body),
                   false_body=gradients_of(false_body))
    cts = [None] * (1 + len(ins))
    for j, i in enumerate(wrt):
        cts[1 + i] = res[j]
    return cts


def _cond_jvp(ts, pred, *ins, out, true_body, false_body):
    avals = true_body.in_avals
    wrt = _float_positions(avals)
    n_out = len(true_body.out_avals)

    def tangents_of(branch):
        branch_jvp = jvp_graph(branch.graph, wrt)
        return close(lambda *a: eval_graph(branch_jvp, list(a))[n_out:],
                     avals + [avals[i] for i in wrt])
    tangents = [_or_zeros(ts[1 + i], avals[i]) for i in wrt]
    res = bind_all(_cond_for(pred), [pred] + list(ins) + tangents,
                   true_body=tangents_of(true_body), false_body=tangents_of(false_body))
    return [r if _is_float(a) else None for r, a in zip(res, true_body.out_avals)]


def _example_branches():
    f64 = Aval((3,), np.dtype(float))
    return {"true_body": close(lambda x, y: [np.sin(x) * y], [f64, f64]),
            "false_body": close(lambda x, y: [x ** 3 - y], [f64, f64])}


_BRANCHES = _example_branches()
cond = Primitive(
    "cond", _cond_impl, _cond_shape, vjp=_cond_vjp, jvp=_cond_jvp,
    julia=_cond_julia, multiple_results=True,
    cases=[Case(lambda rng: [np.array(True), rng.standard_normal(3), rng.standard_normal(3)],
                _BRANCHES, complex=False),
           Case(lambda rng: [np.array(False), rng.standard_normal(3), rng.standard_normal(3)],
                _BRANCHES, complex=False)], batch=by(_cond, lambda: cond), complex=True)



def _cond_for(pred):
    """The entry whose derivative rules bind again: cond for a scalar predicate, select_cond
    for a batch of them (so derivatives select per example too)."""
    return cond if np.ndim(pred) == 0 else select_cond


def _select_impl(xp, mask, *args, true_body, false_body):
    """Both branches for every example (axis 0), each example keeping its own branch's."""
    taken, other = true_body(*args), false_body(*args)
    return tuple(xp.where(xp.reshape(mask, mask.shape + (1,) * (xp.ndim(t) - 1)), t, f)
                 for t, f in zip(taken, other))


def _select_shape(mask, *avals, true_body, false_body):
    if mask.ndim != 1:
        raise ShapeError(f"select_cond: the predicates must be one per example (1-d), got "
                         f"shape {mask.shape}")
    return [strong(a) for a in true_body.out_avals]


def _example_selected_branches():
    rows = Aval((3, 2), np.dtype(float))
    return {"true_body": close(lambda x, y: [np.sqrt(np.abs(x)) * y], [rows, rows]),
            "false_body": close(lambda x, y: [x ** 3 - y], [rows, rows])}


#: cond of a batch (dp.vmap with a batched predicate): both branches run on every example
#: and each example keeps its own branch's outputs. Its derivatives are select_conds of the
#: branches' derivatives, so an example's cotangent comes from its own branch only (a
#: where on the outputs would send the other branch a zero cotangent, and 0 * inf = NaN
#: where that branch is singular: sqrt at a negative number, say).
select_cond = Primitive(
    "select_cond", _select_impl, _select_shape, vjp=_cond_vjp, jvp=_cond_jvp,
    julia=Unsupported("select_cond (dp.vmap of a dp.cond or dp.while_loop with a batched "
                      "predicate) runs on the Python engines"),
    multiple_results=True,
    cases=[Case(lambda rng: [np.array([True, False, True]), rng.standard_normal((3, 2)),
                             rng.standard_normal((3, 2))], _example_selected_branches(), complex=False)], complex=True)


# =============================================================================== error_if

def error_if_impl(xp, x, pred, *info, message):
    if bool(pred):
        raise SolverError(message.format(*[float(v) for v in info]))
    return x


# x, unchanged, after a run-time check (an identity for derivatives): diffprog's solvers
# raise SolverError from deep inside a compiled loop instead of returning a wrong value
error_if = Primitive(
    "error_if", error_if_impl, lambda x, pred, *info, message: strong(x),
    vjp=lambda g, x, pred, *info, out, message: [g] + [None] * (1 + len(info)),
    jvp=lambda ts, x, pred, *info, out, message: ts[0],
    julia=Unsupported("error_if raises a Python exception (diffprog.errors.SolverError) from "
                      "inside a running program; only the Python engines can"),
    cases=[Case(lambda rng: [rng.standard_normal(3), np.array(False), np.array(0.5)],
                {"message": "solver failed at t={0}"}, complex=False)], batch=by(_error_if, lambda: error_if), complex=True)


# =============================================================================== remat
# dp.checkpoint: the body's intermediates are recomputed in the backward pass

def _remat_vjp(gs, *ins, out, body):
    avals = body.in_avals
    wrt = _float_positions(avals)
    out_avals = [strong(a) for a in body.out_avals]
    body_vjp = vjp_graph(body.graph, wrt, seed="input")
    n_out = len(out_avals)
    backward = close(lambda *a: eval_graph(body_vjp, list(a))[n_out:], avals + out_avals)
    res = bind_all(remat, list(ins) + [_or_zeros(g, a) for g, a in zip(gs, out_avals)],
                   body=backward)
    cts = [None] * len(ins)
    for j, i in enumerate(wrt):
        cts[i] = res[j]
    return cts


def _remat_jvp(ts, *ins, out, body):
    avals = body.in_avals
    wrt = _float_positions(avals)
    body_jvp = jvp_graph(body.graph, wrt)
    n_out = len(body.out_avals)
    forward = close(lambda *a: eval_graph(body_jvp, list(a))[n_out:], avals + [avals[i] for i in wrt])
    res = bind_all(remat, list(ins) + [_or_zeros(ts[i], avals[i]) for i in wrt], body=forward)
    return [r if _is_float(a) else None for r, a in zip(res, body.out_avals)]


def _remat_batch(prim):
    """A checkpointed block of a batch is one block whose body is batched."""
    def rule(values, dims, size, *, body):
        flags = [d is not NOT_BATCHED for d in dims]
        out_b = reaches(body.graph, flags)
        ins = [moved(v, d) if d is not NOT_BATCHED else v for v, d in zip(values, dims)]
        in_avals = [batched_aval(a, f, size) for a, f in zip(body.in_avals, flags)]
        in_dims = [0 if f else NOT_BATCHED for f in flags]
        new_body = close(batched_body(body.graph, in_dims, out_b, size), in_avals)
        outs = bind(prim, *ins, body=new_body)
        return outs, [0 if b else NOT_BATCHED for b in out_b]
    return rule


remat = Primitive(
    "remat", lambda xp, *args, body: tuple(body(*args)),
    lambda *avals, body: [strong(a) for a in body.out_avals],
    vjp=_remat_vjp, jvp=_remat_jvp, julia=_remat_julia, multiple_results=True,
    batch=by(_remat_batch, lambda: remat),
    cases=[Case(lambda rng: [rng.standard_normal(3), rng.standard_normal(3)],
                {"body": close(lambda x, y: [np.sin(x * y), np.exp(x) * y],
                               [Aval((3,), np.dtype(float))] * 2)}, complex=False)], complex=True)


# =============================================================================== while
# inputs: (*carry, *cond consts, *body consts); cond_body takes (*carry, *cond consts),
# body takes (*carry, *body consts) and returns the new carry

def run_while(carry, cond_consts, body_consts, cond_body, body, kept=None) -> list:
    """The loop; ``kept`` (a list) receives the carry entering each step."""
    while bool(cond_body(*carry, *cond_consts)[0]):
        if kept is not None:
            kept.append(carry)
        carry = list(body(*carry, *body_consts))
    return carry


def _while_impl(xp, *args, cond_body, body, n_carry, n_cond_consts):
    start = n_carry + n_cond_consts  # of the body consts
    return tuple(run_while(list(args[:n_carry]), args[n_carry:start], args[start:], cond_body, body))


def _while_shape(*avals, cond_body, body, n_carry, n_cond_consts):
    return [strong(a) for a in avals[:n_carry]]


def _while_jvp(ts, *ins, out, cond_body, body, n_carry, n_cond_consts):
    avals = body.in_avals  # (*carry, *body consts)
    n_body_consts = len(avals) - n_carry
    float_carry = _float_positions(avals, 0, n_carry)
    float_consts = _float_positions(avals, n_carry)
    body_jvp = jvp_graph(body.graph, float_carry + float_consts)
    n_fc = len(float_carry)

    # new carry: (*carry, *carry tangents); new consts: cond consts, body consts, their tangents
    def new_cond(*a):
        return eval_graph(cond_body.graph, list(a[:n_carry])
                          + list(a[n_carry + n_fc:n_carry + n_fc + n_cond_consts]))

    def new_body(*a):
        carry, t_carry = list(a[:n_carry]), list(a[n_carry:n_carry + n_fc])
        consts = list(a[n_carry + n_fc:n_carry + n_fc + n_body_consts])
        t_consts = list(a[n_carry + n_fc + n_body_consts:])
        res = eval_graph(body_jvp, carry + consts + t_carry + t_consts)
        return res[:n_carry] + [res[n_carry + i] for i in float_carry]
    carry_avals = avals[:n_carry] + [avals[i] for i in float_carry]
    cond_closed = close(new_cond, carry_avals + cond_body.in_avals[n_carry:])
    body_closed = close(new_body, carry_avals + avals[n_carry:] + [avals[i] for i in float_consts])
    carry = list(ins[:n_carry]) + [_or_zeros(ts[i], avals[i]) for i in float_carry]
    cond_consts = list(ins[n_carry:n_carry + n_cond_consts])
    body_consts = list(ins[n_carry + n_cond_consts:])
    t_consts = [_or_zeros(ts[n_cond_consts + i], avals[i]) for i in float_consts]
    res = bind_all(while_loop, carry + cond_consts + body_consts + t_consts,
                   cond_body=cond_closed, body=body_closed, n_carry=len(carry),
                   n_cond_consts=n_cond_consts)
    tangents = [None] * n_carry
    for j, i in enumerate(float_carry):
        tangents[i] = res[n_carry + j]
    return tangents


def _while_vjp(gs, *ins, out, cond_body, body, n_carry, n_cond_consts):
    avals = body.in_avals
    float_carry = _float_positions(avals, 0, n_carry)
    float_consts = _float_positions(avals, n_carry)
    body_vjp = vjp_graph(body.graph, float_carry + float_consts, seed="input")

    def backward_step(*a):  # (*carry, *body consts, *d new carry (float)) -> (d carry, d consts)
        carry, consts = list(a[:n_carry]), list(a[n_carry:len(avals)])
        g = list(a[len(avals):])
        cts = [_zeros(strong(av)) for av in avals[:n_carry]]
        for j, i in enumerate(float_carry):
            cts[i] = g[j]
        return eval_graph(body_vjp, carry + consts + cts)[n_carry:]
    backward = close(backward_step, avals + [avals[i] for i in float_carry])
    g_final = [_or_zeros(gs[i], avals[i]) for i in float_carry]
    res = bind_all(while_loop_grad, list(ins) + g_final, cond_body=cond_body, body=body,
                   backward=backward, n_carry=n_carry, n_cond_consts=n_cond_consts)
    cts = [None] * len(ins)
    for j, i in enumerate(float_carry):
        cts[i] = res[j]
    for j, i in enumerate(float_consts):
        cts[n_cond_consts + i] = res[len(float_carry) + j]
    return cts


def _example_while():
    f64, scalar = Aval((2,), np.dtype(float)), Aval((), np.dtype(float))
    return {"cond_body": close(lambda x, lim: [np.sum(x) < lim], [f64, scalar]),
            "body": close(lambda x, k: [x * k + 0.1], [f64, scalar]), "n_carry": 1,
            "n_cond_consts": 1}


def _example_while_inputs(rng):
    return [np.array([0.6, 0.7]), np.array(5.0), np.array(1.5)]


_WHILE = _example_while()
while_loop = Primitive(
    "while_loop", _while_impl, _while_shape, vjp=_while_vjp, jvp=_while_jvp,
    julia=_while_julia, multiple_results=True,
    cases=[Case(_example_while_inputs, _WHILE, order=1, complex=False)], batch=by(_while, lambda: while_loop), complex=True)


def _while_grad_impl(xp, *args, cond_body, body, backward, n_carry, n_cond_consts):
    """Run the loop forward keeping every carry (the trip count is known only now), then
    run the body's derivative backwards over them."""
    n_body_consts = len(body.in_avals) - n_carry
    start = n_carry + n_cond_consts
    carry = list(args[:n_carry])
    cond_consts = args[n_carry:start]
    body_consts = args[start:start + n_body_consts]
    g = list(args[start + n_body_consts:])
    kept: list = []
    run_while(carry, cond_consts, body_consts, cond_body, body, kept)
    n_g = len(g)
    g_consts = None
    for c in reversed(kept):
        res = backward(*c, *body_consts, *g)
        g = list(res[:n_g])
        g_consts = list(res[n_g:]) if g_consts is None else [a + b for a, b in zip(g_consts, res[n_g:])]
    if g_consts is None:
        g_consts = [xp.zeros(a.shape, a.dtype) for a in backward.out_avals[n_g:]]
    return tuple(g) + tuple(g_consts)


def _no_second_order(*args, **kwargs):
    raise NotDifferentiableError(
        "reverse-mode derivatives of dp.while_loop are first order only (the trip count is "
        "known only at run time). Fix: pass max_steps=... to dp.while_loop, which makes it a "
        "bounded, masked loop differentiable to any order, or use forward mode (dp.jvp).")


def _example_while_grad():
    f64, scalar = Aval((2,), np.dtype(float)), Aval((), np.dtype(float))
    backward = close(lambda x, k, g: [g * k, np.sum(g * x)], [f64, scalar, f64])
    return dict(_WHILE, backward=backward)


# The reverse-mode program of while_loop: its own derivatives are refused (order=0).
while_loop_grad = Primitive(
    "while_loop_grad", _while_grad_impl,
    lambda *avals, cond_body, body, backward, n_carry, n_cond_consts:
    [strong(a) for a in backward.out_avals],
    vjp=_no_second_order, jvp=_no_second_order,
    julia=Unsupported(_PYTHON_ONLY.format("the reverse-mode while_loop_grad")),
    multiple_results=True,
    cases=[Case(lambda rng: _example_while_inputs(rng) + [rng.standard_normal(2)],
                _example_while_grad(), order=0, complex=False)], complex=True)


# =============================================================================== guard

class GuardFailed(Exception):
    """Raised by a compiled program whose guard no longer holds (private: the API
    catches it and retraces). ``line`` is the user source line of the guard."""

    def __init__(self, line: str, kind: str, expected, found):
        super().__init__(f"guard at {line}: {kind}() was {expected!r}, now {found!r}")
        self.line = line
        self.kind = kind


GUARDED_KINDS = {"bool": bool, "int": int, "index": int, "float": float}


def _same(kind, expected, found) -> bool:
    if kind == "float" and expected != expected:  # NaN guards on NaN
        return found != found
    return type(found) is type(expected) and found == expected


def _guard_impl(xp, x, *, kind, expected, line):
    found = GUARDED_KINDS[kind](x.item() if hasattr(x, "item") else x)
    if not _same(kind, expected, found):
        raise GuardFailed(line, kind, expected, found)
    return ()


# "kind(x) is still expected": Python control flow on a traced value took a path that the
# program was traced for (diffprog.guards); no outputs, kept by dead-code elimination
guard = Primitive(
    "guard", _guard_impl, lambda x, **params: [], vjp=None, jvp=None,
    julia=Unsupported("guards (Python control flow on traced values) are checked by the "
                      "Python engines; use dp.cond / dp.scan / dp.while_loop for Julia"),
    differentiable=False, multiple_results=True, effectful=True,
    cases=[Case(lambda rng: [np.array(1.5)], {"kind": "bool", "expected": True,
                                              "line": "example.py:1: if x:"}, complex=False)], complex=True)
