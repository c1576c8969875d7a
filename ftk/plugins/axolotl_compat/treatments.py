"""What ftk does with each axolotl key it does not define itself: map it, ignore it, or say why not.

Keys ftk defines under axolotl's name (most of them) need no entry: they are simply ftk keys.  The
tables here cover the rest:

* :data:`RENAMED`: the same setting under another ftk name; the value carries over as is.
* :data:`ATTENTION_FLAGS`: axolotl's older one-flag-per-backend keys, mapped onto
  ``attn_implementation``; :data:`ATTENTION_VALUES` maps backend names ftk spells differently.
* :data:`NO_OPS`: keys that cannot change what ftk computes, accepted with any value, with the reason.
* :data:`UNSUPPORTED`: features ftk does not have, with what to do instead.  A key in no table
  falls to the generic rule of the plugin: null, false or axolotl's own default is accepted (the
  feature is off, as in ftk); any other value is an error saying that ftk does not support it.
* :data:`PLUGINS`: axolotl's integration plugins (``plugins:`` entries) and ftk's built-in
  equivalent, if there is one.
"""

from __future__ import annotations

#: axolotl key -> ftk key with the same meaning and value.
RENAMED: dict[str, str] = {
    "cosine_min_lr_ratio": "min_lr_ratio",
    "auto_resume_from_checkpoints": "auto_resume",
    "cut_cross_entropy": "chunked_cross_entropy",
}

#: axolotl's older flash-attn fused kernels -> the Liger key that fuses the same computation.
FUSED_KERNEL_FLAGS: dict[str, str] = {
    "flash_attn_rms_norm": "liger_rms_norm",
    "flash_attn_fuse_mlp": "liger_glu_activation",
    "flash_attn_cross_entropy": "liger_cross_entropy",
}

#: Old axolotl releases' ``tokens:`` mapping of special tokens, since renamed ``special_tokens``.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")

#: Older axolotl flags that each choose an attention backend: key -> ``attn_implementation`` value.
ATTENTION_FLAGS: dict[str, str] = {
    "flash_attention": "flash_attention_2",
    "sdp_attention": "sdpa",
    "xformers_attention": "sdpa",
    "eager_attention": "eager",
    "flex_attention": "flex_attention",
}

#: ``attn_implementation`` values axolotl accepts that ftk spells otherwise, with the reason.
ATTENTION_VALUES: dict[str, tuple[str, str]] = {
    "xformers": (
        "sdpa",
        "PyTorch's scaled_dot_product_attention, whose memory-efficient kernel is the xformers one",
    ),
    "fa2": ("flash_attention_2", "the same backend"),
    "flash": ("flash_attention_2", "the same backend"),
}

#: Keys that cannot change what ftk computes: accepted with any value (the reason is documented).
NO_OPS: dict[str, str] = {
    "strict": "ftk always validates a config strictly: an unknown key is an error",
    "local_rank": "set by the launcher (torchrun, accelerate), not by the config",
    "debug": "ftk preprocess --debug shows the tokens and labels of the first rows",
    "test_value": "a placeholder key of axolotl's own test configs",
    "experimental_skip_move_to_device": (
        "ftk leaves device placement to transformers' Trainer and accelerate, which already skip "
        "moving a model that is sharded or offloaded"
    ),
    "base_model_ignore_patterns": "ftk loads a local directory or the Hub snapshot transformers asks for",
}

