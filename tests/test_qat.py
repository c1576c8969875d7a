"""qat: (axolotl's quantization-aware training) through torchao: the fake quantization each setting
gives torchao, the errors for settings torchao cannot train, the machine check, the
fake_quant_after_n_steps switch, and short runs whose saved model is a plain transformers model."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from ftk.cli import main
from ftk.core.errors import FtkError
from ftk.plugins import qat as qat_plugin
from tests.helpers import SMALL_LORA, line_of, make_config, write_alpaca_config, write_config

# Validation only: no training keys unless a test sets them.
BASE = dict(sequence_len=384, micro_batch_size=None, max_steps=None, seed=None)


@pytest.fixture(scope="module")
def ao():
    """torchao, or the test is skipped."""
    return pytest.importorskip("torchao")


def small_qwen(hidden: int = 128) -> Qwen3ForCausalLM:
    """A random two-layer Qwen3 whose every linear layer takes a multiple of 128 inputs (by default)."""
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        tie_word_embeddings=True,
    )
    return Qwen3ForCausalLM(config).eval()


def resolved(**section):
    return qat_plugin.resolve(make_config(qat=section))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- what reaches torchao -----------------------------------------------------------------------


def _describe_quantizer(quantizer) -> tuple:
    """A fake quantizer's config as (class name, dtype, group size or granularity name)."""
    if quantizer is None:
        return (None,)
    config = quantizer.config
    if type(config).__name__ == "Int4WeightFakeQuantizeConfig":
        group = config.group_size
    else:
        group = type(config.granularity).__name__
    dtype = getattr(config, "dtype", None) or getattr(config, "activation_dtype", None)
    return (type(config).__name__, dtype, group)


@pytest.mark.parametrize(
    ("section", "ptq", "activation", "weight"),
    [
        (
            {"weight_dtype": "int4"},
            "Int4WeightOnlyConfig",
            (None,),
            ("Int4WeightFakeQuantizeConfig", torch.bfloat16, 32),
        ),
        (
            {"activation_dtype": "int8", "weight_dtype": "int4", "group_size": 64},
            "Int8DynamicActivationIntxWeightConfig",
            ("IntxFakeQuantizeConfig", torch.int8, "PerToken"),
            ("IntxFakeQuantizeConfig", torch.int4, "PerGroup"),
        ),
        (
            {},  # axolotl's default weight_dtype: int8
            "IntxWeightOnlyConfig",
            (None,),
            ("IntxFakeQuantizeConfig", torch.int8, "PerGroup"),
        ),
        (
            {"activation_dtype": "int8", "weight_dtype": "int8"},
            "Int8DynamicActivationIntxWeightConfig",
            ("IntxFakeQuantizeConfig", torch.int8, "PerToken"),
            ("IntxFakeQuantizeConfig", torch.int8, "PerGroup"),
        ),
        (
            {"activation_dtype": "fp8", "weight_dtype": "float8_e4m3fn"},
            "Float8DynamicActivationFloat8WeightConfig",
            ("Float8FakeQuantizeConfig", torch.float8_e4m3fn, "PerTensor"),
            ("Float8FakeQuantizeConfig", torch.float8_e4m3fn, "PerTensor"),
        ),
        (
            {"activation_dtype": "float8", "weight_dtype": "int4"},
            "Float8DynamicActivationInt4WeightConfig",
            ("Float8FakeQuantizeConfig", torch.float8_e4m3fn, "PerRow"),
            ("Int4WeightFakeQuantizeConfig", torch.float8_e4m3fn, 128),
        ),
    ],
)
def test_each_pair_gives_torchao_the_fake_quantization_of_its_ptq_config(
    ao, section, ptq, activation, weight
):
    qat = resolved(**section)
    assert type(qat_plugin.ptq_config(qat)).__name__ == ptq
    model = small_qwen()
    assert qat_plugin.prepare(model, qat) == 15  # 7 linear layers a block, and the (tied) head
    layer = model.model.layers[1].mlp.down_proj
    assert type(layer).__name__ == "FakeQuantizedLinear"
    assert _describe_quantizer(layer.activation_fake_quantizer) == activation
    assert _describe_quantizer(layer.weight_fake_quantizer) == weight
    if "group_size" in section:
        assert layer.weight_fake_quantizer.config.granularity.group_size == section["group_size"]
    assert type(model.model.embed_tokens) is torch.nn.Embedding  # quantize_embedding is off
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied


