"""Which texts ``type: chat_template`` hands to the tokenizer: the rendered conversation in runs.

``ChatTemplateTokenizer`` cuts the rendered conversation into chunks: template text, message text
(content, reasoning, data holding a control-token string) and end-of-turn tokens, each trained or
not.  Tokenizing each chunk on its own would split BPE merges that the whole text makes across a
chunk boundary: ``<|im_start|>user\\n`` followed by a content starting with ``\\n`` tokenizes, as
one text, with a single ``\\n\\n`` token, but as two texts with two ``\\n`` tokens.  So chunks are
joined into *runs*, each tokenized as one text:

* a run is a stretch of consecutive chunks with the same training (before ``train_on_inputs``,
  which changes labels, never ids) and no end-of-turn token inside (an end of turn is one id of
  its own, a run by itself);
* a run whose message texts hold no control-token string is tokenized whole, control tokens
  recognised: its ids are those of the tokenizer on the same text, as
  ``apply_chat_template(..., tokenize=True)`` gives them;
* a run whose message text (or data) holds a control-token string is tokenized in parts so that
  the string stays text: the run's template text is cut at the control tokens it holds (each is
  one id), and the text between them, message text and template text together, is tokenized as
  plain text.

Where training starts (the end of the generation prompt, before a trained reply) the runs are
cut: the prompt gets the ids the tokenizer gives the prompt alone (the ids a model is given at
inference), and the reply the ids of its own text, the ones a model generating after that prompt
produces, even where the whole conversation's text would merge a token across that boundary
(``assistant\\n`` then a reply starting with ``" \\n"``: the prompt ends with ``\\n``, the reply
starts with ``" \\n"``, where the whole text has one ``"\\n \\n"``).  A later prompt holds the
earlier replies, and they keep those ids: where a reply's first characters would merge with the
template text before it, that prompt's encoding by the tokenizer differs from the row's ids at
that reply's first token (a row has one id sequence; a trained reply gets the ids it is trained
to write).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any, NamedTuple

#: A unit of a run: ``(kind, value, starts)``.  ``kind`` is ``s`` (template text only, tokenized
#: through the template cache; value: the text), ``w`` (a whole run, control tokens recognised;
#: value: index into ``RunPlan.whole``), ``p`` (plain text; value: index into ``RunPlan.plain``) or
#: ``i`` (one token id).  ``starts`` lists ``(character offset in the unit's text, chunk index)``
#: where each chunk's text begins, for telling which chunk each token comes from; None for a unit
#: that is its whole run (its run's ``members`` give them, see ``unit_starts``).
Unit = tuple[str, Any, list[tuple[int, int]] | None]


class RunPlan(NamedTuple):
    """The runs of a conversation and the texts to tokenize for them.

    ``runs`` holds ``(trained, members, units)`` in text order, ``members`` being the indices of
    the run's chunks; ``whole`` the texts to tokenize with control tokens recognised, ``plain``
    those to tokenize as plain text, ``scaffold`` the template-only texts (tokenized with control
    tokens recognised, through a cache).
    """

    runs: list[tuple[bool, list[int], list[Unit]]]
    whole: list[str]
    plain: list[str]
    scaffold: list[str]


def chunk_text(item: tuple, texts: Sequence[str]) -> str:
    """The text of a template (``t``) or message-text (``c``) chunk."""
    return item[1] if item[0] == "t" else texts[item[1]]


def plan_runs(items: list[tuple], texts: Sequence[str], control_re: re.Pattern | None) -> RunPlan:
    """Group ``items`` (``ChatTemplateTokenizer._chunks``'s chunks) into runs (see the module docstring).

    ``control_re`` matches the tokenizer's control-token strings (None: it has none).
    """
    plan = RunPlan([], [], [], [])
    runs = plan.runs
    members: list[int] = []
    trained = False
    for index, item in enumerate(items):
        if item[0] == "e":
            if members:
                runs.append((trained, members, _units(members, items, texts, control_re, plan)))
                members = []
            runs.append((item[2], [index], [("i", item[1], None)]))
            continue
        if members and item[2] != trained:
            runs.append((trained, members, _units(members, items, texts, control_re, plan)))
            members = []
        trained = item[2]
        members.append(index)
    if members:
        runs.append((trained, members, _units(members, items, texts, control_re, plan)))
    return plan


def _units(
    members: list[int], items: list[tuple], texts: Sequence[str], control_re: re.Pattern | None, plan: RunPlan
) -> list[Unit]:
    """The units of the run made of chunks ``members``; their texts are added to ``plan``."""
    parts: list[str] = []
    only_template = True
    forged = False
    search = control_re.search if control_re is not None else None
    for index in members:
        item = items[index]
        if item[0] == "t":
            parts.append(item[1])
            continue
        text = texts[item[1]]
        parts.append(text)
        only_template = False
        if search is not None and not forged and search(text) is not None:
            forged = True
    if forged:
        return _split_units(members, items, texts, control_re, plan)
    text = parts[0] if len(parts) == 1 else "".join(parts)
    if only_template:
        plan.scaffold.append(text)
        return [("s", text, None)]
    plan.whole.append(text)
    return [("w", len(plan.whole) - 1, None)]


def _split_units(
    members: list[int], items: list[tuple], texts: Sequence[str], control_re: re.Pattern | None, plan: RunPlan
) -> list[Unit]:
    """Units of a run whose message text holds a control-token string: template text is cut at its
    control tokens, everything between them is plain text."""
    units: list[Unit] = []
    buffer: list[str] = []
    starts: list[tuple[int, int]] = []
    length = 0

    def flush() -> None:
        nonlocal buffer, starts, length
        if buffer:
            plan.plain.append("".join(buffer))
            units.append(("p", len(plan.plain) - 1, starts))
        buffer, starts, length = [], [], 0

    def add(text: str, index: int) -> None:
        nonlocal length
        if text:
            starts.append((length, index))
            buffer.append(text)
            length += len(text)

    for index in members:
        item = items[index]
        text = chunk_text(item, texts)
        if item[0] != "t" or control_re is None:
            add(text, index)
            continue
        cursor = 0
        for match in control_re.finditer(text):
            add(text[cursor : match.start()], index)
            flush()
            plan.scaffold.append(match.group())
            units.append(("s", match.group(), [(0, index)]))
            cursor = match.end()
        add(text[cursor:], index)
    flush()
    return units


def unit_starts(
    unit: Unit, members: list[int], items: list[tuple], texts: Sequence[str]
) -> list[tuple[int, int]]:
    """``(offset, chunk index)`` where each chunk's text begins in ``unit``'s text."""
    if unit[2] is not None:
        return unit[2]
    starts = []
    length = 0
    for index in members:
        starts.append((length, index))
        if items[index][0] != "e":
            length += len(chunk_text(items[index], texts))
    return starts


def attribute(offsets: Sequence[tuple[int, int]], starts: list[tuple[int, int]]) -> list[int]:
    """For each token (its character offsets in its unit's text), the chunk it starts in."""
    positions = [offset for offset, _ in starts]
    return [starts[max(0, bisect_right(positions, begin) - 1)][1] for begin, _ in offsets]
