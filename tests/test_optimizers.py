"""The built-in optimizers and schedules (plugins adding their own: test_registrations.py).

The training runs use the small-vocabulary tiny model (``small_vocab_model_dir``): nothing checked
here depends on the vocabulary, and each run is faster on it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers.optimization import Adafactor

from ftk.commands.train import run_training
from ftk.core.config.loader import load_config
from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError
from ftk.core.trainer import build_optimizer, build_scheduler, parameter_groups, warmup_steps
from ftk.plugins.optimizers import import_optional
from tests.helpers import builtin_manager, first_chat_rows, make_config, write_config


def create_optimizer(cfg: FtkConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    return build_optimizer(cfg, builtin_manager().collect_registrations(), model)


def create_scheduler(cfg: FtkConfig, optimizer: torch.optim.Optimizer, num_training_steps: int):
    return build_scheduler(cfg, builtin_manager().collect_registrations(), optimizer, num_training_steps)


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.proj = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.frozen = torch.nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def with_grads(model: torch.nn.Module) -> torch.nn.Module:
    """Give every trainable parameter a fixed, sign-mixed gradient."""
    torch.manual_seed(0)
    for param in model.parameters():
        if param.requires_grad:
            param.grad = torch.randn_like(param) + 0.5 * torch.randn_like(param).sign()
    return model


# --- optimizers ---------------------------------------------------------------------------


def test_weight_decay_skips_biases_norms_and_one_dimensional_params():
    model = Small()
    decayed, plain = parameter_groups(model, weight_decay=0.1)
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model.embed.weight), id(model.proj.weight)}
    assert {id(p) for p in plain["params"]} == {
        id(model.proj.bias),
        id(model.norm.weight),
        id(model.norm.bias),
    }


@pytest.mark.parametrize("name", ["adamw_torch", "adamw_torch_fused"])
def test_adamw_first_step_follows_the_config(name):
    lr, wd, eps = 0.01, 0.2, 0.5  # a large eps so that it visibly shapes the step
    cfg = make_config(optimizer=name, learning_rate=lr, weight_decay=wd, adam_epsilon=eps, adam_beta1=0.8)
    model = with_grads(Small())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = create_optimizer(cfg=cfg, model=model)
    optimizer.step()

    assert type(optimizer) is torch.optim.AdamW
    assert all(group["betas"] == (0.8, 0.999) for group in optimizer.param_groups)
    # torch's fused kernel runs on CPU; the other name is the default (foreach) implementation.
    assert bool(optimizer.param_groups[0]["fused"]) is (name == "adamw_torch_fused")
    # First AdamW step: bias correction makes it lr * g / (|g| + eps), after decoupled decay.
    for n, param in model.named_parameters():
        if n.startswith("frozen"):
            assert torch.equal(param, before[n])
            continue
        decay = wd if n in ("embed.weight", "proj.weight") else 0.0
        g = param.grad
        expected = before[n] * (1 - lr * decay) - lr * g / (g.abs() + eps)
        assert torch.allclose(param, expected, atol=1e-7), n


def test_fused_adamw_falls_back_with_a_note_where_the_device_has_no_kernel(capsys):
    with torch.device("meta"):
        model = torch.nn.Linear(4, 4)
    optimizer = create_optimizer(cfg=make_config(optimizer="adamw_torch_fused"), model=model)
    assert type(optimizer) is torch.optim.AdamW
    assert not optimizer.param_groups[0]["fused"]
    err = capsys.readouterr().err
    assert err.startswith("note: optimizer: fused AdamW is not available here (meta torch.float32: ")
    assert err.rstrip().endswith("; using adamw_torch")


def test_sgd_uses_momentum_0_9():
    lr = 0.1
    model = with_grads(torch.nn.Linear(3, 2))
    start = model.weight.detach().clone()
    g = model.weight.grad.clone()
    optimizer = create_optimizer(cfg=make_config(optimizer="sgd", learning_rate=lr), model=model)
    assert type(optimizer) is torch.optim.SGD
    optimizer.step()
    optimizer.step()  # same gradient: the momentum buffer is g, then 0.9 * g + g
    assert torch.allclose(model.weight, start - lr * g - lr * 1.9 * g, atol=1e-7)


def test_adafactor_steps_at_the_configured_learning_rate():
    lr = 0.003
    model = with_grads(torch.nn.Linear(3, 2))
    start = model.bias.detach().clone()
    optimizer = create_optimizer(cfg=make_config(optimizer="adafactor", learning_rate=lr), model=model)
    assert type(optimizer) is Adafactor
    optimizer.step()
    # First step on a vector: the second moment is g**2, so the update is lr * sign(g), unscaled.
    assert torch.allclose(model.bias, start - lr * model.bias.grad.sign(), atol=1e-8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bnb_8bit_on_a_gpu_builds_adamw8bit_or_says_how_to_install_it():
    model = torch.nn.Sequential(torch.nn.Embedding(300, 64), torch.nn.Linear(64, 64)).cuda()
    cfg = make_config(optimizer="adamw_bnb_8bit", learning_rate=1e-3)
    try:
        import bitsandbytes  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(FtkError, match=r"^optimizer: adamw_bnb_8bit needs bitsandbytes: pip install"):
            create_optimizer(cfg=cfg, model=model)
        return
    optimizer = create_optimizer(cfg=cfg, model=model)
    assert type(optimizer).__name__ == "AdamW8bit"
    model(torch.arange(8, device="cuda")).sum().backward()
    before = model[1].weight.detach().clone()
    optimizer.step()
    assert not torch.equal(model[1].weight, before)


def test_missing_optional_package_names_the_key_and_the_extra():
    with pytest.raises(FtkError) as caught:
        import_optional("ftk_package_that_is_not_installed.optim", "bnb", "optimizer", "adamw_bnb_8bit")
    assert str(caught.value) == (
        "optimizer: adamw_bnb_8bit needs ftk_package_that_is_not_installed: pip install 'ftk[bnb]'"
    )
    # A package that is there but fails to import is reported as itself, not as "not installed".
    with pytest.raises(ModuleNotFoundError, match="ftk_dependency_that_does_not_exist"):
        import_optional("tests.fixture_plugins.broken_plugin", "bnb", "optimizer", "x")


def test_a_model_without_trainable_parameters_is_an_error():
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(FtkError, match="^optimizer: the model has no trainable parameters$"):
        create_optimizer(cfg=make_config(), model=model)


# --- schedules ----------------------------------------------------------------------------

PEAK = 0.01


def lr_curve(cfg: FtkConfig, total: int) -> list[float]:
    """The learning rate of optimizer steps 0 .. total (the last: after the final step)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.learning_rate)
    scheduler = create_scheduler(cfg=cfg, optimizer=optimizer, num_training_steps=total)
    lrs = []
    for _ in range(total + 1):
        lrs.append(scheduler.get_last_lr()[0])
        assert optimizer.param_groups[0]["lr"] == lrs[-1]
        optimizer.step()
        scheduler.step()
    return lrs


