"""Built-in plugin: LoRA adapters through peft (``adapter: lora``, and ``qlora`` on a 4-bit base), and ``ftk merge-lora``.

``lora_target_modules`` names modules (or fused MoE expert weights), ``lora_target_linear``
adapts every linear layer but the output head and MoE routers; the rows of tokens the run added
are trained through peft's ``trainable_token_indices`` unless the whole embedding is in
``lora_modules_to_save`` (``docs/training.md``).
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from ftk.core.config.schema import FtkConfig, StrictModel
from ftk.core.errors import FtkError, say
from ftk.core.files import publish_directory, staging_directory
from ftk.core.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig

    from ftk.core.hooks import Hooks
    from ftk.core.registry import Register

#: Names of the modules beside ``experts`` in an MoE block that score the experts (the router).
ROUTER_NAME_PARTS = ("gate", "router")
ADAPTER_CONFIG_NAME = "adapter_config.json"
MERGED_DIR_NAME = "merged"


SECTION = "lora"
#: The adapter kinds this plugin registers (qlora: LoRA on a 4-bit base, see the quantization plugin).
ADAPTERS = ("lora", "qlora")


class LoraSettings(StrictModel):
    """The top-level ``lora_*`` and ``peft_*`` keys (axolotl's names)."""

    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | None = Field(None, description="Module names to adapt.")
    lora_target_linear: bool = Field(
        False,
        description="Adapt every linear layer except the output head (on MoE models: the experts too, not the router).",
    )
    lora_modules_to_save: list[str] | None = Field(
        None,
        description="Modules trained in full and saved with the adapter (e.g. embed_tokens, lm_head); "
        "added automatically when new tokens are added.",
    )
    peft_use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA.")
    peft_use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(r) instead of alpha / r.")


def settings(cfg: FtkConfig) -> LoraSettings:
    """The LoRA keys of ``cfg``."""
    return cfg.section(SECTION)


# --- what to adapt ------------------------------------------------------------------------------


def _matches(key: str, name: str) -> bool:
    """peft's rule for a target name: the full key, or its dotted suffix."""
    return key == name or key.endswith(f".{name}")


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


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


def expert_parameter_names(model: torch.nn.Module) -> list[str]:
    """Fused expert weights (3-D parameters outside convolutions), as ``module.param`` suffixes."""
    import torch

    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            continue
        for param_name, param in module.named_parameters(recurse=False):
            if param.dim() >= 3:
                names.add(f"{_leaf(prefix)}.{param_name}" if prefix else param_name)
    return sorted(names)


def _shortest_names(targets: list[str], excluded: list[str]) -> list[str]:
    """Leaf names for ``targets`` where no excluded module shares the leaf, full names elsewhere."""
    taken = {_leaf(name) for name in excluded}
    return sorted({name if _leaf(name) in taken else _leaf(name) for name in targets})


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


def _known_names(model: torch.nn.Module, limit: int = 12) -> str:
    """A few adaptable names of ``model`` (linear layers, fused expert weights, routers) for messages."""
    import torch

    names: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and _leaf(name) not in names:
            names.append(_leaf(name))
    names += [name for name in expert_parameter_names(model) if name not in names]
    names += [_leaf(name) for name in router_names(model) if _leaf(name) not in names]
    shown = ", ".join(names[:limit])
    return shown + (", ..." if len(names) > limit else "")


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
    module_keys = [name for name, _ in model.named_modules()]
    expert_keys = [name for name, param in model.named_parameters() if param.dim() >= 3]
    modules, parameters, unknown = [], [], set()
    for name in names:
        if any(_matches(key, name) for key in module_keys):
            modules.append(name)
        elif any(_matches(key, name) for key in expert_keys):
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
            f"it has: {_known_names(model)}"
        )
    return modules, parameters


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
    missing = [name for name in names if not any(_matches(key, name) for key in keys)]
    if missing:
        verb = "matches" if len(missing) == 1 else "match"
        children = ", ".join(
            _leaf(name) for name, _ in model.named_modules() if name.count(".") <= 1 and name
        )
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
        return name is not None and any(_matches(name, wanted) for wanted in saved)

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


# --- the adapter --------------------------------------------------------------------------------


