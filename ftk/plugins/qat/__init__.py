"""Built-in plugin: quantization-aware training, axolotl's ``qat:`` section, through torchao.

Full-precision training in which the linear layers (and with ``quantize_embedding`` the token
embeddings) compute with fake-quantized weights and activations: each forward pass rounds them to
the target format (int4, int8, float8, mxfp4 or nvfp4) and back, and gradients pass the rounding
straight through, so the weights learn to survive the quantization applied after training.

The model is prepared right after loading (``post_model_load``, before any adapter) with torchao's
``QATConfig``, whose fake-quantization numerics torchao derives from the post-training (PTQ)
config the model is meant for (:data:`SCHEMES`).  ``fake_quant_after_n_steps`` keeps the
quantizers off for the first steps (a callback).  The parameters keep their names and values, so
checkpoints and the final save are an ordinary model with the trained full-precision weights;
after the save the fake-quantized layers are swapped back to plain ones (torchao's ``convert``
step without a base config).  Quantizing those weights for inference is a separate step, with the
torchao config the end-of-run summary names (``docs/training.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt

from ftk.core.config.schema import FtkConfig, StrictModel
from ftk.core.errors import FtkError, say
from ftk.core.hookspecs import hookimpl
from ftk.integrations.torchao import cuda_capability

if TYPE_CHECKING:
    import torch
    from transformers import TrainerCallback

    from ftk.core.registry import Register

SECTION = "qat"
INSTALL = "pip install 'ftk[torchao]'"
#: Commands that prepare the model for QAT (fake quantization is a training matter).
PURPOSES = ("validate", "train")
#: nvfp4's fake quantization runs its matmuls in nvfp4: torchao needs a Blackwell GPU for them.
NVFP4_MIN_CAPABILITY = (10, 0)

DtypeName = Literal["int4", "int8", "float8", "float8_e4m3fn", "fp8", "nvfp4", "mxfp4"]
#: axolotl's spellings of float8 (e4m3), all read as ``float8``.
FLOAT8_NAMES = ("float8", "float8_e4m3fn", "fp8")


class QatConfig(StrictModel):
    """The ``qat:`` section (axolotl's keys): fake quantization during training."""

    activation_dtype: DtypeName | None = Field(
        None,
        description="Format the inputs of the linear layers are fake-quantized to: int8 (per token), "
        "float8 (e4m3; also fp8, float8_e4m3fn), mxfp4, nvfp4; unset: weights only. Pairs with "
        "weight_dtype as torchao supports: -/int4, -/int8, int8/int4, int8/int8, float8/float8, "
        "float8/int4, mxfp4/mxfp4, nvfp4/nvfp4 (NVIDIA Blackwell GPU).",
    )
    weight_dtype: DtypeName = Field(
        "int8",
        description="Format the weights are fake-quantized to: int4, int8, float8, mxfp4 or nvfp4.",
    )
    quantize_embedding: bool = Field(
        False,
        description="Fake-quantize the token embeddings too (weights only; int4 or int8 weights).",
    )
    group_size: PositiveInt | None = Field(
        None,
        description="Weights per quantization group (scale) along the input dimension: default 32; "
        "float8 activations with int4 weights need 128, mxfp4 32, nvfp4 16; not with float8 weights "
        "(per-tensor scales). Must divide the input size of every linear layer.",
    )
    fake_quant_after_n_steps: NonNegativeInt | None = Field(
        None,
        description="Train the first N optimizer steps without fake quantization, then turn it on "
        "(unset: on from the first step). Not with mxfp4/nvfp4.",
    )


# --- what each pair of formats means ------------------------------------------------------------


@dataclass(frozen=True)
class Scheme:
    """One supported (activation, weight) pair: torchao's PTQ config and its group sizes."""

    ptq: str  # the torchao PTQ config class the fake quantization is derived from
    group_size: int | None  # the default; None: per-tensor scales, no groups
    fixed: bool = False  # the only group size torchao's kernels take


#: (activation_dtype, weight_dtype) -> scheme, for every pair torchao's QAT supports.
SCHEMES: dict[tuple[str | None, str], Scheme] = {
    (None, "int4"): Scheme("Int4WeightOnlyConfig", 32),
    (None, "int8"): Scheme("IntxWeightOnlyConfig", 32),
    ("int8", "int4"): Scheme("Int8DynamicActivationIntxWeightConfig", 32),
    ("int8", "int8"): Scheme("Int8DynamicActivationIntxWeightConfig", 32),
    ("float8", "float8"): Scheme("Float8DynamicActivationFloat8WeightConfig", None),
    ("float8", "int4"): Scheme("Float8DynamicActivationInt4WeightConfig", 128, fixed=True),
    ("mxfp4", "mxfp4"): Scheme("MXDynamicActivationMXWeightConfig", 32, fixed=True),
    ("nvfp4", "nvfp4"): Scheme("NVFP4DynamicActivationNVFP4WeightConfig", 16, fixed=True),
}
#: Weight formats whose fake quantization has an on/off switch (for fake_quant_after_n_steps)
#: and a weight-only form (for the embeddings).
INTEGER_WEIGHTS = ("int4", "int8")
SWITCHABLE_WEIGHTS = ("int4", "int8", "float8")


def canonical(name: str | None) -> str | None:
    """``name`` with axolotl's float8 spellings read as ``float8``."""
    return "float8" if name in FLOAT8_NAMES else name


@dataclass(frozen=True)
class Qat:
    """What the ``qat:`` section asks for, spellings and defaults resolved."""

    activation: str | None
    weight: str
    group_size: int | None
    embedding: bool
    after_steps: int | None

    @property
    def scheme(self) -> Scheme:
        """The torchao scheme of this pair (the config is checked first, so it exists)."""
        return SCHEMES[(self.activation, self.weight)]

    def describe(self) -> str:
        """One line, e.g. ``int8 activations, int4 weights in groups of 32``."""
        parts = [f"{self.activation} activations" if self.activation else "weights only"]
        weights = f"{self.weight} weights"
        if self.group_size is not None:
            weights += f" in groups of {self.group_size}"
        parts.append(weights)
        if self.embedding:
            parts.append("embeddings too")
        if self.after_steps:
            parts.append(f"from step {self.after_steps + 1}")
        return ", ".join(parts)


def resolve(cfg: FtkConfig) -> Qat | None:
    """The QAT settings of ``cfg`` with defaults filled in; None without a ``qat:`` section."""
    section: QatConfig | None = cfg.section(SECTION)
    if section is None:
        return None
    activation, weight = canonical(section.activation_dtype), str(canonical(section.weight_dtype))
    scheme = SCHEMES.get((activation, weight))
    group = section.group_size
    if group is None and scheme is not None:
        group = scheme.group_size
    return Qat(activation, weight, group, section.quantize_embedding, section.fake_quant_after_n_steps)


def _pairs_for(weight: str) -> str:
    names = [activation or "unset" for activation, w in SCHEMES if w == weight]
    return " or ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " or " + names[-1]


def problems(cfg: FtkConfig) -> list[tuple[tuple[str, ...], str]]:
    """Settings of ``qat:`` that torchao cannot train, or that contradict other keys, as (key path, message)."""
    section: QatConfig | None = cfg.section(SECTION)
    if section is None:
        return []
    found: list[tuple[tuple[str, ...], str]] = []
    for key, what in (("load_in_4bit", "bitsandbytes 4-bit"), ("load_in_8bit", "bitsandbytes 8-bit")):
        if getattr(cfg, key, None):
            found.append(
                (
                    (SECTION,),
                    f"fake-quantizes full-precision weights and {key} loads them in {what}; choose one",
                )
            )
    if getattr(cfg, "quantization", None) is not None:
        found.append(
            (
                (SECTION,),
                "fake-quantizes full-precision weights and quantization: loads them quantized; choose one",
            )
        )
    if getattr(cfg, "peft", None) is not None:
        found.append(((SECTION,), "cannot be combined with peft (LoftQ initialisation), as in axolotl"))
    activation, weight = canonical(section.activation_dtype), str(canonical(section.weight_dtype))
    scheme = SCHEMES.get((activation, weight))
    if scheme is None:
        found.append(
            (
                (SECTION, "activation_dtype"),
                f"{activation or 'unset'} with weight_dtype {weight}: torchao has no QAT for this pair; "
                f"with {weight} weights use activation_dtype {_pairs_for(weight)}",
            )
        )
        return found
    group = section.group_size
    if group is not None and scheme.group_size is None:
        found.append(
            ((SECTION, "group_size"), f"{weight} weights are scaled per tensor, in no groups; remove it")
        )
    elif group is not None and scheme.fixed and group != scheme.group_size:
        pair = f"{activation} activations with {weight} weights"
        found.append(
            ((SECTION, "group_size"), f"{pair} need group_size {scheme.group_size} (torchao's only size)")
        )
    if section.quantize_embedding and weight not in INTEGER_WEIGHTS:
        found.append(
            (
                (SECTION, "quantize_embedding"),
                f"torchao fake-quantizes embeddings with int4 or int8 weights only, not {weight}",
            )
        )
    after = section.fake_quant_after_n_steps
    if after is not None and weight not in SWITCHABLE_WEIGHTS:
        found.append(
            (
                (SECTION, "fake_quant_after_n_steps"),
                f"torchao's {weight} QAT layers cannot be switched off; remove it",
            )
        )
    elif after is not None and cfg.max_steps is not None and after >= cfg.max_steps:
        found.append(
            (
                (SECTION, "fake_quant_after_n_steps"),
                f"{after} >= max_steps {cfg.max_steps}: fake quantization would never start",
            )
        )
    return found


# --- this machine -------------------------------------------------------------------------------


def _torchao_version() -> str:
    try:
        return version("torchao")
    except PackageNotFoundError:
        raise FtkError(f"{SECTION}: needs torchao: {INSTALL}") from None


def ptq_config(qat: Qat, embedding: bool = False) -> Any:
    """torchao's PTQ config for ``qat`` (for the embeddings: its weight-only form); imports torchao.

    An FtkError naming the key when torchao is missing or lacks it.
    """
    installed = _torchao_version()
    try:
        return _build_ptq_config(qat, embedding)
    except (ImportError, AttributeError) as exc:
        raise FtkError(
            f"{SECTION}.weight_dtype: torchao {installed} has no QAT for {qat.describe()} ({exc}); "
            "pip install -U 'torchao>=0.18'"
        ) from None


def _build_ptq_config(qat: Qat, embedding: bool) -> Any:
    import torch
    from torchao.quantization import granularity
    from torchao.quantization import quant_api as api

    group = qat.group_size or 0
    if embedding or qat.activation is None:
        if qat.weight == "int4":
            return api.Int4WeightOnlyConfig(group_size=group)
        return api.IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=granularity.PerGroup(group))
    if qat.activation == "int8":
        bits = getattr(torch, "int4") if qat.weight == "int4" else torch.int8  # noqa: B009  (no stub)
        return api.Int8DynamicActivationIntxWeightConfig(
            weight_dtype=bits, weight_granularity=granularity.PerGroup(group)
        )
    if qat.weight == "float8":
        return api.Float8DynamicActivationFloat8WeightConfig()
    if qat.weight == "int4":
        return api.Float8DynamicActivationInt4WeightConfig()
    from torchao.prototype import mx_formats
    from torchao.prototype import qat as prototype_qat  # the MX and NVFP4 QAT layers

    if qat.weight == "mxfp4":
        from torchao.quantization.quantize_.common.kernel_preference import KernelPreference

        # Emulated matmuls (dequantized, in the training dtype): the same numerics as the MX
        # kernels, on any machine; the real kernels need a Blackwell GPU.
        fp4 = torch.float4_e2m1fn_x2
        config = mx_formats.MXDynamicActivationMXWeightConfig(
            activation_dtype=fp4,
            weight_dtype=fp4,
            block_size=group,
            kernel_preference=KernelPreference.EMULATED,
        )
        prototype_qat.MXFakeQuantizedLinear  # noqa: B018  (AttributeError on a torchao without MX QAT)
        return config
    prototype_qat.NVFP4FakeQuantizedLinear  # noqa: B018
    return mx_formats.NVFP4DynamicActivationNVFP4WeightConfig()


