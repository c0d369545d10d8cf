"""scratch = PyTorch's nn.LSTM(num_layers=2) with mapped weights: logits, state, loss and gradients.

The PyTorch model and the mapping of lstm_jax's d2l-named parameters onto it are
``scripts/torch_lm.py``'s, the ones the benchmarks use. torch is a test extra (``pip install -e '.[dev]'``).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from lstm_jax import models
from lstm_jax.cells.lstm import LSTMState

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(REPO, "scripts"))
from torch_lm import TORCH_GATES, TorchLM, load_params  # noqa: E402

V, H, L, B, T, E = 11, 8, 2, 3, 6, 5


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("embed", [False, True])
def test_scratch_equals_torch_nn_lstm(impl, embed):
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(0), 6)
        shapes = jax.eval_shape(lambda: models.init_params(k[0], V, H, L, E if embed else 0))
        leaves, tree = jax.tree.flatten(shapes)
        params = jax.tree.unflatten(tree, [0.5 * jax.random.normal(jax.random.fold_in(k[1], i), s.shape, jnp.float64)
                                           for i, s in enumerate(leaves)])
        state = LSTMState(jax.random.normal(k[2], (B, L, H), jnp.float64), jax.random.normal(k[3], (B, L, H), jnp.float64))
        tokens = np.asarray(jax.random.randint(k[4], (B, T), 0, V))
        targets = np.asarray(jax.random.randint(k[5], (B, T), 0, V))
        model = models.LanguageModel("scratch", V, H, impl=impl, num_layers=L, embed_dim=E if embed else 0)

        def loss(p, s):
            logits, new = model.apply(p, s, jnp.asarray(tokens))
            ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(targets)[..., None], -1).mean()
            return ce, (logits, new)

        (loss_j, (logits_j, new_j)), (g_params, g_state) = jax.jit(
            jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, state)

    model_t = load_params(TorchLM(V, H, L, E if embed else 0).double(), params)
    lstm_t, head, emb = model_t.rnn, model_t.head, model_t.embed
    h0 = torch.tensor(np.asarray(state.h).transpose(1, 0, 2).copy()).requires_grad_()
    c0 = torch.tensor(np.asarray(state.c).transpose(1, 0, 2).copy()).requires_grad_()
    logits_TxBxV, (h, c) = model_t(torch.tensor(tokens.T.copy()), (h0, c0))
    logits_t = logits_TxBxV.transpose(0, 1)
    loss_t = torch.nn.functional.cross_entropy(logits_t.reshape(-1, V), torch.tensor(targets).reshape(-1))
    loss_t.backward()

    np.testing.assert_allclose(loss_j, loss_t.item(), rtol=1e-12)
    np.testing.assert_allclose(logits_j, logits_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new_j.h, h.detach().numpy().transpose(1, 0, 2), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new_j.c, c.detach().numpy().transpose(1, 0, 2), rtol=1e-10, atol=1e-12)
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), b.detach().numpy(), rtol=1e-9, atol=1e-12)
    for l in range(L):
        gl = models.layer(g_params, l)
        close(np.concatenate([gl[f"W_x{g}"].T for g in TORCH_GATES]), getattr(lstm_t, f"weight_ih_l{l}").grad)
        close(np.concatenate([gl[f"W_h{g}"].T for g in TORCH_GATES]), getattr(lstm_t, f"weight_hh_l{l}").grad)
        close(np.concatenate([gl[f"b_{g}"] for g in TORCH_GATES]), getattr(lstm_t, f"bias_hh_l{l}").grad)
        close(np.concatenate([gl[f"b_{g}"] for g in TORCH_GATES]), getattr(lstm_t, f"bias_ih_l{l}").grad)
    close(g_params["W_hq"].T, head.weight.grad)
    close(g_params["b_q"], head.bias.grad)
    if embed:
        close(g_params["embed"], emb.weight.grad)
    close(np.asarray(g_state.h).transpose(1, 0, 2), h0.grad)
    close(np.asarray(g_state.c).transpose(1, 0, 2), c0.grad)
