"""The run-schedule keys (axolotl's names): saves and evaluations per epoch, save/eval strategies,
early stopping, the loss watchdog, batch_size, fractional warmup_steps, and the TrainingArguments
extras (group_by_length, ddp_find_unused_parameters, torch_compile*, gradient_checkpointing_kwargs,
save_only_model, activation_offloading)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from ftk.cli import main
from ftk.commands.train import training_arguments
from ftk.core.trainer import warmup_steps
from ftk.plugins.run_schedule.callbacks import NEVER, PerEpochSchedule, crossings
from tests.helpers import SMALL_LORA, builtin_manager, first_chat_rows, make_config, write_config


def arguments(has_eval: bool = True, **keys):
    cfg = make_config(**keys)
    return training_arguments(cfg, has_eval=has_eval, hooks=builtin_manager().hooks)


def callbacks(**keys) -> list:
    return builtin_manager().hooks.trainer_callbacks(make_config(**keys))


def validate(tmp_path: Path, capsys, **keys) -> tuple[int, str]:
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": []}\n')
    path = write_config(tmp_path, "unused-model", data, **keys)
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err


# --- saves and evaluations per epoch -------------------------------------------------------------


def test_per_epoch_keys_reach_trainer_as_a_callback_on_a_steps_strategy():
    args = arguments(saves_per_epoch=2, evals_per_epoch=4, val_set_size=0.1, load_best_model_at_end=True)
    assert (args.save_strategy, args.save_steps) == ("steps", NEVER)
    assert (args.eval_strategy, args.eval_steps) == ("steps", NEVER)
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss"
    (schedule,) = [
        c
        for c in callbacks(saves_per_epoch=2, evals_per_epoch=4, val_set_size=0.1)
        if isinstance(c, PerEpochSchedule)
    ]
    assert (schedule.saves, schedule.evals) == (2, 4)


def test_zero_per_epoch_means_none_and_strategies_map_onto_trainingarguments():
    args = arguments(saves_per_epoch=0, evals_per_epoch=0, val_set_size=0.1)
    assert (args.save_strategy, args.eval_strategy) == ("no", "no")
    assert not any(isinstance(c, PerEpochSchedule) for c in callbacks(saves_per_epoch=0, evals_per_epoch=0))
    assert arguments(save_strategy="no", save_steps=None).save_strategy == "no"
    assert arguments(save_strategy="steps", save_steps=7).save_steps == 7
    best = arguments(save_strategy="best", eval_steps=5, val_set_size=0.1)
    assert (best.save_strategy, best.eval_strategy, best.eval_steps) == ("best", "steps", 5)
    epoch = arguments(save_strategy="epoch", eval_strategy="epoch", val_set_size=0.1)
    assert (epoch.save_strategy, epoch.save_steps, epoch.eval_steps) == ("steps", NEVER, NEVER)
    (schedule,) = [
        c
        for c in callbacks(save_strategy="epoch", evaluation_strategy="epoch", val_set_size=0.1)
        if isinstance(c, PerEpochSchedule)
    ]
    assert (schedule.saves, schedule.evals) == (1, 1)
    assert arguments(evaluation_strategy="no", eval_steps=None, val_set_size=0.1).eval_strategy == "no"


def test_evals_per_epoch_without_eval_data_asks_trainer_for_nothing():
    args = arguments(has_eval=False, evals_per_epoch=4)
    assert args.eval_strategy == "no"
    assert not any(isinstance(c, PerEpochSchedule) for c in callbacks(evals_per_epoch=4))


def test_crossings_spread_the_points_evenly_over_each_epoch():
    # 10 micro-batches per epoch, one per step: 3 points per epoch fall after steps 4, 7 and 10.
    epochs = [step / 10 for step in range(0, 21)]
    hits = [step for step in range(1, 21) if crossings(epochs[step - 1], epochs[step], 3)]
    assert hits == [4, 7, 10, 14, 17, 20]
    assert crossings(0.0, 0.2, 5) == 1 and crossings(0.2, 0.4, 5) == 1  # no float near-misses


def test_per_epoch_schedule_sets_save_and_evaluate_at_its_points():
    schedule = PerEpochSchedule(saves=2, evals=4)
    state, args = TrainerState(), SimpleNamespace()
    saved, evaluated = [], []
    for step in range(1, 9):  # 8 steps per epoch
        control = TrainerControl()
        schedule.on_step_begin(args, state, control)
        state.global_step, state.epoch = step, step / 8
        schedule.on_step_end(args, state, control)
        if control.should_save:
            saved.append(step)
        if control.should_evaluate:
            evaluated.append(step)
    assert saved == [4, 8]
    assert evaluated == [2, 4, 6, 8]


# --- the other TrainingArguments fields ----------------------------------------------------------


def test_trainingarguments_extras():
    args = arguments(
        group_by_length=True,
        ddp_find_unused_parameters=True,
        torch_compile=True,
        torch_compile_backend="inductor",
        torch_compile_mode="max-autotune",
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        save_only_model=True,
    )
    assert args.train_sampling_strategy == "group_by_length"
    assert args.ddp_find_unused_parameters is True
    assert (args.torch_compile, args.torch_compile_backend, args.torch_compile_mode) == (
        True,
        "inductor",
        "max-autotune",
    )
    assert args.activation_checkpointing is True
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.save_only_model is True
    plain = arguments()
    assert (plain.train_sampling_strategy, plain.torch_compile, plain.save_only_model) == (
        "random",
        False,
        False,
    )
    assert plain.activation_checkpointing_kwargs is None


def test_activation_offloading_asks_transformers_to_offload_the_checkpointed_activations():
    fields = builtin_manager().hooks.training_arguments(
        make_config(gradient_checkpointing=True, activation_offloading="legacy")
    )
    assert fields["activation_checkpointing_kwargs"] == {"offload": True}


def test_gradient_checkpointing_offload_is_checkpointing_with_activation_offloading():
    cfg = make_config(gradient_checkpointing="offload")
    assert (cfg.gradient_checkpointing, cfg.activation_offloading) == (True, True)
    fields = builtin_manager().hooks.training_arguments(cfg)
    assert fields["activation_checkpointing_kwargs"] == {"offload": True}


def test_activation_offloading_on_a_machine_without_a_gpu_is_a_machine_error(
    tmp_path, capsys, monkeypatch, small_vocab_model_dir
):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    data = first_chat_rows(tmp_path / "chat.jsonl", 4)
    keys = dict(gradient_checkpointing=True, activation_offloading=True)
    path = write_config(tmp_path, small_vocab_model_dir, data, **keys)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        "activation_offloading: moves activations from the GPU to CPU memory and this machine has no CUDA GPU"
        in err
    )
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


# --- config errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (dict(saves_per_epoch=2, save_steps=10), "saves_per_epoch: and save_steps are both set; choose one"),
        (
            dict(evals_per_epoch=2, eval_steps=10, val_set_size=0.1),
            "evals_per_epoch: and eval_steps are both set",
        ),
        (dict(save_strategy="steps"), "save_strategy: is steps but save_steps is not set"),
        (
            dict(save_strategy="epoch", save_steps=5),
            "save_strategy: is epoch but save_steps is set; choose one",
        ),
        (
            dict(save_strategy="best", eval_steps=2),
            "save_strategy: best needs eval data: set val_set_size or",
        ),
        (
            dict(save_strategy="best", val_set_size=0.1),
            "save_strategy: best needs evaluations during training",
        ),
        (
            dict(eval_strategy="epoch", evaluation_strategy="epoch"),
            "evaluation_strategy: is eval_strategy's former name and eval_strategy is set too; keep one",
        ),
        (dict(eval_strategy="steps", val_set_size=0.1), "eval_strategy: is steps but eval_steps is not set"),
        (dict(early_stopping_patience=3, eval_steps=5), "early_stopping_patience: needs eval data"),
        (
            dict(early_stopping_patience=3, val_set_size=0.1),
            "early_stopping_patience: needs evaluations during training: set eval_steps or evals_per_epoch",
        ),
        (
            dict(early_stopping_patience=3, val_set_size=0.1, evals_per_epoch=0),
            "needs evaluations during training",
        ),
        (
            dict(loss_watchdog_patience=3),
            "loss_watchdog_patience: set loss_watchdog_threshold to watch the loss",
        ),
        (dict(group_by_length=True, sample_packing=True), "group_by_length: and sample_packing are both on"),
        (dict(torch_compile_mode="max-autotune"), "torch_compile_mode: set torch_compile: true to compile"),
        (dict(gradient_checkpointing_kwargs={"use_reentrant": False}), "needs gradient_checkpointing: true"),
        (dict(activation_offloading=True), "activation_offloading: needs gradient_checkpointing: true"),
        (
            dict(load_best_model_at_end=True, saves_per_epoch=2, evals_per_epoch=3, val_set_size=0.1),
            "evals_per_epoch: (3 per epoch) must be a multiple of saves_per_epoch (2) when load_best_model_at_end",
        ),
        (
            dict(load_best_model_at_end=True, saves_per_epoch=1, eval_steps=5, val_set_size=0.1),
            "load_best_model_at_end: needs every checkpoint to follow an evaluation; saves set by saves_per_epoch "
            "and evaluations by eval_steps do not line up",
        ),
        (
            dict(load_best_model_at_end=True, evals_per_epoch=2, val_set_size=0.1),
            "load_best_model_at_end: needs checkpoints to choose from: set save_steps or saves_per_epoch",
        ),
        (dict(batch_size=6, micro_batch_size=4), "batch_size: 6 is not a multiple of micro_batch_size (4)"),
        (
            dict(batch_size=8, micro_batch_size=2, gradient_accumulation_steps=2),
            "batch_size: 8 disagrees with micro_batch_size x gradient_accumulation_steps = 2 x 2",
        ),
        (dict(warmup_steps=0.1, warmup_ratio=0.2), "warmup_steps: sets what 'warmup_ratio' also sets"),
        (
            dict(gradient_checkpointing="offload", activation_offloading=False),
            "gradient_checkpointing: offload turns on activation_offloading, which is set to False",
        ),
    ],
)
def test_config_errors(tmp_path, capsys, keys, expected):
    code, err = validate(tmp_path, capsys, **keys)
    assert code == 2, err
    assert expected in err
    assert "Traceback" not in err


def test_load_best_model_accepts_matching_per_epoch_schedules(tmp_path, capsys):
    keys = dict(load_best_model_at_end=True, saves_per_epoch=2, evals_per_epoch=4, val_set_size=0.1)
    code, err = validate(tmp_path, capsys, **keys)
    assert code == 0, err


# --- batch_size and warmup_steps below 1 ---------------------------------------------------------


def test_batch_size_becomes_gradient_accumulation_steps():
    cfg = make_config(batch_size=8, micro_batch_size=2)
    assert cfg.gradient_accumulation_steps == 4
    assert "batch_size" not in cfg.model_fields_set
    assert (
        make_config(
            batch_size=4, micro_batch_size=2, gradient_accumulation_steps=2
        ).gradient_accumulation_steps
        == 2
    )


def test_warmup_steps_below_one_is_a_share_of_the_steps():
    cfg = make_config(warmup_steps=0.1)
    assert (cfg.warmup_ratio, cfg.warmup_steps) == (0.1, None)
    assert warmup_steps(cfg, 30) == 3
    assert warmup_steps(cfg, 31) == 4
    assert warmup_steps(make_config(warmup_steps=10), 30) == 10


# --- the loss watchdog and early stopping (callbacks) --------------------------------------------


def test_loss_watchdog_stops_after_patience_logged_losses_in_a_row_above_the_threshold():
    from ftk.core.run_guard import RunGuard
    from ftk.plugins.run_schedule.watchdog import LossWatchdog

    guard = RunGuard(lambda: (0.0, None))
    watchdog = LossWatchdog(5.0, 3, guard=guard)
    state, control = TrainerState(), TrainerControl()
    for step, loss in enumerate([6.0, 7.0, 4.0, 6.0, 6.5, {"eval_loss": 9.0}, 8.25], start=1):
        state.global_step = step
        watchdog.on_log(None, state, control, logs=loss if isinstance(loss, dict) else {"loss": loss})
        if control.should_training_stop:
            break
    assert state.global_step == 7  # 6.0, 6.5, 8.25 in a row (the eval entry does not count)
    assert control.should_save is False and control.should_evaluate is False
    assert guard.divergence.describe() == (
        "the training loss stayed above loss_watchdog_threshold 5 for 3 logged steps in a row "
        "(loss_watchdog_patience), the last at step 7: loss 8.25"
    )


def test_early_stopping_callback_is_transformers_own():
    from transformers import EarlyStoppingCallback

    (stopper,) = [
        c
        for c in callbacks(early_stopping_patience=2, eval_steps=2, val_set_size=0.1)
        if isinstance(c, EarlyStoppingCallback)
    ]
    assert stopper.early_stopping_patience == 2


# --- training runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat24(tmp_path_factory) -> Path:
    return first_chat_rows(tmp_path_factory.mktemp("data") / "chat.jsonl", 24)


# 18 training rows in 6 steps of 3 (one epoch), 6 rows held out for eval.
RUN = dict(
    **SMALL_LORA,
    sequence_len=256,
    micro_batch_size=3,
    max_steps=None,
    num_epochs=1,
    lr_scheduler="constant",
    val_set_size=6,
    seed=5,
)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_per_epoch_saves_and_evals_in_a_run_and_a_model_only_checkpoint_is_not_resumed(
    tmp_path, small_vocab_model_dir, chat24, capsys
):
    keys = dict(RUN, saves_per_epoch=2, evals_per_epoch=3, save_only_model=True)
    path = write_config(tmp_path, small_vocab_model_dir, chat24, **keys)
    assert main(["train", str(path)]) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert [e["step"] for e in metrics(out) if "eval_loss" in e] == [2, 4, 6]
    assert not list((out / "checkpoint-3").glob("optimizer.pt"))  # save_only_model
    capsys.readouterr()

    assert main(["train", str(path), "--auto_resume", "true"]) == 2
    err = capsys.readouterr().err
    assert (
        f"auto_resume: {out / 'checkpoint-6'} holds the model only (saved with save_only_model: true" in err
    )
    assert "Traceback" not in err


@pytest.mark.slow
def test_evals_per_epoch_without_eval_data_says_so_at_train_start(
    tmp_path, small_vocab_model_dir, chat24, capsys
):
    keys = dict(RUN, val_set_size=None, evals_per_epoch=4, max_steps=1)
    assert main(["train", str(write_config(tmp_path, small_vocab_model_dir, chat24, **keys))]) == 0
    err = capsys.readouterr().err
    assert (
        "note: evals_per_epoch: 4 has no eval data to evaluate on (val_set_size is 0 and there are no "
        "test_datasets): nothing is evaluated"
    ) in err


@pytest.mark.slow
def test_loss_watchdog_stops_a_run_with_exit_code_1_and_no_final_model(
    tmp_path, small_vocab_model_dir, chat24, capsys
):
    keys = dict(
        RUN,
        val_set_size=None,
        max_steps=5,
        save_steps=1,
        loss_watchdog_threshold=0.0,
        loss_watchdog_patience=2,
    )
    assert main(["train", str(write_config(tmp_path, small_vocab_model_dir, chat24, **keys))]) == 1
    err = capsys.readouterr().err
    out = tmp_path / "out"
    assert (
        "training diverged, the training loss stayed above loss_watchdog_threshold 0 for 2 logged steps in a row "
        "(loss_watchdog_patience), the last at step 2"
    ) in err
    assert f"the last good checkpoint is {out / 'checkpoint-1'}" in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (out / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_early_stopping_ends_a_run_whose_eval_loss_stops_improving(
    tmp_path, small_vocab_model_dir, chat24, capsys
):
    # A learning rate too small to change a float32 weight: eval_loss is the same at every evaluation.
    keys = dict(RUN, learning_rate=1e-20, max_steps=6, eval_steps=1, early_stopping_patience=2)
    assert main(["train", str(write_config(tmp_path, small_vocab_model_dir, chat24, **keys))]) == 0
    out = tmp_path / "out"
    assert [e["step"] for e in metrics(out) if "eval_loss" in e] == [1, 2, 3]
    assert (
        "early_stopping_patience: eval_loss has not improved for 2 evaluations in a row"
        in capsys.readouterr().err
    )
    assert (out / "adapter_model.safetensors").exists()
