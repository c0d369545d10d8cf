"""The stacked language model over any recurrent cell, and flax's variant, behind one interface.

Training, prediction and the tests only ever see a :class:`LanguageModel`: a
small value (its config fields), hashable, so that jitted steps take it as a
static argument; ``init(key) -> params``, ``initial_state(batch)`` and
``apply(params, state, tokens_BxT, key=None) -> (logits_BxTxV, state)``. A
``key`` turns dropout on (training), ``None`` off (evaluation, generation).

- ``scratch``: the cell's pure functions (:mod:`lstm_jax.cells`), through the
  recurrence engine where the cell has one (:mod:`lstm_jax.engine`, ``impl="fast"``),
  else, or with ``impl="reference"``, autodiff of its ``step`` under ``lax.scan``; a cell with a
  ``sequence`` (all steps at once: minGRU, minLSTM) runs that by default (``parallel``);
- ``concise``: flax's own cell under ``nn.RNN`` (``lstm``: ``OptimizedLSTMCell``,
  ``gru_reset_after``: ``GRUCell``, ``rnn``: ``SimpleCell``), one per layer, and a dense
  head (:mod:`lstm_jax.concise`); for the LSTM ``impl="fast"`` runs flax's parameters
  through our engine, re-keyed.

Parameters (scratch): layer 0's under the cell's (d2l's) names at the top level with the
head ``W_hq, b_q``, layer l's under ``layer<l>``, an embedding under ``embed``. The state
is the cell's NamedTuple, each field (B, L, size). Shapes are in the names: B batch,
T time, L layers, H hidden, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from lstm_jax import cells, engine
from lstm_jax.cells import Options
from lstm_jax.regularize import Dropout, drop_embedding, drop_weights, dropout, dropout_mask

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
    dropout: float | Dropout = 0.0  # a rate: per-step masks at every site (Zaremba); or each kind's rates
    cell: str = "lstm"
    proj_size: int = 0
    forget_bias: float = 0.0
    initializer: str | None = None  # scratch: "d2l" (None), "flax" or "uniform" (:func:`init_params`)
    init_scale: float = 0.0
    tie_weights: bool = False  # the head is the embedding's transpose (scratch)
    activation_reg: float = 0.0  # AWD's AR and TAR coefficients, training's (steps.objective)
    temporal_reg: float = 0.0
    num_heads: int = 1  # slstm's heads
    last_hiddens: int = 0  # the last layer's width if not num_hiddens (AWD-LSTM's 400 beside 1150)

    def __post_init__(self):
        if self.variant not in ("scratch", "concise"):
            raise ValueError(f"unknown variant {self.variant!r}")
        if not isinstance(self.dropout, Dropout):
            object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "forget_bias", float(self.forget_bias))
        object.__setattr__(self, "init_scale", float(self.init_scale))

    @property
    def runs(self) -> str:
        """The implementation that runs: ``fast`` (the engine), ``parallel`` (the cell's ``sequence``, all
        steps at once) or ``reference`` (autodiff of its step under ``lax.scan``)."""
        if self.impl:
            return self.impl
        if self.variant == "concise":
            return "reference"
        c = cells.get(self.cell)
        return "fast" if c.engine else "parallel" if c.sequence else "reference"

    @property
    def drop(self) -> Dropout:
        d = self.dropout
        return d if isinstance(d, Dropout) else Dropout(d, d, d)

    @property
    def options(self) -> Options:
        return Options(self.num_hiddens, self.proj_size, self.forget_bias, self.num_heads)

    @property
    def layer_sizes(self) -> tuple:
        """Each layer's state widths (the cell's State of ints); the state holds each field at its
        widest, and a narrower layer (``last_hiddens``) uses the first units of its row."""
        return layer_sizes(self.cell, self.options, self.num_layers, self.last_hiddens)

    @property
    def state_dtype(self):
        return DTYPES[self.dtype] or jnp.float32

    def initial_state(self, batch_size: int):
        """Zeros, as d2l's ``init_lstm_state`` / ``begin_state``, for every layer."""
        widest = (max(n) for n in zip(*self.layer_sizes))
        return cells.get(self.cell).State(*(jnp.zeros((batch_size, self.num_layers, n), self.state_dtype)
                                            for n in widest))

    def num_params(self) -> int:
        return sum(a.size for a in jax.tree.leaves(jax.eval_shape(self.init, jax.random.key(0))))

    def _flax(self):
        from lstm_jax.concise import ConciseModel  # it builds on this module

        return ConciseModel(self.cell, self.vocab_size, self.num_hiddens, self.num_layers, self.embed_dim,
                            self.drop.hidden, DTYPES[self.dtype])

    def init(self, key: jax.Array) -> Params:
        if self.variant == "scratch":
            return init_params(key, self.vocab_size, self.num_hiddens, self.num_layers, self.embed_dim,
                               self.cell, self.proj_size, self.forget_bias, self.initializer or "d2l", self.init_scale,
                               self.tie_weights, self.num_heads, self.last_hiddens)
        zeros = self.initial_state(1)
        return self._flax().init(key, jax.tree.map(lambda a: a.astype(jnp.float32), zeros),
                                 jnp.zeros((1, 1), jnp.int32))

    def apply(self, params: Params, state, tokens_BxT: jax.Array, key=None, outputs: bool = False):
        """``(logits, state)``; ``outputs`` (scratch): and the last layer's outputs before and after dropout."""
        low = DTYPES[self.dtype]
        compute = (lambda tree: jax.tree.map(lambda a: a.astype(low), tree)) if low else (lambda tree: tree)
        if self.variant == "concise" and self.runs == "reference":
            logits, state, *hs = self._flax().apply(params, compute(state), tokens_BxT, key)
        else:
            if self.variant == "concise":
                from lstm_jax.concise import concise_to_scratch

                params = concise_to_scratch(params)
            run = fast_apply if self.runs == "fast" else functools.partial(reference_apply, parallel=self.runs == "parallel")
            logits, state, *hs = run(compute(params), compute(state), tokens_BxT, key, self.drop, cell=self.cell,
                                     outputs=outputs, sizes=self.layer_sizes if self.last_hiddens else None)
        return (logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), state, *hs)


