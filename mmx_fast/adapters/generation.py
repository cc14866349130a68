"""Batched rows, greedy generation and the decoder's states captured on the way (docs/design.md §2, data flow
steps 1-2: generate once at scale 1.0 with the KV cache, never ``output_hidden_states``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .base import PromptInputs


def check_rows(prompts: Sequence[PromptInputs], answers: Sequence[Sequence[int]]) -> set[str]:
    """The input keys every prompt shares; one answer per prompt, at least one prompt."""
    if len(prompts) != len(answers):
        raise ValueError(
            f"got {len(prompts)} prompts but {len(answers)} answers; expected one answer per prompt"
        )
    if not prompts:
        raise ValueError("expected at least one prompt")
    keys = set(prompts[0].inputs)
    for i, p in enumerate(prompts):
        if set(p.inputs) != keys:
            raise ValueError(f"prompt {i} has inputs {sorted(p.inputs)}, prompt 0 has {sorted(keys)}")
    return keys


def token_row(
    head: torch.Tensor, key: str, answer: Sequence[int], pad: int, fill: int, side: str, answer_fill: int = 0
) -> torch.Tensor:
    """One per-token row: the prompt's ``head``, the answer's part of ``key`` (its ids, ones for the attention
    mask, ``answer_fill`` otherwise: 0, answer tokens are text) and ``pad`` cells of ``fill`` on ``side``."""
    head = head.reshape(-1).to(torch.long)
    if key == "input_ids":
        tail = torch.as_tensor(list(answer), dtype=torch.long)
    elif key == "attention_mask":
        tail = torch.ones(len(answer), dtype=torch.long)
    else:
        tail = torch.full((len(answer),), answer_fill, dtype=torch.long)
    padding = torch.full((pad,), fill, dtype=torch.long)
    return torch.cat((head, tail, padding) if side == "right" else (padding, head, tail))


def padding_mask(lengths: Sequence[int], width: int, side: str) -> torch.Tensor:
    """[B, width] attention mask: ones on each row's ``lengths[i]`` real tokens, padded on ``side``."""
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, width - n :] = 1
    return mask


