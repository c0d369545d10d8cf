"""The PyTorch reference: lstm_jax's stacked language model as ``torch.nn`` modules (``nn.LSTM``,
and for speed comparisons ``nn.GRU`` and ``nn.RNN``).

One definition for everything that compares lstm_jax with PyTorch (``bench.py``'s speed,
``compare_torch.py``'s loss at equal time, ``tests/test_torch.py``'s exact equality), so they
all measure the same model. torch is a test/benchmark extra (``pip install -e '.[dev]'``);
lstm_jax itself never imports it.

The model is lstm_jax's scratch model (its ``apply``): layer 0 reads the tokens one-hot (d2l's input;
lstm_jax takes the row of ``W_x*``, the same numbers) or, with ``embed_dim``, an embedding;
``nn.LSTM(num_layers=L)``; a linear head. Dropout, as lstm_jax's, only on the non-recurrent
connections: the embedding's output (not the one-hot input), between layers and before the head.
Time-major, as ``nn.LSTM`` runs by default: tokens (T, B), logits (T, B, V), state (L, B, H) each.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# PyTorch stacks a layer's gates as i, f, g, o; d2l's names for them (g is d2l's candidate C~).
TORCH_GATES = ("i", "f", "c", "o")


TORCH_CELLS = {"lstm": nn.LSTM, "gru_reset_after": nn.GRU, "rnn": nn.RNN}  # lstm_jax's cell -> PyTorch's


class TorchLM(nn.Module):
    def __init__(self, vocab_size: int, num_hiddens: int, num_layers: int = 1, embed_dim: int = 0,
                 dropout: float = 0.0, cell: str = "lstm"):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embed_dim) if embed_dim else None
        self.drop = nn.Dropout(dropout)
        self.rnn = TORCH_CELLS[cell](embed_dim or vocab_size, num_hiddens, num_layers=num_layers,
                                     dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(num_hiddens, vocab_size)

    def forward(self, tokens_TxB: torch.Tensor, state=None):
        """Logits (T, B, V) and the new state (``(h, c)`` for the LSTM); ``state=None`` starts from zeros."""
        if self.embed is not None:
            x = self.drop(self.embed(tokens_TxB))
        else:
            x = nn.functional.one_hot(tokens_TxB, self.vocab_size).to(self.head.weight.dtype)
        out, state = self.rnn(x, state)
        return self.head(self.drop(out)), state


def load_params(model: TorchLM, params) -> TorchLM:
    """Copy lstm_jax's d2l-named parameters into ``model`` (in place; returns it).

    d2l computes ``x @ W_x*`` with (in, H) weights, layer 0's at the top level of ``params`` and
    layer l's under ``params["layer{l}"]``; PyTorch keeps (4H, in) per layer, gates stacked as
    ``TORCH_GATES``, and two biases of which one is enough: lstm_jax's goes in ``bias_ih``,
    ``bias_hh`` is zero.
    """
    t = lambda a: torch.tensor(np.asarray(a))
    gates = lambda p, prefix: torch.cat([t(p[prefix + g]) for g in TORCH_GATES], dim=-1)  # (in, 4H)
    L = model.rnn.num_layers
    if 1 + sum(k.startswith("layer") for k in params) != L or (model.embed is None) != ("embed" not in params):
        raise ValueError("the parameters are of another shape of model (layers or embedding)")
    with torch.no_grad():
        for l in range(L):
            p = params if l == 0 else params[f"layer{l}"]
            getattr(model.rnn, f"weight_ih_l{l}").copy_(gates(p, "W_x").T)
            getattr(model.rnn, f"weight_hh_l{l}").copy_(gates(p, "W_h").T)
            getattr(model.rnn, f"bias_ih_l{l}").copy_(gates(p, "b_"))
            getattr(model.rnn, f"bias_hh_l{l}").zero_()
        model.head.weight.copy_(t(params["W_hq"]).T)
        model.head.bias.copy_(t(params["b_q"]))
        if model.embed is not None:
            model.embed.weight.copy_(t(params["embed"]))
    return model