def from_config(config, vocab_size: int) -> LanguageModel:
    c = config
    rate = lambda given: c.dropout if given is None else float(given)
    drop = Dropout(rate(c.dropout_input), float(c.dropout), rate(c.dropout_output), bool(c.locked_dropout),
                   float(c.embed_dropout), float(c.weight_drop))
    return LanguageModel(c.model, vocab_size, c.num_hiddens, c.dtype, c.lstm_impl, c.num_layers, c.embed_dim,
                         drop, c.cell, c.proj_size, c.forget_bias, c.init, c.init_scale, c.tie_weights,
                         float(c.activation_reg), float(c.temporal_reg), c.num_heads, c.last_hiddens)


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
                init: str = "d2l", init_scale: float = 0.0, tie_weights: bool = False, num_heads: int = 1,
                last_hiddens: int = 0) -> Params:
    """The cell's parameters for every layer and the head ``W_hq, b_q``; with ``embed_dim`` an
    embedding table ``embed`` (V, E) ~ N(0, 1), as PyTorch's and flax's, and layer 0's input is E wide.

    ``init``: the cell's own (``d2l``: weights ~ N(0, 0.01^2), biases 0 but the forget gate's
    ``forget_bias``, gains 1), or drawn again by :func:`cells.redraw`: ``d2l`` with another std
    ``init_scale``, ``flax`` or ``uniform`` (bound ``init_scale``, else 1/sqrt(num_hiddens) as PyTorch's
    ``nn.LSTM``; Zaremba et al. 2014 use 0.1 / 0.05 / 0.04).

    ``tie_weights`` (Press & Wolf 2017, Inan et al. 2017): the head is the embedding's transpose, one
    array, drawn as the head's weights are (so it needs ``embed_dim`` equal to the head's input width).
    """
    c, o = cells.get(cell), Options(num_hiddens, proj_size, forget_bias, num_heads)
    options = layer_options(o, num_layers, last_hiddens)
    width = [c.state_sizes(o)[0] for o in options]  # what the next layer and the head see
    head_key = jax.random.split(key, 14)[12]  # d2l's 14 draws: 12 for the gates, then W_hq
    params = {**c.init(key, embed_dim or vocab_size, options[0]), "W_hq": cells.normal(head_key, (width[-1], vocab_size)),
              "b_q": jnp.zeros((vocab_size,))}
    for l in range(1, num_layers):
        params[layer_key(l)] = c.init(jax.random.fold_in(key, l), width[l - 1], options[l])
    if embed_dim:
        params["embed"] = jax.random.normal(jax.random.fold_in(key, 10_000), (vocab_size, embed_dim))
    if init != "d2l" or init_scale:
        params = cells.redraw(key, params, init, init_scale or (0.01 if init == "d2l" else num_hiddens ** -0.5))
    if tie_weights:
        if params["W_hq"].shape[0] != embed_dim:
            raise ValueError(f"tied weights need embed_dim = the head's input width {width[-1]}, got {embed_dim}")
        params["embed"] = params.pop("W_hq").T
    return params


