"""Rough edges of everyday use: lazily reachable submodules, progress bars, notebook display."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import diffprog as dp


def test_submodules_are_reachable_as_attributes_and_imported_lazily():
    code = ("import sys, diffprog as dp\n"
            "assert 'diffprog.sciml' not in sys.modules\n"
            "import numpy as np\n"
            "ys = dp.sciml.odeint(lambda y, t: -y, np.array([1.0]), np.array([0.0, 1.0]))\n"
            "assert 'diffprog.sciml' in sys.modules and abs(ys[-1, 0] - np.exp(-1)) < 1e-6\n"
            "assert dp.testing.check_grads(lambda x: np.sum(x ** 2), np.ones(2)).passed\n"
            "assert dp.tree.map(lambda x: 2 * x, [1.0]) == [2.0] and dp.optim.SGD\n"
            "assert {'sciml', 'testing', 'tree', 'optim'} <= set(dir(dp))\n"
            "assert not hasattr(dp, 'no_such_module') and not hasattr(dp, '_private')\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_unknown_attribute_is_a_plain_attribute_error():
    with pytest.raises(AttributeError, match="module 'diffprog' has no attribute 'gradient'"):
        dp.gradient


# ------------------------------------------------------------------ progress bars

def test_progress_without_tqdm_is_silent_and_transparent(monkeypatch, capsys):
    from diffprog import progress as prog
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` fails as if absent
    assert not prog.available()
    assert list(prog.progress(range(3), desc="x")) == [0, 1, 2]
    with prog.progress(total=3) as bar:
        bar.update(1)
        bar.set_postfix(loss=1.0)
    assert capsys.readouterr() == ("", "")


def test_progress_uses_tqdm_when_installed_and_can_be_turned_off(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    from diffprog import progress as prog
    monkeypatch.setenv("DIFFPROG_PROGRESS", "1")  # show at once (default: after 2 s)
    assert list(prog.progress(range(3), desc="steps")) == [0, 1, 2]
    out, err = capsys.readouterr()
    assert out == "" and "steps" in err and "3/3" in err
    monkeypatch.setenv("DIFFPROG_PROGRESS", "0")
    assert not prog.available() and list(prog.progress(range(2))) == [0, 1]
    monkeypatch.delenv("DIFFPROG_PROGRESS")
    list(prog.progress(range(3), desc="quick"))  # under the 2 s delay: nothing shown
    assert capsys.readouterr() == ("", "")


def test_minimize_lbfgs_shows_progress(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    pytest.importorskip("scipy")
    monkeypatch.setenv("DIFFPROG_PROGRESS", "1")
    rosen = lambda p: (1 - p["x"]) ** 2 + 100 * (p["y"] - p["x"] ** 2) ** 2
    res = dp.optim.minimize_lbfgs(rosen, {"x": np.array(-1.0), "y": np.array(2.0)})
    err = capsys.readouterr().err
    assert res.success and "L-BFGS" in err and "loss=" in err
    dp.optim.minimize_lbfgs(rosen, {"x": np.array(-1.0), "y": np.array(2.0)}, progress=False)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------- notebook display

def _loss(x):
    return np.sum(np.tanh(x) ** 2)


def test_source_is_a_str_with_a_highlighted_html_repr():
    pytest.importorskip("pygments")
    from diffprog.display import Source
    f = dp.differentiable(_loss)
    text = f.source(np.ones(3), kind="grad")
    src = Source(text, language="python")
    assert src == text and isinstance(src, str) and src.splitlines() == text.splitlines()
    html = src._repr_html_()
    assert html.startswith('<div class="diffprog-python">') and "<span style=" in html
    assert src._repr_markdown_() == "```python\n" + text.rstrip() + "\n```"
    assert Source("x = 1", "julia")._repr_markdown_().startswith("```julia\n")


def test_graph_renders_highlighted_in_notebooks():
    pytest.importorskip("pygments")
    graph = dp.differentiable(_loss).ir(np.ones(3))
    html = graph._repr_html_()
    assert html.startswith('<div class="diffprog-ir">') and ">tanh</span>" in html
    assert ">lambda</span>" in html and "float64[3]" in html
    assert graph._repr_markdown_() == "```text\n" + str(graph) + "\n```"


def test_display_without_pygments_is_plain_escaped_text(monkeypatch):
    from diffprog.display import Source
    monkeypatch.setitem(sys.modules, "pygments", None)
    monkeypatch.setitem(sys.modules, "pygments.lexers", None)
    assert Source("a < b", "python")._repr_html_() == '<pre class="diffprog-python">a &lt; b</pre>'
    graph = dp.differentiable(_loss).ir(np.ones(2))
    assert graph._repr_html_().startswith('<pre class="diffprog-ir">{ lambda')


def test_display_doctests():
    import doctest

    import diffprog.display
    import diffprog.progress
    for module in (diffprog.display, diffprog.progress):
        failures, tried = doctest.testmod(module, verbose=False)
        assert tried >= 3 and failures == 0, module.__name__


# ------------------------------------------------------------------ packaging, ./dev

def test_demo_installs_numpy_only_and_test_installs_the_rest():
    import pathlib
    import re
    import tomllib
    root = pathlib.Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    meta = project["project"]
    assert meta["dependencies"] == ["numpy>=1.25"]
    extras = meta["optional-dependencies"]
    assert extras["demo"] == []  # the demo needs NumPy alone (seconds, not minutes)
    names = {re.split(r"[<>=\[ ]", r)[0] for r in extras["test"]}
    assert {"pytest", "scipy", "nbclient", "mkdocs", "mkdocs-material", "mkdocstrings",
            "tqdm", "pygments"} <= names  # ./dev test (CI) installs everything tests use
    # current license metadata (SPDX string + files), with a setuptools that reads it:
    # the TOML-table form printed a deprecation warning three times per install
    assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]
    assert (root / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert "setuptools>=77" in project["build-system"]["requires"]
    dev = (root / "dev").read_text(encoding="utf-8")
    assert 'demo)  setup "demo"' in dev and 'test)  setup "test"' in dev
