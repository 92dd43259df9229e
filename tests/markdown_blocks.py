"""Run the ```python blocks of a Markdown file, so documentation cannot rot.

The blocks of one file run in order in one namespace (like a notebook: a block may use
what an earlier block defined), each compiled under the file's name with its own line
numbers, so a failure points at the line in README.md or docs/*.md. A block preceded by
the marker line ``<!-- not-run: REASON -->`` is not run (it needs a GPU, Julia, ...);
the reason is required and is reported.
"""
from __future__ import annotations

import os
import pathlib
import re
from dataclasses import dataclass

import pytest

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
MARKER = re.compile(r"^\s*<!--\s*not-run:\s*(?P<reason>.*?)\s*-->\s*$")


@dataclass
class Block:
    path: pathlib.Path
    line: int  # 1-based line of the first code line
    code: str
    skip_reason: str | None


def python_blocks(path: pathlib.Path) -> list[Block]:
    """The ```python (or ```py) blocks of a Markdown file, in order."""
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], m["indent"]
        lang = (m["info"].strip().split() or [""])[0].lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if lang in ("python", "py", "python3"):
            body = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j]]
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            marker = MARKER.match(lines[k]) if k >= 0 else None
            if marker and not marker["reason"]:
                raise AssertionError(f"{path}:{k + 1}: a not-run marker needs a reason")
            blocks.append(Block(pathlib.Path(path), i + 2, "\n".join(body) + "\n",
                                marker["reason"] if marker else None))
        i = j + 1
    return blocks


def run_file(path: pathlib.Path, workdir: pathlib.Path) -> list[str]:
    """Run every block of ``path`` in order in one namespace, in ``workdir``; return the
    skip reasons of the blocks that were not run."""
    path = pathlib.Path(path).resolve()
    namespace: dict = {"__name__": "__main__"}
    skipped = []
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        for block in python_blocks(path):
            if block.skip_reason is not None:
                skipped.append(f"{path.name}:{block.line}: {block.skip_reason}")
                continue
            code = compile("\n" * (block.line - 1) + block.code, str(path), "exec")
            try:
                exec(code, namespace)
            except BaseException as e:
                if isinstance(e, (KeyboardInterrupt, pytest.skip.Exception)):
                    raise
                raise AssertionError(f"the python block at {path}:{block.line} failed: "
                                     f"{type(e).__name__}: {e}") from e
    finally:
        os.chdir(cwd)
    return skipped
