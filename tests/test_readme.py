"""Every ```python block of README.md runs (see tests/markdown_blocks.py), and the first
one is a complete program: pasted alone into a fresh interpreter, it runs."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from .markdown_blocks import python_blocks, run_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPROG_ENGINE", "numpy")
    skipped = run_file(README, tmp_path)
    assert len(python_blocks(README)) - len(skipped) >= 5
    # the blocks that cannot run here say why (a GPU, Julia), and nothing else is skipped
    assert all(("GPU" in s or "Julia" in s) for s in skipped), skipped


def test_first_readme_block_is_a_complete_program(tmp_path):
    first = python_blocks(README)[0]
    assert first.skip_reason is None and "import diffprog" in first.code
    env = {**os.environ, "DIFFPROG_ENGINE": "numpy",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", first.code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "loss after 500 steps" in done.stdout


def test_markers_and_blocks_are_found(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n\n```python\na = 1\n```\n\n<!-- not-run: needs a GPU -->\n"
                  "```python\nimport cupy\n```\n\n```bash\nexit 1\n```\n\n"
                  "   ```py\n   b = a + 1\n   ```\n", encoding="utf-8")
    blocks = python_blocks(md)
    assert [(b.line, b.code, b.skip_reason) for b in blocks] == [
        (4, "a = 1\n", None), (9, "import cupy\n", "needs a GPU"), (17, "b = a + 1\n", None)]
    assert run_file(md, tmp_path) == ["x.md:9: needs a GPU"]
    md.write_text("```python\n\n\nraise ValueError('boom')\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match=r"x.md:2 failed: ValueError: boom") as e:
        run_file(md, tmp_path)
    assert e.value.__cause__.__traceback__.tb_next.tb_lineno == 4  # the line in x.md
