"""axolotl's FSDP and DeepSpeed settings run on ftk's FSDP2 and DeepSpeed presets (issue 18).

FSDP1 forms (the ``fsdp:`` option list, ``fsdp_``-prefixed FSDP1 keys, ``sharding_strategy``,
``fsdp_version: 1``) are converted the way accelerate converts an FSDP1 config, each with a note;
what FSDP2 cannot keep is an error.  ``deepspeed: deepspeed_configs/<axolotl file>.json`` that is
not there becomes ftk's preset with the same ZeRO stage and offload.  Everything here runs on the
CPU, without DeepSpeed installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate.utils import FullyShardedDataParallelPlugin
from transformers import TrainingArguments

from ftk.cli import main
from ftk.core.config.loader import dump_config, load_config
from ftk.integrations import deepspeed_configs
from ftk.plugins import deepspeed as deepspeed_plugin
from ftk.plugins import fsdp as fsdp_plugin
from tests.helpers import SMALL_LORA, first_chat_rows, line_of, write_config

BASE = dict(**SMALL_LORA, sequence_len=128, max_steps=2, seed=None)

#: An FSDP1 config as axolotl's examples write it (llama-2/qlora-fsdp.yml, without the model keys).
AXOLOTL_FSDP1 = """\
fsdp:
  - full_shard
  - auto_wrap
fsdp_config:
  fsdp_limit_all_gathers: true
  fsdp_sync_module_states: true
  fsdp_offload_params: true
  fsdp_use_orig_params: false
  fsdp_cpu_ram_efficient_loading: true
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: Qwen3DecoderLayer
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_sharding_strategy: FULL_SHARD
  fsdp_backward_prefetch: BACKWARD_PRE
  fsdp_forward_prefetch: false
"""

#: An FSDP2 config as axolotl's newer examples write it (qwen3.5/27b-qlora-fsdp.yaml).
AXOLOTL_FSDP2 = """\
fsdp_version: 2
fsdp_config:
  offload_params: false
  cpu_ram_efficient_loading: false
  auto_wrap_policy: TRANSFORMER_BASED_WRAP
  transformer_layer_cls_to_wrap: Qwen3DecoderLayer
  state_dict_type: SHARDED_STATE_DICT
  sharding_strategy: FULL_SHARD
  reshard_after_forward: true
  activation_checkpointing: true
"""


@pytest.fixture(autouse=True)
def _restore_fsdp_environment(monkeypatch):
    """TrainingArguments and accelerate's plugin write FSDP variables into os.environ: undo that."""
    for name in ("FSDP_CPU_RAM_EFFICIENT_LOADING", "ACCELERATE_USE_FSDP"):
        monkeypatch.setenv(name, "false")


def write(tmp_path: Path, extra: str, model: Path | str = "unused-model", **keys) -> Path:
    data = tmp_path / "d.jsonl"
    if not data.exists():
        first_chat_rows(data, 2)
    return write_config(tmp_path, model, data, extra=extra, **{**BASE, **keys})


def fsdp_config_of(tmp_path: Path, extra: str, **keys) -> dict:
    cfg, _ = load_config(write(tmp_path, extra, **keys))
    return fsdp_plugin.fsdp_training_arguments(fsdp_plugin.fsdp_settings(cfg))["fsdp_config"]


def validate(
    tmp_path: Path, extra: str, capsys, model: Path | str = "unused-model", **keys
) -> tuple[int, str, str]:
    path = write(tmp_path, extra, model, **keys)
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def line(tmp_path: Path, key: str) -> str:
    return f"cfg.yaml:{line_of(tmp_path / 'cfg.yaml', key)}"


# --- FSDP: each axolotl form, as the fsdp_config TrainingArguments gets -------------------------


