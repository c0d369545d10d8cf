"""Recurrent cells: each is its parameters, its state (a NamedTuple) and one time step.

A :class:`Cell` is data: ``init`` draws one layer's parameters (d2l's names where d2l
has the cell), ``state_sizes`` gives the width of each state field (field 0 is ``h``,
what the next layer and the head see), ``step`` is the definition, one time step as
the paper writes it. Cells whose step is "one product ``h W_h`` for all gates, then
elementwise work" also describe themselves to the recurrence engine
(:class:`Engine`, run by :mod:`lstm_jax.engine`). The stacked model
(:mod:`lstm_jax.models`) and everything above it never ask which cell they run.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class Options(NamedTuple):
    """What a cell's shapes and initialization may depend on besides its input size."""

    num_hiddens: int
    proj_size: int = 0  # lstm_proj: the projected h's size
    forget_bias: float = 0.0  # the LSTM family's forget-gate bias at initialization
    num_heads: int = 1  # slstm: heads, each with its own block of the recurrent weights


class HState(NamedTuple):
    """The state of a cell that carries only its hidden state (RNN, GRU); each (B, L, H) stacked."""

    h: jax.Array


@dataclasses.dataclass(frozen=True)
class Engine:
    """A cell as the engine runs it: ``xp = x W_x + b`` for all steps before the loop, then per
    step ``state = pointwise(q, xp_t, h_{t-1} W_h, state)``; ``q`` are the elementwise
    parameters (peepholes, norms, recurrent biases), ``{}`` if none."""

    input_weights: Callable  # params -> (W_x (D, G), b (G,))
    recurrent_weights: Callable  # params -> W_h (H, G)
    pointwise_params: Callable  # params -> q
    pointwise: Callable  # (q, xp_BxG, hh_BxG, state) -> state
    kernel: Any = None  # the cell's own kernel (recurrence, recurrence_and_head); None: jax.vjp of pointwise
    additive: bool = True  # pointwise depends on xp + hh only (not on each apart)
    # (params, xp_...xG) -> xp: input-only work before the loop, row by row (a one-hot layer applies it
    # to the vocabulary's rows of W_x before the lookup)
    prepare: Callable | None = None
    # A hand-written reverse step (engine.factored_recurrence) for an additive cell without q:
    # linearize (z, state) -> (state, factors); transpose (factors, d_state) -> (dz, d_prev_state[1:]).
    linearize: Callable | None = None
    transpose: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str
    State: type  # a NamedTuple class; field 0 is h
    init: Callable  # (key, input_size, Options) -> one layer's parameters
    state_sizes: Callable  # Options -> State of ints
    step: Callable  # (params, state, x_t) -> (state, h): x_t is ids (B,) or vectors (B, D)
    engine: Engine | None = None
    gates: str = ""  # per gate g a W_h<g> multiplies the previous h (what weight drop masks)
    sequence: Callable | None = None  # (params, state, x_T...) -> (state, h_TxBxH): all steps at once
    # (params, state, x_t) -> {name: (B, width)}: the step's named quantities, for lstm_jax.inspect; a
    # cell without it shows its state's fields. gate_signals: those in (0, 1) (saturation).
    signals: Callable | None = None
    gate_signals: tuple[str, ...] = ()

    @property
    def recurrent(self) -> tuple[str, ...]:
        return tuple(f"W_h{g}" for g in self.gates)


def step_from(signals: Callable, State: type) -> Callable:
    """The step whose new state is the signals of the state's field names, so a cell writes its
    equations once (in ``signals``) and inspection sees exactly what training runs."""
    def step(params, state, x_t):
        named = signals(params, state, x_t)
        new = State(*(named[f] for f in State._fields))
        return new, new[0]

    return step


def project(W_DxH: jax.Array, x_t: jax.Array) -> jax.Array:
    """``x_t W``: token ids (d2l's one-hot input) take rows of ``W`` instead of the product."""
    return jnp.take(W_DxH, x_t, axis=0) if jnp.issubdtype(x_t.dtype, jnp.integer) else x_t @ W_DxH