def pad_views(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-image tensors of tiled families ([1, views, ...]: LLaVA-NeXT's ``pixel_values``, Idefics3's pixel
    attention mask) with zeros appended along dim 1 up to the largest view count; the models drop the padding
    views themselves (from ``image_sizes`` / all-zero images). Other tensors as they are."""
    if len(tensors) < 2 or tensors[0].dim() < 4 or len({t.shape[1] for t in tensors}) == 1:
        return tensors
    n = max(t.shape[1] for t in tensors)
    out = []
    for t in tensors:
        pad = t.new_zeros((t.shape[0], n - t.shape[1], *t.shape[2:]))
        out.append(torch.cat((t, pad), dim=1))
    return out


def collate(
    prompts: Sequence[PromptInputs],
    answers: Sequence[Sequence[int]],
    side: str,
    *,
    token_keys: Sequence[str],
    pad_id: int,
    device: Any,
    dtype: torch.dtype,
    answer_fills: Mapping[str, int] | None = None,
) -> tuple[dict[str, torch.Tensor], list[int], int]:
    """One batch of ``prompt_i + answer_i`` rows padded on ``side``. Per-token inputs (``token_keys``) are
    padded (``input_ids`` with ``pad_id``, the rest with 0); every other tensor is per-image and concatenated
    along dim 0 (floating point ones cast to ``dtype``). ``answer_fills``: per-token keys whose answer part is
    not 0 (see ``token_row``). Returns (inputs, row lengths, padded length)."""
    keys = check_rows(prompts, answers)
    lengths = [p.length + len(a) for p, a in zip(prompts, answers)]
    width = max(lengths)
    batch: dict[str, torch.Tensor] = {}
    for key in sorted(keys):
        if key in token_keys:
            fill = pad_id if key == "input_ids" else 0
            rows = [
                token_row(p.inputs[key], key, a, width - n, fill, side, (answer_fills or {}).get(key, 0))
                for p, a, n in zip(prompts, answers, lengths)
            ]
            batch[key] = torch.stack(rows).to(device)
        else:
            t = torch.cat(pad_views([p.inputs[key] for p in prompts]), dim=0)
            batch[key] = t.to(device=device, dtype=dtype if t.is_floating_point() else None)
    if "attention_mask" not in batch:
        batch["attention_mask"] = padding_mask(lengths, width, side).to(device)
    return batch, lengths, width


def visual_prefix(prompt: PromptInputs, token_keys: Sequence[str]) -> PromptInputs:
    """``prompt`` cut right after its last visual token (docs/design.md §2, prefix-only passes): under causal
    attention the visual tokens' states do not depend on anything later (instruction, template, answer), so
    a forward over this prefix gives them exactly. Per-token inputs (``token_keys``) are sliced; per-image
    inputs (pixels, grids) are kept whole. Position ids computed from the cut sequence equal the full
    sequence's on the prefix: Qwen's M-RoPE (``get_rope_index``) numbers each text / image group from the
    groups before it only. The copy's ``prompt_span`` still names the instruction of the full prompt (beyond
    the cut); only its forward is run. A prompt without visual tokens is returned unchanged."""
    vis = prompt.visual_positions
    if vis.numel():
        # after the last placeholder of the kind the visual tokens use: tiled models (LLaVA-NeXT) also place
        # features on placeholders that are not visual cells (image_newline), and the model checks the count
        ids = prompt.inputs["input_ids"].reshape(-1)
        placeholder = torch.isin(ids, ids[vis.to(ids.device)].unique())
        cut = int(torch.nonzero(placeholder).max()) + 1
    else:
        cut = prompt.length
    if cut >= prompt.length:
        return prompt
    inputs = {k: (v[..., :cut] if k in token_keys else v) for k, v in prompt.inputs.items()}
    return dataclasses.replace(prompt, inputs=inputs)


def length_buckets(lengths: Sequence[int], max_waste: float, max_tokens: int) -> list[list[int]]:
    """Row indices grouped into padded batches without padding waste (docs/design.md §2): rows sorted by
    length (longest first, ties by index); a bucket takes the next row while its padding stays within
    ``max_waste`` of its real tokens and its padded size (rows x longest) within ``max_tokens`` (a single row
    longer than that is a bucket of its own). Every index appears exactly once."""
    if max_waste < 0:
        raise ValueError(f"max_waste={max_waste} is negative; expected >= 0")
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} is not positive; expected >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    buckets: list[list[int]] = []
    cur: list[int] = []
    width = real = 0
    for i in order:
        n = int(lengths[i])
        if cur:
            rows, tokens = len(cur) + 1, real + n
            if rows * width - tokens <= max_waste * tokens and rows * width <= max_tokens:
                cur.append(i)
                real = tokens
                continue
            buckets.append(cur)
        cur, width, real = [i], n, n
    if cur:
        buckets.append(cur)
    return buckets


def until_stop(ids: Sequence[int], stops: set[int]) -> list[int]:
    """``ids`` up to (not including) the first stop token."""
    answer = []
    for tok in ids:
        if tok in stops:
            break
        answer.append(int(tok))
    return answer


def greedy(model: Any, inputs: dict[str, Any], max_new_tokens: int, pad_id: int) -> torch.Tensor:
    """``model.generate``: greedy, KV cache on; the full sequences [B, width + new]."""
    return model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=pad_id,
    )


def base_model_of(model: Any) -> Any:
    """The base model (vision tower + projector + decoder) whose ``last_hidden_state`` is already normed."""
    base = getattr(model, "model", None)
    if base is None:
        base = model.base_model
    return base


def decoder_of(model: Any) -> Any:
    """The text decoder whose output (``last_hidden_state``) is the final-normed states lm_head reads."""
    get = getattr(model, "get_decoder", None)
    dec = get() if callable(get) else None
    if dec is None:
        dec = base_model_of(model).language_model
    return dec


@contextmanager
def captured_states(decoder: Any) -> Iterator[list[torch.Tensor]]:
    """Collects the decoder's ``last_hidden_state`` of every call made inside the block (a forward hook)."""
    captured: list[torch.Tensor] = []

    def hook(_module, _args, output):
        hs = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        captured.append(hs.detach())

    handle = decoder.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def stitch_states(
    captured: Sequence[torch.Tensor],
    prompts: Sequence[PromptInputs],
    answers: Sequence[Sequence[int]],
    width: int,
) -> list[torch.Tensor]:
    """Per row, the states of a left-padded generation (prefill of ``width`` then one call per new token):
    [L_i + T_i - 1, d], every prompt position and every answer position but the last."""
    if not captured or captured[0].shape[1] != width:
        raise RuntimeError(
            f"could not capture the decoder's states during generation (got {len(captured)} calls); "
            "use forward_hidden instead"
        )
    states = []
    for i, (p, ans) in enumerate(zip(prompts, answers)):
        parts = [captured[0][i, width - p.length :]]
        parts += [captured[k][i, -1:] for k in range(1, len(ans))]
        states.append(torch.cat(parts, 0))
    return states


