"""Answer tokens -> words: the one grouping rule, shared by ``Explanation.word_maps`` and ``mmx-fast eval``.

xmed-lab/TAM's ``ids_to_word_groups``: token ``i`` starts a new word when ``i == 0``, or its decoded string is
"punctuation", or contains a CJK character, or starts with a space, or its raw token string starts with the
SentencePiece marker ``"▁"``; otherwise it is appended to the previous word. Every word is stored with its
spaces removed. TAM's punctuation test is ``word in string.punctuation``, a *substring* test: ``"."``,
``"./"`` and the empty string count as punctuation, ``"'s"`` does not. Newline tokens are not spaces, so
``".\\n\\nThe"`` is one word, as in TAM. ``mmx_fast.eval.words`` documents how the evaluation uses it.

Word maps (:func:`combine_maps`): a word's map is the element-wise **max** of its tokens' maps by default,
the rule the evaluation uses for a noun (its Obj-IoU and Otsu threshold are the max over the word's tokens);
``"mean"`` (the rule for function words' Func-IoU) is the other choice.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Sequence
from typing import Any

import torch

WORD_REDUCTIONS = ("max", "mean")


def is_punctuation(word: str) -> bool:
    """TAM's ``is_english_punctuation``: ``word in string.punctuation`` (a substring test; ``""`` is True)."""
    return word in string.punctuation


def has_cjk(word: str) -> bool:
    """TAM's ``is_chinese_char_or_punctuation``: any character whose Unicode name contains ``CJK``."""
    return any("CJK" in unicodedata.name(ch, "") for ch in word)


def group_words(raw_tokens: Sequence[str], decoded: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    """Group tokens into words exactly as TAM's ``ids_to_word_groups`` (see the module docstring).

    raw_tokens: the tokenizer's token strings (``convert_ids_to_tokens``; ``"Ġcat"``, ``"▁cat"``).
    decoded:    each token decoded on its own (``tokenizer.decode([id])``; ``" cat"``).
    Returns (words with spaces removed, token indices of each word).
    """
    if len(raw_tokens) != len(decoded):
        raise ValueError(
            f"got {len(raw_tokens)} raw tokens but {len(decoded)} decoded strings; expected one each"
        )
    words: list[str] = []
    groups: list[list[int]] = []
    for i, (raw, word) in enumerate(zip(raw_tokens, decoded)):
        raw = raw or ""
        new = i == 0 or is_punctuation(word) or has_cjk(word) or word[0] == " " or raw[:1] == "▁"
        if new:
            words.append(word.replace(" ", ""))
            groups.append([i])
        else:
            words[-1] += word.replace(" ", "")
            groups[-1].append(i)
    return words, groups


def raw_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The tokenizer's raw token strings of ``ids`` (``convert_ids_to_tokens``; ``""`` for an unknown id)."""
    return [str(t) if t is not None else "" for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids])]


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> tuple[list[str], list[str]]:
    """(raw token strings, per-token decoded strings) of ``ids``, as TAM obtains them per token."""
    ids = [int(i) for i in ids]
    return raw_tokens(tokenizer, ids), [tokenizer.decode([i], skip_special_tokens=False) for i in ids]


def combine_maps(maps: torch.Tensor, groups: Sequence[Sequence[int]], reduce: str = "max") -> torch.Tensor:
    """One map per word from the token maps ``maps`` [T, H, W]: the element-wise ``reduce`` (``"max"`` or
    ``"mean"``) over each group's tokens. Returns [len(groups), H, W] with the dtype of ``maps``."""
    if reduce not in WORD_REDUCTIONS:
        raise ValueError(f"reduce={reduce!r} is not allowed; expected one of {', '.join(WORD_REDUCTIONS)}")
    if not groups:
        return maps.new_zeros((0, *maps.shape[1:]))
    out = []
    for g in groups:
        if not g:
            raise ValueError("a word with no tokens; every group needs at least one token index")
        sel = maps[list(g)]
        out.append(sel.amax(0) if reduce == "max" else sel.mean(0))
    return torch.stack(out)
