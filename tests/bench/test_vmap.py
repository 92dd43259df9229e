"""The vmap benchmark runs (tiny sizes: a smoke test; ratios are never asserted)."""
from bench import vmap


def test_vmap_benchmark_runs_and_checks_its_results(capsys):
    assert vmap.main(["--size", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "per-example gradients" in out and "loop / vmap" in out
