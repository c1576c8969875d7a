"""What LoRA adapts: module names, regexes, fused expert weights, layers; and how embeddings train.

Names follow peft's rule (the full module name, or a dotted suffix of it); a regex
``lora_target_modules`` must match whole module names (peft's ``re.fullmatch``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ftk.core.errors import FtkError

if TYPE_CHECKING:
    import torch

#: Names of the modules beside ``experts`` in an MoE block that score the experts (the router).
ROUTER_NAME_PARTS = ("gate", "router")


def matches(key: str, name: str) -> bool:
    """peft's rule for a target name: the full key, or its dotted suffix."""
    return key == name or key.endswith(f".{name}")


def leaf(key: str) -> str:
    """The last part of a dotted name."""
    return key.rsplit(".", 1)[-1]


def _shown(names: list[str], limit: int) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def output_head_name(model: torch.nn.Module) -> str | None:
    """The full name of the output projection (lm_head), or None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return next((name for name, module in model.named_modules() if module is head), None)


def router_names(model: torch.nn.Module) -> list[str]:
    """Full names of MoE routers: modules beside an ``experts`` module named like a gate or router."""
    import torch

    routers = []
    for prefix, module in model.named_modules():
        if not isinstance(getattr(module, "experts", None), torch.nn.Module):
            continue
        for name, child in module.named_children():
            kind = f"{name} {type(child).__name__}".lower()
            if name != "experts" and any(part in kind for part in ROUTER_NAME_PARTS):
                routers.append(f"{prefix}.{name}" if prefix else name)
    return routers


def is_parametrization(module_name: str) -> bool:
    """Whether ``module_name`` is torch's bookkeeping of a parametrized tensor (``x.parametrizations.weight``)."""
    return "parametrizations" in module_name.split(".")


def _read_shape(module: torch.nn.Module, name: str) -> tuple[int, ...]:
    import torch

    first = module.parametrizations[name][0]  # type: ignore[index]
    shape = getattr(getattr(first, "quant_state", None), "shape", None)  # bitsandbytes 4-bit: known unread
    if shape is None:
        with torch.no_grad():
            shape = getattr(module, name).shape
    return tuple(shape)


def own_parameters(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of the parameters a module holds, a parametrized one (e.g. 4-bit experts,
    ``quantize_moe_experts``) under the name and shape the module reads it by."""
    found = [(name, tuple(param.shape)) for name, param in module.named_parameters(recurse=False)]
    parametrized = getattr(module, "parametrizations", None)
    return found + [(name, _read_shape(module, name)) for name in (parametrized or {})]


def parameter_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Full name -> shape of every parameter of ``model`` as its module reads it (see :func:`own_parameters`)."""
    return {
        f"{prefix}.{name}" if prefix else name: shape
        for prefix, module in model.named_modules()
        if not is_parametrization(prefix)
        for name, shape in own_parameters(module)
    }


def parametrized_names(model: torch.nn.Module) -> list[str]:
    """Full names of the parametrized parameters (peft matches these by full name only)."""
    return [
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        for name in (getattr(module, "parametrizations", None) or {})
    ]


def expert_parameter_names(model: torch.nn.Module) -> list[str]:
    """Fused expert weights (3-D parameters outside convolutions), as ``module.param`` suffixes."""
    import torch

    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd) or is_parametrization(prefix):
            continue
        for param_name, shape in own_parameters(module):
            if len(shape) >= 3:
                names.add(f"{leaf(prefix)}.{param_name}" if prefix else param_name)
    return sorted(names)


def _shortest_names(targets: list[str], excluded: list[str]) -> list[str]:
    """Leaf names for ``targets`` where no excluded module shares the leaf, full names elsewhere."""
    taken = {leaf(name) for name in excluded}
    return sorted({name if leaf(name) in taken else leaf(name) for name in targets})


def linear_targets(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """(module names, parameter names) that ``lora_target_linear`` adapts.

    Every ``nn.Linear`` except the output head and MoE routers, and every fused expert weight.
    """
    import torch

    excluded = [name for name in [output_head_name(model), *router_names(model)] if name]
    linears = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and not any(name == skip or name.startswith(f"{skip}.") for skip in excluded)
    ]
    return _shortest_names(linears, excluded), expert_parameter_names(model)


def known_names(model: torch.nn.Module, limit: int = 12) -> str:
    """A few adaptable names of ``model`` (linear layers, fused expert weights, routers) for messages."""
    import torch

    names: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and leaf(name) not in names:
            names.append(leaf(name))
    names += [name for name in expert_parameter_names(model) if name not in names]
    names += [leaf(name) for name in router_names(model) if leaf(name) not in names]
    return _shown(names, limit)