def test_axolotl_fsdp1_config_runs_as_fsdp2_through_transformers_and_accelerate(tmp_path):
    fields = fsdp_plugin.fsdp_training_arguments(
        fsdp_plugin.fsdp_settings(load_config(write(tmp_path, AXOLOTL_FSDP1))[0])
    )
    assert fields == {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": ["Qwen3DecoderLayer"],
            "reshard_after_forward": True,  # full_shard / FULL_SHARD
            "cpu_offload": True,
            "cpu_ram_efficient_loading": True,
            "state_dict_type": "FULL_STATE_DICT",
            "activation_checkpointing": False,
        },
    }
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", **fields)
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.cpu_ram_efficient_loading is True
    assert type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy"
    # The FSDP1-only fields accelerate would otherwise read are not passed at all.
    assert plugin.backward_prefetch is None and plugin.use_orig_params is None
    assert plugin.sync_module_states is None


def test_axolotl_fsdp2_config_with_sharding_strategy(tmp_path):
    assert fsdp_config_of(tmp_path, AXOLOTL_FSDP2) == {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": ["Qwen3DecoderLayer"],
        "reshard_after_forward": True,
        "cpu_offload": False,
        "cpu_ram_efficient_loading": False,
        "state_dict_type": "SHARDED_STATE_DICT",
        "activation_checkpointing": True,
    }


@pytest.mark.parametrize(
    ("extra", "reshard", "offload"),
    [
        ("fsdp: [full_shard, auto_wrap]", True, False),
        ("fsdp: [auto_wrap, full_shard]\nfsdp_config:\n  fsdp_offload_params: true", True, True),
        ("fsdp: [shard_grad_op, offload, auto_wrap]", False, True),
        ("fsdp: full_shard auto_wrap offload", True, True),
        ("fsdp_config:\n  fsdp_version: 2\n  sharding_strategy: SHARD_GRAD_OP", False, False),
        ("fsdp:\n  fsdp_sharding_strategy: shard_grad_op", False, False),
        (
            "fsdp_version: 1\nfsdp_config:\n  fsdp_version: 1\n  fsdp_sharding_strategy: FULL_SHARD",
            True,
            False,
        ),
    ],
)
def test_fsdp1_forms_map_onto_fsdp2_settings(tmp_path, extra, reshard, offload):
    config = fsdp_config_of(tmp_path, extra)
    assert config["version"] == 2
    assert config["reshard_after_forward"] is reshard
    assert config["cpu_offload"] is offload


def test_converted_config_reloads_to_the_same_settings(tmp_path):
    cfg, _ = load_config(write(tmp_path, AXOLOTL_FSDP1))
    (tmp_path / "resolved.yaml").write_text(json.dumps(dump_config(cfg)))
    reloaded, _ = load_config(tmp_path / "resolved.yaml")
    assert fsdp_plugin.fsdp_settings(reloaded) == fsdp_plugin.fsdp_settings(cfg)


def test_empty_option_list_turns_fsdp_off(tmp_path):
    cfg, _ = load_config(write(tmp_path, "fsdp: []"))
    assert fsdp_plugin.fsdp_settings(cfg) is None


# --- FSDP: the notes --------------------------------------------------------------------------------


def test_validate_notes_each_conversion_once_with_its_line(tmp_path, capsys):
    code, out, _ = validate(tmp_path, AXOLOTL_FSDP1, capsys)
    assert code == 0
    prefix = f"note: {tmp_path / 'cfg.yaml'}:"
    notes = [text.removeprefix(prefix) for text in out.splitlines() if text.startswith(prefix)]
    assert (
        f"{line_of(tmp_path / 'cfg.yaml', 'fsdp')}: fsdp: FSDP1 options, in FSDP2 terms: full_shard is "
        "reshard_after_forward: true; auto_wrap is auto_wrap_policy's (each transformer layer by default)"
    ) in notes
    assert (
        f"{line_of(tmp_path / 'cfg.yaml', 'fsdp_sharding_strategy')}: fsdp_config.reshard_after_forward: "
        "FSDP2's spelling of fsdp_sharding_strategy: FULL_SHARD (FSDP1)"
    ) in notes
    dropped = (
        f"{line_of(tmp_path / 'cfg.yaml', 'fsdp_limit_all_gathers')}: fsdp_config.fsdp_limit_all_gathers: "
        "fsdp_limit_all_gathers, fsdp_sync_module_states, fsdp_use_orig_params, fsdp_backward_prefetch, "
        "fsdp_forward_prefetch: no effect under FSDP2, dropped as accelerate drops them: FSDP2 needs no "
        "all-gather rate limiter; every process loads the same checkpoint and FSDP2 keeps its shard of it; "
        "FSDP2 always shards the "
        "original parameters; FSDP2 prefetches in backward by itself; FSDP2 does not prefetch in forward"
    )
    assert dropped in notes
    assert len(notes) == 3


