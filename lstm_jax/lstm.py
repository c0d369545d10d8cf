"""The LSTM from scratch, as pure functions (d2l's ``get_lstm_params`` and ``lstm``).

One layer is d2l's chapter; stacked layers are its deep-RNN section: layer
l's hidden states are layer l+1's inputs. Shapes are in the names: B batch,
T time steps, L layers, H hidden units, V vocabulary, E embedding width.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Params = dict

# d2l's 14 arrays, in d2l's order: input, forget, output gate, candidate, head.
PARAM_NAMES = ("W_xi", "W_hi", "b_i", "W_xf", "W_hf", "b_f", "W_xo", "W_ho", "b_o",
               "W_xc", "W_hc", "b_c", "W_hq", "b_q")
LAYER_NAMES = PARAM_NAMES[:12]  # one layer's gates; layers above the first live under "layer<l>"
GATES = ("i", "f", "o", "c")


class LSTMState(NamedTuple):
    """The recurrent state, d2l's ``(H, C)`` for every layer: each (B, L, H)."""

    h: jax.Array
    c: jax.Array


def layer_key(l: int) -> str:
    return f"layer{l}"


def num_layers(params: Params) -> int:
    return 1 + sum(1 for k in params if k.startswith("layer"))


def layer(params: Params, l: int) -> Params:
    """Layer ``l``'s 12 gate arrays, under d2l's names (layer 0's are top-level, as in d2l)."""
    return {n: params[n] for n in LAYER_NAMES} if l == 0 else params[layer_key(l)]


def init_params(key: jax.Array, vocab_size: int, num_hiddens: int, num_layers: int = 1,
                embed_dim: int = 0) -> Params:
    """Weights ~ N(0, 0.01^2) and zero biases, as d2l's ``get_lstm_params``.

    With ``embed_dim`` an embedding table ``embed`` (V, E) ~ N(0, 1), as
    PyTorch's and flax's, comes first and layer 0's input weights are (E, H).
    """
    V, H = vocab_size, num_hiddens

    def gates(k, inputs):
        keys = dict(zip(PARAM_NAMES, jax.random.split(k, len(PARAM_NAMES))))
        out = {}
        for g in GATES:
            out[f"W_x{g}"] = 0.01 * jax.random.normal(keys[f"W_x{g}"], (inputs, H))
            out[f"W_h{g}"] = 0.01 * jax.random.normal(keys[f"W_h{g}"], (H, H))
            out[f"b_{g}"] = jnp.zeros((H,))
        return out, keys

    params, keys = gates(key, embed_dim or V)
    params["W_hq"] = 0.01 * jax.random.normal(keys["W_hq"], (H, V))
    params["b_q"] = jnp.zeros((V,))
    params = {n: params[n] for n in PARAM_NAMES}  # d2l's order
    for l in range(1, num_layers):
        params[layer_key(l)] = {n: a for n, a in gates(jax.random.fold_in(key, l), H)[0].items()
                                if n in LAYER_NAMES}
    if embed_dim:
        params["embed"] = jax.random.normal(jax.random.fold_in(key, 10_000), (V, embed_dim))
    return params


def lstm_step(params: Params, carry: tuple, x_t: jax.Array) -> tuple[tuple, jax.Array]:
    """One time step of one layer: ``carry = (h, c)``, each (B, H).

    ``x_t`` is either token ids (B,) or input vectors (B, D). d2l multiplies a
    one-hot input by ``W_x*``; taking row ``x_t`` of ``W_x*`` is the same
    result without the (B, V) x (V, H) product.
    """
    p = params
    h, c = carry
    if jnp.issubdtype(x_t.dtype, jnp.integer):
        x = lambda g: jnp.take(p[f"W_x{g}"], x_t, axis=0)
    else:
        x = lambda g: x_t @ p[f"W_x{g}"]
    I = jax.nn.sigmoid(x("i") + h @ p["W_hi"] + p["b_i"])
    F = jax.nn.sigmoid(x("f") + h @ p["W_hf"] + p["b_f"])
    O = jax.nn.sigmoid(x("o") + h @ p["W_ho"] + p["b_o"])
    C_tilde = jnp.tanh(x("c") + h @ p["W_hc"] + p["b_c"])
    c = F * c + I * C_tilde
    h = O * jnp.tanh(c)
    return (h, c), h


def dropout_mask(key: jax.Array, site: int, shape: tuple, rate: float, dtype) -> jax.Array:
    """Inverted dropout's multiplier at connection ``site``: 0 or 1 / (1 - rate), per unit.

    Layer l's input is site l (layer 0's only with an embedding), the head's input
    site L. Every implementation draws its masks here, time-major (T, B, D), so
    the same key drops the same units in all of them.
    """
    keep = jax.random.bernoulli(jax.random.fold_in(key, site), 1 - rate, shape)
    return jnp.where(keep, 1 / (1 - rate), 0).astype(dtype)


def dropout(key: jax.Array | None, site: int, x_TxBxD: jax.Array, rate: float) -> jax.Array:
    """``x`` times its dropout mask; ``key=None`` (evaluation, generation) or ``rate=0``: ``x``."""
    if key is None or rate == 0:
        return x_TxBxD
    return x_TxBxD * dropout_mask(key, site, x_TxBxD.shape, rate, x_TxBxD.dtype)


def layer_input(params: Params, tokens_TxB: jax.Array, key, rate: float) -> jax.Array:
    """Layer 0's input: token ids (a row lookup, d2l's one-hot) or embedded and dropped out."""
    if "embed" not in params:
        return tokens_TxB
    return dropout(key, 0, jnp.take(params["embed"], tokens_TxB, axis=0), rate)


def apply(params: Params, state: LSTMState, tokens_BxT: jax.Array, key=None, rate: float = 0.0
          ) -> tuple[jax.Array, LSTMState]:
    """Logits (B, T, V) and the final state of every layer; the head runs once, after the scan."""
    x = layer_input(params, tokens_BxT.T, key, rate)  # time-major, as the scan runs
    hs, cs = [], []
    for l in range(num_layers(params)):
        if l:
            x = dropout(key, l, x, rate)
        p = layer(params, l)
        (h, c), x = jax.lax.scan(lambda carry, x_t: lstm_step(p, carry, x_t), (state.h[:, l], state.c[:, l]), x)
        hs.append(h)
        cs.append(c)
    x = dropout(key, len(hs), x, rate)
    logits_TxBxV = x @ params["W_hq"] + params["b_q"]
    return jnp.swapaxes(logits_TxBxV, 0, 1), LSTMState(jnp.stack(hs, 1), jnp.stack(cs, 1))