def normal(key, shape, std=0.01):
    """d2l's ``normal``: weights ~ N(0, 0.01^2)."""
    return std * jax.random.normal(key, shape)


def gate_params(key, D: int, H: int, gates: str, recurrent: int | None = None, bias=lambda g: 0.0) -> dict:
    """d2l's ``get_params`` for ``gates``: per gate ``W_x<g>`` (D, H) and ``W_h<g>`` (``recurrent`` or H,
    H) ~ N(0, 0.01^2) and ``b_<g>`` = ``bias(g)`` (``bias=None``: no biases). One key per array, as d2l
    draws them (three per gate, then the head's two), so d2l's LSTM gets the weights it always had."""
    keys = iter(jax.random.split(key, 3 * len(gates) + 2))
    out = {}
    for g in gates:
        out[f"W_x{g}"] = normal(next(keys), (D, H))
        out[f"W_h{g}"] = normal(next(keys), (recurrent or H, H))
        next(keys)
        if bias is not None:
            out[f"b_{g}"] = jnp.full((H,), bias(g))
    return out


def gate(p: dict, h: jax.Array, x_t: jax.Array, g: str) -> jax.Array:
    """Gate ``g``'s pre-activation: ``x_t W_x<g> + h W_h<g> + b_<g>``."""
    return project(p[f"W_x{g}"], x_t) + h @ p[f"W_h{g}"] + p[f"b_{g}"]


def stack(params: dict, prefix: str, gates: str) -> jax.Array:
    """Per-gate arrays ``<prefix><g>`` side by side along the last axis, in ``gates`` order."""
    return jnp.concatenate([params[f"{prefix}{g}"] for g in gates], axis=-1)


def redraw(key, params: dict, scheme: str, scale: float) -> dict:
    """Every layer's arrays drawn again by their role, which their d2l names say (``W_h*``: multiplies
    the previous ``h``; ``W_*``: other weights; ``b_*``: biases; ``embed``), for any cell:

    - ``d2l``: d2l's N(0, 0.01^2) weights as N(0, scale^2) (the same draws, rescaled);
    - ``flax``: flax's cells and ``Dense``: ``W_h*`` orthogonal (per head), other matrices LeCun-normal;
    - ``uniform``: weights, biases and the embedding ~ U(-scale, scale), added to the biases' values,
      so a forget bias stays.
    Other vectors (layer norm's gains, peepholes) keep the cell's own values. ``key``: the one the
    parameters were drawn from (array n's new key is its 20,000 + n-th fold, apart from the cells')."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for n, (path, a) in enumerate(leaves):
        name, k = path[-1].key, jax.random.fold_in(key, 20_000 + n)
        if scheme == "d2l" and name[0] in "Ww" and name != "embed":
            a = a * (scale / 0.01)
        elif scheme == "flax" and a.ndim == 2 and name != "embed":
            recurrent = name.startswith("W_h") and name != "W_hq"
            a = (jax.nn.initializers.orthogonal() if recurrent else jax.nn.initializers.lecun_normal())(k, a.shape)
        elif scheme == "flax" and a.ndim == 3:  # slstm's heads: each block orthogonal
            a = jax.vmap(lambda k: jax.nn.initializers.orthogonal()(k, a.shape[1:]))(jax.random.split(k, a.shape[0]))
        elif scheme == "uniform" and name.startswith(("W_", "b_", "embed")):
            a = jax.random.uniform(k, a.shape, a.dtype, -scale, scale) + (a if name.startswith("b_") else 0)
        out.append(a)
    return tree.unflatten(out)


def _registry() -> dict[str, Cell]:
    from lstm_jax.cells import gru, lstm, minimal, rnn, slstm

    cells = (*lstm.CELLS, *gru.CELLS, *rnn.CELLS, *minimal.CELLS, *slstm.CELLS)
    return {c.name: c for c in cells}


CELLS = _registry()
NAMES = tuple(CELLS)
FLAX = {"lstm": "OptimizedLSTMCell", "gru_reset_after": "GRUCell", "rnn": "SimpleCell"}  # flax's own (concise)


def get(name: str) -> Cell:
    return CELLS[name]