def test_fsdp_version_1_note(tmp_path, capsys):
    code, out, _ = validate(tmp_path, "fsdp_version: 1\nfsdp_config:\n  reshard_after_forward: true", capsys)
    assert code == 0
    assert (
        f"{line(tmp_path, 'fsdp_version')}: fsdp_version: ftk runs FSDP2 (FSDP1 is deprecated in "
        "transformers); the FSDP1 settings are converted"
    ) in out


# --- FSDP: meanings FSDP2 cannot keep --------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        (
            "fsdp: [hybrid_shard, auto_wrap]",
            "fsdp",
            "fsdp[0]: hybrid_shard cannot be kept under FSDP2: it shards within a node and replicates "
            "across nodes, which needs a 2-D device mesh ftk does not build; use FULL_SHARD",
        ),
        (
            "fsdp: [auto_wrap, ful_shard]",
            "fsdp",
            "fsdp[1]: unknown FSDP option 'ful_shard' (did you mean 'full_shard'?); "
            "full_shard, shard_grad_op, offload, auto_wrap",
        ),
        (
            "fsdp: [full_shard, shard_grad_op]",
            "fsdp",
            "fsdp[1]: shard_grad_op contradicts an earlier option; keep one of them",
        ),
        (
            "fsdp_config:\n  fsdp_sharding_strategy: HYBRID_SHARD_ZERO2",
            "fsdp_sharding_strategy",
            "fsdp_config.fsdp_sharding_strategy: HYBRID_SHARD_ZERO2 cannot be kept under FSDP2",
        ),
        (
            "fsdp_config:\n  sharding_strategy: NO_SHARD",
            "sharding_strategy",
            "fsdp_config.sharding_strategy: NO_SHARD cannot be kept under FSDP2: it does not shard at all; "
            "that is DDP: remove the FSDP settings and train with --nproc-per-node",
        ),
        (
            "fsdp_config:\n  sharding_strategy: FULL_SHRAD",
            "sharding_strategy",
            "fsdp_config.sharding_strategy: unknown sharding strategy 'FULL_SHRAD' (did you mean 'FULL_SHARD'?)",
        ),
        (
            "fsdp_config:\n  sharding_strategy: FULL_SHARD\n  reshard_after_forward: false",
            "sharding_strategy",
            "fsdp_config.sharding_strategy: FULL_SHARD means reshard_after_forward: true under FSDP2, but "
            "reshard_after_forward is false; keep one of them",
        ),
        (
            "fsdp: [shard_grad_op]\nfsdp_config:\n  reshard_after_forward: true",
            "fsdp",
            "fsdp: means reshard_after_forward: false but fsdp_config.reshard_after_forward is true; "
            "keep one of them",
        ),
        (
            "fsdp_config:\n  fsdp_forward_prefetch: true",
            "fsdp_forward_prefetch",
            "fsdp_config.fsdp_forward_prefetch: FSDP2 has no forward prefetch (accelerate refuses it); "
            "set it to false",
        ),
        ("fsdp_version: 3\nfsdp: {}", "fsdp_version", "fsdp_version: ftk supports FSDP version 2 only"),
    ],
)
def test_fsdp_settings_without_an_fsdp2_meaning_are_errors(tmp_path, capsys, extra, key, message):
    code, _, err = validate(tmp_path, extra, capsys)
    assert code == 2
    assert f"{line(tmp_path, key)}: {message}" in err
    assert len([text for text in err.splitlines() if "fsdp" in text]) == 1  # one error, not two


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
def test_converted_fsdp1_config_stops_on_the_cpu_with_the_machine_error(tmp_path, tiny_model_dir, capsys):
    data = first_chat_rows(tmp_path / "chat.jsonl", 8)
    path = write_config(tmp_path, tiny_model_dir, data, extra=AXOLOTL_FSDP1, **BASE)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error: fsdp: FSDP2 runs on CUDA GPUs and none is visible" in err
    assert "Traceback" not in err
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "out").exists()


