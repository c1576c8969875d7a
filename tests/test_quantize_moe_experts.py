"""``quantize_moe_experts``: the fused MoE expert weights packed to 4 bits (bitsandbytes, its CPU
backend here), the keys it needs, LoRA on the quantized experts (gradients, save and reload) and a
short ``ftk train`` run."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

from ftk.cli import main
from ftk.core.config.loader import load_config
from ftk.core.config.schema import FtkConfig
from ftk.plugins import quantization
from ftk.plugins.hf_model import model_dtype
from ftk.plugins.lora import apply_lora
from tests.helpers import first_chat_rows, line_of, write_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed"
)

EXPERT_WEIGHTS = ("gate_up_proj", "down_proj")
LAYERS = 2
QLORA = "adapter: qlora\nload_in_4bit: true\n"
EXPERTS_LORA = (
    "lora_r: 4\nlora_alpha: 8\nlora_target_parameters:\n  - experts.gate_up_proj\n  - experts.down_proj\n"
)


@pytest.fixture(scope="module")
def moe_dir(small_vocab_model_dir, tmp_path_factory) -> Path:
    """A random Qwen3-MoE (hidden 64, 2 layers, 4 experts of width 64, top-2), the small vocabulary's tokenizer."""
    small = json.loads((small_vocab_model_dir / "config.json").read_text())
    config = Qwen3MoeConfig(
        vocab_size=small["vocab_size"],
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=small["pad_token_id"],
        bos_token_id=small.get("bos_token_id"),
        eos_token_id=small["eos_token_id"],
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("moe") / "model"
    Qwen3MoeForCausalLM(config).save_pretrained(out)
    for path in small_vocab_model_dir.iterdir():
        if path.name.startswith("tokenizer") or path.name.endswith(".jinja"):
            shutil.copy(path, out / path.name)
    return out


def config(tmp_path: Path, model_dir: Path | str, body: str) -> FtkConfig:
    return load_config(write_config(tmp_path, model_dir, "data.jsonl", extra=body, sequence_len=128))[0]


def quantized_base(cfg: FtkConfig, model_dir: Path, purpose: str = "train") -> torch.nn.Module:
    """The base as a run loads it: from_pretrained with the plugin's kwargs, then its post-load step."""
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=model_dtype(cfg), **quantization.model_load_kwargs(cfg=cfg, purpose=purpose)
    )
    quantization.post_model_load(cfg=cfg, model=model, purpose=purpose)
    return model


