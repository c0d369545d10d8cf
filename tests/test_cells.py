"""Every cell equals an outside implementation in float64 (outputs, final state, every gradient);
the engine equals each cell's definition; the whole stack works for every cell.

Outside references: PyTorch's ``nn.RNN``, ``nn.GRU``, ``nn.LSTM(proj_size=)``; flax's ``GRUCell``
and ``SimpleCell``; and for the cells no library ships (d2l's GRU, peepholes, CIFG, the
layer-normalized LSTM of PyTorch's ``benchmarks/fastrnns/custom_lstms.py``) the equations
written out here in PyTorch, an independent framework with its own autograd.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from conftest import assert_trees_close
from lstm_jax.cells import lstm_kernel
from lstm_jax import cells, concise, engine, models
from lstm_jax.regularize import Dropout
from lstm_jax.steps import loss_fn

torch = pytest.importorskip("torch")
F = torch.nn.functional

D, H, P, B, T, V = 5, 6, 4, 4, 7, 9
ENGINE_CELLS = [n for n in cells.NAMES if cells.get(n).engine]


def random_layer(name, seed=0, scale=0.5):
    """One layer's parameters (large enough that the gates are far from linear), inputs, state."""
    cell, o = cells.get(name), cells.Options(H, P if name == "lstm_proj" else 0)
    k = jax.random.split(jax.random.key(seed), 4)
    shapes = jax.eval_shape(lambda: cell.init(k[0], D, o))
    params = {n: scale * jax.random.normal(jax.random.fold_in(k[1], i), s.shape, jnp.float64)
              for i, (n, s) in enumerate(shapes.items())}
    if "ln_x_gain" in params:  # gains around 1, as trained ones are
        params = {n: 1 + v if "gain" in n else v for n, v in params.items()}
    state = cell.State(*(jax.random.normal(jax.random.fold_in(k[2], i), (B, n), jnp.float64)
                         for i, n in enumerate(cell.state_sizes(o))))
    x = jax.random.normal(k[3], (T, B, D), jnp.float64)
    return cell, params, state, x


def jax_layer(cell, params, state, x):
    """Outputs (T, B, H), final state, and the gradients of a fixed random functional of both."""
    R = np.random.default_rng(1)

    def f(p, s, x):
        final, hs = jax.lax.scan(lambda s, x_t: cell.step(p, s, x_t), s, x)
        return hs, final

    hs, final = jax.jit(f)(params, state, x)
    weights = jax.tree.map(lambda a: jnp.asarray(R.normal(size=a.shape)), (hs, final))
    loss = lambda p, s, x: sum(jnp.sum(a * w) for a, w in zip(jax.tree.leaves(f(p, s, x)), jax.tree.leaves(weights)))
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, state, x)
    return value, hs, final, grads, weights


def t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True)


def compare(name, torch_forward, to_torch, grads_from_torch, seed=0):
    """``torch_forward(tp, x_TxBxD, state) -> (hs_TxBxH, final_state)`` on ``tp = to_torch(params)``."""
    with jax.enable_x64(True):
        cell, params, state, x = random_layer(name, seed)
        value, hs, final, (g_p, g_s, g_x), weights = jax_layer(cell, params, state, x)
    tp = to_torch(params)
    ts, tx = [t(a) for a in state], t(x)
    t_hs, t_final = torch_forward(tp, tx, ts)
    w_hs, w_final = weights
    t_value = (t_hs * t(w_hs)).sum() + sum((a * t(w)).sum() for a, w in zip(t_final, w_final))
    t_value.backward()
    close = functools.partial(np.testing.assert_allclose, rtol=1e-10, atol=1e-12)
    close(value, t_value.item())
    close(hs, t_hs.detach().numpy())
    for a, b in zip(final, t_final):
        close(a, b.detach().numpy())
    mapped = grads_from_torch(tp)
    assert set(mapped) == set(g_p), (sorted(mapped), sorted(g_p))
    for n in g_p:
        close(g_p[n], mapped[n], err_msg=n)
    for a, b in zip(g_s, ts):
        close(a, b.grad.numpy())
    close(g_x, tx.grad.numpy())