def lora_config(cfg: FtkConfig, model: torch.nn.Module, new_token_ids: tuple[int, ...] = ()) -> LoraConfig:
    """peft's LoraConfig for the ``lora_*`` and ``peft_*`` keys, resolved against ``model``."""
    from peft import LoraConfig

    lora = settings(cfg)
    modules: list[str] = []
    parameters: list[str] = []
    if lora.lora_target_linear:
        modules, parameters = linear_targets(model)
    if lora.lora_target_modules:
        named_modules, named_parameters = named_targets(model, lora.lora_target_modules)
        modules = sorted(set(modules) | set(named_modules))
        parameters = sorted(set(parameters) | set(named_parameters))
    if parameters and lora.peft_use_dora:
        raise FtkError(
            f"peft_use_dora: DoRA cannot adapt fused expert weights ({', '.join(parameters)}); "
            "set lora_target_modules to the attention layers instead"
        )
    targeted = bool(lora.lora_target_linear or lora.lora_target_modules)
    plan = embedding_plan(model, lora.lora_modules_to_save, new_token_ids)
    if plan.note:
        say(f"lora: {plan.note}")
    return LoraConfig(
        r=lora.lora_r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=modules if targeted else None,  # None lets peft choose per architecture
        target_parameters=parameters or None,
        modules_to_save=plan.modules_to_save or None,
        trainable_token_indices=plan.trainable_token_indices or None,
        ensure_weight_tying=plan.tie_weights,
        use_dora=lora.peft_use_dora,
        use_rslora=lora.peft_use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _peft_error(exc: Exception, cfg: LoraSettings) -> FtkError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if cfg.peft_use_dora and "dora" in first_line.lower():
        return FtkError(f"peft_use_dora: {first_line}")
    if "target_modules" in first_line and not (cfg.lora_target_modules or cfg.lora_target_linear):
        return FtkError(
            f"lora_target_modules: peft has no default for this model ({first_line}); "
            "set lora_target_modules or lora_target_linear: true"
        )
    return FtkError(f"lora_target_modules: {first_line}")


def targeted_linears(model: torch.nn.Module, config: LoraConfig) -> set[str]:
    """Full names of the ``nn.Linear`` layers that ``config.target_modules`` names (before peft)."""
    import torch

    targets = config.target_modules
    if not targets or isinstance(targets, str):
        return set()
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and any(_matches(name, target) for target in targets)
    }


def _report_unadapted(wanted: set[str], peft_model: Any) -> None:
    """Warn about targeted linear layers that peft left without an adapter.

    peft 0.21 rewrites transformers-4 MoE names (``gate_proj``, ``up_proj``, ``down_proj``) to the
    fused expert weights for every layer, so on models that mix dense and MoE blocks (or have
    shared experts) the dense projections of those names get no adapter.
    """
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    adapted = {
        name.removeprefix(prefix) for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)
    }
    missed = sorted(wanted - adapted)
    if missed:
        shown = ", ".join(missed[:4]) + (", ..." if len(missed) > 4 else "")
        say(f"lora: warning: peft left {len(missed)} targeted linear layers without an adapter: {shown}")


def apply_lora(cfg: FtkConfig, model: Any, new_token_ids: tuple[int, ...] = ()) -> Any:
    """Wrap ``model`` with the LoRA adapter the keys describe; the rows of ``new_token_ids`` train too."""
    from peft import get_peft_model

    config = lora_config(cfg, model, new_token_ids)
    lora = settings(cfg)
    wanted = targeted_linears(model, config)
    try:
        peft_model = get_peft_model(model, config)
    except (ValueError, TypeError) as exc:  # e.g. a target module type peft cannot adapt
        raise _peft_error(exc, lora) from exc
    _report_unadapted(wanted, peft_model)
    trainable, total = peft_model.get_nb_trainable_parameters()
    variant = " (DoRA)" if lora.peft_use_dora else ""
    variant += " (rsLoRA)" if lora.peft_use_rslora else ""
    say(
        f"lora{variant}: r={lora.lora_r}, alpha={lora.lora_alpha}; "
        f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / max(total, 1):.2f}%)"
    )
    if cfg.gradient_checkpointing:
        # Frozen embeddings produce no grad; checkpointed blocks need inputs that require one.
        peft_model.enable_input_require_grads()
    return peft_model


# --- ftk merge-lora -----------------------------------------------------------------------------


