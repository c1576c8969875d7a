"""The Liger plugin: config keys, the checks before the model loads, the mapping to Liger's patch
functions, and the fused loss, which must be the default loss without the logits.

On CPU the fused loss runs with a plain-torch kernel of the same contract, which checks everything
around Liger's kernel (hidden states, trained positions, normalisation, packing, peft wrappers,
router loss, logit transforms).  Tests that need Liger's Triton kernels skip without a GPU.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from ftk.cli import main
from ftk.core.config.loader import load_config
from ftk.core.errors import FtkError
from ftk.core.lm import logit_transform
from ftk.core.model import load_model, load_tokenizer
from ftk.core.step_metrics import StepMetrics
from ftk.core.trainer import micro_batch_loss
from ftk.integrations import liger as liger_integration
from ftk.plugins import liger as liger_plugin
from ftk.plugins.loss import summed_loss
from tests.helpers import (
    LOGIT_TRANSFORM_FAMILIES,
    SMALL_SHAPE,
    builtin_manager,
    first_chat_rows,
    make_config,
    write_config,
)

REPO = Path(__file__).resolve().parents[1]
NO_GPU = (
    "Liger's kernels need a GPU (CUDA, ROCm or Intel XPU) and this machine has none; "
    "remove the liger_* keys to train here"
)
# apply_liger_kernel_to_qwen3's keyword arguments and defaults in liger-kernel 0.8.5 (checked
# against the installed function where Liger can run: test_qwen3_patch_function_is_as_read).
QWEN3_PARAMETERS = {
    "rope": True,
    "cross_entropy": False,
    "fused_linear_cross_entropy": True,
    "rms_norm": True,
    "swiglu": True,
    "model": None,
}
GEMMA_PARAMETERS = {**{k: v for k, v in QWEN3_PARAMETERS.items() if k != "swiglu"}, "geglu": True}
needs_liger = pytest.mark.skipif(
    liger_integration.environment_problem() is not None or not torch.cuda.is_available(),
    reason=f"Liger's kernels cannot run here: {liger_integration.environment_problem() or 'no CUDA'}",
)
liger_importable = pytest.mark.skipif(
    not all(find_spec(name) for name in ("liger_kernel", "triton")),
    reason="liger-kernel or Triton is missing",
)
no_gpu_only = pytest.mark.skipif(liger_integration.gpu_available(), reason="checks the error without a GPU")


# Validation and kernel selection: no training keys unless a test sets them.
BASE = dict(sequence_len=256, micro_batch_size=None, max_steps=None, seed=None)


# --- config keys and checks -------------------------------------------------------------------------


def test_keys_are_axolotl_top_level_switches_and_default_off():
    cfg = make_config(liger_rope=True, liger_rms_norm=False, liger_fused_linear_cross_entropy=True)
    assert liger_plugin.selected_kernels(cfg) == {
        "liger_rope": True,
        "liger_rms_norm": False,
        "liger_glu_activation": False,
        "liger_layer_norm": False,
        "liger_fused_linear_cross_entropy": True,
        "liger_cross_entropy": False,
    }
    assert liger_plugin.summary_rows(cfg=cfg, trainer=None) == [
        ("liger kernels", "rope, fused_linear_cross_entropy")
    ]
    assert liger_plugin.summary_rows(cfg=make_config(), trainer=None) == []


def test_bad_values_and_misspelled_keys_are_reported_with_their_lines(tmp_path):
    extra = "liger_rope: maybe\nliger_rms_norms: true\n"
    path = write_config(tmp_path, "unused", "unused.jsonl", extra=extra, **BASE)
    with pytest.raises(FtkError) as error:
        load_config(path)
    line = path.read_text().splitlines().index("liger_rope: maybe") + 1
    assert str(error.value).splitlines() == [
        f"{path}:{line}: liger_rope: Input should be a valid boolean, unable to interpret input (got 'maybe')",
        f"{path}:{line + 1}: liger_rms_norms: unknown key (did you mean 'liger_rms_norm'?)",
    ]


def test_the_fused_loss_hook_is_asked_before_the_default_and_passes_when_off():
    manager = builtin_manager()
    order = [impl.plugin_name for impl in reversed(manager.pm.hook.compute_loss.get_hookimpls())]
    assert order.index("liger") < order.index("loss") == len(order) - 1  # the default loss is trylast
    cfg = make_config(liger_rope=True)
    assert liger_plugin.compute_loss(cfg=cfg, model=None, inputs={}) is None


def test_no_kernels_means_no_work(tmp_path):
    # base_model does not exist: nothing may read it when no kernel is on.
    assert liger_plugin.prepare_kernels(make_config(base_model=tmp_path / "missing", liger_rope=False)) == {}


def test_keys_that_contradict_others_are_reported_at_validation(tmp_path):
    extra = "liger_cross_entropy: true\nliger_fused_linear_cross_entropy: true\nchunked_cross_entropy: true\n"
    path = write_config(tmp_path, "unused", "unused.jsonl", extra=extra, **BASE)
    with pytest.raises(FtkError) as error:
        load_config(path)
    line = path.read_text().splitlines().index("liger_cross_entropy: true") + 1
    assert str(error.value).splitlines() == [
        f"{path}:{line}: liger_cross_entropy: cannot be combined with liger_fused_linear_cross_entropy, "
        "which computes the cross-entropy itself; turn one off",
        f"{path}:{line + 1}: liger_fused_linear_cross_entropy: cannot be combined with chunked_cross_entropy "
        "(both replace the loss); choose one",
    ]
    # chunked_cross_entropy is on by default: left unset, Liger's fused loss simply replaces it.
    path = write_config(tmp_path, "unused", "unused.jsonl", liger_fused_linear_cross_entropy=True, **BASE)
    cfg, _ = load_config(path)
    assert cfg.chunked_cross_entropy and liger_plugin.key_problems(cfg) == []


@no_gpu_only
def test_without_a_gpu_the_first_key_on_is_named():
    cfg = make_config(liger_glu_activation=True, liger_rope=True)
    with pytest.raises(FtkError) as error:
        liger_plugin.check_environment(cfg=cfg, purpose="train")
    assert str(error.value) == f"liger_rope: {NO_GPU}"
    liger_plugin.check_environment(cfg=cfg, purpose="preprocess")  # no model is loaded for that


@no_gpu_only
def test_cli_train_stops_with_exit_code_2_before_loading_the_model(tmp_path, tiny_model_dir, capsys):
    data = first_chat_rows(tmp_path / "chat.jsonl", 4)
    path = write_config(
        tmp_path,
        tiny_model_dir,
        data,
        excess_length_strategy="truncate",
        liger_fused_linear_cross_entropy=True,
        **BASE,
    )
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: liger_fused_linear_cross_entropy: {NO_GPU}" in err.splitlines()
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_runtime_problems_in_order_gpu_then_liger_then_triton():
    problem = liger_integration.runtime_problem
    assert problem(gpu=False, liger_installed=False, triton_installed=False) == NO_GPU
    assert problem(gpu=True, liger_installed=False, triton_installed=True) == (
        "liger-kernel is not installed: pip install 'ftk[liger]'"
    )
    assert problem(gpu=True, liger_installed=True, triton_installed=False) == (
        "Triton is not installed (Liger's kernels are written in it): pip install triton"
    )
    assert problem(gpu=True, liger_installed=True, triton_installed=True) is None


# --- the arguments of Liger's patch functions ----------------------------------------------------


def switches(**on: bool) -> dict[str, bool]:
    return {key: on.get(key.removeprefix("liger_"), False) for key in liger_plugin.KEYS}


def test_qwen3_arguments_pass_every_switch_and_never_liger_own_fused_loss():
    arguments = liger_integration.patch_arguments
    everything = switches(rope=True, rms_norm=True, glu_activation=True, fused_linear_cross_entropy=True)
    assert arguments(everything, QWEN3_PARAMETERS, "qwen3") == {
        "rope": True,
        "rms_norm": True,
        "swiglu": True,
        "cross_entropy": False,
        "fused_linear_cross_entropy": False,
    }
    assert arguments(switches(rms_norm=True, cross_entropy=True), QWEN3_PARAMETERS, "qwen3") == {
        "rope": False,
        "rms_norm": True,
        "swiglu": False,
        "cross_entropy": True,
        "fused_linear_cross_entropy": False,
    }


def test_glu_switch_is_geglu_on_gemma_and_unknown_kernels_stay_off():
    parameters = {**GEMMA_PARAMETERS, "relu_squared": True}  # a switch ftk has no key for
    assert liger_integration.patch_arguments(switches(glu_activation=True), parameters, "gemma") == {
        "rope": False,
        "rms_norm": False,
        "geglu": True,
        "cross_entropy": False,
        "fused_linear_cross_entropy": False,
        "relu_squared": False,
    }


def test_a_kernel_the_family_lacks_is_an_error_naming_the_key():
    with pytest.raises(FtkError) as error:
        liger_integration.patch_arguments(switches(layer_norm=True), QWEN3_PARAMETERS, "qwen3")
    assert str(error.value) == (
        "liger_layer_norm: Liger has no such kernel for 'qwen3' models (its kernels for them: "
        "liger_rope, liger_rms_norm, liger_glu_activation, liger_cross_entropy)"
    )


def test_an_unsupported_family_is_an_error_listing_the_supported_ones():
    functions = {"qwen3": print, "llama": print, "gemma": print}
    assert liger_integration.patch_function("liger_rope", "qwen3", functions) is print
    with pytest.raises(FtkError) as error:
        liger_integration.patch_function("liger_rope", "gpt2", functions)
    assert (
        str(error.value)
        == "liger_rope: Liger has no kernels for 'gpt2' models; it supports: gemma, llama, qwen3"
    )


def test_a_process_keeps_the_kernels_it_applied_first():
    conflict = liger_integration.patch_conflict
    qwen3 = {"rope": True, "rms_norm": True, "swiglu": False, "cross_entropy": False}
    assert conflict({}, "qwen3", qwen3) is None
    assert conflict({"qwen3": qwen3}, "qwen3", dict(qwen3)) is None
    assert conflict({"qwen3": qwen3}, "llama", {"rope": True}) is None  # another family's modules
    assert conflict({"qwen3": qwen3}, "llama", {}) is None
    changed = conflict({"qwen3": qwen3}, "qwen3", {**qwen3, "swiglu": True})
    assert changed == (
        "an earlier run in this process applied Liger's kernels to 'qwen3' models (rope, rms_norm), "
        "and they cannot be removed or changed: run this config in a new process"
    )
    assert conflict({"qwen3": qwen3}, "qwen3", {}) == changed
    global_ce = {"llama": {"rope": False, "cross_entropy": True}}
    assert conflict(global_ce, "qwen3", {"rope": True}) == (
        "an earlier run in this process replaced torch's cross_entropy with Liger's, and that cannot "
        "be undone: run this config in a new process"
    )
    assert conflict(global_ce, "qwen3", {"cross_entropy": True}) is None


# --- the fused loss equals the default loss -----------------------------------------------------------


def torch_kernel(hidden, weight, targets, bias=None, softcap=None):
    """Liger's fused kernel's contract in plain torch (logits materialised)."""
    logits = F.linear(hidden, weight, bias)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")


def padded_batch(vocab: int = 5000) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 16), generator=generator)
    labels = ids.clone()
    labels[:, :5] = -100
    labels[1, 11:] = -100
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def packed_batch(vocab: int = 5000) -> dict[str, torch.Tensor]:
    """One row holding two documents (7 and 6 tokens) and 3 padding tokens, as PackingCollator makes it."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (1, 16), generator=generator)
    labels = ids.clone()
    labels[0, :3] = -100  # first document's prompt
    labels[0, 7:9] = -100  # second document starts (never predicted from the first) + prompt
    labels[0, 13:] = -100  # padding
    positions = torch.tensor([[*range(7), *range(6), *range(3)]])
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


