"""Typed calls of the hooks in ``hookspecs``: what the core calls, checked by the type checker.

Each method calls every implementation as pluggy does and gives back one typed value:
contribution hooks' lists are flattened, their dicts merged (two plugins giving one key
different values is an error).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftk.core.registry import merge_contributions

if TYPE_CHECKING:
    import pluggy
    import torch
    from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback

    from ftk.core.config.rewrite import ConfigRewrite
    from ftk.core.config.schema import FtkConfig
    from ftk.core.data.pipeline import PreparedData
    from ftk.core.lm import LossOutput

Problem = tuple[tuple[str | int, ...], str]
Row = tuple[str, str]


class Hooks:
    """The core's view of the plugins: one method per non-registration hook."""

    def __init__(self, relay: pluggy.HookRelay) -> None:
        self._relay = relay

    def rewrite_config(self, rewrite: ConfigRewrite) -> None:
        """Let every plugin rewrite the raw config data in ``rewrite`` before validation."""
        self._relay.rewrite_config(rewrite=rewrite)

    def config_problems(self, cfg: FtkConfig) -> list[Problem]:
        """Every plugin's problems with ``cfg`` as (key path, message)."""
        return [
            (tuple(loc), message)
            for group in self._relay.config_problems(cfg=cfg)
            for loc, message in group or []
        ]

    def check_environment(self, cfg: FtkConfig, purpose: str) -> None:
        """Raise the first plugin's FtkError when this machine cannot do ``purpose``."""
        self._relay.check_environment(cfg=cfg, purpose=purpose)

    def load_tokenizer(self, cfg: FtkConfig) -> PreTrainedTokenizerBase | None:
        """The first tokenizer a plugin loads."""
        return self._relay.load_tokenizer(cfg=cfg)

    def pre_model_load(self, cfg: FtkConfig, purpose: str) -> None:
        """Let plugins prepare (patch kernels) before the model is built."""
        self._relay.pre_model_load(cfg=cfg, purpose=purpose)

    def model_load_kwargs(self, cfg: FtkConfig, purpose: str) -> dict[str, Any]:
        """The ``from_pretrained`` keyword arguments every plugin contributes, merged."""
        return merge_contributions(
            self._relay.model_load_kwargs(cfg=cfg, purpose=purpose), "model loading argument"
        )

    def load_model(
        self, cfg: FtkConfig, tokenizer: PreTrainedTokenizerBase, load_kwargs: dict[str, Any]
    ) -> Any:
        """The first model a plugin loads (None when none does)."""
        return self._relay.load_model(cfg=cfg, tokenizer=tokenizer, load_kwargs=load_kwargs)

    def post_model_load(
        self, cfg: FtkConfig, model: Any, tokenizer: PreTrainedTokenizerBase, purpose: str
    ) -> None:
        """Let plugins change the loaded base model in place."""
        self._relay.post_model_load(cfg=cfg, model=model, tokenizer=tokenizer, purpose=purpose)

    def training_arguments(self, cfg: FtkConfig) -> dict[str, Any]:
        """The TrainingArguments fields every plugin contributes, merged."""
        return merge_contributions(self._relay.training_arguments(cfg=cfg), "training argument")

    def compute_loss(
        self, cfg: FtkConfig, model: torch.nn.Module, inputs: dict[str, torch.Tensor]
    ) -> LossOutput | None:
        """The first plugin's summed loss of a micro-batch."""
        return self._relay.compute_loss(cfg=cfg, model=model, inputs=inputs)

    def trainer_callbacks(self, cfg: FtkConfig) -> list[TrainerCallback]:
        """Every plugin's trainer callbacks, in one list."""
        return [callback for group in self._relay.trainer_callbacks(cfg=cfg) for callback in group or []]

    def pre_train(self, cfg: FtkConfig, trainer: Trainer, model: Any, data: PreparedData) -> None:
        """Tell plugins the trainer is built, before the first step."""
        self._relay.pre_train(cfg=cfg, trainer=trainer, model=model, data=data)

    def post_train(
        self, cfg: FtkConfig, trainer: Trainer, model: Any, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        """Tell plugins the final model is saved."""
        self._relay.post_train(cfg=cfg, trainer=trainer, model=model, tokenizer=tokenizer)

    def summary_rows(self, cfg: FtkConfig, trainer: Trainer) -> list[Row]:
        """Every plugin's summary rows, in one list."""
        return [
            (str(a), str(b))
            for group in self._relay.summary_rows(cfg=cfg, trainer=trainer)
            for a, b in group or []
        ]

    def run_finished(self, cfg: FtkConfig, trainer: Trainer, status: str, rows: list[Row]) -> None:
        """Tell plugins the run ended, with how and the summary rows."""
        self._relay.run_finished(cfg=cfg, trainer=trainer, status=status, rows=rows)