def _merge_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``merge-lora``'s arguments to its subparser."""
    parser.add_argument("config", help="YAML config of the run that trained the adapter")
    parser.add_argument(
        "--adapter", metavar="DIR", help="adapter directory (default: the config's output_dir)"
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help=f"where to write the merged model (default: <output_dir>/{MERGED_DIR_NAME})",
    )
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it is not empty")


def _check_output(output: Path, adapter: Path, force: bool) -> None:
    """Refuse an output that is the adapter, a file, or a non-empty directory (without ``--force``)."""
    if output.resolve() == adapter.resolve() or adapter.resolve().is_relative_to(output.resolve()):
        raise FtkError(f"--output: {output} would replace the adapter directory {adapter}; choose another")
    if output.exists() and not output.is_dir():
        raise FtkError(f"--output: {output} exists and is not a directory")
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not force:
        raise FtkError(f"--output: {output} is not empty (pass --force to replace it)")
    if not (output / "config.json").is_file():
        raise FtkError(
            f"--output: {output} is not empty and holds no config.json: refusing to replace it even "
            "with --force; choose another directory"
        )


def merge_lora(cfg: FtkConfig, hooks: Hooks, adapter: Path, output: Path, force: bool = False) -> Path:
    """Merge the LoRA adapter in ``adapter`` into the base model of ``cfg`` and save it to ``output``.

    The result (safetensors weights, config, tokenizer) loads with plain
    ``AutoModelForCausalLM.from_pretrained(output)``.  It is written to a temporary sibling
    directory and renamed when complete, so ``output`` never holds a partial model.
    """
    from peft import PeftModel

    from ftk.core.model import load_base_model, load_inference_tokenizer

    if not (adapter / ADAPTER_CONFIG_NAME).is_file():
        raise FtkError(
            f"--adapter: {adapter} has no {ADAPTER_CONFIG_NAME} (not a LoRA adapter; "
            "was the run trained with adapter: lora?)"
        )
    _check_output(output, adapter, force)
    tokenizer = load_inference_tokenizer(cfg, hooks, adapter)
    # "merge": plugins load full-precision weights (no quantized copy to merge into).
    base = load_base_model(cfg, hooks, tokenizer, "merge")
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.config.use_cache = True  # the merged model is for inference
    staging = staging_directory(output)
    try:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _check_output(output, adapter, force)  # again: something may have appeared meanwhile
        publish_directory(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def _run_merge(args: argparse.Namespace) -> int:
    """Run ``ftk merge-lora`` as ``args`` says and print where the model went."""
    from ftk.core.lifecycle import prepare

    run = prepare(args.config, purpose="merge", manager=args.manager)
    adapter = Path(args.adapter or run.cfg.output_dir)
    output = Path(args.output) if args.output else Path(run.cfg.output_dir) / MERGED_DIR_NAME
    merge_lora(run.cfg, run.hooks, adapter, output, force=args.force)
    print(f"merged {adapter} into {run.cfg.base_model}: {output}")
    return 0


# --- hooks -------------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add the top-level ``lora_*`` and ``peft_*`` keys."""
    register(SECTION, LoraSettings, flat=True)


@hookimpl
def register_adapters(register: Register) -> None:
    """Offer ``adapter: lora`` and ``adapter: qlora`` (the same adapter; qlora asks for a 4-bit base)."""
    for name in ADAPTERS:
        register(name, apply_lora)


@hookimpl
def config_problems(cfg: FtkConfig) -> list[tuple[tuple[str, ...], str]]:
    """LoRA keys that need an adapter when there is none (full fine-tuning trains everything)."""
    lora = settings(cfg)
    if lora is None or cfg.adapter is not None:
        return []
    problems = []
    if lora.lora_modules_to_save:
        problems.append((("lora_modules_to_save",), "needs an adapter (full fine-tuning trains everything)"))
    for key in ("peft_use_dora", "peft_use_rslora"):
        if getattr(lora, key):
            problems.append(((key,), "needs adapter: lora (or qlora)"))
            break
    return problems


@hookimpl
def register_commands(register: Register) -> None:
    """Contribute the ``merge-lora`` command."""
    register(
        name="merge-lora",
        help="merge a trained LoRA/DoRA/QLoRA adapter into its base model; save the full model",
        add_arguments=_merge_arguments,
        run=_run_merge,
    )