def layer_input(params: Params, tokens_TxB: jax.Array, key, drop: Dropout) -> jax.Array:
    """Layer 0's input: token ids (a row lookup, d2l's one-hot) or embedded and dropped out."""
    if "embed" not in params:
        return tokens_TxB
    table = drop_embedding(key, params["embed"], drop.embed)
    return dropout(key, 0, jnp.take(table, tokens_TxB, axis=0), drop.input, drop.locked)


def head(params: Params) -> tuple[jax.Array, jax.Array]:
    """The output layer ``(W_hq, b_q)``; tied weights (no ``W_hq``) are the embedding's transpose."""
    return params["W_hq"] if "W_hq" in params else params["embed"].T, params["b_q"]


def layer_options(o: Options, num_layers: int, last_hiddens: int = 0) -> tuple[Options, ...]:
    """Each layer's options: ``o``, but the last layer ``last_hiddens`` wide where that is set."""
    return (o,) * (num_layers - 1) + (o._replace(num_hiddens=last_hiddens or o.num_hiddens),)


def layer_sizes(cell: str, o: Options, num_layers: int, last_hiddens: int = 0) -> tuple:
    return tuple(map(cells.get(cell).state_sizes, layer_options(o, num_layers, last_hiddens)))


def layer_state(state, l: int, sizes=None):
    """Layer ``l``'s state (B, width) from the stacked (B, L, widest); ``sizes``: its widths."""
    return jax.tree.map(lambda a, n: a[:, l, :n], state, sizes) if sizes else jax.tree.map(lambda a: a[:, l], state)


def stack_layers(finals, like=None):
    """The layers' final states as one (B, L, widest) per field, narrower layers zero-padded like ``like``."""
    if like is not None:
        finals = [jax.tree.map(lambda a, w: jnp.pad(a, ((0, 0), (0, w.shape[-1] - a.shape[-1]))), f, like)
                  for f in finals]
    return jax.tree.map(lambda *a: jnp.stack(a, 1), *finals)


def reference_apply(params: Params, state, tokens_BxT: jax.Array, key=None, drop: Dropout = Dropout(),
                    cell: str = "lstm", outputs: bool = False, sizes=None, parallel: bool = False):
    """Logits (B, T, V) and every layer's final state by autodiff-able ``lax.scan`` of the cell's step
    (``parallel``: the cell's ``sequence`` where it has one); ``outputs``: also the last layer's outputs
    (T, B, H) before and after dropout."""
    c = cells.get(cell)
    x = layer_input(params, tokens_BxT.T, key, drop)  # time-major, as the scan runs
    finals = []
    for l in range(num_layers(params)):
        if l:
            x = dropout(key, l, x, drop.hidden, drop.locked)
        p = drop_weights(key, layer(params, l), c.recurrent, drop.weight, l)
        s0 = c.State(*layer_state(state, l, sizes and sizes[l]))
        if parallel and c.sequence and x.shape[0] > 1:  # all steps at once; one (generation): the definition
            s, x = c.sequence(p, s0, x)
        else:
            s, x = jax.lax.scan(lambda s, x_t: c.step(p, s, x_t), s0, x)
        finals.append(s)
    h, x = x, dropout(key, len(finals), x, drop.output, drop.locked)
    W_hq, b_q = head(params)
    return (jnp.swapaxes(x @ W_hq + b_q, 0, 1), stack_layers(finals, state)) + (((h, x),) if outputs else ())


