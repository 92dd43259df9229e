"""The pytest plugin, exercised in a separate test project through pytester."""
from __future__ import annotations

import importlib.metadata
import os
import tomllib

import pytest

pytest_plugins = ["pytester"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROJECT_TESTS = '''
import numpy as np
import diffprog as dp

def energy(x):
    return np.sum(x ** 4) / 4

def test_energy(gradcheck):
    report = gradcheck(energy, np.linspace(-1, 1, 5), order=2)
    assert report.passed

@dp.custom_vjp
def cube(x):
    return x ** 3

@cube.defvjp
def cube_vjp(g, x):
    return 2 * g * x ** 2          # wrong: should be 3 * g * x ** 2

def test_cube(gradcheck):
    gradcheck(cube, np.array([0.5, 1.5]))
'''


def _plugin_args() -> list[str]:
    """Load the plugin explicitly unless diffprog is installed (then its entry point does)."""
    installed = any(ep.name == "diffprog" for ep in importlib.metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", "diffprog.testing.plugin"]


def test_entry_point_is_declared():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)
    assert project["project"]["entry-points"]["pytest11"]["diffprog"] == "diffprog.testing.plugin"


def test_fixture_passes_correct_and_fails_wrong_rules(pytester, monkeypatch):
    monkeypatch.delenv("DIFFPROG_TEST_SEED", raising=False)
    pytester.makepyfile(test_project=PROJECT_TESTS)
    result = pytester.runpytest_inprocess(*_plugin_args(), "--diffprog-seed=7")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*diffprog gradient checks: seed=7*",
        "*GradCheckError*gradient check FAILED for cube (seed=7*",
        "*argument:  x  (shape (2,), float64)*",
        "*analytic = 0.666667 x numeric*",
    ])


def test_random_seed_is_printed_and_bad_seed_is_a_usage_error(pytester, monkeypatch):
    monkeypatch.delenv("DIFFPROG_TEST_SEED", raising=False)
    pytester.makepyfile(test_ok="def test_ok(gradcheck):\n    import numpy as np\n"
                                "    gradcheck(lambda x: np.sum(np.exp(x)), np.ones(3))\n")
    result = pytester.runpytest_inprocess(*_plugin_args(), "--diffprog-seed=random")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*diffprog gradient checks: seed=* (replay with --diffprog-seed=*"])
    bad = pytester.runpytest_inprocess(*_plugin_args(), "--diffprog-seed=abc")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--diffprog-seed expects an integer or 'random'*"])
    assert "DIFFPROG_TEST_SEED" not in os.environ  # the plugin restores the environment


SIGNATURE_TESTS = '''
import numpy as np
import pytest
import diffprog as dp
from diffprog.testing import check_grads

POS = np.linspace(-1.0, 1.0, 4)

def energy(x, k):
    return k * np.sum(x ** 4) / 4

def test_args_tuple_as_in_check_grads(gradcheck):
    report = gradcheck(energy, (POS, 2.0), order=2)
    assert report.passed and report.results == check_grads(energy, (POS, 2.0), order=2).results

def test_one_array_is_one_argument(gradcheck):
    assert gradcheck(lambda x: np.sum(np.sin(x)), POS).passed

def test_old_star_args_form_is_a_clear_error(gradcheck):
    with pytest.raises(dp.ArgumentError) as e:
        gradcheck(energy, POS, 2.0, order=2)
    assert str(e.value) == ("gradcheck takes the arguments of f as one tuple, like check_grads: "
                            "gradcheck(f, args, **options); got 2 positional arguments after f. "
                            "Fix: gradcheck(energy, (x, k), ...)")
'''


def test_fixture_has_check_grads_signature(pytester, monkeypatch):
    monkeypatch.delenv("DIFFPROG_TEST_SEED", raising=False)
    pytester.makepyfile(test_signature=SIGNATURE_TESTS)
    result = pytester.runpytest_inprocess(*_plugin_args())
    result.assert_outcomes(passed=3)


FAILING_TEST = '''
import numpy as np
import diffprog as dp

@dp.custom_vjp
def cube(x):
    return x ** 3

@cube.defvjp
def cube_vjp(g, x):
    return 2 * g * x ** 2          # wrong: should be 3 * g * x ** 2

def test_cube(gradcheck):
    gradcheck(cube, (np.array([0.5, 1.5]),))

def test_cube_direct():
    from diffprog.testing import check_grads
    check_grads(cube, (np.array([0.5, 1.5]),))

def test_assert_grad_close():
    from diffprog.testing import assert_grad_close
    assert_grad_close(lambda x: 2 * x, lambda x: np.sum(x ** 3), (np.array([0.5, 1.5]),))
'''


def test_a_failing_check_shows_the_report_not_diffprogs_source(pytester, monkeypatch):
    monkeypatch.delenv("DIFFPROG_TEST_SEED", raising=False)
    pytester.makepyfile(test_failing=FAILING_TEST)
    result = pytester.runpytest_inprocess(*_plugin_args(), "-p", "no:cacheprovider")
    result.assert_outcomes(failed=3)
    out = result.stdout.str()
    assert "diffprog/testing" not in out and "def check_grads" not in out, out
    result.stdout.fnmatch_lines([
        "*_ test_cube _*",
        ">*gradcheck(cube, (np.array([[]0.5, 1.5[]]),))",
        "E*GradCheckError: gradient check FAILED for cube*",
        "E*off by a constant factor*",
        "*_ test_assert_grad_close _*",
        "E*hand-written gradient differs*",
    ])
    # the report is most of what is shown: one test's section is short (was ~109 lines)
    section = out.split("_ test_cube _")[1].split("_ test_cube_direct _")[0]
    assert len(section.splitlines()) < 40, section
    full = pytester.runpytest_inprocess(*_plugin_args(), "-p", "no:cacheprovider", "--fulltrace")
    assert "diffprog/testing/checks.py" in full.stdout.str()  # still there when asked for
