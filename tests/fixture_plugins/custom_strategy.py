"""A user's own strategy, named in a config as ``type: tests.fixture_plugins.custom_strategy.shout``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ShoutOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str = "text"


def shout(dataset, tokenizer, cfg):
    """Train on the upper-cased text of ``field``."""
    field = dataset.options.field

    def to_features(row):
        ids = tokenizer(row[field].upper(), add_special_tokens=False)["input_ids"]
        return {"input_ids": ids, "labels": ids}

    return to_features


shout.options_model = ShoutOptions
