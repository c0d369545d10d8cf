"""The training loop: it learns, it is a function of its config, it evaluates and stops as asked."""

import math

import jax
import numpy as np
import pytest

from conftest import assert_same_params, quiet
from lstm_jax import configs, experiment, steps, train
from lstm_jax.errors import UserError
from lstm_jax.metrics import read_metrics


@pytest.mark.parametrize("variant,bound", [("scratch", 16.5), ("concise", 12.0)])
def test_a_few_epochs_learn_the_book(tiny_config, tmp_path, variant, bound):
    # Uniform guessing is perplexity 28 and letter frequencies alone about 17:
    # getting below that means the model uses context.
    c = tiny_config
    c.model, c.learning_rate, c.num_epochs = variant, 4.0, 6
    summary = train.train_and_evaluate(c, str(tmp_path), **quiet)
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    ppl = [r["train_ppl"] for r in records]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6] and records[-1]["step"] == 6 * 24
    assert ppl[0] < 28 and ppl[-1] < bound and ppl[-1] < 0.85 * ppl[0], ppl
    assert summary["final_train_ppl"] == ppl[-1] == pytest.approx(math.exp(records[-1]["train_loss"]))
    assert summary["compile_s"] > 0 and summary["tokens_per_sec_median"] > 0
    assert summary["num_params"] == (28 + 32 + 1) * 4 * 32 + 33 * 28
    assert 0 < records[0]["elapsed_s"] < records[-1]["elapsed_s"] == pytest.approx(summary["train_s"])


@pytest.mark.slow
def test_run_is_a_function_of_config_and_seed(tiny_config, tmp_path):
    tiny_config.dropout, tiny_config.num_layers = 0.3, 2  # dropout's randomness comes from the seed too
    a = train.train_and_evaluate(tiny_config, str(tmp_path / "a"), **quiet)
    b = train.train_and_evaluate(tiny_config, str(tmp_path / "b"), **quiet)
    tiny_config.seed = 1
    c = train.train_and_evaluate(tiny_config, str(tmp_path / "c"), **quiet)
    assert_same_params(a["train_state"].params, b["train_state"].params)
    assert a["final_train_ppl"] == b["final_train_ppl"] != c["final_train_ppl"]


@pytest.mark.slow
def test_how_an_epoch_is_cut_does_not_change_the_result(tiny_config, tmp_path):
    # One compiled program takes any number of minibatches: 24 a call or 7, 7, 7, 3.
    whole = train.train_and_evaluate(tiny_config, str(tmp_path / "a"), **quiet)
    tiny_config.batches_per_call = 7
    cut = train.train_and_evaluate(tiny_config, str(tmp_path / "b"), **quiet)
    assert_same_params(whole["train_state"].params, cut["train_state"].params)


@pytest.mark.parametrize("random_iter", [False, True])
def test_partitionings_and_heldout_scores(tiny_config, tmp_path, random_iter):
    c = tiny_config
    c.data.random_iter, c.data.max_tokens, c.data.val_fraction, c.data.test_fraction = random_iter, 2600, 0.15, 0.1
    summary = train.train_and_evaluate(c, str(tmp_path), **quiet)
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert all(1 < r["val_ppl"] < 40 for r in records)
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    r = records[-1]
    assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2)) and r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
    assert summary["best_val_loss"] == min(x["val_loss"] for x in records)
    assert 1 < summary["test_ppl"] < 40 and summary["test_bpc"] == pytest.approx(summary["test_loss"] / math.log(2))
    assert (tmp_path / "best").is_dir()


def test_evaluation_scores_the_whole_split_with_the_state_carried(tiny_config):
    c = tiny_config
    c.data.val_fraction = 0.2
    exp = experiment.Experiment.from_config(c)
    params = exp.init_train_state().params
    got = exp.evaluate(params, "val")
    # By hand: each stream through all its tokens at once, from zeros.
    s = exp.heldout["val"]
    X, Y, M = (np.swapaxes(a, 0, 1).reshape(a.shape[1], -1) for a in (s.X, s.Y, s.mask))
    logits, _ = exp.model.apply(params, exp.model.initial_state(X.shape[0]), X)
    ce = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), Y[..., None], -1)[..., 0]
    start, end = exp.corpus.splits["val"]
    assert s.num_tokens == end - start == M.sum()
    assert got["val_loss"] == pytest.approx(float((ce * M).sum() / M.sum()), rel=1e-5)


