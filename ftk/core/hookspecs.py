"""The whole extension surface of ftk: every hook a plugin can implement.

Three kinds of hook:

* registration hooks receive a ``register`` callback and call it for each named thing they add;
  a config chooses among them by name (``adapter``, ``optimizer``, ``lr_scheduler``, ``report_to``,
  a dataset's ``type``);
* first-result hooks (``firstresult=True``) stop at the first implementation that returns
  something other than ``None``: return ``None`` to let the next plugin decide;
* contribution hooks are called on every plugin and their results are collected.

Implementations are called newest-registered first (a plugin named in the config's ``plugins:``
list before an installed one, before a built-in), except that ``tryfirst``/``trylast`` on the
``hookimpl`` move one to the front or the back: the built-in defaults are ``trylast``.
Arguments are passed by name; an implementation asks only for the ones it needs.  ``purpose``
says what a command loads the model for: ``validate``, ``preprocess``, ``train``, ``inference``
(eval, generate) or ``merge`` (an adapter into full-precision weights).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback

    from ftk.core.config.rewrite import ConfigRewrite
    from ftk.core.config.schema import FtkConfig
    from ftk.core.data.pipeline import PreparedData
    from ftk.core.lm import LossOutput
    from ftk.core.registry import Register

PROJECT = "ftk"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration -------------------------------------------------------------------------


@hookspec
def register_config_sections(register: Register) -> None:
    """Add config keys: ``register("name", Model)`` for a ``name:`` section, ``flat=True`` for top-level keys."""


@hookspec
def register_prompt_strategies(register: Register) -> None:
    """Add dataset strategies (``type:``): ``register(name, build, options_model)``; ``build(dataset, tokenizer, cfg)`` returns row -> features."""


@hookspec
def register_adapters(register: Register) -> None:
    """Add adapter kinds (``adapter:``): ``register(name, apply)``; ``apply(cfg, model, new_token_ids)`` returns the model to train."""


@hookspec
def register_optimizers(register: Register) -> None:
    """Add optimizers (``optimizer:``): ``register(name, build)``; ``build(cfg, parameter_groups, model)`` returns one."""


@hookspec
def register_schedulers(register: Register) -> None:
    """Add schedules (``lr_scheduler:``): ``register(name, build)``; ``build(cfg, optimizer, num_training_steps, num_warmup_steps)``."""


@hookspec
def register_trackers(register: Register) -> None:
    """Add trackers (``report_to:``): ``register(name, callback, enabled_by=None)``; ``callback(cfg)`` returns a TrainerCallback."""


@hookspec
def register_commands(register: Register) -> None:
    """Add CLI subcommands: ``register(name, help, add_arguments, run)``."""


# --- checking a config --------------------------------------------------------------------


@hookspec
def rewrite_config(rewrite: ConfigRewrite) -> None:
    """Rewrite a config's raw data before validation: rename, set or drop keys with a note,
    report problems, or defer a decision on a key no plugin may define (``ConfigRewrite``).

    Called before the modules of the config's ``plugins:`` list are imported (so a rewrite may
    change that list), for every config ftk reads: another trainer's vocabulary is translated here.
    """


@hookspec
def config_problems(cfg: FtkConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Report problems that involve several keys, as (key path, message); shown like schema errors."""


@hookspec
def check_environment(cfg: FtkConfig, purpose: str) -> None:
    """Raise an FtkError naming the key when this machine cannot do what ``cfg`` asks for ``purpose``.

    For what a config cannot show: a GPU, an installed library, a number of processes.  Every
    command calls it before any data work or model loading.
    """


# --- model loading ------------------------------------------------------------------------


@hookspec(firstresult=True)
def load_tokenizer(cfg: FtkConfig) -> PreTrainedTokenizerBase | None:
    """Load the tokenizer of ``cfg`` (the core then adds ``tokens`` and ``special_tokens``)."""


@hookspec
def pre_model_load(cfg: FtkConfig, purpose: str) -> None:
    """Called before the model is loaded: apply kernel patches here."""


@hookspec
def model_load_kwargs(cfg: FtkConfig, purpose: str) -> dict[str, Any]:
    """Contribute keyword arguments for ``from_pretrained`` (e.g. ``quantization_config``)."""


@hookspec(firstresult=True)
def load_model(
    cfg: FtkConfig, tokenizer: PreTrainedTokenizerBase, load_kwargs: dict[str, Any]
) -> PreTrainedModel | None:
    """Load the base model for ``cfg``, passing on ``load_kwargs`` (from model_load_kwargs)."""


@hookspec
def post_model_load(
    cfg: FtkConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, purpose: str
) -> None:
    """Called after the base model is loaded and before the adapter: modify the model in place."""


# --- training -----------------------------------------------------------------------------


@hookspec
def training_arguments(cfg: FtkConfig) -> dict[str, Any]:
    """Contribute ``transformers.TrainingArguments`` fields (e.g. ``deepspeed``, ``fsdp``); a clash is an error."""


@hookspec(firstresult=True)
def compute_loss(
    cfg: FtkConfig, model: torch.nn.Module, inputs: dict[str, torch.Tensor]
) -> LossOutput | None:
    """Run the forward pass of one micro-batch; return its summed loss and trained-token count.

    The core divides by the trained tokens of the whole optimizer step and adds the router loss
    of mixture-of-experts models (``ftk.core.trainer``); ``inputs`` holds the ``labels``.
    """


@hookspec
def trainer_callbacks(cfg: FtkConfig) -> list[TrainerCallback]:
    """Contribute ``transformers.TrainerCallback`` objects to the run."""


@hookspec
def pre_train(cfg: FtkConfig, trainer: Trainer, model: Any, data: PreparedData) -> None:
    """Called when the trainer is built, before the first step: check settings, print advice."""


@hookspec
def post_train(cfg: FtkConfig, trainer: Trainer, model: Any, tokenizer: PreTrainedTokenizerBase) -> None:
    """Called after training finished and the final model was saved."""


@hookspec
def summary_rows(cfg: FtkConfig, trainer: Trainer) -> list[tuple[str, str]]:
    """Contribute (label, value) rows to the end-of-run summary."""


@hookspec
def run_finished(cfg: FtkConfig, trainer: Trainer, status: str, rows: list[tuple[str, str]]) -> None:
    """Called when a run ends, finished or stopped early, with every summary row: write reports here."""
