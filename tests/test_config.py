"""Config validation: strict keys with hints, file and line in every error, overrides, plugin sections."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ftk.cli import main
from ftk.core.config.loader import load_config
from ftk.core.config.source import parse_overrides
from ftk.core.errors import FtkError

BASE = """\
base_model: some/model
datasets:
  - path: data.jsonl
    type: chat_template
"""


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path, overrides=None) -> list[str]:
    with pytest.raises(FtkError) as info:
        load_config(path, overrides)
    return str(info.value).splitlines()


def test_valid_config_fills_defaults(tmp_path):
    cfg, _ = load_config(write(tmp_path, BASE + "adapter: lora\nlora_r: 16\n"))
    assert cfg.lora_r == 16
    assert cfg.lora_alpha == 16  # default
    assert cfg.datasets[0].field_messages == "messages"  # strategy option default
    assert cfg.datasets[0].train_on_eos == "turn"


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = write(tmp_path, BASE + "adapter: lora\nlora_rnak: 8\n")
    assert errors_of(path) == [f"{path}:6: lora_rnak: unknown key (did you mean 'lora_r'?)"]


def test_cli_validate_unknown_key_exits_2_without_traceback(tmp_path, capsys):
    path = write(tmp_path, BASE + "lora_rnak: 8\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}:5: lora_rnak: unknown key (did you mean 'lora_r'?)\n"
    assert "Traceback" not in err


def test_verbose_shows_traceback(tmp_path, capsys):
    path = write(tmp_path, BASE + "lora_rnak: 8\n")
    assert main(["validate", str(path), "--verbose"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_wrong_type_names_line_and_value(tmp_path):
    path = write(tmp_path, BASE + "micro_batch_size: two\n")
    (line,) = errors_of(path)
    assert line.startswith(f"{path}:5: micro_batch_size: Input should be a valid integer")
    assert line.endswith("(got 'two')")


def test_missing_required_key(tmp_path):
    path = write(tmp_path, "datasets:\n  - path: d.jsonl\n")
    assert errors_of(path) == [f"{path}: base_model: required key is missing"]


def test_dataset_key_typo_is_caught_with_its_line(tmp_path):
    path = write(
        tmp_path,
        """\
        base_model: m
        datasets:
          - path: a.jsonl
          - path: b.jsonl
            feild_messages: conversations
        """,
    )
    assert errors_of(path) == [
        f"{path}:5: datasets[1].feild_messages: unknown key (did you mean 'field_messages'?)"
    ]


def test_all_problems_reported_at_once_in_line_order(tmp_path):
    path = write(tmp_path, BASE + "lora_rnak: 8\nsequence_len: -1\n")
    lines = errors_of(path)
    assert [line.split(": ")[0] for line in lines] == [f"{path}:5", f"{path}:6"]


def test_unknown_strategy_suggests_registered_name(tmp_path):
    path = write(tmp_path, "base_model: m\ndatasets:\n  - path: a.jsonl\n    type: chat_templat\n")
    (line,) = errors_of(path)
    assert line.startswith(
        f"{path}:4: datasets[0].type: unknown strategy 'chat_templat' (did you mean 'chat_template'?)"
    )


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, BASE + "lora_r: 8\nlora_r: 16\n")
    assert errors_of(path) == [f"{path}:6: lora_r: duplicate key (first set on line 5)"]


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path, BASE + "lora_r: [8\n")
    (line,) = errors_of(path)
    assert line.startswith(f"{path}:") and "invalid YAML" in line


def test_combination_problem_points_at_key(tmp_path):
    path = write(tmp_path, BASE + "bf16: true\nfp16: true\n")
    assert errors_of(path) == [f"{path}:6: fp16: bf16 and fp16 are both true; choose one"]


def test_overrides_apply_and_are_validated(tmp_path):
    path = write(tmp_path, BASE)
    cfg, _ = load_config(path, ["--learning_rate", "3e-4", "--max_steps=10", "--lora-r", "4"])
    assert (cfg.learning_rate, cfg.max_steps, cfg.lora_r) == (3e-4, 10, 4)
    assert errors_of(path, ["--max_steps", "ten"])[0].startswith(
        f"{path}: command line --max_steps: max_steps: Input should be a valid integer"
    )
    assert errors_of(path, ["--lerning_rate", "1"]) == [
        f"{path}: command line --lerning_rate: lerning_rate: unknown key (did you mean 'learning_rate'?)"
    ]


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(["--a", "null", "--b", "true", "--c", "[1, 2]", "--d", "1e-5", "--e", "text"]) == {
        "a": None,
        "b": True,
        "c": [1, 2],
        "d": 1e-5,
        "e": "text",
    }
    with pytest.raises(FtkError, match="--a needs a value"):
        parse_overrides(["--a"])


def test_plugin_section_is_accepted_and_validated(tmp_path):
    plugin = "tests.fixture_plugins.section_plugin"
    good = write(tmp_path, BASE + f"plugins: [{plugin}]\nsmoothing:\n  epsilon: 0.2\n", "good.yaml")
    cfg, manager = load_config(good)
    assert cfg.section("smoothing").epsilon == 0.2
    assert manager.infos[plugin].source == "config"

    bad = write(
        tmp_path, BASE + f"plugins: [{plugin}]\nsmoothing:\n  epsilon: 2\n  enabeld: true\n", "bad.yaml"
    )
    assert errors_of(bad) == [
        f"{bad}:7: smoothing.epsilon: Input should be less than or equal to 1 (got 2)",
        f"{bad}:8: smoothing.enabeld: unknown key (did you mean 'enabled'?)",
    ]


def test_section_unknown_without_its_plugin(tmp_path):
    path = write(tmp_path, BASE + "smoothing:\n  epsilon: 0.2\n")
    assert errors_of(path) == [f"{path}:5: smoothing: unknown key"]


def test_custom_strategy_import_error_is_reported_as_itself(tmp_path):
    path = write(
        tmp_path,
        "base_model: m\ndatasets:\n  - path: a.jsonl\n    type: tests.fixture_plugins.broken_plugin.build\n",
    )
    (line,) = errors_of(path)
    assert "ftk_dependency_that_does_not_exist" in line
    assert "unknown strategy" not in line


def test_misspelt_chat_template_names_are_caught_at_validation(tmp_path):
    from ftk.prompt_strategies.templates import BUILTIN_TEMPLATES

    choices = f"choose tokenizer_default, jinja or a built-in: {', '.join(BUILTIN_TEMPLATES)}"
    path = write(
        tmp_path,
        """\
        base_model: some/model
        chat_template: chatlm
        datasets:
          - path: data.jsonl
            type: chat_template
            chat_template: lama3
          - path: data.jsonl
            type: alpaca
            prompt_style: chat_template
            chat_template: qwen
        """,
    )
    assert errors_of(path) == [
        f"{path}:2: chat_template: unknown template 'chatlm' (did you mean 'chatml'?); {choices}",
        f"{path}:6: datasets[0].chat_template: unknown template 'lama3' (did you mean 'llama3'?); "
        f"{choices} (got 'lama3')",
        f"{path}:10: datasets[1].chat_template: unknown template 'qwen' (did you mean 'qwen3'?); "
        f"{choices} (got 'qwen')",
    ]
    text = write(
        tmp_path, BASE + "chat_template: '{% for m in messages %}{{ m.content }}{% endfor %}'\n", "t.yaml"
    )
    assert errors_of(text) == [
        f"{text}:5: chat_template: holds template text; set chat_template: jinja and put the text in "
        "chat_template_jinja"
    ]
    good = BASE + "chat_template: tokenizer_default\n"
    assert load_config(write(tmp_path, good, "good.yaml"))[0].chat_template == "tokenizer_default"
