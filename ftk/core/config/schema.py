"""The config schema: pydantic models with axolotl's key names, strict about unknown keys.

Plugin sections and prompt-strategy options are not declared here: plugins register them
through hooks and ``ftk.core.config.loader`` validates them the same way.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator
from pydantic_core import PydanticCustomError

#: The attention backends transformers has built in (``attn_implementation``).
ATTENTION_BACKENDS = ("eager", "sdpa", "flash_attention_2", "flex_attention")
#: An attention kernel on the Hub, as transformers takes it: ``org/name`` or ``org/name:function``.
HUB_KERNEL = re.compile(r"[\w.-]+/[\w.-]+(?::\w+)?")

#: ``$NAME`` or ``${NAME}`` in a path.
_VARIABLE = re.compile(r"\$(?:\{([^}]*)\}|(\w+))")


def expand_path(value: str) -> str:
    """A path key's value with ``~`` and environment variables (``$SCRATCH``, ``${HOME}``) expanded.

    Every path key of the config goes through this one function (the ``PathStr`` type), so that
    ``output_dir: ~/runs/x`` never becomes a folder named ``~`` in the working directory.  A
    variable that is not set is an error rather than a literal ``$NAME`` folder.
    """
    for match in _VARIABLE.finditer(value):
        name = match.group(1) if match.group(1) is not None else match.group(2)
        if name not in os.environ:
            raise PydanticCustomError(
                "path_variable",
                "environment variable {name} is not set",
                {"name": name},
            )
    return os.path.expanduser(os.path.expandvars(value))


#: A string naming a file or directory: ``~`` and ``$VARIABLES`` expanded when the config is read.
PathStr = Annotated[str, AfterValidator(expand_path)]


def expand_template_path(value: str) -> str:
    """``chat_template_jinja`` holds template text or a file path: a one-line value without Jinja
    markup is a path and is expanded like every path key; template text is kept as written."""
    if "\n" in value or "{" in value:
        return value
    return expand_path(value)


#: Jinja template text, or the path of a file holding it (expanded as :data:`PathStr`).
TemplateTextOrPath = Annotated[str, AfterValidator(expand_template_path)]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, and so are infinite or NaN numbers."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class SpecialTokens(StrictModel):
    """Special-token overrides; a token not in the vocabulary is added and the embeddings resized."""

    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    unk_token: str | None = None


class DatasetConfig(BaseModel):
    """One dataset source and how to turn its rows into training examples.

    The keys below are common to every strategy; the keys a strategy adds (for ``chat_template``:
    ``field_messages``, ``message_property_mappings``, ``roles_to_train``, ``train_on_eos``, ...)
    are validated against that strategy's own options model by the loader.
    """

    model_config = ConfigDict(extra="allow")

    path: PathStr = Field(
        min_length=1,
        description="Local file or directory (relative: to the working directory), or a Hub dataset name.",
    )
    type: str = Field(
        "chat_template",
        description="Prompt strategy: a registered name or a dotted path 'package.module.function'.",
    )
    split: str = Field("train", description="Split to load.")
    data_files: PathStr | list[PathStr] | None = Field(
        None, description="Files to load from a Hub repo or folder."
    )
    name: str | None = Field(None, description="Dataset configuration name (Hub datasets).")
    ds_type: Literal["json", "parquet", "csv", "arrow"] | None = Field(
        None, description="File format when it cannot be inferred from the extension."
    )
    max_samples: int | None = Field(
        None, gt=0, description="Use only the first N rows of this source (before tokenization)."
    )

    _options: BaseModel | None = PrivateAttr(default=None)

    @property
    def options(self) -> BaseModel | None:
        """The strategy options validated by the loader (None for strategies without options)."""
        return self._options


class FtkConfig(StrictModel):
    """A whole run. Field names follow axolotl's so that configs carry over."""

    # --- model and tokenizer ---
    base_model: PathStr = Field(
        min_length=1,
        description="Hub model name or local directory (relative: to the working directory) of the base model.",
    )
    tokenizer_config: PathStr | None = Field(
        None, min_length=1, description="Load the tokenizer from here instead (a Hub name or a directory)."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the model repository.")
    attn_implementation: str | None = Field(
        None,
        description="Attention backend: eager, sdpa, flash_attention_2, flex_attention, or a kernel on the "
        "Hub ('kernels-community/flash-attn3', through the kernels package); None lets transformers choose.",
    )
    special_tokens: SpecialTokens | None = Field(None, description="Special-token overrides.")
    tokens: list[str] = Field(default_factory=list, description="New (non-special) tokens to add.")
    chat_template: str | None = Field(
        None,
        description="Chat template: 'tokenizer_default', a built-in name (e.g. 'chatml'), or 'jinja'.",
    )
    chat_template_jinja: TemplateTextOrPath | None = Field(
        None, description="Jinja template text or path to a .jinja file, when chat_template is 'jinja'."
    )

    # --- adapter ---
    adapter: str | None = Field(
        None,
        description="Adapter kind to train, by registered name (lora, qlora: LoRA on a 4-bit base); "
        "None: full fine-tuning.",
    )
    router_aux_loss_coef: float | None = Field(
        None,
        ge=0.0,
        description="MoE models: weight of the router load-balancing loss added to the loss "
        "(None: the model's own value; 0 turns it off).",
    )

    # --- data ---
    datasets: list[DatasetConfig] = Field(min_length=1, description="Training data sources.")
    test_datasets: list[DatasetConfig] = Field(
        default_factory=list, description="Evaluation data sources (instead of val_set_size)."
    )
    sequence_len: int = Field(2048, gt=0, description="Maximum tokens per example.")
    excess_length_strategy: Literal["drop", "truncate", "raise"] = Field(
        "drop", description="Examples longer than sequence_len: drop them, cut them, or stop with an error."
    )
    invalid_rows: Literal["raise", "skip"] = Field(
        "raise",
        description="Rows a strategy cannot use (missing field, unknown role): stop, or skip and count.",
    )
    shuffle_merged_datasets: bool = Field(True, description="Shuffle the mixed training rows with the seed.")
    sample_packing: bool = Field(
        False, description="Pack several examples into each sequence_len row, with no attention across them."
    )
    eval_sample_packing: bool | None = Field(
        None, description="Pack eval data too (default: as sample_packing)."
    )
    pad_to_sequence_len: bool = Field(
        False,
        description="Pad every batch to sequence_len (fixed shapes: steady memory from the first step, "
        "fewer recompilations with torch_compile); default: pad to the longest row, a multiple of 8.",
    )
    train_on_inputs: bool = Field(False, description="Also train on prompt tokens, not only on responses.")
    val_set_size: float = Field(
        0.0,
        ge=0.0,
        description="Held-out eval rows: a share below 1 (0.05: 5%) or a whole number of rows (20); 0: none.",
    )
    dataset_prepared_path: PathStr = Field(
        "last_run_prepared", min_length=1, description="Directory of the tokenized-data cache."
    )
    dataset_processes: int | None = Field(
        None,
        gt=0,
        description="Processes for tokenization (default: one per megabyte of source data, up to all cores).",
    )

    # --- batch and schedule ---
    micro_batch_size: int = Field(1, gt=0, description="Examples per device per forward pass.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    num_epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: str = Field("cosine", description="Learning-rate schedule, by registered name.")
    warmup_ratio: float | None = Field(None, ge=0.0, lt=1.0, description="Warmup as a share of steps.")
    warmup_steps: int | None = Field(None, ge=0, description="Warmup in optimizer steps.")
    optimizer: str = Field("adamw_torch", description="Optimizer, by registered name.")
    weight_decay: float = Field(0.0, ge=0.0, description="Decoupled weight decay (matrices only).")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm (0 disables).")

    # --- precision and memory ---
    bf16: bool | Literal["auto"] = Field(
        False,
        description="Train in bfloat16 mixed precision; 'auto': where the GPU supports it, else float16 "
        "on a GPU (unless fp16: false) and float32 without one (resolved when the config is read).",
    )
    fp16: bool = Field(False, description="Train in float16 mixed precision.")
    tf32: bool | Literal["auto"] = Field(
        False,
        description="Allow TF32 matmuls (needs an Ampere or newer NVIDIA GPU); 'auto': where the GPU has them.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")

    # --- output, eval, logging ---
    output_dir: PathStr = Field(
        "./outputs/ftk-run", min_length=1, description="Where adapters, checkpoints, metrics go."
    )
    overwrite_output_dir: bool = Field(
        False,
        description="Train into an output_dir that holds files ftk did not write (they may be overwritten); "
        "without it such a folder is refused.",
    )
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps (default: at the end).")
    eval_batch_size: int | None = Field(
        None, gt=0, description="Examples per device per eval forward pass (default: micro_batch_size)."
    )
    load_best_model_at_end: bool = Field(
        False, description="After training, load and save the checkpoint with the lowest eval loss."
    )
    save_steps: int | None = Field(None, gt=0, description="Save a checkpoint every N steps.")
    save_total_limit: int | None = Field(None, gt=0, description="Keep at most N checkpoints.")
    logging_steps: int = Field(1, gt=0, description="Log metrics every N steps.")
    seed: int = Field(42, ge=0, lt=2**32, description="Seed for data order, initialisation and dropout.")
    resume_from_checkpoint: PathStr | None = Field(None, description="Checkpoint directory to resume from.")
    auto_resume: bool = Field(
        False, description="Resume from the latest complete checkpoint in output_dir, if there is one."
    )
    report_to: list[str] = Field(
        default_factory=list,
        description="Experiment trackers that also receive the metrics, by registered name.",
    )

    plugins: list[str] = Field(default_factory=list, description="Extra plugin modules to load.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker_or_a_list(cls, value: Any) -> Any:
        """``report_to: wandb`` is one tracker, as transformers reads it; ``none`` is no tracker."""
        if isinstance(value, str):
            return [] if value == "none" else [value]
        return value

    @field_validator("attn_implementation")
    @classmethod
    def _known_backend_or_hub_kernel(cls, value: str | None) -> str | None:
        if value is None or value in ATTENTION_BACKENDS or HUB_KERNEL.fullmatch(value):
            return value
        raise PydanticCustomError(
            "attn_implementation",
            "must be one of {backends} or a Hub kernel 'org/name'",
            {"backends": ", ".join(ATTENTION_BACKENDS)},
        )

    @field_validator("val_set_size")
    @classmethod
    def _share_or_count(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise PydanticCustomError(
                "val_set_size",
                "must be a share of the rows below 1 (0.05 holds out 5%) or a whole number of rows",
            )
        return value

    def combination_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Problems that involve several keys, each as (key path to blame, message)."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.bf16 and self.fp16:
            problems.append((("fp16",), "bf16 and fp16 are both true; choose one"))
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            problems.append((("warmup_steps",), "warmup_ratio and warmup_steps are both set; choose one"))
        if self.chat_template == "jinja" and not self.chat_template_jinja:
            problems.append((("chat_template",), "is 'jinja' but chat_template_jinja is not set"))
        if self.resume_from_checkpoint and self.auto_resume:
            problems.append((("auto_resume",), "set either resume_from_checkpoint or auto_resume, not both"))
        # A plugin key marked "schedules_checkpoints" (saves per epoch, ...): that plugin checks it.
        scheduled_by_plugin = any(
            getattr(self, key) is not None for key in self.marked_keys("schedules_checkpoints")
        )
        if (
            self.load_best_model_at_end
            and not scheduled_by_plugin
            and not (self.eval_steps and self.save_steps)
        ):
            problems.append(
                (("load_best_model_at_end",), "needs eval_steps and save_steps (checkpoints to choose from)")
            )
        if (
            self.load_best_model_at_end
            and self.save_steps
            and self.eval_steps
            and self.save_steps % self.eval_steps
        ):
            problems.append(
                (("save_steps",), "must be a multiple of eval_steps when load_best_model_at_end is on")
            )
        if self.test_datasets and self.val_set_size:
            problems.append((("val_set_size",), "set either val_set_size or test_datasets, not both"))
        return problems

    @property
    def padded_length(self) -> int | None:
        """The length every batch is padded to when ``pad_to_sequence_len`` is on, else None."""
        return self.sequence_len if self.pad_to_sequence_len else None

    @property
    def packs_eval(self) -> bool:
        """Whether eval batches are packed."""
        return self.sample_packing if self.eval_sample_packing is None else self.eval_sample_packing

    #: Flat plugin sections (their fields are top-level keys), by name; filled by the loader.
    flat_sections: ClassVar[dict[str, type[BaseModel]]] = {}

    @classmethod
    def marked_keys(cls, marker: str) -> list[str]:
        """Top-level plugin keys whose field says ``json_schema_extra={marker: True}``.

        How a plugin tells the core what its keys take part in without the core knowing their
        names: ``changes_data`` (the key changes the prepared data, so it is in the cache key),
        ``schedules_checkpoints`` (the key schedules saves or evaluations, and the plugin checks
        ``load_best_model_at_end`` against it).
        """
        return [
            name
            for model in cls.flat_sections.values()
            for name, info in model.model_fields.items()
            if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get(marker)
        ]

    def section(self, name: str) -> Any:
        """A plugin's config section by name: its model, or None when the config leaves it out.

        A flat section is built from its top-level keys (always present, with their defaults).
        """
        flat = type(self).flat_sections.get(name)
        if flat is not None:
            return flat.model_construct(**{key: getattr(self, key) for key in flat.model_fields})
        return getattr(self, name, None)
