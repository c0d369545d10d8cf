"""The stacked language model over a recurrent cell, and flax's variant, behind one interface.

Training, prediction and the tests only ever see a :class:`LanguageModel`: a
small value (its config fields), hashable, so that jitted steps take it as a
static argument; ``init(key) -> params``, ``initial_state(batch)`` and
``apply(params, state, tokens_BxT, key=None) -> (logits_BxTxV, state)``. A
``key`` turns dropout on (training), ``None`` off (evaluation, generation).

- ``scratch``: d2l's pure functions (:mod:`lstm_jax.cells.lstm`), by default
  through the fast path (:mod:`lstm_jax.fast_lstm`, ``impl="fast"``), or
  autodiff of ``lstm_step`` under ``lax.scan`` (``impl="reference"``);
- ``concise``: flax's ``OptimizedLSTMCell`` under ``nn.RNN``, one per layer,
  and a dense head (``impl="reference"``, its default); ``impl="fast"`` runs
  flax's parameters through our fast path instead, re-keyed, not copied.

Parameters (scratch): layer 0's gates and the head ``W_hq, b_q`` under d2l's
names at the top level, layer l's under ``layer<l>``, an embedding under
``embed``. Shapes are in the names: B batch, T time, L layers, H hidden, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstm_jax import fast_lstm
from lstm_jax.cells import lstm
from lstm_jax.cells.lstm import LSTMState

Params = Any
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # None: compute in the parameters' dtype


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    """A model by value. Parameters stay float32; ``dtype`` is the compute dtype.

    With ``bfloat16`` the matrix products and activations run in bfloat16 and the
    logits come back as float32, so loss and perplexity stay full precision.
    With ``float32`` nothing is cast, so float64 parameters (gradient checks)
    flow through in float64. Values are checked by ``configs.validate``.
    """

    variant: str  # "scratch" or "concise"
    vocab_size: int
    num_hiddens: int
    dtype: str = "float32"
    impl: str | None = None  # "fast" or "reference"; None: the variant's own
    num_layers: int = 1
    embed_dim: int = 0
    dropout: float = 0.0

    def __post_init__(self):
        if self.variant not in ("scratch", "concise"):
            raise ValueError(f"unknown variant {self.variant!r}")
        object.__setattr__(self, "dropout", float(self.dropout))

    @property
    def name(self) -> str:
        return self.variant

    @property
    def runs(self) -> str:
        """The implementation that runs: ``fast`` or ``reference``."""
        return self.impl or ("fast" if self.variant == "scratch" else "reference")

    @property
    def state_dtype(self):
        return DTYPES[self.dtype] or jnp.float32

    def initial_state(self, batch_size: int) -> LSTMState:
        """Zeros, as d2l's ``init_lstm_state`` / ``begin_state``, for every layer."""
        shape = (batch_size, self.num_layers, self.num_hiddens)
        return LSTMState(jnp.zeros(shape, self.state_dtype), jnp.zeros(shape, self.state_dtype))

    def num_params(self) -> int:
        return sum(a.size for a in jax.tree.leaves(jax.eval_shape(self.init, jax.random.key(0))))

    def _flax(self) -> "ConciseLSTM":
        return ConciseLSTM(self.vocab_size, self.num_hiddens, self.num_layers, self.embed_dim, self.dropout,
                           DTYPES[self.dtype])

    def init(self, key: jax.Array) -> Params:
        if self.variant == "scratch":
            return init_params(key, self.vocab_size, self.num_hiddens, self.num_layers, self.embed_dim)
        zeros = jnp.zeros((1, self.num_layers, self.num_hiddens))
        return self._flax().init(key, LSTMState(zeros, zeros), jnp.zeros((1, 1), jnp.int32))

    def apply(self, params: Params, state: LSTMState, tokens_BxT: jax.Array, key=None
              ) -> tuple[jax.Array, LSTMState]:
        low = DTYPES[self.dtype]
        compute = (lambda tree: jax.tree.map(lambda a: a.astype(low), tree)) if low else (lambda tree: tree)
        if self.variant == "concise" and self.runs == "reference":
            logits, state = self._flax().apply(params, compute(state), tokens_BxT, key)
        else:
            if self.variant == "concise":
                params = concise_to_scratch(params)
            run = fast_apply if self.runs == "fast" else reference_apply
            logits, state = run(compute(params), compute(state), tokens_BxT, key, self.dropout)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), state


