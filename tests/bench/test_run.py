"""bench/run.py (the CPU benchmark) runs end to end on tiny sizes, so it cannot rot.
Timings are not asserted (this is not a timed test): only structure and agreement."""
from __future__ import annotations

import io
import math

import pytest

from bench import run as bench_run
from bench import workloads as W

from ..helpers import assert_close


def test_tiny_run_reports_every_workload_and_measurement():
    out = io.StringIO()
    results = bench_run.run(size="tiny", repeats=2, target_s=1e-4, use_peers=False, out=out)
    rows = {(r["workload"], r["mode"]): r for r in results["timings"]}
    assert set(rows) == {(w, m) for w in W.MAKERS for m in ("value", "value+grad")} | {
        (w, m) for w in bench_run.FAST_MATH_WORKLOADS for m in ("value FM", "value+grad FM")}
    for r in rows.values():
        assert math.isfinite(r["ratio_median"]) and r["ratio_median"] > 0
        assert r["hand_ms"] > 0 and r["ours_ms"] > 0
    assert set(results["first_call_s"]) == set(W.MAKERS) - {"W1"}
    assert results["compile"]["equations"] >= 20
    mem = results["memory"]
    assert mem["diffprog_bytes"] > 0 and mem["numpy_by_hand_bytes"] > 0
    text = out.getvalue()
    assert "ratio med" in text and "W4 peak extra memory" in text
    assert "FM: fast math" in text and "fast math:" in results["fast_math"]


@pytest.mark.parametrize("name", sorted(W.MAKERS))
def test_hand_written_gradients_agree_with_diffprog(name):
    workload = W.MAKERS[name]("tiny")
    bench_run.check(workload)  # raises if they disagree
    bench_run.check(workload, fast_math=True)
    value = workload.value_by_hand(*workload.args)
    assert_close(value, workload.value_and_grad_by_hand(*workload.args)[0], rtol=1e-12)


def test_check_catches_a_wrong_hand_written_gradient():
    workload = W.make_w1("tiny")
    good = workload.value_and_grad_by_hand
    workload.value_and_grad_by_hand = lambda x: (good(x)[0], (2.0 * good(x)[1][0],))
    with pytest.raises(AssertionError, match="disagree"):
        bench_run.check(workload)


def test_cli_prints_the_table(capsys, tmp_path):
    plot = tmp_path / "ratios.png"
    assert bench_run.main(["--size", "tiny", "--only", "W1", "--repeats", "1", "--sample-ms",
                           "0.1", "--no-peers", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "W1" in out and "first call of value_and_grad" in out
    pytest.importorskip("matplotlib")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