def _nn(module, weights: dict):
    with torch.no_grad():
        for n, w in weights.items():
            getattr(module, n).copy_(torch.tensor(np.asarray(w)))
    return module.double()


def test_rnn_equals_torch_nn_rnn():
    rnn = torch.nn.RNN(D, H, nonlinearity="tanh").double()

    def to_torch(p):
        return _nn(rnn, {"weight_ih_l0": p["W_xh"].T, "weight_hh_l0": p["W_hh"].T, "bias_ih_l0": p["b_h"],
                         "bias_hh_l0": np.zeros(H)})

    def forward(m, x, s):
        out, h = m(x, s[0][None])
        return out, (h[0],)

    compare("rnn", forward, to_torch, lambda m: {"W_xh": m.weight_ih_l0.grad.T, "W_hh": m.weight_hh_l0.grad.T,
                                                  "b_h": m.bias_ih_l0.grad})


def test_gru_reset_after_equals_torch_nn_gru():
    gru = torch.nn.GRU(D, H).double()
    cat = lambda p, prefix: np.concatenate([p[f"{prefix}{g}"] for g in "rzn"], axis=-1)

    def to_torch(p):
        return _nn(gru, {"weight_ih_l0": cat(p, "W_x").T, "weight_hh_l0": cat(p, "W_h").T,
                         "bias_ih_l0": cat(p, "b_"), "bias_hh_l0": np.concatenate([np.zeros(2 * H), p["b_hn"]])})

    def forward(m, x, s):
        out, h = m(x, s[0][None])
        return out, (h[0],)

    def grads(m):
        gi, gh, gb = m.weight_ih_l0.grad.T, m.weight_hh_l0.grad.T, m.bias_ih_l0.grad
        out = {"b_hn": m.bias_hh_l0.grad[2 * H:]}
        for k, g in enumerate("rzn"):
            out.update({f"W_x{g}": gi[:, k * H:(k + 1) * H], f"W_h{g}": gh[:, k * H:(k + 1) * H],
                        f"b_{g}": gb[k * H:(k + 1) * H]})
        return out

    compare("gru_reset_after", forward, to_torch, grads)


TORCH_GATES = "ifco"  # PyTorch's (i, f, g, o) in d2l's names


def test_lstm_proj_equals_torch_nn_lstm_proj_size():
    lstm = torch.nn.LSTM(D, H, proj_size=P).double()
    cat = lambda p, prefix: np.concatenate([p[f"{prefix}{g}"] for g in TORCH_GATES], axis=-1)

    def to_torch(p):
        return _nn(lstm, {"weight_ih_l0": cat(p, "W_x").T, "weight_hh_l0": cat(p, "W_h").T,
                          "bias_ih_l0": cat(p, "b_"), "bias_hh_l0": np.zeros(4 * H), "weight_hr_l0": p["W_hr"].T})

    def forward(m, x, s):
        out, (h, c) = m(x, (s[0][None], s[1][None]))
        return out, (h[0], c[0])

    def grads(m):
        gi, gh, gb = m.weight_ih_l0.grad.T, m.weight_hh_l0.grad.T, m.bias_ih_l0.grad
        out = {"W_hr": m.weight_hr_l0.grad.T}
        for k, g in enumerate(TORCH_GATES):
            out.update({f"W_x{g}": gi[:, k * H:(k + 1) * H], f"W_h{g}": gh[:, k * H:(k + 1) * H],
                        f"b_{g}": gb[k * H:(k + 1) * H]})
        return out

    compare("lstm_proj", forward, to_torch, grads)


def _written_out(step):
    """A reference written out in PyTorch: ``step(tp, x_t, state) -> state`` looped over time."""
    def forward(tp, x, s):
        hs = []
        for x_t in x:
            s = step(tp, x_t, s)
            hs.append(s[0])
        return torch.stack(hs), s
    return forward


def _leaves(p):
    return {n: t(v) for n, v in p.items()}


def _grads(tp):
    return {n: v.grad.numpy() for n, v in tp.items()}