# --- FSDP: cpu_ram_efficient_loading ---------------------------------------------------------------


def test_cpu_ram_efficient_loading_reaches_accelerate(tmp_path):
    fields = fsdp_plugin.fsdp_training_arguments(
        fsdp_plugin.fsdp_settings(load_config(write(tmp_path, "fsdp:\n  cpu_ram_efficient_loading: true"))[0])
    )
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", **fields)
    assert args.fsdp_plugin_args["cpu_ram_efficient_loading"] is True
    # accelerate's fsdp2_prepare_model moves the other ranks' copy to meta and broadcasts rank 0's.
    assert FullyShardedDataParallelPlugin(**args.fsdp_plugin_args).cpu_ram_efficient_loading is True


def test_four_bit_models_are_recognised_for_the_no_effect_note():
    class Params4bit(torch.nn.Parameter):
        pass

    quantized = torch.nn.Linear(2, 2)
    quantized.weight = Params4bit(torch.zeros(2, 2), requires_grad=False)
    assert fsdp_plugin.quantized_4bit(quantized)
    assert not fsdp_plugin.quantized_4bit(torch.nn.Linear(2, 2))


# --- DeepSpeed: axolotl's bundled files --------------------------------------------------------------

#: axolotl's deepspeed_configs/ files: (ZeRO stage, optimizer on the CPU, parameters on the CPU).
AXOLOTL_DEEPSPEED = {
    "zero1.json": (1, False, False),
    "zero2.json": (2, True, False),
    "zero3.json": (3, False, False),
    "zero3_bf16.json": (3, False, False),
    "zero3_bf16_cpuoffload_all.json": (3, True, True),
    "zero3_bf16_cpuoffload_params.json": (3, False, True),
}


def test_every_axolotl_file_is_mapped():
    assert set(deepspeed_configs.AXOLOTL_FILES) == set(AXOLOTL_DEEPSPEED)


@pytest.mark.parametrize("name", sorted(AXOLOTL_DEEPSPEED))
def test_axolotl_deepspeed_file_becomes_the_preset_with_its_stage_and_offload(
    tmp_path, monkeypatch, capsys, name
):
    monkeypatch.chdir(tmp_path)
    value = f"deepspeed_configs/{name}"
    code, out, _ = validate(tmp_path, f"deepspeed: {value}\nbf16: auto", capsys)
    assert code == 0
    preset = deepspeed_configs.AXOLOTL_FILES[name][0]
    assert f"{line(tmp_path, 'deepspeed')}: deepspeed: {value} is not here: ftk's preset {preset} " in out
    cfg, _ = load_config(tmp_path / "cfg.yaml")
    config = deepspeed_plugin.deepspeed_config(cfg)
    stage, optimizer, params = AXOLOTL_DEEPSPEED[name]
    assert deepspeed_configs.zero_stage(config) == stage
    assert ("optimizer" in deepspeed_configs.offloaded(config)) is optimizer
    assert ("param" in deepspeed_configs.offloaded(config)) is params
    assert config["bf16"]["enabled"] == "auto"  # bf16 comes from the config, as TrainingArguments has it


