"""The one place every config field is defined, checked and compared.

``experiments/*.py`` import this (ml-collections loads config files as top-level modules, so they
cannot import each other) and change what their experiment needs. ``python -m lstm_jax.train --help``
lists every field with its default; docs/config.md explains each one. Configs saved by older versions
are read through :func:`upgrade`, the one place that knows older formats.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import traceback

import ml_collections
from ml_collections import config_dict

from lstm_jax import cells
from lstm_jax.errors import UserError

# Allowed values of every enum field: validate() is the only place they are checked.
CHOICES = {
    "model": ("scratch", "concise"),
    "cell": cells.NAMES,
    "lstm_impl": ("fast", "reference"),
    "init": ("d2l", "flax", "uniform"),
    "dtype": ("float32", "bfloat16"),
    "optimizer": ("sgd", "adam", "adamw", "ntasgd"),
    "lr_schedule": ("constant", "cosine", "step"),
    "data.corpus": ("timemachine", "tinyshakespeare", "ptb", "wikitext2"),
    "data.normalize": ("d2l", "none", "eos"),
    "data.token": ("char", "word"),
}


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = "scratch"  # 'scratch' (the cell's pure functions) or 'concise' (flax's own cell)
    c.cell = "lstm"  # the recurrent cell (lstm_jax/cells; docs/cells.md)
    c.num_hiddens = 256
    c.proj_size = 0  # lstm_proj: the projected hidden state's size (0: num_hiddens // 2)
    c.forget_bias = 0.0  # the forget gate's initial bias (d2l 0; Jozefowicz et al. 2015 recommend 1)
    c.num_heads = 1  # slstm: heads, each a block of the recurrent weights (xLSTM uses 4); must divide num_hiddens
    # Scratch models' initialization: 'd2l' (unset), 'flax' (orthogonal recurrent, LeCun-normal input
    # and head) or 'uniform' (every weight U(-s, s), Zaremba et al.'s); concise models use flax's own.
    c.init = config_dict.placeholder(str)
    c.init_scale = 0.0  # d2l's std (0: 0.01) or uniform's bound s (0: 1/sqrt(num_hiddens))
    c.num_layers = 1  # stacked recurrent layers (d2l's deep RNN)
    c.last_hiddens = 0  # the last layer's width, if not num_hiddens (AWD-LSTM: 400, its embedding's; scratch)
    c.embed_dim = 0  # 0: one-hot input (d2l, done as a row lookup); > 0: an embedding table
    c.tie_weights = False  # the head is the embedding's transpose (Press & Wolf 2017; Inan et al. 2017)
    c.dropout = 0.0  # on non-recurrent connections only (Zaremba et al. 2014); off in evaluation
    # AWD-LSTM's dropouts (scratch; lstm_jax/regularize.py): the rates at the embedding's output and before
    # the head (unset: dropout's), masks per sequence instead of per step, embedding rows, recurrent weights
    c.dropout_input = config_dict.placeholder(float)
    c.dropout_output = config_dict.placeholder(float)
    c.locked_dropout = False
    c.embed_dropout = 0.0
    c.weight_drop = 0.0
    c.activation_reg = 0.0  # AWD's AR: + activation_reg * mean(h^2) of the last layer's dropped outputs (AWD: 2)
    c.temporal_reg = 0.0  # AWD's TAR: + temporal_reg * mean((h_t - h_{t-1})^2), before dropout (AWD: 1)
    c.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16' (parameters stay float32)
    # How the layers run: 'fast' (the engine) or 'reference'. Unset: the fastest the cell has.
    c.lstm_impl = config_dict.placeholder(str)

    c.data = ml_collections.ConfigDict()
    c.data.corpus = "timemachine"  # built in: 'timemachine', 'tinyshakespeare'; words: 'ptb', 'wikitext2'
    # A UTF-8 text file instead, or a directory of train.txt, valid.txt and test.txt (its own splits)
    c.data.path = config_dict.placeholder(str)
    c.data.url = config_dict.placeholder(str)  # or download this (cached, hash-checked)
    c.data.sha1 = config_dict.placeholder(str)  # expected SHA-1 of the file at path/url
    c.data.cache_dir = config_dict.placeholder(str)  # unset: $LSTM_JAX_DATA, else ~/.cache/lstm_jax
    # 'd2l': letters only, lower-cased; 'none': every character kept; 'eos': words, <eos> at line ends
    c.data.normalize = "d2l"
    c.data.token = "char"  # 'char' or 'word'
    c.data.max_tokens = 10000  # d2l trains on the first 10,000 tokens (split corpora: of each file); <= 0: all
    c.data.min_freq = 0
    c.data.val_fraction = 0.0  # held-out tails of the token stream: train, then val, then test
    c.data.test_fraction = 0.0
    c.data.random_iter = False  # d2l's use_random_iter: random vs sequential partitioning

    c.batch_size = 32
    c.num_steps = 35
    # AWD-LSTM's variable length: each minibatch N(num_steps, 5) steps (N(num_steps / 2, 5) with probability
    # 0.05), rounded to a multiple of 5, the rate times length / num_steps; sequential partitioning only
    c.variable_bptt = False
    c.optimizer = "sgd"  # 'sgd', 'adam', 'adamw' or 'ntasgd' (AWD-LSTM's: SGD, then the mean of the iterates)
    c.nonmono = 5  # ntasgd: average once validation is worse than the best of all but the last nonmono
    c.learning_rate = 1.0  # the peak rate under a schedule
    c.weight_decay = 0.0  # adamw: decoupled; sgd, ntasgd, adam: L2, added to the clipped gradient (PyTorch's)
    # 'constant', 'cosine' (to 0 over the run's num_epochs) or 'step' (Zaremba et al.: times lr_decay each
    # epoch after the first lr_decay_after epochs)
    c.lr_schedule = "constant"
    c.lr_decay = 0.5
    c.lr_decay_after = 4
    c.warmup_steps = 0  # linear warm-up from 0 (updates)
    c.grad_clip = 1.0  # global gradient norm bound (d2l's grad_clipping(net, 1))
    c.num_epochs = 50
    c.num_updates = 0  # > 0: the run's length in updates (and its schedule's), instead of num_epochs
    c.time_budget_s = 0.0  # > 0: as many updates as fit in this many seconds (measured), at most num_epochs
    c.seed = 0

    c.eval_batch_size = 0  # held-out text scored as this many streams side by side; 0: batch_size (AWD: 1)
    c.eval_every_steps = 0  # held-out evaluation every N updates; 0: once per epoch
    c.log_every = 10  # epochs between d2l-style lines with greedy continuations
    c.prefixes = ("time traveller", "traveller")
    c.num_preds = 50  # characters (tokens) each continuation adds
    c.batches_per_call = 64  # at most this many minibatches per compiled call

    c.checkpoint_every = 10  # epochs between checkpoints (also saved at the end and on Ctrl-C)
    c.max_to_keep = 3  # checkpoints kept (the newest)
    c.overwrite = False  # True: discard the workdir's outputs and start over
    return c


# Fields that may change between a run and its resumption: they change what is
# logged, how long it runs or how it is computed, never what one update computes.
RESUME_SAFE = frozenset({
    "num_epochs", "time_budget_s", "log_every", "prefixes", "num_preds", "batches_per_call",
    "checkpoint_every", "max_to_keep", "overwrite", "eval_every_steps", "eval_batch_size",
    "lstm_impl",  # same parameters, function and gradients either way
    "data.cache_dir",  # where the corpus is found, not what it holds (its SHA-1 is checked)
})

# Fields older versions wrote that no longer exist, with the value that meant what today's
# defaults mean (None: any value did). A saved run with such a value still loads and resumes.
RETIRED = {
    "data.num_val": 0,  # 0.1: a held-out tail by token count, before val_fraction
    "keep_cores_awake": None,  # 0.2: idle-priority spinners, where the idle time went
}

_POSITIVE = ("num_heads", "nonmono", "num_hiddens", "num_layers", "batch_size", "num_steps", "num_epochs", "log_every",
             "num_preds", "batches_per_call", "checkpoint_every", "max_to_keep", "learning_rate",
             "grad_clip")
_RATES = ("dropout", "dropout_input", "dropout_output", "embed_dropout", "weight_drop")
_NON_NEGATIVE = ("last_hiddens", "activation_reg", "temporal_reg", "embed_dim", "proj_size", "init_scale", "eval_batch_size", "lr_decay", "lr_decay_after", "weight_decay", "warmup_steps", "time_budget_s", "num_updates",
                 "eval_every_steps", "data.min_freq", "data.val_fraction", "data.test_fraction")


def validate(config: ml_collections.ConfigDict) -> None:
    """Fail early, naming the field and its value, on what would only fail deep inside JAX."""
    for name, allowed in CHOICES.items():
        value = config[name]  # a dotted name reaches into sections
        if value not in allowed and not (name in ("lstm_impl", "init") and value is None):
            raise UserError(f"config.{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    for name in _POSITIVE + _NON_NEGATIVE:
        value = config[name]
        if isinstance(value, float) and math.isnan(value):
            raise UserError(f"config.{name} is nan")
        if (value <= 0) if name in _POSITIVE else (value < 0):
            must = "positive" if name in _POSITIVE else ">= 0"
            raise UserError(f"config.{name} must be {must}, got {value!r}")
    for name in _RATES:
        if config[name] is not None and not 0 <= config[name] < 1:
            raise UserError(f"config.{name} must be in [0, 1), got {config[name]!r}")
    awd = [f"{n}={config[n]!r}" for n in _RATES[1:] + ("locked_dropout", "activation_reg", "temporal_reg")
           if config[n] not in (None, 0, False)]
    if awd and config.model == "concise":
        raise UserError(f"config.{awd[0]}: the concise model (flax's cells) has only config.dropout; use model='scratch'")
    if (config.embed_dropout or config.dropout_input) and not config.embed_dim:
        raise UserError("config.embed_dropout and config.dropout_input act on an embedding: set config.embed_dim")
    if config.data.val_fraction + config.data.test_fraction >= 1:
        raise UserError(f"config.data.val_fraction + config.data.test_fraction must be < 1 (the rest is "
                        f"the training split), got {config.data.val_fraction} + {config.data.test_fraction}")
    _validate_cell(config)
    if config.data.normalize == "eos" and config.data.token != "word":
        raise UserError("config.data.normalize='eos' (an <eos> token at each line's end) needs config.data.token='word'")
    if config.variable_bptt and config.data.random_iter:
        raise UserError("config.variable_bptt=True moves where each minibatch starts along a carried stream: "
                        "it needs sequential partitioning (config.data.random_iter=False)")
    if config.data.path and config.data.url:
        raise UserError("set config.data.path or config.data.url, not both")


_FORGET_GATE = ("lstm", "lstm_peephole", "lstm_layernorm", "lstm_proj", "min_lstm", "slstm")


def _validate_cell(c) -> None:
    cell = cells.get(c.cell)
    if c.model == "concise" and c.cell not in cells.FLAX:
        raise UserError(f"config.model='concise' (flax's own cell) exists for cell {', '.join(cells.FLAX)}; "
                        f"flax has no {c.cell}: use config.model='scratch'")
    if c.lstm_impl == "fast" and (cell.engine is None or c.model == "concise" and c.cell != "lstm"):
        raise UserError(f"config.lstm_impl='fast': cell {c.cell} ({c.model}) does not run through the engine; "
                        "leave lstm_impl unset or use 'reference'")
    if c.model == "concise" and (c.init not in (None, "flax") or c.init_scale):
        raise UserError(f"config.init={c.init!r}, init_scale={c.init_scale}: model='concise' uses flax's own "
                        "initializers; use config.model='scratch' (with init='flax' it draws the same way)")
    if c.init == "flax" and c.init_scale:
        raise UserError(f"config.init_scale={c.init_scale}: init='flax' has no scale; it applies to 'd2l' and 'uniform'")
    if c.tie_weights:
        width = cell.state_sizes(cells.Options(c.last_hiddens or c.num_hiddens, c.proj_size))[0]
        if c.model == "concise":
            raise UserError("config.tie_weights=True: the concise model (flax's cells) does not tie; use model='scratch'")
        if c.embed_dim != width:
            raise UserError(f"config.tie_weights=True: the embedding (embed_dim={c.embed_dim}) must be as wide as "
                            f"the head's input ({width}): set embed_dim={width}"
                            + ("" if c.cell == "lstm_proj" else f", or cell='lstm_proj' with proj_size={c.embed_dim}"
                               if c.embed_dim else ""))
    if c.proj_size and c.cell != "lstm_proj":
        raise UserError(f"config.proj_size={c.proj_size}: only cell lstm_proj has a projection, not {c.cell}")
    if c.last_hiddens and (c.model == "concise" or c.num_layers < 2):
        raise UserError(f"config.last_hiddens={c.last_hiddens}: " + ("the concise model (flax's cells) has one width; "
                        "use model='scratch'" if c.model == "concise" else "one layer has one width: set num_hiddens"))
    if c.num_heads != 1 and (c.cell != "slstm" or c.num_hiddens % c.num_heads or c.last_hiddens % c.num_heads):
        raise UserError(f"config.num_heads={c.num_heads}: " + (f"cell {c.cell} has no heads (only slstm)" if c.cell != "slstm"
                        else f"must divide num_hiddens={c.num_hiddens} and last_hiddens={c.last_hiddens}"))
    if c.weight_drop and not cell.gates:
        raise UserError(f"config.weight_drop={c.weight_drop}: cell {c.cell} has no recurrent weights to drop "
                        "(its gates see the input only)")
    if c.forget_bias and (c.cell not in _FORGET_GATE or c.model == "concise"):
        raise UserError(f"config.forget_bias={c.forget_bias}: cell {c.cell} ({c.model}) has no forget-gate bias "
                        f"to set; the cells that do: {', '.join(_FORGET_GATE)} (scratch)")


def as_dict(config) -> dict:
    """A config (ConfigDict or its saved JSON) as plain nested dicts."""
    return json.loads(config.to_json()) if isinstance(config, ml_collections.ConfigDict) else config


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts as one, keyed by dotted field names."""
    out = {}
    for key, value in d.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def upgrade(saved) -> dict:
    """A config written by any version, in today's format: the one place that reads old configs.

    Fields added since get their defaults (which mean what the older version did); retired fields are
    dropped when they hold their neutral value and kept otherwise, so that :func:`differences` names
    them; an ``lstm_impl`` that no longer exists (0.1's ``'auto'``) means the variant's own.
    """
    def merge(defaults: dict, given: dict, prefix: str) -> dict:
        out = dict(defaults)
        for key, value in given.items():
            name = prefix + key
            if name in RETIRED and RETIRED[name] in (None, value):
                continue
            out[key] = merge(defaults[key], value, name + ".") if isinstance(defaults.get(key), dict) \
                and isinstance(value, dict) else value
        return out

    c = merge(as_dict(get_base_config()), as_dict(saved), "")
    if c["lstm_impl"] not in CHOICES["lstm_impl"]:
        c["lstm_impl"] = None
    if c["data"]["cache_dir"] == "~/.cache/lstm_jax":  # up to 0.2 the default, now $LSTM_JAX_DATA's fallback
        c["data"]["cache_dir"] = None
    return c


