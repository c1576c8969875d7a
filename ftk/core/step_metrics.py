"""Extra scalars that plugins report during training, averaged into each log entry."""

from __future__ import annotations

import torch


class StepMetrics:
    """Running sums of named scalars (kept on the device, so adding one never waits for the GPU).

    The loss hook receives one as ``metrics``; ``add("router_aux_loss", aux)`` on every micro-batch
    makes the next log entry carry the mean of the values added since the previous one.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        """Add one observation of ``name`` (a scalar tensor is detached, not synchronised)."""
        tensor = value.detach().float().reshape(()) if torch.is_tensor(value) else torch.tensor(float(value))
        previous = self._sums.get(name)
        self._sums[name] = tensor if previous is None else previous + tensor.to(previous.device)
        self._counts[name] = self._counts.get(name, 0) + 1

    def pop_means(self) -> dict[str, float]:
        """The mean of each scalar since the last call, and reset."""
        means = {name: float(total) / self._counts[name] for name, total in self._sums.items()}
        self._sums.clear()
        self._counts.clear()
        return means
