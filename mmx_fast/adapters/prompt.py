"""The chat prompt and where its parts sit: the rendered template, the visual-token positions, and the span of
the user's instruction text (the ARC context of docs/design.md §1.3: template, special and image tokens
excluded)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

SENTINEL = "\ue000"  # a private-use character no prompt or template contains


def chat_text(processor: Any, tokenizer: Any, prompt: str, media: str = "image") -> str:
    """The chat prompt of one user turn (the image, or the video for ``media="video"``, then ``prompt``;
    generation prompt appended), rendered by the processor's chat template (else the tokenizer's)."""
    messages = [{"role": "user", "content": [{"type": media}, {"type": "text", "text": prompt}]}]
    for owner in (processor, tokenizer):
        if getattr(owner, "chat_template", None):
            text = owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return text[0] if isinstance(text, list) else text
    raise ValueError(
        f"{type(processor).__name__} has no chat template; set processor.chat_template "
        "(the model's own template) before explaining"
    )


def visual_positions(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Sequence positions of the visual tokens (LongTensor [N], ascending)."""
    return (input_ids.reshape(-1) == image_token_id).nonzero().flatten().long()


def prompt_chars(text: str, prompt: str, render: Callable[[str], str]) -> tuple[int, int]:
    """Character span of ``prompt`` in the rendered chat ``text``: found by rendering the template around a
    sentinel (``render``), so a prompt that repeats template words (``assistant``) is still found in the right
    place; else the last occurrence of the stripped prompt."""
    if SENTINEL not in prompt:
        marked = render(SENTINEL)
        if marked.count(SENTINEL) == 1:
            c0 = marked.index(SENTINEL)
            suffix = marked[c0 + len(SENTINEL) :]
            if (
                text.startswith(marked[:c0])
                and text.endswith(suffix)
                and text[c0 : c0 + len(prompt)] == prompt
            ):
                return c0, c0 + len(prompt)
    stripped = prompt.strip()
    i = text.rfind(stripped)
    if i < 0:
        raise ValueError(f"the prompt text {prompt!r} does not appear in the rendered chat prompt")
    return i, i + len(stripped)


def token_span(
    ids: list[int], offsets: list[tuple[int, int]], chars: tuple[int, int], skip: set[int], prompt: str
) -> tuple[int, int]:
    """Half-open positions of the tokens (``ids`` with their character ``offsets``) whose characters lie in
    ``chars``, never a token in ``skip``; for an empty instruction, an empty span just before the first token
    after it."""
    c0, c1 = chars
    inside = [
        i for i, ((a, b), t) in enumerate(zip(offsets, ids)) if b > a and a < c1 and b > c0 and t not in skip
    ]
    if not inside:
        after = next((i for i, (a, _) in enumerate(offsets) if a >= c1 and i > 0), len(ids))
        return after, after
    s, e = inside[0], inside[-1] + 1
    if inside != list(range(s, e)):
        raise ValueError(f"the prompt text {prompt!r} is interrupted by special tokens in the chat prompt")
    return s, e


def find_prompt_span(
    tokenizer: Any,
    text: str,
    prompt: str,
    input_ids: torch.Tensor,
    image_token_id: int,
    render: Callable[[str], str],
) -> tuple[int, int]:
    """Half-open token positions (in the processor's expanded ``input_ids``) of the user's instruction text
    inside the rendered chat ``text``: only tokens whose characters lie in the instruction, never template,
    special or image tokens. ``render(prompt)`` renders the chat template around a prompt."""
    chars = prompt_chars(text, prompt, render)
    enc = tokenizer(text, return_offsets_mapping=True)
    ids_u = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    skip = set(tokenizer.all_special_ids) | {image_token_id}
    s, e = token_span(ids_u, offsets, chars, skip, prompt)
    ids_e = input_ids.reshape(-1).tolist()
    # The processor only expanded the image placeholder(s): tokens after them are shifted by a constant.
    for delta in (len(ids_e) - len(ids_u), 0):
        if 0 <= s + delta and e + delta <= len(ids_e) and ids_e[s + delta : e + delta] == ids_u[s:e]:
            vis = set(visual_positions(input_ids, image_token_id).tolist())
            if not vis.intersection(range(s + delta, e + delta)):
                return (s + delta, e + delta)
    raise ValueError(f"cannot locate the prompt text {prompt!r} in the tokenized chat prompt")
