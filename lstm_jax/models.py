"""The two LSTM variants behind one interface.

Training, prediction and the tests only ever see a :class:`LanguageModel`:
``init(key) -> params``, ``initial_state(batch)`` and
``apply(params, state, tokens_BxT) -> (logits_BxTxV, state)``. The variant is
chosen once, by name, in :func:`make_model`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstm_jax import fast_lstm, lstm
from lstm_jax.errors import UserError
from lstm_jax.lstm import LSTMState

Params = Any
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Two implementations of the same math, for either variant: "fast" (the
# default: hand-written backward pass, lstm_jax/fast_lstm.py) and "reference"
# (scratch: autodiff of lstm.lstm_step; concise: flax's OptimizedLSTMCell under
# nn.RNN). Same parameters, function and gradients (tests/test_fast_lstm.py).
IMPLS = ("fast", "reference")


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    name: str
    vocab_size: int
    num_hiddens: int
    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, LSTMState, jax.Array], tuple[jax.Array, LSTMState]]
    state_dtype: Any = jnp.float32

    def initial_state(self, batch_size: int) -> LSTMState:
        """Zeros, as d2l's ``init_lstm_state`` / ``begin_state``."""
        shape = (batch_size, self.num_hiddens)
        return LSTMState(jnp.zeros(shape, self.state_dtype), jnp.zeros(shape, self.state_dtype))


class ConciseLSTM(nn.Module):
    """d2l's concise model: a library LSTM layer over one-hot inputs, then a dense head."""

    vocab_size: int
    num_hiddens: int
    dtype: Any = None  # compute dtype; None follows the parameters

    @nn.compact
    def __call__(self, state: LSTMState, tokens_BxT: jax.Array):
        x_BxTxV = jax.nn.one_hot(tokens_BxT, self.vocab_size, dtype=self.dtype or state.h.dtype)
        cell = nn.OptimizedLSTMCell(self.num_hiddens, dtype=self.dtype, param_dtype=jnp.float32, name="lstm")
        # flax's carry is (c, h); ours is d2l's (h, c).
        (c, h), h_BxTxH = nn.RNN(cell, return_carry=True)(x_BxTxV, initial_carry=(state.c, state.h))
        logits = nn.Dense(self.vocab_size, dtype=self.dtype, param_dtype=jnp.float32, name="head")(h_BxTxH)
        return logits, LSTMState(h, c)


def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype), tree)


def make_model(variant: str, vocab_size: int, num_hiddens: int, dtype: str = "float32",
               impl: str = "fast") -> LanguageModel:
    """Build a variant. Parameters stay float32; ``dtype`` is the compute dtype.

    With ``bfloat16`` the matrix products and activations run in bfloat16 and the
    logits come back as float32, so loss and perplexity stay full precision.
    With ``float32`` nothing is cast, so float64 parameters (gradient checks)
    flow through in float64.

    ``impl`` picks how the LSTM layer is computed; both compute the same
    function and gradients from the same parameters. ``"fast"`` (default): a
    hand-written backward pass (:mod:`lstm_jax.fast_lstm`); ``"reference"``:
    autodiff through :func:`lstm_jax.lstm.lstm_step` (scratch) or flax's
    ``OptimizedLSTMCell`` under ``nn.RNN`` (concise). The concise model's
    parameters are always flax's (the cell's tree and initializers); ``"fast"``
    runs them through the fast path, re-keyed, not copied.
    """
    if dtype not in DTYPES:
        raise UserError(f"config.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if impl not in IMPLS:
        raise UserError(f"config.lstm_impl must be one of {list(IMPLS)}, got {impl!r}")
    low = DTYPES[dtype] if dtype != "float32" else None
    compute = (lambda tree: _cast(tree, low)) if low else (lambda tree: tree)

    def full(logits):
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))

    if variant == "scratch":
        def init(key):
            return lstm.init_params(key, vocab_size, num_hiddens)

        scratch_apply = lstm.apply if impl == "reference" else fast_lstm.apply

        def apply(params, state, tokens_BxT):
            logits, state = scratch_apply(compute(params), compute(state), tokens_BxT)
            return full(logits), state

    elif variant == "concise":
        module = ConciseLSTM(vocab_size, num_hiddens, low)

        def init(key):
            zeros = jnp.zeros((1, num_hiddens))
            return module.init(key, LSTMState(zeros, zeros), jnp.zeros((1, 1), jnp.int32))

        if impl == "fast":
            def apply(params, state, tokens_BxT):
                scratch_params = concise_to_scratch(params)
                logits, state = fast_lstm.apply(compute(scratch_params), compute(state), tokens_BxT)
                return full(logits), state
        else:
            def apply(params, state, tokens_BxT):
                logits, state = module.apply(params, compute(state), tokens_BxT)
                return full(logits), state

    else:
        raise UserError(f"config.model must be 'scratch' or 'concise', got {variant!r}")
    return LanguageModel(variant, vocab_size, num_hiddens, init, apply, low or jnp.float32)


# ---------------------------------------------------------------------------
# The same weights in both layouts: proves the scratch math is flax's LSTM.
# d2l's gates (i, f, o, c~) are flax's (i, f, o, g); flax's input kernels have
# no bias, its recurrent ones carry the gate bias.
# ---------------------------------------------------------------------------

_FLAX_GATE = {"i": "i", "f": "f", "o": "o", "c": "g"}


def scratch_to_concise(params: lstm.Params) -> Params:
    cell = {}
    for g, fg in _FLAX_GATE.items():
        cell[f"i{fg}"] = {"kernel": params[f"W_x{g}"]}
        cell[f"h{fg}"] = {"kernel": params[f"W_h{g}"], "bias": params[f"b_{g}"]}
    dense = {"kernel": params["W_hq"], "bias": params["b_q"]}
    return {"params": {"lstm": cell, "head": dense}}


def concise_to_scratch(params: Params) -> lstm.Params:
    cell, dense = params["params"]["lstm"], params["params"]["head"]
    out = {}
    for g, fg in _FLAX_GATE.items():
        out[f"W_x{g}"] = cell[f"i{fg}"]["kernel"]
        out[f"W_h{g}"] = cell[f"h{fg}"]["kernel"]
        out[f"b_{g}"] = cell[f"h{fg}"]["bias"]
    out["W_hq"], out["b_q"] = dense["kernel"], dense["bias"]
    return {name: out[name] for name in lstm.PARAM_NAMES}