def test_d2l_gru_equals_its_formulas():
    def step(p, x, s):  # d2l 10.2, reset gate before the candidate's product
        h = s[0]
        Z = torch.sigmoid(x @ p["W_xz"] + h @ p["W_hz"] + p["b_z"])
        R = torch.sigmoid(x @ p["W_xr"] + h @ p["W_hr"] + p["b_r"])
        H_tilde = torch.tanh(x @ p["W_xh"] + (R * h) @ p["W_hh"] + p["b_h"])
        return (Z * h + (1 - Z) * H_tilde,)

    compare("gru", _written_out(step), _leaves, _grads)


def test_peephole_lstm_equals_its_formulas():
    def step(p, x, s):  # Greff et al. 2015, vanilla LSTM: i, f see c_{t-1}, o sees c_t
        h, c = s
        g = lambda n: x @ p[f"W_x{n}"] + h @ p[f"W_h{n}"] + p[f"b_{n}"]
        i = torch.sigmoid(g("i") + p["w_ci"] * c)
        f = torch.sigmoid(g("f") + p["w_cf"] * c)
        c = f * c + i * torch.tanh(g("c"))
        return torch.sigmoid(g("o") + p["w_co"] * c) * torch.tanh(c), c

    compare("lstm_peephole", _written_out(step), _leaves, _grads)


def test_cifg_lstm_equals_its_formulas():
    def step(p, x, s):  # Greff et al. 2015, CIFG: f = 1 - i
        h, c = s
        g = lambda n: x @ p[f"W_x{n}"] + h @ p[f"W_h{n}"] + p[f"b_{n}"]
        i = torch.sigmoid(g("i"))
        c = (1 - i) * c + i * torch.tanh(g("c"))
        return torch.sigmoid(g("o")) * torch.tanh(c), c

    compare("lstm_cifg", _written_out(step), _leaves, _grads)


def test_layernorm_lstm_equals_custom_lstms_layernorm_cell():
    # PyTorch's benchmarks/fastrnns/custom_lstms.py LayerNormLSTMCell: nn.LayerNorm(4H) on each
    # product (their betas are the only gate biases), gates chunked (i, f, g, o), and
    # cy = layernorm_c(f * cx + i * g) carried; hy = o * tanh(cy). Our columns are (i, f, o, c~):
    # LayerNorm over all 4H columns does not care about their order, so the torch side
    # gets them permuted.
    perm = np.concatenate([np.arange(k * H, (k + 1) * H) for k in (0, 1, 3, 2)])  # (i, f, o, c) -> (i, f, c, o)

    def to_torch(p):
        tp = {"weight_ih": np.concatenate([p[f"W_x{g}"] for g in TORCH_GATES], axis=1).T,
              "weight_hh": np.concatenate([p[f"W_h{g}"] for g in TORCH_GATES], axis=1).T,
              **{n: p[n][perm] for n in ("ln_x_gain", "ln_x_bias", "ln_h_gain", "ln_h_bias")},
              "ln_c_gain": p["ln_c_gain"], "ln_c_bias": p["ln_c_bias"]}
        return _leaves(tp)

    def step(p, x, s):
        hx, cx = s
        igates = F.layer_norm(x @ p["weight_ih"].t(), (4 * H,), p["ln_x_gain"], p["ln_x_bias"], 1e-5)
        hgates = F.layer_norm(hx @ p["weight_hh"].t(), (4 * H,), p["ln_h_gain"], p["ln_h_bias"], 1e-5)
        ingate, forgetgate, cellgate, outgate = (igates + hgates).chunk(4, 1)
        ingate, forgetgate, outgate = torch.sigmoid(ingate), torch.sigmoid(forgetgate), torch.sigmoid(outgate)
        cy = F.layer_norm(forgetgate * cx + ingate * torch.tanh(cellgate), (H,), p["ln_c_gain"], p["ln_c_bias"], 1e-5)
        return outgate * torch.tanh(cy), cy

    def grads(tp):
        gi, gh = tp["weight_ih"].grad.numpy().T, tp["weight_hh"].grad.numpy().T
        out = {}
        for k, g in enumerate(TORCH_GATES):
            out[f"W_x{g}"], out[f"W_h{g}"] = gi[:, k * H:(k + 1) * H], gh[:, k * H:(k + 1) * H]
        inv = np.argsort(perm)
        for n in ("ln_x_gain", "ln_x_bias", "ln_h_gain", "ln_h_bias"):
            out[n] = tp[n].grad.numpy()[inv]
        out["ln_c_gain"], out["ln_c_bias"] = tp["ln_c_gain"].grad.numpy(), tp["ln_c_bias"].grad.numpy()
        return out

    compare("lstm_layernorm", _written_out(step), to_torch, grads)


