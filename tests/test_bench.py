"""scripts/bench.py runs end to end (tiny sizes; torch too where it is installed)."""

import json

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_bench_smoke(tmp_path):
    out_json = tmp_path / "bench.json"
    out = run_cli("scripts/bench.py", "--configs", "tiny", "--impls", "scratch,concise,concise_fast,torch",
                  "--rounds", "1", "--warmup", "0", "--round-seconds", "0.01", "--json", str(out_json))
    assert out.returncode == 0, out.stderr
    report = json.loads(out_json.read_text())
    results = report["results"]
    assert {r["impl"] for r in results} == {"scratch", "concise", "concise_fast", "torch"}
    for r in results:
        assert r["config"] == "tiny" and r["tokens_per_sec_median"] > 0 and r["first_step_s"] > 0
        assert r["flops_per_token"] == 3 * 2 * (16 * 64 + 16 * 28) and 0 < r["fraction_of_peak"] < 1
        assert r["vs_torch"] > 0
    machine = report["machine"]  # the peak: the faster of XLA's and PyTorch's large product
    assert set(machine["matmul_gflops"]) == {"xla", "torch"} and min(machine["matmul_gflops"].values()) > 1
    assert machine["matmul_peak_gflops"] == max(machine["matmul_gflops"].values())
    assert all(r["matmul_peak_gflops"] == machine["matmul_peak_gflops"] for r in results)
    assert "| tiny" in out.stdout and "concise_fast" in out.stdout


@pytest.mark.slow
def test_bench_hidden_sizes_plot(tmp_path):
    out_json, png = tmp_path / "bench.json", tmp_path / "hidden.png"
    out = run_cli("scripts/bench.py", "--configs", "tiny", "--impls", "scratch,torch", "--hiddens", "8,16",
                  "--rounds", "1", "--warmup", "0", "--round-seconds", "0.01", "--json", str(out_json),
                  "--plot", str(png))
    assert out.returncode == 0, out.stderr
    results = json.loads(out_json.read_text())["results"]
    assert sorted((r["config"], r["num_hiddens"], r["impl"]) for r in results) == [
        ("tiny_h16", 16, "scratch"), ("tiny_h16", 16, "torch"), ("tiny_h8", 8, "scratch"), ("tiny_h8", 8, "torch")]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bench_rejects_bad_hiddens():
    out = run_cli("scripts/bench.py", "--configs", "tiny", "--hiddens", "big")
    assert out.returncode == 2 and "--hiddens takes integers" in out.stderr


@pytest.mark.slow
def test_bench_huge_pages_ab_smoke(tmp_path):
    # Child processes with and without malloc's huge pages, taking turns; the ratio per implementation.
    out = run_cli("scripts/bench.py", "--configs", "tiny", "--impls", "scratch,torch", "--rounds", "1", "--warmup", "0",
                  "--round-seconds", "0.01", "--huge-pages", "ab", "--ab-runs", "1", "--json", str(tmp_path / "ab.json"))
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "ab.json").read_text())["results"]
    assert sorted(r["impl"] for r in results) == ["scratch", "torch"]
    assert all(r["on_over_off"] > 0 for r in results)
