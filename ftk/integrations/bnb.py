"""bitsandbytes: the ``BitsAndBytesConfig`` of a run, and the devices the installed version runs on.

transformers 5 loads bitsandbytes 0.46.1 or newer only.  From that version on, bitsandbytes
ships a CPU backend in its ordinary wheel (PyTorch custom ops, no CUDA needed): 4-bit (nf4 and
fp4, with or without double quantization) and 8-bit (LLM.int8) layers run forward and backward
on CPU, so LoRA trains on a quantized base without a GPU, only slower.  In 0.45 the ordinary
wheel's 4-bit and 8-bit layers need a GPU ("Device type not supported for FP4 quantization: cpu").
The module ``bitsandbytes`` itself is imported only when a function here needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig


def bnb_config(
    bits: int,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: str = "float32",
    quant_storage: str = "uint8",
) -> BitsAndBytesConfig:
    """transformers' ``BitsAndBytesConfig`` for 4-bit (with the ``bnb_4bit_*`` settings) or 8-bit weights."""
    import torch
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if bits != 4:
        raise ValueError(f"bitsandbytes quantizes to 4 or 8 bits, not {bits}")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
        bnb_4bit_quant_storage=getattr(torch, quant_storage),
    )


def training_device() -> str:
    """The kind of device this process trains on: ``cuda``, ``xpu`` or ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "xpu"
    return "cpu"


def supported_devices() -> set[str]:
    """The device kinds the installed bitsandbytes has kernels for (imports bitsandbytes)."""
    import bitsandbytes

    return set(getattr(bitsandbytes, "supported_torch_devices", {"cuda"}))


def device_problem(supported: Iterable[str], device: str) -> str | None:
    """Why bitsandbytes cannot quantize on ``device`` given the kinds it ``supported``, or None when it can."""
    kinds = sorted(supported)
    if device in kinds:
        return None
    where = "a CUDA GPU" if kinds == ["cuda"] else "one of: " + ", ".join(kinds)
    return f"this bitsandbytes has no kernels for {device} (it needs {where})"