def test_lstm_equals_torch_nn_lstm_one_layer():
    lstm = torch.nn.LSTM(D, H).double()
    cat = lambda p, prefix: np.concatenate([p[f"{prefix}{g}"] for g in TORCH_GATES], axis=-1)

    def to_torch(p):
        return _nn(lstm, {"weight_ih_l0": cat(p, "W_x").T, "weight_hh_l0": cat(p, "W_h").T,
                          "bias_ih_l0": cat(p, "b_"), "bias_hh_l0": np.zeros(4 * H)})

    def forward(m, x, s):
        out, (h, c) = m(x, (s[0][None], s[1][None]))
        return out, (h[0], c[0])

    def grads(m):
        gi, gh, gb = m.weight_ih_l0.grad.T, m.weight_hh_l0.grad.T, m.bias_ih_l0.grad
        return {k: v for g_i, g in enumerate(TORCH_GATES) for k, v in (
            (f"W_x{g}", gi[:, g_i * H:(g_i + 1) * H]), (f"W_h{g}", gh[:, g_i * H:(g_i + 1) * H]),
            (f"b_{g}", gb[g_i * H:(g_i + 1) * H]))}

    compare("lstm", forward, to_torch, grads)


# --------------------------------------------------------------------------
# The stacked model over every cell: engine = definition, flax = scratch, gradient checks
# --------------------------------------------------------------------------


def lm_inputs(name, seed, dtype=jnp.float64, num_layers=2, embed_dim=3):
    model = models.LanguageModel("scratch", V, H, num_layers=num_layers, embed_dim=embed_dim, cell=name,
                              proj_size=P if name == "lstm_proj" else 0)
    k = jax.random.split(jax.random.key(seed), 4)
    shapes = jax.eval_shape(model.init, k[0])
    leaves, tree = jax.tree.flatten(shapes)
    params = jax.tree.unflatten(tree, [0.5 * jax.random.normal(jax.random.fold_in(k[1], i), s.shape, dtype)
                                       for i, s in enumerate(leaves)])
    state = jax.tree.map(lambda a: jax.random.normal(k[2], a.shape, dtype), model.initial_state(B))
    tokens = jax.random.randint(k[3], (B, T), 0, V)
    return model, params, state, tokens, (tokens + 1) % V


def lm_loss_and_grads(model, params, state, tokens, targets, key=None, lanes=None):
    apply = model.apply if lanes is None else functools.partial(
        models.fast_apply, lanes=lanes, drop=model.drop, cell=model.cell)

    def loss(p, s):
        logits, new = apply(p, s, tokens, key)
        l = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        return l + 0.3 * sum(jnp.sum(jnp.sin(a)) for a in new)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, state)


@pytest.mark.parametrize("name", ENGINE_CELLS)
@pytest.mark.parametrize("lanes,dropout", [(1, 0.0), (2, 0.4), (2, Dropout(0.2, 0.4, 0.25, True, 0.1, 0.3))])
def test_engine_equals_definition_float64(name, lanes, dropout):
    # Two layers, an embedding, a carried state (its gradient too), dropout between layers; AWD-LSTM's
    # (locked masks, embedding rows, weight drop) draw the same masks in both.
    with jax.enable_x64(True):
        model, params, state, tokens, targets = lm_inputs(name, 1)
        key = jax.random.key(2) if dropout else None
        fast = dataclasses_replace(model, impl="fast", dropout=dropout)
        ref = dataclasses_replace(model, impl="reference", dropout=dropout)
        loss_f, grads_f = lm_loss_and_grads(fast, params, state, tokens, targets, key, lanes)
        loss_r, grads_r = lm_loss_and_grads(ref, params, state, tokens, targets, key)
    np.testing.assert_allclose(loss_f, loss_r, rtol=1e-12)
    assert_trees_close(grads_f, grads_r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ENGINE_CELLS)
