"""Vectorised PyTorch implementations of the fused stages (the ``torch`` backend).

Every function here processes all tokens, maps and cells at once (no Python loop per token or per cell)
and works on any device PyTorch supports; it is the CPU fast path and the fallback wherever Triton or the
native kernels are not available. Arguments are assumed valid: the dispatch functions in
:mod:`mmx_fast.ops` check shapes and values before calling in here, so both backends fail the same way.

Numerics (compared against :mod:`mmx_fast.reference` in ``tests/test_ops.py``):

- gather / top-k: float32 accumulation whatever the input dtype (bfloat16 inputs are upcast, exactly as
  the reference does by default).
- top-k: the logits are computed tile by tile over the vocabulary with the same float32 matmul as the
  reference, and ties are broken by an exact integer key, so the rankings equal the reference's.
- filter / refine: float32 throughout (the reference filter uses float64); the error is a few float32 ulps
  of the map's maximum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..reference.arc import CANCELLATION_FLOOR
from ..reference.rbo import rbo_weights

__all__ = [
    "gather_logit_lens",
    "topk_rankings",
    "rbo_pairs",
    "rank_gaussian_filter",
    "normalize_max",
    "refine",
    "msea_aggregate",
    "VOCAB_TILE",
]

# Vocabulary rows per tile of the streaming top-k: [R, VOCAB_TILE] float32 logits exist at a time, never
# [R, V]. On the development CPU (2 cores) float32 W_U ran at matmul speed for any tile from 1024 to 32768,
# and bfloat16 W_U (each tile upcast to float32 first) was fastest at 1024-4096 (the upcast tile stays in
# cache): 0.39 s vs 0.90 s at 16384 for V = 151,936, d = 1536, R = 70.
VOCAB_TILE = 4096

# Bound on the elements of one chunk in rbo_pairs: the [C', U] position table / [C', T, k] lookups, or the
# [T', C, k, k] comparisons of the fallback for lists with repeated ids.
_RBO_BLOCK_ELEMS = 1 << 21

# A 9-input sorting network (25 comparators, checked exhaustively by the 0-1 principle in the tests):
# sort the rows of the 3x3 window, then the columns, then merge along the diagonals.
SORT9_NETWORK = (
    (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7),
    (0, 3), (3, 6), (0, 3), (1, 4), (4, 7), (1, 4), (2, 5), (5, 8), (2, 5),
    (1, 3), (5, 7), (2, 6), (4, 6), (2, 4), (2, 3), (5, 6),
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Stage A: gather + GEMM (logit lens maps)
# --------------------------------------------------------------------------------------------------


def gather_logit_lens(z: torch.Tensor, w_u: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``clamp(W_U[ids] @ z.T, 0)`` in float32: [M, N]. Only the M gathered rows of W_U are copied."""
    rows = w_u.index_select(0, ids).to(torch.float32)
    out = rows @ z.to(torch.float32).T
    return out.clamp_min_(0)


# --------------------------------------------------------------------------------------------------
# Stage B: streaming top-k rankings and RBO for every pair
# --------------------------------------------------------------------------------------------------


