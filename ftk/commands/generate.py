"""``ftk generate``: the reply of a trained (or base) model to one prompt.

Which model: the training output in ``output_dir`` by default (an adapter on ``base_model``, or
full weights), a directory given with ``--adapter``/``--model``, or ``--base``.  The prompt is
wrapped as a user message (after an optional system message) in the chat template the chat
datasets were tokenized with (the first ``chat_template`` dataset's settings: its template,
``chat_template_kwargs`` and ``default_system_message``, each from the top level when the dataset
does not set it), ending with the generation prompt;
``--raw`` feeds the text as it is (after the bos token, for tokenizers that add one), for a
plain completion.

Decoding is greedy by default (``temperature`` 0), so the same prompt gives the same text; a
positive temperature samples (with ``top_p``), seeded by ``--seed`` or the config's ``seed``.
Settings not given here come from the model's ``generation_config``.  Generation stops at the
tokenizer's eos, the ``generation_config`` eos ids, and, with the template, the end-of-turn
tokens the chat datasets trained on.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from transformers import PreTrainedTokenizerBase, TextStreamer, set_seed

from ftk.commands.common import add_config_argument, positive_int, split_stray_words
from ftk.commands.inference import load_inference_model, model_kind, place
from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError
from ftk.core.lifecycle import prepare
from ftk.core.model import load_inference_tokenizer
from ftk.core.plugins import FtkPluginManager
from ftk.prompt_strategies.chat_defaults import with_top_level_defaults
from ftk.prompt_strategies.chat_template import ChatTemplateOptions, ChatTemplateTokenizer
from ftk.prompt_strategies.completion import leading_special_ids

DEFAULT_MAX_NEW_TOKENS = 256


@dataclass
class GenerateOptions:
    """What ``ftk generate`` was asked for (the command-line flags)."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float | None = None
    system: str | None = None
    raw: bool = False
    seed: int | None = None

    def check(self) -> None:
        """Raise FtkError, naming the flag, for a value out of range."""
        if self.max_new_tokens <= 0:
            raise FtkError(f"--max-new-tokens: must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0:
            raise FtkError(f"--temperature: must be 0 (greedy) or more (got {self.temperature})")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise FtkError(f"--top-p: must be in (0, 1] (got {self.top_p})")


@dataclass
class Generation:
    """The generated token ids (stop token excluded) and their text (special tokens skipped)."""

    prompt_ids: list[int]
    ids: list[int]
    text: str


def read_prompt(argument: str | None, stdin: TextIO) -> str:
    """The prompt from the argument or, when it is absent or ``-``, from ``stdin`` (one final newline dropped)."""
    if argument is None or argument == "-":
        if stdin.isatty():
            print("reading the prompt from stdin; end it with Ctrl-D", file=sys.stderr)
        text = stdin.read()
        text = text[:-1] if text.endswith("\n") else text
        text = text[:-1] if text.endswith("\r") else text
    else:
        text = argument
    if not text:
        raise FtkError("PROMPT: empty; give the prompt as an argument or on stdin")
    return text


def trained_model_dir(cfg: FtkConfig, adapter: str | None, model: str | None, base: bool) -> Path | None:
    """The directory to load (None: the base model): ``--adapter``, ``--model``, else ``output_dir``."""
    if base:
        return None
    if adapter is not None:
        return Path(adapter)
    if model is not None:
        return Path(model)
    directory = Path(cfg.output_dir)
    if not directory.is_dir():
        raise FtkError(
            f"output_dir: {directory} does not exist; train first, or pass --adapter DIR, --model DIR or --base"
        )
    return directory


def _label(adapter: str | None, model: str | None) -> str:
    return "--adapter" if adapter is not None else "--model" if model is not None else "output_dir"


def chat_settings(cfg: FtkConfig) -> ChatTemplateOptions:
    """The options of the first ``chat_template`` dataset (defaults when there is none)."""
    for dataset in [*cfg.datasets, *cfg.test_datasets]:
        if dataset.type == "chat_template" and isinstance(dataset.options, ChatTemplateOptions):
            return with_top_level_defaults(dataset.options, cfg)
    return with_top_level_defaults(ChatTemplateOptions.model_validate({}), cfg)


def chat_formatter(cfg: FtkConfig, tokenizer: PreTrainedTokenizerBase) -> ChatTemplateTokenizer:
    """The chat template as training resolves it, with its end-of-turn tokens."""
    try:
        return ChatTemplateTokenizer(chat_settings(cfg), tokenizer, cfg)
    except FtkError as exc:
        raise FtkError(f"{exc}; or pass --raw for a plain completion") from exc


def prompt_ids(
    prompt: str, tokenizer: PreTrainedTokenizerBase, chat: ChatTemplateTokenizer | None, system: str | None
) -> list[int]:
    """Token ids of the prompt: templated (system + user message, generation prompt) or, without ``chat``, raw.

    A raw prompt gets the ids the tokenizer puts in front of text (a bos token, for Llama-style
    tokenizers), as ``type: completion`` training data does.
    """
    if chat is None:
        return leading_special_ids(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    messages = [{"role": "user", "content": prompt}]
    system = system if system is not None else chat.options.default_system_message
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    text = tokenizer.apply_chat_template(
        messages,
        chat_template=chat.template,
        add_generation_prompt=True,
        tokenize=False,
        **chat.options.chat_template_kwargs,
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_token_ids(
    tokenizer: PreTrainedTokenizerBase, model: Any, chat: ChatTemplateTokenizer | None = None
) -> list[int]:
    """Ids that end the reply: tokenizer eos, generation_config eos and the template's end-of-turn tokens."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids.update([config_eos] if isinstance(config_eos, int) else config_eos)
    if chat is not None:
        ids.update(chat.eot_ids.values())
    return sorted(ids)


class _Streamer(TextStreamer):
    """transformers' TextStreamer writing to a given stream instead of print()."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, out: TextIO) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.out.write(text + ("\n" if stream_end else ""))
        self.out.flush()


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    ids: list[int],
    options: GenerateOptions,
    stop_ids: list[int],
    stream_to: TextIO | None = None,
) -> Generation:
    """Continue ``ids`` with ``model`` as ``options`` say; with ``stream_to``, write the text as it comes."""
    device = place(model)
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    settings: dict[str, Any] = {
        "max_new_tokens": options.max_new_tokens,
        "do_sample": options.temperature > 0,
    }
    if options.temperature > 0:
        settings["temperature"] = options.temperature
        if options.top_p is not None:
            settings["top_p"] = options.top_p
    pad_id = tokenizer.pad_token_id
    if pad_id is None and stop_ids:
        pad_id = stop_ids[0]  # one sequence: padding never appears, but generate wants an id
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        eos_token_id=stop_ids or None,
        pad_token_id=pad_id,
        use_cache=True,
        streamer=_Streamer(tokenizer, stream_to) if stream_to is not None else None,
        **settings,
    )
    new = output[0, len(ids) :].tolist()
    stop = next((index for index, token in enumerate(new) if token in stop_ids), len(new))
    new = new[:stop]
    return Generation(ids, new, str(tokenizer.decode(new, skip_special_tokens=True)))


def run_generate(
    cfg: FtkConfig,
    manager: FtkPluginManager,
    prompt: str,
    options: GenerateOptions,
    adapter: str | None = None,
    model_dir: str | None = None,
    base: bool = False,
    out: TextIO | None = None,
    stream: bool | None = None,
) -> Generation:
    """Load the chosen model, generate the reply to ``prompt`` and write its text to ``out`` (stdout).

    ``stream`` (default: whether ``out`` is a terminal) writes tokens as they are generated.
    """
    options.check()
    out = out if out is not None else sys.stdout
    if stream is None:
        stream = out.isatty()
    hooks = manager.hooks
    directory = trained_model_dir(cfg, adapter, model_dir, base)
    label = _label(adapter, model_dir)
    if directory is not None:
        model_kind(directory, label)
    tokenizer = load_inference_tokenizer(cfg, hooks, directory)
    chat = None if options.raw else chat_formatter(cfg, tokenizer)
    ids = prompt_ids(prompt, tokenizer, chat, options.system)
    model = load_inference_model(cfg, hooks, tokenizer, directory, label)
    set_seed(cfg.seed if options.seed is None else options.seed)
    result = generate(
        model, tokenizer, ids, options, stop_token_ids(tokenizer, model, chat), out if stream else None
    )
    if not stream:
        out.write(result.text + "\n")
        out.flush()
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``ftk generate CONFIG [PROMPT] [--adapter DIR | --model DIR | --base] [decoding options]``."""
    parser.description = (
        "Print a model's reply to PROMPT (or to stdin). Greedy unless --temperature is above 0."
    )
    add_config_argument(parser)
    parser.add_argument("prompt", nargs="?", metavar="PROMPT", help="the prompt; absent or '-': read stdin")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--adapter", metavar="DIR", help="this peft adapter on base_model (default: output_dir)"
    )
    source.add_argument("--model", metavar="DIR", help="this full or merged model directory")
    source.add_argument("--base", action="store_true", help="the base model, untrained")
    parser.add_argument(
        "--max-new-tokens", type=positive_int, metavar="N", help="most tokens to generate (default 256)"
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0, metavar="T", help="0 (default): greedy; above 0: sample"
    )
    parser.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling share, when sampling")
    parser.add_argument("--system", metavar="TEXT", help="system message before the prompt")
    parser.add_argument("--raw", action="store_true", help="no chat template: a plain completion of PROMPT")
    parser.add_argument(
        "--seed", type=int, metavar="S", help="seed for sampling (default: the config's seed)"
    )


def prompt_argument(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """PROMPT wherever it was given (before or after the options), and the config overrides."""
    words, overrides = split_stray_words(args.overrides)
    given = ([args.prompt] if args.prompt is not None else []) + words
    if len(given) > 1:
        raise FtkError(
            f"PROMPT: {len(given)} prompts given ({', '.join(repr(word) for word in given)}); "
            "quote the prompt as one argument"
        )
    return (given[0] if given else None), overrides


def run(args: argparse.Namespace) -> int:
    """Generate as ``args`` say; the reply goes to stdout."""
    prompt_text, overrides = prompt_argument(args)
    prepared = prepare(args.config, overrides, purpose="inference", manager=args.manager)
    options = GenerateOptions(
        max_new_tokens=args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        temperature=args.temperature,
        top_p=args.top_p,
        system=args.system,
        raw=args.raw,
        seed=args.seed,
    )
    prompt = read_prompt(prompt_text, sys.stdin)
    run_generate(
        prepared.cfg,
        prepared.manager,
        prompt,
        options,
        adapter=args.adapter,
        model_dir=args.model,
        base=args.base,
    )
    return 0
