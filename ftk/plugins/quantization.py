"""Built-in plugin: quantized base models, bitsandbytes 4-bit (QLoRA) and 8-bit with axolotl's keys, torchao in ``quantization:``.

Quantized weights are frozen, so a quantized base needs an adapter.  The keys are checked
against each other and the adapter when the config is loaded, the machine (library, version,
hardware) before any data work, and the loaded model afterwards; a bitsandbytes base is then
prepared with peft's ``prepare_model_for_kbit_training`` (``docs/scaling.md``).  ``ftk
merge-lora`` loads the base unquantized, to merge into full-precision weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Literal

from packaging.version import Version
from pydantic import Field

from ftk.core.config.schema import FtkConfig, StrictModel
from ftk.core.errors import FtkError, say
from ftk.core.hookspecs import hookimpl
from ftk.core.lifecycle import CONFIGURED_MODEL
from ftk.integrations import bnb, bnb_experts, torchao

if TYPE_CHECKING:
    from ftk.core.registry import Register

SECTION = "quantization"
BNB_SECTION = "bitsandbytes"
BNB_INSTALL = "pip install 'ftk[bnb]'"
TORCHAO_INSTALL = "pip install 'torchao>={version}'"


# --- config -------------------------------------------------------------------------------------


StorageDtype = Literal["uint8", "int8", "bfloat16", "float16", "float32"]


class BnbSettings(StrictModel):
    """The top-level bitsandbytes keys (axolotl's names); unset is off or the default."""

    load_in_4bit: bool | None = Field(
        None, description="bitsandbytes: load the linear layers in 4 bits (QLoRA: with adapter: qlora)."
    )
    load_in_8bit: bool | None = Field(
        None, description="bitsandbytes: load the linear layers in 8 bits, LLM.int8 (with adapter: lora)."
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] | None = Field(
        None,
        description="4-bit data type: nf4 (normal float, suits normally distributed weights; the default) or fp4.",
    )
    bnb_4bit_use_double_quant: bool | None = Field(
        None, description="Quantize the 4-bit scales too, saving about 0.4 bit per weight (default true)."
    )
    bnb_4bit_compute_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None,
        description="dtype of the 4-bit matmuls (default: bfloat16 with bf16, float16 with fp16, else float32).",
    )
    bnb_4bit_quant_storage: StorageDtype | None = Field(
        None,
        description="dtype the packed 4-bit weights are stored as (default uint8). FSDP and ZeRO-3 shard "
        "one dtype: set it to the model's (bfloat16 with bf16).",
    )
    quantize_moe_experts: bool | None = Field(
        None,
        description="With load_in_4bit: also quantize the fused MoE expert weights (3-D parameters, which "
        "load_in_4bit leaves in full precision) to 4 bits, with bnb_4bit_quant_type and "
        "bnb_4bit_use_double_quant; LoRA reaches them through lora_target_parameters.",
    )


class QuantizationConfig(StrictModel):
    """The ``quantization:`` section: quantize the base model with torchao."""

    backend: Literal["torchao"] = Field(
        "torchao", description="Library that quantizes (bitsandbytes: load_in_4bit/8bit)."
    )
    method: Literal["int8_weight_only", "float8_weight_only", "float8_dynamic_activation_float8_weight"] = (
        Field(
            description="torchao method: int8 or float8 weights (CPU too), or float8 weights and activations "
            "(CUDA compute capability 8.9 or newer)."
        )
    )


BNB_4BIT_KEYS = tuple(key for key in BnbSettings.model_fields if key.startswith("bnb_4bit_"))
EXPERTS_KEY = "quantize_moe_experts"


def value(cfg: FtkConfig, key: str) -> Any:
    """The value of the bitsandbytes key ``key``, or None when the config does not set it."""
    settings = cfg.section(BNB_SECTION)
    return None if settings is None else getattr(settings, key)


# --- what the config asks for -------------------------------------------------------------------


@dataclass(frozen=True)
class Quantization:
    """How the base model is quantized, with every default resolved."""

    backend: Literal["bitsandbytes", "torchao"]
    key: str  # the config key that turned it on, for messages
    bits: int | None = None  # bitsandbytes: 4 or 8
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "float32"
    quant_storage: str | None = None
    method: str | None = None  # torchao
    experts: bool = False  # bitsandbytes 4-bit: the fused MoE expert weights too

    def describe(self) -> str:
        """One line, e.g. ``bitsandbytes 4-bit nf4, double quant, compute bfloat16``."""
        if self.backend == "torchao":
            return f"torchao {self.method}"
        if self.bits == 8:
            return "bitsandbytes 8-bit (LLM.int8)"
        parts = [f"bitsandbytes 4-bit {self.quant_type}"]
        if self.double_quant:
            parts.append("double quant")
        parts.append(f"compute {self.compute_dtype}")
        if self.quant_storage is not None:
            parts.append(f"storage {self.quant_storage}")
        if self.experts:
            parts.append("MoE experts too")
        return ", ".join(parts)


