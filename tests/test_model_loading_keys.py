"""axolotl's model and tokenizer loading keys (the hf_model plugin): what reaches transformers, and the errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
import transformers

from ftk.cli import main
from ftk.core.config.loader import load_config
from ftk.core.errors import FtkError
from ftk.core.model import load_base_model, load_tokenizer
from ftk.plugins import hf_model
from tests.helpers import SMALL_LORA, first_chat_rows, line_of, write_config

# Validation only: no training keys unless a test sets them.
BASE = dict(sequence_len=384, micro_batch_size=None, max_steps=None, seed=None)


@pytest.fixture(scope="module")
def chat16(tmp_path_factory) -> Path:
    return first_chat_rows(tmp_path_factory.mktemp("data") / "chat.jsonl", 16)


@pytest.fixture(scope="module")
def odd_vocab_model_dir(small_vocab_model_dir: Path, tmp_path_factory) -> Path:
    """A small Qwen3 whose embeddings have exactly one row per token (16,387: not a multiple of 32)."""
    out = tmp_path_factory.mktemp("odd-vocab") / "model"
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(small_vocab_model_dir / name, out / name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    config = transformers.Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.Qwen3ForCausalLM(config).save_pretrained(out)
    return out


def config(tmp_path: Path, model_dir: Path | str, body: str = "", **keys):
    path = write_config(tmp_path, model_dir, "data.jsonl", extra=body, **{**BASE, **keys})
    return load_config(path)


def load(tmp_path: Path, model_dir: Path, body: str = "", purpose: str = "train"):
    """The tokenizer and base model the config of ``body`` loads (the core's steps, then the hooks)."""
    cfg, manager = config(tmp_path, model_dir, body)
    tokenizer, _ = load_tokenizer(cfg, manager.hooks)
    return tokenizer, load_base_model(cfg, manager.hooks, tokenizer, purpose)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- the classes ---------------------------------------------------------------------------------


def test_model_type_loads_the_model_with_that_class(tmp_path, small_vocab_model_dir):
    # The checkpoint is a Qwen3; Qwen2ForCausalLM loading it shows the named class is the one used.
    _, model = load(tmp_path, small_vocab_model_dir, "model_type: Qwen2ForCausalLM\n")
    assert type(model) is transformers.Qwen2ForCausalLM
    _, model = load(tmp_path, small_vocab_model_dir, "model_type: AutoModelForCausalLM\n")
    assert type(model) is transformers.Qwen3ForCausalLM


def test_tokenizer_type_loads_the_tokenizer_with_that_class(tmp_path, small_vocab_model_dir):
    cfg, manager = config(tmp_path, small_vocab_model_dir, "tokenizer_type: GPT2Tokenizer\n")
    assert type(hf_model.load_tokenizer(cfg)) is transformers.GPT2Tokenizer
    cfg, manager = config(tmp_path, small_vocab_model_dir)
    assert type(hf_model.load_tokenizer(cfg)) is transformers.TokenizersBackend


def test_tokenizer_legacy_reaches_llama_tokenizers(tmp_path, small_vocab_model_dir, capsys):
    # transformers 5: LlamaTokenizer builds its Metaspace pre-tokenizer from the flag.
    schemes = {}
    for body in ("", "tokenizer_legacy: true\n", "tokenizer_legacy: false\n"):
        cfg, _ = config(tmp_path, small_vocab_model_dir, "tokenizer_type: LlamaTokenizer\n" + body)
        schemes[body] = hf_model.load_tokenizer(cfg).backend_tokenizer.pre_tokenizer.prepend_scheme
    assert schemes == {
        "": "first",
        "tokenizer_legacy: true\n": "always",
        "tokenizer_legacy: false\n": "first",
    }
    assert "tokenizer_legacy" not in capsys.readouterr().err


def test_tokenizer_legacy_on_a_class_that_ignores_it_says_so(tmp_path, small_vocab_model_dir, capsys):
    cfg, _ = config(tmp_path, small_vocab_model_dir, "tokenizer_legacy: true\n")
    hf_model.load_tokenizer(cfg)
    assert "tokenizer_legacy: TokenizersBackend does not read the legacy flag; it has no effect" in (
        capsys.readouterr().err
    )


# --- what reaches from_pretrained ----------------------------------------------------------------


def test_loading_keys_become_from_pretrained_arguments(tmp_path):
    body = (
        "revision_of_model: 6299b5a\nhf_use_auth_token: true\ndevice_map: auto\nuse_kernels: true\n"
        "experts_implementation: batched_mm\nmodel_quantization_config: Mxfp4Config\n"
        "model_quantization_config_kwargs:\n  dequantize: true\n"
    )
    cfg, _ = config(tmp_path, "some/model", body)
    kwargs = hf_model.from_pretrained_kwargs(cfg, {})
    quant = kwargs.pop("quantization_config")
    assert isinstance(quant, transformers.Mxfp4Config) and quant.dequantize is True
    assert kwargs == {
        "dtype": torch.float32,
        "trust_remote_code": False,
        "revision": "6299b5a",
        "token": True,
        "device_map": "auto",
        "experts_implementation": "batched_mm",
        "use_kernels": True,
    }
    # Unset keys add nothing: transformers' defaults.
    cfg, _ = config(tmp_path, "some/model", "use_kernels: false\nhf_use_auth_token: false\n")
    assert hf_model.from_pretrained_kwargs(cfg, {}) == {"dtype": torch.float32, "trust_remote_code": False}


def test_model_config_overrides_reach_the_model_config(tmp_path, small_vocab_model_dir):
    _, model = load(tmp_path, small_vocab_model_dir, "model_config:\n  rms_norm_eps: 0.001\n")
    assert model.config.rms_norm_eps == 0.001
    assert model.model.norm.variance_epsilon == 0.001


def test_a_model_config_attribute_the_model_lacks_is_an_error_naming_it(tmp_path, small_vocab_model_dir):
    with pytest.raises(FtkError) as caught:
        load(tmp_path, small_vocab_model_dir, "model_config:\n  output_router_logits: true\n")
    assert str(caught.value) == (
        f"model_config.output_router_logits: Qwen3Config ({small_vocab_model_dir}) has no attribute "
        "'output_router_logits'"
    )


@pytest.mark.parametrize(
    ("body", "dtype", "bf16"),
    [
        ("float16: true\n", torch.float16, False),
        ("bfloat16: true\n", torch.bfloat16, True),
        ("", torch.float32, False),
    ],
)
def test_float16_and_bfloat16_load_the_weights_in_that_dtype(tmp_path, body, dtype, bf16):
    cfg, manager = config(tmp_path, "some/model", body)
    assert hf_model.model_dtype(cfg) == dtype
    assert manager.hooks.training_arguments(cfg).get("bf16", False) is bf16  # float16: no mixed precision


def test_resize_token_embeddings_to_32x(tmp_path, odd_vocab_model_dir):
    tokenizer, model = load(tmp_path, odd_vocab_model_dir)
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings == 16387
    tokenizer, model = load(tmp_path, odd_vocab_model_dir, "resize_token_embeddings_to_32x: true\n")
    assert (
        model.get_input_embeddings().num_embeddings == 16416 == model.get_output_embeddings().weight.shape[0]
    )
    # With a token added the core grows the rows to a multiple of 64, a multiple of 32 already.
    tokenizer, model = load(
        tmp_path, odd_vocab_model_dir, "resize_token_embeddings_to_32x: true\ntokens: ['<x>']\n"
    )
    assert len(tokenizer) == 16388 and model.get_input_embeddings().num_embeddings % 32 == 0


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        (
            "model_type: LlamaForCausalLm\n",
            "model_type",
            "'LlamaForCausalLm' is not a transformers model class (did you mean 'LlamaForCausalLM'?)",
        ),
        (
            "model_type: AutoModelForSequenceClassification\n",
            "model_type",
            "ftk trains causal language models (text) and AutoModelForSequenceClassification is not one; "
            "use AutoModelForCausalLM or the family's ...ForCausalLM class",
        ),
        (
            "model_type: LlavaForConditionalGeneration\n",
            "model_type",
            "LlavaForConditionalGeneration is a multimodal model class and transformers has no causal-LM (text) "
            "class for its checkpoints; ftk trains causal language models on text only",
        ),
        (
            "tokenizer_type: LlamaTokeniser\n",
            "tokenizer_type",
            "'LlamaTokeniser' is not a transformers tokenizer class (did you mean 'LlamaTokenizer'?)",
        ),
        (
            "tokenizer_use_fast: false\n",
            "tokenizer_use_fast",
            "transformers 5 has fast tokenizers only (AutoTokenizer ignores use_fast); remove the key",
        ),
        (
            "low_cpu_mem_usage: false\n",
            "low_cpu_mem_usage",
            "transformers 5 always loads weights this way (from_pretrained drops the argument); remove the key",
        ),
        (
            "model_quantization_config: Mxfp4Confg\n",
            "model_quantization_config",
            "'Mxfp4Confg' is not a transformers quantization config class (did you mean 'Mxfp4Config'?)",
        ),
        (
            "model_quantization_config: Mxfp4Config\nmodel_quantization_config_kwargs:\n  dequantise: true\n",
            "model_quantization_config_kwargs",
            "'dequantise' is not an argument of Mxfp4Config (did you mean 'dequantize'?)",
        ),
        (
            "model_quantization_config_kwargs:\n  dequantize: true\n",
            "model_quantization_config_kwargs",
            "applies with model_quantization_config only",
        ),
        (
            "adapter: lora\nload_in_8bit: true\nmodel_quantization_config: Mxfp4Config\n",
            "model_quantization_config",
            "load_in_8bit quantizes the model too (bitsandbytes); choose one",
        ),
        (
            "bf16: true\nfloat16: true\n",
            "float16",
            "trains float16 weights without mixed precision, and bf16 is true; choose one",
        ),
        (
            "fp16: true\nbfloat16: true\n",
            "bfloat16",
            "loads and trains in bfloat16 (as bf16 does), and fp16 is true; choose one",
        ),
        (
            "experts_implementation: scattermoe\n",
            "experts_implementation",
            "'scattermoe' is not one of transformers' experts implementations (eager, batched_mm, deepgemm, "
            "deepgemm_megamoe, grouped_mm, sonicmoe)",
        ),
    ],
)
def test_bad_loading_keys_fail_validation_with_their_line(tmp_path, capsys, body, key, message):
    path = write_config(tmp_path, "some/model", "data.jsonl", extra=body, **BASE)
    assert main(["validate", str(path)]) == 2
    assert error_lines(capsys.readouterr().err) == [f"error: {path}:{line_of(path, key)}: {key}: {message}"]


