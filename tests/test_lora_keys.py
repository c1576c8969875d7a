"""axolotl's LoRA and freezing keys: a regex lora_target_modules, lora_target_parameters,
lora_fan_in_fan_out, peft_layers_to_transform/peft_layers_pattern, peft.loftq_config and
unfrozen_parameters; what reaches peft, what trains, and the errors for bad values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    Qwen3MoeForCausalLM,
)

from ftk.cli import main
from ftk.core.errors import FtkError
from ftk.core.model import load_model, load_tokenizer
from ftk.plugins.freeze import freeze_except, name_regex
from ftk.plugins.lora import apply_lora, lora_config
from tests.helpers import builtin_manager, line_of, make_config, tiny_moe, write_alpaca_config, write_config

AXOLOTL_REGEX = r"model.layers.[\d]+.(mlp|self_attn).(up|q)_proj"


def load_tiny(model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def adapted(model) -> set[str]:
    """Names (without peft's prefix) of the modules and parameters that carry a LoRA adapter."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            short = name.removeprefix("base_model.model.").replace(".base_layer", "")
            parameter = getattr(module, "parameter_name", None)
            names.add(f"{short}.{parameter}" if parameter else short)
    return names


def moe_two_layers() -> Qwen3MoeForCausalLM:
    """A two-layer Qwen3-MoE with fused expert weights (``mlp.experts.gate_up_proj``, ``down_proj``)."""
    torch.manual_seed(0)
    return tiny_moe(layers=2)


@pytest.fixture
def config_file(tmp_path, small_vocab_model_dir):
    """Write a config on the small-vocabulary model with ``keys``; returns its path."""

    def write(**keys):
        (tmp_path / "chat.jsonl").touch()
        return write_config(tmp_path, small_vocab_model_dir, tmp_path / "chat.jsonl", **keys)

    return write


# --- lora_target_modules as a regex ------------------------------------------------------------


def test_a_regex_target_reaches_peft_as_it_is_and_adapts_exactly_the_matching_modules(tiny_model_dir):
    cfg = make_config(base_model=tiny_model_dir, adapter="lora", lora_target_modules=AXOLOTL_REGEX)
    model = load_tiny(tiny_model_dir)
    assert lora_config(cfg, model).target_modules == AXOLOTL_REGEX
    peft_model = apply_lora(cfg, model)
    assert adapted(peft_model) == {
        f"model.layers.{layer}.{name}" for layer in (0, 1) for name in ("self_attn.q_proj", "mlp.up_proj")
    }
    assert (
        json.loads(json.dumps(peft_model.peft_config["default"].to_dict(), default=list))["target_modules"]
        == AXOLOTL_REGEX
    )


def test_a_regex_and_target_linear_adapt_both(tiny_model_dir):
    cfg = make_config(
        base_model=tiny_model_dir, adapter="lora", lora_target_linear=True, lora_target_modules=r"lm_head"
    )
    targets = lora_config(cfg, load_tiny(tiny_model_dir)).target_modules
    assert "lm_head" in targets and "q_proj" in targets and "down_proj" in targets


def test_a_regex_that_matches_no_module_names_it_and_shows_real_names(tiny_model_dir):
    regex = r"layers.[\d]+.attn.q_proj"
    cfg = make_config(base_model=tiny_model_dir, adapter="lora", lora_target_modules=regex)
    with pytest.raises(FtkError) as raised:
        apply_lora(cfg, load_tiny(tiny_model_dir))
    assert str(raised.value) == (
        f"lora_target_modules: the regex {regex!r} matches no module name of Qwen3ForCausalLM "
        "(it must match the whole name); names look like: model.layers.0.self_attn.q_proj, "
        "model.layers.0.self_attn.k_proj, model.layers.0.self_attn.v_proj, model.layers.0.self_attn.o_proj, ..."
    )


def test_a_regex_that_does_not_compile_stops_validate_with_exit_2(config_file, capsys):
    path = config_file(adapter="lora", lora_target_modules="model.(layers")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    line = line_of(path, "lora_target_modules")
    assert f"{path}:{line}: lora_target_modules: 'model.(layers' is not a valid regular expression: " in err
    assert "missing ), unterminated subpattern" in err
    assert "Traceback" not in err


# --- lora_target_parameters --------------------------------------------------------------------


def test_target_parameters_reach_peft_and_adapt_those_expert_weights_only():
    cfg = make_config(
        adapter="lora", lora_target_modules=["q_proj"], lora_target_parameters=["experts.down_proj"]
    )
    model = moe_two_layers()
    config = lora_config(cfg, model)
    assert config.target_parameters == ["experts.down_proj"]
    peft_model = apply_lora(cfg, model)
    assert adapted(peft_model) == {
        f"model.layers.{layer}.{name}"
        for layer in (0, 1)
        for name in ("self_attn.q_proj", "mlp.experts.down_proj")
    }
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any("experts" in name and "lora_A" in name for name in trainable)


def test_a_target_parameter_that_matches_nothing_lists_the_expert_weights():
    cfg = make_config(adapter="lora", lora_target_parameters=["experts.gate_proj"])
    with pytest.raises(FtkError) as raised:
        apply_lora(cfg, moe_two_layers())
    assert str(raised.value) == (
        "lora_target_parameters: 'experts.gate_proj' matches no parameter of Qwen3MoeForCausalLM; "
        "its fused expert weights: experts.down_proj, experts.gate_up_proj"
    )


def test_target_parameters_with_dropout_is_a_config_error(config_file, capsys):
    path = config_file(adapter="lora", lora_dropout=0.05, lora_target_parameters=["experts.down_proj"])
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        f"{path}:{line_of(path, 'lora_dropout')}: lora_dropout: must be 0 with lora_target_parameters: "
        "peft's ParamWrapper, which adapts parameters, has no dropout"
    ) in err


