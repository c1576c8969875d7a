"""A plugin that does what peft before 0.22 did after a model is loaded: it reads transformers'
deprecated ``is_gradient_checkpointing``, which warns (FutureWarning) on every run that uses
gradient checkpointing.  ftk hides that warning (``ftk.cli.QUIET_WARNINGS``); the first-run tests
load this plugin so that the check does not depend on the installed peft version.
"""

from __future__ import annotations

from typing import Any

from ftk.core.hookspecs import hookimpl


@hookimpl
def post_model_load(model: Any) -> None:
    """Read the deprecated property, as peft's ``is_activation_checkpointing`` fallback does."""
    getattr(model, "is_gradient_checkpointing", False)
