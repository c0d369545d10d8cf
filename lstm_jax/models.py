"""The two LSTM variants behind one interface.

Training, prediction and the tests only ever see a :class:`LanguageModel`:
``init(key) -> params``, ``initial_state(batch)`` and
``apply(params, state, tokens_BxT, key=None) -> (logits_BxTxV, state)``; a
``key`` turns dropout on (training), ``None`` off (evaluation, generation).
The variant is chosen once, by name, in :func:`make_model`:

- ``scratch``: d2l's pure functions (:mod:`lstm_jax.lstm`), by default through
  the fast path (:mod:`lstm_jax.fast_lstm`, ``impl="fast"``), or autodiff of
  ``lstm_step`` (``impl="reference"``);
- ``concise``: flax's ``OptimizedLSTMCell`` under ``nn.RNN``, one per layer,
  and a dense head (``impl="reference"``, its default); ``impl="fast"`` runs
  flax's parameters through our fast path instead, re-keyed, not copied.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstm_jax import fast_lstm, lstm
from lstm_jax.lstm import LSTMState

Params = Any
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True, eq=False)
class LanguageModel:
    name: str
    vocab_size: int
    num_hiddens: int
    num_layers: int
    init: Callable[[jax.Array], Params]
    apply: Callable[..., tuple[jax.Array, LSTMState]]
    state_dtype: Any = jnp.float32

    def initial_state(self, batch_size: int) -> LSTMState:
        """Zeros, as d2l's ``init_lstm_state`` / ``begin_state``, for every layer."""
        shape = (batch_size, self.num_layers, self.num_hiddens)
        return LSTMState(jnp.zeros(shape, self.state_dtype), jnp.zeros(shape, self.state_dtype))

    def num_params(self) -> int:
        return sum(a.size for a in jax.tree.leaves(jax.eval_shape(self.init, jax.random.key(0))))


class ConciseLSTM(nn.Module):
    """d2l's concise model: library LSTM layers over one-hot (or embedded) inputs, then a dense head."""

    vocab_size: int
    num_hiddens: int
    num_layers: int = 1
    embed_dim: int = 0
    dropout: float = 0.0
    dtype: Any = None  # compute dtype; None follows the parameters

    @nn.compact
    def __call__(self, state: LSTMState, tokens_BxT: jax.Array, key=None):
        dtype = self.dtype or state.h.dtype
        if self.embed_dim:
            x = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, param_dtype=jnp.float32,
                         name="embed")(tokens_BxT)
            x = _dropout_batch_major(key, 0, x, self.dropout)
        else:
            x = jax.nn.one_hot(tokens_BxT, self.vocab_size, dtype=dtype)
        hs, cs = [], []
        for l in range(self.num_layers):
            if l:
                x = _dropout_batch_major(key, l, x, self.dropout)
            cell = nn.OptimizedLSTMCell(self.num_hiddens, dtype=self.dtype, param_dtype=jnp.float32,
                                        name=_flax_layer(l))
            # flax's carry is (c, h); ours is d2l's (h, c).
            (c, h), x = nn.RNN(cell, return_carry=True)(x, initial_carry=(state.c[:, l], state.h[:, l]))
            hs.append(h)
            cs.append(c)
        x = _dropout_batch_major(key, self.num_layers, x, self.dropout)
        logits = nn.Dense(self.vocab_size, dtype=self.dtype, param_dtype=jnp.float32, name="head")(x)
        return logits, LSTMState(jnp.stack(hs, 1), jnp.stack(cs, 1))


def _dropout_batch_major(key, site, x_BxTxD, rate):
    """``lstm.dropout`` (time-major masks) for flax's batch-major layout: the same units dropped."""
    return jnp.swapaxes(lstm.dropout(key, site, jnp.swapaxes(x_BxTxD, 0, 1), rate), 0, 1)


def _flax_layer(l: int) -> str:
    return "lstm" if l == 0 else f"lstm_{l}"


def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype), tree)


