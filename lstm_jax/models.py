"""The stacked language model over any recurrent cell, and flax's variant, behind one interface.

Training, prediction and the tests only ever see a :class:`LanguageModel`: a
small value (its config fields), hashable, so that jitted steps take it as a
static argument; ``init(key) -> params``, ``initial_state(batch)`` and
``apply(params, state, tokens_BxT, key=None) -> (logits_BxTxV, state)``. A
``key`` turns dropout on (training), ``None`` off (evaluation, generation).

- ``scratch``: the cell's pure functions (:mod:`lstm_jax.cells`), through the
  recurrence engine where the cell has one (:mod:`lstm_jax.engine`, ``impl="fast"``),
  else, or with ``impl="reference"``, autodiff of its ``step`` under ``lax.scan``;
- ``concise``: flax's own cell under ``nn.RNN`` (``lstm``: ``OptimizedLSTMCell``,
  ``gru_reset_after``: ``GRUCell``, ``rnn``: ``SimpleCell``), one per layer, and a dense
  head; for the LSTM ``impl="fast"`` runs flax's parameters through our engine, re-keyed.

Parameters (scratch): layer 0's under the cell's (d2l's) names at the top level with the
head ``W_hq, b_q``, layer l's under ``layer<l>``, an embedding under ``embed``. The state
is the cell's NamedTuple, each field (B, L, size). Shapes are in the names: B batch,
T time, L layers, H hidden, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstm_jax import cells, engine
from lstm_jax.cells import Options, lstm
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
    impl: str | None = None  # "fast" or "reference"; None: the fastest this cell and variant have
    num_layers: int = 1
    embed_dim: int = 0
    dropout: float = 0.0
    cell: str = "lstm"
    proj_size: int = 0
    forget_bias: float = 0.0
    initializer: str | None = None  # scratch: "d2l" (None), "flax" or "uniform" (:func:`init_params`)
    init_scale: float = 0.0

    def __post_init__(self):
        if self.variant not in ("scratch", "concise"):
            raise ValueError(f"unknown variant {self.variant!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "forget_bias", float(self.forget_bias))
        object.__setattr__(self, "init_scale", float(self.init_scale))

    @property
    def runs(self) -> str:
        """The implementation that runs: ``fast`` (the engine) or ``reference``."""
        if self.impl:
            return self.impl
        if self.variant == "concise":
            return "reference"
        return "fast" if cells.get(self.cell).engine else "reference"

    @property
    def options(self) -> Options:
        return Options(self.num_hiddens, self.proj_size, self.forget_bias)

    @property
    def state_dtype(self):
        return DTYPES[self.dtype] or jnp.float32

    def initial_state(self, batch_size: int):
        """Zeros, as d2l's ``init_lstm_state`` / ``begin_state``, for every layer."""
        cell = cells.get(self.cell)
        return cell.State(*(jnp.zeros((batch_size, self.num_layers, n), self.state_dtype)
                            for n in cell.state_sizes(self.options)))

    def num_params(self) -> int:
        return sum(a.size for a in jax.tree.leaves(jax.eval_shape(self.init, jax.random.key(0))))

    def _flax(self) -> "ConciseModel":
        return ConciseModel(self.cell, self.vocab_size, self.num_hiddens, self.num_layers, self.embed_dim,
                            self.dropout, DTYPES[self.dtype])

    def init(self, key: jax.Array) -> Params:
        if self.variant == "scratch":
            return init_params(key, self.vocab_size, self.num_hiddens, self.num_layers, self.embed_dim,
                               self.cell, self.proj_size, self.forget_bias, self.initializer or "d2l", self.init_scale)
        zeros = self.initial_state(1)
        return self._flax().init(key, jax.tree.map(lambda a: a.astype(jnp.float32), zeros),
                                 jnp.zeros((1, 1), jnp.int32))

    def apply(self, params: Params, state, tokens_BxT: jax.Array, key=None):
        low = DTYPES[self.dtype]
        compute = (lambda tree: jax.tree.map(lambda a: a.astype(low), tree)) if low else (lambda tree: tree)
        if self.variant == "concise" and self.runs == "reference":
            logits, state = self._flax().apply(params, compute(state), tokens_BxT, key)
        else:
            if self.variant == "concise":
                params = concise_to_scratch(params)
            run = fast_apply if self.runs == "fast" else reference_apply
            logits, state = run(compute(params), compute(state), tokens_BxT, key, self.dropout, cell=self.cell)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), state


def from_config(config, vocab_size: int) -> LanguageModel:
    c = config
    return LanguageModel(c.model, vocab_size, c.num_hiddens, c.dtype, c.lstm_impl, c.num_layers,
                         c.embed_dim, c.dropout, c.cell, c.proj_size, c.forget_bias, c.init, c.init_scale)


# ---------------------------------------------------------------------------
# The scratch model: any cell, stacked (d2l's deep RNN), with dropout and a head
# ---------------------------------------------------------------------------

