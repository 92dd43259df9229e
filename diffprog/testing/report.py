"""What a gradient check found: one :class:`CheckResult` per check, gathered in a
:class:`GradCheckReport` whose text is the failure message users read."""
from __future__ import annotations

# pytest hides the frames of modules that set this: a failing gradient check shows the
# user's test and the report, not diffprog's own source (`pytest --fulltrace` shows all)
__tracebackhide__ = True

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ElementMismatch:
    """The per-element (dense) check of one argument, run only after a failure."""

    checked: int  # elements compared (all, or a sample of a huge argument)
    size: int
    mismatched: int
    worst_path: str
    analytic: float
    numeric: float
    abs_err: float
    rel_err: float


@dataclass
class CheckResult:
    """One comparison of an analytic derivative with finite differences."""

    check: str  # "reverse mode, order 1", "forward-over-reverse, order 2", ...
    argument: str  # pytree path, e.g. params["w"]
    shape: tuple
    dtype: str
    analytic: float  # projected value (or worst element for forward mode)
    numeric: float
    abs_err: float
    tolerance: float
    passed: bool
    detail: str = ""  # what was compared
    dense: ElementMismatch | None = None
    diagnosis: list = field(default_factory=list)

    @property
    def rel_err(self) -> float:
        return self.abs_err / max(abs(self.numeric), abs(self.analytic), 1e-300)

    def lines(self) -> list[str]:
        out = [f"check:     {self.check}",
               f"argument:  {self.argument}  (shape {self.shape}, {self.dtype})",
               f"compared:  {self.detail}",
               f"analytic:  {self.analytic:.8g}",
               f"numeric:   {self.numeric:.8g}",
               f"error:     abs {self.abs_err:.3g}, rel {self.rel_err:.3g}; "
               f"tolerance abs {self.tolerance:.3g}"]
        d = self.dense
        if d is not None:
            sampled = "" if d.checked == d.size else f" (a sample of {d.checked})"
            out.append(f"elements:  {d.mismatched} of {d.checked} mismatch{sampled}; worst "
                       f"{d.worst_path}: analytic {d.analytic:.8g}, numeric {d.numeric:.8g}, "
                       f"abs err {d.abs_err:.3g}, rel err {d.rel_err:.3g}")
        for i, line in enumerate(self.diagnosis):
            out.append(("diagnosis: " if i == 0 else "           ") + line)
        return out


@dataclass
class GradCheckReport:
    """Everything :func:`~diffprog.testing.check_grads` compared. ``bool(report)`` is
    True when every check passed; ``str(report)`` is the message shown on failure."""

    function: str
    seed: int
    eps: float
    fd_dtype: str
    results: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failures(self) -> list:
        return [r for r in self.results if not r.passed]

    def __str__(self) -> str:
        status = "passed" if self.passed else "FAILED"
        head = [f"gradient check {status} for {self.function} (seed={self.seed}; reproduce "
                f"with seed={self.seed}; finite differences in {self.fd_dtype}, eps={self.eps:g})"]
        for r in self.failures:
            head.append("")
            head += ["  " + line for line in r.lines()]
        if self.failures:
            head.append("")
        head.append(f"{len(self.results) - len(self.failures)} of {len(self.results)} checks passed:")
        for r in self.results:
            mark = "ok  " if r.passed else "FAIL"
            head.append(f"  [{mark}] {r.check}: {r.argument} (abs err {r.abs_err:.2g}, "
                        f"tolerance {r.tolerance:.2g})")
        head += [f"note: {n}" for n in self.notes]
        return "\n".join(head)

    __repr__ = __str__


def float_or_nan(x) -> float:
    try:
        return float(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError):
        return float("nan")