def test_an_existing_file_at_that_path_is_used_as_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deepspeed_configs").mkdir()
    (tmp_path / "deepspeed_configs" / "zero2.json").write_text('{"zero_optimization": {"stage": 1}}')
    cfg, _ = load_config(write(tmp_path, "deepspeed: deepspeed_configs/zero2.json"))
    assert cfg.section("deepspeed").root == "deepspeed_configs/zero2.json"
    assert deepspeed_configs.zero_stage(deepspeed_plugin.deepspeed_config(cfg)) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "deepspeed: deepspeed_configs/zero3_bf16.json\nbf16: false",
            "deepspeed: deepspeed_configs/zero3_bf16.json: axolotl's zero3_bf16.json trains in bf16 but bf16 "
            "is false; set bf16: true (or auto), or use deepspeed: zero3 (precision from bf16/fp16)",
        ),
        (
            "deepspeed: deepspeed_configs/zero3_bf16_cpuoffload_params.json",
            "bf16 is not set; set bf16: true (or auto), or use deepspeed: zero3_offload_params",
        ),
        (
            "deepspeed: deepspeed_configs/zero2_torch_compile.json",
            "deepspeed: deepspeed_configs/zero2_torch_compile.json: file not found; axolotl's "
            "zero2_torch_compile.json (ZeRO-2 (optimizer state on the CPU) with a DeepSpeed compile block) "
            "has no ftk preset, since ftk does not drive DeepSpeed's compile: use deepspeed: zero2_offload, "
            "or the path of a copy of that file",
        ),
        ("deepspeed: deepspeed_configs/zero4.json", "deepspeed_configs/zero4.json: file not found"),
        ("deepspeed: configs/zero2.json", "configs/zero2.json: file not found"),
    ],
)
def test_deepspeed_files_without_an_equivalent_are_errors(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = validate(tmp_path, extra, capsys)
    assert code == 2
    assert f"{line(tmp_path, 'deepspeed')}: " in err and message in err
    assert len([text for text in err.splitlines() if "deepspeed" in text]) == 1


def test_eight_bit_optimizer_is_refused_only_where_the_optimizer_state_is_offloaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    problems = {}
    for name in ("zero3_bf16_cpuoffload_params.json", "zero3_bf16_cpuoffload_all.json"):
        path = write(tmp_path, f"deepspeed: deepspeed_configs/{name}\nbf16: true\noptimizer: adamw_bnb_8bit")
        try:
            load_config(path)
            problems[name] = None
        except Exception as exc:  # noqa: BLE001 - the error's text is the assertion
            problems[name] = str(exc)
    assert problems["zero3_bf16_cpuoffload_params.json"] is None
    assert "adamw_bnb_8bit cannot step the optimizer state that preset zero3_offload offloads" in (
        problems["zero3_bf16_cpuoffload_all.json"] or ""
    )


def test_null_fsdp1_keys_are_not_set(tmp_path, capsys):
    extra = "fsdp_config:\n  sharding_strategy:\n  fsdp_limit_all_gathers:\n  forward_prefetch:\n  offload_params: true"
    code, out, _ = validate(tmp_path, extra, capsys)
    assert code == 0
    assert "dropped" not in out and "FSDP2's spelling" not in out
    assert fsdp_config_of(tmp_path, extra)["reshard_after_forward"] is True  # the FSDP2 default


def test_sharding_strategy_that_agrees_with_reshard_after_forward_is_dropped_with_a_note(tmp_path, capsys):
    code, out, _ = validate(tmp_path, AXOLOTL_FSDP2, capsys)
    assert code == 0
    assert (
        f"{line(tmp_path, 'sharding_strategy')}: fsdp_config.sharding_strategy: dropped: "
        "reshard_after_forward: true says FULL_SHARD in FSDP2 terms"
    ) in out