class LossHooks:
    """What the core's loss arithmetic asks of the hooks: one loss function."""

    def __init__(self, compute) -> None:
        self.compute = compute

    def compute_loss(self, cfg, model, inputs):
        return self.compute(model, inputs)


def step_loss(model, batch, num_items, fused: bool, kernel=torch_kernel, cfg=None, metrics=None):
    """The loss the trainer trains on, with the fused loss (``kernel``) or the default one."""
    cfg = cfg or make_config()
    if fused:
        hooks = LossHooks(lambda m, inputs: liger_plugin.fused_loss(m, inputs, kernel=kernel))
    else:
        hooks = LossHooks(lambda m, inputs: summed_loss(m, inputs, cfg.section("chunked_cross_entropy")))
    return micro_batch_loss(cfg, hooks, model, batch, num_items, metrics)


def losses_and_grads(model, batch, num_items, fused: bool, kernel=torch_kernel, cfg=None):
    model.zero_grad()
    metrics = StepMetrics()
    loss = step_loss(model, batch, num_items, fused, kernel, cfg, metrics)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, metrics.pop_means()


def assert_same(model, batch, num_items=None, cfg=None, atol=1e-6):
    loss, grads, metrics = losses_and_grads(model, batch, num_items, fused=True, cfg=cfg)
    expected, expected_grads, expected_metrics = losses_and_grads(
        model, batch, num_items, fused=False, cfg=cfg
    )
    assert loss.item() == pytest.approx(expected.item(), abs=atol)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=atol, rtol=1e-5, msg=name)
    assert metrics == pytest.approx(expected_metrics, abs=atol)
    return loss, grads


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).train()


