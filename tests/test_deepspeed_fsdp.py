"""DeepSpeed and FSDP2 plugins: presets, validation, the TrainingArguments they contribute, and GPU runs.

Everything but the last tests runs on the CPU without DeepSpeed installed.  The GPU tests train a
LoRA adapter on the tiny model under ZeRO-2, ZeRO-3 and FSDP2 and check that the saved adapter holds
real weights (the known ZeRO-3 failure saves empty tensors); they skip without CUDA (and, for
DeepSpeed, without the deepspeed package).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.deepspeed import HfDeepSpeedConfig
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainingArguments

from ftk.cli import main
from ftk.commands.train import launcher_command
from ftk.core.config.loader import build_config_model, dump_config, load_config
from ftk.core.errors import FtkError
from ftk.core.launch import one_process_group_env, one_process_note
from ftk.core.plugins import create_plugin_manager
from ftk.integrations import deepspeed_configs
from ftk.plugins import deepspeed as deepspeed_plugin
from ftk.plugins import fsdp as fsdp_plugin
from tests.helpers import SMALL_LORA, first_chat_rows, line_of, write_config

REPO = Path(__file__).resolve().parents[1]
AUTO_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
)


# LoRA runs of 4 steps of 2 x 2 rows; a test adds its deepspeed or fsdp keys as YAML text (``extra``).
BASE = dict(
    **SMALL_LORA,
    sequence_len=256,
    gradient_accumulation_steps=2,
    max_steps=4,
    learning_rate=5.0e-3,
    seed=None,
)


def config_for(tmp_path: Path, extra: str):
    """The config validated by the schema and the plugins' sections, but not yet by the plugins'
    cross-key checks (``config_problems``), which the tests call themselves."""
    manager = create_plugin_manager()
    model = build_config_model(manager.collect_registrations().sections)
    path = write_config(tmp_path, "unused-model", "d.jsonl", extra=extra, **BASE)
    return model.model_validate(yaml.safe_load(path.read_text()))


def validate_error(tmp_path: Path, extra: str, capsys) -> str:
    """Run ``ftk validate`` on a config with ``extra`` appended; it must fail cleanly. Returns stderr."""
    path = write_config(tmp_path, "unused-model", "d.jsonl", extra=extra, **BASE)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def chat16(tmp_path_factory) -> Path:
    return first_chat_rows(tmp_path_factory.mktemp("data") / "chat.jsonl", 16)


# --- presets -----------------------------------------------------------------------------------

PRESET_EXPECTED = {
    # name: (stage, optimizer offloaded, parameters offloaded)
    "zero1": (1, False, False),
    "zero2": (2, False, False),
    "zero3": (3, False, False),
    "zero2_offload": (2, True, False),
    "zero3_offload": (3, True, True),
    "zero3_offload_params": (3, False, True),
}


def test_every_preset_is_shipped_and_tested():
    assert set(deepspeed_configs.PRESETS) == set(PRESET_EXPECTED)


@pytest.mark.parametrize("name", sorted(PRESET_EXPECTED))
def test_preset_json(name):
    stage, optimizer_offloaded, params_offloaded = PRESET_EXPECTED[name]
    config = deepspeed_configs.preset(name)
    zero = config["zero_optimization"]
    assert zero["stage"] == stage
    assert (zero.get("offload_optimizer") == {"device": "cpu", "pin_memory": True}) is optimizer_offloaded
    assert (zero.get("offload_param") == {"device": "cpu", "pin_memory": True}) is params_offloaded
    # Values transformers fills from TrainingArguments stay "auto"; the Trainer builds optimizer and scheduler.
    assert all(config[key] == "auto" for key in AUTO_KEYS)
    assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"
    assert zero["reduce_bucket_size"] == "auto"
    assert "optimizer" not in config and "scheduler" not in config
    # DeepSpeed must accept the Trainer's optimizer on offloaded (CPU) state.
    assert config.get("zero_force_ds_cpu_optimizer", True) is (not optimizer_offloaded)
    if stage == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
        assert zero["stage3_prefetch_bucket_size"] == zero["stage3_param_persistence_threshold"] == "auto"
    # accelerate reads the same stage and offload from it.
    seen = HfDeepSpeedConfig(config)
    assert seen.is_zero3() is (stage == 3)
    assert seen.is_offload() is (optimizer_offloaded or params_offloaded)
    deepspeed_configs.check_config(config, name)


def test_preset_copies_are_independent():
    first = deepspeed_configs.preset("zero2")
    first["zero_optimization"]["stage"] = 0
    assert deepspeed_configs.preset("zero2")["zero_optimization"]["stage"] == 2


def test_preset_in_config_validates_without_deepspeed_and_round_trips(tmp_path, capsys):
    data = tmp_path / "d.jsonl"  # validate checks that the data file exists
    data.touch()
    path = write_config(tmp_path, "unused-model", data, extra="deepspeed: zero3_offload", **BASE)
    assert main(["validate", str(path)]) == 0
    assert "deepspeed: zero3_offload" in capsys.readouterr().out
    cfg, _ = load_config(path)
    assert deepspeed_plugin.deepspeed_config(cfg) == deepspeed_configs.preset("zero3_offload")
    assert dump_config(cfg)["deepspeed"] == "zero3_offload"


def test_json_path_is_passed_as_its_contents(tmp_path):
    custom = {
        "zero_optimization": {"stage": 3, "gather_16bit_weights_on_model_save": True, "overlap_comm": False},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_clipping": 1.0,
    }
    (tmp_path / "ds.json").write_text(json.dumps(custom))
    cfg = config_for(tmp_path, f"deepspeed: {tmp_path / 'ds.json'}")
    assert deepspeed_plugin.deepspeed_config(cfg) == custom
    assert deepspeed_plugin.config_problems(cfg) == []


# --- validation (ftk validate, no DeepSpeed needed) ---------------------------------------------


def test_unknown_preset_suggests_the_closest(tmp_path, capsys):
    err = validate_error(tmp_path, "deepspeed: zero2-offload", capsys)
    line = line_of(tmp_path / "cfg.yaml", "deepspeed")
    assert f"cfg.yaml:{line}: deepspeed: unknown preset (did you mean 'zero2_offload'?)" in err
    assert "zero1, zero2, zero3, zero2_offload, zero3_offload" in err


def test_missing_json_file(tmp_path, capsys):
    err = validate_error(tmp_path, f"deepspeed: {tmp_path / 'nowhere' / 'ds.json'}", capsys)
    line = line_of(tmp_path / "cfg.yaml", "deepspeed")
    assert f"cfg.yaml:{line}: deepspeed: {tmp_path / 'nowhere' / 'ds.json'}: file not found" in err


def test_unparsable_json_names_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "ds.json"
    bad.write_text('{\n  "zero_optimization": {"stage": 2},\n  "bf16": {"enabled": "auto"}\n  "x": 1\n}\n')
    err = validate_error(tmp_path, f"deepspeed: {bad}", capsys)
    assert f"deepspeed: {bad}:4:3: not valid JSON: Expecting ',' delimiter" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "must be a JSON object, not list"),
        ('{"train_micro_batch_size_per_gpu": "auto"}', 'needs a "zero_optimization" object'),
        ('{"zero_optimization": {"stage": 4}}', "zero_optimization.stage must be 0, 1, 2 or 3 (got 4)"),
        (
            '{"zero_optimization": {"stage": 3}}',
            "ZeRO-3 needs zero_optimization.stage3_gather_16bit_weights_on_model_save: true",
        ),
        (
            '{"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": "auto"}}',
            "ZeRO-3 needs zero_optimization.stage3_gather_16bit_weights_on_model_save: true",
        ),
    ],
)
def test_unusable_json_is_reported_at_validate(tmp_path, capsys, content, message):
    (tmp_path / "ds.json").write_text(content)
    err = validate_error(tmp_path, f"deepspeed: {tmp_path / 'ds.json'}", capsys)
    line = line_of(tmp_path / "cfg.yaml", "deepspeed")
    assert f"cfg.yaml:{line}: deepspeed: {tmp_path / 'ds.json'}: {message}" in err


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        (
            "fsdp: [no_shard, auto_wrap]",
            "fsdp",
            "fsdp[0]: no_shard cannot be kept under FSDP2",
        ),
        ("fsdp_version: 3", "fsdp_version", "fsdp_version: ftk supports FSDP version 2 only"),
        ("fsdp:\n  fsdp_version: 3", "fsdp_version", "fsdp.fsdp_version: ftk supports FSDP version 2 only"),
        (
            "fsdp:\n  ofload_params: true",
            "ofload_params",
            "fsdp.ofload_params: unknown key (did you mean 'offload_params'?)",
        ),
        (
            "fsdp_config:\n  fsdp_sharding_strategy: HYBRID_SHARD",
            "fsdp_sharding_strategy",
            "fsdp_config.fsdp_sharding_strategy: HYBRID_SHARD cannot be kept under FSDP2",
        ),
        (
            "fsdp:\n  auto_wrap_policy: SIZE_BASED_WRAP",
            None,
            "fsdp: auto_wrap_policy: SIZE_BASED_WRAP needs min_num_params",
        ),
        (
            "fsdp:\n  auto_wrap_policy: NO_WRAP\n  transformer_layer_cls_to_wrap: Qwen3DecoderLayer",
            None,
            "transformer_layer_cls_to_wrap is only used with auto_wrap_policy: TRANSFORMER_BASED_WRAP",
        ),
        (
            "fsdp:\n  min_num_params: 1000",
            None,
            "min_num_params is only used with auto_wrap_policy: SIZE_BASED_WRAP",
        ),
        (
            "fsdp:\n  state_dict_type: LOCAL_STATE_DICT",
            "state_dict_type",
            "fsdp.state_dict_type: Input should be",
        ),
    ],
)
def test_fsdp_section_errors_at_validate(tmp_path, capsys, extra, key, message):
    """A message with a ``key`` names the file and the line of that key."""
    err = validate_error(tmp_path, extra, capsys)
    if key is not None:
        message = f"cfg.yaml:{line_of(tmp_path / 'cfg.yaml', key)}: {message}"
    assert message in err


# --- what the plugins contribute to TrainingArguments -------------------------------------------


def test_fsdp_axolotl_section_maps_onto_transformers_and_accelerate(tmp_path):
    cfg = config_for(
        tmp_path,
        """\
