"""Top-level defaults of the ``chat_template`` dataset options: ``eot_tokens``, ``chat_template_kwargs``
and ``default_system_message``.

axolotl reads these keys at the top level of a config.  In ftk a dataset entry may set each of them
too; a top-level value is the default for every entry that does not set its own (the entry's value
wins whole: ``chat_template_kwargs`` are not merged).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, Field

from ftk.core.config.schema import StrictModel

if TYPE_CHECKING:
    from ftk.core.config.schema import FtkConfig

SECTION = "chat_template_defaults"
Options = TypeVar("Options", bound=BaseModel)


class ChatTemplateDefaults(StrictModel):
    """Top-level keys that set the default of the same-named ``chat_template`` dataset keys."""

    eot_tokens: list[str] | None = Field(
        None,
        description=(
            "Default eot_tokens of every chat_template dataset that sets none: end-of-turn tokens "
            "(one token each) trained with train_on_eos."
        ),
        json_schema_extra={"changes_data": True},
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        None,
        description="Default chat_template_kwargs of every chat_template dataset that sets none.",
        json_schema_extra={"changes_data": True},
    )
    default_system_message: str | None = Field(
        None,
        description="Default default_system_message of every chat_template dataset that sets none.",
        json_schema_extra={"changes_data": True},
    )


def with_top_level_defaults(options: Options, cfg: FtkConfig) -> Options:
    """``options`` with each key it does not set taken from the top level of ``cfg`` (when set there)."""
    updates = {}
    for key in ChatTemplateDefaults.model_fields:
        value = getattr(cfg, key, None)
        if value is not None and key in type(options).model_fields and key not in options.model_fields_set:
            updates[key] = value
    return options.model_copy(update=updates) if updates else options