def make_model(variant: str, vocab_size: int, num_hiddens: int, dtype: str = "float32",
               impl: str | None = None, num_layers: int = 1, embed_dim: int = 0,
               dropout: float = 0.0) -> LanguageModel:
    return LanguageModel(variant, vocab_size, num_hiddens, dtype, impl, num_layers, embed_dim, dropout)


def from_config(config, vocab_size: int) -> LanguageModel:
    c = config
    return LanguageModel(c.model, vocab_size, c.num_hiddens, c.dtype, c.lstm_impl, c.num_layers,
                         c.embed_dim, c.dropout)


# ---------------------------------------------------------------------------
# The scratch model: d2l's cell, stacked (d2l's deep RNN), with dropout and a head
# ---------------------------------------------------------------------------


def layer_key(l: int) -> str:
    return f"layer{l}"


def num_layers(params: Params) -> int:
    return 1 + sum(1 for k in params if k.startswith("layer"))


def layer(params: Params, l: int) -> Params:
    """Layer ``l``'s 12 gate arrays, under d2l's names (layer 0's are top-level, as in d2l)."""
    return {n: params[n] for n in lstm.LAYER_NAMES} if l == 0 else params[layer_key(l)]


def init_params(key: jax.Array, vocab_size: int, num_hiddens: int, num_layers: int = 1,
                embed_dim: int = 0) -> Params:
    """d2l's ``get_lstm_params`` for every layer, and the head ``W_hq`` ~ N(0, 0.01^2), ``b_q`` = 0.

    With ``embed_dim`` an embedding table ``embed`` (V, E) ~ N(0, 1), as
    PyTorch's and flax's, comes first and layer 0's input weights are (E, H).
    """
    V, H = vocab_size, num_hiddens
    keys = jax.random.split(key, len(lstm.PARAM_NAMES))  # one per d2l array, head included
    params = {**lstm.init_layer(keys[:12], embed_dim or V, H),
              "W_hq": 0.01 * jax.random.normal(keys[12], (H, V)), "b_q": jnp.zeros((V,))}
    for l in range(1, num_layers):
        params[layer_key(l)] = lstm.init_layer(jax.random.split(jax.random.fold_in(key, l), 14)[:12], H, H)
    if embed_dim:
        params["embed"] = jax.random.normal(jax.random.fold_in(key, 10_000), (V, embed_dim))
    return params


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


def reference_apply(params: Params, state: LSTMState, tokens_BxT: jax.Array, key=None, rate: float = 0.0
                    ) -> tuple[jax.Array, LSTMState]:
    """Logits (B, T, V) and every layer's final state by autodiff-able ``lax.scan`` of ``lstm_step``."""
    x = layer_input(params, tokens_BxT.T, key, rate)  # time-major, as the scan runs
    hs, cs = [], []
    for l in range(num_layers(params)):
        if l:
            x = dropout(key, l, x, rate)
        p = layer(params, l)
        (h, c), x = jax.lax.scan(lambda carry, x_t: lstm.lstm_step(p, carry, x_t), (state.h[:, l], state.c[:, l]), x)
        hs.append(h)
        cs.append(c)
    x = dropout(key, len(hs), x, rate)
    logits_TxBxV = x @ params["W_hq"] + params["b_q"]
    return jnp.swapaxes(logits_TxBxV, 0, 1), LSTMState(jnp.stack(hs, 1), jnp.stack(cs, 1))


