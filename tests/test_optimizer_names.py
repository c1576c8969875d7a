"""Every optimizer and schedule name of transformers (and axolotl's own optimizer names).

ftk's own builds are tested in test_optimizers.py; here: each transformers name resolves, those
that run on this machine build and step, the others stop with the package or machine error, and
transformers' schedules give exactly ``get_scheduler``'s values with ftk's keys mapped in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import get_scheduler
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from ftk.cli import main
from ftk.commands.train import run_training
from ftk.core.config.loader import load_config
from ftk.core.errors import FtkError
from ftk.core.trainer import build_optimizer, build_scheduler
from ftk.plugins import optimizers as plugin
from ftk.plugins.optimizers.hf_optimizers import AXOLOTL_ONLY, TRANSFORMERS_OPTIMIZERS
from ftk.plugins.optimizers.schedule_free import ScheduleFreeModes
from ftk.plugins.optimizers.schedules import SCHEDULES, TRANSFORMERS_SCHEDULES, lr_multiplier
from tests.helpers import builtin_manager, first_chat_rows, make_config, write_config

PEAK = 0.01


def registry():
    return builtin_manager().collect_registrations()


def stepped(name: str, **keys) -> tuple[torch.optim.Optimizer, torch.nn.Module, dict[str, torch.Tensor]]:
    """Build optimizer ``name`` over a small model with fixed gradients, take one step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 64), torch.nn.Linear(64, 64), torch.nn.LayerNorm(64))
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(make_config(optimizer=name, learning_rate=PEAK, **keys), registry(), model)
    optimizer.step()
    return optimizer, model, before


# --- names --------------------------------------------------------------------------------


def test_every_transformers_optimizer_name_is_registered():
    ours = set(plugin.OPTIMIZERS) | set(TRANSFORMERS_OPTIMIZERS)
    assert ours == {name.value for name in OptimizerNames}
    assert set(plugin.OPTIMIZERS).isdisjoint(TRANSFORMERS_OPTIMIZERS)
    assert ours | set(AXOLOTL_ONLY) == set(registry().optimizers)


def test_every_transformers_schedule_name_is_registered():
    assert set(SCHEDULES) | set(TRANSFORMERS_SCHEDULES) == {name.value for name in SchedulerType}
    assert set(registry().schedulers) == {name.value for name in SchedulerType}


#: Keys a name needs besides ``optimizer`` to validate.
NEEDED = {
    **{
        name: {"optim_target_modules": ["proj"]}
        for name in TRANSFORMERS_OPTIMIZERS
        if name.startswith(("galore", "apollo"))
    },
    **{
        name: {"lr_scheduler": "constant"}
        for name in TRANSFORMERS_OPTIMIZERS
        if name.startswith("schedule_free")
    },
}


@pytest.mark.parametrize(
    "name", sorted(n.value for n in OptimizerNames if not n.value.endswith("_layerwise"))
)
def test_each_transformers_optimizer_name_validates(name):
    assert make_config(optimizer=name, **NEEDED.get(name, {})).optimizer == name


@pytest.mark.parametrize("name", sorted(n.value for n in OptimizerNames if n.value.endswith("_layerwise")))
def test_layerwise_optimizers_are_refused_with_the_alternative(name):
    with pytest.raises(FtkError) as caught:
        make_config(optimizer=name, optim_target_modules="all_linear")
    assert str(caught.value) == (
        f"<config>: optimizer: {name} updates each weight inside the backward pass, before ftk clips "
        f"the gradients and checks their norm: not supported; use {name.removesuffix('_layerwise')}"
    )


@pytest.mark.parametrize(
    ("name", "instead"),
    [
        ("muon", "adamw_torch"),
        ("ao_adamw_8bit", "adamw_torch_8bit (torchao's AdamW8bit by transformers' name)"),
    ],
)
def test_axolotl_only_optimizers_say_what_to_use(name, instead):
    with pytest.raises(FtkError) as caught:
        make_config(optimizer=name)
    assert str(caught.value) == (
        f"<config>: optimizer: {name} is an axolotl optimizer not in ftk (axolotl builds it itself; "
        f"transformers has no such name); use {instead}"
    )


# --- building and stepping on the CPU -----------------------------------------------------


