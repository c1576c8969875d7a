"""The private parts of ``transformers.Trainer`` that ``ftk.integrations.transformers_trainer`` relies on.

``pyproject.toml`` allows the transformers versions this file (and the suite) passed on; a new
transformers that renames one of these fails here, by name, instead of in a training run.
"""

from __future__ import annotations

import inspect
from importlib.metadata import requires, version

import transformers.trainer as trainer_module
from packaging.requirements import Requirement
from packaging.version import Version
from transformers import Trainer

from ftk.integrations.transformers_trainer import StagedCheckpointTrainer


def allowed(package: str) -> Requirement:
    """What the installed ftk (its pyproject.toml) allows of ``package``."""
    return next(Requirement(dep) for dep in requires("ftk") or [] if Requirement(dep).name == package)


def test_installed_transformers_is_in_the_tested_range():
    requirement = allowed("transformers")
    assert Version(version("transformers")) in requirement.specifier
    assert {spec.operator for spec in requirement.specifier} == {">=", "<"}  # a tested floor and a ceiling


def parameters(method) -> list[str]:
    return list(inspect.signature(method).parameters)


def test_the_overridden_private_methods_exist_with_the_same_arguments():
    assert parameters(Trainer._get_grad_norm) == ["self", "model", "grad_norm"]
    assert parameters(Trainer._get_output_dir) == ["self", "trial"]
    assert parameters(Trainer._save_checkpoint) == ["self", "model", "trial"]
    for name in ("_get_grad_norm", "_get_output_dir", "_save_checkpoint"):
        assert name in vars(StagedCheckpointTrainer)  # what the integration overrides, and only there


def test_trainer_rotates_nothing_once_its_save_total_limit_is_cleared():
    # StagedCheckpointTrainer takes save_total_limit for ftk's own rotation and sets Trainer's to
    # None: every place Trainer deletes checkpoints must be governed by that argument.
    source = inspect.getsource(trainer_module)
    calls = source.count("rotate_checkpoints(")
    assert calls >= 1
    assert source.count("save_total_limit=self.args.save_total_limit") == calls
    assert "self.args.save_total_limit == 1" in source  # the end-of-training deletion


def test_trainer_still_calls_them_where_ftk_expects():
    source = inspect.getsource(Trainer)
    # The training loop takes the step's norm through _get_grad_norm; a save asks _get_output_dir
    # where to write; a scheduler Trainer created is rebuilt on the next train() call.
    assert "self._get_grad_norm(" in source
    assert "self._get_output_dir(" in inspect.getsource(Trainer._save_checkpoint)
    assert "if self._created_lr_scheduler:" in source
    # The loss compute_loss returns is not divided by the accumulation steps again when this is set.
    assert "loss_is_scaled_for_ga" in inspect.getsource(Trainer.training_step)