def experts_of(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    module = next(m for name, m in model.named_modules() if name.endswith(f"layers.{layer}.mlp.experts"))
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def expert_bytes(model: torch.nn.Module) -> int:
    """Bytes the expert weights take: parameters (the packed data when quantized) and their quantization state."""
    total = 0
    for layer in range(LAYERS):
        experts = experts_of(model, layer)
        for name in EXPERT_WEIGHTS:
            plists = getattr(experts, "parametrizations", {})
            if name in plists:
                packed, state = plists[name].original, plists[name][0].quant_state
                extra = [t for t in state.as_dict(packed=True).values() if hasattr(t, "numel")]
                total += packed.nbytes + sum(t.nbytes for t in extra)
            else:
                total += getattr(experts, name).nbytes
    return total


IDS = torch.tensor([[3, 17, 420, 9, 81, 700, 5, 12, 99, 1000, 7, 64]])


# --- the keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        (
            "adapter: lora\nquantize_moe_experts: true\n",
            "quantize_moe_experts",
            "quantizes the MoE experts to 4 bits and needs load_in_4bit: true",
        ),
        (
            "adapter: lora\nload_in_8bit: true\nquantize_moe_experts: true\n",
            "quantize_moe_experts",
            "quantizes the MoE experts to 4 bits and needs load_in_4bit: true",
        ),
        (
            QLORA + "quantize_moe_experts: true\nbnb_4bit_quant_storage: bfloat16\n",
            "bnb_4bit_quant_storage",
            "bfloat16 cannot apply with quantize_moe_experts: true, which packs the expert weights as uint8; "
            "remove one of the two keys",
        ),
        (
            QLORA + "quantize_moe_experts: maybe\n",
            "quantize_moe_experts",
            "Input should be a valid boolean, unable to interpret input (got 'maybe')",
        ),
    ],
    ids=["without-4bit", "with-8bit", "float-storage", "not-a-boolean"],
)
def test_keys_that_cannot_work_fail_validation_with_their_line(tmp_path, capsys, body, key, message):
    path = write_config(tmp_path, "some/model", "data.jsonl", extra=body)
    assert main(["validate", str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {path}:{line_of(path, key)}: {key}: {message}"]


def test_the_key_resolves_into_the_description(tmp_path):
    quant = quantization.resolve(config(tmp_path, "some/model", QLORA + "quantize_moe_experts: true\n"))
    assert quant is not None and quant.experts
    assert quant.describe() == "bitsandbytes 4-bit nf4, double quant, compute float32, MoE experts too"
    off = quantization.resolve(config(tmp_path, "some/model", QLORA))
    assert off is not None and not off.experts and "experts" not in off.describe()


# --- quantizing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "quant_type", "nested"),
    [("", "nf4", True), ("bnb_4bit_quant_type: fp4\nbnb_4bit_use_double_quant: false\n", "fp4", False)],
    ids=["nf4-double", "fp4-single"],
)
def test_every_fused_expert_weight_is_packed_with_the_4bit_settings(
    tmp_path, moe_dir, capsys, settings, quant_type, nested
):
    from bitsandbytes.nn.parametrize import Bnb4bitParametrization

    full = AutoModelForCausalLM.from_pretrained(moe_dir, dtype=torch.float32)
    cfg = config(tmp_path, moe_dir, QLORA + settings + "quantize_moe_experts: true\n")
    model = quantized_base(cfg, moe_dir)
    for layer in range(LAYERS):
        experts = experts_of(model, layer)
        for name in EXPERT_WEIGHTS:
            plist = experts.parametrizations[name]
            assert [type(p) for p in plist] == [Bnb4bitParametrization]
            assert plist.original.dtype == torch.uint8 and not plist.original.requires_grad
            state = plist[0].quant_state
            assert (state.quant_type, state.nested) == (quant_type, nested)
            # read back whole, in the dtype the rest of the model computes in
            assert getattr(experts, name).shape == getattr(experts_of(full, layer), name).shape
            assert getattr(experts, name).dtype == torch.float32
    before, after = expert_bytes(full), expert_bytes(model)
    assert after < 0.2 * before  # float32 weights: 4 bits + one scale per 64 weights is ~1/7
    err = capsys.readouterr().err
    assert f"quantization: 4 fused expert weights to 4-bit {quant_type}" in err
    assert f"{before / 1024:,.1f} KiB -> {after / 1024:,.1f} KiB" in err
    assert "without gradient_checkpointing" in err


def test_the_output_stays_within_the_4bit_error(tmp_path, moe_dir):
    cfg = config(tmp_path, moe_dir, QLORA + "quantize_moe_experts: true\n")
    plain = quantized_base(config(tmp_path, moe_dir, QLORA), moe_dir).eval()
    model = quantized_base(cfg, moe_dir).eval()
    hidden = torch.randn(10, 64)
    index = torch.tensor([[0, 1], [2, 3]] * 5)
    weights = torch.full((10, 2), 0.5)
    with torch.no_grad():
        exact = experts_of(plain, 0)(hidden, index, weights)
        packed = experts_of(model, 0)(hidden, index, weights)
        relative = ((packed - exact).norm() / exact.norm()).item()
        logits, plain_logits = model(input_ids=IDS).logits, plain(input_ids=IDS).logits
    assert 0.0 < relative < 0.15  # nf4 keeps weights to some 10%, and the experts are not left exact
    assert (logits - plain_logits).abs().max() < 0.05 * plain_logits.abs().max()


def test_a_model_without_fused_experts_stops_the_run_with_exit_2(tmp_path, small_vocab_model_dir, capsys):
    data = first_chat_rows(tmp_path / "chat.jsonl", 4)
    body = QLORA + "quantize_moe_experts: true\nlora_r: 4\nlora_target_linear: true\n"
    path = write_config(tmp_path, small_vocab_model_dir, data, extra=body, excess_length_strategy="truncate")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "error: quantize_moe_experts: Qwen3ForCausalLM has no fused expert weights (3-D parameters of experts "
        "modules) to quantize; load_in_4bit already quantizes linear layers, experts stored as nn.Linear "
        "included: remove quantize_moe_experts"
    )
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


# --- LoRA on the quantized experts --------------------------------------------------------------


def lora_grads(model: torch.nn.Module) -> dict[str, float]:
    return {
        name: (param.grad.abs().sum().item() if param.grad is not None else 0.0)
        for name, param in model.named_parameters()
        if param.requires_grad
    }


