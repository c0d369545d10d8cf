"""scripts/bench.py runs end to end (tiny sizes, JAX implementations only: no torch needed)."""

import json

from conftest import run_cli


def test_bench_smoke(tmp_path):
    out_json = tmp_path / "bench.json"
    out = run_cli("scripts/bench.py", "--configs", "tiny", "--impls", "scratch,scratch_reference,concise",
                  "--rounds", "1", "--warmup", "0", "--round-seconds", "0.01", "--json", str(out_json))
    assert out.returncode == 0, out.stderr
    results = json.loads(out_json.read_text())["results"]
    assert {r["impl"] for r in results} == {"scratch", "scratch_reference", "concise"}
    for r in results:
        assert r["config"] == "tiny" and r["tokens_per_sec_median"] > 0 and r["first_step_s"] > 0
    assert "| tiny" in out.stdout and "scratch_reference" in out.stdout