def _order_key(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """int64 keys whose descending order is (value descending, vocab id ascending), with the semantics of
    ``torch.sort(descending=True, stable=True)``: -0.0 == +0.0 and every NaN ranks first.

    High 32 bits: the float32 bit pattern made order-preserving as a signed integer (negative floats have
    their magnitude bits flipped). Low 32 bits: ``2**31 - 1 - id``, so a smaller id gives a larger key.
    Keys of distinct ids are distinct, so ``torch.topk`` on them has no ties and is deterministic.
    """
    values = torch.where(values == 0, torch.zeros_like(values), values)  # -0.0 -> +0.0
    values = torch.where(torch.isnan(values), torch.full_like(values, float("nan")), values)  # one NaN
    bits = values.view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (bits.to(torch.int64) << 32) | ((2**31 - 1) - ids)


def _key_to_id(key: torch.Tensor) -> torch.Tensor:
    return (2**31 - 1) - (key & 0xFFFFFFFF)


def _tile_keys(logits: torch.Tensor, first_id: int, k: int) -> torch.Tensor:
    """Keys of the exact top-``k`` (value desc, id asc) of one [R, n] float32 logits tile: [R, min(k, n)].

    Fast path: ``torch.topk`` on the values picks the right *set* whenever exactly k entries of a row are
    >= its k-th largest value (no tie straddles the cut; the order among equal values is fixed later by
    the keys). Otherwise (a tie at the cut, a NaN or a signed zero there) the whole tile is keyed exactly.
    """
    n = logits.shape[1]
    if n <= k:
        ids = torch.arange(first_id, first_id + n, device=logits.device, dtype=torch.int64)
        return _order_key(logits, ids.expand(logits.shape[0], n))
    vals, idx = torch.topk(logits, k, dim=1, sorted=False)
    thr = vals.amin(1, keepdim=True)
    if bool(((logits >= thr).sum(1) == k).all()):
        return _order_key(vals, idx + first_id)
    ids = torch.arange(first_id, first_id + n, device=logits.device, dtype=torch.int64)
    keys = _order_key(logits, ids.expand(logits.shape[0], n))
    return torch.topk(keys, k, dim=1, sorted=False).values


def topk_rankings(h: torch.Tensor, w_u: torch.Tensor, k: int, tile: int = VOCAB_TILE) -> torch.Tensor:
    """Top-``k`` vocab ids of ``h @ w_u.T`` per row, best first, ties toward the smaller id: [R, k] int64.

    Streams over vocabulary tiles of ``tile`` rows with a running top-k of exact integer keys (see
    :func:`_order_key`, :func:`_tile_keys`); at most [R, tile] logits exist at a time.
    """
    r, v = h.shape[0], w_u.shape[0]
    h32 = h.to(torch.float32)
    best = torch.empty((r, 0), dtype=torch.int64, device=h.device)
    for start in range(0, v, tile):
        w_tile = w_u[start : start + tile].to(torch.float32)
        logits = h32 @ w_tile.T  # [R, tile] float32, bitwise the reference's columns
        best = torch.cat([best, _tile_keys(logits, start, k)], dim=1)
        if best.shape[1] > k:
            best = torch.topk(best, k, dim=1, sorted=False).values
    best = torch.sort(best, dim=1, descending=True).values
    return _key_to_id(best)


def _rbo_depth_weights(k: int, p: float, variant: str, device: torch.device) -> torch.Tensor:
    """[k + 1] float64: ``W[m] = sum_{d > m} c_d`` (m = 0..k-1, 0-based depth of a match) and W[k] = 0.

    An id at position i of one list and j of the other is in both depth-d prefixes for every d > max(i, j),
    so ``RBO = sum_d c_d X_d = sum over matching (i, j) of W[max(i, j)]`` (the histogram of max(i, j),
    cumulatively summed, dotted with the RBO weights, folded into one lookup)."""
    c = rbo_weights(k, p, variant, dtype=torch.float64).to(device)
    suffix = c.flip(0).cumsum(0).flip(0)
    return torch.cat([suffix, suffix.new_zeros(1)])


def _rbo_pairs_dense(a: torch.Tensor, b: torch.Tensor, wdepth: torch.Tensor) -> torch.Tensor:
    """Every (i, j) of every pair compared: [t, C, k, k] blocks. Any lists, duplicates included."""
    t, c, k = a.shape[0], b.shape[0], a.shape[1]
    idx = torch.arange(k, device=a.device)
    wvec = wdepth[torch.maximum(idx[:, None], idx[None, :])].reshape(k * k)
    out = torch.empty((t, c), dtype=torch.float64, device=a.device)
    step = max(1, _RBO_BLOCK_ELEMS // max(1, c * k * k))
    for s in range(0, t, step):
        blk = a[s : s + step, None, :, None] == b[None, :, None, :]  # [t', C, k, k]
        out[s : s + step] = (blk.reshape(-1, k * k).to(torch.float64) @ wvec).reshape(-1, c)
    return out


def rbo_pairs(a: torch.Tensor, b: torch.Tensor, p: float, variant: str) -> torch.Tensor:
    """RBO of every (target, context) pair of rankings: a [T, k], b [C, k] -> [T, C] float32, equal to
    ``reference.rbo.rbo(a[:, None], b[None], p, variant)``.

    Each id of a target list looks up its position j in each context list (a position table over the ids
    that occur, k where absent), so the work is O(T C k), not O(T C k^2); the depth weights of
    :func:`_rbo_depth_weights` turn ``max(i, j)`` into the RBO contribution. A context list holding an id
    twice (never a top-k ranking) takes the exhaustive [k, k] comparison instead, matching the reference.
    """
    t, c, k = a.shape[0], b.shape[0], a.shape[1]
    if t == 0 or c == 0:
        return torch.zeros((t, c), dtype=torch.float32, device=a.device)
    wdepth = _rbo_depth_weights(k, p, variant, a.device)
    b = b.to(a.device)
    sb = torch.sort(b, dim=1).values
    if k > 1 and bool((sb[:, 1:] == sb[:, :-1]).any()):
        return _rbo_pairs_dense(a, b, wdepth).to(torch.float32)
    uniq, inverse = torch.unique(torch.cat([a.reshape(-1), b.reshape(-1)]), return_inverse=True)
    inv_a = inverse[: t * k].reshape(t, k)
    inv_b = inverse[t * k :].reshape(c, k)
    u = uniq.numel()
    pos_i = torch.arange(k, device=a.device)
    out = torch.empty((t, c), dtype=torch.float64, device=a.device)
    step = max(1, _RBO_BLOCK_ELEMS // max(1, u, t * k))
    for s in range(0, c, step):
        n = min(step, c - s)
        table = torch.full((n, u), k, dtype=torch.int64, device=a.device)  # position of each id, k = absent
        table.scatter_(1, inv_b[s : s + n], pos_i.expand(n, k))
        pos_j = table[:, inv_a]  # [n, T, k]: where a[t, i] sits in b[c]
        out[:, s : s + n] = wdepth[torch.maximum(pos_j, pos_i)].sum(-1).T
    return out.to(torch.float32)


# --------------------------------------------------------------------------------------------------
# Rank Gaussian filter and normalisation
# --------------------------------------------------------------------------------------------------


def _reflect_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Source indices of numpy ``mode='reflect'`` padding (edge not repeated; a length-1 axis repeats)."""
    i = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def _filter_unscaled(x: torch.Tensor) -> torch.Tensor:
    """The rank Gaussian filter (kernel 3) of ``x`` [..., H, W] in x's (floating) dtype."""
    h, w = x.shape[-2:]
    padded = x.index_select(-2, _reflect_index(h, 1, x.device)).index_select(
        -1, _reflect_index(w, 1, x.device)
    )
    v = [padded[..., dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]
    for i, j in SORT9_NETWORK:
        v[i], v[j] = torch.minimum(v[i], v[j]), torch.maximum(v[i], v[j])
    v = torch.stack(v)  # [9, ..., H, W], sorted along dim 0
    mean = v.sum(0) / 9
    var = (v - mean).square_().sum(0) / 9
    pos = mean > 0
    sigma = var.sqrt_() / torch.where(pos, mean, torch.ones_like(mean))
    denom = 2 * sigma.square_()
    # exp(-r^2 / denom) = exp(q r^2); denom == 0 (constant window) -> q = -inf -> only the median remains.
    q = torch.where(denom > 0, -1 / torch.where(denom > 0, denom, torch.ones_like(denom)), -torch.inf)
    r2 = torch.tensor([1.0, 4.0, 9.0, 16.0], dtype=x.dtype, device=x.device).reshape((4,) + (1,) * q.dim())
    e = torch.exp(q.unsqueeze(0) * r2)  # [4, ...]: weights of rank offsets +-1..+-4
    pairs = v[:4].flip(0) + v[5:]  # [4, ...]: v[4-r] + v[4+r], r = 1..4
    num = v[4] + (e * pairs).sum(0)
    den = 1 + 2 * e.sum(0)
    return torch.where(pos, num / den, torch.zeros_like(num))


def rank_gaussian_filter(x: torch.Tensor) -> torch.Tensor:
    """TAM's rank Gaussian filter (kernel 3, DESIGN 1.4) over the last two dims, vectorised: the nine
    shifted views of the reflect-padded maps go through a 9-input sorting network instead of a sort.

    Computed in float32 (float64 if ``x`` is float64), returned in x's dtype. The filter is positively
    homogeneous (G(c x) = c G(x), c > 0), so each map is divided by its max |value| first and multiplied
    back after: no underflow or overflow of the variance whatever the maps' scale.
    """
    cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(cdtype)
    scale = xf.abs().amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (_filter_unscaled(xf / scale) * scale).to(x.dtype)


def normalize_max(x: torch.Tensor) -> torch.Tensor:
    """Divide each map ([..., H, W]) by its max; a map whose max is <= 0 becomes all zero (never NaN)."""
    m = x.amax(dim=(-2, -1), keepdim=True)
    pos = m > 0
    return torch.where(pos, x / torch.where(pos, m, torch.ones_like(m)), torch.zeros_like(x))


# --------------------------------------------------------------------------------------------------
# Stage C: refine all targets at once
# --------------------------------------------------------------------------------------------------


def refine(
    a_t: torch.Tensor, ctx: torch.Tensor, weights: torch.Tensor, apply_filter: bool = True
) -> torch.Tensor:
    """ARC for every target at once (Eq. 8-9), then TAM's filter, then max-normalisation: [T, H, W] float32.

    ``ahat = weights @ ctx / rowsum`` (0 where the row sum is <= 0, as the reference), ``beta`` the
    closed-form least-squares coefficient (0 where <ahat, ahat> == 0), ``relu(a_t - beta ahat)``.
    """
    t, h, w = a_t.shape
    a = a_t.to(torch.float32).reshape(t, h * w)
    if ctx.shape[0] == 0:
        ahat = torch.zeros_like(a)
    else:
        wts = weights.to(torch.float32)
        total = wts.sum(1, keepdim=True)
        ok = total > 0
        ahat = (wts @ ctx.to(torch.float32).reshape(ctx.shape[0], h * w)) / torch.where(
            ok, total, torch.ones_like(total)
        )
        ahat = torch.where(ok, ahat, torch.zeros_like(ahat))
    num = (a * ahat).sum(1, keepdim=True)
    den = (ahat * ahat).sum(1, keepdim=True)
    beta = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
    r = (a - beta * ahat).clamp_min_(0)
    floor = CANCELLATION_FLOOR * a.amax(1, keepdim=True)
    r = torch.where(r > floor, r, torch.zeros_like(r)).reshape(t, h, w)
    if apply_filter:
        # normalize(G(r)) == normalize(G(r / max r)): pre-scaling keeps the filter's statistics in range.
        r = _filter_unscaled(normalize_max(r))
    return normalize_max(r)


# --------------------------------------------------------------------------------------------------
# MSEA: resize every scale's maps onto the canonical grid and combine, all ids at once
# --------------------------------------------------------------------------------------------------


def _placement(h: int, w: int, coverage, grid) -> tuple[int, int, int, int]:
    """(source rows, source cols, destination rows, destination cols) of one scale on the canonical grid;
    the same rule as :func:`mmx_fast.reference.msea.to_canonical`."""
    hc, wc = grid
    cy, cx = coverage
    src_h, src_w, dst_h, dst_w = h, w, hc, wc
    if cy < 1:
        src_h = max(1, min(h, round(cy * h)))
    else:
        dst_h = max(1, min(hc, round(hc / cy)))
    if cx < 1:
        src_w = max(1, min(w, round(cx * w)))
    else:
        dst_w = max(1, min(wc, round(wc / cx)))
    return src_h, src_w, dst_h, dst_w


def msea_aggregate(per_scale, coverages, grid, aggregate: str = "mean") -> torch.Tensor:
    """Combine per-scale maps ([M, h_s, w_s] each) into [M, Hc, Wc]: ``mean`` or ``max`` per cell over
    the scales covering it (bilinear resize, align_corners=False). One interpolate per scale for all M
    maps, accumulated in place into the covered sub-rectangle (no full-size temporary per scale)."""
    hc, wc = grid
    first = per_scale[0]
    m = first.shape[0]
    dtype, device = first.dtype, first.device
    if aggregate == "mean":
        total = torch.zeros((m, hc, wc), dtype=dtype, device=device)
    else:
        total = torch.full((m, hc, wc), -torch.inf, dtype=dtype, device=device)
    count = torch.zeros((hc, wc), dtype=dtype, device=device)
    for maps, cov in zip(per_scale, coverages):
        maps = maps.to(dtype)
        src_h, src_w, dst_h, dst_w = _placement(maps.shape[1], maps.shape[2], cov, grid)
        src = maps[:, :src_h, :src_w]
        if (src_h, src_w) != (dst_h, dst_w):
            src = F.interpolate(src.unsqueeze(0), size=(dst_h, dst_w), mode="bilinear", align_corners=False)[
                0
            ]
        region = total[:, :dst_h, :dst_w]
        if aggregate == "mean":
            region.add_(src)
        else:
            region.copy_(torch.maximum(region, src))
        count[:dst_h, :dst_w] += 1
    if aggregate == "mean":
        return total / count.clamp_min(1)
    return torch.where(count > 0, total, torch.zeros_like(total))
