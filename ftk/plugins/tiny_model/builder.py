"""The bundled tiny model: Qwen's tokenizer plus a small, briefly warmed-up Qwen3, built offline.

``build_tiny_model(out_dir)`` writes a real Hugging Face model directory (``config.json``,
``generation_config.json``, ``model.safetensors``, the tokenizer files with a ChatML chat
template) that ``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained`` load as they would a
downloaded one.  It is ftk's default model for the quickstart, the examples and the tests.

A purely random model barely responds to LoRA: the embeddings (tied to the output layer) and the
norms are frozen under an adapter, and random embeddings bound what the adapted layers can do to
the logits.  The build therefore warms up exactly those frozen parameters with a short causal-LM
run on real dialogues shipped in ``ftk/data/`` (600 dialogues of the Schema-Guided Dialogue
dataset, CC BY-SA 4.0, see ``ftk/data/SOURCES.md``) and leaves the linear layers random, so that
a LoRA fine-tune has real work to do and its loss drops clearly.  Everything is seeded: the same
arguments give the same weights, byte for byte, run to run on one machine.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftk.core.errors import FtkError
from ftk.core.files import publish_directory, staging_directory
from ftk.integrations.glibc_malloc import large_allocations_from_the_heap

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

#: ChatML, as Qwen2-family chat models use it: ``<|im_start|>{role}\n{content}<|im_end|>\n`` per
#: message, no default system prompt; ``add_generation_prompt`` opens an assistant turn.  The
#: ``{% generation %}`` block marks assistant content plus its ``<|im_end|>`` for transformers'
#: ``return_assistant_tokens_mask``; it renders nothing itself.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{- raise_exception('ChatML template: unknown role ' ~ message['role'] ~ "
    "'; expected system, user, assistant or tool') -}}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- elif message['content'] is none or message['content'] is undefined -%}{%- set content = '' -%}"
    "{%- else -%}{{- raise_exception('ChatML template: message content must be a string') -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- content ~ '<|im_end|>' -}}{%- endgeneration -%}"
    "{%- else -%}{{- content ~ '<|im_end|>' -}}"
    "{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

#: The warm-up corpus: one JSON object per line, ``{"id": SGD dialogue id, "text": ChatML text}``.
WARMUP_CORPUS = "tiny_warmup_chat.jsonl.gz"
#: Written into the model directory: how it was built (seed, sizes, warm-up losses).
BUILD_INFO_FILE = "ftk_tiny_model.json"

DEFAULT_SEED = 0
DEFAULT_WARMUP_STEPS = 300
DEFAULT_HIDDEN_SIZE = 64
DEFAULT_NUM_LAYERS = 2
WARMUP_SEQUENCE_LENGTH = 256
WARMUP_BATCH_SIZE = 1
WARMUP_LEARNING_RATE = 5e-3
MAX_POSITION_EMBEDDINGS = 4096
VOCAB_MULTIPLE = 64

#: ``progress(step, total_steps, loss)`` is called after each warm-up step.
ProgressCallback = Callable[[int, int, float], None]
#: ``stage(text)`` is called as each stage of the build begins ("building the tokenizer", ...).
StageCallback = Callable[[str], None]


CHATML_ROLES = ("system", "user", "assistant", "tool")


def render_chatml(messages: Iterable[Mapping[str, Any]]) -> str:
    """Render ``messages`` (``{"role", "content"}`` dicts) as ChatML text, exactly as ``CHATML_TEMPLATE`` does.

    A missing or ``None`` content renders as empty; an unknown role or a non-string content is an
    ``FtkError``, as the template raises for them.
    """
    parts = []
    for number, message in enumerate(messages):
        role = message.get("role")
        if role not in CHATML_ROLES:
            raise FtkError(
                f"message {number}: unknown role {role!r}; expected one of {', '.join(CHATML_ROLES)}"
            )
        content = message.get("content")
        if content is None:
            content = ""
        elif not isinstance(content, str):
            raise FtkError(f"message {number}: content must be a string, got {type(content).__name__}")
        parts.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
    return "".join(parts)


def warmup_corpus_path() -> Path:
    """Return the path of the packaged warm-up corpus (gzip-compressed JSON lines)."""
    return Path(str(resources.files("ftk") / "data" / WARMUP_CORPUS))


def load_warmup_corpus() -> list[str]:
    """Return the warm-up dialogues as ChatML strings, in file order."""
    path = warmup_corpus_path()
    if not path.is_file():
        raise FtkError(f"the warm-up corpus {path} is missing: reinstall ftk")
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (ValueError, KeyError, TypeError) as exc:
                raise FtkError(f"{path}: line {number} is not a JSON object with a 'text' field") from exc
    return texts


# --- building blocks -----------------------------------------------------------------------------


def build_tokenizer(model_max_length: int = MAX_POSITION_EMBEDDINGS) -> PreTrainedTokenizerFast:
    """Build the tiny model's tokenizer: Qwen's BPE with ftk's ChatML template."""
    from ftk.integrations.qwen_tokenizer import build_qwen_tokenizer

    return build_qwen_tokenizer(CHATML_TEMPLATE, model_max_length=model_max_length)


