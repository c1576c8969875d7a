"""The default loss: computing logits only where tokens are trained changes nothing."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from ftk.plugins.loss import causal_lm_loss, compute_loss


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

    fast = compute_loss(model=model, inputs=inputs, num_items_in_batch=None)
    fast.backward()
    fast_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full = causal_lm_loss(model(input_ids=ids, attention_mask=mask).logits, labels, None)
    full.backward()

    assert torch.allclose(fast, full, atol=1e-6)
    for a, b in zip(fast_grads, (p.grad for p in model.parameters()), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_num_items_in_batch_sets_the_denominator():
    logits = torch.zeros(1, 3, 4)  # uniform: every trained token costs log(4)
    labels = torch.tensor([[-100, 1, 2]])
    loss = causal_lm_loss(logits, labels, num_items_in_batch=4)
    assert torch.isclose(loss, torch.log(torch.tensor(4.0)) * 2 / 4)
