"""pytest plugin (entry point ``pytest11``): the ``gradcheck`` fixture and ``--diffprog-seed``.

Loaded automatically when diffprog is installed::

    def test_physics(gradcheck):
        gradcheck(energy, (positions, 2.0), order=2)   # same signature as check_grads

``--diffprog-seed=N`` fixes the seed of every check (default 0, or
$DIFFPROG_TEST_SEED); ``--diffprog-seed=random`` draws a new one per session and
prints it in the header, so a failure can be replayed with ``--diffprog-seed=N``.
"""
from __future__ import annotations

__tracebackhide__ = True  # pytest: a failing check shows the test and the report, not us

import os
import secrets

import pytest

from ..errors import ArgumentError
from .checks import SEED_ENV, _describe, _param_names, check_grads


def pytest_addoption(parser):
    group = parser.getgroup("diffprog", "diffprog gradient checks")
    group.addoption("--diffprog-seed", action="store", default=None, metavar="N|random",
                    help="seed of the random directions in gradient checks (default: "
                         f"${SEED_ENV} or 0; 'random' draws one and prints it)")
    group.addoption("--diffprog-engine", action="store", default=None, metavar="NAME",
                    help="engine computing the analytic side of the gradcheck fixture "
                         "(default: the function's own / $DIFFPROG_ENGINE)")


def _session_seed(config) -> int | None:
    raw = config.getoption("--diffprog-seed")
    if raw is None:
        return None
    if raw == "random":
        return secrets.randbelow(2 ** 31)
    try:
        return int(raw)
    except ValueError:
        raise pytest.UsageError(f"--diffprog-seed expects an integer or 'random', got {raw!r}")


def pytest_configure(config):
    seed = _session_seed(config)
    config._diffprog_seed = seed
    config._diffprog_saved_env = os.environ.get(SEED_ENV)
    if seed is not None:
        os.environ[SEED_ENV] = str(seed)  # check_grads called directly sees it too


def pytest_unconfigure(config):
    if getattr(config, "_diffprog_seed", None) is None:
        return
    saved = getattr(config, "_diffprog_saved_env", None)
    if saved is None:
        os.environ.pop(SEED_ENV, None)
    else:
        os.environ[SEED_ENV] = saved


def pytest_report_header(config):
    seed = getattr(config, "_diffprog_seed", None)
    shown = seed if seed is not None else os.environ.get(SEED_ENV, "0")
    return f"diffprog gradient checks: seed={shown} (replay with --diffprog-seed={shown})"


@pytest.fixture
def gradcheck(request):
    """``gradcheck(f, args, **options)``: :func:`~diffprog.testing.check_grads` with the
    same signature (``args`` the tuple of positional arguments, or one array), failing
    the test with the report and nothing of diffprog's own code; returns the report.
    ``--diffprog-engine`` sets the default ``engine``."""
    config = request.config
    engine = config.getoption("--diffprog-engine")

    def gradcheck(f, args, *more, **options):
        __tracebackhide__ = True
        if more:
            names = ", ".join(_param_names(f, 1 + len(more)))
            raise ArgumentError(
                f"gradcheck takes the arguments of f as one tuple, like check_grads: "
                f"gradcheck(f, args, **options); got {1 + len(more)} positional arguments "
                f"after f. Fix: gradcheck({_describe(f)}, ({names}), ...)")
        if engine is not None:
            options.setdefault("engine", engine)
        return check_grads(f, args, **options)

    return gradcheck