fsdp_version: 2
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: Qwen3DecoderLayer
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_offload_params: true
  fsdp_cpu_ram_efficient_loading: false
  fsdp_reshard_after_forward: false
  fsdp_activation_checkpointing: true""",
    )
    fields = fsdp_plugin.fsdp_training_arguments(fsdp_plugin.fsdp_settings(cfg))
    assert fields == {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": ["Qwen3DecoderLayer"],
            "reshard_after_forward": False,
            "cpu_offload": True,
            "cpu_ram_efficient_loading": False,
            "state_dict_type": "SHARDED_STATE_DICT",
            "activation_checkpointing": True,
        },
    }
    assert fsdp_plugin.config_problems(cfg) == []
    # transformers turns them into accelerate's FSDP2 plugin arguments, as intended.
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", **fields)
    assert args.fsdp_plugin_args == {
        "fsdp_version": 2,
        "cpu_offload": True,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_cls_names_to_wrap": "Qwen3DecoderLayer",
        "cpu_ram_efficient_loading": False,
        "state_dict_type": "SHARDED_STATE_DICT",
        "activation_checkpointing": True,
        "reshard_after_forward": False,
    }
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is False
    assert type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy"
    assert plugin.transformer_cls_names_to_wrap == ["Qwen3DecoderLayer"]
    # The resolved config reloads to the same settings.
    (tmp_path / "resolved.yaml").write_text(json.dumps(dump_config(cfg)))
    reloaded, _ = load_config(tmp_path / "resolved.yaml")
    assert fsdp_plugin.fsdp_settings(reloaded) == fsdp_plugin.fsdp_settings(cfg)


def test_fsdp_defaults(tmp_path):
    cfg = config_for(tmp_path, "fsdp: {}")
    assert fsdp_plugin.fsdp_training_arguments(fsdp_plugin.fsdp_settings(cfg))["fsdp_config"] == {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "reshard_after_forward": True,
        "cpu_offload": False,
        "cpu_ram_efficient_loading": False,
        "state_dict_type": "FULL_STATE_DICT",
        "activation_checkpointing": False,
    }
    size = config_for(tmp_path, "fsdp:\n  auto_wrap_policy: SIZE_BASED_WRAP\n  min_num_params: 5000")
    config = fsdp_plugin.fsdp_training_arguments(fsdp_plugin.fsdp_settings(size))["fsdp_config"]
    assert (config["auto_wrap_policy"], config["min_num_params"]) == ("SIZE_BASED_WRAP", 5000)


def test_no_section_no_contribution(tmp_path):
    cfg, manager = load_config(write_config(tmp_path, "unused-model", "d.jsonl", **BASE))
    assert manager.hooks.training_arguments(cfg) == {}


def test_deepspeed_and_fsdp_together_is_one_config_error(tmp_path, capsys):
    path = write_config(tmp_path, "unused-model", "d.jsonl", extra="deepspeed: zero2\nfsdp: {}", **BASE)
    assert main(["validate", str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].endswith("deepspeed: and fsdp are both set; a run uses DeepSpeed or FSDP, choose one")


def test_json_values_that_disagree_with_the_config(tmp_path):
    (tmp_path / "ds.json").write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 2},
                "train_micro_batch_size_per_gpu": 4,
                "gradient_accumulation_steps": 2,
                "gradient_clipping": "auto",
                "train_batch_size": 8,
                "bf16": {"enabled": True},
                "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.999]}},
            }
        )
    )
    cfg = config_for(tmp_path, f"deepspeed: {tmp_path / 'ds.json'}")
    source = str(tmp_path / "ds.json")
    fix = 'set it to "auto" in the JSON (ftk fills it in) or make them equal'
    # Two processes: the file's global batch of 8 is right; equal values (accumulation, betas) pass.
    assert deepspeed_plugin.config_problems(cfg, processes=2) == [
        (
            ("deepspeed",),
            f"{source} sets train_micro_batch_size_per_gpu to 4 but micro_batch_size is 2; {fix}",
        ),
        (("deepspeed",), f"{source} sets bf16.enabled to True but bf16 is False; {fix}"),
        (("deepspeed",), f"{source} sets optimizer.params.lr to 0.0001 but learning_rate is 0.005; {fix}"),
    ]
    # One process: the global batch is 4, not 8.
    assert deepspeed_plugin.config_problems(cfg, processes=1)[3:] == [
        (
            ("deepspeed",),
            f"{source} sets train_batch_size to 8 but micro_batch_size x gradient_accumulation_steps x "
            'processes is 2 x 2 x 1 = 4; set it to "auto"',
        )
    ]
    # Without a process count (ftk validate) the global batch is not judged.
    problems = deepspeed_plugin.config_problems(cfg)
    assert problems == deepspeed_plugin.config_problems(cfg, processes=2)
    with pytest.raises(FtkError) as error:
        deepspeed_plugin.raise_problems(problems)
    assert str(error.value).splitlines() == [f"deepspeed: {message}" for _, message in problems]


def test_gpu_only_optimizer_with_offload(tmp_path):
    cfg = config_for(tmp_path, "deepspeed: zero2_offload\noptimizer: adamw_bnb_8bit")
    assert deepspeed_plugin.config_problems(cfg) == [
        (
            ("optimizer",),
            "adamw_bnb_8bit cannot step the optimizer state that preset zero2_offload offloads to the CPU; "
            "use adamw_torch (or a DeepSpeed optimizer block in the JSON)",
        )
    ]
    assert (
        deepspeed_plugin.config_problems(config_for(tmp_path, "deepspeed: zero2\noptimizer: adamw_bnb_8bit"))
        == []
    )


@pytest.mark.parametrize("key", ["load_in_4bit", "load_in_8bit"])
def test_zero3_refuses_a_model_quantized_on_load(tmp_path, key):
    # The quantization plugin's keys: the check reads them by name.
    path = write_config(tmp_path, "unused-model", "d.jsonl", extra=f"deepspeed: zero3\n{key}: true", **BASE)
    with pytest.raises(FtkError) as error:
        load_config(path)
    assert str(error.value).endswith(
        f"cfg.yaml:{line_of(path, key)}: {key}: ZeRO-3 (preset zero3) cannot partition a model quantized on load: ftk loads "
        "the model before DeepSpeed starts (no zero.Init); use zero2 or zero2_offload"
    )
    for fine in (f"deepspeed: zero2_offload\n{key}: true", f"deepspeed: zero3\n{key}: false"):
        cfg, _ = load_config(write_config(tmp_path, "unused-model", "d.jsonl", extra=fine, **BASE))
        assert deepspeed_plugin.config_problems(cfg) == []


def test_fsdp_combination_problems(tmp_path):
    both = config_for(tmp_path, "fsdp: {}\nfsdp_config: {}")
    assert fsdp_plugin.config_problems(both) == [
        (("fsdp_config",), "and fsdp are both set; keep one of them")
    ]
    alone = config_for(tmp_path, "fsdp_version: 2")
    assert fsdp_plugin.config_problems(alone) == [
        (("fsdp_version",), "is set but FSDP is off; add an fsdp section to train with FSDP")
    ]
    checkpointing = config_for(
        tmp_path, "gradient_checkpointing: true\nfsdp_config:\n  activation_checkpointing: true"
    )
    assert fsdp_plugin.config_problems(checkpointing) == [
        (
            ("gradient_checkpointing",),
            "and fsdp_config.activation_checkpointing are both on; with FSDP keep only "
            "fsdp_config.activation_checkpointing",
        )
    ]


def test_runtime_problems():
    assert deepspeed_plugin.runtime_problem(installed=False, cuda_devices=8) == (
        "deepspeed: is set but DeepSpeed is not installed: pip install 'ftk[deepspeed]'"
    )
    assert "none is visible" in deepspeed_plugin.runtime_problem(installed=True, cuda_devices=0)
    assert deepspeed_plugin.runtime_problem(installed=True, cuda_devices=1) is None
    assert "FSDP2 runs on CUDA GPUs and none is visible" in fsdp_plugin.runtime_problem(cuda_devices=0)
    assert fsdp_plugin.runtime_problem(cuda_devices=2) is None


def test_one_process_group_env():
    env = one_process_group_env({"MASTER_PORT": "29999"})
    assert env == {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29999",
    }
    assert int(one_process_group_env({})["MASTER_PORT"]) > 0
    # Started by a launcher: leave its variables alone.
    assert one_process_group_env({"LOCAL_RANK": "1", "WORLD_SIZE": "2", "RANK": "1"}) == {}


def test_one_process_notes():
    assert one_process_note("fsdp", processes=2, gpus=2, offloaded=False) is None
    assert one_process_note("deepspeed", processes=1, gpus=8, offloaded=True) == (
        "deepspeed: one process on a machine with 8 GPUs; train on all of them with ftk train CONFIG --nproc-per-node 8"
    )
    assert one_process_note("fsdp", processes=1, gpus=1, offloaded=False) == (
        "fsdp: one process, so there is nothing to shard across; only CPU offload saves GPU memory here"
    )
    assert one_process_note("fsdp", processes=1, gpus=1, offloaded=True) is None


def test_wrap_classes_are_checked_against_the_model(tmp_path, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    default = fsdp_plugin.fsdp_settings(config_for(tmp_path, "fsdp: {}"))
    assert fsdp_plugin.wrap_problem(default, model) is None  # Qwen3's _no_split_modules
    typo = fsdp_plugin.fsdp_settings(
        config_for(tmp_path, "fsdp:\n  transformer_layer_cls_to_wrap: Qwen3DecoderLyer")
    )
    assert fsdp_plugin.wrap_problem(typo, model) == (
        "fsdp.transformer_layer_cls_to_wrap: the model has no module of class 'Qwen3DecoderLyer' "
        "(did you mean 'Qwen3DecoderLayer'?)"
    )

    class WithVision(torch.nn.Module):
        _no_split_modules = ["Qwen3DecoderLayer", "SiglipEncoderLayer"]

        def __init__(self) -> None:
            super().__init__()
            self.text = model

    assert fsdp_plugin.wrap_problem(default, WithVision()) == (
        "fsdp.transformer_layer_cls_to_wrap: the model has no module of class 'SiglipEncoderLayer' "
        "(named by its _no_split_modules; set transformer_layer_cls_to_wrap)"
    )
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert "the model names no layer class to wrap" in fsdp_plugin.wrap_problem(default, plain)
    no_wrap = fsdp_plugin.fsdp_settings(config_for(tmp_path, "fsdp:\n  auto_wrap_policy: NO_WRAP"))
    assert fsdp_plugin.wrap_problem(no_wrap, plain) is None


def test_sharded_checkpoints_still_save_a_full_final_model():
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
    fsdp_plugin.FullStateDictAtEnd(plugin).on_train_end(None, None, None)
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"


@pytest.mark.skipif(deepspeed_plugin.deepspeed_installed(), reason="DeepSpeed is installed here")
def test_train_without_deepspeed_installed_stops_with_the_install_hint(
    tmp_path, tiny_model_dir, chat16, capsys
):
    path = write_config(tmp_path, tiny_model_dir, chat16, extra="deepspeed: zero2", **BASE)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error: deepspeed: is set but DeepSpeed is not installed: pip install 'ftk[deepspeed]'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
def test_fsdp_train_on_cpu_stops_before_training(tmp_path, tiny_model_dir, chat16, capsys):
    path = write_config(tmp_path, tiny_model_dir, chat16, extra="fsdp: {}", **BASE)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error: fsdp: FSDP2 runs on CUDA GPUs and none is visible" in err
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


# --- GPU: trained adapters hold real weights -----------------------------------------------------


def assert_real_adapter(adapter_dir: Path, model_dir: Path, rank: int) -> None:
    """Every linear layer but the head has LoRA weights of the right shapes, and every lora_B was trained."""
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    linear = {
        name
        for name, module in base.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not base.get_output_embeddings()
    }
    adapted = {key.removeprefix("base_model.model.").split(".lora_")[0] for key in tensors}
    assert adapted == linear
    for key, tensor in tensors.items():
        out_features, in_features = base.get_submodule(
            key.removeprefix("base_model.model.").split(".lora_")[0]
        ).weight.shape
        if ".lora_A." in key:
            assert tuple(tensor.shape) == (rank, in_features), key
        else:
            assert ".lora_B." in key, key
            assert tuple(tensor.shape) == (out_features, rank), key
            assert tensor.float().abs().sum() > 0, f"{key} is all zeros: not trained or not gathered"


def run_ftk(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    process = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-4000:]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.slow
@needs_cuda
@pytest.mark.parametrize(("preset", "launcher"), [("zero2", False), ("zero3", True)])
def test_deepspeed_lora_saves_real_adapter_weights(tmp_path, tiny_model_dir, chat16, preset, launcher):
    pytest.importorskip("deepspeed")
    extra = f"deepspeed: {preset}\nbf16: true\nsave_steps: 2"
    path = write_config(tmp_path, tiny_model_dir, chat16, extra=extra, **BASE)
    # zero2: plain `ftk train` (the plugin sets up a one-process group); zero3: under torchrun.
    args = ["train", str(path)]
    run_ftk(launcher_command(1, args) if launcher else [sys.executable, "-m", "ftk.cli", *args], tmp_path)
    assert_real_adapter(tmp_path / "out", tiny_model_dir, rank=4)
    assert_real_adapter(tmp_path / "out" / "checkpoint-2", tiny_model_dir, rank=4)


@pytest.mark.slow
@needs_cuda
@pytest.mark.parametrize("state_dict_type", ["FULL_STATE_DICT", "SHARDED_STATE_DICT"])
def test_fsdp2_lora_saves_real_adapter_weights(tmp_path, tiny_model_dir, chat16, state_dict_type):
    extra = f"fsdp:\n  state_dict_type: {state_dict_type}\nbf16: true\nsave_steps: 2"
    path = write_config(tmp_path, tiny_model_dir, chat16, extra=extra, **BASE)
    run_ftk(launcher_command(1, ["train", str(path)]), tmp_path)
    assert_real_adapter(tmp_path / "out", tiny_model_dir, rank=4)
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
