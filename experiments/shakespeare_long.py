"""Tiny Shakespeare without a 3-minute budget: 2 x 384 with dropout, under an hour on a 2-core CPU.

  python -m lstm_jax.train --config experiments/shakespeare_long.py

The same data and scoring as experiments/shakespeare.py (the full validation
split, nats/char); a larger model that dropout keeps from memorizing the
1M training characters. docs/results.md has the run.
RESULT
"""

from lstm_jax.configs import get_base_config


def get_config():
    import importlib.util
    import os

    # ml-collections loads config files as top-level modules: import the sibling by path.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shakespeare.py")
    spec = importlib.util.spec_from_file_location("shakespeare_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.num_hiddens = 384
    config.dropout = 0.25
    config.learning_rate = 4e-3
    config.num_epochs = 25
    config.time_budget_s = 3300.0  # a cap: 25 epochs take about 55 minutes on that machine
    config.eval_every_steps = 1000
    return config
