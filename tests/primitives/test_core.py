"""The table's ground floor (diffprog/primitives/core.py): the registry and the NumPy
bindings, and the data of an entry that engines and transforms read."""
from __future__ import annotations

import importlib
import os
import pkgutil

import numpy as np
import pytest

import diffprog.primitives
from diffprog.ir import Aval
from diffprog.primitives import NUMPY_BINDINGS, PRIMITIVES, Primitive, elementwise, linalg, reductions

from .generated import family_entries

F64 = np.dtype(np.float64)


def _families() -> dict:
    """Each module of diffprog/primitives/ that defines entries, by name."""
    modules = {info.name: importlib.import_module(f"diffprog.primitives.{info.name}")
               for info in pkgutil.iter_modules(diffprog.primitives.__path__)}
    return {name: m for name, m in modules.items() if family_entries(m)}


def test_every_entry_belongs_to_one_family_whose_generated_tests_mirror_it():
    families = _families()
    names = [p.name for family in families.values() for p in family_entries(family)]
    assert sorted(names) == sorted(PRIMITIVES)  # each once
    here = os.path.dirname(__file__)
    for name in families:
        assert os.path.exists(os.path.join(here, f"test_{name}.py")), \
            f"add tests/primitives/test_{name}.py (three lines, as test_linalg.py) so that the " \
            f"generated tests run on the entries of diffprog/primitives/{name}.py"


def test_an_entry_is_registered_once_and_a_numpy_function_bound_once():
    with pytest.raises(ValueError, match="defined twice"):
        Primitive("add", ufunc=np.add, elementwise=True)
    with pytest.raises(ValueError, match="bound to both"):
        Primitive("a_second_sine", ufunc=np.sin, elementwise=True)
    assert "a_second_sine" not in PRIMITIVES and NUMPY_BINDINGS[np.sin].prim is elementwise.sin
    run_time = Primitive("made_at_run_time", ufunc=np.sin, elementwise=True, register=False)
    assert "made_at_run_time" not in PRIMITIVES and run_time.impl == "xp.sin({0})"


def test_templates_are_spelled_from_the_ufunc_or_the_operator():
    assert elementwise.exp.impl == "xp.exp({0})"
    assert elementwise.add.impl == "{0} + {1}" and elementwise.neg.impl == "-{0}"
    assert linalg.matmul.impl == "{0} @ {1}"
    assert elementwise.add.as_ufunc({}) == (np.add, ())
    assert elementwise.integer_pow.as_ufunc({"n": 2}) == (np.square, ())
    assert elementwise.integer_pow.as_ufunc({"n": 5}) == (np.power, (5,))
    assert elementwise.where.as_ufunc({}) is None and reductions.reduce_sum.as_ufunc({}) is None


def test_python_scalars_stay_python_scalars_through_operators_only():
    weak = Aval((), F64, weak=True)
    assert elementwise.add.abstract_eval(weak, weak) == Aval((), F64, weak=True)
    assert elementwise.exp.abstract_eval(weak) == Aval((), F64)  # np.exp gives np.float64
    strong = Aval((3,), np.dtype(np.float32))
    assert elementwise.mul.abstract_eval(strong, weak) == Aval((3,), np.dtype(np.float32))
