"""Everything ftk asks of liger-kernel: checks, its per-family patch functions, and its fused loss.

Liger ships one ``apply_liger_kernel_to_<family>`` function per model family (listed in
``liger_kernel.transformers.monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN``).  Called before the model
is built, each one replaces attributes of transformers' modeling module for that family (the
RMSNorm and MLP classes, ``apply_rotary_pos_emb``) and, for ``cross_entropy``, the process-wide
``torch.nn.functional.cross_entropy``.  Those are the only patches ftk makes, and only through
these functions.  Liger's ``fused_linear_cross_entropy`` patch (a replacement ``forward`` that
computes its own loss) is never used: ftk computes the fused loss in its loss hook instead, with
:func:`fused_linear_cross_entropy`.

Liger offers no way to undo its patches, so a process keeps the kernels it applied first; a later
run in the same process that asks for different ones is refused (:func:`patch_conflict`) rather
than silently trained with the earlier choice.

Nothing here imports liger-kernel at module import time: it needs Triton, which needs a GPU.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ftk.core.errors import FtkError

if TYPE_CHECKING:
    import torch

#: The kernel switches ftk passes to Liger's patch functions (config key -> the keyword arguments
#: it sets; the GLU switch is ``swiglu`` in most families and ``geglu`` in the Gemma ones).
PATCH_PARAMETERS: dict[str, tuple[str, ...]] = {
    "liger_rope": ("rope",),
    "liger_rms_norm": ("rms_norm",),
    "liger_glu_activation": ("swiglu", "geglu"),
    "liger_layer_norm": ("layer_norm",),
    "liger_cross_entropy": ("cross_entropy",),
}

#: Liger's own fused-loss switch; always passed as False (ftk's loss hook fuses instead).
LIGER_FUSED_PARAMETER = "fused_linear_cross_entropy"

#: Kernels applied in this process: model type -> the keyword arguments its patch function got.
_APPLIED: dict[str, dict[str, bool]] = {}


def runtime_problem(gpu: bool, liger_installed: bool, triton_installed: bool) -> str | None:
    """Why Liger's kernels cannot run with this hardware and these packages, or None when they can."""
    if not gpu:
        return (
            "Liger's kernels need a GPU (CUDA, ROCm or Intel XPU) and this machine has none; "
            "remove the liger_* keys to train here"
        )
    if not liger_installed:
        return "liger-kernel is not installed: pip install 'ftk[liger]'"
    if not triton_installed:
        return "Triton is not installed (Liger's kernels are written in it): pip install triton"
    return None


def gpu_available() -> bool:
    """Whether torch sees a GPU that Liger has kernels for (CUDA and ROCm builds, Intel XPU)."""
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


def environment_problem() -> str | None:
    """:func:`runtime_problem` for this machine and this Python environment."""
    return runtime_problem(
        gpu=gpu_available(),
        liger_installed=importlib.util.find_spec("liger_kernel") is not None,
        triton_installed=importlib.util.find_spec("triton") is not None,
    )


def _import_failure(key: str, exc: Exception) -> FtkError:
    return FtkError(f"{key}: liger-kernel failed to import: {type(exc).__name__}: {exc}")


def patch_functions(key: str) -> dict[str, Callable[..., None]]:
    """Liger's patch function for each model type it supports; ``key`` is named if the import fails."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception as exc:  # an ImportError, or Liger refusing this transformers version
        raise _import_failure(key, exc) from exc
    return dict(MODEL_TYPE_TO_APPLY_LIGER_FN)


def patch_function(key: str, model_type: str, functions: Mapping[str, Callable[..., None]]) -> Callable:
    """The patch function for ``model_type``; an error naming ``key`` and the supported types if none."""
    function = functions.get(model_type)
    if function is None:
        raise FtkError(
            f"{key}: Liger has no kernels for {model_type!r} models; "
            f"it supports: {', '.join(sorted(functions))}"
        )
    return function


def parameter_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The keyword arguments of a Liger patch function and their defaults."""
    return {name: parameter.default for name, parameter in inspect.signature(function).parameters.items()}


def patch_arguments(
    switches: Mapping[str, bool], parameters: Mapping[str, Any], model_type: str
) -> dict[str, bool]:
    """The keyword arguments for a Liger patch function with ``parameters``, from ftk's kernel switches.

    Every kernel switch the function has is passed explicitly (Liger's defaults turn most kernels
    on), Liger's own fused loss is always off, and so is any other kernel switch this version of
    ftk does not know.  A switch that is on but that the function lacks is an error naming it.
    """
    arguments: dict[str, bool] = {}
    for key, names in PATCH_PARAMETERS.items():
        present = [name for name in names if name in parameters]
        if switches.get(key) and not present:
            available = [k for k, n in PATCH_PARAMETERS.items() if any(name in parameters for name in n)]
            raise FtkError(
                f"{key}: Liger has no such kernel for {model_type!r} models "
                f"(its kernels for them: {', '.join(available) or 'none'})"
            )
        for name in present:
            arguments[name] = bool(switches.get(key))
    for name, default in parameters.items():
        if name not in arguments and isinstance(default, bool):
            arguments[name] = False  # includes fused_linear_cross_entropy
    return arguments


def applied_patches() -> dict[str, dict[str, bool]]:
    """The kernels applied in this process so far (model type -> patch-function arguments)."""
    return {model_type: dict(arguments) for model_type, arguments in _APPLIED.items()}


def patch_conflict(
    applied: Mapping[str, Mapping[str, bool]], model_type: str, arguments: Mapping[str, bool]
) -> str | None:
    """Why a run on ``model_type`` that wants ``arguments`` ({} for no kernels) cannot run in a process
    where ``applied`` kernels are in place, or None when it can.

    A family already patched must get exactly the same arguments again; Liger's cross-entropy
    replaces ``torch.nn.functional.cross_entropy`` for every family, so once applied every later
    run must ask for it too.
    """
    earlier = applied.get(model_type)
    wants = {name: on for name, on in arguments.items() if on}
    if earlier is not None and {name: on for name, on in earlier.items() if on} != wants:
        return (
            f"an earlier run in this process applied Liger's kernels to {model_type!r} models "
            f"({', '.join(name for name, on in earlier.items() if on)}), and they cannot be removed "
            "or changed: run this config in a new process"
        )
    if any(patch.get("cross_entropy") for patch in applied.values()) and not wants.get("cross_entropy"):
        return (
            "an earlier run in this process replaced torch's cross_entropy with Liger's, and that "
            "cannot be undone: run this config in a new process"
        )
    return None


def apply_patches(model_type: str, function: Callable[..., None], arguments: Mapping[str, bool]) -> None:
    """Call Liger's patch function for ``model_type`` (once per process) and remember what it got."""
    if model_type in _APPLIED:
        return  # patch_conflict has checked that the arguments are the same
    function(**arguments)
    _APPLIED[model_type] = dict(arguments)


def check_fused_kernel(key: str) -> None:
    """Import Liger's fused linear cross-entropy now, so that a broken install fails before training."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy  # noqa: F401
    except Exception as exc:
        raise _import_failure(key, exc) from exc


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T + bias`` against ``targets``, never materialising
    the logits: Liger computes them chunk by chunk and keeps only the gradients.

    ``hidden`` is (tokens, hidden size), ``targets`` (tokens,) with -100 ignored; ``softcap`` applies
    ``softcap * tanh(logits / softcap)`` first (Gemma 2 and 3).
    """
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(
        hidden, weight, targets, bias=bias, ignore_index=-100, reduction="sum", softcap=softcap
    )
