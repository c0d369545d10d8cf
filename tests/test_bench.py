"""scripts/bench.py runs end to end (tiny sizes; torch too where it is installed)."""

import json

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_bench_smoke(tmp_path):
    out_json = tmp_path / "bench.json"
    out = run_cli("scripts/bench.py", "--configs", "tiny", "--impls", "scratch,concise,concise_fast,torch",
                  "--rounds", "1", "--warmup", "0", "--round-seconds", "0.01", "--matmul-size", "256", "--json", str(out_json))
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
                  "--rounds", "1", "--warmup", "0", "--round-seconds", "0.01", "--matmul-size", "256", "--json", str(out_json),
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
                  "--round-seconds", "0.01", "--matmul-size", "256", "--huge-pages", "ab", "--ab-runs", "1", "--json", str(tmp_path / "ab.json"))
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "ab.json").read_text())["results"]
    assert sorted(r["impl"] for r in results) == ["scratch", "torch"]
    assert all(r["on_over_off"] > 0 for r in results)


def test_cell_study_rows_tables_and_plot(tmp_path, monkeypatch):
    """scripts/cell_study.py: parameter-matched hidden sizes, its table and plot, on made-up results."""
    import importlib.util
    import os

    from conftest import REPO
    from lstm_jax import models

    spec = importlib.util.spec_from_file_location("cell_study", os.path.join(REPO, "scripts", "cell_study.py"))
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    rows = study.rows()
    target = models.LanguageModel("scratch", 65, 256, num_layers=2).num_params()
    for table, name, overrides in rows:
        if "num_hiddens" in overrides:  # the parameter-matched table: within 3% of the LSTM's count
            m = models.LanguageModel("scratch", 65, overrides["num_hiddens"], num_layers=2, cell=overrides["cell"])
            assert abs(m.num_params() / target - 1) < 0.03, name
    assert {o.get("cell", "lstm") for _, _, o in rows} == set(study.CELLS)
    results = [{"table": t, "row": n, "num_params": 1000 + i, "num_updates": 10, "tokens_per_sec": 5.0,
                "best_val_loss": [1.5 + i / 100, 1.6, 1.55], "mean": 1.55 + i / 300, "spread": 0.1}
               for i, (t, n, _) in enumerate(rows)]
    text = study.markdown(results)
    assert text.count("| lstm_cifg |") == 1 and "1.5000, 1.6000, 1.5500" in text and "± 0.0500" in text
    study.plot(results, str(tmp_path / "study.png"), "made up")
    assert (tmp_path / "study.png").stat().st_size > 10_000
    # --set: one override reaches every run of every row, and a row's own settings win over it
    seen = []
    fake = lambda workdir, overrides, log: seen.append(overrides) or {"num_updates": 7, "num_params": 1,
                                                                       "tokens_per_sec_median": 1.0, "best_val_loss": 1.5}
    monkeypatch.setattr(study, "train", fake)
    out = study.run(str(tmp_path), 9.0, [0, 1], only=["lstm", "rnn"], common={"learning_rate": "4e-3", "num_hiddens": 64})
    assert seen and all(o["learning_rate"] == "4e-3" for o in seen)
    assert {o["num_hiddens"] for o in seen} == {64} | {o["num_hiddens"] for _, n, o in rows if n.startswith("rnn (")}
    assert [o["num_updates"] for o in seen if o["seed"] == 1] == [7] * len(out)
    seen.clear()  # --rows: a regular expression on the row names picks rows across both tables
    out = study.run(str(tmp_path), 9.0, [0], pattern=r"^rnn|^gru$")
    assert [r["row"] for r in out] == ["gru", "rnn", next(n for _, n, _ in rows if n.startswith("rnn ("))]
    # --merge: a new row replaces its namesake and the study's row order holds
    merged = study.merge([{"table": out[2]["table"], "row": out[2]["row"], "mean": 9.0},
                          {"table": rows[0][0], "row": "lstm", "mean": 1.0}], out)
    assert [r["row"] for r in merged] == ["lstm", "gru", "rnn", out[2]["row"]] and merged[-1] is out[2]
