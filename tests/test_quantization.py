"""Quantized base models: the quantization_config each setting contributes, the errors for settings
that cannot work, and short LoRA runs on torchao int8 and bitsandbytes 4-bit and 8-bit bases."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import get_args

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from ftk.cli import main
from ftk.commands.train import run_training
from ftk.core.config.loader import dump_config, load_config
from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError
from ftk.integrations import bnb, torchao
from ftk.plugins import lora, quantization
from ftk.plugins.hf_model import model_dtype
from ftk.plugins.quantization import QuantizationConfig, quantization_config, require_package, resolve
from tests.helpers import first_chat_rows, line_of, write_config

HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
needs_torchao = pytest.mark.skipif(not HAS_TORCHAO, reason="torchao is not installed")
needs_bnb = pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")


@pytest.fixture(scope="module")
def chat16(tmp_path_factory) -> Path:
    return first_chat_rows(tmp_path_factory.mktemp("data") / "chat.jsonl", 16)


# Validation only: no training keys unless a test sets them.
BASE = dict(sequence_len=384, micro_batch_size=None, max_steps=None, seed=None)
# Short LoRA runs: 2-row steps at a constant learning rate, seed 3.
RUN = dict(
    sequence_len=384,
    max_steps=None,
    lora_target_linear=True,
    learning_rate=1.0e-2,
    lr_scheduler="constant",
    bf16=torch.cuda.is_available(),
)


def config(tmp_path: Path, body: str) -> FtkConfig:
    return load_config(write_config(tmp_path, "some/model", "data.jsonl", extra=body, **BASE))[0]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- the quantization_config of each setting ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fields", "described"),
    [
        (
            "load_in_4bit: true\n",
            {
                "load_in_4bit": True,
                "load_in_8bit": False,
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": torch.float32,
                "bnb_4bit_quant_storage": torch.uint8,
            },
            "bitsandbytes 4-bit nf4, double quant, compute float32",
        ),
        (
            "load_in_4bit: true\nbf16: true\n",
            {"bnb_4bit_compute_dtype": torch.bfloat16, "bnb_4bit_quant_storage": torch.uint8},
            "bitsandbytes 4-bit nf4, double quant, compute bfloat16",
        ),
        (
            "load_in_4bit: true\nfp16: true\n",
            {"bnb_4bit_compute_dtype": torch.float16},
            "bitsandbytes 4-bit nf4, double quant, compute float16",
        ),
        (
            "load_in_4bit: true\nbf16: true\nbnb_4bit_quant_type: fp4\nbnb_4bit_use_double_quant: false\n"
            "bnb_4bit_compute_dtype: float32\nbnb_4bit_quant_storage: bfloat16\n",
            {
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "fp4",
                "bnb_4bit_use_double_quant": False,
                "bnb_4bit_compute_dtype": torch.float32,
                "bnb_4bit_quant_storage": torch.bfloat16,
            },
            "bitsandbytes 4-bit fp4, compute float32, storage bfloat16",
        ),
        (
            "load_in_8bit: true\n",
            {
                "load_in_8bit": True,
                "load_in_4bit": False,
                "llm_int8_threshold": 6.0,
                "llm_int8_has_fp16_weight": False,
            },
            "bitsandbytes 8-bit (LLM.int8)",
        ),
    ],
)
def test_bitsandbytes_settings_give_this_config(tmp_path, body, fields, described):
    quant = resolve(config(tmp_path, "adapter: lora\n" + body))
    made = quantization_config(quant)
    assert type(made).__name__ == "BitsAndBytesConfig"
    assert {key: getattr(made, key) for key in fields} == fields
    assert quant.describe() == described


@needs_torchao
@pytest.mark.parametrize(
    ("method", "torchao_class"),
    [
        ("int8_weight_only", "Int8WeightOnlyConfig"),
        ("float8_weight_only", "Float8WeightOnlyConfig"),
        ("float8_dynamic_activation_float8_weight", "Float8DynamicActivationFloat8WeightConfig"),
    ],
)
def test_torchao_methods_give_this_config(tmp_path, method, torchao_class):
    quant = resolve(
        config(tmp_path, f"adapter: lora\nquantization:\n  backend: torchao\n  method: {method}\n")
    )
    made = quantization_config(quant)
    assert type(made).__name__ == "TorchAoConfig" and made.quant_method == "torchao"
    assert type(made.quant_type).__name__ == torchao_class
    assert quant.describe() == f"torchao {method}" and quant.key == "quantization.method"


def test_every_torchao_method_of_the_schema_has_a_torchao_class():
    assert get_args(QuantizationConfig.model_fields["method"].annotation) == tuple(torchao.METHODS)


@needs_torchao
def test_the_hook_contributes_the_config_only_when_asked(tmp_path):
    assert quantization.model_load_kwargs(cfg=config(tmp_path, "adapter: lora\n"), purpose="train") == {}
    contributed = quantization.model_load_kwargs(
        cfg=config(tmp_path, "adapter: lora\nquantization:\n  method: int8_weight_only\n"), purpose="train"
    )
    assert list(contributed) == ["quantization_config"]
    assert type(contributed["quantization_config"].quant_type).__name__ == "Int8WeightOnlyConfig"


def test_resolved_config_keeps_the_top_level_keys_and_reloads(tmp_path):
    cfg = config(tmp_path, "adapter: lora\nload_in_4bit: true\nbnb_4bit_quant_type: fp4\n")
    dumped = dump_config(cfg)
    assert (dumped["load_in_4bit"], dumped["bnb_4bit_quant_type"]) == (True, "fp4")
    assert "load_in_8bit" not in dumped  # unset plugin keys are left out of the resolved config
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(dumped))
    assert resolve(load_config(again)[0]) == resolve(cfg)


def test_a_merge_loads_the_base_in_full_precision(tmp_path):
    cfg = config(tmp_path, "adapter: qlora\nload_in_4bit: true\nbnb_4bit_quant_type: fp4\nlora_r: 4\n")
    assert quantization.model_load_kwargs(cfg=cfg, purpose="merge") == {}
    quantization.post_model_load(cfg=cfg, model=None, purpose="merge")  # nothing to check or prepare
    assert list(quantization.model_load_kwargs(cfg=cfg, purpose="inference")) == ["quantization_config"]


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("bnb_4bit_quant_type: nf5\n", "bnb_4bit_quant_type: Input should be 'nf4' or 'fp4' (got 'nf5')"),
        ("load_in_4bit: maybe\n", "load_in_4bit: Input should be a valid boolean, unable to interpret input"),
        ("quantization:\n  backend: torchao\n", "quantization.method: required key is missing"),
        (
            "quantization:\n  backend: bitsandbytes\n  method: int8_weight_only\n",
            "quantization.backend: Input should be 'torchao'",
        ),
        (
            "quantization:\n  method: int4_weight_only\n",
            "quantization.method: Input should be 'int8_weight_only'",
        ),
        ("load_in_4bits: true\n", "load_in_4bits: unknown key (did you mean 'load_in_4bit'?)"),
    ],
)
def test_a_bad_key_fails_validation_with_its_line(tmp_path, capsys, body, message):
    path = write_config(tmp_path, "some/model", "data.jsonl", extra="adapter: lora\n" + body, **BASE)
    assert main(["validate", str(path)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {path}:") and message in line


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        (
            "load_in_4bit: true\n",
            "load_in_4bit",
            "quantized weights cannot be trained, and adapter is not set (full fine-tuning); set adapter: qlora (or lora)",
        ),
        (
            "load_in_8bit: true\n",
            "load_in_8bit",
            "quantized weights cannot be trained, and adapter is not set (full fine-tuning); set adapter: lora",
        ),
        (
            "quantization:\n  method: int8_weight_only\n",
            "quantization",
            "quantized weights cannot be trained, and adapter is not set (full fine-tuning); set adapter: lora",
        ),
        (
            "adapter: lora\nload_in_4bit: true\nload_in_8bit: true\n",
            "load_in_8bit",
            "load_in_4bit is true too; choose one",
        ),
        (
            "adapter: lora\nload_in_8bit: true\nbnb_4bit_compute_dtype: bfloat16\n",
            "bnb_4bit_compute_dtype",
            "applies with load_in_4bit: true only",
        ),
        (
            "adapter: lora\nload_in_4bit: true\nquantization:\n  method: int8_weight_only\n",
            "quantization",
            "quantizes with torchao, load_in_4bit with bitsandbytes; choose one",
        ),
    ],
)
def test_keys_that_cannot_work_together_fail_validation(tmp_path, capsys, body, key, message):
    path = write_config(tmp_path, "some/model", "data.jsonl", extra=body, **BASE)
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {path}:{line_of(path, key)}: {key}: {message}"]


def test_qlora_needs_a_4bit_base(tmp_path):
    message = "qlora is LoRA on a 4-bit base and needs load_in_4bit: true; otherwise set adapter: lora"
    # model_copy: the schema may not accept qlora yet; the plugin's check does not depend on it.
    for body in ("", "load_in_8bit: true\n", "quantization:\n  method: int8_weight_only\n"):
        cfg = config(tmp_path, "adapter: lora\n" + body).model_copy(update={"adapter": "qlora"})
        assert quantization.problems(cfg) == [("adapter", message)]
    cfg = config(tmp_path, "adapter: lora\nload_in_4bit: true\n").model_copy(update={"adapter": "qlora"})
    assert quantization.problems(cfg) == []


def test_train_stops_at_validation_with_every_problem(tmp_path, capsys):
    path = write_config(tmp_path, "some/model", "data.jsonl", load_in_4bit=True, load_in_8bit=True, **BASE)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [
        f"error: {path}:{line_of(path, 'load_in_4bit')}: load_in_4bit: quantized weights cannot be trained, and "
        "adapter is not set (full fine-tuning); set adapter: qlora (or lora)",
        f"error: {path}:{line_of(path, 'load_in_8bit')}: load_in_8bit: load_in_4bit is true too; choose one",
    ]
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.skipif(HAS_BNB, reason="bitsandbytes is installed")
def test_train_without_bitsandbytes_says_how_to_install_it(tmp_path, tiny_model_dir, chat16, capsys):
    body = "adapter: lora\nload_in_8bit: true\nmax_steps: 1\n"
    path = write_config(tmp_path, tiny_model_dir, chat16, extra=body, **BASE)
    assert main(["train", str(path)]) == 2
    assert error_lines(capsys.readouterr().err) == [
        "error: load_in_8bit: needs bitsandbytes: pip install 'ftk[bnb]'"
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message names the GPU's capability")
def test_train_float8_matmuls_without_a_gpu_exits_2(tmp_path, tiny_model_dir, chat16, capsys):
    body = "adapter: lora\nquantization:\n  method: float8_dynamic_activation_float8_weight\n"
    path = write_config(tmp_path, tiny_model_dir, chat16, extra=body, **BASE)
    assert main(["train", str(path)]) == 2
    assert error_lines(capsys.readouterr().err) == [
        "error: quantization.method: float8_dynamic_activation_float8_weight needs a CUDA GPU of compute "
        "capability 8.9 or newer (Ada, Hopper, Blackwell) and there is none; use float8_weight_only or "
        "int8_weight_only"
    ]


def test_require_package_names_the_key_and_the_fix():
    key = "load_in_4bit"
    with pytest.raises(FtkError) as missing:
        require_package("ftk_package_that_is_not_installed", "1.0", key, "pip install 'ftk[bnb]'")
    assert (
        str(missing.value) == "load_in_4bit: needs ftk_package_that_is_not_installed: pip install 'ftk[bnb]'"
    )
    installed = require_package("pydantic", "2.0", key, "unused")
    assert installed.startswith("2.")
    with pytest.raises(FtkError) as old:
        require_package("pydantic", "99.0", key, "unused")
    assert (
        str(old.value)
        == f"load_in_4bit: needs pydantic >= 99.0 (installed: {installed}): pip install -U 'pydantic>=99.0'"
    )


@pytest.mark.parametrize(
    ("supported", "device", "problem"),
    [
        ({"cpu", "cuda", "xpu"}, "cpu", None),
        ({"cuda"}, "cuda", None),
        ({"cuda"}, "cpu", "this bitsandbytes has no kernels for cpu (it needs a CUDA GPU)"),
        ({"cuda", "xpu"}, "cpu", "this bitsandbytes has no kernels for cpu (it needs one of: cuda, xpu)"),
    ],
)
def test_bitsandbytes_device_problem(supported, device, problem):
    assert bnb.device_problem(supported, device) == problem


FLOAT8 = "float8_dynamic_activation_float8_weight"


@pytest.mark.parametrize(
    ("method", "capability", "rocm", "xpu", "problem"),
    [
        ("int8_weight_only", None, False, False, None),
        ("float8_weight_only", (7, 5), False, False, None),
        (FLOAT8, (8, 9), False, False, None),
        (FLOAT8, (9, 0), False, False, None),
        (FLOAT8, None, True, False, None),
        (FLOAT8, None, False, True, None),
        (
            FLOAT8,
            (8, 0),
            False,
            False,
            f"{FLOAT8} needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell) and this "
            "GPU has 8.0; use float8_weight_only or int8_weight_only",
        ),
        (
            FLOAT8,
            None,
            False,
            False,
            f"{FLOAT8} needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell) and there "
            "is none; use float8_weight_only or int8_weight_only",
        ),
    ],
)
def test_torchao_hardware_problem(method, capability, rocm, xpu, problem):
    assert torchao.hardware_problem(method, capability, rocm=rocm, xpu=xpu) == problem


def test_an_unquantized_base_is_an_error_after_loading(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, "adapter: lora\nload_in_8bit: true\n")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(FtkError) as raised:
        quantization.post_model_load(cfg=cfg, model=model, purpose="train")
    assert str(raised.value) == (
        "load_in_8bit: the base model was loaded unquantized: the plugin that loaded it (Qwen3ForCausalLM) "
        "did not pass on the quantization_config of model_load_kwargs"
    )


# --- LoRA on quantized bases --------------------------------------------------------------------


def quantized_base(cfg: FtkConfig, model_dir: Path) -> torch.nn.Module:
    """The base as a run loads it: from_pretrained with the plugin's kwargs, then its post-load step."""
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=model_dtype(cfg), **quantization.model_load_kwargs(cfg=cfg, purpose="train")
    )
    quantization.post_model_load(cfg=cfg, model=model, purpose="train")
    return model


