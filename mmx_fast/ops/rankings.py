"""Stage ``rankings`` (docs/design.md §1.3), the ``torch`` backend: streaming top-k rankings and the RBO of
every (target, context) pair, vectorised over all rows. Arguments are checked once in :mod:`mmx_fast.ops`.

Numerics: the logits are computed tile by tile over the vocabulary with the same float32 matmul as the
reference, and ties are broken by an exact integer key, so the rankings equal the reference's. RBO sums
the depth weights in float64 and returns float32.
"""

from __future__ import annotations

import torch

# Vocabulary rows per tile of the streaming top-k: [R, VOCAB_TILE] float32 logits exist at a time, never
# [R, V]. On the development CPU (2 cores) float32 W_U ran at matmul speed for any tile from 1024 to 32768,
# and bfloat16 W_U (each tile upcast to float32 first) was fastest at 1024-4096 (the upcast tile stays in
# cache): 0.39 s vs 0.90 s at 16384 for V = 151,936, d = 1536, R = 70.
VOCAB_TILE = 4096

# Bound on the elements of one chunk in rankings_rbo_torch: the [C', U] position table / [C', T, k] lookups, or the
# [T', C, k, k] comparisons of the fallback for lists with repeated ids.
_RBO_BLOCK_ELEMS = 1 << 21

# Bound on the elements of one chunk in rankings_rbo_torch: the [C', U] position table / [C', T, k] lookups, or
# the [T', C, k, k] comparisons of the fallback for lists with repeated ids.
_RBO_BLOCK_ELEMS = 1 << 21


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


def rankings_topk_torch(h: torch.Tensor, w_u: torch.Tensor, k: int, tile: int = VOCAB_TILE) -> torch.Tensor:
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


def rbo_depth_weights(weights: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[k + 1] float64: ``W[m] = sum_{d > m} c_d`` (m = 0..k-1, 0-based depth of a match) and W[k] = 0.

    An id at position i of one list and j of the other is in both depth-d prefixes for every d > max(i, j),
    so ``RBO = sum_d c_d X_d = sum over matching (i, j) of W[max(i, j)]`` (the histogram of max(i, j),
    cumulatively summed, dotted with the RBO weights, folded into one lookup)."""
    c = weights.to(device=device, dtype=torch.float64)
    suffix = c.flip(0).cumsum(0).flip(0)
    return torch.cat([suffix, suffix.new_zeros(1)])


def _rbo_dense(a: torch.Tensor, b: torch.Tensor, wdepth: torch.Tensor) -> torch.Tensor:
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


def rankings_rbo_torch(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """RBO of every (target, context) pair of rankings: a [T, k], b [C, k] -> [T, C] float32, equal to
    ``reference.rankings.rbo(a[:, None], b[None], p, variant)`` for the weights of (p, variant).

    Each id of a target list looks up its position j in each context list (a position table over the ids
    that occur, k where absent), so the work is O(T C k), not O(T C k^2); the depth weights of
    :func:`_rbo_depth_weights` turn ``max(i, j)`` into the RBO contribution. A context list holding an id
    twice (never a top-k ranking) takes the exhaustive [k, k] comparison instead, matching the reference.
    """
    t, c, k = a.shape[0], b.shape[0], a.shape[1]
    if t == 0 or c == 0:
        return torch.zeros((t, c), dtype=torch.float32, device=a.device)
    wdepth = rbo_depth_weights(weights, a.device)
    b = b.to(a.device)
    sb = torch.sort(b, dim=1).values
    if k > 1 and bool((sb[:, 1:] == sb[:, :-1]).any()):
        return _rbo_dense(a, b, wdepth).to(torch.float32)
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
