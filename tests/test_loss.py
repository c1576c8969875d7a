"""The default loss: computing logits only where tokens are trained changes nothing; the core divides by the step's tokens."""

from __future__ import annotations

import math

import torch
from transformers import AutoModelForCausalLM

from tests.helpers import make_config, reference_loss, token_mean_loss


def test_trained_position_loss_equals_full_logits_loss_and_gradients(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.randint(0, 5000, (2, 16))
    labels = ids.clone()
    labels[:, :6] = -100
    labels[1, 12:] = -100
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    for chunked in (True, False):
        model.zero_grad()
        fast = token_mean_loss(model, inputs, cfg=make_config(chunked_cross_entropy=chunked))
        fast.backward()
        fast_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        full = reference_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
        full.backward()

        assert torch.allclose(fast, full, atol=1e-6)
        for a, b in zip(fast_grads, (p.grad for p in model.parameters()), strict=True):
            assert torch.allclose(a, b, atol=1e-6)


def test_num_items_in_batch_sets_the_denominator(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # uniform logits: every trained token costs ln V
    vocab = model.config.vocab_size
    inputs = {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[-100, 6, 7]])}
    # Two trained tokens in this micro-batch, four in the whole optimizer step.
    assert token_mean_loss(model, inputs, 4).item() == torch.tensor(2 * math.log(vocab) / 4).item()
    assert abs(token_mean_loss(model, inputs, None).item() - math.log(vocab)) < 1e-5
