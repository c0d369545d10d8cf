"""Inspection (python -m lstm_jax.inspect): traces equal to the model, on hand-built models whose
answer is known (a counting unit, saturated gates, vanishing gradients), and a report that a real
browser draws without running the text it shows."""

import html
import json
import re
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import one_error_line, quiet, run_cli
from lstm_jax import cells, configs, inspect, models, report
from lstm_jax.checkpoint import Loaded
from lstm_jax.data import Vocab

# Our own text: lines of varied length, brackets and quotes (no corpus excerpt).
WORDS = "the cat sat on a mat while a dog (who was asleep) said \"hello there\" to no one at all".split()


def lines_text(num_lines=60, seed=0):
    rng = np.random.default_rng(seed)
    return "".join(" ".join(rng.choice(WORDS, rng.integers(1, 9))) + "\n" for _ in range(num_lines))


def make_run(text, cell="lstm", hidden=8, layers=1, seed=0, **kw):
    vocab = Vocab(("<unk>", *sorted(set(text))), "char", "none")
    model = models.LanguageModel("scratch", len(vocab), hidden, num_layers=layers, cell=cell, **kw)
    return Loaded(model, model.init(jax.random.key(seed)), vocab, configs.get_base_config(), 0), \
        np.asarray(vocab.ids(list(text)), np.int32)


