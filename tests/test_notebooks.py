"""Execute every example notebook (numpy engine); each one asserts its own results."""
from __future__ import annotations

import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _build_module():
    sys.path.insert(0, str(ROOT / "notebooks"))
    try:
        import build
    finally:
        sys.path.pop(0)
    return build


def test_notebooks_are_built_from_build_py():
    build = _build_module()
    assert sorted(p.stem for p in NOTEBOOKS) == sorted(build.NOTEBOOKS)
    for path in NOTEBOOKS:
        cells = [c.source for c in nbformat.read(path, as_version=4).cells]
        assert cells == [str(c) for c in build.NOTEBOOKS[path.stem]], \
            f"{path.name} is stale: run python notebooks/build.py"


def test_build_is_deterministic_and_reproduces_the_committed_files(tmp_path):
    build = _build_module()
    first = build.build(tmp_path)
    assert all(changed for _, changed in first)
    again = build.build(tmp_path)  # a rebuild without edits rewrites nothing
    assert not any(changed for _, changed in again)
    for path, _ in first:  # byte for byte what is committed: same ids, same layout
        assert path.read_bytes() == (ROOT / "notebooks" / path.name).read_bytes(), \
            f"{path.name} differs from a fresh build: run python notebooks/build.py"


def test_cell_ids_come_from_content_and_are_unique():
    build = _build_module()
    cells = [build.Md("# title"), "x = 1", "x = 1", build.Md("x = 1")]
    ids = build.cell_ids(cells)
    assert len(set(ids)) == 4 and ids[2] == ids[1] + "-2"
    assert build.cell_ids(["y = 2"] + cells)[1:] == ids  # inserting a cell keeps the others
    nb = build.notebook(cells)
    nbformat.validate(nb)
    assert [c.id for c in nb.cells] == ids


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    # the kernel imports this checkout's diffprog and runs on the numpy engine
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("DIFFPROG_ENGINE", "numpy")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
