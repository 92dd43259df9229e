"""Simplification passes: CSE and DCE keep programs small without changing results."""
from __future__ import annotations

import numpy as np

import diffprog as dp
from diffprog.transforms import simplify, vjp_graph


def test_cse_merges_repeated_subexpressions():
    graph = dp.differentiable(lambda x: np.sin(x) * np.sin(x)).ir(np.ones(3))
    assert [e.prim.name for e in graph.eqns].count("sin") == 1


def test_dce_drops_unused_work():
    def f(x):
        np.exp(x)  # result unused
        return np.sum(x)
    graph = dp.differentiable(f).ir(np.ones(3))
    assert [e.prim.name for e in graph.eqns] == ["reduce_sum"]


def test_gradient_graph_shares_forward_values():
    graph = dp.differentiable(lambda x: np.sum(np.exp(x))).ir(np.ones(3))
    g = vjp_graph(graph, [0], seed="ones")
    assert [e.prim.name for e in g.eqns].count("exp") == 1
    assert len(simplify(g).eqns) == len(g.eqns)


def test_cse_treats_commutative_operands_in_either_order():
    f = dp.differentiable(lambda x, y: np.sum(x * y + y * x) + np.sum((x + 2.0) * (2.0 + x)))
    graph = f.ir(np.ones(3), np.ones(3))
    names = [e.prim.name for e in graph.eqns]
    assert names.count("mul") == 2 and names.count("add") == 3
    # order still matters where it should
    g = dp.differentiable(lambda x, y: np.sum(x - y) + np.sum(y - x)).ir(np.ones(3), np.ones(3))
    assert [e.prim.name for e in g.eqns].count("sub") == 2


def test_value_and_grad_of_a_scan_runs_the_forward_loop_once():
    def f(x):
        final, ys = dp.scan(lambda c, xi: (c * np.sin(xi) + xi, c * c), 0.5, x)
        return final + np.sum(ys)
    x = np.linspace(0.1, 1.0, 7)
    graph = dp.differentiable(f).ir(x)
    grad_graph = simplify(vjp_graph(graph, [0], seed="ones"))
    loops = [e for e in grad_graph.eqns if e.prim.name == "scan"]
    assert [e.params["reverse"] for e in loops] == [False, True]  # one forward, one backward
    value, grad = dp.value_and_grad(f)(x)
    assert np.isclose(value, _unrolled(x))
    eps = 1e-6
    fd = np.array([(_unrolled(x + eps * e) - _unrolled(x - eps * e)) / (2 * eps)
                   for e in np.eye(len(x))])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def _unrolled(x):
    c, total = 0.5, 0.0
    for xi in x:
        total += c * c
        c = c * np.sin(xi) + xi
    return c + total


def test_cse_keeps_constants_of_different_dtype_or_sign_apart():
    n = np.array([100, 100], np.int8)
    f = lambda w, n: (np.sum(w * (n + np.array(100, np.int8))) * 0
                      + np.sum(w * (n + np.array(100, np.int64))))
    np.testing.assert_array_equal(dp.grad(f)(np.ones(2), n), [200.0, 200.0])
    x = np.array([1.0, 2.0])
    g = dp.differentiable(lambda x: np.arctan2(x * 0.0, -1) - np.arctan2(x * -0.0, -1))
    np.testing.assert_allclose(g(x), 2 * np.pi)
    x32 = np.ones(2, np.float32)
    a, b = dp.differentiable(lambda x: (x * np.array(1.5, np.float32), x * np.array(1.5)))(x32)
    assert (a.dtype, b.dtype) == (np.float32, np.float64)


# ---------------------------------------------------------------- sign folding

def _names(graph):
    return [e.prim.name for e in graph.eqns]