def test_eval_every_steps_and_the_best_checkpoint(tiny_config, tmp_path):
    c = tiny_config
    c.data.val_fraction, c.eval_every_steps, c.num_epochs = 0.1, 10, 2  # 22 minibatches an epoch
    train.train_and_evaluate(c, str(tmp_path), **quiet)
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [(r["step"], "val_loss" in r) for r in records] == [
        (10, True), (20, True), (22, False), (30, True), (40, True), (44, True)]  # 44: the end
    best = min(records, key=lambda r: r.get("val_loss", math.inf))
    assert [p.name for p in (tmp_path / "best").iterdir()] == [str(best["step"])]
    assert all(r["elapsed_s"] > 0 for r in records)


@pytest.mark.slow  # several runs
def test_a_time_budget_fixes_the_updates_and_the_schedule_ends_with_it(tiny_config, tmp_path):
    # The budget becomes a number of updates (from the measured speed), the cosine ends there,
    # and --config.num_updates=N repeats the run bit for bit without the budget.
    c = tiny_config
    c.num_epochs, c.time_budget_s, c.batches_per_call, c.data.val_fraction = 10_000, 0.5, 4, 0.1
    c.lr_schedule, c.warmup_steps = "cosine", 3
    summary = train.train_and_evaluate(c, str(tmp_path / "budget"), **quiet)
    records = read_metrics(str(tmp_path / "budget" / "metrics.jsonl"))
    N = summary["num_updates"]
    assert 10 < N < 10_000 * 22 and summary["steps"] == N == records[-1]["step"] == summary["checkpoint_step"]
    # (N below the cap says the budget was kept; seconds only bound gross failures: a loaded machine
    # can run the measured updates several times slower than it measured them)
    assert 0.1 < summary["train_s"] < 60 and not summary["interrupted"] and "val_loss" in records[-1]
    assert int(summary["train_state"].opt_state[1].count) == N  # the run's schedule stands at N ...
    opt = steps.make_optimizer(c, N)  # ... where its learning rate is the cosine's end, 0
    grads = {"w": np.full(1, 0.1, np.float32)}
    state = opt.init({"w": np.ones(1, np.float32)})
    for _ in range(N + 1):
        updates, state = opt.update(grads, state, {"w": np.ones(1, np.float32)})
    assert abs(float(updates["w"][0])) < 1e-6
    # Resuming a finished run says so and trains nothing (nothing is compiled either).
    again = train.train_and_evaluate(c, str(tmp_path / "budget"), **quiet)
    assert again["steps"] == N and len(read_metrics(str(tmp_path / "budget" / "metrics.jsonl"))) == len(records)
    c.time_budget_s, c.num_updates = 0.0, N
    repeat = train.train_and_evaluate(c, str(tmp_path / "repeat"), **quiet)
    assert_same_params(repeat["train_state"], summary["train_state"])


@pytest.mark.parametrize("optimizer,schedule", [("adam", "constant"), ("adamw", "cosine"), ("sgd", "cosine")])
def test_optimizers_and_schedules(tiny_config, tmp_path, optimizer, schedule):
    c = tiny_config
    c.optimizer, c.lr_schedule, c.warmup_steps = optimizer, schedule, 5
    c.weight_decay = 0.1 if optimizer == "adamw" else 1e-4  # decoupled, or L2 in the gradient
    c.learning_rate, c.num_epochs = (4.0 if optimizer == "sgd" else 0.02), 4
    summary = train.train_and_evaluate(c, str(tmp_path), **quiet)
    ppl = [r["train_ppl"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))]
    assert ppl[-1] < 18 and ppl[-1] < 0.9 * ppl[0], ppl  # below letter frequencies (about 17-18)
    ts = summary["train_state"]
    assert float(ts.opt_state[1].hyperparams["learning_rate"]) == pytest.approx(c.learning_rate)  # the peak


def test_schedule_follows_warmup_and_cosine(tiny_config):
    c = tiny_config
    c.lr_schedule, c.warmup_steps, c.learning_rate = "cosine", 10, 2.0
    opt = steps.make_optimizer(c, total_steps=110)
    params = {"w": np.ones(3, np.float32)}
    state = opt.init(params)
    grads = {"w": np.full(3, 0.1, np.float32)}  # under the clipping norm: updates are -lr * g
    rates = []
    for _ in range(111):
        updates, state = opt.update(grads, state, params)
        rates.append(-float(updates["w"][0]) / 0.1)
    assert rates[0] == 0 and rates[5] == pytest.approx(1.0) and rates[10] == pytest.approx(2.0)
    assert rates[60] == pytest.approx(1.0, rel=1e-5) and rates[110] == pytest.approx(0.0, abs=1e-6)


