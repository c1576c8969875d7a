"""torchao: the ``TorchAoConfig`` of a quantization method, and the hardware each method needs.

What each method needs (tried with torchao 0.18, transformers 5.23 and peft 0.21):

* ``int8_weight_only``: int8 weights with per-row scales; runs and trains on CPU too.
* ``float8_weight_only``: float8 (e4m3) weights, dequantized for each matmul; runs and trains on
  CPU too (it saves memory, not time).
* ``float8_dynamic_activation_float8_weight``: float8 weights and activations, float8 matmuls;
  torchao refuses to quantize anywhere but on a CUDA GPU of compute capability 8.9 or newer
  (Ada, Hopper, Blackwell), an AMD MI300 or newer, or an Intel XPU.

peft wraps torchao's weights in its own LoRA layer (``peft.tuners.lora.torchao``; tried with the
two weight-only methods, on CPU); transformers lets a torchao model be trained only with an adapter.  The module ``torchao`` itself is imported only when
:func:`torchao_config` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import TorchAoConfig

#: ftk's method names -> torchao's config classes (in ``torchao.quantization``).
METHODS: dict[str, str] = {
    "int8_weight_only": "Int8WeightOnlyConfig",
    "float8_weight_only": "Float8WeightOnlyConfig",
    "float8_dynamic_activation_float8_weight": "Float8DynamicActivationFloat8WeightConfig",
}
#: Methods with float8 matmuls, and the CUDA compute capability they need.
FLOAT8_MATMUL_METHODS = ("float8_dynamic_activation_float8_weight",)
FLOAT8_MIN_CAPABILITY = (8, 9)


def torchao_config(method: str) -> TorchAoConfig:
    """transformers' ``TorchAoConfig`` for ``method`` (a key of :data:`METHODS`), with torchao's defaults."""
    import torchao.quantization
    from transformers import TorchAoConfig

    return TorchAoConfig(quant_type=getattr(torchao.quantization, METHODS[method])())


def cuda_capability() -> tuple[int, int] | None:
    """The compute capability of this process's CUDA GPU, or None without one (ROCm counts as none)."""
    import torch

    if not torch.cuda.is_available() or torch.version.cuda is None:
        return None
    major, minor = torch.cuda.get_device_capability()
    return major, minor


def hardware_problem(method: str, capability: tuple[int, int] | None, rocm: bool, xpu: bool) -> str | None:
    """Why ``method`` cannot run on this hardware, or None when it can (or when torchao decides: ROCm).

    ``capability`` is the CUDA compute capability (None without a CUDA GPU).
    """
    if method not in FLOAT8_MATMUL_METHODS or rocm or xpu:
        return None
    if capability is not None and capability >= FLOAT8_MIN_CAPABILITY:
        return None
    needed = ".".join(map(str, FLOAT8_MIN_CAPABILITY))
    found = f"this GPU has {capability[0]}.{capability[1]}" if capability else "there is none"
    return (
        f"{method} needs a CUDA GPU of compute capability {needed} or newer "
        f"(Ada, Hopper, Blackwell) and {found}; use float8_weight_only or int8_weight_only"
    )


def this_hardware_problem(method: str) -> str | None:
    """:func:`hardware_problem` for the hardware this process runs on."""
    import torch

    xpu = getattr(torch, "xpu", None)
    return hardware_problem(
        method,
        cuda_capability(),
        rocm=torch.cuda.is_available() and torch.version.hip is not None,
        xpu=xpu is not None and xpu.is_available(),
    )