_NOT_LAYER0 = ("W_hq", "b_q", "embed")


def layer_key(l: int) -> str:
    return f"layer{l}"


def num_layers(params: Params) -> int:
    return 1 + sum(1 for k in params if k.startswith("layer"))


def layer(params: Params, l: int) -> Params:
    """Layer ``l``'s parameters, under the cell's names (layer 0's are top-level, as in d2l)."""
    if l:
        return params[layer_key(l)]
    return {k: v for k, v in params.items() if k not in _NOT_LAYER0 and not k.startswith("layer")}


def init_params(key: jax.Array, vocab_size: int, num_hiddens: int, num_layers: int = 1,
                embed_dim: int = 0, cell: str = "lstm", proj_size: int = 0, forget_bias: float = 0.0,
                init: str = "d2l", init_scale: float = 0.0) -> Params:
    """The cell's parameters for every layer and the head ``W_hq, b_q``; with ``embed_dim`` an
    embedding table ``embed`` (V, E) ~ N(0, 1), as PyTorch's and flax's, and layer 0's input is E wide.

    ``init`` (any cell, by the arrays' d2l names):
    - ``d2l``: the cell's own, d2l's ``normal``: weights ~ N(0, s^2), s = ``init_scale`` or 0.01;
      biases 0, the forget gate's ``forget_bias``; gains (layer norm) 1;
    - ``flax``: flax's cells' and Dense's: recurrent ``W_h*`` orthogonal, every other weight matrix
      LeCun-normal (fan-in), vectors as d2l's;
    - ``uniform``: every weight matrix, bias and the embedding ~ U(-s, s), s = ``init_scale`` or
      1/sqrt(num_hiddens) (PyTorch's ``nn.LSTM``; Zaremba et al. 2014 use 0.1 / 0.05 / 0.04), added
      to the biases' d2l values (so ``forget_bias`` still shifts the forget gate); gains stay 1.
    """
    c, o = cells.get(cell), Options(num_hiddens, proj_size, forget_bias)
    out = c.state_sizes(o)[0]  # what the next layer and the head see
    head_key = jax.random.split(key, 14)[12]  # d2l's 14 draws: 12 for the gates, then W_hq
    params = {**c.init(key, embed_dim or vocab_size, o), "W_hq": cells.normal(head_key, (out, vocab_size)),
              "b_q": jnp.zeros((vocab_size,))}
    for l in range(1, num_layers):
        params[layer_key(l)] = c.init(jax.random.fold_in(key, l), out, o)
    if embed_dim:
        params["embed"] = jax.random.normal(jax.random.fold_in(key, 10_000), (vocab_size, embed_dim))
    if init == "d2l" and not init_scale:
        return params
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    draw = {"d2l": _d2l, "flax": _flax_init, "uniform": _uniform}[init]
    scale = init_scale or (0.01 if init == "d2l" else num_hiddens ** -0.5)
    return tree.unflatten([draw(jax.random.fold_in(key, 20_000 + n), path[-1].key, a, scale)
                           for n, (path, a) in enumerate(leaves)])


def _d2l(key, name, a, std):
    return a * (std / 0.01) if name[0] in "Ww" and name != "embed" else a


def _flax_init(key, name, a, _):
    if a.ndim != 2 or name == "embed":
        return a
    recurrent = name.startswith("W_h") and name != "W_hq"
    draw = nn.initializers.orthogonal() if recurrent else nn.initializers.lecun_normal()
    return draw(key, a.shape, a.dtype)


def _uniform(key, name, a, bound):
    if not name.startswith(("W_", "b_", "embed")):
        return a
    return jax.random.uniform(key, a.shape, a.dtype, -bound, bound) + (a if name.startswith("b_") else 0)


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


def _layer_state(state, l: int):
    return jax.tree.map(lambda a: a[:, l], state)


def _stack_layers(finals):
    return jax.tree.map(lambda *a: jnp.stack(a, 1), *finals)


def reference_apply(params: Params, state, tokens_BxT: jax.Array, key=None, rate: float = 0.0,
                    cell: str = "lstm"):
    """Logits (B, T, V) and every layer's final state by autodiff-able ``lax.scan`` of the cell's step."""
    c = cells.get(cell)
    x = layer_input(params, tokens_BxT.T, key, rate)  # time-major, as the scan runs
    finals = []
    for l in range(num_layers(params)):
        if l:
            x = dropout(key, l, x, rate)
        p = layer(params, l)
        s, x = jax.lax.scan(lambda s, x_t: c.step(p, s, x_t), c.State(*_layer_state(state, l)), x)
        finals.append(s)
    x = dropout(key, len(finals), x, rate)
    logits_TxBxV = x @ params["W_hq"] + params["b_q"]
    return jnp.swapaxes(logits_TxBxV, 0, 1), _stack_layers(finals)