IDS = torch.tensor([[151644, 872, 198, 13048, 151645, 198, 151644, 77091, 198]])


@needs_torchao
def test_lora_trains_on_an_int8_weight_only_base(tmp_path, tiny_model_dir, capsys):
    from torchao.quantization import Int8Tensor

    cfg = config(
        tmp_path, "adapter: lora\nlora_target_linear: true\nquantization:\n  method: int8_weight_only\n"
    )
    torch.manual_seed(0)
    model = lora.apply_lora(cfg, quantized_base(cfg, tiny_model_dir))
    assert "quantization: torchao int8_weight_only; base model " in capsys.readouterr().err
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "TorchaoLoraLinear" and isinstance(q_proj.base_layer.weight, Int8Tensor)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(2):
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses) and losses[1] < losses[0]
    assert q_proj.lora_B["default"].weight.abs().sum() > 0

    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(quantized_base(cfg, tiny_model_dir), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(input_ids=IDS).logits, model.eval()(input_ids=IDS).logits)


def check_run(tmp_path: Path, model_dir: Path, cfg: FtkConfig, result, steps: int, described: str) -> None:
    """The run logged finite losses, saved a trained adapter that reloads exactly, and says how it quantized."""
    out = tmp_path / "out"
    losses = [json.loads(line).get("loss") for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [loss for loss in losses if loss is not None]
    assert len(losses) == steps and all(math.isfinite(loss) for loss in losses)
    saved = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in saved.items())
    assert described in (out / "summary.md").read_text()

    trained = result.model.eval()
    reloaded = PeftModel.from_pretrained(quantized_base(cfg, model_dir), out).eval()
    ids = IDS.to(trained.device)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits)


