"""README.md is the user's first screen: it documents every config field, and stays short."""

import os
import re

from conftest import REPO
from lstm_jax import configs


def fields(config, prefix=""):
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from fields(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def test_every_config_field_is_in_the_readme_table():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    table = set(re.findall(r"^\| `([a-z0-9_.]+)` \|", readme, flags=re.M))
    missing = [name for name in fields(configs.get_base_config()) if name not in table]
    assert not missing, f"README.md's config table lacks {missing}"
    assert len(readme.splitlines()) <= 250