def test_engine_equals_definition_one_hot_float64(name):
    # d2l's one-hot input: the first layer looks rows up (and a cell's input-only work, the
    # layer-normalized LSTM's norm, runs on the vocabulary's rows before the lookup).
    with jax.enable_x64(True):
        model, params, state, tokens, targets = lm_inputs(name, 5, embed_dim=0)
        loss_f, grads_f = lm_loss_and_grads(dataclasses_replace(model, impl="fast"), params, state, tokens, targets,
                                            lanes=2)
        loss_r, grads_r = lm_loss_and_grads(dataclasses_replace(model, impl="reference"), params, state, tokens,
                                            targets)
    np.testing.assert_allclose(loss_f, loss_r, rtol=1e-12)
    assert_trees_close(grads_f, grads_r, rtol=1e-9, atol=1e-12)


def dataclasses_replace(model, **kw):
    import dataclasses

    return dataclasses.replace(model, **kw)


@pytest.mark.parametrize("name", [n for n in ENGINE_CELLS if n != "lstm"])
def test_generic_kernel_check_grads_float64(name):
    # The vjp kernel's reverse mode against numerical differences, through the whole model.
    with jax.enable_x64(True):
        model, params, state, tokens, targets = lm_inputs(name, 3, num_layers=1, embed_dim=0)
        model = dataclasses_replace(model, impl="fast")

        def loss(p, s):
            l, new = loss_fn(model, p, s, tokens, targets)
            return l + 0.5 * sum(jnp.sum(a * a) for a in new)

        check_grads(jax.jit(loss), (params, state), order=1, modes=("rev",))


@pytest.mark.parametrize("name", ["lstm", "lstm_peephole"])
def test_generic_kernel_equals_the_lstm_kernel(name):
    # The LSTM (with peepholes too) through jax.vjp of its elementwise function = the hand-written
    # backward pass, in every gradient (the peepholes' included).
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(4), 5)
        xp = tuple(jax.random.normal(k[0 + j], (T, 2, 4 * H), jnp.float64) for j in range(2))
        W = 0.5 * jax.random.normal(k[2], (H, 4 * H), jnp.float64)
        h0 = tuple(jax.random.normal(jax.random.fold_in(k[3], j), (2, H), jnp.float64) for j in range(2))
        c0 = tuple(jax.random.normal(jax.random.fold_in(k[4], j), (2, H), jnp.float64) for j in range(2))
        eng = cells.get(name).engine
        LSTMState = cells.get(name).State
        q = {n: 0.5 * jax.random.normal(jax.random.fold_in(k[0], 9 + i), (H,), jnp.float64)
             for i, n in enumerate(lstm_kernel.PEEPHOLES)} if name == "lstm_peephole" else {}

        def generic(q, xp, W, h0, c0):
            hs, final = engine.cell_recurrence(eng.pointwise, True, q, xp, W, tuple(map(LSTMState, h0, c0)))
            return sum(jnp.sum(jnp.sin(h)) for h in hs) + sum(jnp.sum(s.h * s.c) for s in final)

        def handwritten(q, xp, W, h0, c0):
            hs, h, c = lstm_kernel.recurrence(xp, W, h0, c0, q)
            return sum(jnp.sum(jnp.sin(a)) for a in hs) + sum(jnp.sum(a * b) for a, b in zip(h, c))

        a = jax.jit(jax.value_and_grad(generic, argnums=(0, 1, 2, 3, 4)))(q, xp, W, h0, c0)
        b = jax.jit(jax.value_and_grad(handwritten, argnums=(0, 1, 2, 3, 4)))(q, xp, W, h0, c0)
    assert set(a[1][0]) == set(q)  # the peepholes' gradients are compared too
    assert_trees_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", ["rnn", "gru_reset_after"])
def test_concise_flax_cell_equals_scratch(name):
    # flax's SimpleCell / GRUCell with our weights mapped onto them: same logits, state, gradients.
    with jax.enable_x64(True):
        model, params, state, tokens, targets = lm_inputs(name, 5)
        concise = dataclasses_replace(model, variant="concise")
        flax_params = to_flax(name, params)
        assert jax.tree.structure(flax_params) == jax.tree.structure(jax.eval_shape(concise.init, jax.random.key(0)))
        loss_c, (gp_c, gs_c) = lm_loss_and_grads(concise, flax_params, state, tokens, targets)
        loss_s, (gp_s, gs_s) = lm_loss_and_grads(model, params, state, tokens, targets)
    np.testing.assert_allclose(loss_c, loss_s, rtol=1e-12)
    assert_trees_close(gs_c, gs_s, rtol=1e-10, atol=1e-12)
    assert_trees_close(gp_c, to_flax(name, gp_s, gradient=True), rtol=1e-10, atol=1e-12)