@pytest.mark.parametrize(
    ("make_batch", "num_items"),
    [(padded_batch, None), (packed_batch, torch.tensor(40)), (packed_batch, 1)],
    ids=["padded-mean", "packed-step-count", "packed-sum"],
)
def test_fused_loss_and_gradients_equal_the_default(tiny, make_batch, num_items):
    batch = make_batch()
    loss, _ = assert_same(tiny, batch, num_items)
    trained = int(batch["labels"][:, 1:].ne(-100).sum())
    # With 1 (evaluation) the loss is the sum: about log(vocab) per trained token at initialisation.
    per_token = loss.item() * (trained if num_items is None else int(num_items)) / trained
    assert per_token == pytest.approx(math.log(tiny.config.vocab_size), rel=0.05)


def test_evaluation_under_no_grad_sums_like_the_default(tiny):
    tiny.eval()
    try:
        with torch.no_grad():
            fused = step_loss(tiny, padded_batch(), 1, fused=True)
            expected = step_loss(tiny, padded_batch(), 1, fused=False)
    finally:
        tiny.train()
    assert fused.item() == pytest.approx(expected.item(), abs=1e-5)


def test_the_output_head_computes_no_logits(tiny):
    head = tiny.get_output_embeddings()
    batch = padded_batch()
    seen = []

    def loss_of(hidden, weight, bias):
        seen.append((tuple(hidden.shape), weight is head.weight, bias))
        return hidden.sum()

    with liger_plugin.fused_head(head, loss_of) as totals:
        logits = tiny(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (2, 0, tiny.config.vocab_size)
    assert seen == [((2, 16, 64), True, None)] and len(totals) == 1
    assert head._forward_pre_hooks == {}


def test_a_batch_without_trained_tokens_gives_zero_with_gradients(tiny):
    batch = padded_batch()
    batch["labels"] = torch.full_like(batch["labels"], -100)
    result = liger_plugin.fused_loss(tiny, batch, kernel=torch_kernel)
    result.summed.backward()
    assert result.summed.item() == 0.0 and result.tokens == 0
    assert all(p.grad is not None for p in tiny.parameters())
    tiny.zero_grad()


def lora_model(model_dir: Path, **keys):
    """The tiny model with an adapter, loaded the way a run loads it (through the hooks)."""
    cfg = make_config(base_model=model_dir, adapter="lora", **keys)
    manager = builtin_manager()
    tokenizer, new_ids = load_tokenizer(cfg, manager.hooks)
    return load_model(cfg, manager.hooks, manager.collect_registrations(), tokenizer, new_ids), tokenizer


def test_peft_new_token_rows_on_the_tied_head_get_the_same_gradients(tiny_model_dir):
    model, tokenizer = lora_model(tiny_model_dir, lora_target_linear=True, tokens=["<tool>"])
    model.train()
    head = model.get_base_model().get_output_embeddings()
    assert type(head).__name__ == "TrainableTokensWrapper"
    batch = padded_batch()
    new_id = tokenizer.convert_tokens_to_ids("<tool>")
    batch["input_ids"][:, 8] = new_id
    batch["labels"][:, 8] = new_id  # trained as a target: its head row gets a gradient
    _, grads = assert_same(model, batch)
    assert any("trainable_tokens_delta" in name for name in grads)


def test_whole_head_in_modules_to_save_is_used(tiny_model_dir):
    model, _ = lora_model(tiny_model_dir, lora_target_modules=["q_proj"], lora_modules_to_save=["lm_head"])
    model.train()
    head = model.get_base_model().get_output_embeddings()
    assert type(head).__name__ == "ModulesToSaveWrapper"
    with torch.no_grad():  # make the trained copy differ from the original head
        head.modules_to_save["default"].weight.mul_(3.0)
    assert_same(model, padded_batch())


def test_a_lora_adapted_head_is_an_error(tiny_model_dir):
    model, _ = lora_model(tiny_model_dir, lora_target_modules=["q_proj", "lm_head"])
    with pytest.raises(FtkError, match=r"^liger_fused_linear_cross_entropy: the output head carries a LoRA"):
        liger_plugin.fused_loss(model, padded_batch(), kernel=torch_kernel)


def test_router_loss_is_added_and_reported_like_the_default():
    torch.manual_seed(0)
    config = Qwen3MoeConfig(**SMALL_SHAPE, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2)
    model = Qwen3MoeForCausalLM(config).train()
    cfg = make_config(router_aux_loss_coef=0.5, gradient_accumulation_steps=2)
    _, _, metrics = losses_and_grads(model, padded_batch(512), None, fused=True, cfg=cfg)
    assert metrics["router_aux_loss"] > 0.5  # a real load-balancing loss was added
    assert_same(model, padded_batch(512), cfg=cfg)
    assert_same(model, packed_batch(512), cfg=cfg)


@pytest.mark.parametrize(
    ("model_class", "config"), LOGIT_TRANSFORM_FAMILIES.values(), ids=list(LOGIT_TRANSFORM_FAMILIES)
)
def test_families_that_transform_their_logits(model_class, config):
    torch.manual_seed(0)
    model = model_class(config).train()
    with torch.no_grad():  # spread the logits, so that the transform changes the loss
        model.get_output_embeddings().weight.mul_(20.0)
    loss, _ = assert_same(model, padded_batch(512))

    # The same loss without the family's transform is far off: the equality above depends on it.
    batch = padded_batch(512)
    hidden = model.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    keep = batch["labels"][:, 1:].ne(-100)
    plain = (
        torch_kernel(hidden[:, :-1][keep], model.lm_head.weight, batch["labels"][:, 1:][keep]) / keep.sum()
    )
    assert abs(plain.item() - loss.item()) > 0.01
    assert logit_transform(config) in ((1.0, 2.0), (0.25, None))


# --- on a GPU, with Liger ---------------------------------------------------------------------------


@liger_importable
def test_qwen3_patch_function_is_as_read():
    functions = liger_integration.patch_functions("liger_rope")
    assert liger_integration.parameter_defaults(functions["qwen3"]) == QWEN3_PARAMETERS
    assert {"qwen3", "qwen3_moe", "llama", "mistral", "gemma", "gemma2", "gemma3_text"} <= functions.keys()


@needs_liger
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("make_batch", [padded_batch, packed_batch])
def test_liger_kernel_matches_the_default_loss(tiny_model_dir, dtype, make_batch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype).cuda().train()
    batch = {key: value.cuda() for key, value in make_batch().items()}
    results = {}
    for fused in (True, False):
        model.zero_grad()
        loss = step_loss(model, batch, None, fused, kernel=None)
        loss.backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters()])
        results[fused] = (loss.item(), grads)
    (loss, grads), (expected, expected_grads) = results[True], results[False]
    assert loss == pytest.approx(expected, rel=1e-3)
    tolerance = 1e-3 if dtype == torch.float32 else 2e-2
    assert ((grads - expected_grads).norm() / expected_grads.norm()).item() < tolerance


