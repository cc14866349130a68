"""TAM's own mitigation, as published (Li et al., ICCV 2025, xmed-lab/TAM ``TAM()``), restated.

This reproduces TAM's maps uint8-for-uint8 given the same model outputs, including its quirks, which we
keep on purpose (the ``tam`` preset is a baseline, so it must be TAM, not our reading of it):

1. Text tokens are TAM's ``txt_all``: the prompt text and the answer, each decoded to a string and
   re-tokenized to token strings. Context tokens whose string equals the target's are excluded.
2. Round 0 (answer token 0) first builds one map per prompt position u = 0..P (P = number of prompt token
   strings): u = 0 uses the argmax class at the first prompt position, 0 < u < P the prompt token at
   position start + u itself, u = P the last prompt token (the one before the answer). These raw maps
   seed the context list. The map TAM returns for answer token 0 is the u = 0 map.
3. For answer token t >= 1 the class is the token itself; its scores at text positions are
   ``[prompt positions, last prompt position, answer positions before t]``; the context weights are those
   scores (clipped logits of the target class), normalised with ``w / (sum(w) + 1e-8)``.
4. Estimated causal inference: interference = weighted sum of the stored raw context maps; its scale is
   the least-squares fit, then ReLU. ``fit="tam"`` (the default) is TAM's own fit, reproduced exactly:
   scipy's ``minimize_scalar`` (Brent's method; TAM passes no bounds) on TAM's objective
   ``np.sum((a - b * x) ** 2)`` over float32 arrays, accurate to ~3e-4 relative, which moves ~0.1% of the
   uint8 cells by one level against the exact optimum. ``fit="closed-form"`` is that exact optimum.
5. Joint min-max normalisation of the image scores together with the text scores (minus the last one),
   the rank Gaussian filter on the grid, and ``(x * 255).astype(uint8)``.

The logits are TAM's: ``lm_head`` in the model's dtype, then clip and ``.float()``, called the way TAM's
pipeline calls it (``tam_logit_groups``): on generated answers one call over the prompt and one per
generated token (TAM's demo: ``[model.lm_head(f[-1]) for f in outputs.hidden_states]``); on states of one
teacher-forced forward, one call over all positions. float32 GEMMs round differently with the number of
rows, and a 1e-7 difference can move a cell under TAM's fit.

Numerics follow TAM's numpy dtypes (float32 scores, float64 after the ECI subtraction and inside the
filter's kernel) so that truncation to uint8 lands on the same integers. Two cases where TAM produces NaN
are defined instead: a constant positive filter window returns its median, and a constant score vector
(max == min) normalises to zeros. Where TAM would raise (no non-repeated context token), no mitigation is
applied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

if TYPE_CHECKING:
    from ..pipeline import TextSide


def tam_rank_gaussian_filter(img: np.ndarray) -> np.ndarray:
    """TAM's 3x3 rank Gaussian filter in TAM's numpy dtypes and call shapes.

    Output dtype = input dtype (TAM writes into ``np.zeros_like(img)``); the kernel is float64. The
    per-cell ``np.exp`` over 9 values is kept on purpose: numpy's SIMD exp can differ in the last bit
    with the array's length and alignment, and the uint8 maps must equal TAM's.
    """
    h, w = img.shape
    padded = np.pad(img, 1, mode="reflect")
    win = np.sort(sliding_window_view(padded, (3, 3)).reshape(h, w, 9), axis=-1)
    ax = np.arange(9) - 4
    out = np.zeros_like(img)
    for i in range(h):
        for j in range(w):
            v = win[i, j]
            mean = v.mean()
            if mean > 0:
                sigma = v.std() / mean
                if 2 * sigma**2 == 0:  # constant window: the median, the formula's limit (TAM: NaN)
                    out[i, j] = v[4]
                    continue
                kernel = np.exp(-(ax**2) / (2 * sigma**2))
                kernel = kernel / np.sum(kernel)
                out[i, j] = (v * kernel).sum()
    return out


def tam_least_squares(a: np.ndarray, b: np.ndarray, fit: str = "tam"):
    """The scale x of ``a - b x`` in TAM's estimated causal inference.

    fit="tam": TAM's ``least_squares``, exactly: scipy's ``minimize_scalar`` with its defaults (Brent's
    method, no bounds) on ``np.sum((a - b * x) ** 2)``, with a and b as TAM holds them (float32 arrays);
    returns scipy's ``result.x``. fit="closed-form": the exact minimiser <a, b> / <b, b> in float64 (0 when
    b is zero)."""
    if fit == "tam":
        try:
            from scipy.optimize import minimize_scalar
        except ImportError as err:  # ExplainConfig.check_runtime says this before any model work
            raise ImportError(
                "ExplainConfig.tam_fit='tam' needs scipy (not installed); install it or use "
                "tam_fit='closed-form'"
            ) from err

        def diff(x, map1, map2):
            return np.sum((map1 - map2 * x) ** 2)

        return minimize_scalar(diff, args=(a, b)).x
    if fit != "closed-form":
        raise ValueError(f"fit={fit!r} is not allowed; expected 'tam' or 'closed-form'")
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    den = float(b64 @ b64)
    return np.float64(0.0) if den == 0 else np.float64(float(a64 @ b64) / den)


def tam_maps(
    seq_ids: Sequence[int],
    prompt_len: int,
    prompt_span: tuple[int, int],
    num_answer: int,
    class_scores: Callable[[int], np.ndarray],
    image_scores: Callable[[int], np.ndarray],
    argmax_at: Callable[[int], int],
    txt_all: Sequence[str],
    num_prompt_strings: int,
    grid: tuple[int, int],
    apply_filter: bool = True,
    fit: str = "tam",
    rank_filter: Callable[[np.ndarray], np.ndarray] = tam_rank_gaussian_filter,
    frames: int = 1,
) -> np.ndarray:
    """TAM maps for every answer token, uint8 [T, H, W].

    seq_ids:            prompt ids (``prompt_len`` of them) followed by the answer ids.
    prompt_span:        (start, end) positions of the prompt text tokens.
    class_scores(c):    float32 [prompt_len + T] clipped logits of class c at every position.
    image_scores(c):    float32 [H * W] clipped map of class c over the visual tokens (the raw logit-lens
                        map for TAM itself; an MSEA map for MSEA + TAM combinations).
    argmax_at(pos):     argmax vocab id of the logits at a position (round 0, u = 0).
    txt_all:            TAM's token strings: re-tokenized prompt strings then answer strings.
    num_prompt_strings: P, how many of ``txt_all`` are prompt strings.
    apply_filter:       TAM always filters; False skips the filter (an ablation, not TAM).
    fit:                ``tam_least_squares``'s fit, "tam" or "closed-form".
    rank_filter:        TAM's filter (the per-cell restatement here; the fast path passes its vectorised
                        one, equal bit for bit).
    frames:             video: the grid is ``frames`` frame grids stacked vertically ([t * h, w]); TAM filters
                        each frame on its own (its video path), after the joint normalisation.
    """
    s, e = prompt_span
    store: list[np.ndarray] = []
    out = np.zeros((num_answer,) + tuple(grid), dtype=np.uint8)

    def one(cls: int, n_pos: int, vis_idx: int) -> np.ndarray:
        sc = class_scores(cls)[:n_pos]
        txt = np.concatenate([sc[s:e], sc[prompt_len - 1 : prompt_len], sc[prompt_len:n_pos]], 0)
        img = image_scores(cls)
        store.append(img)
        if len(store) > 1 and vis_idx < len(txt_all):
            idx = [
                i
                for i in range(vis_idx)
                if i < len(txt_all) and txt_all[i] != txt_all[vis_idx] and i < len(txt)
            ]
            if idx:
                w = txt[idx]
                w = w / (w.sum() + 1e-8)
                interf = (np.stack([store[i] for i in idx], 0) * w.reshape(-1, 1)).sum(0)
                img = (img - interf * tam_least_squares(img, interf, fit)).clip(min=0)
        joint = np.concatenate([img, txt[:-1]], 0)
        lo, hi = joint.min(), joint.max()
        joint = (joint - lo) / (hi - lo) if hi > lo else np.zeros_like(joint)  # TAM: NaN when hi == lo
        img = joint[: len(img)]
        img = img.reshape(grid)
        if apply_filter:
            filtered = np.concatenate([rank_filter(f) for f in np.split(img, frames, axis=0)], 0)
        else:
            filtered = img
        return (filtered * 255).astype("uint8")

    if num_answer == 0:
        return out
    p = num_prompt_strings
    first = None
    for u in range(p + 1):
        if u == p:
            cls = int(seq_ids[prompt_len - 1])
        elif u == 0:
            cls = int(argmax_at(s))
        else:
            cls = int(seq_ids[s + u])
        m = one(cls, prompt_len, u)
        if u == 0:
            first = m
    out[0] = first
    for t in range(1, num_answer):
        out[t] = one(int(seq_ids[prompt_len + t]), prompt_len + t, p + t)
    return out


def tam_token_strings(
    tokenizer, prompt_ids: Sequence[int], answer_ids: Sequence[int]
) -> tuple[list[str], int]:
    """TAM's ``txt_all``: decode prompt / answer ids to text (special tokens kept, no clean-up) and
    re-tokenize to token strings. Returns (strings, number of prompt strings)."""

    def strings(ids: Sequence[int]) -> list[str]:
        if len(ids) == 0:
            return []
        text = tokenizer.batch_decode(
            [list(ids)], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )[0]
        return list(tokenizer.tokenize(text))

    prompt = strings(prompt_ids)
    return prompt + strings(answer_ids), len(prompt)


# --------------------------------------------------------------------------------------------------
# TAM as a mitigation step: the ``tam`` preset of both explain paths runs exactly this (it must equal
# TAM to the uint8, so the fast path has no fused version of it)
# --------------------------------------------------------------------------------------------------


def tam_logit_groups(n_rows: int, prompt_len: int, num_answer: int, per_round: bool) -> list[tuple[int, int]]:
    """The row ranges [a, b) of the scale-1.0 states that TAM's pipeline passes to ``lm_head`` in one call.

    per_round (states kept from generation): the prompt [0, L), then one row per generated token after the
    first, L - 1 + t for t = 1..T-1 (TAM's demo). Otherwise (states of one teacher-forced forward): one call
    over all ``n_rows`` rows, as the model's forward computes its logits."""
    if not per_round:
        return [(0, n_rows)]
    return [(0, prompt_len)] + [(prompt_len - 1 + t, prompt_len + t) for t in range(1, num_answer)]


def tam_logits(h1: torch.Tensor, w_u: torch.Tensor, groups: Sequence[tuple[int, int]]) -> torch.Tensor:
    """What TAM consumes: ``lm_head`` logits in the model's dtype, one call per group of rows as TAM's
    pipeline makes them, concatenated and ``.float()`` (rows = positions 0, 1, ...; vocabulary-sized: the
    reference only)."""
    w = w_u
    out = [F.linear(h1[None, a:b].to(w.dtype), w)[0] for a, b in groups]
    return torch.cat(out, 0).float().cpu()


def tam_extra_classes(tokenizer, text: TextSide, argmax_s: int) -> list[int]:
    """Classes TAM asks for beyond the answer / prompt ids: the argmax ``argmax_s`` of the logits at the
    first prompt position, the last prompt token, and the tokens at positions start + u for every prompt
    string u."""
    s, _ = text.span
    _, p_strings = tam_token_strings(tokenizer, text.prompt_ids, text.answer_ids)
    extra = [int(argmax_s), text.seq_ids[text.prompt_len - 1]]
    extra += [text.seq_ids[s + u] for u in range(1, p_strings) if s + u < len(text.seq_ids)]
    return extra


def tam_text_maps(
    tokenizer,
    text: TextSide,
    *,
    class_scores: Callable[[int], np.ndarray],
    image_scores: Callable[[int], np.ndarray],
    argmax_at: Callable[[int], int],
    grid: tuple[int, int],
    apply_filter: bool,
    fit: str,
    frames: int = 1,
    rank_filter: Callable[[np.ndarray], np.ndarray] = tam_rank_gaussian_filter,
) -> torch.Tensor:
    """``tam_maps`` for one text side (its ids, spans and TAM's token strings), float32 [T, H, W] = uint8 / 255.
    The oracle and the fast path (``mmx_fast.ops.tam``) differ only in where the scores come from."""
    txt_all, p_strings = tam_token_strings(tokenizer, text.prompt_ids, text.answer_ids)
    maps = tam_maps(
        seq_ids=text.seq_ids,
        prompt_len=text.prompt_len,
        prompt_span=text.span,
        num_answer=len(text.answer_ids),
        class_scores=class_scores,
        image_scores=image_scores,
        argmax_at=argmax_at,
        txt_all=txt_all,
        num_prompt_strings=p_strings,
        grid=grid,
        apply_filter=apply_filter,
        fit=fit,
        rank_filter=rank_filter,
        frames=frames,
    )
    return torch.from_numpy(maps.astype(np.float32) / 255.0)


def tam_mitigation(
    tokenizer,
    text: TextSide,
    logits: torch.Tensor,
    visual_positions: torch.Tensor | None,
    grid: tuple[int, int],
    by_id: dict[int, torch.Tensor],
    scales: tuple[float, ...],
    apply_filter: bool,
    fit: str = "tam",
    frames: int = 1,
) -> torch.Tensor:
    """TAM's mitigation (``mitigation="tam"``) for every answer token, float32 [T, H, W] = uint8 / 255;
    exact TAM when scales == (1.0,), the filter is on and fit == "tam".

    logits: ``tam_logits`` of the scale-1.0 states; by_id: {vocab id: flat float32 MSEA map} for MSEA + TAM
    combinations (single scale: the image scores are TAM's own, the clipped logits at the visual
    positions).
    visual_positions: None for tiled inputs, whose scale-1.0 views are first combined on the canonical grid
    (``by_id`` then holds them, docs/design.md §1.2)."""
    scores_pos = logits.clamp_min(0)
    if scales == (1.0,) and visual_positions is not None:
        vis = visual_positions.cpu()

        def image_scores(c: int) -> np.ndarray:
            return scores_pos[vis, c].numpy()
    else:

        def image_scores(c: int) -> np.ndarray:
            return by_id[c].numpy().astype(np.float32)

    return tam_text_maps(
        tokenizer,
        text,
        class_scores=lambda c: scores_pos[:, c].numpy(),
        image_scores=image_scores,
        argmax_at=lambda pos: int(torch.argmax(logits[pos])),
        grid=grid,
        apply_filter=apply_filter,
        fit=fit,
        frames=frames,
    )
