"""The ``tam`` mitigation on the fast path: TAM's algorithm (``reference.tam.tam_maps``), computing only what
TAM reads, with the same bits (docs/design.md §1.5).

TAM builds full-vocabulary logits at every position (prompt, image and answer) and reads from them only
(a) the columns of the classes it explains, at every position, and (b) the argmax at the first prompt
position. Here:

- ``class_logits``: (a) as a gather-GEMM over the needed rows of W_U, called on the same groups of rows as
  TAM's pipeline calls ``lm_head`` (``reference.tam.tam_logit_groups``). A float32 GEMM's rounding depends
  on its shape: on MKL, a column differs in the last bit when the product has few columns (< 64) or when
  the column falls in a different vector tail. So W_U is gathered in aligned blocks of ``BLOCK`` rows, at
  least ``MIN_COLUMNS`` of them, with the vocabulary's tail block last, which reproduces the full product's
  columns bit for bit (``tests/test_stage_tam.py`` checks it on several shapes).
- ``tam_argmax``: (b) as a streamed top-k over W_U (never a [positions x vocab] tensor), certified: the
  candidates' logits are recomputed exactly as above, and every other id's logit is bounded above by its
  streamed value plus a rigorous rounding-error bound; if the best candidate does not clear that bound
  (near-ties, a zero W_U), the exact logits of that row are streamed over the vocabulary instead.
- ``rank_gaussian_filter``: TAM's filter vectorised over the cells in numpy, equal bit for bit to the
  per-cell restatement (the one scalar operation whose rounding differs from its array form, ``sigma ** 2``,
  is kept scalar).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from ..reference.tam import tam_text_maps, tam_token_strings

if TYPE_CHECKING:
    from ..pipeline import TextSide

BLOCK = 16  # W_U rows are gathered in aligned blocks of this many rows
MIN_COLUMNS = 64  # a gather-GEMM has at least this many columns (fewer take another kernel)
CANDIDATES = 16  # streamed top-k depth of the certified argmax
STREAM_ROWS = 8192  # W_U rows per step of the streamed passes

_AX2 = -((np.arange(9) - 4) ** 2)


# --------------------------------------------------------------------------------------------------
# (a) class columns, as TAM's lm_head calls compute them
# --------------------------------------------------------------------------------------------------


def column_layout(ids: Sequence[int], vocab: int) -> tuple[torch.Tensor, list[int]]:
    """(rows of W_U to gather, position of each id among them): the aligned ``BLOCK``-row blocks holding
    ``ids``, padded with the first blocks to ``MIN_COLUMNS`` rows, the vocabulary's tail (the last
    ``vocab % BLOCK`` rows, together) last."""
    body = (vocab // BLOCK) * BLOCK
    blocks = sorted({int(i) // BLOCK for i in ids if int(i) < body})
    k = 0
    while len(blocks) * BLOCK < MIN_COLUMNS and k * BLOCK < body:
        if k not in blocks:
            blocks.append(k)
        k += 1
    blocks.sort()
    starts = {b: j * BLOCK for j, b in enumerate(blocks)}
    cols = [torch.arange(b * BLOCK, (b + 1) * BLOCK) for b in blocks]
    tail_at = len(blocks) * BLOCK
    if any(int(i) >= body for i in ids):
        cols.append(torch.arange(body, vocab))
    rows = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.long)
    where = [
        starts[int(i) // BLOCK] + int(i) % BLOCK if int(i) < body else tail_at + int(i) - body for i in ids
    ]
    return rows, where


@torch.no_grad()
def class_logits(
    h1: torch.Tensor, w_u: torch.Tensor, ids: Sequence[int], groups: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """float32 [positions, len(ids)]: column j is the logit of ``ids[j]`` at every position covered by
    ``groups`` (in order), computed as ``lm_head`` over each group computes it (model dtype, then float)."""
    if len(ids) == 0:
        n = sum(b - a for a, b in groups)
        return torch.zeros(n, 0)
    rows, where = column_layout(ids, w_u.shape[0])
    w_sub = w_u[rows.to(w_u.device)]
    x = h1.to(w_u.dtype)
    out = torch.cat([F.linear(x[None, a:b], w_sub)[0] for a, b in groups], 0)
    return out[:, torch.tensor(where, device=out.device)].float().cpu()


# --------------------------------------------------------------------------------------------------
# (b) the argmax at one position, certified
# --------------------------------------------------------------------------------------------------


def _group_of(pos: int, groups: Sequence[tuple[int, int]]) -> tuple[int, int]:
    for a, b in groups:
        if a <= pos < b:
            return a, b
    raise ValueError(f"position {pos} is in no lm_head group {list(groups)}")


_NORMS: dict[int, tuple[weakref.ref, tuple, float]] = {}


def max_row_norm(w_u: torch.Tensor) -> float:
    """max_k ||w_k||_2 over the rows of W_U, in float32, cached per weight tensor (one streamed pass the
    first time; the cache entry is keyed by the tensor object itself, its storage, shape and version
    counter, so an in-place change or another tensor recomputes it)."""
    sig = (w_u.data_ptr(), w_u._version, tuple(w_u.shape), tuple(w_u.stride()), w_u.dtype, str(w_u.device))
    hit = _NORMS.get(id(w_u))
    if hit is not None and hit[0]() is w_u and hit[1] == sig:
        return hit[2]
    wmax = torch.zeros((), device=w_u.device)
    for start in range(0, w_u.shape[0], STREAM_ROWS):
        wc = w_u[start : start + STREAM_ROWS].float()
        wmax = torch.maximum(wmax, torch.linalg.vector_norm(wc, dim=1).max())
    val = float(wmax)
    if len(_NORMS) > 16:
        _NORMS.clear()
    _NORMS[id(w_u)] = (weakref.ref(w_u), sig, val)
    return val


def _streamed_candidates(x: torch.Tensor, w_u: torch.Tensor, k: int) -> tuple[list[int], float]:
    """One streamed pass over W_U for the row ``x`` (model dtype): (top-k ids by a float32 GEMV, the
    (k+1)-th largest value or -inf)."""
    h = x.float()
    best_v = torch.empty(0, device=w_u.device)
    best_i = torch.empty(0, dtype=torch.long, device=w_u.device)
    for start in range(0, w_u.shape[0], STREAM_ROWS):
        wc = w_u[start : start + STREAM_ROWS].float()
        v = wc @ h
        top = torch.topk(v, min(k + 1, v.numel()))
        best_v = torch.cat([best_v, top.values])
        best_i = torch.cat([best_i, top.indices + start])
        keep = torch.topk(best_v, min(k + 1, best_v.numel()))
        best_v, best_i = keep.values, best_i[keep.indices]
    tau = float(best_v[k]) if best_v.numel() > k else float("-inf")
    return best_i[:k].tolist(), tau


@torch.no_grad()
def tam_argmax(h1: torch.Tensor, w_u: torch.Tensor, pos: int, groups: Sequence[tuple[int, int]]) -> int:
    """``argmax`` (first index on ties) of the logits at ``pos`` as TAM's ``lm_head`` call over the group
    holding ``pos`` computes them, without building that row's [vocab] logits in one product.

    Candidates: the streamed top-``CANDIDATES``; their logits exactly (``class_logits``). Any other id k has
    streamed value v_k <= tau (the next value) and a TAM logit t_k <= v_k + 2 gamma_d |h| |w_k| (both are
    float32 dot products of the same d terms, in any order: |error| <= gamma_d sum |h_i w_ki|, gamma_d =
    d u / (1 - d u)), rounded to the model's dtype. When the best candidate exceeds that bound, it is the
    argmax; otherwise the exact row is streamed over the vocabulary in blocks (rare: near-ties, zero W_U)."""
    a, b = _group_of(pos, groups)
    x = h1[pos].to(w_u.dtype)
    vocab, d = w_u.shape
    cand, tau = _streamed_candidates(x, w_u, CANDIDATES)
    wmax = max_row_norm(w_u)
    cand = sorted(cand)
    exact = class_logits(h1, w_u, cand, [(a, b)])[pos - a]
    best = int(torch.argmax(exact))  # first index among sorted ids: the smallest id on ties
    u = 2.0**-24
    gamma = d * u / (1 - d * u)
    err = 2 * gamma * float(torch.linalg.vector_norm(x.float())) * wmax
    bound = tau + err * (1 + 1e-3) + 1e-30  # slack for the rounding of the bound itself
    if w_u.dtype != torch.float32:  # TAM's logits are rounded to the model's dtype
        bound = bound + abs(bound) * float(torch.finfo(w_u.dtype).eps)
    if len(cand) == vocab or float(exact[best]) > bound:
        return cand[best]
    return _exact_row_argmax(h1[a:b], w_u, pos - a)


def _exact_row_argmax(rows: torch.Tensor, w_u: torch.Tensor, r: int) -> int:
    """The argmax of row ``r`` of ``lm_head(rows)``, streamed over W_U in aligned chunks of at least
    ``MIN_COLUMNS`` columns (the last one holds the vocabulary's tail), each equal to the full product's
    columns."""
    vocab = w_u.shape[0]
    step = max(MIN_COLUMNS, (STREAM_ROWS // BLOCK) * BLOCK)
    bounds = list(range(0, vocab, step)) + [vocab]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < MIN_COLUMNS:
        bounds.pop(-2)
    x = rows.to(w_u.dtype)[None]
    best_v, best_i = None, 0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        v = F.linear(x, w_u[lo:hi])[0, r].float()
        i = int(torch.argmax(v))
        if best_v is None or float(v[i]) > best_v:
            best_v, best_i = float(v[i]), lo + i
    return best_i


# --------------------------------------------------------------------------------------------------
# TAM's filter, vectorised
# --------------------------------------------------------------------------------------------------


def rank_gaussian_filter(img: np.ndarray) -> np.ndarray:
    """``reference.tam.tam_rank_gaussian_filter`` over all cells at once, bit for bit: the same numpy
    operations in the same dtypes along the last axis; ``sigma ** 2`` stays a numpy scalar power (its
    array form squares by multiplication and can round differently in the last bit)."""
    h, w = img.shape
    padded = np.pad(img, 1, mode="reflect")
    win = np.sort(sliding_window_view(padded, (3, 3)).reshape(h * w, 9), axis=-1)
    mean = win.mean(axis=-1)
    out = np.zeros(h * w, dtype=img.dtype)
    pos = mean > 0
    if not pos.any():
        return out.reshape(h, w)
    v = win[pos]
    sigma = v.std(axis=-1) / mean[pos]
    sq = np.fromiter((s**2 for s in sigma), dtype=sigma.dtype, count=sigma.shape[0])
    den = 2 * sq
    flat = den == 0  # a constant window: its median (TAM: NaN)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = np.exp(_AX2[None, :] / np.where(flat, 1, den)[:, None])
    kernel = kernel / np.sum(kernel, axis=-1, keepdims=True)
    val = (v * kernel).sum(axis=-1)
    val[flat] = v[flat, 4]
    out[pos] = val
    return out.reshape(h, w)


# --------------------------------------------------------------------------------------------------
# The mitigation
# --------------------------------------------------------------------------------------------------


def tam_classes(tokenizer, text: TextSide, argmax_s: int) -> list[int]:
    """Every class TAM explains, in its order: round 0's u = 0..P (the argmax, the prompt tokens at
    start + u, the last prompt token), then answer tokens 1..T-1."""
    s, _ = text.span
    _, p = tam_token_strings(tokenizer, text.prompt_ids, text.answer_ids)
    ids = [int(argmax_s)] + [text.seq_ids[s + u] for u in range(1, p) if s + u < len(text.seq_ids)]
    ids.append(text.seq_ids[text.prompt_len - 1])
    return ids + list(text.answer_ids[1:])


@torch.no_grad()
def tam_mitigation_fast(
    tokenizer,
    text: TextSide,
    h1: torch.Tensor,
    w_u: torch.Tensor,
    groups: Sequence[tuple[int, int]],
    argmax_s: int,
    visual_positions: torch.Tensor,
    grid: tuple[int, int],
    apply_filter: bool,
    fit: str,
    image_maps: dict[int, torch.Tensor] | None = None,
    frames: int = 1,
) -> torch.Tensor:
    """``reference.tam.tam_mitigation`` on the class columns only, float32 [T, H, W] = uint8 / 255.

    image_maps: None for TAM's own image scores (the clipped logits at the visual positions); {vocab id:
    flat MSEA map} for MSEA + TAM combinations. frames: a video's t, ``grid`` then [t * Hc, Wc] (frames stacked;
    the filter runs per frame)."""
    ids = sorted(set(tam_classes(tokenizer, text, argmax_s)))
    col = {c: j for j, c in enumerate(ids)}
    scores = class_logits(h1, w_u, ids, groups).clamp_min(0).T.contiguous().numpy()  # [classes, positions]
    vis = visual_positions.cpu().numpy()
    if image_maps is None:

        def image_scores(c: int) -> np.ndarray:
            return scores[col[c]][vis]
    else:

        def image_scores(c: int) -> np.ndarray:
            return image_maps[c].numpy().astype(np.float32)

    return tam_text_maps(
        tokenizer,
        text,
        class_scores=lambda c: scores[col[c]],
        image_scores=image_scores,
        argmax_at=lambda pos: argmax_s,
        grid=grid,
        apply_filter=apply_filter,
        fit=fit,
        frames=frames,
        rank_filter=rank_gaussian_filter,
    )
