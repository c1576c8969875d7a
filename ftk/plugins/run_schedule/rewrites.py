"""axolotl spellings rewritten before validation: ``batch_size``, a fractional ``warmup_steps``, ``offload``.

* ``batch_size`` is axolotl's older way to give the batch of one process per optimizer step:
  ``micro_batch_size x gradient_accumulation_steps``.  It becomes ``gradient_accumulation_steps``.
* ``warmup_steps`` below 1 is, for axolotl and transformers, a share of the run's steps: it
  becomes ``warmup_ratio`` (the same ``ceil(steps x share)`` warmup steps), which excludes
  ``warmup_ratio`` given too.
* ``gradient_checkpointing: offload`` is axolotl's older spelling of ``gradient_checkpointing: true``
  with ``activation_offloading: true``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftk.core.config.rewrite import ConfigRewrite


def _whole_positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def rewrite_batch_size(rewrite: ConfigRewrite) -> None:
    """``batch_size: B`` into ``gradient_accumulation_steps: B / micro_batch_size`` (a problem when it
    is not a multiple, or disagrees with an explicit ``gradient_accumulation_steps``)."""
    data = rewrite.data
    if "batch_size" not in data:
        return
    batch = data["batch_size"]
    if batch is None:  # not set
        rewrite.drop(("batch_size",))
        return
    if not _whole_positive(batch):
        rewrite.problem(("batch_size",), f"must be a whole number above 0, not {batch!r}")
        return
    micro = data.get("micro_batch_size", 1)
    if not _whole_positive(micro):
        rewrite.drop(("batch_size",))  # micro_batch_size's own error says what is wrong
        return
    if batch % micro:
        rewrite.problem(
            ("batch_size",),
            f"{batch} is not a multiple of micro_batch_size ({micro}); batch_size is micro_batch_size x "
            "gradient_accumulation_steps",
        )
        return
    steps = batch // micro
    given = data.get("gradient_accumulation_steps")
    if given is not None:
        if given != steps:
            rewrite.problem(
                ("batch_size",),
                f"{batch} disagrees with micro_batch_size x gradient_accumulation_steps = {micro} x {given!r}; "
                "set batch_size or gradient_accumulation_steps, not both",
            )
            return
        rewrite.drop(("batch_size",))
        return
    rewrite.set(
        ("gradient_accumulation_steps",),
        steps,
        note=f"{steps}, from batch_size {batch} / micro_batch_size {micro}",
        line_of=("batch_size",),
    )
    rewrite.drop(("batch_size",))


def rewrite_warmup_share(rewrite: ConfigRewrite) -> None:
    """``warmup_steps`` strictly between 0 and 1 into ``warmup_ratio`` (with a note)."""
    value = rewrite.data.get("warmup_steps")
    if isinstance(value, float) and 0 < value < 1:
        rewrite.rename(
            ("warmup_steps",),
            "warmup_ratio",
            note=f"{value:g}: warmup_steps below 1 is a share of the training steps (warmup_ratio)",
        )


def rewrite_checkpointing_offload(rewrite: ConfigRewrite) -> None:
    """``gradient_checkpointing: offload`` into ``gradient_checkpointing: true`` + ``activation_offloading: true``."""
    data = rewrite.data
    if data.get("gradient_checkpointing") != "offload":
        return
    if "activation_offloading" in data and data["activation_offloading"] not in (None, True):
        rewrite.problem(
            ("gradient_checkpointing",),
            f"offload turns on activation_offloading, which is set to {data['activation_offloading']!r}; "
            "write gradient_checkpointing: true and keep activation_offloading",
        )
        return
    rewrite.set(("gradient_checkpointing",), True)
    rewrite.set(
        ("activation_offloading",),
        True,
        note="true, from gradient_checkpointing: offload (axolotl's older spelling)",
        line_of=("gradient_checkpointing",),
    )
