"""The ``fake_quant_after_n_steps`` switch: a transformers callback (imported only when training)."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ftk.core.errors import say
from ftk.plugins.qat import set_fake_quantization


class FakeQuantAfterSteps(TrainerCallback):
    """``fake_quant_after_n_steps``: fake quantization off for the first ``steps`` optimizer steps."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.enabled: bool | None = None

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Before each step (and after a resume): on from global step ``steps``, off before."""
        wanted = state.global_step >= self.steps
        if model is not None and wanted != self.enabled:
            set_fake_quantization(model, wanted)
            self.enabled = wanted
            if wanted and state.global_step > 0:
                say(f"qat: fake quantization on from step {state.global_step + 1}")
