"""The plugin manager: discovery from entry points, allow/block lists, import errors, tracing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ftk.cli import main
from ftk.core.errors import FtkError
from ftk.core.plugins import BUILTIN_PLUGINS, FtkPluginManager, PluginImportError, create_plugin_manager

REPO = Path(__file__).resolve().parents[1]


def make_distribution(root: Path, name: str, module_source: str, entry_name: str | None = None) -> Path:
    """An installed-looking distribution (a module plus its .dist-info) under ``root``."""
    module = f"{name}_module"
    (root / f"{module}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name}-0.4.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.4.2\n")
    (info / "entry_points.txt").write_text(f"[ftk.plugins]\n{entry_name or name} = {module}\n")
    return root


GREETER = """\
from ftk.core.hookspecs import hookimpl

@hookimpl
def register_commands(register):
    register(name="greet", help="say hello", add_arguments=lambda p: p.add_argument("who"),
             run=lambda args: print(f"hello {args.who}") or 0)
"""


@pytest.fixture
def greeter_dist(tmp_path, monkeypatch):
    root = make_distribution(tmp_path, "ftk_greeter", GREETER, entry_name="greeter")
    monkeypatch.syspath_prepend(str(root))
    return root


def test_builtins_load_in_order_with_their_hooks():
    manager = create_plugin_manager()
    builtins = [info for info in manager.infos.values() if info.source == "built-in"]
    assert [info.name for info in builtins] == list(BUILTIN_PLUGINS)
    assert manager.infos["lora"].hooks == [
        "check_environment",
        "config_problems",
        "register_adapters",
        "register_commands",
        "register_config_sections",
    ]
    assert manager.infos["hf_model"].hooks == [
        "check_environment",
        "config_problems",
        "load_model",
        "load_tokenizer",
        "post_model_load",
        "register_config_sections",
        "training_arguments",
    ]
    assert manager.infos["loss"].hooks == ["compute_loss", "register_config_sections"]


def test_entry_point_plugin_is_discovered_and_its_command_runs(greeter_dist, capsys):
    manager = create_plugin_manager()
    info = manager.infos["greeter"]
    assert (info.source, info.version, info.hooks) == ("entry point", "0.4.2", ["register_commands"])
    assert main(["greet", "world"]) == 0
    assert capsys.readouterr().out == "hello world\n"


def test_allow_list_limits_entry_points(greeter_dist, monkeypatch):
    monkeypatch.setenv("FTK_LOAD_PLUGINS", "")
    assert "greeter" not in create_plugin_manager().infos
    monkeypatch.setenv("FTK_LOAD_PLUGINS", "greeter")
    assert "greeter" in create_plugin_manager().infos


def test_block_list_applies_to_entry_points_and_builtins(greeter_dist, monkeypatch):
    monkeypatch.setenv("FTK_DISABLE_PLUGINS", "greeter,progress")
    infos = create_plugin_manager().infos
    assert "greeter" not in infos and "progress" not in infos
    assert "lora" in infos


def test_broken_entry_point_is_an_error_naming_it(tmp_path, monkeypatch):
    root = make_distribution(tmp_path, "ftk_broken", "import not_a_real_module_xyz\n", entry_name="broken")
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(PluginImportError) as info:
        create_plugin_manager()
    message = str(info.value)
    assert message.startswith(
        "plugin 'broken' (entry point (ftk_broken), 'ftk_broken_module') failed to import"
    )
    assert "ModuleNotFoundError: No module named 'not_a_real_module_xyz'" in message
    assert "ftk_broken_module.py:1" in message


def test_broken_config_plugin_via_cli_exits_2(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "base_model: m\ndatasets: [{path: a.jsonl}]\nplugins: [tests.fixture_plugins.broken_plugin]\n"
    )
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {cfg}:3: plugins[0]: plugin 'tests.fixture_plugins.broken_plugin' (config, module "
    )
    assert "No module named 'ftk_dependency_that_does_not_exist'" in err
    assert "Traceback" not in err


def test_config_plugin_overrides_first_result_hook():
    manager = FtkPluginManager()
    manager.load_builtins()
    manager.load_config_plugins(["tests.fixture_plugins.section_plugin"])
    impls = [impl.plugin_name for impl in manager.pm.hook.compute_loss.get_hookimpls()]
    # pluggy calls the last of this list first: the config plugin answers before the built-in,
    # whose default loss is trylast.
    assert impls[-1] == "tests.fixture_plugins.section_plugin" and impls[0] == "loss"
    assert manager.infos["tests.fixture_plugins.section_plugin"].version == "1.2.3"


def test_trace_prints_calls_implementations_and_results():
    env = {**os.environ, "FTK_TRACE_HOOKS": "1", "PYTHONPATH": str(REPO)}
    code = (
        "from ftk.core.config.schema import FtkConfig\n"
        "from ftk.core.plugins import create_plugin_manager\n"
        "m = create_plugin_manager()\n"
        "m.hooks.trainer_callbacks(FtkConfig(base_model='m', datasets=[{'path': 'd'}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = result.stderr.splitlines()
    assert any(
        line.startswith("[ftk trace] call trainer_callbacks(cfg=FtkConfig(")
        and "-> implementations: " in line
        and "progress" in line
        and "metrics_log" in line
        for line in lines
    ), result.stderr
    assert any(line.startswith("[ftk trace] trainer_callbacks returned [[") for line in lines), result.stderr


def test_ftk_plugins_lists_builtins_sources_and_hooks(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in BUILTIN_PLUGINS:
        assert name in out
    assert "built-in" in out and "register_adapters" in out


def test_a_name_registered_twice_names_both_plugins(tmp_path, monkeypatch):
    clash = """\
from ftk.core.hookspecs import hookimpl

@hookimpl
def register_prompt_strategies(register):
    register("chat_template", lambda dataset, tokenizer, cfg: None)
"""
    monkeypatch.syspath_prepend(str(make_distribution(tmp_path, "ftk_clash", clash, entry_name="clash")))
    manager = create_plugin_manager()
    with pytest.raises(FtkError) as info:
        manager.collect_registrations()
    assert str(info.value) == (
        "plugin 'clash': prompt strategy 'chat_template' is already registered by plugin 'prompt_strategies'"
    )