def to_flax(name, params, gradient=False):
    """Our parameters as flax's SimpleCell / GRUCell trees (the r, z biases live on flax's input side)."""
    out = {"head": {"kernel": params["W_hq"], "bias": params["b_q"]}, "embed": {"embedding": params["embed"]}}
    for l in range(models.num_layers(params)):
        p = models.layer(params, l)
        if name == "rnn":
            cell = {"i": {"kernel": p["W_xh"], "bias": p["b_h"]}, "h": {"kernel": p["W_hh"]}}
        else:
            cell = {f"i{g}": {"kernel": p[f"W_x{g}"], "bias": p[f"b_{g}"]} for g in "rzn"}
            cell.update({f"h{g}": {"kernel": p[f"W_h{g}"]} for g in "rzn"})
            cell["hn"]["bias"] = p["b_hn"]
        out[concise._flax_layer(l, name)] = cell
    return {"params": out}


@pytest.mark.parametrize("name", cells.NAMES)
def test_every_cell_trains_a_step_in_every_dtype(name):
    # Stacked, with dropout, in float32 and bfloat16: finite loss and a finite, non-zero gradient.
    for dtype in ("float32", "bfloat16"):
        model = models.LanguageModel("scratch", V, H, dtype, num_layers=2, dropout=0.3, cell=name,
                                  proj_size=P if name == "lstm_proj" else 0)
        params = model.init(jax.random.key(0))
        tokens = jax.random.randint(jax.random.key(1), (B, T), 0, V)
        (loss, _), grads = jax.jit(jax.value_and_grad(
            lambda p: loss_fn(model, p, model.initial_state(B), tokens, tokens, jax.random.key(2)),
            has_aux=True))(params)
        assert np.isfinite(float(loss)) and abs(float(loss) - np.log(V)) < 0.1, (dtype, loss)
        norms = [float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)]
        assert all(np.isfinite(norms)) and max(norms) > 0


def test_forget_bias_initializes_the_lstm_familys_forget_gate():
    for name in ("lstm", "lstm_peephole", "lstm_proj"):
        p = models.init_params(jax.random.key(0), V, H, cell=name, forget_bias=1.0,
                               proj_size=P if name == "lstm_proj" else 0)
        np.testing.assert_array_equal(p["b_f"], np.ones(H))
        assert not np.any(p["b_i"])
    p = models.init_params(jax.random.key(0), V, H, cell="lstm_layernorm", forget_bias=1.0)
    np.testing.assert_array_equal(p["ln_x_bias"], np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)])
    # the default is d2l's, and today's LSTM draws the same weights as before cells existed
    base = models.init_params(jax.random.key(0), V, H)
    assert not np.any(base["b_f"]) and tuple(base) == cells.lstm.PARAM_NAMES


# --------------------------------------------------------------------------
# Every cell through the whole program: train, stop, resume bit-exactly, sample, evaluate
# --------------------------------------------------------------------------