def formula(step: int, shape: str, warmup: int, total: int, floor: float) -> float:
    """The documented schedule, written out independently of the plugin."""
    if step < warmup:  # no step at 0: step k (from 1) of W runs at k / (W + 1)
        return PEAK * (step + 1) / (warmup + 1)
    if shape == "constant":
        return PEAK
    p = (step - warmup) / (total - warmup)
    decay = (1 + math.cos(math.pi * p)) / 2 if shape == "cosine" else 1 - p
    return PEAK * (floor + (1 - floor) * decay)


@pytest.mark.parametrize("shape", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("floor", [0.0, 0.1])
@pytest.mark.parametrize(
    ("warmup_key", "total", "warmup"),
    # by steps; by ratio: ceil(11 * 0.25) = 3 steps, and 8 steps of decay with a middle at step 7
    [({"warmup_steps": 2}, 10, 2), ({"warmup_ratio": 0.25}, 11, 3)],
)
def test_schedule_values(shape, floor, warmup_key, total, warmup):
    cfg = make_config(learning_rate=PEAK, lr_scheduler=shape, min_lr_ratio=floor, **warmup_key)
    lrs = lr_curve(cfg, total)
    middle = warmup + (total - warmup) // 2
    decays = shape != "constant"

    assert lrs[0] == pytest.approx(PEAK / (warmup + 1), rel=1e-12)  # the first step already learns
    assert lrs[1] == pytest.approx(2 * PEAK / (warmup + 1), rel=1e-12)
    assert lrs[warmup] == pytest.approx(PEAK, rel=1e-12)  # end of warmup: the peak
    # Half way through the decay, cosine and linear are both half way to the floor.
    assert lrs[middle] == pytest.approx(PEAK * (floor + (1 - floor) / 2) if decays else PEAK, rel=1e-12)
    last_step = {
        "cosine": PEAK
        * (floor + (1 - floor) * (1 + math.cos(math.pi * (total - 1 - warmup) / (total - warmup))) / 2),
        "linear": PEAK * (floor + (1 - floor) / (total - warmup)),
        "constant": PEAK,
    }[shape]
    assert lrs[total - 1] == pytest.approx(last_step, rel=1e-12)
    assert lrs[total] == pytest.approx(PEAK * floor if decays else PEAK, rel=1e-12, abs=1e-18)
    assert lrs == pytest.approx(
        [formula(s, shape, warmup, total, floor) for s in range(total + 1)], rel=1e-12
    )


def test_warmup_length():
    assert warmup_steps(make_config(), 100) == 0
    assert warmup_steps(make_config(warmup_steps=7), 100) == 7
    assert warmup_steps(make_config(warmup_ratio=0.25), 11) == 3  # rounded up
    assert warmup_steps(make_config(warmup_ratio=0.1), 30) == 3  # 0.1 * 30 is 3.0000000000000004 in floats


def test_without_warmup_the_first_step_runs_at_the_peak():
    assert lr_curve(make_config(learning_rate=PEAK, lr_scheduler="linear"), 4)[:2] == pytest.approx(
        [PEAK, PEAK * 3 / 4], rel=1e-12
    )


def test_constant_ignores_min_lr_ratio_and_says_so(capsys):
    lrs = lr_curve(make_config(learning_rate=PEAK, lr_scheduler="constant", min_lr_ratio=0.5), 5)
    assert lrs == [PEAK] * 6
    assert "note: min_lr_ratio does not apply to lr_scheduler: constant; ignored" in capsys.readouterr().err


def test_warmup_as_long_as_the_run_is_noted(capsys):
    lrs = lr_curve(make_config(learning_rate=PEAK, warmup_steps=8), 4)
    assert lrs == pytest.approx([PEAK * k / 9 for k in range(1, 6)], rel=1e-12)
    assert "warmup (8 steps) is not shorter than the run (4 steps)" in capsys.readouterr().err


def test_a_restored_schedule_continues_where_it_stopped():
    cfg = make_config(learning_rate=PEAK, lr_scheduler="cosine", warmup_steps=2, min_lr_ratio=0.1)

    def build():
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
        return optimizer, create_scheduler(cfg=cfg, optimizer=optimizer, num_training_steps=10)

    first_opt, first = build()
    for _ in range(4):
        first_opt.step()
        first.step()
    second_opt, second = build()
    second_opt.load_state_dict(first_opt.state_dict())
    second.load_state_dict(first.state_dict())
    for _ in range(6):
        assert second.get_last_lr() == first.get_last_lr()
        assert second_opt.param_groups[0]["lr"] == first_opt.param_groups[0]["lr"]
        for opt, sched in ((first_opt, first), (second_opt, second)):
            opt.step()
            sched.step()


# --- training runs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def few_chats(tmp_path_factory) -> Path:
    return first_chat_rows(tmp_path_factory.mktemp("data") / "chat.jsonl", 8)


def train(tmp_path: Path, model_dir: Path, data: Path, **keys) -> list[dict]:
    """Run a 5-step LoRA fine-tune with ``keys`` added to the config; return the logged training entries."""
    path = write_config(
        tmp_path, model_dir, data, adapter="lora", lora_target_linear=True, max_steps=5, **keys
    )
    cfg, manager = load_config(path)
    result = run_training(cfg, manager)
    assert result.global_step == 5
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if "loss" in entry]


@pytest.mark.slow
def test_training_logs_the_builtin_schedule(tmp_path, small_vocab_model_dir, few_chats):
    schedule = {"learning_rate": 1.0e-3, "lr_scheduler": "cosine", "warmup_steps": 1, "min_lr_ratio": 0.1}
    logs = train(tmp_path, small_vocab_model_dir, few_chats, **schedule)
    assert [e["step"] for e in logs] == [1, 2, 3, 4, 5]
    # Logged step k is the rate step k trained at: one warmup step at half the peak (none at 0),
    # the peak, then cosine decay over 4 steps towards 0.1 of the peak, half way (0.55) at step 4.
    cosine = [(1 + math.cos(math.pi * p)) / 2 for p in (0.25, 0.5, 0.75)]
    expected = [0.5e-3, 1e-3] + [1e-3 * (0.1 + 0.9 * c) for c in cosine]
    assert expected[3] == pytest.approx(0.55e-3, rel=1e-12)
    assert [e["learning_rate"] for e in logs] == pytest.approx(expected, rel=1e-12)