def test_rmsprop_is_torchs_with_optim_args_and_ftks_weight_decay_groups():
    optimizer, model, before = stepped("rmsprop", optim_args="momentum=0.5,centered=true", weight_decay=0.1)
    assert type(optimizer) is torch.optim.RMSprop
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]  # matrices, then norms/biases
    assert all(
        g["momentum"] == 0.5 and g["centered"] is True and g["lr"] == PEAK for g in optimizer.param_groups
    )
    bias = model[1].bias
    assert not torch.equal(bias, before["1.bias"])


def test_adagrad_first_step_matches_torch():
    optimizer, model, before = stepped("adagrad", optim_args={"lr_decay": 0.0, "eps": 0.5})
    assert type(optimizer) is torch.optim.Adagrad
    g = model[1].bias.grad
    # Adagrad's first step: lr * g / (sqrt(g^2) + eps)
    assert torch.allclose(model[1].bias, before["1.bias"] - PEAK * g / (g.abs() + 0.5), atol=1e-7)


@pytest.mark.parametrize(
    ("name", "cls", "bits"),
    [
        ("adamw_8bit", "AdamW", 8),
        ("paged_adamw_32bit", "AdamW", 32),
        ("lion_8bit", "Lion", 8),
        ("lion_32bit", "Lion", 32),
        ("ademamix", "AdEMAMix", 32),
        ("rmsprop_bnb_8bit", "RMSprop", 8),
    ],
)
def test_bitsandbytes_optimizers_step_on_the_cpu(name, cls, bits):
    pytest.importorskip("bitsandbytes")
    optimizer, model, before = stepped(name, adam_beta1=0.8, weight_decay=0.1)
    assert type(optimizer).__name__ == cls and optimizer.args.optim_bits == bits
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    if cls in ("AdamW", "Lion"):
        assert optimizer.param_groups[0]["betas"][:2] == (0.8, 0.999)
    assert not torch.equal(model[1].weight, before["1.weight"])
    state = optimizer.state[model[1].weight]
    assert state["state1"].dtype == (torch.uint8 if bits == 8 else torch.float32)
    if bits == 8:  # embeddings keep 32-bit state, as transformers arranges it
        assert optimizer.state[model[0].weight]["state1"].dtype == torch.float32


def test_adamw_bnb_8bit_first_step_equals_adamw_on_the_cpu():
    pytest.importorskip("bitsandbytes")
    optimizer, model, before = stepped("adamw_bnb_8bit")
    assert type(optimizer).__name__ == "AdamW8bit"
    assert optimizer.state[model[1].weight]["state1"].dtype == torch.uint8
    g = model[1].weight.grad
    # First AdamW step, bias-corrected: lr * g / (|g| + eps); 8-bit state is exact at step one.
    assert torch.allclose(model[1].weight, before["1.weight"] - PEAK * g / (g.abs() + 1e-8), atol=1e-6)


# --- the environment check ----------------------------------------------------------------


def test_a_missing_package_names_the_pip_package():
    cfg = make_config(optimizer="grokadamw")
    with pytest.raises(FtkError) as caught:
        builtin_manager().hooks.check_environment(cfg, "train")
    assert str(caught.value) == "optimizer: grokadamw needs grokadamw: pip install grokadamw"


def test_an_optimizer_whose_step_fails_here_is_a_machine_error(monkeypatch):
    bnb = pytest.importorskip("bitsandbytes")

    def no_kernel(self, closure=None):
        raise RuntimeError("no kernel for this device\nmore detail")

    monkeypatch.setattr(bnb.optim.AdamW8bit, "step", no_kernel)
    with pytest.raises(FtkError) as caught:
        builtin_manager().hooks.check_environment(make_config(optimizer="adamw_bnb_8bit"), "train")
    assert str(caught.value) == (
        "optimizer: adamw_bnb_8bit does not run on this machine (cpu: no kernel for this device); use adamw_torch"
    )
    # Commands that do not train do not check.
    builtin_manager().hooks.check_environment(make_config(optimizer="adamw_bnb_8bit"), "preprocess")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the note is for the CPU")
def test_a_paged_optimizer_on_the_cpu_trains_unpaged_with_a_note(capsys):
    pytest.importorskip("bitsandbytes")
    builtin_manager().hooks.check_environment(make_config(optimizer="paged_adamw_8bit"), "train")
    assert capsys.readouterr().err.strip() == (
        "note: optimizer: paged_adamw_8bit: paging moves optimizer state out of GPU memory when it "
        "runs short; on the CPU the state already is in main memory, so it trains as the unpaged optimizer"
    )


