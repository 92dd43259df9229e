"""Progress bars for long work: tqdm when it is installed, silent otherwise.

>>> from diffprog.progress import progress
>>> total = 0
>>> for i in progress(range(3), desc="steps"):   # a tqdm bar if tqdm is installed
...     total += i
>>> total
3

A bar appears only for work that lasts longer than ``delay`` seconds (default 2), so
quick calls print nothing. ``DIFFPROG_PROGRESS=0`` turns every bar off, ``=1`` shows
them at once and redraws every step; ``enabled=False`` turns one off. Bars are written to stderr
(plain text, also in notebooks), never to stdout.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

ENV = "DIFFPROG_PROGRESS"
DELAY = 2.0


def _tqdm():
    """tqdm's class, or None when tqdm is not installed or bars are turned off."""
    if os.environ.get(ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class _Silent:
    """What :func:`progress` returns without tqdm: the iterable, and no-op bar methods."""

    def __init__(self, iterable: Iterable | None = None):
        self.iterable = iterable if iterable is not None else ()

    def __iter__(self):
        return iter(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress(iterable: Iterable | None = None, *, total: int | None = None,
             desc: str | None = None, enabled: bool | None = None, **options: Any):
    """Wrap ``iterable`` in a tqdm progress bar, or return a silent stand-in.

    Without an iterable it returns a bar to drive by hand (``update(n)``,
    ``set_postfix(loss=...)``, ``close()``; a context manager too). ``enabled=None``
    (default) shows the bar when tqdm is installed and ``DIFFPROG_PROGRESS`` is not 0;
    ``options`` go to tqdm (``leave``, ``unit``, ...).
    """
    tqdm = _tqdm() if enabled is not False else None
    if tqdm is None:
        return _Silent(iterable)
    eager = os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")
    options.setdefault("delay", 0.0 if eager else DELAY)
    if eager:  # every step drawn (tqdm otherwise redraws at most every 0.1 s)
        options.setdefault("mininterval", 0.0)
    options.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, **options)


def available() -> bool:
    """Whether :func:`progress` shows bars here (tqdm installed, not turned off)."""
    return _tqdm() is not None