def test_step_schedule_is_zarembas(tiny_config):
    """lr * lr_decay ** max(epoch + 1 - lr_decay_after, 0), epochs counted from 0 (Zaremba's ptb_word_lm)."""
    c = tiny_config
    c.lr_schedule, c.learning_rate, c.lr_decay, c.lr_decay_after, c.optimizer = "step", 1.0, 0.5, 2, "sgd"
    opt = steps.make_optimizer(c, total_steps=50, epoch_steps=10)
    params, grads = {"w": np.ones(3, np.float32)}, {"w": np.full(3, 0.1, np.float32)}
    state, rates = opt.init(params), []
    for _ in range(41):
        updates, state = opt.update(grads, state, params)
        rates.append(-float(updates["w"][0]) / 0.1)
    assert rates[0] == rates[19] == pytest.approx(1.0) and rates[20] == rates[29] == pytest.approx(0.5)
    assert rates[30] == pytest.approx(0.25) and rates[40] == pytest.approx(0.125)
    assert steps.make_optimizer(c, 50, 10) == steps.make_optimizer(c, 99, 10)  # no length: one program


def test_nan_loss_stops_with_a_clear_error(tiny_config, tmp_path):
    tiny_config.learning_rate = float("inf")  # the first update makes every weight inf or nan
    with pytest.raises(UserError, match=r"loss became (nan|inf) in epoch 1 .*checkpoints/0; try a smaller"):
        train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)


def test_a_model_that_cannot_fit_is_refused_before_anything_is_allocated(tiny_config, tmp_path):
    tiny_config.num_hiddens = 100_000
    with pytest.raises(UserError, match=r"needs about \d+\.\d GB to train .* has \d+\.\d GB;"):
        train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("field,value,message", [
    ("learning_rate", -0.5, "config.learning_rate must be positive, got -0.5"),
    ("grad_clip", 0.0, "config.grad_clip must be positive, got 0.0"),
    ("dropout", 1.0, "config.dropout must be in [0, 1), got 1.0"),
    ("num_layers", 0, "config.num_layers must be positive, got 0"),
    ("optimizer", "rmsprop", "config.optimizer must be one of 'sgd', 'adam', 'adamw', 'ntasgd', got 'rmsprop'"),
    ("lr_schedule", "linear", "config.lr_schedule must be one of 'constant', 'cosine', 'step', got 'linear'"),
    ("time_budget_s", -1.0, "config.time_budget_s must be >= 0, got -1.0"),
    ("model", "gru", "config.model must be one of 'scratch', 'concise', got 'gru'"),
    ("data.corpus", "wt103", "config.data.corpus must be one of 'timemachine', 'tinyshakespeare', 'ptb', "
                            "'wikitext2', got 'wt103'"),
    ("data.normalize", "eos", "config.data.normalize='eos' (an <eos> token at each line's end) needs "
                              "config.data.token='word'"),
    ("data.val_fraction", 0.7, "config.data.val_fraction + config.data.test_fraction must be < 1"),
])
def test_config_validation_names_field_and_value(tiny_config, field, value, message):
    c = tiny_config
    if field == "data.val_fraction":
        c.data.test_fraction = 0.3
    *parent, leaf = field.split(".")
    (c.data if parent else c)[leaf] = value
    with pytest.raises(UserError) as e:
        configs.validate(c)
    assert message in str(e.value)


def test_training_split_too_small_names_it(tiny_config, tmp_path):
    tiny_config.data.max_tokens, tiny_config.data.val_fraction = 150, 0.5
    with pytest.raises(UserError, match=r"the training split of .*timemachine.txt has 75 tokens, fewer than one"):
        train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)


def test_config_differences_ignore_new_and_retired_defaults():
    base = configs.get_base_config()
    old = configs.as_dict(base)
    del old["num_layers"], old["data"]["val_fraction"]  # a config saved before these fields existed
    old["data"]["num_val"] = 0  # retired, at its neutral value
    assert configs.differences(old, base) == []
    old["data"]["num_val"] = 500
    assert configs.differences(old, base) == ["data.num_val (500 -> None)"]
    base.num_hiddens, base.num_epochs = 64, 7  # num_epochs may change on resume
    assert configs.differences(old, base)[1] == "num_hiddens (256 -> 64)"


def test_ntasgd_averages_the_iterates_once_switched_on():
    opt = steps.Optimizer("ntasgd", grad_clip=100.0, learning_rate=0.5)
    params = {"w": np.zeros(2, np.float32)}
    ts = steps.TrainState(0, params, opt.init(params))
    iterates = []
    for k in range(6):
        if k == 2:
            ts = steps.start_averaging(ts)
        updates, opt_state = opt.update({"w": np.full(2, -1.0 - k, np.float32)}, ts.opt_state, ts.params)
        ts = steps.TrainState(k + 1, optax_apply(ts.params, updates), opt_state)
        iterates.append(np.asarray(ts.params["w"]))
        if k < 2:  # plain SGD: the weights are evaluated as they are
            np.testing.assert_array_equal(steps.eval_params(ts)["w"], ts.params["w"])
    assert int(ts.opt_state[-1].count) == 4
    np.testing.assert_allclose(steps.eval_params(ts)["w"], np.mean(iterates[2:], axis=0), rtol=1e-6)