def test_mxfp4_fake_quantizes_inputs_and_weights_in_blocks_of_32_with_emulated_matmuls(ao):
    from torchao.prototype.qat import MXFakeQuantizedLinear

    qat = resolved(activation_dtype="mxfp4", weight_dtype="mxfp4")
    model = small_qwen()
    reference = copy.deepcopy(model)
    qat_plugin.prepare(model, qat)
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, MXFakeQuantizedLinear)
    for config in (layer.activation_config, layer.weight_config):
        assert (config.dtype, config.block_size, config.kernel_preference.value) == (
            torch.float4_e2m1fn_x2,
            32,
            "emulated",
        )
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]])
    # The head's input is the last position of each row: a non-contiguous slice, which torchao's MX
    # layer refuses unless made contiguous.
    fake = model(input_ids=ids, logits_to_keep=1).logits
    assert not torch.allclose(fake, reference(input_ids=ids, logits_to_keep=1).logits)


def test_quantize_embedding_fake_quantizes_the_token_embeddings_weights_only(ao):
    from torchao.quantization.qat import FakeQuantizedEmbedding

    qat = resolved(activation_dtype="int8", weight_dtype="int4", quantize_embedding=True)
    model = small_qwen()
    assert qat_plugin.prepare(model, qat) == 16
    embedding = model.model.embed_tokens
    assert isinstance(embedding, FakeQuantizedEmbedding)
    assert _describe_quantizer(embedding.weight_fake_quantizer) == (
        "Int4WeightFakeQuantizeConfig",
        torch.bfloat16,
        32,
    )


def test_a_group_size_that_does_not_divide_a_layer_is_an_error_naming_the_key(ao):
    model = small_qwen(hidden=96)  # every input size a multiple of 32, none of 64
    with pytest.raises(FtkError) as raised:
        qat_plugin.prepare(model, resolved(weight_dtype="int4", group_size=64))
    assert str(raised.value) == (
        "qat.group_size: 64 does not divide the input size 96 of model.layers.0.self_attn.q_proj "
        "(and 12 more layers); use a divisor of 96"
    )
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # untouched


def test_fake_quant_after_n_steps_switches_it_on_at_that_step_and_convert_leaves_plain_layers(ao):
    section = {"activation_dtype": "int8", "weight_dtype": "int4", "fake_quant_after_n_steps": 2}
    qat = resolved(**section)
    [callback] = qat_plugin.trainer_callbacks(make_config(qat=section))
    model = small_qwen()
    reference = copy.deepcopy(model)
    qat_plugin.prepare(model, qat)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    plain = reference(input_ids=ids).logits

    def at_step(step: int) -> torch.Tensor:
        callback.on_step_begin(None, SimpleNamespace(global_step=step), None, model=model)
        return model(input_ids=ids).logits

    assert torch.equal(at_step(0), plain)
    assert torch.equal(at_step(1), plain)
    assert not torch.allclose(at_step(2), plain)
    assert not torch.allclose(at_step(5), plain)  # a resumed run: on at once
    assert torch.equal(at_step(1), plain)

    qat_plugin.convert(model)
    assert not any(qat_plugin.fake_quantized(module) for module in model.modules())
    assert type(model.model.layers[0].mlp.up_proj) is torch.nn.Linear
    assert torch.equal(model(input_ids=ids).logits, plain)


