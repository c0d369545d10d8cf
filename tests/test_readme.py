"""README.md is the user's first screen and stays short; docs/config.md documents every config field."""

import os
import re

from conftest import REPO, tiny
from lstm_jax import configs


def readme(name="README.md") -> str:
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


def fields(config, prefix=""):
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from fields(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def test_every_config_field_is_in_the_config_table_and_only_those():
    table = set(re.findall(r"^\| `([a-z0-9_.]+)` \|", readme("docs/config.md"), flags=re.M))
    names = set(fields(configs.get_base_config()))
    assert table == names, (f"docs/config.md lacks {sorted(names - table)}, "
                            f"has retired {sorted(table - names)}")


def test_the_readme_is_one_screen():
    assert len(readme().splitlines()) <= 150


def test_the_python_api_example_runs(tmp_path, monkeypatch, capsys):
    # README's example as written, on the smoke-test sizes (its base config would take minutes).
    (code,) = re.findall(r"```python\n(.*?)```", readme(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    small = tiny()
    monkeypatch.setattr(configs, "get_base_config", small.copy_and_resolve_references)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    ppl, best = lines[-2].split()
    assert 1 < float(ppl) < 40 and best == "None"  # tiny.py has no validation split
    assert lines[-1].startswith("time traveller") and len(lines[-1]) > len("time traveller")
    assert (tmp_path / "runs" / "mine" / "checkpoints").is_dir()
