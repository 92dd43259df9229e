"""Parametrizes the generated tests (generated.py) with the entries of the family module
each test module names in ``FAMILY``."""
from __future__ import annotations

from .generated import cases_of, family_entries


def pytest_generate_tests(metafunc):
    family = getattr(metafunc.module, "FAMILY", None)
    if family is None:
        return
    entries = family_entries(family)
    if {"prim", "case_index"} <= set(metafunc.fixturenames):
        second_order = getattr(metafunc.function, "second_order", False)
        metafunc.parametrize("prim,case_index", cases_of(entries, second_order))
    elif "name" in metafunc.fixturenames:
        metafunc.parametrize("name", [p.name for p in entries])