# --- settings torchao cannot train --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        (
            "qat:\n  activation_dtype: int4\n  weight_dtype: int4\n",
            "activation_dtype",
            "qat.activation_dtype: int4 with weight_dtype int4: torchao has no QAT for this pair; "
            "with int4 weights use activation_dtype unset, int8 or float8",
        ),
        (
            "qat:\n  weight_dtype: fp8\n",
            "qat",
            "qat.activation_dtype: unset with weight_dtype float8: torchao has no QAT for this pair; "
            "with float8 weights use activation_dtype float8",
        ),
        (
            "qat:\n  activation_dtype: int8\n  weight_dtype: mxfp4\n",
            "activation_dtype",
            "qat.activation_dtype: int8 with weight_dtype mxfp4: torchao has no QAT for this pair; "
            "with mxfp4 weights use activation_dtype mxfp4",
        ),
        (
            "qat:\n  activation_dtype: nvfp4\n  weight_dtype: nvfp4\n  group_size: 32\n",
            "group_size",
            "qat.group_size: nvfp4 activations with nvfp4 weights need group_size 16 (torchao's only size)",
        ),
        (
            "qat:\n  activation_dtype: float8\n  weight_dtype: float8\n  group_size: 32\n",
            "group_size",
            "qat.group_size: float8 weights are scaled per tensor, in no groups; remove it",
        ),
        (
            "qat:\n  activation_dtype: mxfp4\n  weight_dtype: mxfp4\n  quantize_embedding: true\n",
            "quantize_embedding",
            "qat.quantize_embedding: torchao fake-quantizes embeddings with int4 or int8 weights only, not mxfp4",
        ),
        (
            "qat:\n  activation_dtype: mxfp4\n  weight_dtype: mxfp4\n  fake_quant_after_n_steps: 10\n",
            "fake_quant_after_n_steps",
            "qat.fake_quant_after_n_steps: torchao's mxfp4 QAT layers cannot be switched off; remove it",
        ),
        (
            "max_steps: 10\nqat:\n  weight_dtype: int4\n  fake_quant_after_n_steps: 10\n",
            "fake_quant_after_n_steps",
            "qat.fake_quant_after_n_steps: 10 >= max_steps 10: fake quantization would never start",
        ),
        (
            "load_in_8bit: true\nadapter: lora\nqat:\n  weight_dtype: int4\n",
            "qat",
            "qat: fake-quantizes full-precision weights and load_in_8bit loads them in bitsandbytes 8-bit; "
            "choose one",
        ),
        (
            "adapter: lora\nquantization:\n  method: int8_weight_only\nqat:\n  weight_dtype: int4\n",
            "qat",
            "qat: fake-quantizes full-precision weights and quantization: loads them quantized; choose one",
        ),
        (
            "adapter: lora\npeft:\n  loftq_config:\n    loftq_bits: 4\nqat:\n  weight_dtype: int4\n",
            "qat",
            "qat: cannot be combined with peft (LoftQ initialisation), as in axolotl",
        ),
        (
            "qat:\n  weight_dtype: int2\n",
            "weight_dtype",
            "qat.weight_dtype: Input should be 'int4', 'int8', 'float8', 'float8_e4m3fn', 'fp8', 'nvfp4' or 'mxfp4' (got 'int2')",
        ),
        (
            "qat:\n  weight_dtype: int4\n  group_size: 0\n",
            "group_size",
            "qat.group_size: Input should be greater than 0 (got 0)",
        ),
    ],
)
def test_settings_torchao_cannot_train_fail_validation_with_their_line(tmp_path, capsys, body, key, message):
    path = write_config(tmp_path, "some/model", "data.jsonl", extra=body, **BASE)
    assert main(["validate", str(path)]) == 2
    assert error_lines(capsys.readouterr().err) == [f"error: {path}:{line_of(path, key)}: {message}"]


def test_load_in_4bit_with_qat_is_an_error_naming_qat(tmp_path, capsys):
    body = "adapter: qlora\nload_in_4bit: true\nqat:\n  activation_dtype: int8\n  weight_dtype: int4\n"
    path = write_config(tmp_path, "some/model", "data.jsonl", extra=body, **BASE)
    assert main(["train", str(path)]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: {path}:{line_of(path, 'qat')}: qat: fake-quantizes full-precision weights and load_in_4bit "
        "loads them in bitsandbytes 4-bit; choose one"
    ]
    assert not (tmp_path / "out").exists()


# --- this machine -------------------------------------------------------------------------------


def test_nvfp4_needs_a_blackwell_gpu():
    qat = resolved(activation_dtype="nvfp4", weight_dtype="nvfp4")
    assert qat.group_size == 16
    assert qat_plugin.hardware_problem(qat, (10, 0)) is None
    assert qat_plugin.hardware_problem(qat, (9, 0)) == (
        "nvfp4 QAT computes in nvfp4, which torchao runs only on an NVIDIA Blackwell GPU (compute "
        "capability 10.0 or newer) and this GPU has 9.0; mxfp4 (emulated) trains anywhere"
    )
    for other in ({"activation_dtype": "mxfp4", "weight_dtype": "mxfp4"}, {"weight_dtype": "int4"}):
        assert qat_plugin.hardware_problem(resolved(**other), None) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message says there is no GPU")
