"""Sparse benchmark (diffprog/scipy_api/sparse.py): the gradient of a loss through a
scipy.sparse matrix with 1e6 nonzeros, against the same gradient written by hand with
SciPy, in one run:

    python -m bench.sparse            # 1e6 nonzeros (a 200,000 x 200,000 CSR matrix)
    python -m bench.sparse --size tiny

loss(x) = sum((S @ x - y) ** 2) for a dense x of 8 columns; the hand-written gradient is
2 S^T (S x - y). diffprog runs dp.value_and_grad of the unchanged function (S a constant
read from the enclosing scope). Reported: best-of-N seconds for both and their ratio
(the issue asks for at most 1.2x); the values and gradients agree.
"""
from __future__ import annotations

import argparse

import numpy as np
import scipy.sparse as sp

import diffprog as dp

from .timing import best_of


def run(size: str = "full", columns: int = 8) -> dict:
    n, nnz = (200_000, 1_000_000) if size == "full" else (2_000, 10_000)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, n, nnz), rng.integers(0, n, nnz)
    S = sp.csr_matrix((rng.standard_normal(nnz), (rows, cols)), shape=(n, n))
    x, y = rng.standard_normal((n, columns)), rng.standard_normal((n, columns))

    def loss(x):
        return np.sum((S @ x - y) ** 2)

    def by_hand(x):
        r = S @ x - y
        return np.sum(r * r), 2.0 * (S.T @ r)

    step = dp.value_and_grad(loss)
    value, grad = step(x)
    want_value, want_grad = by_hand(x)
    assert np.isclose(value, want_value, rtol=1e-12)
    assert np.allclose(grad, want_grad, rtol=1e-12, atol=1e-12)
    t_dp, t_hand = best_of(step, x, repeats=7), best_of(by_hand, x, repeats=7)
    return {"nnz": S.nnz, "shape": S.shape, "columns": columns, "diffprog_s": t_dp,
            "scipy_by_hand_s": t_hand, "ratio": t_dp / t_hand}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    args = parser.parse_args(argv)
    r = run(args.size)
    print(f"sparse gradient, {r['nnz']:,} nonzeros, {r['shape'][0]:,}^2, {r['columns']} columns: "
          f"diffprog {r['diffprog_s'] * 1e3:.2f} ms, SciPy by hand {r['scipy_by_hand_s'] * 1e3:.2f} ms, "
          f"ratio {r['ratio']:.2f}x")


if __name__ == "__main__":
    main()