def problems(cfg: FtkConfig) -> list[tuple[str, str]]:
    """Quantization keys that contradict each other or the adapter, as (key, message); empty when none."""
    found: list[tuple[str, str]] = []
    four, eight = bool(value(cfg, "load_in_4bit")), bool(value(cfg, "load_in_8bit"))
    torchao_section = cfg.section(SECTION) is not None
    if four and eight:
        found.append(("load_in_8bit", "load_in_4bit is true too; choose one"))
    if torchao_section and (four or eight):
        key = "load_in_4bit" if four else "load_in_8bit"
        found.append((SECTION, f"quantizes with torchao, {key} with bitsandbytes; choose one"))
    if not four:
        found += [
            (key, "applies with load_in_4bit: true only")
            for key in BNB_4BIT_KEYS
            if value(cfg, key) is not None
        ]
    if value(cfg, EXPERTS_KEY) and not four:
        found.append((EXPERTS_KEY, "quantizes the MoE experts to 4 bits and needs load_in_4bit: true"))
    storage = value(cfg, "bnb_4bit_quant_storage")
    if value(cfg, EXPERTS_KEY) and four and storage not in (None, "uint8"):
        found.append(
            (
                "bnb_4bit_quant_storage",
                f"{storage} cannot apply with quantize_moe_experts: true, which packs the expert "
                "weights as uint8; remove one of the two keys",
            )
        )
    if cfg.adapter == "qlora" and not four:
        found.append(
            (
                "adapter",
                "qlora is LoRA on a 4-bit base and needs load_in_4bit: true; otherwise set adapter: lora",
            )
        )
    if cfg.adapter is None and (four or eight or torchao_section):
        key = "load_in_4bit" if four else "load_in_8bit" if eight else SECTION
        found.append(
            (
                key,
                "quantized weights cannot be trained, and adapter is not set (full fine-tuning); "
                f"set adapter: {'qlora (or lora)' if four else 'lora'}",
            )
        )
    return found


def resolve(cfg: FtkConfig) -> Quantization | None:
    """What the config asks for, defaults filled in; None when the base is not quantized.

    Meant for configs without :func:`problems` (the loader rejects the others).
    """
    section: QuantizationConfig | None = cfg.section(SECTION)
    if section is not None:
        return Quantization(backend=section.backend, key=f"{SECTION}.method", method=section.method)
    if value(cfg, "load_in_8bit"):
        return Quantization(backend="bitsandbytes", key="load_in_8bit", bits=8)
    if not value(cfg, "load_in_4bit"):
        return None
    precision = "bfloat16" if cfg.bf16 else "float16" if cfg.fp16 else "float32"
    double_quant = value(cfg, "bnb_4bit_use_double_quant")
    return Quantization(
        backend="bitsandbytes",
        key="load_in_4bit",
        bits=4,
        quant_type=value(cfg, "bnb_4bit_quant_type") or "nf4",
        double_quant=True if double_quant is None else double_quant,
        compute_dtype=value(cfg, "bnb_4bit_compute_dtype") or precision,
        quant_storage=value(cfg, "bnb_4bit_quant_storage"),
        experts=bool(value(cfg, EXPERTS_KEY)),
    )


# --- this machine -------------------------------------------------------------------------------


def require_package(package: str, minimum: str, key: str, install: str) -> str:
    """The installed version of ``package``; an FtkError naming ``key`` when it is missing or older than ``minimum``."""
    try:
        installed = version(package)
    except PackageNotFoundError:
        raise FtkError(f"{key}: needs {package}: {install}") from None
    if Version(installed) < Version(minimum):
        raise FtkError(
            f"{key}: needs {package} >= {minimum} (installed: {installed}): pip install -U '{package}>={minimum}'"
        )
    return installed


def check_machine(quant: Quantization) -> None:
    """Raise an FtkError naming the key when this machine cannot load the base as ``quant`` says."""
    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION, TORCHAO_MIN_VERSION

    if quant.backend == "torchao":
        problem = torchao.this_hardware_problem(str(quant.method))
        if problem:
            raise FtkError(f"{quant.key}: {problem}")
        require_package(
            "torchao", TORCHAO_MIN_VERSION, quant.key, TORCHAO_INSTALL.format(version=TORCHAO_MIN_VERSION)
        )
        return
    installed = require_package("bitsandbytes", BITSANDBYTES_MIN_VERSION, quant.key, BNB_INSTALL)
    problem = bnb.device_problem(bnb.supported_devices(), bnb.training_device())
    if problem:
        raise FtkError(f"{quant.key}: bitsandbytes {installed}: {problem}")


