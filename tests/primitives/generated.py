"""Tests generated from the primitive table: every rule of every entry.

Each family's test module (test_elementwise.py for diffprog/primitives/elementwise.py,
...) imports these tests and names its family (``FAMILY``); conftest.py parametrizes them
with that family's entries and cases. For each entry and each example case on its domain:
  * the impl agrees with the shape/dtype rule;
  * the VJP matches central finite differences (float64);
  * the JVP matches finite differences;
  * second order (reverse-over-reverse and forward-over-reverse) for cases of order 2
    (order 1: kinks and piecewise rules; order 0: derivatives refused on purpose);
  * for entries with complex rules (``Primitive.complex``), each case again with complex
    inputs (``-complex``: every floating input, ``-mixed``: the first one only, the
    others real and promoted): finite differences along the real and the imaginary
    direction of each element against JAX's convention (tests/helpers.numeric_grad);
  * it has a Julia spelling or an explicit reason it has none.
"""
from __future__ import annotations

import numpy as np
import pytest

import diffprog as dp
from diffprog.ir import aval_of
from diffprog.primitives import PRIMITIVES, Primitive, Unsupported

from ..helpers import assert_close, numeric_grad, numeric_jvp

__all__ = ["test_shape_rule_matches_impl", "test_vjp_matches_finite_differences",
           "test_jvp_matches_finite_differences", "test_second_order",
           "test_every_primitive_has_julia_spelling_or_reason", "test_every_primitive_has_cases"]


def family_entries(module) -> list:
    """The entries of the table a family module defines, by name."""
    return sorted((v for v in vars(module).values()
                   if isinstance(v, Primitive) and PRIMITIVES.get(v.name) is v),
                  key=lambda p: p.name)


def cases_of(entries, second_order=False) -> list:
    """``pytest.param(entry, case index)`` for every case (of order 2 for ``second_order``);
    the index is ``(i, "complex")`` or ``(i, "mixed")`` for the complex variants."""
    params = []
    for prim in entries:
        for i, case in enumerate(prim.cases):
            if second_order and not (prim.differentiable and case.smooth):
                continue
            params.append(pytest.param(prim, i, id=f"{prim.name}-{i}"))
            for variant in complex_variants(prim, case):
                params.append(pytest.param(prim, (i, variant), id=f"{prim.name}-{i}-{variant}"))
    return params


def complex_variants(prim, case) -> list:
    """Which complex variants a case gets: entries with complex rules, cases whose inputs
    are real floats (a case already complex is tested as it is)."""
    if not (prim.complex and case.complex):
        return []
    inputs = case.make(np.random.default_rng(0))
    kinds = [np.asarray(x).dtype.kind for x in inputs]
    if "c" in kinds or "f" not in kinds:
        return []
    return ["complex"] + (["mixed"] if kinds.count("f") > 1 else [])


def complexified(inputs, variant, rng) -> list:
    """The floating inputs moved off the real line by up to ~0.3i (every one, or only the
    first for ``"mixed"``): the domains of the cases stay clear of branch cuts."""
    out, moved = [], False
    for x in inputs:
        if np.asarray(x).dtype.kind == "f" and not (variant == "mixed" and moved):
            x = np.asarray(x) + 0.3j * rng.standard_normal(np.shape(x))
            moved = True
        out.append(x)
    return out


#: every case of every entry (the engines' tests run them too)
CASES = cases_of(sorted(PRIMITIVES.values(), key=lambda p: p.name))


def setup_case(prim, case_index):
    index, variant = case_index if isinstance(case_index, tuple) else (case_index, None)
    case = prim.cases[index]
    rng = np.random.default_rng(7 + index)
    inputs = case.make(rng)
    if variant is not None:
        inputs = complexified(inputs, variant, np.random.default_rng(13 + index))
    wrap = case.wrap or (lambda *xs: xs[0] if len(xs) == 1 else xs)

    def raw(*xs):
        wrapped = wrap(*xs)
        wrapped = wrapped if isinstance(wrapped, (tuple, list)) else (wrapped,)
        return prim.bind(*wrapped, **case.params)

    float_pos = [i for i, x in enumerate(inputs)
                 if np.issubdtype(np.asarray(x).dtype, np.inexact)]
    return case, inputs, raw, float_pos


def setup_derivative_case(prim, case_index):
    """:func:`setup_case` for a derivative test: skipped (with the reason) for cases
    without floating inputs or whose derivatives are refused on purpose."""
    case, inputs, raw, float_pos = setup_case(prim, case_index)
    if not float_pos:
        pytest.skip("no floating inputs")
    if case.order < 1:
        pytest.skip("its derivatives are refused on purpose (order=0)")
    return case, inputs, raw, float_pos


