"""The concise model: flax's own recurrent cells under ``nn.RNN`` (d2l's concise implementation), and
the LSTM's parameters in both layouts (flax's ``OptimizedLSTMCell`` and ours), so one set of weights
runs through either. :class:`lstm_jax.models.LanguageModel` is how everything else meets it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstm_jax import cells
from lstm_jax.cells import lstm
from lstm_jax.cells.lstm import LSTMState
from lstm_jax.models import Params, layer, layer_key, layer_state, num_layers, stack_layers
from lstm_jax.regularize import dropout


class ConciseModel(nn.Module):
    """d2l's concise model: library recurrent layers over one-hot (or embedded) inputs, then a dense head."""

    cell: str
    vocab_size: int
    num_hiddens: int
    num_layers: int = 1
    embed_dim: int = 0
    dropout: float = 0.0
    dtype: Any = None  # compute dtype; None follows the parameters

    @nn.compact
    def __call__(self, state, tokens_BxT: jax.Array, key=None):
        dtype = self.dtype or state[0].dtype
        if self.embed_dim:
            x = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, param_dtype=jnp.float32,
                         name="embed")(tokens_BxT)
            x = _dropout_batch_major(key, 0, x, self.dropout)
        else:
            x = jax.nn.one_hot(tokens_BxT, self.vocab_size, dtype=dtype)
        is_lstm = self.cell == "lstm"
        finals = []
        for l in range(self.num_layers):
            if l:
                x = _dropout_batch_major(key, l, x, self.dropout)
            flax_cell = getattr(nn, cells.FLAX[self.cell])(self.num_hiddens, dtype=self.dtype,
                                                           param_dtype=jnp.float32, name=_flax_layer(l, self.cell))
            s = layer_state(state, l)
            # flax's LSTM carry is (c, h); ours is d2l's (h, c).
            carry, x = nn.RNN(flax_cell, return_carry=True)(x, initial_carry=(s.c, s.h) if is_lstm else s.h)
            finals.append(LSTMState(carry[1], carry[0]) if is_lstm else cells.HState(carry))
        x = _dropout_batch_major(key, self.num_layers, x, self.dropout)
        logits = nn.Dense(self.vocab_size, dtype=self.dtype, param_dtype=jnp.float32, name="head")(x)
        return logits, stack_layers(finals)


def _dropout_batch_major(key, site, x_BxTxD, rate):
    """:func:`dropout` (time-major masks) for flax's batch-major layout: the same units dropped."""
    return jnp.swapaxes(dropout(key, site, jnp.swapaxes(x_BxTxD, 0, 1), rate), 0, 1)


def _flax_layer(l: int, cell: str = "lstm") -> str:
    return cell if l == 0 else f"{cell}_{l}"


def scratch_to_concise(params: Params) -> Params:
    """The LSTM's parameters as flax's ``OptimizedLSTMCell`` layers, dense head and embedding."""
    out = {_flax_layer(l): lstm.to_flax(layer(params, l)) for l in range(num_layers(params))}
    out["head"] = {"kernel": params["W_hq"], "bias": params["b_q"]}
    if "embed" in params:
        out["embed"] = {"embedding": params["embed"]}
    return {"params": out}


def _from_flax_cell(cell: str, p: dict) -> dict:
    """One flax layer's parameters under our cell's names (flax's r, z biases are on its input side)."""
    if cell == "lstm":
        return lstm.from_flax(p)
    if cell == "rnn":  # SimpleCell
        return {"W_xh": p["i"]["kernel"], "W_hh": p["h"]["kernel"], "b_h": p["i"]["bias"]}
    out = {"b_hn": p["hn"]["bias"]}  # gru_reset_after: GRUCell
    for g in "rzn":
        out.update({f"W_x{g}": p[f"i{g}"]["kernel"], f"b_{g}": p[f"i{g}"]["bias"], f"W_h{g}": p[f"h{g}"]["kernel"]})
    return out


def concise_to_scratch(params: Params, cell: str = "lstm") -> Params:
    """A concise model's parameters as the scratch model's (the same function of the same weights)."""
    flax_params = params["params"]
    count = sum(k == cell or k.startswith(f"{cell}_") for k in flax_params)
    layers = [_from_flax_cell(cell, flax_params[_flax_layer(l, cell)]) for l in range(count)]
    out = {**layers[0], "W_hq": flax_params["head"]["kernel"], "b_q": flax_params["head"]["bias"]}
    out.update({layer_key(l): p for l, p in enumerate(layers) if l})
    if "embed" in flax_params:
        out["embed"] = flax_params["embed"]["embedding"]
    return out