def optax_apply(params, updates):
    import optax

    return optax.apply_updates(params, updates)


def test_ntasgd_switches_when_validation_stops_improving(tiny_config, tmp_path, monkeypatch):
    """AWD-LSTM's trigger: a validation loss worse than the best before the last ``nonmono``; from then on
    the averaged weights are evaluated, kept as best and scored on the test split."""
    c = tiny_config
    c.optimizer, c.nonmono, c.learning_rate, c.num_epochs = "ntasgd", 1, 1.0, 6
    c.data.val_fraction, c.data.test_fraction = 0.1, 0.1
    scripted = iter([3.0, 2.0, 3.5, 3.6, 3.7, 3.8])  # the third is worse than the first: switch there
    real = experiment.Experiment.evaluate

    def evaluate(self, params, split, n=None):
        out = real(self, params, split, n)
        return {**out, "val_loss": next(scripted)} if split == "val" and n is None else out

    monkeypatch.setattr(experiment.Experiment, "evaluate", evaluate)
    summary = train.train_and_evaluate(c, str(tmp_path), **quiet)
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    switched = [r for r in records if "averaging_from" in r]
    assert len(switched) == 1 and switched[0]["epoch"] == 3
    ts = summary["train_state"]
    assert bool(ts.opt_state[-1].active) and int(ts.opt_state[-1].count) == int(ts.step) - switched[0]["step"]
    assert not np.allclose(steps.eval_params(ts)["W_xi"], ts.params["W_xi"])
    with pytest.raises(UserError, match="needs a validation split"):
        c.data.val_fraction = 0.0
        experiment.Experiment.from_config(c)


@pytest.mark.parametrize("optimizer", ["sgd", "ntasgd"])
def test_sgd_weight_decay_is_pytorchs_l2_after_clipping(tiny_config, optimizer):
    # AWD-LSTM's wdecay: torch.optim.SGD(weight_decay=wd) adds wd * p to the (clipped) gradient.
    c = tiny_config
    c.optimizer, c.learning_rate, c.weight_decay, c.grad_clip = optimizer, 2.0, 0.01, 1.0
    opt = steps.make_optimizer(c, total_steps=10)
    params = {"w": np.full(4, 3.0, np.float32)}
    grads = {"w": np.full(4, 5.0, np.float32)}  # norm 10: clipped to 1, each 0.5
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], -2.0 * (0.5 + 0.01 * 3.0), rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "ntasgd"])
def test_variable_length_scales_the_rate_by_length(tiny_config, optimizer):
    # AWD-LSTM: lr * seq_len / bptt for the whole update (weight decay's part too), before NT-ASGD's mean.
    c = tiny_config
    c.optimizer, c.learning_rate, c.weight_decay, c.variable_bptt = optimizer, 2.0, 0.01, True
    params = {"w": np.full(4, 3.0, np.float32)}
    grads = {"w": np.array([0.1, -0.2, 0.3, 0.05], np.float32)}
    opt = steps.make_optimizer(c, total_steps=10)
    c.variable_bptt, c.learning_rate = False, 2.0 * 0.75
    plain = steps.make_optimizer(c, total_steps=10)
    state = opt.init(params)
    if optimizer == "ntasgd":
        state = steps.start_averaging(steps.TrainState(0, params, state)).opt_state
    updates, new = opt.update(grads, state, params, np.float32(0.75))
    plain_state = plain.init(params)
    if optimizer == "ntasgd":
        plain_state = steps.start_averaging(steps.TrainState(0, params, plain_state)).opt_state
    want, want_state = plain.update(grads, plain_state, params)
    np.testing.assert_allclose(updates["w"], want["w"], rtol=1e-6)
    if optimizer == "ntasgd":  # the mean took the scaled iterate
        np.testing.assert_allclose(new[-1].avg["w"], want_state[-1].avg["w"], rtol=1e-6)


@pytest.mark.slow
def test_variable_length_trains_resumes_bit_exactly_samples_and_evaluates(tiny_config, tmp_path):
    from test_cells import lifecycle

    c = tiny_config
    c.variable_bptt = True
    lifecycle(c, tmp_path)
    c.variable_bptt = False  # the same run at a fixed length trains on other minibatches
    train.train_and_evaluate(c, str(tmp_path / "fixed"), **quiet)
    losses = lambda d: [r["train_loss"] for r in read_metrics(str(tmp_path / d / "metrics.jsonl"))]
    assert len(losses("fixed")) == len(losses("whole")) and losses("fixed") != losses("whole")
