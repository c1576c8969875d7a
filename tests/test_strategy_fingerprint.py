"""The tokenized-data cache key covers a strategy's code: its whole package, not only one file."""

from __future__ import annotations

import importlib
import sys

from ftk.core.data.pipeline import strategy_fingerprint
from ftk.core.registry import Strategy


def test_editing_a_helper_module_of_the_strategys_package_changes_the_fingerprint(tmp_path, monkeypatch):
    package = tmp_path / "mystrategies"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("SEPARATOR = ' '\n")
    (package / "fmt.py").write_text(
        "from mystrategies.helpers import SEPARATOR\n\ndef build(d, t, c):\n    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("mystrategies.fmt")
    try:
        strategy = Strategy("fmt", module.build)
        before = strategy_fingerprint(strategy)
        assert strategy_fingerprint(strategy) == before
        (package / "helpers.py").write_text("SEPARATOR = '\\n'\n")
        assert strategy_fingerprint(strategy) != before
    finally:
        for name in [n for n in sys.modules if n.startswith("mystrategies")]:
            del sys.modules[name]


def test_a_strategy_in_a_top_level_module_is_fingerprinted_by_its_file(tmp_path, monkeypatch):
    (tmp_path / "lonely_fmt.py").write_text("def build(d, t, c):\n    return None\n")
    (tmp_path / "unrelated.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("lonely_fmt")
    try:
        strategy = Strategy("lonely", module.build)
        before = strategy_fingerprint(strategy)
        (tmp_path / "unrelated.py").write_text("X = 2\n")
        assert strategy_fingerprint(strategy) == before
    finally:
        del sys.modules["lonely_fmt"]
