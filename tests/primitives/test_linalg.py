"""Tests generated from the linalg entries (diffprog/primitives/linalg.py: matmul, einsum,
solve, inv, det, slogdet, cholesky, eigh, eigvalsh, eig, eigvals, svd, pinv, qr), with
their complex variants (every linalg entry has complex rules)."""
from diffprog.primitives import linalg as FAMILY  # noqa: F401 (read by conftest.py)

from .generated import *  # noqa: F401,F403 (the generated tests)


def test_every_linalg_entry_has_complex_rules():
    """NumPy defines every one of them on complex matrices; a new entry needs complex
    rules (and its generated complex variants) or a reason here."""
    from .generated import family_entries
    assert [p.name for p in family_entries(FAMILY) if not p.complex] == []
