"""bitsandbytes 4-bit for fused MoE expert weights (``quantize_moe_experts``), and LoRA on them through peft.

transformers 5 stores the experts of most MoE models (Qwen3-MoE, GLM-4.5, Qwen3.5-MoE...) as 3-D
``nn.Parameter``s, not ``nn.Linear`` layers, so ``load_in_4bit`` leaves them, most of the model, in
full precision.  :func:`quantize_experts` packs each of them to 4 bits with bitsandbytes'
parametrization (``bitsandbytes.nn.parametrize``, on top of ``torch.nn.utils.parametrize``): the
module keeps reading ``self.gate_up_proj``, which is dequantized when read, once per forward of
the module (cached while it runs).

peft adapts such a parameter (``target_parameters``) with a ``ParamWrapper`` that adds its own
parametrization during each forward.  On a parameter that already has one, peft 0.22 goes wrong
twice, and :func:`quantize_experts` corrects both:

* with two wrapped parameters on one module, the outer wrapper's parametrization cache keeps the
  inner parameter's value from before the inner LoRA term was added, so the inner adapter gets no
  gradient: a forward pre-hook on the experts module drops the cached values of its parameters;
* ``ParamWrapper._remove_parametrizations`` only knows ``_LoraParameterProxy``, not the
  ``_LoraFactorsProxy`` that peft 0.22 adds for experts, so the LoRA term would stay on after each
  forward (and pile up): :func:`patch_peft_param_wrapper` removes either kind.

And peft nests the wrappers of one module's parameters in the order of their names when the
module is parametrized, but in the order the module defines them otherwise: an adapter trained on
4-bit experts would not load on the full-precision model (``ftk merge-lora``, other tools), the
``lora_A``/``lora_B`` of ``gate_up_proj`` and ``down_proj`` swapped.  :func:`patch_peft_injection`
re-nests them in the module's order right after peft injects them, before any weights load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: A module path holds fused experts when one of its parts contains this.
EXPERT_PART = "expert"


@dataclass(frozen=True)
class ExpertsQuantized:
    """What :func:`quantize_experts` did: the parameters (full names) and their bytes before and after."""

    names: tuple[str, ...]
    bytes_before: int
    bytes_after: int


def fused_expert_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str]]:
    """(full name, module, parameter name) of every fused expert weight not yet quantized.

    A fused expert weight is a floating-point parameter of 3 or more dimensions held by a module
    whose path names experts (``mlp.experts.gate_up_proj``), outside convolutions.
    """
    import torch

    found = []
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd) or EXPERT_PART not in prefix.lower():
            continue
        if "parametrizations" in prefix.split("."):
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.dim() >= 3 and param.dtype.is_floating_point:
                found.append((f"{prefix}.{name}", module, name))
    return found


def dequantized_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a quantized expert weight is read in: float32 for a half-precision one, else its own.

    peft's ``prepare_model_for_kbit_training`` (which the quantization plugin runs) casts every
    other half-precision weight to float32, so the hidden states reaching the experts are float32:
    transformers' expert code multiplies them with the weight as it reads it, in one dtype.
    """
    import torch

    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _state_bytes(packed: torch.Tensor, quant_state: Any) -> int:
    tensors = [value for value in quant_state.as_dict(packed=True).values() if hasattr(value, "numel")]
    return packed.numel() * packed.element_size() + sum(t.numel() * t.element_size() for t in tensors)


