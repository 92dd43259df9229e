"""A Griffe extension for the API reference (mkdocs.yml loads it through mkdocstrings).

diffprog's docstrings are written for ``help()`` and doctest: examples as ``>>>``
sessions and Sphinx roles such as ``:func:`grad```. Markdown shows neither well, so
before rendering, each run of ``>>>``/``...`` lines with its expected output becomes a
fenced ``pycon`` block, and ``:role:`~a.b.c``` becomes ```c```. The docstrings
themselves are not changed (they stay doctests, run by tests/test_docs.py).
"""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`~?([^`]+)`")


def _role(match: re.Match) -> str:
    target = match.group(1)
    return f"`{target.rsplit('.', 1)[-1] if match.group(0).count('~') else target}`"


def convert(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            indent = line[:len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
                block.append(lines[i][len(indent):])
                i += 1
            out += [indent + "```pycon"] + [indent + b for b in block] + [indent + "```"]
            continue
        out.append(ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
