"""Packing: bins, sampler invariants, and equivalence with running each example alone."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ftk.commands.train import run_training
from ftk.core.config.loader import load_config
from ftk.core.data.collate import PaddingCollator
from ftk.core.data.packing import (
    REAL_TOKENS_KEY,
    PackedBatchSampler,
    PackingCollator,
    pack_lengths,
    packing_efficiency,
)
from tests.helpers import token_mean_loss

REPO = Path(__file__).resolve().parents[1]
PAD = 151643


def example(ids: list[int], trained_from: int) -> dict:
    labels = [-100] * trained_from + ids[trained_from:]
    return {"input_ids": ids, "labels": labels}


def documents() -> list[dict]:
    generator = torch.Generator().manual_seed(3)
    docs = []
    for length, trained_from in ((9, 3), (5, 1), (12, 6), (3, 0)):
        ids = torch.randint(0, 5000, (length,), generator=generator).tolist()
        docs.append(example(ids, trained_from))
    return docs


def trained_count(batch_labels: torch.Tensor) -> int:
    return int(batch_labels[..., 1:].ne(-100).sum())


def model_for(tiny_model_dir: Path, attention: str, dtype=torch.float32):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype, attn_implementation=attention)
    return model.train()


def gradients(model) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def loss_and_grads(model, batches: list[dict], num_items: int):
    """Accumulate like a Trainer step: each micro-batch's loss is its sum over the step's token count."""
    model.zero_grad()
    total = 0.0
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != REAL_TOKENS_KEY}
        loss = token_mean_loss(model, inputs, num_items)
        loss.backward()
        total += loss.item()
    return total, gradients(model)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_batch_equals_examples_one_by_one(tiny_model_dir, attention):
    model = model_for(tiny_model_dir, attention)
    docs = documents()
    packed = PackingCollator(pad_token_id=PAD)([docs])
    alone = [PaddingCollator(pad_token_id=PAD, pad_to_multiple_of=None)([doc]) for doc in docs]
    num_items = sum(trained_count(batch["labels"]) for batch in alone)
    assert trained_count(packed["labels"]) == num_items  # no label crosses an example boundary

    packed_loss, packed_grads = loss_and_grads(model, [packed], num_items)
    alone_loss, alone_grads = loss_and_grads(model, alone, num_items)
    assert packed_loss == pytest.approx(alone_loss, abs=1e-5)
    for a, b in zip(packed_grads, alone_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_bf16_padding_rows_stay_finite(tiny_model_dir, attention):
    model = model_for(tiny_model_dir, attention, dtype=torch.bfloat16)
    docs = documents()
    padded = PaddingCollator(pad_token_id=PAD)([docs[2], docs[3]])  # the second row is mostly padding
    packed = PackingCollator(pad_token_id=PAD)([[docs[0], docs[1]], [docs[3]]])  # the second bin is short
    for batch in (padded, packed):
        loss, grads = loss_and_grads(model, [batch], trained_count(batch["labels"]))
        assert torch.isfinite(torch.tensor(loss))
        assert all(torch.isfinite(g).all() for g in grads)


def test_micro_batch_split_does_not_change_the_step(tiny_model_dir):
    model = model_for(tiny_model_dir, "sdpa")
    docs = documents()
    collate = PaddingCollator(pad_token_id=PAD)
    num_items = sum(trained_count(collate([doc])["labels"]) for doc in docs)
    _, four_by_one = loss_and_grads(model, [collate(docs)], num_items)
    _, one_by_four = loss_and_grads(model, [collate([doc]) for doc in docs], num_items)
    _, packed = loss_and_grads(model, [PackingCollator(pad_token_id=PAD)([docs])], num_items)
    for a, b, c in zip(four_by_one, one_by_four, packed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)


def test_collator_restarts_positions_and_masks_boundaries():
    docs = [example([1, 2, 3], 0), example([4, 5], 0)]
    batch = PackingCollator(pad_token_id=0, pad_to_multiple_of=4)([docs, [example([6], 0)]])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0, 0, 0], [6, 0, 0, 0, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 0, 1, 2, 3, 4, 5, 6]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 5, -100, -100, -100], [-100] + [-100] * 7]
    assert int(batch[REAL_TOKENS_KEY]) == 6
    assert "attention_mask" not in batch


LENGTHS = [
    300, 120, 512, 77, 400, 260, 260, 33, 511, 100, 90, 450, 220, 5, 380, 150, 260, 64, 128, 300,
]  # fmt: skip


def test_bins_hold_every_example_once_within_capacity():
    bins = pack_lengths(LENGTHS, 512, seed=1)
    assert sorted(i for b in bins for i in b) == list(range(len(LENGTHS)))
    assert all(sum(LENGTHS[i] for i in b) <= 512 for b in bins)
    assert packing_efficiency(bins, LENGTHS, 512) == sum(LENGTHS) / (len(bins) * 512)
    with pytest.raises(ValueError, match="example 0 has 600 tokens"):
        pack_lengths([600], 512)


def test_sampler_epochs_are_deterministic_and_differ():
    sampler = PackedBatchSampler(LENGTHS, capacity=512, micro_batch_size=2, seed=5)
    first = list(sampler)
    assert list(sampler) == first  # same seed, same epoch: same order
    assert sorted(i for batch in first for b in batch for i in b) == list(range(len(LENGTHS)))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    assert len(second) == len(first) == len(sampler)
    assert sorted(i for batch in second for b in batch for i in b) == list(range(len(LENGTHS)))


def test_ranks_get_disjoint_bins_and_the_same_number_of_steps():
    ranks = [
        PackedBatchSampler(LENGTHS, capacity=512, micro_batch_size=2, seed=5, rank=r, world_size=3)
        for r in range(3)
    ]
    batches = [list(sampler) for sampler in ranks]
    assert len({len(b) for b in batches}) == 1 and all(
        len(b) == len(s) for b, s in zip(batches, ranks, strict=True)
    )
    seen = [i for rank_batches in batches for batch in rank_batches for b in batch for i in b]
    assert len(seen) == len(set(seen))  # no example on two ranks
    leftover = ranks[0].num_bins - 3 * ranks[0].bins_per_rank
    assert leftover < 3  # at most world_size - 1 bins sit out an epoch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash attention needs a CUDA GPU")
def test_packed_equals_one_by_one_with_flash_attention(tiny_model_dir):
    pytest.importorskip("flash_attn")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.bfloat16, attn_implementation="flash_attention_2"
    ).cuda()
    docs = documents()
    packed = {k: v.cuda() for k, v in PackingCollator(pad_token_id=PAD)([docs]).items()}
    alone = [{k: v.cuda() for k, v in PaddingCollator(PAD, None)([doc]).items()} for doc in docs]
    num_items = sum(trained_count(batch["labels"]) for batch in alone)
    packed_loss, packed_grads = loss_and_grads(model, [packed], num_items)
    alone_loss, alone_grads = loss_and_grads(model, alone, num_items)
    assert packed_loss == pytest.approx(alone_loss, rel=2e-2)
    for a, b in zip(packed_grads, alone_grads, strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=5e-2)


@pytest.mark.slow
def test_packed_training_run(tmp_path, small_vocab_model_dir):
    data = tmp_path / "chat.jsonl"
    with (REPO / "examples" / "data" / "sgd_chat_600.jsonl").open() as source:
        data.write_text("".join(islice(source, 40)))
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(
        f"base_model: {small_vocab_model_dir}\ndatasets:\n  - path: {data}\nadapter: lora\nlora_target_linear: true\n"
        f"sequence_len: 1024\nsample_packing: true\nmicro_batch_size: 2\nmax_steps: 3\nlearning_rate: 1.0e-3\n"
        f"val_set_size: 4\noutput_dir: {tmp_path / 'out'}\ndataset_prepared_path: {tmp_path / 'prep'}\n"
    )
    cfg, manager = load_config(cfg_path)
    result = run_training(cfg, manager)
    assert result.data.packing["bins"] < result.data.packing["rows"]
    assert result.data.packing["efficiency"] > 0.8
    entries = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in entries if "loss" in e]
    assert len(losses) == 3 and all(0 < loss < 20 for loss in losses)
    assert result.eval_loss is not None and 0 < result.eval_loss < 20


def test_bundled_chat_packs_at_least_99_percent_at_2048(tiny_model_dir):
    from transformers import AutoTokenizer

    from ftk.core.config.schema import DatasetConfig, FtkConfig
    from ftk.prompt_strategies.chat_template import ChatTemplateOptions, ChatTemplateTokenizer

    to_features = ChatTemplateTokenizer(
        ChatTemplateOptions(),
        AutoTokenizer.from_pretrained(tiny_model_dir),
        FtkConfig(base_model="m", datasets=[DatasetConfig(path="d")]),
    )
    with (REPO / "examples" / "data" / "sgd_chat_600.jsonl").open() as rows:
        lengths = [len(to_features(json.loads(row))["input_ids"]) for row in rows]
    bins = pack_lengths(lengths, 2048, seed=0)
    assert len(bins) == -(-sum(lengths) // 2048)  # as few bins as the token count allows
    assert packing_efficiency(bins, lengths, 2048) > 0.99