def projected(prim, raw, inputs):
    """Scalar test function: a fixed random projection of the primitive's output; the
    real part of a complex projection for complex outputs (so its gradient is the
    pullback of the complex weights, in JAX's convention)."""
    out = raw(*inputs)
    outs = out if prim.multiple_results else [out]
    rng = np.random.default_rng(99)
    weights = [rng.standard_normal(np.shape(o)) + (1j * rng.standard_normal(np.shape(o))
                                                   if np.iscomplexobj(o) else 0.0)
               for o in outs]
    pick = [i for i, o in enumerate(outs) if np.issubdtype(np.asarray(o).dtype, np.inexact)]

    def f(*xs):
        res = raw(*xs)
        res = res if prim.multiple_results else [res]
        if not res:  # an effect without outputs (a guard): nothing flows on
            return np.real(np.sum(xs[0]) * 0.0)
        if not pick:
            return np.real(np.sum(res[0] * 0.0))
        return sum(np.real(np.sum(res[i] * weights[i])) for i in pick)
    return f


def random_like(rng, x):
    """A standard-normal direction shaped like x, complex for complex x."""
    shape = np.shape(x)
    if np.iscomplexobj(x):
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return rng.standard_normal(shape)


def test_shape_rule_matches_impl(prim, case_index):
    case, inputs, raw, _ = setup_case(prim, case_index)
    wrapped = (case.wrap or (lambda *x: x))(*inputs)
    wrapped = wrapped if isinstance(wrapped, (tuple, list)) else (wrapped,)
    value = prim.evaluate(np, *wrapped, **case.params)
    avals = prim.abstract_eval(*[aval_of(x) for x in wrapped], **case.params)
    values = value if prim.multiple_results else [value]
    avals = avals if prim.multiple_results else [avals]
    for v, a in zip(values, avals):
        assert tuple(np.shape(v)) == a.shape
        assert np.result_type(v) == a.dtype


def test_vjp_matches_finite_differences(prim, case_index):
    case, inputs, raw, float_pos = setup_derivative_case(prim, case_index)
    f = projected(prim, raw, inputs)
    grads = dp.grad(f, argnums=tuple(float_pos))(*inputs)
    for k, pos in enumerate(float_pos):
        expected = numeric_grad(f, inputs, pos) if prim.differentiable else 0.0
        assert_close(grads[k], expected, rtol=case.rtol, atol=case.rtol / 10, what=f"{prim.name} d/d input {pos}")


def test_jvp_matches_finite_differences(prim, case_index):
    case, inputs, raw, float_pos = setup_derivative_case(prim, case_index)
    rng = np.random.default_rng(5)
    tangents = [random_like(rng, x) if i in float_pos else np.zeros(np.shape(x), np.asarray(x).dtype)
                for i, x in enumerate(inputs)]
    f = projected(prim, raw, inputs)
    _, t_out = dp.jvp(f, tuple(inputs), tuple(tangents))
    expected = numeric_jvp(f, inputs, [t if i in float_pos else None for i, t in enumerate(tangents)])
    if not prim.differentiable:
        expected = 0.0
    assert_close(t_out, expected, rtol=case.rtol, atol=case.rtol / 10, what=f"{prim.name} jvp")


def test_second_order(prim, case_index):
    """Cases of order 1 (kinks, piecewise rules) are first-order only."""
    case, inputs, raw, float_pos = setup_case(prim, case_index)
    f = projected(prim, raw, inputs)
    pos = float_pos[0]
    rng = np.random.default_rng(11)
    v = random_like(rng, inputs[pos])

    def directional(*xs):  # <grad f, v>: its gradient is the Hessian-vector product
        return np.real(np.sum(dp.grad(f, argnums=pos)(*xs) * v))

    hvp_rev = dp.grad(directional, argnums=pos)(*inputs)
    expected = numeric_grad(directional, inputs, pos, eps=1e-5)
    assert_close(hvp_rev, expected, rtol=1e-4, atol=1e-5, what=f"{prim.name} rev-over-rev")
    tangents = tuple(v if i == pos else np.zeros(np.shape(x), np.asarray(x).dtype)
                     for i, x in enumerate(inputs))
    _, hvp_fwd = dp.jvp(lambda *xs: dp.grad(f, argnums=pos)(*xs), tuple(inputs), tangents)
    assert_close(hvp_fwd, hvp_rev, rtol=1e-6, atol=1e-8, what=f"{prim.name} fwd-over-rev")


def test_every_primitive_has_julia_spelling_or_reason(name):
    julia = PRIMITIVES[name].julia
    assert julia is not None, f"{name} needs a julia spelling or Unsupported(reason)"
    if isinstance(julia, Unsupported):
        assert len(julia.reason) > 10


def test_every_primitive_has_cases(name):
    assert PRIMITIVES[name].cases, f"{name} has no example cases: add Case(...) to its entry"


test_second_order.second_order = True  # parametrized with cases of order 2 only