def hardware_problem(qat: Qat, capability: tuple[int, int] | None) -> str | None:
    """Why ``qat`` cannot train on a machine whose CUDA GPU has ``capability`` (None: no GPU), or None."""
    if qat.weight != "nvfp4" or (capability is not None and capability >= NVFP4_MIN_CAPABILITY):
        return None
    found = f"this GPU has {capability[0]}.{capability[1]}" if capability else "this machine has none"
    return (
        "nvfp4 QAT computes in nvfp4, which torchao runs only on an NVIDIA Blackwell GPU (compute "
        f"capability 10.0 or newer) and {found}; mxfp4 (emulated) trains anywhere"
    )


def check_machine(qat: Qat) -> None:
    """Raise an FtkError naming the key when this machine cannot train ``qat``: torchao, GPU."""
    problem = hardware_problem(qat, cuda_capability())
    if problem is not None:
        raise FtkError(f"{SECTION}.weight_dtype: {problem}")
    ptq_config(qat)
    if qat.embedding:
        ptq_config(qat, embedding=True)


# --- the model ----------------------------------------------------------------------------------


def _fits_groups(size: int, group: int | None) -> bool:
    return group is None or size % group == 0


def group_problem(model: torch.nn.Module, qat: Qat) -> str | None:
    """Why ``qat.group_size`` does not divide an input size of ``model``'s layers to be fake-quantized, or None."""
    import torch

    sizes: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            sizes[name] = module.in_features
        elif qat.embedding and isinstance(module, torch.nn.Embedding):
            sizes[name] = module.embedding_dim
    bad = [(name, size) for name, size in sizes.items() if not _fits_groups(size, qat.group_size)]
    if not bad:
        return None
    name, size = bad[0]
    common = math.gcd(*sizes.values())
    more = f" (and {len(bad) - 1} more layers)" if len(bad) > 1 else ""
    return (
        f"{qat.group_size} does not divide the input size {size} of {name}{more}; "
        f"use a divisor of {common}" + (" or another format" if qat.scheme.fixed else "")
    )