CHILD = """\
import json, sys
from ftk.core.config.loader import load_config
from ftk.commands.train import run_training
cfg, manager = load_config(sys.argv[1])
result = run_training(cfg, manager)
print(json.dumps(sorted({type(module).__name__ for module in result.model.modules()})))
"""


@needs_liger
@pytest.mark.slow
def test_training_with_every_kernel_on(tmp_path, tiny_model_dir):
    data = first_chat_rows(tmp_path / "chat.jsonl", 64)
    extra = (
        "adapter: lora\nlora_target_linear: true\nsample_packing: true\nexcess_length_strategy: truncate\n"
        "bf16: true\nmicro_batch_size: 2\n"
        "max_steps: 8\nlearning_rate: 5.0e-3\nlr_scheduler: constant\n"
        "liger_rope: true\nliger_rms_norm: true\nliger_glu_activation: true\n"
        "liger_fused_linear_cross_entropy: true\n"
    )
    path = write_config(tmp_path, tiny_model_dir, data, extra=extra, **BASE)
    # A process of its own: Liger's patches cannot be undone and must not reach other tests.
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"LigerRMSNorm", "LigerSwiGLUMLP"} <= set(modules)
    out = tmp_path / "out"
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in entries if "loss" in entry]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.05
    assert "rope, rms_norm, glu_activation, fused_linear_cross_entropy" in (out / "summary.md").read_text()
    assert (out / "adapter_model.safetensors").is_file()
