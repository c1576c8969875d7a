"""A test plugin that defines a key axolotl has and ftk does not (``relora``): the plugin must win."""

from __future__ import annotations

from pydantic import Field

from ftk.core.config.schema import StrictModel
from ftk.core.hookspecs import hookimpl


class ReloraSection(StrictModel):
    """Flat keys ``relora`` and ``relora_prune_ratio``."""

    relora: bool = Field(False, description="Restart LoRA every few steps.")
    relora_prune_ratio: float = Field(0.9, description="Share of the optimizer state pruned at a restart.")


@hookimpl
def register_config_sections(register):
    register("relora_section", ReloraSection, flat=True)
