"""Batching (dp.vmap), tests generated from the primitive table: for every primitive and
example case, vmap over a stack of examples equals stacking the per-example results, with
every input batched and with only the first one batched; first derivatives through vmap
equal the per-example derivatives."""
from __future__ import annotations

import numpy as np
import pytest

import diffprog as dp
from diffprog.primitives import PRIMITIVES

from ..helpers import assert_close

CASES = [pytest.param(prim, i, id=f"{name}-{i}")
         for name, prim in sorted(PRIMITIVES.items()) for i in range(len(prim.cases))]
MEMBERS = 3


def _members(prim, case_index):
    case = prim.cases[case_index]
    members = [case.make(np.random.default_rng(7 + case_index + 100 * m)) for m in range(MEMBERS)]
    shapes = [[np.shape(x) for x in m] for m in members]
    if any(s != shapes[0] for s in shapes):
        pytest.skip("the case draws shapes at random")
    wrap = case.wrap or (lambda *xs: xs[0] if len(xs) == 1 else xs)

    def raw(*xs):
        wrapped = wrap(*xs)
        wrapped = wrapped if isinstance(wrapped, (tuple, list)) else (wrapped,)
        return prim.bind(*wrapped, **case.params)
    return case, members, raw


def _stack_results(results, multiple):
    if multiple:
        return [np.stack([np.asarray(r[k]) for r in results]) for k in range(len(results[0]))]
    return np.stack([np.asarray(r) for r in results])


def _compare(got, expected, multiple, rtol):
    if multiple:
        for g, e in zip(got, expected):
            assert_close(g, e, rtol=rtol, atol=rtol)
    else:
        assert_close(got, expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("prim,case_index", CASES)
def test_vmap_equals_stacking_examples(prim, case_index):
    case, members, raw = _members(prim, case_index)
    stacked = [np.stack([m[i] for m in members]) for i in range(len(members[0]))]
    expected = _stack_results([raw(*m) for m in members], prim.multiple_results)
    got = dp.vmap(raw)(*stacked)
    _compare(got, expected, prim.multiple_results, max(case.rtol, 1e-9))


@pytest.mark.parametrize("prim,case_index", CASES)
def test_vmap_with_shared_inputs_equals_stacking(prim, case_index):
    case, members, raw = _members(prim, case_index)
    n = len(members[0])
    if n < 2:
        pytest.skip("one input: nothing to share")
    shared = members[0][1:]
    stacked = np.stack([m[0] for m in members])
    expected = _stack_results([raw(m[0], *shared) for m in members], prim.multiple_results)
    got = dp.vmap(raw, in_axes=(0,) + (None,) * (n - 1))(stacked, *shared)
    _compare(got, expected, prim.multiple_results, max(case.rtol, 1e-9))


@pytest.mark.parametrize("prim,case_index", CASES)
def test_gradient_through_vmap_equals_per_example_gradients(prim, case_index):
    case, members, raw = _members(prim, case_index)
    float_pos = tuple(i for i, x in enumerate(members[0])
                      if np.issubdtype(np.asarray(x).dtype, np.floating))
    if not float_pos or not prim.differentiable or case.order < 1:
        pytest.skip("nothing to differentiate (or its derivatives are refused: order=0)")
    weights = [np.random.default_rng(99 + k).standard_normal(np.shape(o))
               for k, o in enumerate(raw(*members[0]) if prim.multiple_results
                                     else [raw(*members[0])])]

    def f(*xs):
        out = raw(*xs)
        outs = out if prim.multiple_results else [out]
        return sum(np.real(np.sum(o * w)) for o, w in zip(outs, weights)
                   if np.issubdtype(o.dtype, np.inexact))

    stacked = [np.stack([m[i] for m in members]) for i in range(len(members[0]))]
    got = dp.grad(lambda *xs: np.sum(dp.vmap(f)(*xs)), argnums=float_pos)(*stacked)
    per_example = [dp.grad(f, argnums=float_pos)(*m) for m in members]
    for k in range(len(float_pos)):
        assert_close(got[k], np.stack([g[k] for g in per_example]),
                     rtol=max(case.rtol, 1e-8), atol=max(case.rtol, 1e-8))


#: entries without a batching rule of their own run once per example under dp.vmap, and why
PER_EXAMPLE = {
    "guard": "guards need concrete values; dp.vmap traces without values, so none is recorded",
    "pack_scalars": "made by the engines' lowering after all transforms, never batched",
    "refused_derivative": "stands for a derivative that raises when asked; nothing to batch",
    "select_cond": "itself the batched form of cond; a vmap of a vmap runs it per example",
    "while_loop_grad": "a derivative program of while_loop; dp.grad of dp.vmap batches first",
}


def test_every_entry_has_a_batching_rule_or_a_reason():
    missing = sorted(name for name, prim in PRIMITIVES.items()
                     if not prim.elementwise and prim.batch is None)
    assert missing == sorted(PER_EXAMPLE), (
        f"entries without a batch= rule: {missing}; give each a rule in its table entry (see "
        f"diffprog/transforms/batch.py for the rule makers) or list it here with the reason")