def fast_apply(params: Params, state, tokens_BxT: jax.Array, key=None, rate: float = 0.0,
               lanes: int | None = None, cell: str = "lstm"):
    """:func:`reference_apply` through the engine (same key, same dropout, same function).

    Each layer's input projection is one product over all time steps, before
    its recurrence; the LSTM's last layer has the output layer inside its custom
    VJP unless dropout stands between them. ``lanes`` (default
    :func:`engine.default_lanes`) splits the batch rows into independent
    chains; it changes the schedule, not the result.
    """
    c = cells.get(cell)
    eng = c.engine
    if eng is None:
        raise ValueError(f"cell {cell!r} has no engine form; run it with impl='reference'")
    B = tokens_BxT.shape[0]
    lanes = engine.default_lanes(B, state[0].shape[-1]) if lanes is None else lanes
    if B % lanes:
        raise ValueError(f"lanes={lanes} does not divide the batch size {B}")
    L = num_layers(params)
    drop = key is not None and rate > 0
    fused_head = eng.kernel is not None and not drop
    split = lambda a, axis: tuple(jnp.split(a, lanes, axis=axis))
    tokens_TxB = tokens_BxT.T
    if "embed" in params:  # dropped out as a whole, then cut into lanes
        x_TxBxD = split(layer_input(params, tokens_TxB, key, rate), 1)
    finals = []
    for l in range(L):
        p = layer(params, l)
        (W_x, b), W_h = eng.input_weights(p), eng.recurrent_weights(p)
        b = jnp.zeros(W_x.shape[-1], W_x.dtype) if b is None else b
        if l == 0 and "embed" not in params:  # a row lookup instead of the one-hot product (same math)
            xp = tuple(jnp.take(W_x, t, axis=0) + b for t in split(tokens_TxB, 1))
        else:
            if l and drop:  # the mask of the whole (T, B, H) input, cut into lanes
                mask = split(dropout_mask(key, l, (tokens_TxB.shape[0], B, W_h.shape[0]), rate,
                                          x_TxBxD[0].dtype), 1)
                x_TxBxD = tuple(x * m for x, m in zip(x_TxBxD, mask))
            xp = engine.input_projection(*engine.same_vma((x_TxBxD, W_x, b)))
        if eng.prepare:
            xp = tuple(eng.prepare(p, x) for x in xp)
        s0 = tuple(c.State(*parts) for parts in zip(*(split(a[:, l], 0) for a in state)))
        if eng.kernel is None:
            x_TxBxD, final = engine.cell_recurrence(
                eng.pointwise, eng.additive, *engine.same_vma((eng.pointwise_params(p), xp, W_h, s0)))
        elif l == L - 1 and fused_head:
            logits, h, cc = eng.kernel.recurrence_and_head(*engine.same_vma(
                (xp, W_h, params["W_hq"], params["b_q"], tuple(s.h for s in s0), tuple(s.c for s in s0))))
            final = tuple(map(c.State, h, cc))
        else:
            x_TxBxD, h, cc = eng.kernel.recurrence(
                *engine.same_vma((xp, W_h, tuple(s.h for s in s0), tuple(s.c for s in s0))))
            final = tuple(map(c.State, h, cc))
        finals.append(jax.tree.map(lambda *a: jnp.concatenate(a), *final))
    if fused_head:
        logits_BxTxV = jnp.concatenate([jnp.transpose(g, (1, 0, 2)) for g in logits], axis=0)
    else:
        x = dropout(key, L, jnp.concatenate(x_TxBxD, axis=1), rate)
        logits_BxTxV = jnp.swapaxes(x @ params["W_hq"] + params["b_q"], 0, 1)
    return logits_BxTxV, _stack_layers(finals)


# ---------------------------------------------------------------------------
# The concise model: flax's own cells
# ---------------------------------------------------------------------------


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
            s = _layer_state(state, l)
            # flax's LSTM carry is (c, h); ours is d2l's (h, c).
            carry, x = nn.RNN(flax_cell, return_carry=True)(x, initial_carry=(s.c, s.h) if is_lstm else s.h)
            finals.append(LSTMState(carry[1], carry[0]) if is_lstm else cells.HState(carry))
        x = _dropout_batch_major(key, self.num_layers, x, self.dropout)
        logits = nn.Dense(self.vocab_size, dtype=self.dtype, param_dtype=jnp.float32, name="head")(x)
        return logits, _stack_layers(finals)


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


def concise_to_scratch(params: Params) -> Params:
    flax_params = params["params"]
    count = sum(k.startswith("lstm") for k in flax_params)
    layers = [lstm.from_flax(flax_params[_flax_layer(l)]) for l in range(count)]
    out = {**layers[0], "W_hq": flax_params["head"]["kernel"], "b_q": flax_params["head"]["bias"]}
    out.update({layer_key(l): p for l, p in enumerate(layers) if l})
    if "embed" in flax_params:
        out["embed"] = flax_params["embed"]["embedding"]
    return out
