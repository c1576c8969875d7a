"""Mixture of experts: LoRA on the fused experts but not the router, and the router aux loss."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

from ftk.cli import main
from ftk.commands.train import run_training
from ftk.core.config.loader import load_config
from ftk.core.errors import FtkError
from ftk.core.model import load_base_model
from ftk.core.step_metrics import StepMetrics
from ftk.plugins.lora import apply_lora
from tests.helpers import builtin_manager, make_config, reference_loss, token_mean_loss

REPO = Path(__file__).resolve().parents[1]
ARITHMETIC = REPO / "examples" / "data" / "arithmetic_alpaca.jsonl"
EXPERTS, TOP_K = 4, 2


@pytest.fixture(scope="module")
def moe_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A random Qwen3-MoE (hidden 64, 2 layers, 4 experts, top-2) with the tiny model's tokenizer."""
    tiny = json.loads((tiny_model_dir / "config.json").read_text())
    config = Qwen3MoeConfig(
        vocab_size=tiny["vocab_size"],
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=EXPERTS,
        num_experts_per_tok=TOP_K,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tiny["pad_token_id"],
        bos_token_id=tiny["bos_token_id"],
        eos_token_id=tiny["eos_token_id"],
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-moe") / "model"
    Qwen3MoeForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_model_dir / name, out / name)
    return out


def load(model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def adapted(model) -> set[str]:
    """Short names (layer 0) of the modules and parameters that carry a LoRA adapter."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ".layers.0." in name:
            short = name.split(".layers.0.")[1].replace(".base_layer", "")
            names.add(
                f"{short}.{module.parameter_name}" if getattr(module, "parameter_name", None) else short
            )
    return names


def test_target_linear_adapts_attention_and_experts_but_not_the_router(moe_dir):
    model = apply_lora(
        make_config(base_model=moe_dir, adapter="lora", lora_target_linear=True), load(moe_dir)
    )
    assert adapted(model) == {
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.experts.gate_up_proj",
        "mlp.experts.down_proj",
    }
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any(".layers.1.mlp.experts." in name for name in trainable)
    assert not any(".mlp.gate." in name for name in trainable)
    assert all(".lora_" in name for name in trainable)


def test_naming_the_router_adapts_it(moe_dir):
    cfg = make_config(base_model=moe_dir, adapter="lora", lora_target_modules=["q_proj", "gate"])
    model = apply_lora(cfg, load(moe_dir))
    assert adapted(model) == {"self_attn.q_proj", "mlp.gate.weight"}


def test_transformers4_expert_names_reach_the_fused_experts(moe_dir):
    cfg = make_config(
        base_model=moe_dir, adapter="lora", lora_target_modules=["gate_proj", "up_proj", "down_proj"]
    )
    model = apply_lora(cfg, load(moe_dir))
    assert adapted(model) == {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}


def test_half_of_a_fused_expert_weight_is_a_config_error(moe_dir):
    cfg = make_config(base_model=moe_dir, adapter="lora", lora_target_modules=["q_proj", "gate_proj"])
    with pytest.raises(FtkError, match=r"^lora_target_modules: .*gate_proj.*up_proj"):
        apply_lora(cfg, load(moe_dir))


def test_dora_on_fused_experts_is_a_config_error(moe_dir):
    cfg = make_config(base_model=moe_dir, adapter="lora", lora_target_linear=True, peft_use_dora=True)
    with pytest.raises(FtkError, match=r"^peft_use_dora: DoRA cannot adapt fused expert weights"):
        apply_lora(cfg, load(moe_dir))


def test_dense_layers_peft_leaves_unadapted_are_reported_exactly(capsys):
    # Layer 0 has a dense MLP (gate_proj, up_proj, down_proj as nn.Linear); peft 0.21 maps these
    # names onto the fused experts of every layer, so the dense ones get no adapter: say so.
    config = Qwen3MoeConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_experts=EXPERTS,
        num_experts_per_tok=TOP_K,
        mlp_only_layers=[0],
    )
    model = apply_lora(
        make_config(base_model="unused", adapter="lora", lora_target_linear=True), Qwen3MoeForCausalLM(config)
    )
    dense = [f"model.layers.0.mlp.{name}" for name in ("down_proj", "gate_proj", "up_proj")]
    # peft 0.21 leaves them bare; peft 0.22 adapts them.  Either way the warning names exactly the bare ones.
    unadapted = [
        name for name in dense if not isinstance(model.get_submodule(f"base_model.model.{name}"), LoraLayer)
    ]
    err = capsys.readouterr().err
    if unadapted:
        assert (
            f"lora: warning: peft left {len(unadapted)} targeted linear layers without an adapter: "
            f"{', '.join(unadapted)}\n" in err
        )
    else:
        assert "without an adapter" not in err


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5000, (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.clone()
    labels[:, :4] = -100
    labels[1, 9:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def reference_losses(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over full logits and the load-balancing loss, computed outside the plugin."""
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_router_logits=True
        )
    ce = reference_loss(out.logits, batch["labels"])
    aux = load_balancing_loss_func(out.router_logits, EXPERTS, TOP_K, batch["attention_mask"])
    return ce, aux


