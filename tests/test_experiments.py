"""Every recipe in experiments/ loads, passes validation and builds the model its docstring describes.

The recipes that take hours or GPU days are never trained here; this keeps a typo in one from
surfacing only at the end of someone's long run, and the parameter counts their docstrings and
docs/results.md quote from drifting away from what the code builds.
"""

import glob
import os
import re

import pytest

from lstm_jax import configs, models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(REPO, "experiments", "*.py")))
# Each corpus's vocabulary with the recipes' settings (word corpora: the training file's, <eos> included).
VOCAB = {("ptb", "word"): 10_000, ("wikitext2", "word"): 33_278, ("tinyshakespeare", "char"): 65,
         ("timemachine", "char"): 28}
QUOTED = {"ptb_awd.py", "wikitext2_awd.py", "ptb_hour.py"}  # recipes whose docstring quotes their size


def test_the_recipes_are_found():
    assert {"ptb_small.py", "ptb_hour.py", "ptb_awd.py", "shakespeare.py", "tiny.py"} <= {
        os.path.basename(p) for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_a_recipe_is_valid_and_says_how_to_run_it(path):
    config = configs.load_file(path)
    configs.validate(config)
    with open(path, encoding="utf-8") as f:
        doc = f.read().split('"""')[1]
    name = os.path.relpath(path, REPO)
    if name != "experiments/tiny.py":  # the tests' own config
        assert f"--config {name}" in doc or f"--config={name}" in doc, "the docstring gives the command"
    vocab = VOCAB.get((config.data.corpus, config.data.token))
    if config.data.path or vocab is None:
        return
    model = models.from_config(config, vocab)
    claimed = re.search(r"([\d,]{7,}) parameters", doc)
    assert claimed or os.path.basename(path) not in QUOTED, "the docstring quotes the parameter count"
    if claimed:  # the count the docstring quotes is what the code builds
        assert model.num_params() == int(claimed.group(1).replace(",", ""))
