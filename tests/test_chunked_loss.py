"""Chunked cross-entropy (the default loss): the same loss and gradients as all logits at once."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
)

from ftk.plugins.loss.chunked import rows_per_chunk
from tests.helpers import LOGIT_TRANSFORM_FAMILIES, make_config, reference_loss, token_mean_loss

PLAIN = make_config(chunked_cross_entropy=False)


def padded_batch(vocab: int = 5000) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (2, 24))
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


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def loss_and_gradients(model, inputs, cfg) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = token_mean_loss(model, inputs, 7, cfg)
    loss.backward()
    return loss.item(), gradients(model)


def assert_same_as_plain(model, inputs, cfg, atol: float = 1e-5) -> float:
    plain_loss, plain_grads = loss_and_gradients(model, inputs, PLAIN)
    chunked_loss, chunked_grads = loss_and_gradients(model, inputs, cfg)
    assert chunked_loss == pytest.approx(plain_loss, abs=atol)
    assert chunked_grads.keys() == plain_grads.keys() and plain_grads
    for name, grad in chunked_grads.items():
        # Float32 summation order differs; the tolerance follows the gradient's own scale.
        scale = max(1.0, plain_grads[name].abs().max().item())
        torch.testing.assert_close(
            grad, plain_grads[name], atol=atol * scale, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )
    return chunked_loss


ADAPTERS = {
    "full": None,  # the tied embedding/head is trained: its gradient comes from both uses
    "lora": LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
    "lora-on-head": LoraConfig(r=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False),
}


@pytest.mark.parametrize("num_chunks", [3, None], ids=["3-chunks", "automatic"])
@pytest.mark.parametrize("make_batch", [padded_batch, packed_batch], ids=["padded", "packed"])
@pytest.mark.parametrize("adapter", ADAPTERS, ids=list(ADAPTERS))
def test_chunked_loss_equals_the_plain_loss_and_gradients(tiny_model_dir, make_batch, adapter, num_chunks):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if ADAPTERS[adapter] is not None:
        model = get_peft_model(model, ADAPTERS[adapter])
    model.train()
    assert_same_as_plain(model, make_batch(), make_config(chunked_cross_entropy_num_chunks=num_chunks))
    if adapter == "lora-on-head":  # the head's own LoRA weights got their gradient through the chunks
        head_grads = [n for n in gradients(model) if "lm_head" in n]
        assert len(head_grads) == 2


def test_default_config_and_no_config_use_the_chunked_loss(tiny_model_dir):
    assert make_config().chunked_cross_entropy is True
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rows_seen: list[int] = []
    model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: rows_seen.append(output.reshape(-1, output.size(-1)).size(0))
    )
    model.get_output_embeddings().weight.requires_grad_(False)  # the head is frozen, as under LoRA
    token_mean_loss(model, padded_batch(), None).backward()
    # 32 trained positions at 27 rows per chunk (16 MiB of float32 logits over 151,680 tokens);
    # the first call is the model's own single kept position per row.
    assert rows_seen == [2, 27, 5]

    rows_seen.clear()
    model.get_output_embeddings().weight.requires_grad_(True)  # full fine-tuning trains the head
    token_mean_loss(model, padded_batch(), None).backward()
    assert rows_seen == [2, 32]  # chunks of at least the hidden size (64) rows


def test_chunked_loss_never_holds_more_than_one_chunk_of_logits(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    inputs = padded_batch()
    trained = int(inputs["labels"][:, 1:].ne(-100).sum())
    rows_seen: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: rows_seen.append(output.reshape(-1, output.size(-1)).size(0))
    )
    loss = token_mean_loss(model, inputs, None, make_config(chunked_cross_entropy_num_chunks=4))
    loss.backward()
    handle.remove()
    chunk = -(-trained // 4)
    # Forward: one head call for the model's own single kept position per row, then one per
    # chunk; the backward pass recomputes nothing (the chunks' gradients were taken on the way).
    assert rows_seen == [2, chunk, chunk, chunk, trained - 3 * chunk]
    reference = reference_loss(
        model(**{k: v for k, v in inputs.items() if k != "labels"}).logits, inputs["labels"], None
    )
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)


def test_a_sharded_head_is_recomputed_chunk_by_chunk_through_its_own_forward(tiny_model_dir):
    """DeepSpeed ZeRO-3 marks parameters with ``ds_id``; their head must run through its hooks again."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).train()
    inputs = padded_batch()
    plain_loss, plain_grads = loss_and_gradients(model, inputs, PLAIN)
    model.get_output_embeddings().weight.ds_id = 0
    rows_seen: list[int] = []
    model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: rows_seen.append(output.reshape(-1, output.size(-1)).size(0))
    )
    loss, grads = loss_and_gradients(model, inputs, make_config(chunked_cross_entropy_num_chunks=2))
    assert rows_seen == [2, 16, 16, 16, 16]  # forward, then each chunk again in backward
    assert loss == pytest.approx(plain_loss, abs=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("model_class", "config"), LOGIT_TRANSFORM_FAMILIES.values(), ids=list(LOGIT_TRANSFORM_FAMILIES)
)
def test_families_that_transform_their_logits(model_class, config):
    torch.manual_seed(0)
    model = model_class(config).train()
    with torch.no_grad():  # spread the logits, so that the transform matters
        model.get_output_embeddings().weight.mul_(20.0)
    loss = assert_same_as_plain(model, padded_batch(512), make_config(chunked_cross_entropy_num_chunks=3))
    assert loss > 0.5


def test_evaluation_without_gradients_matches_and_keeps_no_graph(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    inputs = padded_batch()
    with torch.no_grad():
        chunked = token_mean_loss(model, inputs, None, make_config(chunked_cross_entropy_num_chunks=3))
        plain = token_mean_loss(model, inputs, None, PLAIN)
    assert not chunked.requires_grad
    assert chunked.item() == pytest.approx(plain.item(), abs=1e-6)


def test_rows_per_chunk():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert rows_per_chunk(1000, 151_680, cpu) == 27  # 16 MiB of float32 logits
    assert rows_per_chunk(1000, 32_000, cpu) == 131
    assert rows_per_chunk(1000, 151_680, gpu) == 442  # 256 MiB
    assert rows_per_chunk(1000, 151_680, cpu, num_chunks=8) == 125
    assert rows_per_chunk(5, 151_680, cpu, num_chunks=8) == 1
    assert rows_per_chunk(1, 10_000_000, cpu) == 1
    assert rows_per_chunk(1000, 151_680, cpu, min_rows=256) == 256  # a trained head: hidden size 256
    assert rows_per_chunk(1000, 151_680, cpu, num_chunks=8, min_rows=256) == 125


def test_bfloat16_model_matches_the_plain_loss(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model = get_peft_model(
        model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    ).train()
    plain_loss, plain_grads = loss_and_gradients(model, packed_batch(), PLAIN)
    chunked_loss, chunked_grads = loss_and_gradients(
        model, packed_batch(), make_config(chunked_cross_entropy_num_chunks=3)
    )
    assert chunked_loss == pytest.approx(plain_loss, rel=1e-3)
    assert model.get_output_embeddings().weight.dtype == torch.bfloat16  # the head runs in bf16
    for name, grad in chunked_grads.items():
        assert grad.dtype == plain_grads[name].dtype
        torch.testing.assert_close(grad, plain_grads[name], atol=2e-2, rtol=2e-2, msg=name)
