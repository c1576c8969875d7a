"""ftk against TRL's SFTTrainer and a plain transformers Trainer: the same LoRA run on CPU.

Every setup trains the same model on the same rows with the same sequence length, LoRA settings,
optimizer, learning-rate schedule, number of optimizer steps and micro-batch size, and computes
the loss on assistant turns only (each turn's content and its ``<|im_end|>``):

* ``ftk-padded`` / ``ftk-packed``: ``run_training`` with a config (``sample_packing`` off / on);
* ``trl-padded`` / ``trl-packed``: ``trl.SFTTrainer`` with ``SFTConfig(assistant_only_loss=True,
  packing=...)``; packing uses TRL's default best-fit-decreasing strategy, which is padding-free;
* ``hf-padded``: ``transformers.Trainer`` on rows tokenized by ``apply_chat_template`` (assistant
  mask from the template's ``{% generation %}`` markers), padded by ``DataCollatorForSeq2Seq``.
* ``ftk-padded-unchunked`` / ``ftk-packed-unchunked`` (only when named in ``--setups``): ftk with
  ``chunked_cross_entropy: false``, to measure what the default chunked loss changes.

Rows longer than ``--sequence-len`` are removed before any setup sees the data, so no setup drops
or truncates anything. Each run is a fresh Python process (so peak RSS and allocator state are
its own) with ``torch.set_num_threads(--threads)``. Setups alternate within each repeat, so
machine noise hits them alike; the table shows medians over repeats.

    python bench/compare_trainers.py [--model models/tiny] [--steps 30] [--repeats 2]

Measured per run: data preparation (tokenizer load, tokenization, masking, packing), training wall
time of steps 2 to N (forward, backward, optimizer, data loading; the first step, which also pays
one-time costs, is timed apart), and over those steps: real tokens
(not padding), trained tokens (positions with a loss), token slots (including padding), peak RSS
of the process, and the mean loss of the last five steps. ``--profile`` instead runs the two ftk
setups once each under ``torch.profiler`` for a few steps and prints where the time goes.

Needs ``trl`` (``pip install trl``), which is not an ftk dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "sgd_chat_600.jsonl"
SETUPS = ("ftk-padded", "ftk-packed", "trl-padded", "trl-packed", "hf-padded")
# ftk with the loss over all trained positions' logits at once (chunked_cross_entropy off), to
# measure what the chunked loss changes; not run unless named in --setups.
UNCHUNKED = ("ftk-padded-unchunked", "ftk-packed-unchunked")
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
WARMUP_STEPS = 3
LOSS_WINDOW = 5


@dataclass
class RunResult:
    """What one training run measured."""

    setup: str
    prep_seconds: float = 0.0
    train_seconds: float = 0.0
    first_step_seconds: float = 0.0
    steps: int = 0
    real_tokens: int = 0
    trained_tokens: int = 0
    token_slots: int = 0
    peak_rss_mib: float = 0.0
    final_loss: float = float("nan")
    losses: list[float] = field(default_factory=list)

    @property
    def real_per_second(self) -> float:
        """Non-padding tokens trained on per second of training."""
        return self.real_tokens / self.train_seconds

    @property
    def trained_per_second(self) -> float:
        """Tokens that carry a loss, per second of training."""
        return self.trained_tokens / self.train_seconds


# --- measuring, shared by every setup ----------------------------------------------------------


class TokenCount:
    """Sums real tokens, trained positions and token slots over the micro-batches it is shown.

    With ``pad_token_id`` set, rows without an attention mask (ftk's packed rows) count the tokens
    that are not padding; without it, such rows (TRL's padding-free rows) are all real tokens.
    """

    def __init__(self, pad_token_id: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.real = 0
        self.trained = 0
        self.slots = 0

    def add(self, inputs: dict[str, Any]) -> None:
        """Count one micro-batch (padded, packed, or padding-free)."""
        input_ids = inputs["input_ids"]
        self.slots += input_ids.numel()
        if inputs.get("attention_mask") is not None:
            self.real += int(inputs["attention_mask"].sum())
        elif self.pad_token_id is not None:
            self.real += int((input_ids != self.pad_token_id).sum())
        else:
            self.real += input_ids.numel()
        self.trained += int((inputs["labels"][..., 1:] != -100).sum())

    def totals(self) -> tuple[int, int, int]:
        """(real, trained, slots) so far."""
        return self.real, self.trained, self.slots


def step_clock(count: TokenCount) -> Any:
    """A TrainerCallback that records when training starts, when each step ends and the counts then."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.started: float | None = None
            self.step_ends: list[float] = []
            self.counts: list[tuple[int, int, int]] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_ends.append(time.perf_counter())
            self.counts.append(count.totals())

    return StepClock()


def finish(result: RunResult, clock: Any, log_history: list[dict[str, Any]]) -> RunResult:
    """Fill in timing, token counts, losses and peak RSS once training has ended.

    Times and tokens are those of steps 2 to N: the first step also pays one-time costs
    (optimizer state, first allocations), reported separately as ``first_step_seconds``.
    """
    result.steps = len(clock.step_ends) - 1
    result.train_seconds = clock.step_ends[-1] - clock.step_ends[0]
    result.first_step_seconds = clock.step_ends[0] - clock.started
    first, last = clock.counts[0], clock.counts[-1]
    result.real_tokens, result.trained_tokens, result.token_slots = (
        b - a for a, b in zip(first, last, strict=True)
    )
    result.losses = [float(entry["loss"]) for entry in log_history if "loss" in entry]
    result.final_loss = statistics.fmean(result.losses[-LOSS_WINDOW:])
    result.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def training_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainingArguments every non-ftk setup shares (ftk's config says the same)."""
    return dict(
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=WARMUP_STEPS,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=42,
        data_seed=42,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=True,
    )


def lora_config() -> Any:
    """peft's LoRA config equal to ftk's ``lora_target_linear`` with the bench's rank."""
    from peft import LoraConfig

    return LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The chat rows of a jsonl file, ``messages`` only."""
    with path.open(encoding="utf-8") as handle:
        return [{"messages": json.loads(line)["messages"]} for line in handle if line.strip()]


# --- the setups ---------------------------------------------------------------------------------


def run_ftk(args: argparse.Namespace, setup: str, workdir: Path) -> RunResult:
    """ftk's own run: ``run_training`` with a config; a probe plugin times it and counts tokens."""
    from rich.console import Console
    from transformers import AutoTokenizer

    from ftk.commands.train import run_training
    from ftk.core.config.loader import load_config
    from ftk.core.hookspecs import hookimpl

    packed = setup.startswith("ftk-packed")
    result = RunResult(setup)
    count = TokenCount(pad_token_id=AutoTokenizer.from_pretrained(args.model).pad_token_id)
    clock = step_clock(count)
    marks: dict[str, Any] = {}

    class Probe:
        """Observes the run through ftk's hooks; changes nothing."""

        @hookimpl
        def pre_model_load(self, cfg):
            marks["data_ready"] = time.perf_counter()

        @hookimpl
        def trainer_callbacks(self, cfg):
            return [clock]

        @hookimpl
        def pre_train(self, cfg, trainer, model, data):
            marks["trainer"] = trainer

        @hookimpl(tryfirst=True)
        def compute_loss(self, cfg, model, inputs):
            if model.training:
                count.add(inputs)
            return None  # the loss is left to the plugins that compute it

    config = workdir / "ftk.yaml"
    config.write_text(
        f"base_model: {args.model}\n"
        f"datasets:\n  - path: {args.data}\n    type: chat_template\n"
        "    roles_to_train: [assistant]\n    train_on_eos: turn\n"
        f"adapter: lora\nlora_r: {LORA['r']}\nlora_alpha: {LORA['alpha']}\n"
        f"lora_dropout: {LORA['dropout']}\nlora_target_linear: true\n"
        f"sequence_len: {args.sequence_len}\nsample_packing: {str(packed).lower()}\n"
        f"micro_batch_size: {args.micro_batch_size}\ngradient_accumulation_steps: 1\n"
        f"max_steps: {args.steps}\nlearning_rate: {args.learning_rate}\nlr_scheduler: cosine\n"
        f"warmup_steps: {WARMUP_STEPS}\noptimizer: adamw_torch\nweight_decay: 0.0\nmax_grad_norm: 1.0\n"
        "shuffle_merged_datasets: false\n"  # rows in file order, as the other setups see them
        f"dataset_processes: 1\nlogging_steps: 1\nseed: 42\noutput_dir: {workdir / 'out'}\n"
        f"dataset_prepared_path: {workdir / 'prepared'}\n"
        f"chunked_cross_entropy: {str(setup not in UNCHUNKED).lower()}\n",
        encoding="utf-8",
    )
    cfg, manager = load_config(config)
    manager.pm.register(Probe(), name="bench_probe")
    started = time.perf_counter()
    run_training(cfg, manager, console=Console(quiet=True))
    result.prep_seconds = marks["data_ready"] - started
    return finish(result, clock, marks["trainer"].state.log_history)


def counting_trainer(base: type, count: TokenCount) -> type:
    """``base`` (a Trainer class) whose training step first counts the micro-batch's tokens."""

    class Counting(base):
        def training_step(self, model, inputs, *rest, **kwargs):
            count.add(inputs)
            return super().training_step(model, inputs, *rest, **kwargs)

    return Counting


def run_trl(args: argparse.Namespace, packed: bool, workdir: Path) -> RunResult:
    """TRL's SFTTrainer on the conversational rows, assistant-only loss, LoRA through ``peft_config``."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    result = RunResult("trl-packed" if packed else "trl-padded")
    count = TokenCount()
    clock = step_clock(count)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dataset = Dataset.from_list(read_rows(args.data))
    tokenizer_seconds = time.perf_counter() - started
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="float32")
    config = SFTConfig(
        output_dir=str(workdir / "out"),
        max_length=args.sequence_len,
        packing=packed,
        assistant_only_loss=True,
        dataset_num_proc=None,
        **training_settings(args),
    )
    built = time.perf_counter()
    trainer = counting_trainer(SFTTrainer, count)(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=[clock],
    )
    result.prep_seconds = tokenizer_seconds + time.perf_counter() - built
    trainer.train()
    return finish(result, clock, trainer.state.log_history)


def run_hf(args: argparse.Namespace, workdir: Path) -> RunResult:
    """transformers' Trainer: ``apply_chat_template`` with the assistant mask, padded batches."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    result = RunResult("hf-padded")
    count = TokenCount()
    clock = step_clock(count)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def tokenize(row: dict[str, Any]) -> dict[str, list[int]]:
        rendered = tokenizer.apply_chat_template(
            row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(rendered["input_ids"])
        mask = rendered["assistant_masks"]
        return {
            "input_ids": ids,
            "attention_mask": [1] * len(ids),
            "labels": [token if keep else -100 for token, keep in zip(ids, mask, strict=True)],
        }

    dataset = Dataset.from_list(read_rows(args.data)).map(tokenize, remove_columns=["messages"])
    result.prep_seconds = time.perf_counter() - started
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(args.model, dtype="float32"), lora_config())
    trainer = counting_trainer(Trainer, count)(
        model=model,
        args=TrainingArguments(output_dir=str(workdir / "out"), **training_settings(args)),
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=[clock],
    )
    trainer.train()
    return finish(result, clock, trainer.state.log_history)


def worker(args: argparse.Namespace) -> None:
    """Run one setup in this process and write its RunResult as JSON to ``--result``."""
    import datasets
    import torch

    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    datasets.disable_caching()  # every run tokenizes from scratch
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.worker.startswith("ftk-"):
            result = run_ftk(args, args.worker, workdir)
        elif args.worker.startswith("trl-"):
            result = run_trl(args, args.worker == "trl-packed", workdir)
        else:
            result = run_hf(args, workdir)
    args.result.write_text(json.dumps(asdict(result)), encoding="utf-8")


# --- the parent: data, runs, table --------------------------------------------------------------


def rows_that_fit(source: Path, model: Path, sequence_len: int, target: Path) -> tuple[int, int]:
    """Copy the rows whose rendered chat is at most ``sequence_len`` tokens; returns (kept, total)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = read_rows(source)
    # Render to text, then tokenize: apply_chat_template(tokenize=True) returns an encoding (a mapping)
    # in transformers 5, whose len() is its number of fields, not of tokens.
    lengths = [
        len(tokenizer(tokenizer.apply_chat_template(row["messages"], tokenize=False))["input_ids"])
        for row in rows
    ]
    kept = [row for row, length in zip(rows, lengths, strict=True) if length <= sequence_len]
    target.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
    return len(kept), len(rows)


def run_setup(setup: str, args: argparse.Namespace, data: Path, workdir: Path, index: int) -> RunResult:
    """One run of ``setup`` in a fresh Python process."""
    result_path = workdir / f"result{index}.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        setup,
        "--result",
        str(result_path),
        "--model",
        str(args.model),
        "--data",
        str(data),
        "--steps",
        str(args.steps),
        "--sequence-len",
        str(args.sequence_len),
        "--micro-batch-size",
        str(args.micro_batch_size),
        "--learning-rate",
        str(args.learning_rate),
        "--threads",
        str(args.threads),
    ]
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-4000:] + completed.stderr[-8000:])
        raise SystemExit(f"{setup}: the run failed (exit code {completed.returncode})")
    fields = json.loads(result_path.read_text(encoding="utf-8"))
    return RunResult(**fields)


def median_of(runs: list[RunResult]) -> dict[str, float]:
    """Medians over repeats of the figures the table shows."""

    def median(values: Any) -> float:
        return statistics.median(list(values))

    return {
        "prep_seconds": median(r.prep_seconds for r in runs),
        "train_seconds": median(r.train_seconds for r in runs),
        "real_per_second": median(r.real_per_second for r in runs),
        "trained_per_second": median(r.trained_per_second for r in runs),
        "real_per_step": median(r.real_tokens / r.steps for r in runs),
        "slots_per_step": median(r.token_slots / r.steps for r in runs),
        "peak_rss_mib": median(r.peak_rss_mib for r in runs),
        "final_loss": median(r.final_loss for r in runs),
    }


def markdown_table(medians: dict[str, dict[str, float]], reference: str) -> str:
    """The comparison as a markdown table, with real tokens/s relative to ``reference``."""
    lines = [
        "| setup | data prep s | train s | real tokens/s | trained tokens/s | real tokens / step "
        f"| token slots / step | peak RSS MiB | loss (last {LOSS_WINDOW} steps) | real tokens/s vs {reference} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = medians[reference]["real_per_second"] if reference in medians else None
    for setup, m in medians.items():
        ratio = f"{m['real_per_second'] / base:.2f}x" if base else ""
        lines.append(
            f"| {setup} | {m['prep_seconds']:.2f} | {m['train_seconds']:.1f} | {m['real_per_second']:,.0f} "
            f"| {m['trained_per_second']:,.0f} | {m['real_per_step']:,.0f} | {m['slots_per_step']:,.0f} "
            f"| {m['peak_rss_mib']:,.0f} | {m['final_loss']:.4f} | {ratio} |"
        )
    return "\n".join(lines)


def ratio_lines(medians: dict[str, dict[str, float]]) -> list[str]:
    """ftk over TRL in real tokens/s, like for like and best against best."""
    speed = {setup: m["real_per_second"] for setup, m in medians.items()}
    lines = []
    for ftk_setup, trl_setup in (("ftk-padded", "trl-padded"), ("ftk-packed", "trl-packed")):
        if ftk_setup in speed and trl_setup in speed:
            lines.append(f"{ftk_setup} / {trl_setup}: {speed[ftk_setup] / speed[trl_setup]:.2f}x")
    ftk_best = max((s for s in speed if s.startswith("ftk-")), key=speed.get, default=None)
    trl_best = max((s for s in speed if s.startswith("trl-")), key=speed.get, default=None)
    if ftk_best and trl_best:
        lines.append(
            f"best ftk ({ftk_best}) / best TRL ({trl_best}): {speed[ftk_best] / speed[trl_best]:.2f}x "
            "(goal: >= 1.5x)"
        )
    return lines


def profile(args: argparse.Namespace) -> None:
    """Profile steps 3 to 5 of ftk padded and packed and print the top operators of each."""
    import torch
    from transformers import TrainerCallback

    from ftk.commands.train import run_training
    from ftk.core.config.loader import load_config
    from ftk.core.hookspecs import hookimpl

    torch.set_num_threads(args.threads)

    class StepProfiler(TrainerCallback):
        def __init__(self) -> None:
            self.profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
            )

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                self.profiler.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:
                self.profiler.__exit__(None, None, None)

    class Probe:
        def __init__(self, callback: StepProfiler) -> None:
            self.callback = callback

        @hookimpl
        def trainer_callbacks(self, cfg):
            return [self.callback]

    for packed in (False, True):
        callback = StepProfiler()

        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            config = workdir / "ftk.yaml"
            config.write_text(
                f"base_model: {args.model}\n"
                f"datasets:\n  - path: {args.data}\n    type: chat_template\n"
                "    roles_to_train: [assistant]\n    train_on_eos: turn\n"
                f"adapter: lora\nlora_r: {LORA['r']}\nlora_alpha: {LORA['alpha']}\nlora_target_linear: true\n"
                f"sequence_len: {args.sequence_len}\nsample_packing: {str(packed).lower()}\n"
                f"micro_batch_size: {args.micro_batch_size}\nmax_steps: 5\n"
                f"learning_rate: {args.learning_rate}\nlogging_steps: 1\nseed: 42\n"
                f"output_dir: {workdir / 'out'}\ndataset_prepared_path: {workdir / 'prepared'}\n",
                encoding="utf-8",
            )
            cfg, manager = load_config(config)
            manager.pm.register(Probe(callback), name="bench_profiler")
            from rich.console import Console

            run_training(cfg, manager, console=Console(quiet=True))
        print(f"\n## ftk {'packed' if packed else 'padded'}: steps 3-5, top operators by self CPU time")
        print(
            callback.profiler.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=18
            )
        )


def main() -> int:
    """Parse arguments; run the comparison (or, with --worker, one run of one setup)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: build the tiny model)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sequence-len", type=int, default=512)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every run")
    parser.add_argument("--setups", nargs="+", choices=SETUPS + UNCHUNKED, default=list(SETUPS))
    parser.add_argument("--json-out", type=Path, help="also write every run and the medians here")
    parser.add_argument("--profile", action="store_true", help="profile the ftk setups instead")
    parser.add_argument("--worker", choices=SETUPS + UNCHUNKED, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.model is None:
            from ftk.plugins.tiny_model.builder import build_tiny_model

            args.model = build_tiny_model(workdir / "tiny")
        args.model = args.model.resolve()
        data = workdir / "rows.jsonl"
        kept, total = rows_that_fit(args.data, args.model, args.sequence_len, data)
        print(f"{kept} of {total} rows fit in {args.sequence_len} tokens; every setup trains on those")
        if args.profile:
            args.data = data
            profile(args)
            return 0
        runs: list[RunResult] = []
        for repeat in range(args.repeats):
            for setup in args.setups:
                run = run_setup(setup, args, data, workdir, len(runs))
                runs.append(run)
                print(
                    f"repeat {repeat + 1} {setup}: {run.real_per_second:,.0f} real tokens/s, "
                    f"train {run.train_seconds:.1f} s, prep {run.prep_seconds:.2f} s, loss {run.final_loss:.4f}",
                    flush=True,
                )

    medians = {setup: median_of([r for r in runs if r.setup == setup]) for setup in args.setups}
    reference = "trl-padded" if "trl-padded" in medians else args.setups[0]
    print(
        f"\n{args.steps} steps, sequence_len {args.sequence_len}, micro-batch {args.micro_batch_size}, "
        f"{args.threads} torch threads, median of {args.repeats}\n"
    )
    print(markdown_table(medians, reference))
    print()
    for line in ratio_lines(medians):
        print(line)
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"runs": [asdict(r) for r in runs], "medians": medians}, indent=2), encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