@pytest.mark.slow
@needs_torchao
def test_lora_run_on_an_int8_weight_only_base_trains_and_saves(tmp_path, tiny_model_dir, chat16):
    from torchao.quantization import Int8Tensor

    body = "adapter: lora\nmax_steps: 2\nquantization:\n  backend: torchao\n  method: int8_weight_only\n"
    cfg, manager = load_config(write_config(tmp_path, tiny_model_dir, chat16, extra=body, **RUN))
    result = run_training(cfg, manager)
    q_proj = result.model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer.weight, Int8Tensor)
    check_run(tmp_path, tiny_model_dir, cfg, result, 2, "torchao int8_weight_only")


@pytest.mark.slow
@needs_bnb
@pytest.mark.parametrize(
    ("body", "layer", "described"),
    [
        pytest.param(
            "adapter: qlora\nload_in_4bit: true\n",
            "Linear4bit",
            "bitsandbytes 4-bit nf4",
            id="qlora",
        ),
        pytest.param(
            "adapter: lora\nload_in_8bit: true\n",
            "Linear8bitLt",
            "bitsandbytes 8-bit",
            id="lora-8bit",
        ),
    ],
)
def test_lora_run_on_a_bitsandbytes_base_trains_and_reloads(
    tmp_path, tiny_model_dir, chat16, body, layer, described
):
    """Runs on a CUDA GPU, or on CPU with bitsandbytes >= 0.46.1 (its CPU backend trains too, slowly)."""
    cfg, manager = load_config(
        write_config(tmp_path, tiny_model_dir, chat16, extra=body + "max_steps: 3\n", **RUN)
    )
    result = run_training(cfg, manager)
    q_proj = result.model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == layer
    check_run(tmp_path, tiny_model_dir, cfg, result, 3, described)
