"""The whole extension surface of ftk: every hook a plugin can implement.

Three kinds of hook:

* registration hooks receive a ``register`` callback and call it for each thing they add;
* first-result hooks (``firstresult=True``) stop at the first implementation that returns
  something other than ``None``: return ``None`` to let the next plugin decide;
* contribution hooks are called on every plugin and their results are collected.

Implementations are called newest-registered first, so a plugin named in the config's
``plugins:`` list overrides an installed one, which overrides a built-in.  Arguments are
passed by name; an implementation asks only for the ones it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback

    from ftk.core.config.schema import FtkConfig
    from ftk.core.data.pipeline import PreparedData
    from ftk.core.registry import CommandRegistrar, SectionRegistrar, StrategyRegistrar
    from ftk.core.step_metrics import StepMetrics

PROJECT = "ftk"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration -------------------------------------------------------------------------


@hookspec
def register_config_sections(register: SectionRegistrar) -> None:
    """Add top-level config sections: ``register("name", PydanticModel)``; validated like the rest."""


@hookspec
def config_problems(cfg: FtkConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Report problems that involve several keys, as (key path, message); shown like schema errors."""


@hookspec
def check_environment(cfg: FtkConfig) -> None:
    """Raise an FtkError naming the key when this machine cannot run what ``cfg`` asks for.

    For what a config cannot show: a GPU, an installed library, a compute capability, a number
    of processes.  ``ftk train`` calls it first, before any data is prepared, so that a run that
    cannot start fails at once rather than after the preprocessing.
    """


@hookspec
def register_prompt_strategies(register: StrategyRegistrar) -> None:
    """Add dataset strategies usable as ``type:``: ``register("name", build, options_model)``."""


@hookspec
def register_commands(register: CommandRegistrar) -> None:
    """Add CLI subcommands: ``register(name, help, add_arguments, run)``."""


# --- model loading ------------------------------------------------------------------------


@hookspec(firstresult=True)
def load_tokenizer(cfg: FtkConfig) -> PreTrainedTokenizerBase | None:
    """Load the tokenizer for ``cfg``; the first non-None result is used."""


@hookspec
def pre_model_load(cfg: FtkConfig) -> None:
    """Called before the model is loaded: apply kernel patches or environment setup here."""


@hookspec
def model_load_kwargs(cfg: FtkConfig) -> dict[str, Any]:
    """Contribute keyword arguments for ``from_pretrained`` (e.g. ``quantization_config``, ``device_map``)."""


@hookspec(firstresult=True)
def load_model(
    cfg: FtkConfig, tokenizer: PreTrainedTokenizerBase, load_kwargs: dict[str, Any]
) -> PreTrainedModel | None:
    """Load the base model for ``cfg`` (passing on ``load_kwargs``, from model_load_kwargs); first non-None wins."""


@hookspec
def post_model_load(cfg: FtkConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Called after the base model is loaded and before the adapter: modify the model in place."""


@hookspec(firstresult=True)
def apply_adapter(cfg: FtkConfig, model: PreTrainedModel) -> Any | None:
    """Wrap ``model`` with the adapter ``cfg.adapter`` names; return the model to train, or None."""


# --- training -----------------------------------------------------------------------------


@hookspec
def training_arguments(cfg: FtkConfig) -> dict[str, Any]:
    """Contribute ``transformers.TrainingArguments`` fields (e.g. ``deepspeed``, ``fsdp``); a clash is an error."""


@hookspec(firstresult=True)
def create_optimizer(cfg: FtkConfig, model: torch.nn.Module) -> torch.optim.Optimizer | None:
    """Build the optimizer for the trainable parameters of ``model``; first non-None wins."""


@hookspec(firstresult=True)
def create_scheduler(
    cfg: FtkConfig, optimizer: torch.optim.Optimizer, num_training_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Build the learning-rate scheduler for ``optimizer``; first non-None wins."""


@hookspec(firstresult=True)
def compute_loss(
    cfg: FtkConfig,
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    num_items_in_batch: torch.Tensor | int | None,
    metrics: StepMetrics,
) -> torch.Tensor | None:
    """Run the forward pass and return the loss of one micro-batch, normalised by ``num_items_in_batch``.

    ``metrics.add(name, value)`` reports extra scalars (e.g. a router loss), averaged into the logs.
    """


@hookspec
def trainer_callbacks(cfg: FtkConfig) -> list[TrainerCallback]:
    """Contribute ``transformers.TrainerCallback`` objects to the run."""


@hookspec
def pre_train(cfg: FtkConfig, trainer: Trainer, model: Any, data: PreparedData) -> None:
    """Called when the trainer is built, before the first step: check settings, print advice."""


@hookspec
def summary_rows(cfg: FtkConfig, trainer: Trainer) -> list[tuple[str, str]]:
    """Contribute (label, value) rows to the end-of-run summary table (printed and in summary.md)."""


@hookspec
def post_train(cfg: FtkConfig, trainer: Trainer, model: Any, tokenizer: PreTrainedTokenizerBase) -> None:
    """Called after training finished and the final model was saved."""


@hookspec
def run_finished(cfg: FtkConfig, trainer: Trainer, status: str) -> None:
    """Called when a run ends, finished or stopped early (signal, divergence): write reports here."""