def _names_peft_maps(model: torch.nn.Module, names: set[str]) -> set[str]:
    """The ``names`` that peft renames onto this model (transformers 4 MoE names on fused experts)."""
    from peft import LoraConfig
    from peft.utils.transformers_weight_conversion import convert_peft_config_for_transformers

    probe = LoraConfig(target_modules=set(names))
    try:
        convert_peft_config_for_transformers(probe, model, None)
    except ValueError as exc:  # e.g. gate_proj without up_proj, which are fused into one weight
        raise FtkError(f"lora_target_modules: {exc}") from exc
    remaining = probe.target_modules if isinstance(probe.target_modules, set) else names
    return names - set(remaining)


def named_targets(model: torch.nn.Module, names: list[str]) -> tuple[list[str], list[str]]:
    """Split ``lora_target_modules`` into peft's (target_modules, target_parameters).

    A name matching a module is a module target; one matching only a fused expert weight is a
    parameter target; one that peft maps (transformers 4 expert names) is passed on as it is.
    Anything else is an error naming the key and a few names that exist.
    """
    module_keys = [name for name, _ in model.named_modules() if not is_parametrization(name)]
    expert_keys = [name for name, shape in parameter_shapes(model).items() if len(shape) >= 3]
    modules, parameters, unknown = [], [], set()
    for name in names:
        if any(matches(key, name) for key in module_keys):
            modules.append(name)
        elif any(matches(key, name) for key in expert_keys):
            parameters.append(name)
        else:
            unknown.add(name)
    if unknown:
        mapped = _names_peft_maps(model, unknown)
        modules += sorted(mapped)
        unknown -= mapped
    if unknown:
        missing = ", ".join(repr(name) for name in sorted(unknown))
        verb = "matches" if len(unknown) == 1 else "match"
        raise FtkError(
            f"lora_target_modules: {missing} {verb} no module of {type(model).__name__}; "
            f"it has: {known_names(model)}"
        )
    return modules, parameters


def regex_targets(model: torch.nn.Module, pattern: str) -> list[str]:
    """Full names of the modules that the regex ``lora_target_modules`` matches whole (peft's rule).

    A regex that matches no module is an error naming it and a few full names of linear layers.
    """
    import torch

    regex = re.compile(pattern)
    found = [name for name, _ in model.named_modules() if name and regex.fullmatch(name)]
    if not found:
        linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
        raise FtkError(
            f"lora_target_modules: the regex {pattern!r} matches no module name of "
            f"{type(model).__name__} (it must match the whole name); names look like: {_shown(linears, 4)}"
        )
    return found


def parameter_targets(model: torch.nn.Module, names: list[str]) -> list[str]:
    """Check that every ``lora_target_parameters`` name matches a parameter (peft's suffix rule)."""
    keys = list(parameter_shapes(model))
    missing = [name for name in names if not any(matches(key, name) for key in keys)]
    if missing:
        experts = expert_parameter_names(model)
        has = (
            f"its fused expert weights: {_shown(experts, 6)}" if experts else "it has no fused expert weights"
        )
        verb = "matches" if len(missing) == 1 else "match"
        raise FtkError(
            f"lora_target_parameters: {', '.join(map(repr, missing))} {verb} no parameter of "
            f"{type(model).__name__}; {has}"
        )
    return list(names)


def _layer_probe(config: Any, layers: list[int]) -> Any:
    import copy

    probe = copy.copy(config)
    probe.layers_to_transform = layers
    probe.target_parameters = None
    probe.modules_to_save = None
    probe.exclude_modules = None
    return probe


def targeted_modules(model: torch.nn.Module, config: Any) -> list[str]:
    """Full names of the modules peft's matching rule selects for ``config`` (layers included)."""
    from peft.tuners.tuners_utils import check_target_module_exists

    if not config.target_modules:
        return []
    return [name for name, _ in model.named_modules() if name and check_target_module_exists(config, name)]


def check_layers(model: Any, config: Any) -> None:
    """Every ``peft_layers_to_transform`` index must hold a targeted module (peft's layer rule)."""
    layers = config.layers_to_transform
    if not layers or not (config.target_modules or config.target_parameters):
        return
    empty = [index for index in layers if not _layer_has_target(model, config, index)]
    if empty:
        count = getattr(model.config.get_text_config(), "num_hidden_layers", None)
        has = f"; the model has {count} layers (0..{count - 1})" if count else ""
        noun, verb = ("layer", "holds") if len(empty) == 1 else ("layers", "hold")
        raise FtkError(
            f"peft_layers_to_transform: {noun} {', '.join(map(str, empty))} {verb} no module that "
            f"lora_target_modules or lora_target_linear selects{has}"
        )


def _layer_has_target(model: torch.nn.Module, config: Any, index: int) -> bool:
    probe = _layer_probe(config, [index])
    if targeted_modules(model, probe):
        return True
    return bool(config.target_parameters and parameters_in_layers(model, config, [index]))


