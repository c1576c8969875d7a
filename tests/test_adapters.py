"""The lora plugin: what LoRA adapts, DoRA/rsLoRA, full fine-tuning, and training of added tokens."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from ftk.commands.train import run_training
from ftk.core.config.loader import load_config
from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError
from ftk.core.model import load_base_model, load_model, load_tokenizer
from ftk.plugins.lora import apply_lora
from tests.helpers import builtin_manager, make_config, write_alpaca_config

TINY_VOCAB = 151_646  # tokens of the tiny model's tokenizer
TINY_ROWS = 151_680  # its embedding rows (padded to a multiple of 64)


def load_tiny(model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def lora_layer_names(model) -> set[str]:
    return {
        name.removeprefix("base_model.model.")
        for name, m in model.named_modules()
        if isinstance(m, LoraLayer)
    }


def test_target_linear_adapts_every_linear_layer_but_the_output_head(tiny_model_dir):
    model = apply_lora(
        make_config(base_model=tiny_model_dir, adapter="lora", lora_target_linear=True),
        load_tiny(tiny_model_dir),
    )

    expected = {
        f"model.layers.{layer}.{block}.{proj}"
        for layer in (0, 1)
        for block, projs in (("self_attn", "qkvo"), ("mlp", ("gate", "up", "down")))
        for proj in (f"{p}_proj" for p in projs)
    }
    assert lora_layer_names(model) == expected
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert len(trainable) == 2 * len(expected)


def test_named_target_that_matches_nothing_names_the_key_and_what_exists(tiny_model_dir):
    cfg = make_config(base_model=tiny_model_dir, adapter="lora", lora_target_modules=["q_proj", "qkv_proj"])
    with pytest.raises(FtkError) as raised:
        apply_lora(cfg, load_tiny(tiny_model_dir))
    message = str(raised.value)
    assert message.startswith("lora_target_modules: 'qkv_proj' matches no module")
    assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in message
    assert "\n" not in message


def test_named_targets_adapt_only_those_modules(tiny_model_dir):
    cfg = make_config(base_model=tiny_model_dir, adapter="lora", lora_target_modules=["q_proj", "down_proj"])
    model = apply_lora(cfg, load_tiny(tiny_model_dir))
    assert lora_layer_names(model) == {
        f"model.layers.{layer}.{name}" for layer in (0, 1) for name in ("self_attn.q_proj", "mlp.down_proj")
    }


def test_no_adapter_is_full_fine_tuning_of_the_whole_model(tiny_model_dir):
    manager = builtin_manager()
    cfg = make_config(base_model=tiny_model_dir)
    tokenizer, new_ids = load_tokenizer(cfg, manager.hooks)
    trained = load_model(cfg, manager.hooks, manager.collect_registrations(), tokenizer, new_ids)
    assert type(trained).__name__ == "Qwen3ForCausalLM"  # the model as loaded, no wrapper
    assert all(p.requires_grad for p in trained.parameters())


def test_dora_and_rslora_reach_peft(tiny_model_dir):
    cfg = make_config(
        base_model=tiny_model_dir,
        adapter="lora",
        lora_r=4,
        lora_alpha=8,
        lora_target_modules=["v_proj"],
        peft_use_dora=True,
        peft_use_rslora=True,
    )
    model = apply_lora(cfg, load_tiny(tiny_model_dir))
    layer = model.get_submodule("base_model.model.model.layers.0.self_attn.v_proj")
    assert layer.use_dora["default"] is True
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4))  # not alpha / r = 2
    magnitude = layer.lora_magnitude_vector["default"].weight
    assert magnitude.requires_grad and magnitude.shape == (32,)  # one magnitude per output feature


def test_modules_to_save_that_matches_nothing_is_a_config_error(tiny_model_dir):
    cfg = make_config(
        base_model=tiny_model_dir,
        adapter="lora",
        lora_target_linear=True,
        lora_modules_to_save=["embeddings"],
    )
    with pytest.raises(
        FtkError, match=r"^lora_modules_to_save: 'embeddings' matches no module .*embed_tokens"
    ):
        apply_lora(cfg, load_tiny(tiny_model_dir))


@pytest.fixture(scope="module")
def tokens_cfg(tiny_model_dir) -> FtkConfig:
    """36 new tokens: 34 fit in the padded rows of the tiny model, 2 need a resize (to 151,744 rows)."""
    new = ["<|new_a|>"] + [f"<|new_{i}|>" for i in range(35)]
    return make_config(base_model=tiny_model_dir, adapter="lora", lora_target_linear=True, tokens=new, seed=3)


NEW_IDS = tuple(range(TINY_VOCAB, TINY_VOCAB + 36))


@pytest.fixture(scope="module")
def tokenizer_with_new_tokens(tokens_cfg):
    tokenizer, new_ids = load_tokenizer(tokens_cfg, builtin_manager().hooks)
    assert new_ids == NEW_IDS
    return tokenizer


def base_model(cfg, tokenizer):
    return load_base_model(cfg, builtin_manager().hooks, tokenizer, "train")


def test_added_tokens_are_recorded_and_the_resize_is_reproducible(tokens_cfg, tokenizer_with_new_tokens):
    tokenizer = tokenizer_with_new_tokens
    assert tokenizer.convert_tokens_to_ids("<|new_a|>") == TINY_VOCAB

    first = base_model(tokens_cfg, tokenizer)
    second = base_model(tokens_cfg, tokenizer)
    weights = first.get_input_embeddings().weight
    assert weights.shape == (TINY_ROWS + 64, 64)
    assert torch.equal(weights, second.get_input_embeddings().weight)
    assert first.get_output_embeddings().weight is weights  # still tied
    base = load_tiny(tokens_cfg.base_model).get_input_embeddings().weight
    assert torch.equal(weights[:TINY_ROWS], base)


def test_new_tokens_train_only_their_rows_even_when_nothing_is_listed(tokens_cfg, tokenizer_with_new_tokens):
    model = base_model(tokens_cfg, tokenizer_with_new_tokens)
    peft_model = apply_lora(tokens_cfg, model, NEW_IDS)
    rows = [p for name, p in peft_model.named_parameters() if "trainable_tokens_delta" in name]
    assert len(rows) == 1 and rows[0].shape == (36, 64) and rows[0].requires_grad
    assert peft_model.peft_config["default"].trainable_token_indices == {
        "model.embed_tokens": list(range(TINY_VOCAB, TINY_VOCAB + 36))
    }
    # The tied output head reads the same trained rows: moving a row moves that token's logit.
    ids = torch.tensor([[1, 2, TINY_VOCAB]])
    with torch.no_grad():
        before = peft_model(input_ids=ids).logits
        rows[0][0] += 1.0
        after = peft_model(input_ids=ids).logits
    changed = (after - before).abs()[0, 0]
    assert changed[TINY_VOCAB] > 1e-3
    assert changed[TINY_VOCAB + 1 :].max() == 0 and changed[:TINY_VOCAB].max() == 0


def test_listing_embed_tokens_trains_the_whole_tied_embedding(tokens_cfg, tokenizer_with_new_tokens):
    cfg = tokens_cfg.model_copy(update={"lora_modules_to_save": ["embed_tokens"]})
    model = base_model(cfg, tokenizer_with_new_tokens)
    peft_model = apply_lora(cfg, model, NEW_IDS)
    assert not peft_model.peft_config["default"].trainable_token_indices
    inner = peft_model.base_model.model
    trained = inner.get_input_embeddings().modules_to_save["default"].weight
    assert trained.requires_grad and trained.shape == (TINY_ROWS + 64, 64)
    assert inner.get_output_embeddings().modules_to_save["default"].weight is trained


def test_new_tokens_of_an_untied_model_train_rows_of_both_embeddings():
    config = Qwen3Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        tie_word_embeddings=False,
    )
    model = Qwen3ForCausalLM(config)
    peft_model = apply_lora(
        make_config(base_model="unused", adapter="lora", lora_target_modules=["q_proj"]), model, (120, 121)
    )
    assert peft_model.peft_config["default"].trainable_token_indices == {
        "model.embed_tokens": [120, 121],
        "lm_head": [120, 121],
    }
    deltas = {name for name, p in peft_model.named_parameters() if p.requires_grad and ".lora_" not in name}
    assert deltas == {
        "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta.default",
        "base_model.model.lm_head.token_adapter.trainable_tokens_delta.default",
    }


@pytest.mark.slow
def test_lora_run_trains_new_token_rows_and_the_adapter_reloads_on_a_resized_base(tmp_path, tiny_model_dir):
    new = ["<|new_a|>"] + [f"<|new_{i}|>" for i in range(35)]
    path = write_alpaca_config(tmp_path, tiny_model_dir, adapter="lora", lora_target_linear=True, tokens=new)
    cfg, manager = load_config(path)
    result = run_training(cfg, manager)
    out = tmp_path / "out"
    trained = result.model.eval()

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == TINY_VOCAB + 36 and tokenizer.convert_tokens_to_ids("<|new_a|>") == TINY_VOCAB
    base = base_model(cfg, tokenizer)  # resized the same way as for training
    all_ids = torch.arange(TINY_ROWS + 64)
    with torch.no_grad():
        after = trained.get_input_embeddings()(all_ids)
    before = base.get_input_embeddings().weight.detach()
    new_rows = slice(TINY_VOCAB, TINY_VOCAB + 36)
    assert torch.equal(after[:TINY_VOCAB], before[:TINY_VOCAB])
    assert torch.equal(after[TINY_VOCAB + 36 :], before[TINY_VOCAB + 36 :])
    assert (after[new_rows] - before[new_rows]).abs().amax(dim=1).min() > 1e-4  # every new row moved

    reloaded = PeftModel.from_pretrained(base, out).eval()
    ids = torch.tensor([[151644, 872, 198, TINY_VOCAB, 13048, 151645, 198, TINY_VOCAB + 35]])
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        actual = reloaded(input_ids=ids).logits
        assert torch.equal(actual, expected)
        with reloaded.disable_adapter():
            assert not torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-3)
