"""Built-in plugin: Liger's Triton kernels (GPU only), switched on with axolotl's top-level keys.

``liger_rope``, ``liger_rms_norm``, ``liger_glu_activation``, ``liger_layer_norm`` and
``liger_cross_entropy`` are patched in through Liger's function for the model's family before the
model is built (``ftk.integrations.liger``).  ``liger_fused_linear_cross_entropy`` is this
plugin's ``compute_loss``: the model runs as usual and, when it calls its output head, the loss
is computed there with Liger's fused kernel, so the logits are never materialised
(``docs/training.md``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pydantic import Field

from ftk.core.config.schema import StrictModel
from ftk.core.errors import FtkError
from ftk.core.hookspecs import hookimpl
from ftk.core.lifecycle import CONFIGURED_MODEL
from ftk.core.lm import LossOutput, causal_lm, logit_transform, trained_position_mask
from ftk.integrations import liger

if TYPE_CHECKING:
    import torch
    from transformers import Trainer

    from ftk.core.config.schema import FtkConfig
    from ftk.core.registry import Register

FUSED_KEY = "liger_fused_linear_cross_entropy"
CROSS_ENTROPY_KEY = "liger_cross_entropy"

#: ``kernel(hidden, weight, targets, bias=, softcap=)``: summed cross-entropy of the head's logits.
LinearCrossEntropy = Callable[..., "torch.Tensor"]


class LigerSettings(StrictModel):
    """The top-level ``liger_*`` keys (axolotl's names); unset is off."""

    liger_rope: bool | None = Field(None, description="Liger's rotary position embedding kernel (GPU).")
    liger_rms_norm: bool | None = Field(None, description="Liger's RMSNorm kernel (GPU).")
    liger_glu_activation: bool | None = Field(
        None, description="Liger's SwiGLU (or, on Gemma, GeGLU) MLP kernel (GPU)."
    )
    liger_layer_norm: bool | None = Field(
        None, description="Liger's LayerNorm kernel, for the families that have LayerNorms (GPU)."
    )
    liger_fused_linear_cross_entropy: bool | None = Field(
        None,
        description="Output head and cross-entropy fused in chunks: the logits are never "
        "materialised (GPU; the largest memory saving).",
    )
    liger_cross_entropy: bool | None = Field(
        None,
        description="Liger's cross-entropy kernel on materialised logits (GPU; not with "
        "liger_fused_linear_cross_entropy).",
    )


SECTION = "liger"
#: Every key of this plugin, in the order errors name them.
KEYS = tuple(LigerSettings.model_fields)


def selected_kernels(cfg: FtkConfig) -> dict[str, bool]:
    """Each Liger key of ``cfg`` and whether it is on (an absent key is off)."""
    settings = cfg.section(SECTION) or LigerSettings()
    return {key: bool(getattr(settings, key)) for key in KEYS}


def model_type(cfg: FtkConfig, key: str) -> str:
    """The ``model_type`` of ``base_model``'s config (what Liger's patch functions are keyed by)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.base_model, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise FtkError(
            f"base_model: cannot read the model config of {cfg.base_model!r} (needed for {key}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return config.model_type


def _earlier_key(applied: dict[str, dict[str, bool]]) -> str:
    """The key of a kernel an earlier run in this process applied (what a later run's error names)."""
    for arguments in applied.values():
        for key, names in liger.PATCH_PARAMETERS.items():
            if any(arguments.get(name) for name in names):
                return key
    return next(iter(liger.PATCH_PARAMETERS))


def key_problems(cfg: FtkConfig) -> list[tuple[tuple[str], str]]:
    """Liger keys that contradict other keys, as (key path, message)."""
    switches = selected_kernels(cfg)
    problems: list[tuple[tuple[str], str]] = []
    if switches[FUSED_KEY] and switches[CROSS_ENTROPY_KEY]:
        problems.append(
            (
                (CROSS_ENTROPY_KEY,),
                f"cannot be combined with {FUSED_KEY}, which computes the cross-entropy itself; turn one off",
            )
        )
    # chunked_cross_entropy is on by default; only a config that asks for it contradicts Liger's loss.
    chunked = getattr(cfg, "chunked_cross_entropy", False)  # the loss plugin's key
    if switches[FUSED_KEY] and chunked and "chunked_cross_entropy" in cfg.model_fields_set:
        problems.append(
            (
                (FUSED_KEY,),
                "cannot be combined with chunked_cross_entropy (both replace the loss); choose one",
            )
        )
    return problems


def prepare_kernels(cfg: FtkConfig) -> dict[str, bool]:
    """Check the Liger keys against the machine and the model family, and patch the kernels in;
    returns the arguments Liger's patch function got ({} when none was called).
    """
    switches = selected_kernels(cfg)
    on = [key for key, value in switches.items() if value]
    applied = liger.applied_patches()
    if not on and not applied:
        return {}
    key = on[0] if on else _earlier_key(applied)
    family = model_type(cfg, key)
    arguments: dict[str, bool] = {}
    function = None
    if on:  # the fused loss too is offered only for the families Liger supports (known output heads)
        function = liger.patch_function(key, family, liger.patch_functions(key))
        if any(k in liger.PATCH_PARAMETERS for k in on):
            arguments = liger.patch_arguments(switches, liger.parameter_defaults(function), family)
    conflict = liger.patch_conflict(applied, family, arguments)
    if conflict is not None:
        raise FtkError(f"{key}: {conflict}")
    if function is not None and arguments:
        liger.apply_patches(family, function, arguments)
    if switches[FUSED_KEY]:
        liger.check_fused_kernel(FUSED_KEY)
    return arguments


# --- the fused loss -----------------------------------------------------------------------------


def _is_dtensor(tensor: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support
        return False
    return isinstance(tensor, DTensor)


def check_output_head(head: torch.nn.Module | None) -> torch.nn.Module:
    """The output head, if the fused loss can use it: present, and not LoRA-adapted."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if head is None:
        raise FtkError(f"{FUSED_KEY}: the model has no output head (get_output_embeddings() is None)")
    if isinstance(head, BaseTunerLayer):
        raise FtkError(
            f"{FUSED_KEY}: the output head carries a LoRA adapter, which the fused loss cannot use; "
            "remove it from lora_target_modules (lora_modules_to_save trains it in full) or turn the key off"
        )
    return head


def output_head_parameters(head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias the output head multiplies by, through peft's wrappers.

    peft's ``modules_to_save`` and ``trainable_token_indices`` wrappers expose the weight they use
    (the trained copy, or the base weight with the trained rows merged in).  A head without a plain
    2-D weight (still sharded, or quantized) is an error.
    """
    import torch

    weight = getattr(head, "weight", None)
    if (
        not isinstance(weight, torch.Tensor)
        or weight.dim() != 2
        or weight.numel() == 0
        or _is_dtensor(weight)
    ):
        raise FtkError(
            f"{FUSED_KEY}: the output head ({type(head).__name__}) has no plain 2-D weight "
            "(a sharded or quantized head?); turn the key off"
        )
    bias = getattr(head, "bias", None)
    if bias is None and hasattr(head, "original_module"):  # peft's trainable-tokens wrapper
        bias = getattr(head.original_module, "bias", None)
    return weight, bias


@contextlib.contextmanager
def fused_head(
    head: torch.nn.Module, loss_of: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
) -> Iterator[list[torch.Tensor]]:
    """Within the block, each call of ``head`` computes ``loss_of(hidden, weight, bias)`` from its input
    and its parameters, and the head itself gets an empty slice of the input: no logits.  The results
    are collected in the list the block receives.

    The loss is computed right there because DeepSpeed ZeRO-3 and FSDP materialise a sharded head's
    weight only around the head's own forward.
    """
    import torch

    results: list[torch.Tensor] = []

    def run(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not args or not torch.is_tensor(args[0]):
            return None
        weight, bias = output_head_parameters(module)
        results.append(loss_of(args[0], weight, bias))
        return (args[0].narrow(-2, 0, 0), *args[1:])

    handle = head.register_forward_pre_hook(run)
    try:
        yield results
    finally:
        handle.remove()


def fused_loss(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], kernel: LinearCrossEntropy | None = None
) -> LossOutput:
    """The summed cross-entropy of the default loss, with the output head and the loss fused.

    ``kernel(hidden, weight, targets, bias=, softcap=)`` returns the summed cross-entropy; it is
    Liger's (:func:`ftk.integrations.liger.fused_linear_cross_entropy`) unless given.
    """
    kernel = kernel or liger.fused_linear_cross_entropy
    labels = inputs["labels"]
    if labels.dim() != 2:
        raise FtkError(f"{FUSED_KEY}: needs labels of shape (batch, sequence), got {tuple(labels.shape)}")
    features = {key: value for key, value in inputs.items() if key != "labels"}
    inner = causal_lm(model)
    config = inner.config
    keep = trained_position_mask(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    scale, softcap = logit_transform(config)

    def loss_of(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if hidden.shape[:2] != labels.shape:
            raise FtkError(
                f"{FUSED_KEY}: the output head of {config.model_type!r} models gets hidden states of shape "
                f"{tuple(hidden.shape)} for labels of shape {tuple(labels.shape)}; turn the key off"
            )
        if targets.numel() == 0:
            return hidden.sum() * 0.0  # keeps every parameter in the graph, as the default loss does
        selected = hidden[keep.to(hidden.device)]
        if scale != 1.0:
            selected = selected * scale
        return kernel(selected, weight, targets.to(hidden.device), bias=bias, softcap=softcap)

    head = check_output_head(inner.get_output_embeddings())
    with fused_head(head, loss_of) as totals:
        # Through the outermost wrapper (DDP's forward arranges the gradient all-reduce).
        outputs = model(**features, use_cache=False)
    if len(totals) != 1:
        raise FtkError(
            f"{FUSED_KEY}: {config.model_type!r} models called their output head {len(totals)} times in "
            "one forward pass, not once as the fused loss needs; turn the key off"
        )
    return LossOutput(totals[0].float(), targets.numel(), outputs)


# --- hooks --------------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add the top-level ``liger_*`` keys (axolotl's names)."""
    register(SECTION, LigerSettings, flat=True)


@hookimpl
def config_problems(cfg: FtkConfig) -> list[tuple[tuple[str], str]]:
    """Report Liger keys that contradict other keys at validate time."""
    return key_problems(cfg)


@hookimpl
def check_environment(cfg: FtkConfig, purpose: str) -> None:
    """A GPU, liger-kernel and Triton, when a Liger key is on and the model is loaded for it."""
    on = [key for key, value in selected_kernels(cfg).items() if value and purpose in CONFIGURED_MODEL]
    problem = liger.environment_problem() if on else None
    if problem is not None:
        raise FtkError(f"{on[0]}: {problem}")


@hookimpl
def pre_model_load(cfg: FtkConfig, purpose: str) -> None:
    """Patch the selected kernels into the model family before the model is built."""
    if purpose in CONFIGURED_MODEL:
        prepare_kernels(cfg)


@hookimpl
def compute_loss(
    cfg: FtkConfig, model: torch.nn.Module, inputs: dict[str, torch.Tensor]
) -> LossOutput | None:
    """The fused loss when ``liger_fused_linear_cross_entropy`` is on; None leaves it to the default."""
    if not selected_kernels(cfg)[FUSED_KEY]:
        return None
    return fused_loss(model, inputs)


@hookimpl
def summary_rows(cfg: FtkConfig, trainer: Trainer) -> list[tuple[str, str]]:
    """A ``liger kernels`` row listing the keys that were on."""
    on = [key.removeprefix("liger_") for key, value in selected_kernels(cfg).items() if value]
    return [("liger kernels", ", ".join(on))] if on else []