def test_train_nvfp4_without_a_gpu_exits_2_before_any_data_work(ao, tmp_path, small_vocab_model_dir, capsys):
    body = "qat:\n  activation_dtype: nvfp4\n  weight_dtype: nvfp4\n  group_size: 16\n"
    path = write_alpaca_config(tmp_path, small_vocab_model_dir, extra=body)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [
        "error: qat.weight_dtype: nvfp4 QAT computes in nvfp4, which torchao runs only on an NVIDIA "
        "Blackwell GPU (compute capability 10.0 or newer) and this machine has none; mxfp4 (emulated) "
        "trains anywhere"
    ]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "prepared").exists()


def test_without_torchao_qat_says_how_to_install_it(tmp_path, small_vocab_model_dir, capsys, monkeypatch):
    from importlib.metadata import PackageNotFoundError

    def missing(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(qat_plugin, "version", missing)
    path = write_alpaca_config(tmp_path, small_vocab_model_dir, extra="qat:\n  weight_dtype: int4\n")
    assert main(["train", str(path)]) == 2
    assert error_lines(capsys.readouterr().err) == ["error: qat: needs torchao: pip install 'ftk[torchao]'"]
    assert not (tmp_path / "out").exists()


# --- training -----------------------------------------------------------------------------------


def _losses(output_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


@pytest.mark.slow
def test_qat_changes_the_loss_and_saves_a_plain_model(ao, tmp_path, small_vocab_model_dir, capsys):
    runs = {
        "plain": None,
        "qat": {"activation_dtype": "int8", "weight_dtype": "int4", "group_size": 32},
        "after1": {"activation_dtype": "int8", "weight_dtype": "int4", "fake_quant_after_n_steps": 1},
    }
    losses = {}
    for name, section in runs.items():
        directory = tmp_path / name
        directory.mkdir()
        path = write_alpaca_config(
            directory, small_vocab_model_dir, max_steps=2, learning_rate=1e-3, qat=section
        )
        assert main(["train", str(path)]) == 0
        losses[name] = _losses(directory / "out")
    err = capsys.readouterr().err
    assert "qat: 15 layers fake-quantized (int8 activations, int4 weights in groups of 32)" in err
    assert "qat: fake quantization on from step 2" in err
    assert len(losses["plain"]) == 2
    assert losses["qat"][0] != losses["plain"][0]  # fake quantization from the first step
    assert losses["after1"][0] == losses["plain"][0]  # off for the first step...
    assert losses["after1"][1] != losses["plain"][1]  # ...then on

    saved = tmp_path / "qat" / "out"
    config = json.loads((saved / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(saved)
    assert {type(module).__module__.split(".")[0] for module in model.modules()} == {"torch", "transformers"}
    base = AutoModelForCausalLM.from_pretrained(small_vocab_model_dir)
    up = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(model.state_dict()[up], base.state_dict()[up])  # trained
    summary = (saved / "summary.md").read_text()
    assert "quantize the saved model with torchao's Int8DynamicActivationIntxWeightConfig" in summary


@pytest.mark.slow
def test_mxfp4_and_lora_train_on_cpu(ao, tmp_path, small_vocab_model_dir):
    from peft import PeftModel

    section = {"activation_dtype": "mxfp4", "weight_dtype": "mxfp4"}
    full = tmp_path / "full"
    full.mkdir()
    path = write_alpaca_config(full, small_vocab_model_dir, max_steps=1, learning_rate=1e-3, qat=section)
    assert main(["train", str(path)]) == 0
    adapter = tmp_path / "lora"
    adapter.mkdir()
    keys = {**SMALL_LORA, "max_steps": 1, "qat": section}
    path = write_alpaca_config(adapter, small_vocab_model_dir, **keys)
    assert main(["train", str(path)]) == 0
    # LoRA starts as the identity: its first loss is that of the fake-quantized base, as in full fine-tuning.
    assert _losses(adapter / "out")[0] == _losses(full / "out")[0]
    base = AutoModelForCausalLM.from_pretrained(small_vocab_model_dir)
    model = PeftModel.from_pretrained(base, adapter / "out")
    assert type(model.base_model.model.model.layers[0].mlp.up_proj.base_layer) is torch.nn.Linear