@pytest.mark.parametrize(
    "targets",
    [EXPERTS_LORA, "lora_r: 4\nlora_alpha: 8\nlora_target_linear: true\n"],
    ids=["target-parameters", "target-linear"],
)
def test_lora_on_quantized_experts_gets_gradients_and_computes_on_the_4bit_weights(
    tmp_path, moe_dir, targets
):
    cfg = config(tmp_path, moe_dir, QLORA + "quantize_moe_experts: true\n" + targets)
    model = apply_lora(cfg, quantized_base(cfg, moe_dir))
    for param in (p for n, p in model.named_parameters() if "lora_B" in n):
        torch.nn.init.normal_(param, std=0.1)  # B starts at zero: give A a gradient too
    model.train()
    first = model(input_ids=IDS, labels=IDS)
    first.loss.backward()
    grads = lora_grads(model)
    expert_grads = {name: value for name, value in grads.items() if ".mlp.experts." in name}
    assert len(expert_grads) == LAYERS * len(EXPERT_WEIGHTS) * 2  # A and B of both weights, every layer
    assert all(value > 0 for value in expert_grads.values()), expert_grads
    # the LoRA term is taken off after each forward: the 4-bit weights alone remain, and a second
    # forward gives the same result
    for layer in range(LAYERS):
        experts = experts_of(model, layer)
        assert [len(experts.parametrizations[name]) for name in EXPERT_WEIGHTS] == [1, 1]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, first.logits.detach())

    # The same adapter on an unquantized copy whose experts hold the dequantized weights: the experts
    # (with their LoRA terms) compute the same, and the adapter's tensors have the same names and shapes.
    copy = AutoModelForCausalLM.from_pretrained(moe_dir, dtype=torch.float32)
    with torch.no_grad():
        for layer in range(LAYERS):
            for name in EXPERT_WEIGHTS:
                getattr(experts_of(copy, layer), name).copy_(getattr(experts_of(model, layer), name))
    reference = apply_lora(cfg, copy)
    adapter = {name: param for name, param in model.state_dict().items() if "lora_" in name}
    assert {n: p.shape for n, p in reference.state_dict().items() if "lora_" in n} == {
        n: p.shape for n, p in adapter.items()
    }
    reference.load_state_dict(adapter, strict=False)
    hidden, index, weights = torch.randn(10, 64), torch.tensor([[0, 1], [2, 3]] * 5), torch.full((10, 2), 0.5)
    with torch.no_grad():
        for layer in range(LAYERS):
            mine = model.base_model.model.model.layers[layer].mlp.experts(hidden, index, weights)
            theirs = reference.base_model.model.model.layers[layer].mlp.experts(hidden, index, weights)
            torch.testing.assert_close(mine, theirs)


def test_naming_an_expert_weight_as_a_module_adapts_the_parameter(tmp_path, moe_dir):
    body = "lora_r: 4\nlora_alpha: 8\nlora_target_modules:\n  - q_proj\n  - down_proj\n"
    cfg = config(tmp_path, moe_dir, QLORA + "quantize_moe_experts: true\n" + body)
    model = apply_lora(cfg, quantized_base(cfg, moe_dir))
    wrapped = model.base_model.model.model.layers[0].mlp.experts
    assert (type(wrapped).__name__, wrapped.parameter_name) == ("ParamWrapper", "down_proj")
    assert type(model.base_model.model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"


# --- a run --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_qlora_run_on_quantized_experts_trains_saves_and_reloads(tmp_path, moe_dir):
    data = first_chat_rows(tmp_path / "chat.jsonl", 8)
    body = QLORA + "quantize_moe_experts: true\n" + EXPERTS_LORA + "lora_dropout: 0\n"
    path = write_config(
        tmp_path,
        moe_dir,
        data,
        extra=body,
        sequence_len=128,
        max_steps=2,
        learning_rate=1.0e-2,
        excess_length_strategy="truncate",
        gradient_checkpointing=True,
    )
    assert main(["train", str(path)]) == 0
    out = tmp_path / "out"
    losses = [json.loads(line).get("loss") for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [loss for loss in losses if loss is not None]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    saved = load_file(out / "adapter_model.safetensors")
    expert_b = [t for name, t in saved.items() if ".mlp.experts." in name and "lora_B" in name]
    assert len(expert_b) == LAYERS * len(EXPERT_WEIGHTS) and all(t.abs().sum() > 0 for t in expert_b)
    assert "MoE experts too" in (out / "summary.md").read_text()

    cfg = load_config(path)[0]
    reloaded = PeftModel.from_pretrained(quantized_base(cfg, moe_dir, "inference"), out).eval()
    for layer in range(LAYERS):
        wrapper = reloaded.base_model.model.model.layers[layer].mlp.experts
        assert {wrapper.parameter_name, wrapper.base_layer.parameter_name} == set(EXPERT_WEIGHTS)
    with torch.no_grad():
        logits = reloaded(input_ids=IDS).logits
        with reloaded.disable_adapter():
            assert (logits - reloaded(input_ids=IDS).logits).abs().max() > 1e-4  # the trained adapter acts
    # The adapter loads as it was saved, on the 4-bit base and on the full-precision one (ftk merge-lora).
    unquantized = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(moe_dir), out)
    for model in (reloaded, unquantized):
        state = {name.replace(".default", ""): t for name, t in model.state_dict().items() if "lora_" in name}
        assert set(state) == set(saved)
        assert all(torch.equal(state[name], tensor) for name, tensor in saved.items())

    # ftk merge-lora merges it into the full-precision experts: the merged model computes as the
    # adapter on the full-precision base does.
    assert main(["merge-lora", str(path)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=IDS).logits, unquantized.eval()(input_ids=IDS).logits)