def test_device_map_with_deepspeed_fails_validation(tmp_path, capsys):
    (tmp_path / "zero2.json").write_text('{"zero_optimization": {"stage": 2}}')
    path = write_config(
        tmp_path,
        "some/model",
        "data.jsonl",
        device_map="auto",
        deepspeed=str(tmp_path / "zero2.json"),
        **BASE,
    )
    assert main(["validate", str(path)]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: {path}:{line_of(path, 'device_map')}: device_map: places the model for one process, and "
        "deepspeed shards it over processes; remove device_map"
    ]


def test_the_axolotl_spellings_validate(tmp_path):
    body = (
        "model_type: Llama4ForConditionalGeneration\ntokenizer_type: CodeLlamaTokenizer\n"
        "tokenizer_use_fast: true\nlow_cpu_mem_usage: true\nbf16: true\nbfloat16: true\n"
        "model_config:\n  output_router_logits: true\n"
    )
    cfg, _ = config(tmp_path, "some/model", body)
    assert cfg.overrides_of_model_config == {"output_router_logits": True}
    model_class, note = hf_model.names.model_class(cfg.model_type)
    assert model_class is transformers.AutoModelForCausalLM
    assert note == (
        "model_type: Llama4ForConditionalGeneration is multimodal; ftk trains its text model "
        "(Llama4ForCausalLM, through AutoModelForCausalLM)"
    )