# --- peft_layers_to_transform / peft_layers_pattern ---------------------------------------------


def test_layers_to_transform_keeps_the_adapter_to_those_layers_experts_included():
    cfg = make_config(adapter="lora", lora_target_linear=True, peft_layers_to_transform=[1])
    model = moe_two_layers()
    config = lora_config(cfg, model)
    assert config.layers_to_transform == [1]
    assert config.target_parameters == [
        "model.layers.1.mlp.experts.down_proj",
        "model.layers.1.mlp.experts.gate_up_proj",
    ]
    names = adapted(apply_lora(cfg, model))
    assert names and all(name.startswith("model.layers.1.") for name in names)
    assert "model.layers.1.self_attn.q_proj" in names and "model.layers.1.mlp.experts.gate_up_proj" in names


def test_layers_pattern_reaches_peft(tiny_model_dir):
    cfg = make_config(
        base_model=tiny_model_dir,
        adapter="lora",
        lora_target_modules=["v_proj"],
        peft_layers_to_transform=[0],
        peft_layers_pattern=["layers"],
    )
    model = apply_lora(cfg, load_tiny(tiny_model_dir))
    assert model.peft_config["default"].layers_pattern == ["layers"]
    assert adapted(model) == {"model.layers.0.self_attn.v_proj"}


def test_a_layer_number_past_the_last_layer_is_an_error(tiny_model_dir):
    cfg = make_config(
        base_model=tiny_model_dir, adapter="lora", lora_target_linear=True, peft_layers_to_transform=[1, 5]
    )
    with pytest.raises(FtkError) as raised:
        apply_lora(cfg, load_tiny(tiny_model_dir))
    assert str(raised.value) == (
        "peft_layers_to_transform: layer 5 holds no module that lora_target_modules or "
        "lora_target_linear selects; the model has 2 layers (0..1)"
    )


def test_layers_pattern_without_layer_numbers_and_layers_with_a_regex_are_config_errors(config_file, capsys):
    path = config_file(adapter="lora", lora_target_modules=AXOLOTL_REGEX, peft_layers_to_transform=[0])
    assert main(["validate", str(path)]) == 2
    assert (
        "peft_layers_to_transform: peft ignores it when lora_target_modules is a regex"
        in capsys.readouterr().err
    )
    path = config_file(adapter="lora", lora_target_linear=True, peft_layers_pattern=["layers"])
    assert main(["validate", str(path)]) == 2
    assert "peft_layers_pattern: needs peft_layers_to_transform" in capsys.readouterr().err


# --- lora_fan_in_fan_out ------------------------------------------------------------------------


def test_fan_in_fan_out_reaches_peft_for_gpt2_conv1d_layers(capsys):
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    cfg = make_config(adapter="lora", lora_target_modules=["c_attn"], lora_fan_in_fan_out=True)
    assert lora_config(cfg, gpt2).fan_in_fan_out is True
    model = apply_lora(cfg, gpt2)
    layer = model.get_submodule("base_model.model.transformer.h.0.attn.c_attn")
    assert layer.fan_in_fan_out is True
    assert "fan_in_fan_out" not in capsys.readouterr().err  # it agrees with the layers: no note


def test_fan_in_fan_out_on_linear_layers_is_said_to_be_off(tiny_model_dir, capsys):
    cfg = make_config(
        base_model=tiny_model_dir, adapter="lora", lora_target_modules=["q_proj"], lora_fan_in_fan_out=True
    )
    model = apply_lora(cfg, load_tiny(tiny_model_dir))
    assert model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj").fan_in_fan_out is False
    assert "lora: lora_fan_in_fan_out: true does not apply to nn.Linear layers" in capsys.readouterr().err


# --- peft.loftq_config --------------------------------------------------------------------------