def fast_apply(params: Params, state: LSTMState, tokens_BxT: jax.Array, key=None, rate: float = 0.0,
               lanes: int | None = None) -> tuple[jax.Array, LSTMState]:
    """:func:`reference_apply` through the fast path (same key, same dropout, same function).

    Each layer's input projection is one product over all time steps, before
    its recurrence; the last layer's output layer is inside its custom VJP
    unless dropout stands between them. ``lanes`` (default
    :func:`fast_lstm.default_lanes`) splits the batch rows into independent
    chains; it changes the schedule, not the result.
    """
    B = tokens_BxT.shape[0]
    lanes = fast_lstm.default_lanes(B, params["W_hi"].shape[0]) if lanes is None else lanes
    if B % lanes:
        raise ValueError(f"lanes={lanes} does not divide the batch size {B}")
    L = num_layers(params)
    drop = key is not None and rate > 0
    split = lambda a, axis: tuple(jnp.split(a, lanes, axis=axis))
    tokens_TxB = tokens_BxT.T
    if "embed" in params:  # dropped out as a whole, then cut into lanes
        x_TxBxD = split(layer_input(params, tokens_TxB, key, rate), 1)
    hs, cs = [], []
    for l in range(L):
        W_x, W_h, b = fast_lstm.stacked(layer(params, l))
        if l == 0 and "embed" not in params:  # a row lookup instead of the one-hot product (same math)
            xp = tuple(jnp.take(W_x, t, axis=0) + b for t in split(tokens_TxB, 1))
        else:
            if l and drop:  # the mask of the whole (T, B, H) input, cut into lanes
                mask = split(dropout_mask(key, l, (tokens_TxB.shape[0], B, W_h.shape[0]), rate,
                                          x_TxBxD[0].dtype), 1)
                x_TxBxD = tuple(x * m for x, m in zip(x_TxBxD, mask))
            xp = fast_lstm.input_projection(*fast_lstm.same_vma((x_TxBxD, W_x, b)))
        h0, c0 = split(state.h[:, l], 0), split(state.c[:, l], 0)
        if l == L - 1 and not drop:
            logits, h, c = fast_lstm.recurrence_and_head(
                *fast_lstm.same_vma((xp, W_h, params["W_hq"], params["b_q"], h0, c0)))
        else:
            x_TxBxD, h, c = fast_lstm.recurrence(*fast_lstm.same_vma((xp, W_h, h0, c0)))
        hs.append(jnp.concatenate(h))
        cs.append(jnp.concatenate(c))
    if drop:
        x = dropout(key, L, jnp.concatenate(x_TxBxD, axis=1), rate)
        logits_BxTxV = jnp.swapaxes(x @ params["W_hq"] + params["b_q"], 0, 1)
    else:
        logits_BxTxV = jnp.concatenate([jnp.transpose(g, (1, 0, 2)) for g in logits], axis=0)
    return logits_BxTxV, LSTMState(jnp.stack(hs, 1), jnp.stack(cs, 1))


# ---------------------------------------------------------------------------
# The concise model: flax's own cell
# ---------------------------------------------------------------------------


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
    """:func:`dropout` (time-major masks) for flax's batch-major layout: the same units dropped."""
    return jnp.swapaxes(dropout(key, site, jnp.swapaxes(x_BxTxD, 0, 1), rate), 0, 1)


def _flax_layer(l: int) -> str:
    return "lstm" if l == 0 else f"lstm_{l}"


# The same weights in both layouts: d2l's gates (i, f, o, c~) are flax's (i, f, o, g);
# flax's input kernels have no bias, its recurrent ones carry the gate bias.
_FLAX_GATE = {"i": "i", "f": "f", "o": "o", "c": "g"}


def scratch_to_concise(params: Params) -> Params:
    out = {}
    for l in range(num_layers(params)):
        p, cell = layer(params, l), {}
        for g, fg in _FLAX_GATE.items():
            cell[f"i{fg}"] = {"kernel": p[f"W_x{g}"]}
            cell[f"h{fg}"] = {"kernel": p[f"W_h{g}"], "bias": p[f"b_{g}"]}
        out[_flax_layer(l)] = cell
    out["head"] = {"kernel": params["W_hq"], "bias": params["b_q"]}
    if "embed" in params:
        out["embed"] = {"embedding": params["embed"]}
    return {"params": out}


def concise_to_scratch(params: Params) -> Params:
    flax_params = params["params"]
    out = {}
    for l in range(sum(1 for k in flax_params if k.startswith("lstm"))):
        cell, p = flax_params[_flax_layer(l)], {}
        for g, fg in _FLAX_GATE.items():
            p[f"W_x{g}"] = cell[f"i{fg}"]["kernel"]
            p[f"W_h{g}"] = cell[f"h{fg}"]["kernel"]
            p[f"b_{g}"] = cell[f"h{fg}"]["bias"]
        if l == 0:
            out.update({n: p[n] for n in lstm.LAYER_NAMES})
            out["W_hq"], out["b_q"] = flax_params["head"]["kernel"], flax_params["head"]["bias"]
        else:
            out[layer_key(l)] = {n: p[n] for n in lstm.LAYER_NAMES}
    if "embed" in flax_params:
        out["embed"] = flax_params["embed"]["embedding"]
    return out