# --- this machine --------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU")
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "use_kernels: true\n",
            "use_kernels: transformers' kernel table has kernels for CUDA, ROCm and XPU GPUs only, and this "
            "machine has none; remove use_kernels",
        ),
        (
            "experts_implementation: sonicmoe\n",
            "experts_implementation: sonicmoe runs CUDA kernels and this machine has no GPU; use grouped_mm or eager",
        ),
        (
            "bfloat16: true\n",
            "bfloat16: this machine has no GPU, and transformers trains in bfloat16 on the CPU only with "
            "--nproc-per-node 2 or more; remove bfloat16 to train in float32",
        ),
    ],
)
def test_gpu_settings_stop_before_any_data_work(
    tmp_path, small_vocab_model_dir, chat16, capsys, body, message
):
    path = write_config(tmp_path, small_vocab_model_dir, chat16, extra=body)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [f"error: {message}"]
    assert "Traceback" not in err and not (tmp_path / "out").exists() and not (tmp_path / "prepared").exists()


def test_hf_use_auth_token_without_a_token_stops_before_any_data_work(
    tmp_path, small_vocab_model_dir, chat16, capsys, monkeypatch
):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    hub = dict(hf_use_auth_token=True, tokenizer_config=str(small_vocab_model_dir))
    path = write_config(tmp_path, "some-org/private-model", chat16, **hub)
    assert main(["preprocess", str(path)]) == 2
    # (with the Hub offline, the core also says that base_model is not in the cache)
    assert (
        "error: hf_use_auth_token: no Hugging Face token on this machine: run `hf auth login` or set HF_TOKEN"
        in error_lines(capsys.readouterr().err)
    )
    assert not (tmp_path / "prepared").exists()
    # Nothing comes from the Hub: no token is needed.
    path = write_config(tmp_path, small_vocab_model_dir, chat16, hf_use_auth_token=True)
    assert main(["preprocess", str(path)]) == 0


@pytest.mark.slow
def test_a_float16_lora_run_with_the_axolotl_loading_keys_trains(tmp_path, odd_vocab_model_dir, chat16):
    path = write_config(
        tmp_path,
        odd_vocab_model_dir,
        chat16,
        model_type="Qwen3ForCausalLM",
        tokenizer_type="Qwen2Tokenizer",
        float16=True,
        resize_token_embeddings_to_32x=True,
        low_cpu_mem_usage=True,
        max_steps=2,
        sequence_len=256,
        **SMALL_LORA,
    )
    assert main(["train", str(path)]) == 0
    # A float32 adapter on the float16 base (peft's default); peft saves the resized embeddings with it.
    saved = safetensors.torch.load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert {tensor.dtype for name, tensor in saved.items() if "lora_" in name} == {torch.float32}
    embeddings = saved["base_model.model.model.embed_tokens.weight"]
    assert embeddings.dtype == torch.float16 and embeddings.shape[0] == 16416