def test_ftk_train_stops_before_the_data_with_the_package_error(tmp_path, tiny_model_dir, capsys):
    data = first_chat_rows(tmp_path / "chat.jsonl", 4)
    path = write_config(
        tmp_path, tiny_model_dir, data, optimizer="schedule_free_adamw", lr_scheduler="constant"
    )
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("optimizer: schedule_free_adamw needs schedulefree: pip install schedulefree")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "prepared").exists()


# --- config problems ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"optimizer": "lion_8bit", "optim_args": "alpha=2"},
            "optim_args: optimizer lion_8bit does not read alpha (the keys it reads: none)",
        ),
        (
            {"optimizer": "ademamix", "optim_args": {"beta3": 0.999, "rank": 4}},
            "optim_args: optimizer ademamix does not read rank (the keys it reads: beta1, beta2, beta3, "
            "alpha, eps, t_alpha, t_beta3)",
        ),
        (
            {"optimizer": "adamw_torch", "optim_args": "foo=1"},
            "optim_args: optimizer adamw_torch takes no optim_args (it is built by ftk from learning_rate, "
            "adam_*, weight_decay)",
        ),
        (
            {"optimizer": "galore_adamw"},
            "optim_target_modules: optimizer galore_adamw needs optim_target_modules (or all_linear)",
        ),
        (
            {"optimizer": "lion_8bit", "optim_target_modules": ["q_proj"]},
            "optim_target_modules: applies to galore_* and apollo_* optimizers only",
        ),
        (
            {"optimizer": "schedule_free_adamw"},
            "lr_scheduler: schedule_free_adamw replaces the schedule: set lr_scheduler: constant",
        ),
        (
            {"optimizer": "schedule_free_sgd", "lr_scheduler": "constant", "warmup_ratio": 0.1},
            "warmup_ratio: schedule_free_sgd warms up by itself: give warmup_steps instead",
        ),
        (
            {"lr_scheduler": "cosine_with_restarts", "lr_scheduler_kwargs": {"power": 2}},
            "lr_scheduler_kwargs: lr_scheduler cosine_with_restarts does not take power (it takes: num_cycles)",
        ),
        (
            {"lr_scheduler": "constant_with_warmup", "lr_scheduler_kwargs": {"num_cycles": 2}},
            "lr_scheduler_kwargs: lr_scheduler constant_with_warmup does not take num_cycles (it takes: none)",
        ),
        (
            {"lr_scheduler": "cosine", "lr_scheduler_kwargs": {"num_cycles": 2}},
            "lr_scheduler_kwargs: lr_scheduler cosine is ftk's own and takes no lr_scheduler_kwargs",
        ),
        (
            {"lr_scheduler": "warmup_stable_decay"},
            "lr_scheduler_kwargs: lr_scheduler warmup_stable_decay needs num_decay_steps",
        ),
        (
            {"lr_scheduler": "inverse_sqrt", "min_lr_ratio": 0.1},
            "min_lr_ratio: lr_scheduler inverse_sqrt has no floor to set; remove min_lr_ratio",
        ),
        (
            {
                "lr_scheduler": "cosine_with_min_lr",
                "min_lr_ratio": 0.1,
                "lr_scheduler_kwargs": {"min_lr": 1e-6},
            },
            "min_lr_ratio: set either min_lr_ratio or the floor in lr_scheduler_kwargs, not both",
        ),
        (
            {"lr_scheduler": "polynomial", "lr_quadratic_warmup": True},
            "lr_quadratic_warmup: applies to lr_scheduler cosine and linear (ftk's own), not polynomial",
        ),
        (
            {"lr_scheduler": "constant", "cosine_constant_lr_ratio": 0.5},
            "cosine_constant_lr_ratio: applies to lr_scheduler cosine and linear, not constant",
        ),
        (
            {"lr_scheduler": "reduce_lr_on_plateau"},
            "lr_scheduler: reduce_lr_on_plateau changes the learning rate on the eval loss: it needs an eval "
            "set (val_set_size or test_datasets) and eval_steps",
        ),
        (
            {"lr_scheduler": "greedy", "val_set_size": 0.1, "eval_steps": 5, "warmup_steps": 2},
            "warmup_steps: lr_scheduler greedy has no warmup",
        ),
    ],
)
def test_keys_that_do_not_fit_the_choice_are_errors(keys, message):
    with pytest.raises(FtkError) as caught:
        make_config(**keys)
    assert str(caught.value) == f"<config>: {message}"