def prepare(model: torch.nn.Module, qat: Qat) -> int:
    """Swap ``model``'s linear layers (and embeddings if asked) for torchao's fake-quantized ones.

    Returns how many layers were swapped.  The parameters stay the same objects.
    """
    import torch

    problem = group_problem(model, qat)
    if problem is not None:
        raise FtkError(f"{SECTION}.group_size: {problem}")
    linear_config = ptq_config(qat)
    embedding_config = ptq_config(qat, embedding=True) if qat.embedding else None
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(linear_config, step="prepare"))
    if embedding_config is not None:
        quantize_(
            model,
            QATConfig(embedding_config, step="prepare"),
            filter_fn=lambda module, _name: isinstance(module, torch.nn.Embedding),
        )
    swapped = [module for module in model.modules() if fake_quantized(module)]
    if qat.weight in ("mxfp4", "nvfp4"):
        # torchao's MX/NVFP4 layers quantize a 2-D view of their input and need it contiguous,
        # which the last position a model's head gets (logits_to_keep) is not.
        for module in swapped:
            module.register_forward_pre_hook(_contiguous_input)
    return len(swapped)


def _contiguous_input(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(), *args[1:])


def fake_quantized(module: torch.nn.Module) -> bool:
    """Whether ``module`` is one of torchao's fake-quantized layers."""
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear

    classes: tuple[type, ...] = (FakeQuantizedLinear, FakeQuantizedEmbedding)
    try:
        from torchao.prototype.qat import MXFakeQuantizedLinear, NVFP4FakeQuantizedLinear
    except ImportError:  # an older torchao without them
        return isinstance(module, classes)
    return isinstance(module, (*classes, MXFakeQuantizedLinear, NVFP4FakeQuantizedLinear))


