"""axolotl's vocabulary in ftk: null means unset, renamed and legacy keys map with a note, keys ftk
lacks are accepted when off and explained when on, axolotl's plugin paths map onto the built-ins,
and every problem of a config is reported at once.  (The whole-folder figures are measured by
bench/axolotl_examples.py; tests/test_axolotl_examples.py runs a sample of axolotl's own configs.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ftk.cli import main
from ftk.core.config.loader import load_config
from ftk.core.data.collate import PaddingCollator
from ftk.core.data.packing import PackingCollator
from ftk.core.errors import FtkError
from tests.helpers import line_of, make_config, write_config

FIXTURES = Path(__file__).parent / "fixture_plugins"


@pytest.fixture
def config(tmp_path, small_vocab_model_dir):
    """Write a config with ``keys`` (``extra``: YAML text appended as written) and return its path."""

    def write(extra: str = "", **keys):
        (tmp_path / "chat.jsonl").touch()
        return write_config(tmp_path, small_vocab_model_dir, tmp_path / "chat.jsonl", extra=extra, **keys)

    return write


def problems(path: Path) -> str:
    with pytest.raises(FtkError) as caught:
        load_config(path)
    return str(caught.value)


def test_null_means_the_default_for_every_ftk_key(config):
    path = config(extra="eval_steps: null\nlr_scheduler: null\nspecial_tokens: null\nseed: null\n", seed=None)
    cfg, _ = load_config(path)
    assert (cfg.eval_steps, cfg.lr_scheduler, cfg.special_tokens, cfg.seed) == (None, "cosine", None, 42)


def test_null_in_a_dataset_entry_means_the_default(config, tmp_path):
    data = [
        {"path": str(tmp_path / "chat.jsonl"), "type": "chat_template", "split": None, "roles_to_train": None}
    ]
    cfg, _ = load_config(config(datasets=data))
    assert cfg.datasets[0].split == "train"


def test_a_misspelt_key_set_to_null_is_still_an_error(config):
    path = config(extra="lr_schedular: null\n")
    assert (
        f"cfg.yaml:{line_of(path, 'lr_schedular')}: lr_schedular: unknown key (did you mean 'lr_scheduler'?)"
        in (problems(path))
    )


@pytest.mark.parametrize(
    "line",
    ["wandb_watch: null", "wandb_log_model: null", "lora_model_dir: null", "torchdistx_path: null",
     "gptq: false", "gptq_groupsize: null", "push_dataset_to_hub: null", "max_packed_sequence_len: null",
     "lora_mlp_kernel: false", "use_ray: false"],
)  # fmt: skip
def test_an_axolotl_key_ftk_lacks_is_accepted_when_off(config, line):
    cfg, _ = load_config(config(extra=line + "\n"))
    assert line.split(":")[0] not in cfg.model_dump()


def test_an_axolotl_key_ftk_lacks_is_explained_when_on(config):
    path = config(extra="lora_model_dir: ./adapter\nrelora: true\n")
    text = problems(path)
    assert (
        f"cfg.yaml:{line_of(path, 'lora_model_dir')}: lora_model_dir: axolotl key not supported by ftk: "
        "continuing from an existing adapter is not supported yet" in text
    )
    assert "relora: axolotl key not supported by ftk: ReLoRA is not in ftk" in text
    assert "load_best_model_at_end" not in text  # no guess at an unrelated ftk key


def test_a_plugin_that_defines_an_axolotl_key_wins(config, monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    cfg, _ = load_config(config(plugins=["relora_plugin"], relora=True, relora_prune_ratio=0.5))
    assert (cfg.relora, cfg.relora_prune_ratio) == (True, 0.5)


def test_a_typo_of_an_axolotl_key_names_it(config):
    text = problems(config(extra="context_parapllel_size: 2\n"))
    assert "context_parapllel_size: unknown key (did you mean 'context_parallel_size'? an axolotl key" in text


def test_renamed_keys_carry_their_value_with_a_note(config, capsys):
    path = config(extra="cosine_min_lr_ratio: 0.1\nauto_resume_from_checkpoints: true\n")
    cfg, _ = load_config(path)
    assert (cfg.min_lr_ratio, cfg.auto_resume) == (0.1, True)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        f"note: {path}:{line_of(path, 'cosine_min_lr_ratio')}: min_lr_ratio: axolotl's name for ftk's min_lr_ratio"
        in out
    )


def test_a_renamed_key_beside_its_ftk_name_is_an_error(config):
    text = problems(config(extra="cosine_min_lr_ratio: 0.1\nmin_lr_ratio: 0.2\n"))
    assert "cosine_min_lr_ratio: sets what 'min_lr_ratio' also sets; keep one of them" in text


@pytest.mark.parametrize(
    ("line", "backend"),
    [("flash_attention: true", "flash_attention_2"), ("sdp_attention: true", "sdpa"),
     ("xformers_attention: true", "sdpa"), ("attn_implementation: xformers", "sdpa"),
     ("flash_attention: false", None)],
)  # fmt: skip
def test_attention_flags_become_attn_implementation(config, line, backend):
    cfg, _ = load_config(config(extra=line + "\n"))
    assert cfg.attn_implementation == backend


def test_conflicting_attention_settings_are_an_error(config):
    text = problems(config(extra="flash_attention: true\nattn_implementation: eager\n"))
    assert "flash_attention: asks for flash_attention_2 attention but attn_implementation is 'eager'" in text


def test_a_hub_attention_kernel_is_accepted_and_needs_a_gpu_to_train(config, capsys):
    path = config(extra="attn_implementation: kernels-community/vllm-flash-attn3\n")
    cfg, _ = load_config(path)
    assert cfg.attn_implementation == "kernels-community/vllm-flash-attn3"
    assert main(["validate", str(path)]) == 0
    assert "the Hub kernel kernels-community/vllm-flash-attn3 needs a CUDA GPU" in capsys.readouterr().out


def test_axolotl_liger_and_cce_plugins_map_to_built_ins(config, capsys):
    path = config(
        plugins=[
            "axolotl.integrations.liger.LigerPlugin",
            "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin",
        ]
    )
    cfg, _ = load_config(path)
    assert cfg.chunked_cross_entropy is True and cfg.plugins == []
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "plugins[0]: LigerPlugin: ftk's Liger kernels are built in" in out
    assert "plugins[1]: CutCrossEntropyPlugin: ftk computes the loss with its chunked cross-entropy" in out


def test_every_problem_is_reported_at_once_with_an_unknown_axolotl_plugin(config, capsys):
    path = config(plugins=["axolotl.integrations.kernels.KernelsPlugin", "no_such_module_xyz"], lora_r="x")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        "plugins[0]: axolotl plugin axolotl.integrations.kernels.KernelsPlugin (axolotl's MoE kernels" in err
    )
    assert "plugins[1]: " in err and "no_such_module_xyz" in err
    assert "lora_r: " in err
    assert "Traceback" not in err


def test_bf16_auto_resolves_for_this_machine(config, capsys):
    import torch

    path = config(bf16="auto", tf32="auto")
    cfg, _ = load_config(path)
    if not torch.cuda.is_available():
        assert (cfg.bf16, cfg.fp16, cfg.tf32) == (False, False, False)
        assert main(["validate", str(path)]) == 0
        assert "bf16: auto: float32 (no GPU with bfloat16 here)" in capsys.readouterr().out


def test_bf16_auto_gives_way_to_fp16(config):
    cfg, _ = load_config(config(bf16="auto", fp16=True))
    assert (cfg.bf16, cfg.fp16) == (False, True)


def test_tf32_true_is_a_machine_problem_without_an_ampere_gpu(config, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    path = config(tf32=True)
    assert main(["validate", str(path)]) == 0
    assert "this machine cannot train it: " in capsys.readouterr().out
    assert main(["train", str(path)]) == 2
    assert "tf32: TF32 needs an Ampere or newer NVIDIA GPU" in capsys.readouterr().err


def test_strict_is_a_documented_no_op(config, capsys):
    path = config(strict=True)
    cfg, _ = load_config(path)
    assert "strict" not in cfg.model_dump()
    assert main(["validate", str(path)]) == 0
    assert "strict: accepted, no effect: ftk always validates a config strictly" in capsys.readouterr().out


def test_pad_to_sequence_len_pads_every_batch_to_sequence_len():
    cfg = make_config(pad_to_sequence_len=True, sequence_len=64)
    assert cfg.padded_length == 64 and make_config().padded_length is None
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]
    padded = PaddingCollator(pad_token_id=0, pad_to_length=cfg.padded_length)(rows)
    assert padded["input_ids"].shape == (1, 64) and padded["attention_mask"].sum() == 3
    assert PaddingCollator(pad_token_id=0)(rows)["input_ids"].shape == (1, 8)
    packed = PackingCollator(pad_token_id=0, pad_to_length=64)([rows, rows])
    assert packed["input_ids"].shape == (2, 64) and packed["labels"][:, 3:].eq(-100).all()


def test_no_treatment_covers_a_key_ftk_defines():
    """A table entry for a key ftk (now) defines would never apply: the tables stay exact."""
    from ftk.core.config.loader import build_config_model, config_keys
    from ftk.core.plugins import FtkPluginManager
    from ftk.plugins.axolotl_compat import treatments

    manager = FtkPluginManager()
    manager.load_builtins()
    known = config_keys(build_config_model(manager.collect_registrations().sections))
    tables = {
        "UNSUPPORTED": treatments.UNSUPPORTED,
        "NO_OPS": treatments.NO_OPS,
        "RENAMED": treatments.RENAMED,
        "ATTENTION_FLAGS": treatments.ATTENTION_FLAGS,
        "FUSED_KERNEL_FLAGS": treatments.FUSED_KERNEL_FLAGS,
    }
    dead = {name: sorted(set(table) & known) for name, table in tables.items() if set(table) & known}
    assert not dead
    assert set(treatments.RENAMED.values()) | set(treatments.FUSED_KERNEL_FLAGS.values()) <= known


def test_an_online_wandb_run_without_an_api_key_stops_before_the_data(config, capsys, monkeypatch, tmp_path):
    """axolotl's older examples set wandb_project: wandb.init then failed with a traceback after the
    data work; now the run stops first, in one line, and offline mode or a key lets it go on."""
    pytest.importorskip("wandb")
    from ftk.plugins.trackers import wandb_login_problem

    for variable in ("WANDB_API_KEY", "WANDB_MODE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = config(wandb_project="mpt-alpaca-7b")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: report_to: wandb logs online but no W&B API key is set")
        and "Traceback" not in err
    )
    assert not (tmp_path / "prepared").exists()  # stopped before any data work
    assert wandb_login_problem("offline", home=tmp_path) is None
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    assert wandb_login_problem(None, home=tmp_path) is None
    monkeypatch.setenv("WANDB_API_KEY", "abc123")
    assert wandb_login_problem(None, home=tmp_path / "elsewhere") is None
