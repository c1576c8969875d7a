"""Built-in plugin: the training-health advisor.

It checks the settings before training, watches the logs during it, judges the whole run's
history at its end (after a resume: ``metrics.jsonl`` up to the resumed step, then this session's
logs) and adds a diagnosis to the summary; the rules and thresholds are in ``rules.py``.
``advisor: {enabled: false}`` turns it off, ``advisor: {ignore: [rule, ...]}`` silences single
rules (``docs/training.md``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator
from rich.console import Console
from rich.text import Text

from ftk.core.callbacks import TrainerCallback
from ftk.core.config.schema import FtkConfig, StrictModel
from ftk.core.hookspecs import hookimpl

from .rules import RULE_NAMES, RULES, Finding, RunFacts, TrainingWatch, evaluate, loss_text, lr_text

if TYPE_CHECKING:
    from transformers import Trainer

    from ftk.core.data.pipeline import PreparedData
    from ftk.core.registry import Register

SECTION = "advisor"
#: The log the metrics_log plugin keeps in output_dir, one JSON object per logged step; a resumed
#: run reads the earlier steps from it.
METRICS_FILE = "metrics.jsonl"

# --- config section ---------------------------------------------------------------------------


class AdvisorConfig(StrictModel):
    """The ``advisor:`` section."""

    enabled: bool = Field(True, description="Check settings before training and watch training health.")
    ignore: list[str] = Field(
        default_factory=list, description="Rule names to silence (see ftk/plugins/advisor/rules.py)."
    )

    @field_validator("ignore")
    @classmethod
    def _known_rules(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in RULE_NAMES]
        if unknown:
            raise ValueError(f"unknown rule {unknown[0]!r}; rules: {', '.join(RULE_NAMES)}")
        return names


def advisor_settings(cfg: FtkConfig) -> AdvisorConfig:
    """The config's ``advisor:`` section, or the defaults when it is absent."""
    return cfg.section(SECTION) or AdvisorConfig()


# --- the callback: watches training, keeps every finding ----------------------------------------