@pytest.mark.parametrize("name", cells.NAMES)
def test_trace_is_the_model_for_every_cell(name):
    # Two layers, carried across chunks of 7 steps: the loss and the last layer's h are the model's.
    run, ids = make_run(lines_text(3), name, hidden=6, layers=2, proj_size=4 if name == "lstm_proj" else 0)
    ids = ids[:40]
    tr = inspect.trace(run, ids, chunk=7)
    logits, _, (h, _) = models.reference_apply(run.params, run.model.initial_state(1), ids[None], outputs=True,
                                               cell=name)
    logp = jax.nn.log_softmax(logits[0])
    np.testing.assert_allclose(tr.loss[:-1], -logp[np.arange(39), ids[1:]], rtol=1e-5)
    assert np.isnan(tr.loss[-1])
    np.testing.assert_allclose(tr.signals[1]["h"], h[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tr.top_probs.sum(1), 1, rtol=1e-5)  # the whole distribution, sorted
    np.testing.assert_allclose(tr.top_probs[:, 0], np.exp(logp).max(1), rtol=1e-5)
    cell = cells.get(name)
    expected = set(cell.State._fields) | ({"i", "f", "o", "c_tilde"} if name.startswith("lstm") else set())
    assert expected <= set(tr.signals[0]) and set(cell.gate_signals) <= set(tr.signals[0])
    if name == "lstm":  # in the order the cell writes them
        assert list(tr.signals[0]) == ["i", "f", "o", "c_tilde", "c", "h"]


@pytest.mark.parametrize("name", ["rnn", "gru_reset_after"])
def test_trace_reads_flax_cells(name):
    # A concise model (flax's own cell): its parameters re-keyed, the same losses as flax computes.
    # (The LSTM's re-keying is the fast path's, tested in test_models.py.)
    run, ids = make_run(lines_text(2), name, hidden=5, layers=2)
    model = models.LanguageModel("concise", run.model.vocab_size, 5, num_layers=2, cell=name, impl="reference")
    run = run._replace(model=model, params=model.init(jax.random.key(1)))
    logits, _ = model.apply(run.params, model.initial_state(1), ids[None, :30])
    logp = jax.nn.log_softmax(logits[0])
    np.testing.assert_allclose(inspect.trace(run, ids[:30]).loss[:-1], -logp[np.arange(29), ids[1:30]], rtol=1e-5)


def test_text_features():
    f = inspect.text_features(list('ab (c)\n"d"\nEND:\nx'))
    np.testing.assert_array_equal(f["position_in_line"], [1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1])
    np.testing.assert_array_equal(f["line_end_ahead"][:7], [6, 5, 4, 3, 2, 1, 0])
    np.testing.assert_array_equal(f["in_parentheses"][:7], [0, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(f["in_quotes"][7:11], [1, 1, 0, 0])
    np.testing.assert_array_equal(f["in_speaker_name"][11:16], [1, 1, 1, 1, 0])
    np.testing.assert_array_equal(f["in_word"][:4], [1, 1, 0, 0])
    words = inspect.text_features("a b . c <eos> d e".split(), words=True)
    np.testing.assert_array_equal(words["position_in_sentence"], [1, 2, 0, 1, 0, 1, 2])


def counting_lstm(text):
    """Unit 0 counts characters since a newline: f = 0 on a newline, else 1; i = 1; c~ = 0.05; no
    recurrent weights into or out of it, so the other (random) units know nothing of it."""
    run, ids = make_run(text)
    p = dict(run.params)
    nl = run.vocab.token_to_idx["\n"]
    p["b_f"], p["b_i"], p["b_c"] = p["b_f"].at[0].set(20.0), p["b_i"].at[0].set(20.0), p["b_c"].at[0].set(0.05)
    p["W_xf"] = p["W_xf"].at[nl, 0].set(-40.0)
    for g in "ifoc":
        p[f"W_h{g}"] = p[f"W_h{g}"].at[:, 0].set(0.0).at[0, :].set(0.0)
    p["W_xc"] = p["W_xc"].at[:, 0].set(0.0)
    return run._replace(params=p), ids


def test_a_counting_unit_ranks_first_for_position_in_line():
    text = lines_text()
    run, ids = counting_lstm(text)
    tr = inspect.trace(run, ids)
    units = inspect.rank_units(inspect.correlations(tr.signals, inspect.text_features(list(text))), top=3)
    first = next(u for u in units if u["feature"] == "position_in_line")
    assert (first["layer"], first["signal"], first["unit"]) == (0, "c", 0) and first["correlation"] > 0.999
    others = [u for u in units if u["feature"] == "position_in_line" and u["unit"] != 0]
    assert all(abs(u["correlation"]) < 0.5 for u in others)


def test_a_gate_with_a_large_bias_is_saturated():
    run, ids = make_run(lines_text(10))
    p = {**run.params, "b_f": jnp.full(8, 12.0), "b_i": jnp.full(8, -12.0)}
    tr = inspect.trace(run._replace(params=p), ids)
    sat = {s["gate"]: s for s in inspect.saturation(tr.signals, cells.get("lstm").gate_signals)}
    assert min(sat["f"]["right"]) == 1 and max(sat["f"]["left"]) == 0
    assert min(sat["i"]["left"]) == 1 and max(sat["i"]["right"]) == 0
    assert max(sat["o"]["left"]) == 0 and max(sat["o"]["right"]) == 0  # d2l's init: o stays near 0.5


def test_gradient_flow_decays_faster_in_a_small_rnn_than_in_an_lstm_with_forget_bias_1():
    text = lines_text(20)
    rnn, ids = make_run(text, "rnn", hidden=16)
    lstm, _ = make_run(text, "lstm", hidden=16, forget_bias=1.0)
    flows = {n: inspect.gradient_flow(r, ids, max_distance=20, num_windows=8) for n, r in (("rnn", rnn), ("lstm", lstm))}
    decay = {n: f.norms[(0, "h")][20] / f.norms[(0, "h")][1] for n, f in flows.items()}
    assert decay["lstm"] > 1e-4 and decay["rnn"] < 1e-6 * decay["lstm"], decay
    assert (0, "c") in flows["lstm"].norms and flows["rnn"].num_windows == 8
    # k = 0 is the head's gradient: (softmax - one-hot) W_hq^T at the window's last step
    one = inspect.gradient_flow(rnn, ids[:12], max_distance=10, num_windows=1)
    tr = inspect.trace(rnn, ids[:12])
    W_hq, b_q = models.head(rnn.params)
    probs = jax.nn.softmax(tr.signals[0]["h"][10] @ W_hq + b_q)
    expected = np.linalg.norm((probs - jax.nn.one_hot(ids[11], len(probs))) @ W_hq.T)
    np.testing.assert_allclose(one.norms[(0, "h")][0], expected, rtol=1e-4)


HOSTILE = "</script><script>document.title='pwned'</script>\n<img src=x onerror=\"document.title='pwned'\">\n& done\n"


def hostile_page(tmp_path):
    text = HOSTILE + lines_text(8)
    run, ids = make_run(text, "gru", hidden=6, layers=2)
    out, tr = report.analyse(run, ids, "hand-built", max_distance=10, num_windows=4)
    out.update(traced={"path": "hostile.txt", "num_tokens": len(ids), "checkpoint": "latest"}, compare=[])
    page = report.html(report.page_data(out, tr, run.vocab))
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    return out, page, path


def test_the_page_embeds_the_text_as_data_only(tmp_path):
    out, page, _ = hostile_page(tmp_path)
    data = page.split('<script type="application/json" id="data">')[1].split("</script>")[0]
    assert "<" not in data and ">" not in data and "&" not in data
    assert page.count("<script") == 3 and "pwned" not in page.replace(data, "")
    assert "".join(json.loads(data)["text"]).startswith(HOSTILE)
    assert {"units", "saturation", "gradient_flow", "features"} <= set(out)
    json.dumps(out, allow_nan=False)  # the JSON report is strict JSON


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(not chromium(), reason="no chromium: apt-get install chromium (CI's .ci/run installs it)")
def test_a_browser_draws_the_report_and_runs_none_of_the_text(tmp_path):
    _, _, path = hostile_page(tmp_path)
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-rendered="1"' in body and "data-errors" not in body, body
    assert "<title>lstm_jax inspect: hand-built</title>" in dom and "pwned</title>" not in dom
    shown = html.unescape(re.sub(r"<[^>]*>", "", dom.split('id="text"')[1].split("</div>")[0]))
    assert HOSTILE.replace("\n", "\u21b5\n") in shown and "<img" not in dom  # shown as text, newlines as ↵
    assert dom.count("<circle") == 2 * 2 * 6  # two layers, gates z and r, six units each


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from conftest import tiny

    from lstm_jax import train

    c = tiny()
    c.data.val_fraction = 0.2
    w = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(c, str(w), **quiet)
    return w


@pytest.mark.slow
def test_cli_writes_both_files_and_refuses_bad_input_in_one_line(workdir, tmp_path):
    html, js = tmp_path / "r.html", tmp_path / "r.json"
    out = run_cli("-m", "lstm_jax.inspect", f"--workdir={workdir}", f"--out={html}", f"--json={js}",
                  "--max_chars=300", f"--compare={workdir}", "--max_distance=20")
    assert out.returncode == 0, out.stderr
    r = json.loads(js.read_text())
    assert r["traced"]["split"] == "val" and r["traced"]["num_tokens"] == 300 and len(r["compare"]) == 2  # the run itself, then --compare
    assert {u["feature"] for u in r["units"]} == set(r["features"]) and "position_in_line" in r["features"]
    assert {(s["layer"], s["gate"]) for s in r["saturation"]} == {(0, "i"), (0, "f"), (0, "o")}
    assert len(r["gradient_flow"]["curves"][0]["norm"]) == 21 and 'data-rendered' in html.read_text()
    assert "traced 300 tokens" in out.stdout
    for args, message in (([f"--workdir={tmp_path / 'nope'}"], "does not exist"),
                          ([f"--workdir={tmp_path}"], "no checkpoints in"),
                          ([f"--workdir={workdir}", "--path=/nope.txt"], "--path /nope.txt is not a file"),
                          ([f"--workdir={workdir}", "--split=dev"], "split"),
                          ([f"--workdir={workdir}", "--split=test"], "no test split")):
        assert message in one_error_line(run_cli("-m", "lstm_jax.inspect", *args, f"--out={html}"))
    assert "--compare" in run_cli("-m", "lstm_jax.inspect", "--help").stdout
