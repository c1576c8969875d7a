"""Chunked cross-entropy: the same loss and gradients as the plain loss, never all logits at once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from ftk.plugins.loss import causal_lm_loss, compute_loss


def chunked_cfg(num_chunks: int) -> SimpleNamespace:
    return SimpleNamespace(
        chunked_cross_entropy=True,
        chunked_cross_entropy_num_chunks=num_chunks,
        router_aux_loss_coef=None,
        gradient_accumulation_steps=1,
    )


def padded_batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.randint(0, 5000, (2, 24))
    labels = ids.clone()
    labels[:, :5] = -100
    labels[1, 18:] = -100
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def packed_batch() -> dict[str, torch.Tensor]:
    """Two documents of 10 and 14 tokens in one row, position_ids restarting (no attention mask)."""
    torch.manual_seed(1)
    ids = torch.randint(0, 5000, (1, 24))
    labels = ids.clone()
    labels[0, [0, 1, 10, 11]] = -100
    labels[0, 10] = -100  # the first token of a document is never a target across the boundary
    position_ids = torch.cat([torch.arange(10), torch.arange(14)]).unsqueeze(0)
    return {"input_ids": ids, "position_ids": position_ids, "labels": labels}


def gradients(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("make_batch", [padded_batch, packed_batch], ids=["padded", "packed"])
@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
def test_chunked_loss_equals_the_plain_loss_and_gradients(tiny_model_dir, make_batch, adapter):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if adapter:
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.train()
    inputs = make_batch()

    plain = compute_loss(model=model, inputs=inputs, num_items_in_batch=7)
    plain.backward()
    plain_grads = gradients(model)
    model.zero_grad()
    chunked = compute_loss(model=model, inputs=inputs, num_items_in_batch=7, cfg=chunked_cfg(3))
    chunked.backward()
    chunked_grads = gradients(model)

    assert chunked.item() == pytest.approx(plain.item(), abs=1e-5)
    assert len(chunked_grads) == len(plain_grads) > 0
    for a, b in zip(chunked_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_chunked_loss_never_holds_more_than_one_chunk_of_logits(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    inputs = padded_batch()
    trained = int(inputs["labels"][:, 1:].ne(-100).sum())
    rows_seen: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: rows_seen.append(output.reshape(-1, output.size(-1)).size(0))
    )
    loss = compute_loss(model=model, inputs=inputs, num_items_in_batch=None, cfg=chunked_cfg(4))
    loss.backward()
    handle.remove()
    chunk = -(-trained // 4)
    # Forward: one head call for the model's own single kept position, then one per chunk;
    # backward: each chunk recomputed.  No call ever sees more rows than one chunk.
    assert max(rows_seen) <= max(chunk, inputs["input_ids"].size(0))
    assert sum(rows_seen[1:5]) == trained
    assert len(rows_seen) == 1 + 4 + 4
    reference = causal_lm_loss(
        model(**{k: v for k, v in inputs.items() if k != "labels"}).logits, inputs["labels"], None
    )
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
