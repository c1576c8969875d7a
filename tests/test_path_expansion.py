"""``~`` and environment variables in path keys: expanded once, by the schema, for every path key."""

from __future__ import annotations

import pytest

from ftk.cli import main
from tests.helpers import CHAT, first_chat_rows, make_config, write_config


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh home directory and a ``$SCRATCH`` variable, both inside ``tmp_path``."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SCRATCH", str(tmp_path / "scratch"))
    return home


def test_every_path_key_expands_home_and_variables(home, tmp_path):
    cfg = make_config(
        base_model="~/models/tiny",
        tokenizer_config="$SCRATCH/tok",
        datasets=[{"path": "~/data/chat.jsonl", "data_files": ["${SCRATCH}/a.jsonl", "~/b.jsonl"]}],
        test_datasets=[{"path": "$SCRATCH/eval.jsonl"}],
        output_dir="~/runs/a",
        dataset_prepared_path="$SCRATCH/prepared",
        resume_from_checkpoint="~/runs/a/checkpoint-3",
    )
    scratch = tmp_path / "scratch"
    assert cfg.base_model == f"{home}/models/tiny"
    assert cfg.tokenizer_config == f"{scratch}/tok"
    assert cfg.datasets[0].path == f"{home}/data/chat.jsonl"
    assert cfg.datasets[0].data_files == [f"{scratch}/a.jsonl", f"{home}/b.jsonl"]
    assert cfg.test_datasets[0].path == f"{scratch}/eval.jsonl"
    assert cfg.output_dir == f"{home}/runs/a"
    assert cfg.dataset_prepared_path == f"{scratch}/prepared"
    assert cfg.resume_from_checkpoint == f"{home}/runs/a/checkpoint-3"


def test_hub_ids_and_template_text_are_left_as_written(home):
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    cfg = make_config(base_model="Qwen/Qwen2.5-0.5B", chat_template="jinja", chat_template_jinja=template)
    assert cfg.base_model == "Qwen/Qwen2.5-0.5B"
    assert cfg.chat_template_jinja == template
    assert make_config(chat_template="jinja", chat_template_jinja="~/t.jinja").chat_template_jinja == (
        f"{home}/t.jinja"
    )


def test_a_deepspeed_config_path_expands_too(home):
    (home / "ds.json").write_text('{"zero_optimization": {"stage": 2}}')
    cfg = make_config(deepspeed="~/ds.json")
    assert cfg.section("deepspeed").root == f"{home}/ds.json"


def test_an_unset_variable_is_a_one_line_error(tmp_path, monkeypatch, capsys, tiny_model_dir):
    monkeypatch.delenv("FTK_NO_SUCH_VARIABLE", raising=False)
    config = write_config(tmp_path, tiny_model_dir, CHAT, output_dir="$FTK_NO_SUCH_VARIABLE/run")
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "cfg.yaml:" in err and "output_dir: environment variable FTK_NO_SUCH_VARIABLE is not set" in err
    assert "Traceback" not in err
    assert not any(tmp_path.glob("$*"))


def test_preprocess_with_home_paths_writes_under_home_not_a_literal_tilde(
    home, tmp_path, monkeypatch, tiny_model_dir
):
    first_chat_rows(home / "chat.jsonl", 8)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = write_config(
        work,
        tiny_model_dir,
        [{"path": "~/chat.jsonl", "type": "chat_template"}],
        output_dir="~/runs/a",
        dataset_prepared_path="~/prepared",
    )
    assert main(["preprocess", str(config)]) == 0
    assert not (work / "~").exists()
    entries = [path for path in (home / "prepared").iterdir() if not path.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "train").is_dir()