def test_training_loss_adds_the_scaled_router_loss_and_reports_it(moe_dir, batch):
    model = load(moe_dir).train()  # no dropout in this model: train mode is deterministic
    ce, aux = reference_losses(model, batch)
    assert aux > 0.5  # a real load-balancing loss (about 1 for balanced routing), not a zero

    cfg = make_config(base_model=moe_dir, router_aux_loss_coef=0.5, gradient_accumulation_steps=2)
    metrics = StepMetrics()
    with torch.no_grad():
        loss = token_mean_loss(model, batch, None, cfg, metrics)
    # One optimizer step holds 2 micro-batches: each adds half of coef * aux.
    assert loss.item() == pytest.approx((ce + 0.5 * aux / 2).item(), abs=1e-5)
    assert metrics.pop_means() == {"router_aux_loss": pytest.approx(aux.item(), abs=1e-6)}

    with torch.no_grad():  # router_aux_loss_coef unset: the model's own coefficient
        default = token_mean_loss(model, batch, None, make_config(base_model=moe_dir), StepMetrics())
    assert model.config.router_aux_loss_coef == 0.001
    assert default.item() == pytest.approx((ce + 0.001 * aux).item(), abs=1e-6)


def test_evaluation_loss_is_plain_cross_entropy(moe_dir, batch):
    model = load(moe_dir).eval()
    ce, _ = reference_losses(model, batch)
    metrics = StepMetrics()
    cfg = make_config(base_model=moe_dir, router_aux_loss_coef=0.5)
    with torch.no_grad():
        loss = token_mean_loss(model, batch, None, cfg, metrics)
    assert loss.item() == pytest.approx(ce.item(), abs=1e-6)
    assert metrics.pop_means() == {}


def test_coefficient_zero_turns_the_router_loss_off(moe_dir, batch):
    model = load(moe_dir).train()
    ce, _ = reference_losses(model, batch)
    metrics = StepMetrics()
    with torch.no_grad():
        loss = token_mean_loss(
            model, batch, None, make_config(base_model=moe_dir, router_aux_loss_coef=0.0), metrics
        )
    assert loss.item() == pytest.approx(ce.item(), abs=1e-6)
    assert metrics.pop_means() == {}


def test_model_loading_turns_router_logits_on_for_moe_only(moe_dir, tiny_model_dir, tokenizer):
    assert load(moe_dir).config.output_router_logits is False  # the model's own default
    hooks = builtin_manager().hooks
    on = load_base_model(make_config(base_model=moe_dir), hooks, tokenizer, "train")
    assert on.config.output_router_logits is True
    off = load_base_model(
        make_config(base_model=moe_dir, router_aux_loss_coef=0.0), hooks, tokenizer, "train"
    )
    assert off.config.output_router_logits is False
    with pytest.raises(FtkError, match=r"^router_aux_loss_coef: 'qwen3' models have no router"):
        load_base_model(
            make_config(base_model=tiny_model_dir, router_aux_loss_coef=0.01), hooks, tokenizer, "train"
        )


@pytest.mark.slow
def test_lora_run_on_moe_trains_and_merges(moe_dir, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"""\
base_model: {moe_dir}
datasets:
  - path: {ARITHMETIC}
    type: alpaca
    max_samples: 12
adapter: lora
lora_target_linear: true
router_aux_loss_coef: 0.02
sequence_len: 128
micro_batch_size: 2
gradient_accumulation_steps: 2
max_steps: 3
learning_rate: 1.0e-2
lr_scheduler: constant
output_dir: {tmp_path / "out"}
dataset_prepared_path: {tmp_path / "prepared"}
"""
    )
    cfg, manager = load_config(path)
    result = run_training(cfg, manager)
    assert result.global_step == 3 and math.isfinite(result.train_loss)
    adapter_config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert set(adapter_config["target_parameters"]) == {"experts.gate_up_proj", "experts.down_proj"}

    assert main(["merge-lora", str(path)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged", dtype=torch.float32).eval()
    ids = torch.tensor([[151644, 872, 198, 13048, 151645, 198, 151644, 77091, 198]])
    with torch.no_grad():
        expected = result.model.eval()(input_ids=ids).logits
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
        assert not torch.allclose(load(moe_dir)(input_ids=ids).logits, expected, atol=1e-4)