#: Features ftk does not have: key -> what to use instead (shown in the error and in docs/axolotl.md).
UNSUPPORTED: dict[str, str] = {
    "lora_model_dir": "continuing from an existing adapter is not supported yet; resume an ftk run with "
    "resume_from_checkpoint",
    "lora_mlp_kernel": "axolotl's fused Triton LoRA kernels are not in ftk; LoRA runs through peft's layers",
    "lora_qkv_kernel": "axolotl's fused Triton LoRA kernels are not in ftk; LoRA runs through peft's layers",
    "lora_o_kernel": "axolotl's fused Triton LoRA kernels are not in ftk; LoRA runs through peft's layers",
    "use_scattermoe": "axolotl's ScatterMoE kernels are not in ftk",
    "use_sonicmoe": "axolotl's SonicMoE kernels are not in ftk",
    "fused_attn_kernel": "axolotl's fused attention kernels are not in ftk; use attn_implementation",
    "gemma4_hybrid_attn_impl": "axolotl's Gemma 4 attention switch is not in ftk; use attn_implementation",
    "llama4_linearized_experts": "axolotl's Llama 4 expert linearisation is not in ftk",
    "liger_rms_norm_gated": "Liger's gated RMSNorm is not among ftk's Liger kernels (liger_rms_norm is)",
    "tokenizer_use_mistral_common": "mistral-common tokenizers are not supported; use the model's "
    "tokenizer.json (tokenizer_config)",
    "fp8": "FP8 training is not in ftk",
    "fp8_enable_fsdp_float8_all_gather": "FP8 training is not in ftk",
    "gptq": "loading GPTQ-quantized bases is not in ftk; use load_in_4bit (QLoRA)",
    "gptq_disable_exllama": "loading GPTQ-quantized bases is not in ftk",
    "relora": "ReLoRA is not in ftk",
    "lisa_n_layers": "LISA layer sampling is not in ftk",
    "lisa_step_interval": "LISA layer sampling is not in ftk",
    "lisa_layers_attribute": "LISA layer sampling is not in ftk",
    "use_ray": "Ray training is not in ftk; launch with torchrun or accelerate",
    "use_otel_metrics": "OpenTelemetry metrics are not in ftk; use report_to (tensorboard, wandb)",
    "use_swanlab": "SwanLab is not among ftk's trackers (report_to: tensorboard, wandb)",
    "streaming": "streaming datasets are not supported yet; ftk tokenizes and caches the whole source",
    "dataset_exact_deduplication": "deduplicating rows is not in ftk",
    "sample_packing_sequentially": "ftk packs with its own bin packing (sample_packing)",
    "curriculum_sampling": "ftk shuffles the training rows (shuffle_merged_datasets)",
    "use_eaft": "EAFT is not in ftk",
    "dp_shard_size": "N-D parallelism keys are not in ftk yet; use fsdp_config (FSDP2 over all processes)",
    "dp_replicate_size": "N-D parallelism keys are not in ftk yet; use fsdp_config (FSDP2 over all processes)",
    "tensor_parallel_size": "tensor parallelism is not in ftk yet",
    "context_parallel_size": "context parallelism is not in ftk yet",
    "expert_parallel_size": "expert parallelism is not in ftk yet",
    "tiled_mlp": "tiled MLP computation is not in ftk",
    "flash_attn_fuse_qkv": "ftk does not fuse the attention projections",
    "eval_table_size": "printing sample generations during eval is not in ftk; use ftk generate",
    "eval_max_new_tokens": "printing sample generations during eval is not in ftk; use ftk generate",
    "do_causal_lm_eval": "ftk eval reports loss and perplexity of a trained run",
    "eval_causal_lm_metrics": "ftk eval reports loss and perplexity of a trained run",
    "llmcompressor": "LLM Compressor sparse fine-tuning is not in ftk",
    "max_packed_sequence_len": "removed from axolotl; use sequence_len with sample_packing",
}

#: axolotl plugin path -> (ftk key to switch on, or None when nothing is needed, note).  A path that
#: is not listed is an error naming it.
PLUGINS: dict[str, tuple[str | None, str]] = {
    "axolotl.integrations.liger.LigerPlugin": (
        None,
        "ftk's Liger kernels are built in: the liger_* keys work without a plugin",
    ),
    "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin": (
        "chunked_cross_entropy",
        "ftk computes the loss with its chunked cross-entropy instead (chunked_cross_entropy: true): "
        "it never holds the logits of the whole batch at once",
    ),
}

#: What an axolotl plugin ftk has no equivalent for does, for the error message.
PLUGINS_WITHOUT_EQUIVALENT: dict[str, str] = {
    "axolotl.integrations.kernels.KernelsPlugin": "axolotl's MoE kernels (ScatterMoE, SonicMoE)",
    "axolotl.integrations.expert_parallel.ExpertParallelPlugin": "expert parallelism",
    "axolotl.integrations.llm_compressor.LLMCompressorPlugin": "LLM Compressor sparse fine-tuning",
    "axolotl.integrations.spectrum.SpectrumPlugin": "Spectrum layer selection",
    "axolotl.integrations.lm_eval.LMEvalPlugin": "lm-eval benchmarks after training",
    "axolotl.integrations.swanlab.SwanLabPlugin": "SwanLab tracking",
    "axolotl.integrations.grokfast.GrokfastPlugin": "the Grokfast gradient filter",
    "axolotl.integrations.kd.KDPlugin": "knowledge distillation",
}

#: Keys of older axolotl releases met in its current examples (not in its schema any more).
LEGACY_KEYS: dict[str, object] = {
    "gptq_groupsize": None,
    "gptq_model_v1": None,
    "gptq_disable_exllama": None,
    "debug": None,
    "sample_packing_seq_len_multiplier": None,
    "base_model_ignore_patterns": None,
    "test_value": None,
    "max_packed_sequence_len": None,
}