def parameters_in_layers(model: torch.nn.Module, config: Any, layers: list[int]) -> list[str]:
    """Full names of the ``config.target_parameters`` weights that lie in ``layers``.

    peft applies ``layers_to_transform`` to modules only; ftk narrows parameter targets the same
    way by asking peft's rule about the module that holds each parameter.
    """
    from peft.tuners.tuners_utils import check_target_module_exists

    wanted = list(config.target_parameters or [])
    found = []
    for module_name, module in model.named_modules():
        if is_parametrization(module_name):
            continue
        for param_name, _ in own_parameters(module):
            key = f"{module_name}.{param_name}" if module_name else param_name
            if not any(matches(key, name) for name in wanted):
                continue
            probe = _layer_probe(config, layers)
            probe.target_modules = [leaf(module_name)]  # a suffix: peft checks the layer of suffixes only
            if check_target_module_exists(probe, module_name):
                found.append(key)
    return sorted(found)


# --- embeddings and new tokens ------------------------------------------------------------------


@dataclass
class EmbeddingPlan:
    """How the embeddings take part: whole modules to train, and rows of new tokens to train."""

    modules_to_save: list[str] = field(default_factory=list)
    trainable_token_indices: dict[str, list[int]] = field(default_factory=dict)
    tie_weights: bool = False
    note: str | None = None


def _check_modules_to_save(model: torch.nn.Module, names: list[str]) -> None:
    keys = [name for name, _ in model.named_modules()]
    missing = [name for name in names if not any(matches(key, name) for key in keys)]
    if missing:
        verb = "matches" if len(missing) == 1 else "match"
        children = ", ".join(leaf(name) for name, _ in model.named_modules() if name.count(".") <= 1 and name)
        raise FtkError(
            f"lora_modules_to_save: {', '.join(map(repr, missing))} {verb} no module of "
            f"{type(model).__name__}; it has: {children}"
        )


def embedding_plan(
    model: torch.nn.Module, modules_to_save: list[str] | None, new_token_ids: tuple[int, ...] = ()
) -> EmbeddingPlan:
    """Decide how the rows of ``new_token_ids`` are trained, given the ``lora_modules_to_save`` listed."""
    saved = list(modules_to_save or [])
    _check_modules_to_save(model, saved)
    embeddings = model.get_input_embeddings()
    embed_name = next(name for name, module in model.named_modules() if module is embeddings)
    head_name = output_head_name(model)
    head = model.get_output_embeddings() if head_name else None
    tied = head is not None and head.weight is embeddings.weight

    def listed(name: str | None) -> bool:
        return name is not None and any(matches(name, wanted) for wanted in saved)

    # Whole modules on a tied pair: peft must wrap both sides as one, or they drift apart.
    plan = EmbeddingPlan(
        modules_to_save=saved, tie_weights=tied and (listed(embed_name) or listed(head_name))
    )
    new_ids = list(new_token_ids)
    if not new_ids:
        return plan
    ids = f"id {new_ids[0]}" if len(new_ids) == 1 else f"ids {new_ids[0]}..{new_ids[-1]}"
    count = f"{len(new_ids)} new token{'s' if len(new_ids) > 1 else ''} ({ids})"
    if listed(embed_name) or (tied and listed(head_name)):
        plan.note = f"{count}: trained with the whole {embed_name} (lora_modules_to_save)"
        return plan
    plan.trainable_token_indices[embed_name] = new_ids
    rows = f"only their rows of {embed_name}"
    if tied:
        rows += f" and of the tied {head_name}"
    elif head_name and not listed(head_name):
        plan.trainable_token_indices[head_name] = new_ids
        rows += f" and of {head_name}"
    plan.note = f"{count}: training {rows} (peft trainable_token_indices)"
    return plan


def peft_parameter_names(model: torch.nn.Module, names: list[str]) -> list[str]:
    """``names`` for peft's ``target_parameters``, plus the full name of each parametrized parameter
    they match: peft matches a parametrized parameter (4-bit experts) by its full name only."""
    full = [key for key in parametrized_names(model) if any(matches(key, name) for name in names)]
    return sorted(set(names) | set(full))


def parametrization_matches(model: torch.nn.Module, config: Any) -> list[str]:
    """torch's parametrization modules that peft's rule for ``config.target_modules`` would select by
    their name (``experts.parametrizations.down_proj`` for ``down_proj``): peft must skip them."""
    return [name for name in targeted_modules(model, config) if is_parametrization(name)]


def targeted_linears(model: torch.nn.Module, config: Any) -> set[str]:
    """Full names of the ``nn.Linear`` layers that ``config`` targets (before peft)."""
    import torch

    linear = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    return linear & set(targeted_modules(model, config))


def report_unadapted(wanted: set[str], peft_model: Any) -> list[str]:
    """Targeted linear layers that peft left without an adapter.

    peft 0.21 rewrites transformers-4 MoE names (``gate_proj``, ``up_proj``, ``down_proj``) to the
    fused expert weights for every layer, so on models that mix dense and MoE blocks (or have
    shared experts) the dense projections of those names get no adapter.
    """
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    adapted = {
        name.removeprefix(prefix) for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)
    }
    return sorted(wanted - adapted)