@functools.lru_cache(maxsize=64)  # one object per model, so compiled functions keyed on it are reused
def make_model(variant: str, vocab_size: int, num_hiddens: int, dtype: str = "float32",
               impl: str | None = None, num_layers: int = 1, embed_dim: int = 0,
               dropout: float = 0.0) -> LanguageModel:
    """Build a variant. Parameters stay float32; ``dtype`` is the compute dtype.

    With ``bfloat16`` the matrix products and activations run in bfloat16 and the
    logits come back as float32, so loss and perplexity stay full precision.
    With ``float32`` nothing is cast, so float64 parameters (gradient checks)
    flow through in float64. ``impl=None`` is the variant's own: ``fast`` for
    scratch, flax's cell (``reference``) for concise. Values are checked by
    ``configs.validate``.
    """
    if variant not in ("scratch", "concise"):
        raise ValueError(f"unknown variant {variant!r}")
    impl = impl or ("fast" if variant == "scratch" else "reference")
    low = {"float32": None, "bfloat16": jnp.bfloat16}[dtype]
    compute = (lambda tree: _cast(tree, low)) if low else (lambda tree: tree)

    def full(logits):
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))

    module = ConciseLSTM(vocab_size, num_hiddens, num_layers, embed_dim, dropout, low)
    run = {"fast": fast_lstm.apply, "reference": lstm.apply}[impl]

    if variant == "scratch":
        def init(key):
            return lstm.init_params(key, vocab_size, num_hiddens, num_layers, embed_dim)

        def apply(params, state, tokens_BxT, key=None):
            logits, state = run(compute(params), compute(state), tokens_BxT, key, dropout)
            return full(logits), state
    else:
        def init(key):
            zeros = jnp.zeros((1, num_layers, num_hiddens))
            return module.init(key, LSTMState(zeros, zeros), jnp.zeros((1, 1), jnp.int32))

        if impl == "fast":
            def apply(params, state, tokens_BxT, key=None):
                logits, state = fast_lstm.apply(compute(concise_to_scratch(params)), compute(state),
                                                tokens_BxT, key, dropout)
                return full(logits), state
        else:
            def apply(params, state, tokens_BxT, key=None):
                logits, state = module.apply(params, compute(state), tokens_BxT, key)
                return full(logits), state

    return LanguageModel(variant, vocab_size, num_hiddens, num_layers, init, apply, low or jnp.float32)


def from_config(config, vocab_size: int) -> LanguageModel:
    c = config
    return make_model(c.model, vocab_size, c.num_hiddens, c.dtype, c.lstm_impl, c.num_layers,
                      c.embed_dim, float(c.dropout))


# ---------------------------------------------------------------------------
# The same weights in both layouts: proves the scratch math is flax's LSTM.
# d2l's gates (i, f, o, c~) are flax's (i, f, o, g); flax's input kernels have
# no bias, its recurrent ones carry the gate bias.
# ---------------------------------------------------------------------------

_FLAX_GATE = {"i": "i", "f": "f", "o": "o", "c": "g"}


def scratch_to_concise(params: lstm.Params) -> Params:
    out = {}
    for l in range(lstm.num_layers(params)):
        p, cell = lstm.layer(params, l), {}
        for g, fg in _FLAX_GATE.items():
            cell[f"i{fg}"] = {"kernel": p[f"W_x{g}"]}
            cell[f"h{fg}"] = {"kernel": p[f"W_h{g}"], "bias": p[f"b_{g}"]}
        out[_flax_layer(l)] = cell
    out["head"] = {"kernel": params["W_hq"], "bias": params["b_q"]}
    if "embed" in params:
        out["embed"] = {"embedding": params["embed"]}
    return {"params": out}


def concise_to_scratch(params: Params) -> lstm.Params:
    flax_params = params["params"]
    num_layers = sum(1 for k in flax_params if k.startswith("lstm"))
    out = {}
    for l in range(num_layers):
        cell, p = flax_params[_flax_layer(l)], {}
        for g, fg in _FLAX_GATE.items():
            p[f"W_x{g}"] = cell[f"i{fg}"]["kernel"]
            p[f"W_h{g}"] = cell[f"h{fg}"]["kernel"]
            p[f"b_{g}"] = cell[f"h{fg}"]["bias"]
        if l == 0:
            out.update({n: p[n] for n in lstm.LAYER_NAMES})
            out["W_hq"], out["b_q"] = flax_params["head"]["kernel"], flax_params["head"]["bias"]
        else:
            out[lstm.layer_key(l)] = {n: p[n] for n in lstm.LAYER_NAMES}
    if "embed" in flax_params:
        out["embed"] = flax_params["embed"]["embedding"]
    return out