def test_malformed_optim_args_is_an_error():
    with pytest.raises(FtkError, match=r"optim_args: .*'rank' is not key=value"):
        make_config(optimizer="galore_adamw", optim_target_modules="all_linear", optim_args="rank")


# --- transformers' schedules --------------------------------------------------------------


def curve(build, total: int) -> list[float]:
    """The learning rate of steps 0 .. total-1 of the schedule ``build(optimizer)`` makes."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    scheduler = build(optimizer)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(
    ("name", "keys", "expected_kwargs"),
    [
        ("cosine_with_restarts", {"lr_scheduler_kwargs": {"num_cycles": 2}}, {"num_cycles": 2}),
        (
            "polynomial",
            {"min_lr_ratio": 0.1, "lr_scheduler_kwargs": {"power": 2.0}},
            {"power": 2.0, "lr_end": 0.001},
        ),
        ("polynomial", {}, {}),
        ("constant_with_warmup", {}, {}),
        ("inverse_sqrt", {"lr_scheduler_kwargs": {"timescale": 3}}, {"timescale": 3}),
        ("cosine_with_min_lr", {"min_lr_ratio": 0.1}, {"min_lr_rate": 0.1}),
        ("cosine_with_min_lr", {"lr_scheduler_kwargs": {"min_lr": 1e-4}}, {"min_lr": 1e-4}),
        ("cosine_warmup_with_min_lr", {"min_lr_ratio": 0.2}, {"min_lr_rate": 0.2}),
        (
            "warmup_stable_decay",
            {"min_lr_ratio": 0.1, "lr_scheduler_kwargs": {"num_decay_steps": 4}},
            {"num_decay_steps": 4, "min_lr_ratio": 0.1},
        ),
    ],
)
def test_transformers_schedules_equal_get_scheduler(name, keys, expected_kwargs):
    total, warmup = 12, 3
    cfg = make_config(learning_rate=PEAK, lr_scheduler=name, warmup_steps=warmup, **keys)
    ours = curve(lambda opt: build_scheduler(cfg, registry(), opt, total), total)
    theirs = curve(
        lambda opt: get_scheduler(name, opt, warmup, total, scheduler_specific_kwargs=expected_kwargs), total
    )
    assert ours == theirs
    assert ours[0] < ours[1] < ours[warmup]  # transformers' own warmup
    assert max(ours) == pytest.approx(PEAK, rel=0.03)
    if "min_lr_rate" in expected_kwargs:
        assert min(ours[warmup:]) >= PEAK * expected_kwargs["min_lr_rate"] - 1e-15


def test_reduce_lr_on_plateau_gets_its_kwargs():
    cfg = make_config(
        lr_scheduler="reduce_lr_on_plateau", val_set_size=0.1, eval_steps=2,
        lr_scheduler_kwargs={"patience": 0, "factor": 0.5},
    )  # fmt: skip
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    scheduler = build_scheduler(cfg, registry(), optimizer, 10)
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    scheduler.step(1.0)
    scheduler.step(1.0)  # no improvement, patience 0: halved
    assert optimizer.param_groups[0]["lr"] == pytest.approx(PEAK / 2)


# --- ftk's schedules: axolotl's quadratic warmup and constant tail ------------------------


def test_quadratic_warmup_squares_ftks_warmup():
    cfg = make_config(learning_rate=PEAK, lr_scheduler="cosine", warmup_steps=3, lr_quadratic_warmup=True)
    lrs = curve(lambda opt: build_scheduler(cfg, registry(), opt, 10), 10)
    assert lrs[:4] == pytest.approx([PEAK / 16, PEAK / 4, PEAK * 9 / 16, PEAK], rel=1e-12)
    plain = [lr_multiplier(s, "cosine", 3, 10, 0.0) * PEAK for s in range(3, 10)]
    assert lrs[3:] == pytest.approx(plain, rel=1e-12)  # the decay is unchanged


@pytest.mark.parametrize("shape", ["cosine", "linear"])
def test_cosine_constant_lr_ratio_ends_the_decay_early_and_holds_the_floor(shape):
    # 20 steps, warmup 2, decay ends at floor(20 * 0.6) = 12: then 0.1 of the peak to the end.
    cfg = make_config(
        learning_rate=PEAK, lr_scheduler=shape, warmup_steps=2, min_lr_ratio=0.1, cosine_constant_lr_ratio=0.6
    )
    lrs = curve(lambda opt: build_scheduler(cfg, registry(), opt, 20), 20)
    assert lrs[2] == pytest.approx(PEAK)
    half = (1 + math.cos(math.pi * 0.5)) / 2 if shape == "cosine" else 0.5
    assert lrs[7] == pytest.approx(PEAK * (0.1 + 0.9 * half), rel=1e-12)  # half way through steps 2..12
    assert lrs[12:] == pytest.approx([PEAK * 0.1] * 8, rel=1e-12)
    assert all(a > b for a, b in zip(lrs[2:12], lrs[3:13], strict=True))


def test_cosine_constant_lr_ratio_zero_is_unset_as_in_axolotl():
    plain = make_config(learning_rate=PEAK, warmup_steps=2, min_lr_ratio=0.1)
    zero = make_config(learning_rate=PEAK, warmup_steps=2, min_lr_ratio=0.1, cosine_constant_lr_ratio=0)
    assert curve(lambda o: build_scheduler(zero, registry(), o, 10), 10) == curve(
        lambda o: build_scheduler(plain, registry(), o, 10), 10
    )


# --- schedule-free and the Trainer --------------------------------------------------------


class _Modes:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def eval(self) -> None:
        self.calls.append("eval")


class _Control:
    def __init__(self, evaluate: bool, save: bool) -> None:
        self.should_evaluate, self.should_save = evaluate, save


def test_schedule_free_weights_are_averaged_before_eval_save_and_the_end():
    callbacks = builtin_manager().hooks.trainer_callbacks(
        make_config(optimizer="schedule_free_adamw", lr_scheduler="constant")
    )
    modes = next(cb for cb in callbacks if isinstance(cb, ScheduleFreeModes))
    optimizer = _Modes()
    modes.on_step_end(None, None, _Control(False, False), optimizer=optimizer)
    assert optimizer.calls == []
    modes.on_step_end(None, None, _Control(True, False), optimizer=optimizer)
    modes.on_step_end(None, None, _Control(False, True), optimizer=optimizer)
    modes.on_train_end(None, None, None, optimizer=optimizer)
    assert optimizer.calls == ["eval"] * 3
    assert not any(
        isinstance(cb, ScheduleFreeModes) for cb in builtin_manager().hooks.trainer_callbacks(make_config())
    )


def test_transformers_optimizers_set_trainer_optim():
    assert builtin_manager().hooks.training_arguments(make_config(optimizer="lomo")) == {"optim": "lomo"}
    assert "optim" not in builtin_manager().hooks.training_arguments(make_config(optimizer="adamw_torch"))


# --- a training run -----------------------------------------------------------------------


@pytest.mark.slow
def test_training_with_lion_8bit_and_cosine_with_min_lr(tmp_path, small_vocab_model_dir):
    pytest.importorskip("bitsandbytes")
    data = first_chat_rows(tmp_path / "chat.jsonl", 8)
    keys = dict(optimizer="lion_8bit", lr_scheduler="cosine_with_min_lr", min_lr_ratio=0.1, warmup_steps=1)
    path = write_config(tmp_path, small_vocab_model_dir, data, adapter="lora", lora_target_linear=True,
                        max_steps=4, learning_rate=1e-3, **keys)  # fmt: skip
    cfg, manager = load_config(path)
    result = run_training(cfg, manager)
    assert result.global_step == 4
    logs = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    lrs = [entry["learning_rate"] for entry in logs if "loss" in entry]
    theirs = curve(
        lambda opt: get_scheduler(
            "cosine_with_min_lr", opt, 1, 4, scheduler_specific_kwargs={"min_lr_rate": 0.1}
        ),
        4,
    )
    assert lrs == pytest.approx([lr / PEAK * 1e-3 for lr in theirs], rel=1e-9)
    assert Path(tmp_path / "out" / "adapter_model.safetensors").exists()


def test_the_arguments_given_to_transformers_have_every_field_its_builder_reads():
    import inspect
    import re

    from transformers import Trainer, trainer_optimizer

    from ftk.plugins.optimizers.hf_optimizers import OptimizerArguments

    source = inspect.getsource(trainer_optimizer) + inspect.getsource(Trainer.get_optimizer_cls_and_kwargs)
    read = set(re.findall(r"\bargs\.(\w+)", source))
    assert read and read <= set(OptimizerArguments.__dataclass_fields__)