def _assert_bit_identical(got, expected):
    """Same bits, signed zeros included; NaN only needs to be NaN (its sign is not
    specified by IEEE arithmetic, and ``-(x*0)`` flips it)."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        g, e = np.asarray(g), np.asarray(e)
        nan = np.isnan(e)
        np.testing.assert_array_equal(np.isnan(g), nan)
        assert g[~nan].tobytes() == e[~nan].tobytes()


def _special(rng, n=64):
    x = rng.standard_normal(n)
    x[:6] = [0.0, -0.0, np.inf, -np.inf, 1e-310, -3.0]
    return x


def test_fold_negations_removes_the_negations_of_a_cos_gradient():
    graph = dp.differentiable(lambda x: np.sum(np.exp(-x ** 2) * np.cos(3.0 * x))).ir(np.ones(4))
    g = vjp_graph(graph, [0], seed="ones")
    # d cos = -sin; the chain rule through 3x and -x**2 multiplies by constants: every
    # negation of the gradient part folds into a constant or a subtraction
    assert _names(g).count("neg") == 1  # the forward -x**2 only
    assert "sub" in _names(g)


def _unsimplified(build, *avals):
    """A graph written by hand (tracing would already have folded it)."""
    from diffprog.ir import Eqn, Graph, Var
    invars = [Var(a) for a in avals]
    eqns = []

    def op(prim, *inputs):
        out = Var(inputs[0].aval if isinstance(inputs[0], Var) else inputs[1].aval)
        eqns.append(Eqn(prim, list(inputs), [out]))
        return out
    outs = build(op, *invars)
    return Graph(invars, eqns, list(outs))


def test_fold_negations_is_bit_exact_and_never_adds_equations(rng):
    from diffprog import primitives as P
    from diffprog.ir import Lit, aval_of
    from diffprog.tracing import eval_graph
    from diffprog.transforms.simplify import dead_code_elimination, fold_negations

    def build(op, x, y):
        neg, mul, add, sub = (lambda a: op(P.neg, a)), (lambda a, b: op(P.mul, a, b)), \
            (lambda a, b: op(P.add, a, b)), (lambda a, b: op(P.sub, a, b))
        a = mul(neg(x), y)              # (-x)*y -> -(x*y) ...
        b = mul(neg(a), Lit(2.5))       # ... whose negation folds into -2.5
        c = add(x, neg(y))              # -> x - y
        d = add(neg(x), y)              # -> y - x
        e = sub(x, neg(y))              # -> x + y
        h = neg(neg(sub(y, x)))         # -> y - x (of an argument, --y stays: a copy)
        k = mul(y, Lit(-1))             # -> -y
        m = neg(x)                      # used twice: stays
        z = mul(neg(x), Lit(0))         # int 0: -x*0 keeps its signed zero, not folded
        total = add(add(add(b, mul(c, d)), add(mul(e, h), k)), add(mul(m, m), m))
        return total, z, a
    x, y = _special(rng), _special(rng)[::-1].copy()
    graph = _unsimplified(build, aval_of(x), aval_of(y))
    folded = dead_code_elimination(fold_negations(graph))
    assert len(folded.eqns) <= len(graph.eqns) - 5
    assert _names(folded).count("neg") == 3  # m, z's, a's (an output); k = -y became a sub
    # --y of an argument is NumPy's contiguous copy of it (it may be strided): kept
    kept = _unsimplified(lambda op, x, y: (op(P.neg, op(P.neg, y)),), aval_of(x), aval_of(y))
    assert _names(fold_negations(kept)).count("neg") == 2
    with np.errstate(all="ignore"):
        _assert_bit_identical(eval_graph(folded, [x, y]), eval_graph(graph, [x, y]))


def test_fold_negations_leaves_integers_and_mixed_dtypes_alone():
    from diffprog.transforms.simplify import fold_negations
    n = np.array([1, 2, 3], np.uint8)
    graph = dp.differentiable(lambda n: (-n) * 3).ir(n)
    assert _names(fold_negations(graph)) == _names(graph)
    x32 = np.ones(3, np.float32)
    mixed = dp.differentiable(lambda x, y: (-x) * y).ir(x32, np.ones(3))  # float32 * float64
    assert _names(fold_negations(mixed)) == _names(mixed)


def test_simplify_leaves_its_input_graph_and_equations_alone():
    """Graph -> Graph: an equation whose inputs are renamed (by CSE, sign folding) is a new
    equation; the input graph may be shared (a loop body, a cached trace)."""
    from diffprog.ir import Aval, Eqn, Graph, Var
    from diffprog.primitives.elementwise import add, mul, neg, sin
    aval = Aval((3,), np.dtype(np.float64))
    x, y = Var(aval), Var(aval)
    a, b, n, c, d = (Var(aval) for _ in range(5))
    eqns = [Eqn(sin, [x], [a]), Eqn(sin, [x], [b]),        # b repeats a: renamed to a
            Eqn(neg, [b], [n]), Eqn(mul, [n, y], [c]),      # (-b) * y -> -(a * y)
            Eqn(add, [c, b], [d])]
    graph = Graph([x, y], eqns, [d])
    before = [(e, list(e.inputs), list(e.outputs)) for e in graph.eqns]
    out = simplify(graph)
    assert len(out.eqns) < len(graph.eqns)
    assert [(e, list(e.inputs), list(e.outputs)) for e in graph.eqns] == before
    assert graph.outvars == [d]
    args = [np.array([0.1, 0.2, 0.3]), np.array([1.0, -2.0, 3.0])]
    from diffprog.tracing import eval_graph
    np.testing.assert_array_equal(eval_graph(out, args)[0], eval_graph(graph, args)[0])