def quantization_config(quant: Quantization) -> Any:
    """transformers' quantization config for ``quant``: a ``BitsAndBytesConfig`` or a ``TorchAoConfig``."""
    if quant.backend == "torchao":
        return torchao.torchao_config(str(quant.method))
    if quant.bits == 8:
        return bnb.bnb_config(8)
    return bnb.bnb_config(
        4,
        quant_type=quant.quant_type,
        double_quant=quant.double_quant,
        compute_dtype=quant.compute_dtype,
        quant_storage=quant.quant_storage or "uint8",
    )


# --- hooks --------------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add axolotl's top-level bitsandbytes keys and the ``quantization:`` section (torchao)."""
    register(BNB_SECTION, BnbSettings, flat=True)
    register(SECTION, QuantizationConfig)


@hookimpl
def config_problems(cfg: FtkConfig) -> list[tuple[tuple[str, ...], str]]:
    """Report quantization keys that contradict each other or the adapter when the config is loaded."""
    return [((key,), message) for key, message in problems(cfg)]


def _wanted(cfg: FtkConfig, purpose: str) -> Quantization | None:
    """What ``cfg`` asks for when the model is loaded for ``purpose`` (None for a merge: full precision)."""
    return resolve(cfg) if purpose in CONFIGURED_MODEL else None


@hookimpl
def check_environment(cfg: FtkConfig, purpose: str) -> None:
    """Before any data work: stop when this machine cannot quantize as the config asks."""
    quant = _wanted(cfg, purpose)
    if quant is not None:
        check_machine(quant)


@hookimpl
def model_load_kwargs(cfg: FtkConfig, purpose: str) -> dict[str, Any]:
    """``quantization_config`` for ``from_pretrained`` when the config quantizes the base model."""
    quant = _wanted(cfg, purpose)
    return {} if quant is None else {"quantization_config": quantization_config(quant)}


@hookimpl
def post_model_load(cfg: FtkConfig, model: Any, purpose: str) -> None:
    """Check that the base was loaded quantized, prepare a bitsandbytes base for training, and say how."""
    quant = _wanted(cfg, purpose)
    if quant is None:
        return
    if not getattr(model, "is_quantized", False):
        raise FtkError(
            f"{quant.key}: the base model was loaded unquantized: the plugin that loaded it "
            f"({type(model).__name__}) did not pass on the quantization_config of model_load_kwargs"
        )
    if quant.backend == "bitsandbytes":
        from peft import prepare_model_for_kbit_training

        if value(cfg, EXPERTS_KEY):  # first: the next step casts half precision to float32
            _quantize_experts(cfg, model, quant, purpose)
        # Gradient checkpointing is left to the trainer and the adapter plugin.
        prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    size = model.get_memory_footprint() / 2**20
    say(f"quantization: {quant.describe()}; base model {size:,.1f} MiB")


def _size(count: int) -> str:
    return f"{count / 2**20:,.1f} MiB" if count >= 2**20 else f"{count / 2**10:,.1f} KiB"


def _quantize_experts(cfg: FtkConfig, model: Any, quant: Quantization, purpose: str) -> None:
    """``quantize_moe_experts``: pack the fused expert weights to 4 bits; an FtkError when there are none."""
    done = bnb_experts.quantize_experts(model, quant.quant_type, quant.double_quant)
    if not done.names:
        raise FtkError(
            f"{EXPERTS_KEY}: {type(model).__name__} has no fused expert weights (3-D parameters of "
            "experts modules) to quantize; load_in_4bit already quantizes linear layers, experts "
            f"stored as nn.Linear included: remove {EXPERTS_KEY}"
        )
    double = ", double quant" if quant.double_quant else ""
    say(
        f"quantization: {len(done.names)} fused expert weights to 4-bit {quant.quant_type}{double}: "
        f"{_size(done.bytes_before)} -> {_size(done.bytes_after)}"
    )
    if purpose == "train" and not cfg.gradient_checkpointing:
        say(
            f"quantization: note: {EXPERTS_KEY} without gradient_checkpointing: each MoE layer's "
            "experts, read back at full precision, stay in memory from its forward to its backward"
        )


@hookimpl
def summary_rows(cfg: FtkConfig) -> list[tuple[str, str]]:
    """A ``quantization`` row in the end-of-run summary when the base was quantized."""
    quant = resolve(cfg)
    return [] if quant is None else [("quantization", quant.describe())]