@dataclass(frozen=True)
class StepScores:
    """The best logits ``lm_head`` computed for one answer during generation (docs/design.md §1.3, "scores
    from generation"): row t is the position that predicts answer token t (prompt end for t = 0).

    values: [T, keep] float32, descending: the ``keep`` largest logits of each row (lm_head's own output,
            upcast; bfloat16 values for a bfloat16 model).
    ids:    [T, keep] int64, their vocabulary ids.
    dtype:  lm_head's output dtype (float32 or bfloat16: the error bound against the float32 reference
            differs, ``ops.rankings.score_bound_terms``)."""

    values: torch.Tensor
    ids: torch.Tensor
    dtype: torch.dtype


def scoring_head(model: Any, w_u: torch.Tensor) -> torch.nn.Linear | None:
    """The module whose output is ``x @ w_u.T`` for the decoder's states ``x``: the model's output embeddings
    when it is a bias-free ``nn.Linear`` holding ``w_u`` in float32 or bfloat16; None otherwise (then no scores
    are kept and every ranking row runs the pass over W_U)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or head.weight is not w_u:
        return None
    if w_u.dtype not in (torch.float32, torch.bfloat16):
        return None
    return head


@contextmanager
def captured_scores(head: torch.nn.Linear | None, keep: int) -> Iterator[list[tuple]]:
    """Collects, for every ``head`` call made inside the block, its input at the last position [B, d] and the
    ``keep`` largest logits there (float32 values [B, keep] descending, int64 ids): the scores generation
    computes anyway, kept so that no ranking row is scored twice (docs/design.md §1.3). ``head`` None or
    ``keep`` 0: nothing is collected."""
    captured: list[tuple] = []
    if head is None or keep <= 0:
        yield captured
        return

    def hook(_module, args, kwargs, output):
        x = args[0] if args else kwargs["input"]
        y = output[..., -1, :] if output.dim() == 3 else output
        xs = x[..., -1, :] if x.dim() == 3 else x
        vals, ids = torch.topk(y.detach().float(), min(keep, y.shape[-1]), dim=-1, sorted=True)
        captured.append((xs.detach().clone(), vals, ids, output.dtype))

    handle = head.register_forward_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def stitch_scores(
    captured: Sequence[tuple],
    prompts: Sequence[PromptInputs],
    answers: Sequence[Sequence[int]],
    states: Sequence[torch.Tensor],
) -> list[StepScores | None]:
    """Per row of a (left-padded) generation, the kept scores of its T answer-predicting positions, or None
    when there are none to keep (an empty answer, fewer head calls than tokens) or when the head's input at
    any of those positions is not bitwise the captured decoder state (then the scores would not be those of
    the states the rankings read)."""
    out: list[StepScores | None] = []
    for i, (p, ans) in enumerate(zip(prompts, answers)):
        n = len(ans)
        if not n or len(captured) < n:
            out.append(None)
            continue
        rows = states[i][p.length - 1 : p.length - 1 + n]
        xs = torch.stack([captured[t][0][i] for t in range(n)])
        if rows.shape != xs.shape or not torch.equal(rows, xs.to(rows.dtype)) or xs.dtype != rows.dtype:
            out.append(None)
            continue
        vals = torch.stack([captured[t][1][i] for t in range(n)])
        ids = torch.stack([captured[t][2][i] for t in range(n)])
        out.append(StepScores(vals, ids, captured[0][3]))
    return out