def lifecycle(config, tmp_path):
    from conftest import assert_same_params, quiet
    from lstm_jax import checkpoint, evaluate, predict, train
    from lstm_jax.metrics import read_metrics

    c = config
    c.num_layers, c.dropout, c.num_epochs, c.batches_per_call = 2, 0.3, 2, 5
    c.data.val_fraction, c.data.test_fraction, c.checkpoint_every = 0.1, 0.1, 100
    whole = train.train_and_evaluate(c, str(tmp_path / "whole"), **quiet)
    polls = iter(range(10**9))
    first = train.train_and_evaluate(c, str(tmp_path / "cut"), should_stop=lambda: next(polls) >= 5, **quiet)
    assert first["interrupted"]
    c.batches_per_call = 3
    second = train.train_and_evaluate(c, str(tmp_path / "cut"), **quiet)
    assert_same_params(second["train_state"], whole["train_state"])
    rows = lambda d: [(r["step"], r["train_loss"], r.get("val_loss")) for r in read_metrics(str(d / "metrics.jsonl"))]
    assert rows(tmp_path / "cut") == rows(tmp_path / "whole")
    assert whole["final_train_ppl"] < 27 and np.isfinite(whole["test_loss"])  # it learned something
    loaded = checkpoint.load_model(str(tmp_path / "cut"))
    assert loaded.model.cell == c.cell
    text = predict.continue_text(loaded.model, loaded.params, loaded.vocab, "time traveller", 20)
    assert text.startswith("time traveller") and len(text) == len("time traveller") + 20
    scored = evaluate.evaluate(str(tmp_path / "cut"), "test")
    assert scored["eval_loss"] == pytest.approx(whole["test_loss"], rel=1e-6)


@pytest.mark.slow  # several runs
def test_a_gru_trains_resumes_samples_and_evaluates(tiny_config, tmp_path):
    tiny_config.cell = "gru"
    lifecycle(tiny_config, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in cells.NAMES if n != "gru"])
def test_every_cell_trains_resumes_samples_and_evaluates(tiny_config, tmp_path, name):
    tiny_config.cell = name
    tiny_config.proj_size = 16 if name == "lstm_proj" else 0
    tiny_config.forget_bias = 1.0 if name == "lstm_peephole" else 0.0
    lifecycle(tiny_config, tmp_path)


@pytest.mark.parametrize("name", ["rnn", "gru_reset_after"])
def test_concise_cells_train(tiny_config, tmp_path, name):
    from conftest import quiet
    from lstm_jax import train

    tiny_config.model, tiny_config.cell, tiny_config.num_epochs = "concise", name, 2
    summary = train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)
    assert summary["final_train_ppl"] < 27


@pytest.mark.parametrize("fields,message", [
    (dict(cell="lsmt"), "config.cell must be one of 'lstm', 'lstm_peephole', 'lstm_cifg', 'lstm_layernorm', "
                        "'lstm_proj', 'gru', 'gru_reset_after', 'rnn', 'min_gru', 'min_lstm', 'slstm', got 'lsmt'"),
    (dict(cell="gru", model="concise"), "config.model='concise' (flax's own cell) exists for cell lstm, "
                                        "gru_reset_after, rnn; flax has no gru: use config.model='scratch'"),
    (dict(cell="gru", lstm_impl="fast"), "config.lstm_impl='fast': cell gru (scratch) does not run through the engine"),
    (dict(cell="rnn", model="concise", lstm_impl="fast"), "cell rnn (concise) does not run through the engine"),
    (dict(cell="gru", proj_size=16), "config.proj_size=16: only cell lstm_proj has a projection, not gru"),
    (dict(cell="rnn", forget_bias=1.0), "config.forget_bias=1.0: cell rnn (scratch) has no forget-gate bias"),
    (dict(cell="lstm", model="concise", forget_bias=1.0), "cell lstm (concise) has no forget-gate bias"),
])
def test_cell_fields_are_checked_with_one_line(tiny_config, fields, message):
    from lstm_jax import configs
    from lstm_jax.errors import UserError

    for k, v in fields.items():
        tiny_config[k] = v
    with pytest.raises(UserError) as e:
        configs.validate(tiny_config)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_a_misspelled_cell_on_the_command_line_is_one_error_line():
    from conftest import TINY_CLI, one_error_line, run_cli

    line = one_error_line(run_cli("-m", "lstm_jax.train", *TINY_CLI, "--config.cell=lstn"))
    assert "config.cell must be one of 'lstm'," in line and "got 'lstn'" in line


def test_lstm_proj_defaults_to_half_the_hidden_size():
    model = models.LanguageModel("scratch", V, 8, cell="lstm_proj")
    p = model.init(jax.random.key(0))
    assert p["W_hr"].shape == (8, 4) and p["W_hi"].shape == (4, 8) and p["W_hq"].shape == (4, V)
    assert model.initial_state(2).h.shape == (2, 1, 4) and model.initial_state(2).c.shape == (2, 1, 8)