def padded_vocab_size(tokenizer_length: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Round ``tokenizer_length`` up to a multiple of ``multiple`` (embedding rows beyond it are unused)."""
    return -(-tokenizer_length // multiple) * multiple


def _check_sizes(hidden_size: int, num_layers: int, warmup_steps: int) -> None:
    problems = []
    if hidden_size < 16 or hidden_size % 8:
        problems.append(f"hidden size must be a multiple of 8 and at least 16, got {hidden_size}")
    if num_layers < 1:
        problems.append(f"number of layers must be at least 1, got {num_layers}")
    if warmup_steps < 0:
        problems.append(f"warm-up steps must be 0 or more, got {warmup_steps}")
    if problems:
        raise FtkError("\n".join(problems))


def build_random_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = DEFAULT_HIDDEN_SIZE,
    num_layers: int = DEFAULT_NUM_LAYERS,
) -> Qwen3ForCausalLM:
    """Create a randomly initialised float32 Qwen3ForCausalLM sized for ``tokenizer``.

    Four attention heads of ``hidden_size // 4`` dims, two key/value heads, an MLP three times
    ``hidden_size`` wide and tied input/output embeddings.  The weights come from torch's global
    RNG: seed it first.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    _check_sizes(hidden_size, num_layers, 0)
    pad_id = tokenizer.pad_token_id
    eos_id = tokenizer.eos_token_id
    config = Qwen3Config(
        vocab_size=padded_vocab_size(len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=3 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        use_cache=True,
        # Qwen's convention: no bos token is prepended, but bos_token_id names <|endoftext|>.
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    config.dtype = torch.float32
    model = Qwen3ForCausalLM(config).to(torch.float32)
    # Stop at the end of a turn (<|im_end|>) or of a document (<|endoftext|>), like Qwen chat models.
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id, eos_token_id=[eos_id, pad_id], pad_token_id=pad_id
    )
    return model


def _warmup_blocks(tokenizer: PreTrainedTokenizerFast, sequence_length: int) -> torch.Tensor:
    """Tokenise the corpus as one stream (documents joined by ``<|endoftext|>``) cut into blocks."""
    import torch

    texts = load_warmup_corpus()
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    separator = tokenizer.pad_token_id  # <|endoftext|>
    stream: list[int] = []
    for ids in encoded:
        stream.extend(ids)
        stream.append(separator)
    count = len(stream) // sequence_length
    if count == 0:
        raise FtkError(f"the warm-up corpus {warmup_corpus_path()} is shorter than one block")
    return torch.tensor(stream[: count * sequence_length], dtype=torch.long).view(count, sequence_length)


def _learning_rate(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 10% of steps, then cosine decay to 10% of ``peak``."""
    ramp = max(1, total // 10)
    if step < ramp:
        return peak * (step + 1) / ramp
    progress = (step - ramp) / max(1, total - ramp)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def warm_up(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    steps: int,
    seed: int = DEFAULT_SEED,
    sequence_length: int = WARMUP_SEQUENCE_LENGTH,
    batch_size: int = WARMUP_BATCH_SIZE,
    learning_rate: float = WARMUP_LEARNING_RATE,
    progress: ProgressCallback | None = None,
) -> list[float]:
    """Warm ``model`` up with ``steps`` AdamW steps of causal-LM loss on the packaged dialogues.

    Trained are the parameters that a LoRA adapter leaves frozen: the (tied) embeddings and the
    RMSNorm weights.  The linear layers keep their random initialisation.  This is deliberate:
    a warm-up that also trains the linear layers leaves a later LoRA fine-tune on dialogue data
    almost nothing it can learn quickly (its loss barely moves in 40 steps), whereas with trained
    embeddings and random layers the adapter's loss drops clearly.  Blocks of
    ``sequence_length`` tokens of the corpus stream are drawn in a seeded random order (a new
    permutation each pass).  Returns the loss of each step; leaves ``model`` in eval mode.
    """
    import torch

    if steps <= 0:
        return []
    blocks = _warmup_blocks(tokenizer, sequence_length)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(blocks), generator=generator)
    position = 0

    embeddings = model.get_input_embeddings().weight
    trained = [p for p in model.parameters() if p is embeddings or p.ndim == 1]
    trained_ids = {id(p) for p in trained}
    was_trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained_ids)
    optimizer = torch.optim.AdamW(
        trained, lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.0, foreach=False
    )

    model.train()
    losses: list[float] = []
    try:
        with large_allocations_from_the_heap():
            for step in range(steps):
                if position + batch_size > len(order):
                    order = torch.randperm(len(blocks), generator=generator)
                    position = 0
                batch = blocks[order[position : position + batch_size]]
                position += batch_size
                for group in optimizer.param_groups:
                    group["lr"] = _learning_rate(step, steps, learning_rate)
                loss = model(input_ids=batch, labels=batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trained, 1.0, foreach=False)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                if progress is not None:
                    progress(step + 1, steps, losses[-1])
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(was_trainable[name])
        model.eval()
    return losses


# --- the directory -------------------------------------------------------------------------------


def _looks_like_model_dir(path: Path) -> bool:
    return (path / BUILD_INFO_FILE).is_file() or (path / "config.json").is_file()


def _check_destination(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FtkError(f"{out_dir} exists and is not a directory")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not force:
        raise FtkError(f"{out_dir} is not empty: choose another directory or pass --force to replace it")
    if not _looks_like_model_dir(out_dir):
        raise FtkError(
            f"{out_dir} is not empty and holds no config.json or {BUILD_INFO_FILE}: "
            "refusing to delete it even with --force; remove it yourself or choose another directory"
        )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-file progress bars while saving (the command prints its own summary)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _portable_tokenizer_config(path: Path) -> None:
    """Name the tokenizer class that transformers 4.x and 5.x both load ``tokenizer.json`` with as it is."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    seed: int = DEFAULT_SEED,
    warmup_steps: int = DEFAULT_WARMUP_STEPS,
    hidden_size: int = DEFAULT_HIDDEN_SIZE,
    num_layers: int = DEFAULT_NUM_LAYERS,
    force: bool = False,
    progress: ProgressCallback | None = None,
    stage: StageCallback | None = None,
) -> Path:
    """Build the tiny model into ``out_dir`` and return its path.

    ``warmup_steps=0`` leaves the model at its random initialisation (fast; for tests).  A
    non-empty ``out_dir`` is an ``FtkError`` unless ``force`` is set, and even then only a model
    directory (one with ``config.json``) is replaced.  The build happens in a hidden sibling
    directory that is renamed into place at the end, so an interrupted build leaves no
    directory that looks complete.  ``progress(step, total, loss)`` follows the warm-up, and
    ``stage(text)`` hears of each stage as it begins.
    """
    import torch

    announce = stage or (lambda text: None)
    out = Path(out_dir).expanduser().absolute()
    _check_sizes(hidden_size, num_layers, warmup_steps)
    _check_destination(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)

    announce("building the tokenizer (Qwen BPE)")
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        announce(f"creating the model (hidden size {hidden_size}, {num_layers} layers)")
        model = build_random_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers)
        if warmup_steps > 0:
            announce(f"warming up the embeddings and norms ({warmup_steps} steps)")
        losses = warm_up(model, tokenizer, warmup_steps, seed=seed, progress=progress)

    tail = losses[-10:]
    info = {
        "builder": "ftk.tiny_model.build_tiny_model",
        "seed": seed,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "vocab_size": model.config.vocab_size,
        "tokenizer_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "warmup": {
            "steps": warmup_steps,
            "trained": "embeddings and norms (the linear layers keep their random initialisation)",
            "sequence_length": WARMUP_SEQUENCE_LENGTH,
            "batch_size": WARMUP_BATCH_SIZE,
            "learning_rate": WARMUP_LEARNING_RATE,
            "corpus": f"ftk/data/{WARMUP_CORPUS}",
            "loss_start": losses[0] if losses else None,
            "loss_end": sum(tail) / len(tail) if tail else None,
        },
    }

    announce(f"saving to {out}")
    staging = staging_directory(out)
    try:
        with _quiet_transformers():
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        _portable_tokenizer_config(staging / "tokenizer_config.json")
        (staging / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _check_destination(out, force)  # again: the destination may have changed during the build
        publish_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def read_build_info(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Return what ``build_tiny_model`` recorded about the build of ``model_dir``."""
    path = Path(model_dir) / BUILD_INFO_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FtkError(f"{path}: cannot read the tiny model's build info ({exc})") from exc