def test_loftq_initialises_lora_from_the_quantization_error(tiny_model_dir):
    cfg = make_config(
        base_model=tiny_model_dir,
        adapter="lora",
        lora_r=4,
        lora_target_modules=["q_proj"],
        peft={"loftq_config": {"loftq_bits": 4}},
    )
    model = load_tiny(tiny_model_dir)
    original = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    config = lora_config(cfg, model)
    assert config.init_lora_weights == "loftq" and config.loftq_config["loftq_bits"] == 4
    layer = apply_lora(cfg, model).get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    quantized = layer.base_layer.weight.detach()
    assert not torch.equal(quantized, original)  # the base is now its nf4 round trip
    delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
    assert delta.abs().max() > 0  # LoRA starts at a low-rank fit of the error, not at zero
    assert (quantized + delta - original).norm() < (quantized - original).norm()


def test_loftq_on_a_4bit_base_is_a_config_error(config_file, capsys):
    path = config_file(adapter="qlora", load_in_4bit=True, peft={"loftq_config": {"loftq_bits": 4}})
    assert main(["validate", str(path)]) == 2
    assert "peft.loftq_config: needs a full-precision base" in capsys.readouterr().err


# --- unfrozen_parameters ------------------------------------------------------------------------


def test_unfrozen_parameters_match_from_the_start_with_literal_dots():
    regex = name_regex("model.layers.1[0-9].mlp")
    assert regex.match("model.layers.12.mlp.up_proj.weight")
    assert not regex.match("model.layers.1x2.mlp.up_proj.weight")  # '.' is a dot
    assert not regex.match("x.model.layers.12.mlp.up_proj.weight")  # from the start
    assert name_regex("model.+q_proj").match("model.layers.0.self_attn.q_proj.weight")  # '.+' is a wildcard
    assert name_regex(r"lm_head\.weight$").match("lm_head.weight")


def test_full_fine_tuning_trains_only_the_unfrozen_parameters(tiny_model_dir, capsys):
    manager = builtin_manager()
    cfg = make_config(
        base_model=tiny_model_dir, unfrozen_parameters=["model.layers.1.mlp", "^lm_head.weight$"]
    )
    tokenizer, new_ids = load_tokenizer(cfg, manager.hooks)
    model = load_model(cfg, manager.hooks, manager.collect_registrations(), tokenizer, new_ids)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    # lm_head is tied to embed_tokens in the tiny model: the shared tensor trains under its first name
    assert trainable == {
        "model.embed_tokens.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    }
    counts = (
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        sum(p.numel() for p in model.parameters()),
    )
    assert (
        f"unfrozen_parameters: {counts[0]:,} of {counts[1]:,} parameters trainable" in capsys.readouterr().err
    )


def test_an_unfrozen_pattern_that_matches_nothing_is_named():
    with pytest.raises(FtkError) as raised:
        freeze_except(moe_two_layers(), ["model.layers.0.", "model.layer.1"])
    message = str(raised.value)
    assert message.startswith(
        "unfrozen_parameters[1]: 'model.layer.1' matches no parameter of Qwen3MoeForCausalLM "
        "(matched from the start of the name, '.' is a literal dot); names look like: model.embed_tokens.weight"
    )
    assert message.endswith("..., lm_head.weight")


def test_unfrozen_parameters_with_an_adapter_or_a_row_range_stop_validate(config_file, capsys):
    path = config_file(adapter="lora", lora_target_linear=True, unfrozen_parameters=["^lm_head.*"])
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        f"{path}:{line_of(path, 'unfrozen_parameters')}: unfrozen_parameters: applies to full fine-tuning "
        "only: with adapter: lora the adapter's keys choose what trains"
    ) in err
    path = config_file(unfrozen_parameters=["^model.embed_tokens.weight$[:32000]"])
    assert main(["validate", str(path)]) == 2
    assert (
        "unfrozen_parameters[0]: '^model.embed_tokens.weight$[:32000]': row ranges ([start:end]) are not supported"
    ) in capsys.readouterr().err


def test_train_stops_with_exit_2_on_an_unfrozen_pattern_that_matches_nothing(
    tmp_path, small_vocab_model_dir, capsys
):
    path = write_alpaca_config(tmp_path, small_vocab_model_dir, unfrozen_parameters=["model.layer.0"])
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unfrozen_parameters[0]: 'model.layer.0' matches no parameter of Qwen3ForCausalLM" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
def test_a_run_with_unfrozen_parameters_changes_only_those_weights(tmp_path, small_vocab_model_dir):
    path = write_alpaca_config(
        tmp_path, small_vocab_model_dir, max_steps=2, unfrozen_parameters=["model.layers.1."]
    )
    assert main(["train", str(path)]) == 0
    before = load_file(small_vocab_model_dir / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    changed = {name for name, tensor in after.items() if not torch.equal(tensor, before[name])}
    assert changed and all(name.startswith("model.layers.1.") for name in changed)
    assert "model.layers.1.self_attn.q_proj.weight" in changed