def quantize_experts(model: torch.nn.Module, quant_type: str, double_quant: bool) -> ExpertsQuantized:
    """Pack every fused expert weight of ``model`` to 4 bits (``quant_type`` nf4 or fp4, double quant or not).

    The weights are quantized where they lie (a GPU, or the CPU with bitsandbytes' CPU backend)
    and read back in :func:`dequantized_dtype`.  Returns what was quantized (nothing: empty names).
    """
    from bitsandbytes.nn.parametrize import replace_parameter_4bit

    names, before, after = [], 0, 0
    modules: dict[int, torch.nn.Module] = {}
    for full_name, module, name in fused_expert_parameters(model):
        param = getattr(module, name)
        before += param.numel() * param.element_size()
        dtype = dequantized_dtype(param.dtype)
        replace_parameter_4bit(module, name, compress_statistics=double_quant, quant_type=quant_type)  # type: ignore[arg-type]
        plist: Any = module.parametrizations[name]  # type: ignore[index]
        quant_state = plist[0].quant_state
        quant_state.dtype = dtype  # dequantize straight into the dtype the model computes in
        after += _state_bytes(plist.original, quant_state)
        names.append(full_name)
        modules[id(module)] = module
    for module in modules.values():
        module.register_forward_pre_hook(_drop_cached_values)
    if names:
        patch_peft_param_wrapper()
        patch_peft_injection()
    return ExpertsQuantized(tuple(names), before, after)


def _drop_cached_values(module: torch.nn.Module, args: Any) -> None:
    """Forward pre-hook: forget the module's cached parametrized values, computed before every LoRA term was on."""
    from torch.nn.utils import parametrize

    cache = parametrize._cache
    for name in getattr(module, "parametrizations", {}):
        cache.pop((id(module), name), None)


def patch_peft_param_wrapper() -> None:
    """Make peft's ``ParamWrapper`` take off its ``_LoraFactorsProxy`` too after a forward (idempotent)."""
    from peft.tuners.lora import layer

    wrapper: Any = layer.ParamWrapper
    factors = getattr(layer, "_LoraFactorsProxy", None)
    if factors is None or getattr(wrapper, "_ftk_removes_factors", False):
        return  # a peft without it removes its only proxy kind itself
    proxies = (layer._LoraParameterProxy, factors)
    original = wrapper._remove_parametrizations

    def _remove_parametrizations(self: Any) -> None:
        plists = self.get_base_layer().parametrizations
        plist = plists[self.parameter_name] if self.parameter_name in plists else None
        if plist is not None and len(plist) > 1:
            for index in reversed(range(len(plist))):
                if isinstance(plist[index], proxies):
                    del plist[index]
                    return
        original(self)

    wrapper._remove_parametrizations = _remove_parametrizations
    wrapper._ftk_removes_factors = True


def patch_peft_injection() -> None:
    """After peft wraps parameters, nest the wrappers of a parametrized module in its own order (idempotent)."""
    from peft.tuners.tuners_utils import BaseTuner

    tuner: Any = BaseTuner
    if getattr(tuner, "_ftk_nests_in_module_order", False):
        return
    original = tuner._inject_parameters

    def _inject_parameters(self: Any, peft_config: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        found = original(self, peft_config, model, *args, **kwargs)
        nest_in_module_order(model)
        return found

    tuner._inject_parameters = _inject_parameters
    tuner._ftk_nests_in_module_order = True


def nest_in_module_order(model: torch.nn.Module) -> None:
    """Re-nest each chain of peft ``ParamWrapper``s over a parametrized module: the first parameter the
    module defines innermost, as peft nests them on a module that is not parametrized."""
    from peft.tuners.lora.layer import ParamWrapper

    for name, module in list(model.named_modules()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if not isinstance(module, ParamWrapper) or isinstance(parent, ParamWrapper):
            continue  # not the outermost wrapper of a chain
        chain: list[Any] = []
        inner: Any = module
        while isinstance(inner, ParamWrapper):
            chain.append(inner)
            inner = inner.base_layer
        order = list(getattr(inner, "parametrizations", None) or {})
        if len(chain) < 2 or not all(wrapper.parameter_name in order for wrapper in chain):
            continue
        below: torch.nn.Module = inner
        for wrapper in sorted(chain, key=lambda wrapper: order.index(wrapper.parameter_name)):
            wrapper.base_layer = below
            below = wrapper
        setattr(parent, child, below)