class AdvisorCallback(TrainerCallback):
    """Checks each log entry against the during-training rules and keeps every finding.

    ``findings`` holds all of them (settings checks included, see ``check_settings``; the end
    rules at train end, see ``finish``); each rule is printed the first time it fires only.
    ``moe`` and the vocabulary size are read from the model at train start when the Trainer
    passes one.  A resumed run first replays the earlier steps (``earlier_history``), silently,
    so that the rules and the diagnosis judge the whole run.
    """

    def __init__(
        self, console: Console | None = None, ignore: tuple[str, ...] = (), moe: bool = False
    ) -> None:
        self.console = console or Console(stderr=True)
        self.ignore = tuple(ignore)
        self.moe = moe
        self.show = True
        self.facts: RunFacts | None = None
        self.findings: list[Finding] = []
        self.watch = TrainingWatch(moe=moe)
        self._printed: set[str] = set()
        self._finished = False

    def _report(self, findings: list[Finding]) -> None:
        for finding in findings:
            self.findings.append(finding)
            if self.show and finding.rule not in self._printed:
                self._printed.add(finding.rule)
                self.console.print(Text.assemble(("advisor: ", "bold yellow"), finding.text), soft_wrap=True)

    def check_settings(self, facts: RunFacts, show: bool = True) -> list[Finding]:
        """Run the before-training rules on ``facts``, print and keep the findings; returns them.

        The facts stay with the callback: the training rules name causes from them.
        """
        self.show = show
        self.facts = facts
        self.watch.facts = facts
        findings = evaluate("before", facts, self.ignore)
        self._report(findings)
        return findings

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.show = state.is_world_process_zero
        if model is not None:
            self.moe = is_moe(model)
        self.watch = TrainingWatch(
            learning_rate=args.learning_rate,
            max_grad_norm=args.max_grad_norm,
            moe=self.moe,
            facts=self.facts,
            vocab_size=output_size(model) if model is not None else None,
        )
        self._finished = False
        if state.global_step > 0:  # resumed: the earlier steps count, but were printed back then
            show, self.show = self.show, False
            for entry in earlier_history(args.output_dir, state):
                self._observe(int(entry["step"]), entry)
            self.show = show

    def _observe(self, step: int, logs: dict[str, Any]) -> None:
        if self.watch.record(step, logs):
            self._report(evaluate("during", self.watch, self.ignore))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self._observe(state.global_step, logs)

    def on_train_end(self, args, state, control, **kwargs):
        self.finish()

    def finish(self) -> list[Finding]:
        """Run the end rules on the whole run's history, once; print and keep the findings."""
        if self._finished:
            return []
        self._finished = True
        findings = evaluate("end", self.watch, self.ignore) if self.watch.losses else []
        self._report(findings)
        return findings

    def diagnosis(self) -> list[tuple[str, str]]:
        """Summary rows: one per rule that fired, with its advice, or a "healthy" line for training."""
        self.finish()
        rows = []
        for rule in RULES:
            fired = [finding for finding in self.findings if finding.rule == rule.name]
            if not fired:
                continue
            if rule.phase == "before":
                rows.append((SECTION, f"{rule.label}: {fired[0].advice}"))
            elif rule.phase == "end":
                rows.append((SECTION, fired[0].text))
            elif rule.verdict is not None:
                rows.append((SECTION, rule.verdict(self.watch)))
            else:
                steps = [finding.step for finding in fired]
                shown = ", ".join(str(step) for step in steps[:5]) + (", ..." if len(steps) > 5 else "")
                where = f"at step {steps[0]}" if len(steps) == 1 else f"at {len(steps)} steps ({shown})"
                if len(steps) == 1 and fired[0].note:
                    where += f" ({fired[0].note})"
                rows.append((SECTION, f"{rule.label} {where}: {fired[0].advice}"))
        if not any(finding.step is not None for finding in self.findings):
            rows.append((SECTION, self._health_line()))
        return rows

    def _health_line(self) -> str:
        trend = self.watch.loss_trend()
        if trend is None:
            return "no training steps logged"
        if len(self.watch.losses) == 1:
            return f"one training loss logged ({loss_text(trend[0])}): too few to judge"
        first, last = trend
        if last < first:
            return f"healthy: loss fell {first:.4g} → {last:.4g}, no spikes"
        return (
            f"no training alerts, but the loss did not fall: {first:.4g} → {last:.4g}; raise learning_rate "
            f"(now {lr_text(self.watch.learning_rate)}) or check which tokens are trained (ftk preprocess --debug)"
        )


def earlier_history(output_dir: str, state: Any) -> list[dict[str, Any]]:
    """The log entries of a resumed run's earlier sessions, up to the step it resumes from.

    From ``metrics.jsonl`` in ``output_dir`` (entries the interrupted session logged after the
    checkpoint are left out), or from the checkpoint's ``log_history`` when that file is missing.
    """
    entries: list[dict[str, Any]] = []
    path = Path(output_dir) / METRICS_FILE
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("step"), int | float):
                entries.append(entry)
    if not entries:
        entries = [entry for entry in state.log_history if isinstance(entry.get("step"), int | float)]
    return [entry for entry in entries if entry["step"] <= state.global_step]


def find_callback(trainer: Trainer) -> AdvisorCallback | None:
    """The advisor's callback among the trainer's callbacks (None when it was not added)."""
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, AdvisorCallback)), None)


# --- facts from a real run --------------------------------------------------------------------

EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def is_moe(model: Any) -> bool:
    """Whether the model's config (or its text config) declares more than one expert."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    configs = [config]
    if hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for candidate in configs:
        for key in EXPERT_COUNT_KEYS:
            value = getattr(candidate, key, None)
            if isinstance(value, int) and value > 1:
                return True
    return False


def output_size(model: Any) -> int | None:
    """Rows of the output head (the size of the predicted distribution), else the config's vocab_size."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None and weight.ndim == 2 and weight.shape[0] > 0:  # not a sharded stand-in
        return int(weight.shape[0])
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "vocab_size", None)
    return size if isinstance(size, int) else None


def count_parameters(model: Any) -> int:
    """All parameters of the model, frozen ones included (shared tensors counted once)."""
    return sum(param.numel() for param in model.parameters())


def optimizer_steps(
    batches_per_epoch: int | None, gradient_accumulation_steps: int, num_epochs: float, max_steps: int
) -> tuple[int, int | None]:
    """(optimizer steps of the run, steps per epoch) the way ``transformers.Trainer`` counts them.

    An epoch's last partial accumulation still makes a step; ``max_steps`` > 0 wins over epochs.
    """
    per_epoch = None
    if batches_per_epoch is not None:
        per_epoch = max(math.ceil(batches_per_epoch / gradient_accumulation_steps), 1)
    if max_steps > 0:
        return max_steps, per_epoch
    if per_epoch is None:
        raise ValueError("the number of steps is unknown: no dataloader length and no max_steps")
    return math.ceil(num_epochs * per_epoch), per_epoch


def gather_facts(cfg: FtkConfig, trainer: Trainer, model: Any, data: PreparedData) -> RunFacts:
    """What the before-training rules need, from the built trainer, the model and the prepared data."""
    args = trainer.args
    try:
        # Trainer builds its own loader again at train start (after clearing accelerate's list of
        # prepared loaders); building one consumes no random numbers.
        batches: int | None = len(trainer.get_train_dataloader())
    except TypeError:  # an iterable dataset has no length
        batches = None
    num_steps, per_epoch = optimizer_steps(
        batches, args.gradient_accumulation_steps, args.num_train_epochs, args.max_steps
    )
    train = data.train
    longest = None
    if "length" in train.column_names and len(train):
        from ftk.core.data.columns import column_array  # one arrow read, not a Python object per row

        longest = int(column_array(train, "length").max())
    return RunFacts.from_config(
        cfg,
        num_params=count_parameters(model),
        moe=is_moe(model),
        num_steps=num_steps,
        train_rows=len(train),
        epochs=num_steps / per_epoch if per_epoch else cfg.num_epochs,
        world_size=args.world_size,
        longest_example=longest,
        rows_read=sum(source.rows for source in data.sources),
        rows_over_length=sum(source.too_long + source.truncated for source in data.sources),
        has_eval=data.eval is not None,
    )


# --- hooks ------------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add the ``advisor:`` section."""
    register(SECTION, AdvisorConfig)


@hookimpl
def trainer_callbacks(cfg: FtkConfig) -> list[TrainerCallback]:
    """Contribute the callback that watches training (none when the advisor is off)."""
    settings = advisor_settings(cfg)
    return [AdvisorCallback(ignore=tuple(settings.ignore))] if settings.enabled else []


@hookimpl
def pre_train(cfg: FtkConfig, trainer: Trainer, model: Any, data: PreparedData) -> None:
    """Warn about settings outside the recommended ranges, before step 1 (main process only)."""
    settings = advisor_settings(cfg)
    if not settings.enabled:
        return
    advisor = find_callback(trainer) or AdvisorCallback(ignore=tuple(settings.ignore))
    advisor.check_settings(gather_facts(cfg, trainer, model, data), show=trainer.args.process_index == 0)


@hookimpl
def summary_rows(cfg: FtkConfig, trainer: Trainer) -> list[tuple[str, str]]:
    """The diagnosis: one row per problem with the change to make, or a "healthy" row."""
    if not advisor_settings(cfg).enabled:
        return []
    advisor = find_callback(trainer)
    return advisor.diagnosis() if advisor is not None else []