def differences(old, new, ignore=RESUME_SAFE) -> list[str]:
    """``field (old -> new)`` for every field that differs, skipping ``ignore``; both upgraded first."""
    a, b = flatten(upgrade(old)), flatten(upgrade(new))
    return [f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]


def load_file(spec: str) -> ml_collections.ConfigDict:
    """``path[:arg]``'s ``get_config()``, loaded once; each way it can fail is one UserError."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"config file {path} " + ("is a directory; give a .py file with a get_config() function"
                                                   if os.path.isdir(path) else "does not exist"))
    where = lambda e: next((f" (line {f.lineno})" for f in reversed(traceback.extract_tb(e.__traceback__))
                            if os.path.abspath(f.filename) == os.path.abspath(path)), "")
    call = f"get_config({arg!r})" if arg else "get_config()"
    try:
        module_spec = importlib.util.spec_from_file_location("lstm_jax_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"config file {path} has a syntax error at line {e.lineno}: {e.msg}") from None
    except Exception as e:  # noqa: BLE001 - whatever the file raises is the user's to see
        raise UserError(f"config file {path} raised {type(e).__name__}: {e}{where(e)} while loading") from None
    if not callable(getattr(module, "get_config", None)):
        raise UserError(f"config file {path} has no get_config() function")
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"config file {path}: {call} raised {type(e).__name__}: {e}{where(e)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"config file {path}: {call} returned {type(config).__name__}, not an "
                        "ml_collections.ConfigDict")
    return config
