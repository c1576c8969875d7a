"""Built-in plugin: ``unfrozen_parameters`` (axolotl's key): full fine-tuning of some parameters only.

Each entry is a regular expression matched from the start of a parameter's name (``re.match``),
with axolotl's reading of dots: a ``.`` is a literal dot unless it comes before ``+`` (``.+``
is "anything") or is escaped.  So ``model.layers.1[0-9].`` trains layers 10 to 19 and
``lm_head`` trains ``lm_head.weight``.  Parameters that no entry matches get
``requires_grad=False``; the optimizer only sees the others.  A tensor shared by two names
(tied embeddings) trains when either name matches.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import Field

from ftk.core.config.schema import FtkConfig, StrictModel
from ftk.core.errors import FtkError, say
from ftk.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from ftk.core.registry import Register

SECTION = "freeze"
#: axolotl's row-range suffix, ``name[start:end]`` (gradient masking of some rows; not supported).
ROW_RANGE = re.compile(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$")


class FreezeSettings(StrictModel):
    """The ``unfrozen_parameters`` key."""

    unfrozen_parameters: list[str] | None = Field(
        None,
        description="Full fine-tuning of only the parameters whose names match one of these regexes "
        "(matched from the start of the name; '.' is a literal dot except in '.+'), "
        "e.g. [^lm_head.weight$, model.layers.1[0-9].]; every other parameter is frozen. "
        "Not with an adapter.",
    )


def name_regex(pattern: str) -> re.Pattern[str]:
    """Compile an ``unfrozen_parameters`` entry: unescaped dots not before ``+`` become literal dots."""
    out: list[str] = []
    escaped = False
    for index, char in enumerate(pattern):
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            out.append(char)
            escaped = True
        elif char == "." and not pattern.startswith("+", index + 1):
            out.append(r"\.")
        else:
            out.append(char)
    return re.compile("".join(out))


def _problems(cfg: FtkConfig) -> list[tuple[tuple[str | int, ...], str]]:
    patterns = cfg.section(SECTION).unfrozen_parameters
    if not patterns:
        return []
    if cfg.adapter is not None:
        return [
            (
                ("unfrozen_parameters",),
                f"applies to full fine-tuning only: with adapter: {cfg.adapter} the adapter's keys choose "
                "what trains (lora_target_modules, lora_modules_to_save); remove one of them",
            )
        ]
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for index, pattern in enumerate(patterns):
        where = ("unfrozen_parameters", index)
        if ROW_RANGE.match(pattern):  # axolotl reads a trailing [n], [a:b] as rows
            problems.append(
                (
                    where,
                    f"{pattern!r}: row ranges ([start:end]) are not supported; ftk trains whole parameters",
                )
            )
            continue
        try:
            name_regex(pattern)
        except re.error as exc:
            problems.append((where, f"{pattern!r} is not a valid regular expression: {exc}"))
    return problems


def freeze_except(model: Any, patterns: list[str]) -> tuple[int, int]:
    """Freeze every parameter of ``model`` that no pattern matches; returns (trainable, total) elements.

    A pattern that matches no parameter name is an error naming it and a few names.
    """
    regexes = [name_regex(pattern) for pattern in patterns]
    names: dict[int, list[str]] = {}
    tensors: dict[int, Any] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
        tensors[id(param)] = param
    used = [False] * len(regexes)
    for key, param in tensors.items():
        hits = [i for i, regex in enumerate(regexes) if any(regex.match(name) for name in names[key])]
        for i in hits:
            used[i] = True
        param.requires_grad_(bool(hits))
    unused = [i for i, hit in enumerate(used) if not hit]
    if unused:
        every = [name for group in names.values() for name in group]
        shown = ", ".join(every[:3] + (["...", every[-1]] if len(every) > 3 else []))
        index = unused[0]
        raise FtkError(
            f"unfrozen_parameters[{index}]: {patterns[index]!r} matches no parameter of "
            f"{type(model).__name__} (matched from the start of the name, '.' is a literal dot); "
            f"names look like: {shown}"
        )
    total = sum(param.numel() for param in tensors.values())
    trainable = sum(param.numel() for param in tensors.values() if param.requires_grad)
    return trainable, total


# --- hooks -------------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add the top-level ``unfrozen_parameters`` key."""
    register(SECTION, FreezeSettings, flat=True)


@hookimpl
def config_problems(cfg: FtkConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Entries that do not compile, row ranges, and ``unfrozen_parameters`` with an adapter."""
    return _problems(cfg)


@hookimpl
def post_model_load(cfg: FtkConfig, model: Any, tokenizer: Any, purpose: str) -> None:
    """Before training: freeze the parameters ``unfrozen_parameters`` does not name, and say how many train."""
    patterns = cfg.section(SECTION).unfrozen_parameters
    if purpose != "train" or not patterns or cfg.adapter is not None:
        return
    trainable, total = freeze_except(model, patterns)
    say(
        f"unfrozen_parameters: {trainable:,} of {total:,} parameters trainable "
        f"({100 * trainable / max(total, 1):.2f}%), the rest frozen"
    )