def convert(model: torch.nn.Module) -> None:
    """Swap torchao's fake-quantized layers back to plain ``Linear``/``Embedding`` (same parameters)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(step="convert"), filter_fn=lambda module, _name: fake_quantized(module))


def set_fake_quantization(model: torch.nn.Module, enabled: bool) -> int:
    """Turn the fake quantizers of ``model``'s layers on or off; returns how many layers have them."""
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear

    count = 0
    for module in model.modules():
        if not isinstance(module, (FakeQuantizedLinear, FakeQuantizedEmbedding)):
            continue
        count += 1
        for quantizer in (getattr(module, "activation_fake_quantizer", None), module.weight_fake_quantizer):
            if quantizer is not None:
                quantizer.enabled = enabled
    return count


# --- hooks --------------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add the ``qat:`` section."""
    register(SECTION, QatConfig)


@hookimpl
def config_problems(cfg: FtkConfig) -> list[tuple[tuple[str, ...], str]]:
    """Report ``qat:`` settings torchao cannot train, or that contradict other keys."""
    return problems(cfg)


@hookimpl
def check_environment(cfg: FtkConfig, purpose: str) -> None:
    """Before any data work: stop when this machine cannot train the config's QAT (torchao, GPU)."""
    qat = resolve(cfg)
    if qat is not None and purpose in PURPOSES:
        check_machine(qat)


@hookimpl
def post_model_load(cfg: FtkConfig, model: Any, tokenizer: Any, purpose: str) -> None:
    """For training: swap in the fake-quantized layers, before any adapter."""
    qat = resolve(cfg)
    if qat is None or purpose != "train":
        return
    swapped = prepare(model, qat)
    if qat.after_steps:
        set_fake_quantization(model, False)
    say(f"qat: {swapped} layers fake-quantized ({qat.describe()})")


@hookimpl
def trainer_callbacks(cfg: FtkConfig) -> list[TrainerCallback]:
    """The switch of ``fake_quant_after_n_steps``."""
    qat = resolve(cfg)
    if qat is None or not qat.after_steps:
        return []
    from ftk.plugins.qat.callbacks import FakeQuantAfterSteps

    return [FakeQuantAfterSteps(qat.after_steps)]


@hookimpl
def post_train(cfg: FtkConfig, trainer: Any, model: Any, tokenizer: Any) -> None:
    """After the final save: swap the fake-quantized layers back, leaving a plain model in memory."""
    if resolve(cfg) is not None:
        convert(model)


@hookimpl
def summary_rows(cfg: FtkConfig) -> list[tuple[str, str]]:
    """A ``qat`` row: the formats, and the torchao config that quantizes the saved weights to match."""
    qat = resolve(cfg)
    if qat is None:
        return []
    return [("qat", f"{qat.describe()}; quantize the saved model with torchao's {qat.scheme.ptq}")]