def fast_apply(params: Params, state, tokens_BxT: jax.Array, key=None, drop: Dropout = Dropout(),
               lanes: int | None = None, cell: str = "lstm", outputs: bool = False, sizes=None):
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
    fused_head = eng.kernel is not None and not (key is not None and drop.output > 0) and not outputs
    split = lambda a, axis: tuple(jnp.split(a, lanes, axis=axis))
    tokens_TxB = tokens_BxT.T
    if "embed" in params:  # dropped out as a whole, then cut into lanes
        x_TxBxD = split(layer_input(params, tokens_TxB, key, drop), 1)
    finals = []
    for l in range(L):
        p = drop_weights(key, layer(params, l), c.recurrent, drop.weight, l)
        (W_x, b), W_h = eng.input_weights(p), eng.recurrent_weights(p)
        b = jnp.zeros(W_x.shape[-1], W_x.dtype) if b is None else b
        if l == 0 and "embed" not in params:  # a row lookup instead of the one-hot product (same math)
            if eng.prepare:  # row by row: on the vocabulary's rows, not on every step's
                xp = tuple(jnp.take(eng.prepare(p, W_x + b), t, axis=0) for t in split(tokens_TxB, 1))
            else:
                xp = tuple(jnp.take(W_x, t, axis=0) + b for t in split(tokens_TxB, 1))
        else:
            if l and key is not None and drop.hidden:  # the mask of the whole (T, B, H) input, cut into lanes
                mask = split(dropout_mask(key, l, (tokens_TxB.shape[0], B, x_TxBxD[0].shape[-1]), drop.hidden,
                                          x_TxBxD[0].dtype, drop.locked), 1)
                x_TxBxD = tuple(x * m for x, m in zip(x_TxBxD, mask))
            xp = engine.input_projection(*engine.same_vma((x_TxBxD, W_x, b)))
            if eng.prepare:
                xp = tuple(eng.prepare(p, x) for x in xp)
        s0 = tuple(c.State(*parts) for parts in zip(*(split(a, 0) for a in layer_state(state, l, sizes and sizes[l]))))
        if eng.linearize is not None:
            x_TxBxD, final = engine.factored_recurrence(
                eng.linearize, eng.transpose, *engine.same_vma((xp, W_h, s0)))
        elif eng.kernel is None:
            x_TxBxD, final = engine.cell_recurrence(
                eng.pointwise, eng.additive, *engine.same_vma((eng.pointwise_params(p), xp, W_h, s0)))
        elif l == L - 1 and fused_head:
            logits, h, cc = eng.kernel.recurrence_and_head(*engine.same_vma(
                (xp, W_h, *head(params), tuple(s.h for s in s0), tuple(s.c for s in s0), eng.pointwise_params(p))))
            final = tuple(map(c.State, h, cc))
        else:
            x_TxBxD, h, cc = eng.kernel.recurrence(*engine.same_vma(
                (xp, W_h, tuple(s.h for s in s0), tuple(s.c for s in s0), eng.pointwise_params(p))))
            final = tuple(map(c.State, h, cc))
        finals.append(jax.tree.map(lambda *a: jnp.concatenate(a), *final))
    if fused_head:
        logits = jnp.concatenate([jnp.transpose(g, (1, 0, 2)) for g in logits], axis=0)
        return logits, stack_layers(finals, state)
    h = jnp.concatenate(x_TxBxD, axis=1)
    x = dropout(key, L, h, drop.output, drop.locked)
    W_hq, b_q = head(params)
    return (jnp.swapaxes(x @ W_hq + b_q, 0, 1), stack_layers(finals, state)) + (((h, x),) if outputs else ())
