"""The model and tokenizer loading keys of the ``hf_model`` plugin (axolotl's names and meanings)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ftk.core.config.schema import StrictModel

SECTION = "model_loading"


class ModelLoadingSettings(StrictModel):
    """Top-level keys that say how the base model and its tokenizer are loaded; unset is transformers' default."""

    model_type: str | None = Field(
        None,
        min_length=1,
        description="transformers class that loads the model, by name (default AutoModelForCausalLM; e.g. "
        "LlamaForCausalLM). A multimodal ...ForConditionalGeneration class whose checkpoints "
        "AutoModelForCausalLM loads as a text model (Llama4ForConditionalGeneration) loads that text model.",
    )
    tokenizer_type: str | None = Field(
        None,
        min_length=1,
        description="transformers tokenizer class, by name (default AutoTokenizer). In transformers 5 the "
        "class defines the tokenizer's pipeline (LlamaTokenizer: sentencepiece-style Metaspace), and "
        "LlamaTokenizerFast and the like are other names of the same classes.",
    )
    tokenizer_use_fast: bool | None = Field(
        None,
        description="true only: transformers 5 loads every tokenizer with the tokenizers library (the fast "
        "one) and AutoTokenizer ignores use_fast, so false cannot be honoured and is an error.",
    )
    tokenizer_legacy: bool | None = Field(
        None,
        description="The legacy flag of Llama-family tokenizers (LlamaTokenizer, sentencepiece-backed ones): "
        "true puts a '▁' before text that follows a special token. Other classes (CodeLlamaTokenizer, "
        "GPT2Tokenizer, Qwen2Tokenizer...) do not read it: a note says so when the tokenizer is loaded.",
    )
    revision_of_model: str | None = Field(
        None,
        min_length=1,
        description="Hub revision (branch, tag or commit) of base_model and the tokenizer, for config, "
        "weights and tokenizer files alike.",
    )
    hf_use_auth_token: bool | None = Field(
        None,
        description="Load the model, its config and tokenizer with the saved Hugging Face token "
        "(token=True; private or gated repositories); a machine without one is an error before any data work.",
    )
    low_cpu_mem_usage: bool | None = Field(
        None,
        description="true only, and it changes nothing: transformers 5 always builds the model on the meta "
        "device and loads each weight once (its from_pretrained drops the argument); false cannot be honoured.",
    )
    device_map: str | dict[str, int | str] | None = Field(
        None,
        description="Where from_pretrained places the layers ('auto', 'cpu', 'sequential', or a module->device "
        "map): one process spreading one model over several GPUs. Not with fsdp or deepspeed, nor under a "
        "multi-process launch (each process holds its own copy).",
    )
    overrides_of_model_config: dict[str, Any] | None = Field(
        None,
        validation_alias="model_config",
        serialization_alias="model_config",
        description="Attributes of the model's config to set before loading "
        "(e.g. output_router_logits: true); a name that config does not have is an error naming it.",
    )
    model_quantization_config: str | None = Field(
        None,
        min_length=1,
        description="transformers quantization config class for from_pretrained's quantization_config, by "
        "name (e.g. Mxfp4Config, FineGrainedFP8Config); not with load_in_4bit/load_in_8bit or quantization.",
    )
    model_quantization_config_kwargs: dict[str, Any] | None = Field(
        None,
        description="Arguments of the model_quantization_config class (e.g. dequantize: true for Mxfp4Config).",
    )
    resize_token_embeddings_to_32x: bool | None = Field(
        None,
        description="Grow the embeddings to the next multiple of 32 rows above the tokenizer's length, even "
        "when no token was added (rows added for new tokens are always a multiple of 64).",
    )
    float16: bool | None = Field(
        None,
        description="Load the base weights in float16 and train them so, without mixed precision "
        "(not with bf16, fp16 or bfloat16).",
    )
    bfloat16: bool | None = Field(
        None,
        description="Load the base weights in bfloat16 and train with bf16 mixed precision, as bf16: true "
        "does (axolotl's older name; not with fp16 or float16).",
    )
    use_kernels: bool | None = Field(
        None,
        description="Replace layers with the Hub kernels of transformers' kernel table (use_kernels=True; "
        "needs the kernels package and a CUDA, ROCm or XPU GPU, and the Hub or its cache).",
    )
    experts_implementation: str | None = Field(
        None,
        min_length=1,
        description="How mixture-of-experts layers compute (transformers' experts_implementation): eager, "
        "batched_mm, grouped_mm; deepgemm, deepgemm_megamoe and sonicmoe need a CUDA GPU.",
    )
