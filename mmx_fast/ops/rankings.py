"""Stage ``rankings`` (docs/design.md §1.3), the ``torch`` backend: streaming top-k rankings, the RBO of every
(target, context) pair vectorised over all rows, the base id k0 (``rankings_base_torch``), and the certified
bfloat16 pass that computes the rankings and k0 together (``rankings_certified_torch``, §5.1). Arguments are
checked once in :mod:`mmx_fast.ops`.

Numerics: the logits are computed tile by tile over the vocabulary with the same float32 matmul as the
reference, and ties are broken by an exact integer key, so the rankings equal the reference's. RBO sums
the depth weights in float64 and returns float32.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

# Vocabulary rows per tile of the streaming top-k: [R, VOCAB_TILE] float32 logits exist at a time, never
# [R, V]. On the development CPU (2 cores) float32 W_U ran at matmul speed for any tile from 1024 to 32768,
# and bfloat16 W_U (each tile upcast to float32 first) was fastest at 1024-4096 (the upcast tile stays in
# cache): 0.39 s vs 0.90 s at 16384 for V = 151,936, d = 1536, R = 70.
VOCAB_TILE = 4096

# Bound on the elements of one chunk in rankings_rbo_torch: the [C', U] position table / [C', T, k] lookups, or the
# [T', C, k, k] comparisons of the fallback for lists with repeated ids.
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


# --------------------------------------------------------------------------------------------------
# Certified mixed-precision rankings (docs/design.md §1.3, "certified-bf16"; derivation in §5)
# --------------------------------------------------------------------------------------------------

# bfloat16 unit roundoff (8-bit significand, round to nearest) and float32's.
_U_BF16 = 2.0**-8
_U_F32 = 2.0**-24
# Elements of one [R, tile] bfloat16 logits tile of the candidate pass (tile >= BF16_MIN_TILE vocabulary rows).
# torch.topk has a high per-call cost at small tiles: on the development CPU (R = 70, V = 151,936) tiles of
# 4096 rows spent as long in topk as in the GEMM, full-width tiles 6% of it.
BF16_TILE_ELEMS = 1 << 23
BF16_MIN_TILE = 16384
# The re-scoring GEMM runs per group of 16-31 rows on the union of the group's candidates (cost ~ R * 16 m d,
# not R * R m d). Its values must be the reference's bit for bit: on the development CPU GEMMs of 1-3 rows
# (a GEMV, small-M kernels) summed in another order, GEMMs of >= 4 rows gave the full GEMM's values.
_GROUP_MIN = 16
# Second tier: rows the first candidate_count(k) candidates cannot certify retry with _TIER2 times as many
# (kept by the same bfloat16 pass) before the exact pass.
_TIER2 = 4
# Below this many vocabulary rows per candidate the bfloat16 pass cannot pay off: the exact pass runs.
_MIN_VOCAB_PER_CANDIDATE = 4

# Counters of the certified pass since import (or the last reset_certify_stats()): calls, ranking rows,
# rows that fell back to the exact float32 pass, base-id searches and their fallbacks, rows that ran exact
# because the vocabulary was too small for the bf16 pass (or the probe failed), rows that needed the second
# candidate tier (certified there or fallen back), rows ranked from generation's scores and the ones of
# those that could not be certified there (they join the pass over W_U), rows ranked from the native
# float32 candidate pass and the ones of those re-run exactly.
CERTIFY_STATS: dict[str, int] = {
    "calls": 0,
    "rows": 0,
    "fallback_rows": 0,
    "base_calls": 0,
    "base_fallbacks": 0,
    "exact_rows": 0,
    "tier2_rows": 0,
    "score_rows": 0,
    "score_fallback_rows": 0,
    "candidate_rows": 0,
    "candidate_fallback_rows": 0,
}


def reset_certify_stats() -> dict[str, int]:
    """Zero :data:`CERTIFY_STATS` and return the values it had."""
    old = dict(CERTIFY_STATS)
    for key in CERTIFY_STATS:
        CERTIFY_STATS[key] = 0
    return old


def candidate_count(k: int, v: int) -> int:
    """Candidates kept per row by the bfloat16 pass for a top-``k``: k + margin, margin = k + 32."""
    return min(v, 2 * k + 32)


class _Unembedding:
    """A bfloat16 copy of W_U (W_U itself when it is bfloat16) and the row norms the bound needs, rounded
    up: ``max_n1 = max_j ||bf16(w_j)||``, ``max_n2 = max_j ||bf16(w_j) - w_j||`` (0 for a bfloat16 W_U)."""

    def __init__(self, w_u: torch.Tensor, chunk: int = 8192) -> None:
        w = w_u.detach()
        self.wb = w if w.dtype == torch.bfloat16 else w.to(torch.bfloat16)
        v, d = w.shape
        # Row norms in float32: a sum of d squares has relative error <= gamma_d (~d 2^-24), its square
        # root half that plus one rounding; the factor 1 + d 2^-22 covers both. wb - w is exact in float32
        # (a rounding error of float32 -> bfloat16 is representable).
        up = 1 + d * 2.0**-22
        n1 = n2 = 0.0
        finite = True
        for s in range(0, v, chunk):
            wb32 = self.wb[s : s + chunk].to(torch.float32)
            n1 = max(n1, float(torch.linalg.vector_norm(wb32, dim=1).max()) if wb32.numel() else 0.0)
            finite = finite and bool(torch.isfinite(wb32).all())
            if w.dtype != torch.bfloat16:
                w32 = w[s : s + chunk].to(torch.float32)
                finite = finite and bool(torch.isfinite(w32).all())
                n2 = max(n2, float(torch.linalg.vector_norm(wb32 - w32, dim=1).max()) if w32.numel() else 0.0)
        self.max_n1, self.max_n2 = n1 * up, n2 * up
        self.finite = finite and math.isfinite(self.max_n1) and math.isfinite(self.max_n2)


_UNEMBEDDING_CACHE: dict[int, tuple] = {}
_WARNED: set[str] = set()


def _unembedding(w_u: torch.Tensor) -> _Unembedding:
    """The cached :class:`_Unembedding` of ``w_u``: built once per tensor (and again when it is modified
    in place: the key holds its version counter). A float32 W_U keeps a bfloat16 copy (half its size)
    alive as long as the tensor lives."""
    import weakref

    key = (w_u.data_ptr(), tuple(w_u.shape), tuple(w_u.stride()), w_u.dtype, str(w_u.device), w_u._version)
    hit = _UNEMBEDDING_CACHE.get(id(w_u))
    if hit is not None and hit[0]() is w_u and hit[1] == key:
        return hit[2]
    entry = _Unembedding(w_u)
    _UNEMBEDDING_CACHE.clear()  # one W_U at a time (a model's): never a growing cache
    wid = id(w_u)

    def _drop(_ref, wid=wid):  # W_U freed: free its bfloat16 copy too
        hit = _UNEMBEDDING_CACHE.get(wid)
        if hit is not None and hit[0] is _ref:
            del _UNEMBEDDING_CACHE[wid]

    _UNEMBEDDING_CACHE[wid] = (weakref.ref(w_u, _drop), key, entry)
    return entry


_ACCUMULATION_PROBE: dict[tuple[int, str], bool] = {}


def _accumulates_in_float32(d: int, device: torch.device) -> bool:
    """A guard on the bound's one assumption about the bfloat16 GEMM (docs/design.md §5): it sums in float32.
    Row 0 of the probe is [1, 2^-9, ..., 2^-9] against all-ones columns: a float32 sum of d terms is
    1 + (d - 1) 2^-9 (then rounded to bfloat16 once), a bfloat16 running sum stays 1 (2^-9 is below half
    an ulp of 1). Cached per (d, device)."""
    key = (d, str(device))
    if key not in _ACCUMULATION_PROBE:
        if d < 2:
            _ACCUMULATION_PROBE[key] = True
        else:
            x = torch.full((2, d), 2.0**-9, dtype=torch.bfloat16, device=device)
            x[:, 0] = 1
            w = torch.ones((64, d), dtype=torch.bfloat16, device=device)
            got = (x @ w.T).float()
            # lm_head's call shape too ([B, 1, d] through F.linear), whose logits stage B may rank from
            got_linear = torch.nn.functional.linear(x[:, None], w)[:, 0].float()
            want = torch.tensor(1 + (d - 1) * 2.0**-9).to(torch.bfloat16).float()
            _ACCUMULATION_PROBE[key] = bool((got == want).all()) and bool((got_linear == want).all())
    return _ACCUMULATION_PROBE[key]


def _bound_terms(x32: torch.Tensor, xb: torch.Tensor, cache: _Unembedding) -> torch.Tensor:
    """Per row of ``x32`` (float32 [R, d]; ``xb`` its bfloat16 rounding): ``(A, c)`` as float64 [R, 2] such
    that for every vocab id j the reference's float32 score f_j = fl32(x . w_j) and the bfloat16 pass's
    score b_j satisfy |f_j - b_j| <= A + c |b_j| (docs/design.md §5)."""
    d = x32.shape[1]
    g32 = d * _U_F32 / (1 - d * _U_F32)  # gamma_d of float32 (any summation order, FMA or not)
    x64 = x32.to(torch.float64)
    xb64 = xb.to(torch.float64)
    nx = x64.norm(dim=1)
    nxb = xb64.norm(dim=1)
    nd = (xb64 - x64).norm(dim=1)
    n1, n2 = cache.max_n1, cache.max_n2
    tiny = 2.0**-120 * (2 * d + d**0.5 * (nxb + nx + 2 * n1 + n2))  # flush-to-zero / underflow, generously
    a = (
        nd * n1  # rounding x to bfloat16: |(xb - x) . wb_j| <= ||xb - x|| ||wb_j||
        + nx * n2  # rounding W_U to bfloat16: |x . (wb_j - w_j)| <= ||x|| ||wb_j - w_j||
        + 2 * g32 * nxb * n1  # the bf16 GEMM's float32 accumulation (twice gamma_d, for safety)
        + g32 * nx * (n1 + n2)  # the reference's own float32 rounding
        + tiny
    )
    c = torch.full_like(a, _U_BF16 / (1 - _U_BF16))  # the bf16 GEMM rounds its float32 sum to bfloat16
    return torch.stack([a, c], 1)


def _select(rows_b: torch.Tensor, wb: torch.Tensor, keep: int, tile: int):
    """The ``keep`` largest bfloat16 scores of each row of ``rows_b`` over W_U (``wb``), best first:
    (float32 values, int64 ids), [n, keep]."""
    n, v = rows_b.shape[0], wb.shape[0]
    top_v = torch.empty((n, 0), dtype=torch.float32, device=rows_b.device)
    top_i = torch.empty((n, 0), dtype=torch.int64, device=rows_b.device)
    for start in range(0, v, tile):
        lg = rows_b @ wb[start : start + tile].T
        tv, ti = torch.topk(lg, min(keep, lg.shape[1]), dim=1, sorted=False)
        top_v = torch.cat([top_v, tv.float()], 1)
        top_i = torch.cat([top_i, ti + start], 1)
        if top_v.shape[1] > keep:
            top_v, sel = torch.topk(top_v, keep, dim=1, sorted=False)
            top_i = top_i.gather(1, sel)
    order = torch.sort(top_v, dim=1, descending=True, stable=True).indices
    return top_v.gather(1, order), top_i.gather(1, order)


def _pad_rows(rows: torch.Tensor, r: int) -> torch.Tensor:
    """``rows`` followed by other row indices up to min(r, _GROUP_MIN) in all (GEMMs of fewer rows sum in
    another order than the reference's, see _GROUP_MIN); callers keep the first ``rows.numel()`` results."""
    want = min(r, _GROUP_MIN)
    if rows.numel() >= want:
        return rows
    rest = torch.ones(r, dtype=torch.bool, device=rows.device)
    rest[rows] = False
    return torch.cat([rows, rest.nonzero().flatten()[: want - rows.numel()]])


def _exact_rows(
    exact: Callable, h: torch.Tensor, w_u: torch.Tensor, k: int, rows: torch.Tensor
) -> torch.Tensor:
    """The exact pass on the rows ``rows`` of h, run on at least min(R, _GROUP_MIN) rows (filler rows are
    discarded) so that the GEMM has the reference's summation order (one row would be a GEMV)."""
    return exact(h[_pad_rows(rows, h.shape[0])], w_u, k)[: rows.numel()]


def _rescore_topk(h32: torch.Tensor, w_u: torch.Tensor, cand: torch.Tensor, k: int):
    """Exact top-``k`` keys of each row over the union of its group's candidate ids (float32 GEMM, bitwise
    the reference's values): returns ([R, k] keys, [R] k-th value as float64)."""
    r = h32.shape[0]
    n = max(1, r // _GROUP_MIN)  # groups of _GROUP_MIN to 2 _GROUP_MIN - 1 rows (all rows when fewer)
    bounds = [r * i // n for i in range(n + 1)]
    groups = list(zip(bounds[:-1], bounds[1:]))
    keys = torch.empty((r, k), dtype=torch.int64, device=h32.device)
    for a, b in groups:
        ids = torch.unique(cand[a:b])  # sorted ascending
        logits = h32[a:b] @ w_u.index_select(0, ids).to(torch.float32).T
        kk = _order_key(logits, ids.expand(b - a, ids.numel()))
        keys[a:b] = torch.topk(kk, k, dim=1, sorted=True).values
    kth_bits = (keys[:, -1] >> 32).to(torch.int32)
    kth_bits = torch.where(kth_bits < 0, kth_bits ^ 0x7FFFFFFF, kth_bits)
    return keys, kth_bits.view(torch.float32).to(torch.float64)


def rankings_certified_torch(
    h: torch.Tensor,
    w_u: torch.Tensor,
    k: int,
    base: torch.Tensor | None = None,
    exact: Callable | None = None,
    tile: int | None = None,
):
    """Certified mixed-precision rankings (docs/design.md §1.3, §5): ``(ranks [R, k] int64, base_id)``,
    both equal to the float32 reference's (:func:`rankings_topk_torch` / ``reference.rankings.base_vocab_id``).

    One pass over a bfloat16 W_U computes bfloat16 scores of every row of ``h`` (and of ``base``, the sum
    of the visual states, whose argmin is k0) and keeps the best ``candidate_count(k, V)`` ids per row (the
    smallest for ``base``). The candidates are re-scored with the reference's float32 GEMM; a row is
    certified when its k-th float32 score (ties to the smaller id) strictly exceeds a rigorous upper bound
    on every non-candidate's float32 score (its bfloat16 score plus the rounding-error bound of
    :func:`_bound_terms`); otherwise that row runs the exact float32 pass ``exact`` (counted in
    :data:`CERTIFY_STATS`). ``base_id`` is None when ``base`` is None.

    Long: one pass whose running state (candidates, bounds, fallback rows) every step shares; split, the
    steps would pass a dozen tensors between them.
    """
    exact = exact or rankings_topk_torch
    r, v = h.shape[0], w_u.shape[0]
    m = candidate_count(k, v)
    small = v < _MIN_VOCAB_PER_CANDIDATE * (m + 1)
    if not small and not _accumulates_in_float32(h.shape[1], h.device):
        if "probe" not in _WARNED:
            _WARNED.add("probe")
            warnings.warn(
                "this torch's bfloat16 matmul does not accumulate in float32: certified rankings run the "
                "exact float32 pass",
                RuntimeWarning,
                stacklevel=2,
            )
        small = True
    CERTIFY_STATS["calls"] += 1
    CERTIFY_STATS["rows"] += r
    if base is not None:
        CERTIFY_STATS["base_calls"] += 1
    if small:  # too few vocabulary rows for the bf16 pass to pay off: exact
        CERTIFY_STATS["exact_rows"] += r
        ranks = exact(h, w_u, k) if r else torch.empty((0, k), dtype=torch.int64, device=h.device)
        return ranks, (base_id_exact(base, w_u) if base is not None else None)

    cache = _unembedding(w_u)
    h32 = h.detach().to(torch.float32)
    rows32 = h32 if base is None else torch.cat([h32, base.detach().to(torch.float32).reshape(1, -1)])
    rows_b = rows32.to(torch.bfloat16)
    nb = 1 if base is not None else 0
    # the candidate pass: running top-(m + 1) per ranking row, bottom-(m + 1) for the base row
    top_v = torch.empty((r, 0), dtype=torch.float32, device=h.device)
    top_i = torch.empty((r, 0), dtype=torch.int64, device=h.device)
    bot_v = torch.empty((nb, 0), dtype=torch.float32, device=h.device)
    bot_i = torch.empty((nb, 0), dtype=torch.int64, device=h.device)
    m2 = min(v, _TIER2 * m)  # second tier: the rows the first m candidates cannot certify try m2
    keep = min(m + 1, v)
    if tile is None:
        tile = max(BF16_MIN_TILE, BF16_TILE_ELEMS // max(1, rows_b.shape[0]))
    for start in range(0, v, tile):
        lg = rows_b @ cache.wb[start : start + tile].T  # [R + nb, n] bfloat16, float32 accumulation
        n = lg.shape[1]
        if r:
            tv, ti = torch.topk(lg[:r], min(keep, n), dim=1, sorted=False)
            top_v = torch.cat([top_v, tv.float()], 1)
            top_i = torch.cat([top_i, ti + start], 1)
            if top_v.shape[1] > keep:
                top_v, sel = torch.topk(top_v, keep, dim=1, sorted=False)
                top_i = top_i.gather(1, sel)
        if nb:
            bv, bi = torch.topk(lg[r:], min(keep, n), dim=1, largest=False, sorted=False)
            bot_v = torch.cat([bot_v, bv.float()], 1)
            bot_i = torch.cat([bot_i, bi + start], 1)
            if bot_v.shape[1] > keep:
                bot_v, sel = torch.topk(bot_v, keep, dim=1, largest=False, sorted=False)
                bot_i = bot_i.gather(1, sel)
    terms = _bound_terms(rows32, rows_b, cache)
    finite_rows = torch.isfinite(rows32).all(1) & torch.tensor(cache.finite, device=h.device)

    ranks = torch.empty((0, k), dtype=torch.int64, device=h.device)
    if r:
        order = torch.sort(top_v, dim=1, descending=True, stable=True).indices
        top_v, top_i = top_v.gather(1, order), top_i.gather(1, order)
        usable = finite_rows[:r] & torch.isfinite(top_v).all(1)  # an overflowing bf16 score proves nothing
        a, c = terms[:r, 0], terms[:r, 1]
        ranks = torch.empty((r, k), dtype=torch.int64, device=h.device)
        todo = torch.arange(r, device=h.device)
        for tier, mt in enumerate((m, m2) if m2 > m else (m,)):
            if not todo.numel():
                break
            sel = _pad_rows(todo, r)  # the re-scoring GEMM needs >= min(R, _GROUP_MIN) rows
            kept = keep
            if tier:  # the rows still open: a second bfloat16 pass over W_U keeping m2 + 1 ids per row
                CERTIFY_STATS["tier2_rows"] += int(todo.numel())
                kept = min(m2 + 1, v)
                tv, ti = _select(rows_b[sel], cache.wb, kept, tile)
                cand_v, cand_i = tv, ti
                usable_t = usable[todo] & torch.isfinite(tv[: todo.numel()]).all(1)
            else:
                cand_v, cand_i = top_v[sel], top_i[sel]
                usable_t = usable[todo]
            keys, kth = _rescore_topk(h32[sel], w_u, cand_i[:, :mt], k)
            keys, kth = keys[: todo.numel()], kth[: todo.numel()]
            ok = usable_t & torch.isfinite(kth)
            if kept > mt:  # ids beyond the mt candidates: bound them by the (mt+1)-th bf16 score
                b = cand_v[: todo.numel(), mt].to(torch.float64)
                ub = b + c[todo] * b.abs() + a[todo]
                ub = ub + ub.abs() * 2.0**-40 + 2.0**-1000  # float64 evaluation error of ub, rounded up
                ok &= ub < kth
            ranks[todo[ok]] = _key_to_id(keys[ok])
            todo = todo[~ok]
        if todo.numel():
            CERTIFY_STATS["fallback_rows"] += int(todo.numel())
            ranks[todo] = _exact_rows(exact, h, w_u, k, todo)

    base_id = None
    if nb:
        order = torch.sort(bot_v[0], stable=True).indices
        bv, bi = bot_v[0][order], bot_i[0][order]
        s32 = rows32[r]
        usable = bool(finite_rows[r]) and bool(torch.isfinite(bv).all())
        a, c = float(terms[r, 0]), float(terms[r, 1])
        cand0 = torch.sort(bi[:m]).values  # ascending ids: argmin's first minimum is the smallest id
        vals = w_u.index_select(0, cand0).to(torch.float32) @ s32  # the reference's GEMV, on candidates
        j = int(torch.argmin(vals))
        best = float(vals[j])
        certified = usable and math.isfinite(best)
        if certified and keep > m:
            b = float(bv[m])
            lb = b - c * abs(b) - a
            lb = lb - abs(lb) * 2.0**-40 - 2.0**-1000
            certified = best < lb
        if certified:
            base_id = int(cand0[j])
        if base_id is None:
            CERTIFY_STATS["base_fallbacks"] += 1
            base_id = base_id_exact(base, w_u)
    return ranks, base_id


def base_id_exact(s: torch.Tensor, w_u: torch.Tensor, chunk: int = 16384) -> int:
    """k0 = argmin_k [W_U s]_k by the reference's float32 GEMV, a chunk of W_U rows at a time (a bfloat16
    W_U is never upcast whole). Ties go to the smaller id, as ``torch.argmin``. s: the sum of the scale-1.0
    visual states (``rankings_base_torch``); the certified pass calls it on rows it cannot certify."""
    s = s.detach().to(torch.float32).reshape(-1)
    best_val, best_id = None, 0
    for start in range(0, w_u.shape[0], chunk):
        vals = w_u[start : start + chunk].to(torch.float32) @ s
        i = int(torch.argmin(vals))
        val = vals[i]
        if best_val is None or val < best_val or (val != val and best_val == best_val):
            best_val, best_id = val, start + i
    return best_id


# --------------------------------------------------------------------------------------------------
# Rankings from generation's scores (docs/design.md §1.3, "scores from generation")
# --------------------------------------------------------------------------------------------------


def score_keep(k: int, v: int) -> int:
    """Logits kept per generated position for top-``k`` rankings: both candidate tiers plus the one after."""
    return min(v, _TIER2 * candidate_count(k, v) + 1)


def score_bound_terms(x: torch.Tensor, logits_dtype: torch.dtype, nw: float) -> torch.Tensor | None:
    """Per row of ``x`` (the states lm_head read, [n, d] in the model's dtype): ``(A, c)`` as float64 [n, 2]
    with |f_j - g_j| <= A + c |g_j| for every id j, f_j the reference's float32 score fl32(x . w_j) and g_j
    the logit lm_head computed during generation (docs/design.md §5). Both are sums of the same d products
    (exact in float32 for bfloat16 operands), each within gamma_d ||x|| ||w_j|| of the exact dot product
    whatever the summation order; a bfloat16 lm_head then rounds its float32 sum once (c). None when the
    bound's assumptions cannot be vouched for: float32 matmuls allowed to run in lower precision
    (``torch.set_float32_matmul_precision``), a bfloat16 GEMM that does not accumulate in float32 (the
    probe), any other logits dtype. ``nw``: max_j ||w_j|| rounded up (:func:`_max_row_norm`)."""
    d = x.shape[1]
    if logits_dtype == torch.float32:
        if x.dtype != torch.float32 or torch.get_float32_matmul_precision() != "highest":
            return None
        c = 0.0
    elif logits_dtype == torch.bfloat16:
        if x.dtype != torch.bfloat16 or not _accumulates_in_float32(d, x.device):
            return None
        c = _U_BF16 / (1 - _U_BF16)
    else:
        return None
    g32 = d * _U_F32 / (1 - d * _U_F32)
    nx = x.to(torch.float64).norm(dim=1)
    if not math.isfinite(nw):
        return None
    tiny = 2.0**-120 * (2 * d + d**0.5 * (2 * nx + 2 * nw))  # flush-to-zero / underflow, generously
    a = 2 * g32 * nx * nw + tiny
    return torch.stack([a, torch.full_like(a, c)], 1)


def rankings_scored_torch(
    h: torch.Tensor,
    w_u: torch.Tensor,
    k: int,
    rows: torch.Tensor,
    values: torch.Tensor,
    ids: torch.Tensor,
    logits_dtype: torch.dtype,
    counter: str = "score",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` rankings of the rows ``rows`` of ``h`` from the logits generation already computed for them
    (``values`` / ``ids``: each row's best logits, descending, [n, keep]): ``(ranks [n, k], ok [n] bool)``.

    The certified pass's second half with generation's logits as the candidate scores: the best
    candidate_count(k) ids (then _TIER2 times as many) are re-scored with the reference's float32 GEMM, and a
    row is certified when its k-th float32 score strictly exceeds the upper bound of every id not kept
    (:func:`score_bound_terms` applied to the next kept logit). Certified rows equal the float32 reference's
    rankings; the others (``ok`` False, their ``ranks`` undefined) must run the pass over W_U."""
    n, v = rows.numel(), w_u.shape[0]
    ok_all = torch.zeros(n, dtype=torch.bool, device=h.device)
    ranks = torch.empty((n, k), dtype=torch.int64, device=h.device)
    CERTIFY_STATS[f"{counter}_rows"] += n
    keep = values.shape[1]
    terms = None if not n else score_bound_terms(h[rows], logits_dtype, _max_row_norm(w_u))
    if terms is None or h.device.type != "cpu" or keep < min(v, k):
        CERTIFY_STATS[f"{counter}_fallback_rows"] += n
        return ranks, ok_all
    m = candidate_count(k, v)
    tiers = [keep] if keep >= v else sorted({t for t in (m, min(_TIER2 * m, keep - 1)) if k <= t < keep})
    h32 = h.detach().to(torch.float32)
    usable = torch.isfinite(values).all(1) & torch.isfinite(h32[rows]).all(1)
    a, c = terms[:, 0], terms[:, 1]
    todo = torch.arange(n, device=h.device)
    for mt in tiers:
        if not todo.numel():
            break
        sel = _pad_rows(rows[todo], h.shape[0])  # the re-scoring GEMM needs >= min(R, _GROUP_MIN) rows
        cand = ids[todo, :mt]
        cand = torch.cat([cand, cand[:1].expand(sel.numel() - todo.numel(), mt)])  # fillers: any ids
        keys, kth = _rescore_topk(h32[sel], w_u, cand, k)
        keys, kth = keys[: todo.numel()], kth[: todo.numel()]
        ok = usable[todo] & torch.isfinite(kth)
        if mt < v:  # ids beyond the mt candidates: bound them by the (mt + 1)-th logit
            b = values[todo, mt].to(torch.float64)
            ub = b + c[todo] * b.abs() + a[todo]
            ub = ub + ub.abs() * 2.0**-40 + 2.0**-1000  # float64 evaluation error of ub, rounded up
            ok &= ub < kth
        ranks[todo[ok]] = _key_to_id(keys[ok])
        ok_all[todo[ok]] = True
        todo = todo[~ok]
    CERTIFY_STATS[f"{counter}_fallback_rows"] += int(todo.numel())
    return ranks, ok_all


# --------------------------------------------------------------------------------------------------
# The base id k0 folded into the exact float32 pass (docs/design.md §1.3, "k0 in the one pass")
# --------------------------------------------------------------------------------------------------

_NORM_CACHE: dict[int, tuple] = {}


def _max_row_norm(w_u: torch.Tensor, chunk: int = 8192) -> float:
    """max_j ||w_j|| of W_U in float32, rounded up (a sum of d squares and a root: factor 1 + d 2^-22),
    cached per tensor (and its version counter, as :func:`_unembedding`); inf when W_U is not finite."""
    import weakref

    key = (w_u.data_ptr(), tuple(w_u.shape), w_u.dtype, str(w_u.device), w_u._version)
    hit = _NORM_CACHE.get(id(w_u))
    if hit is not None and hit[0]() is w_u and hit[1] == key:
        return hit[2]
    v, d = w_u.shape
    n = 0.0
    for s in range(0, v, chunk):
        part = w_u[s : s + chunk].detach().to(torch.float32)
        if part.numel():
            n = max(n, float(torch.linalg.vector_norm(part, dim=1).max()))
    n = n * (1 + d * 2.0**-22) if math.isfinite(n) else math.inf
    _NORM_CACHE.clear()
    _NORM_CACHE[id(w_u)] = (weakref.ref(w_u), key, n)
    return n


# the folded pass needs the ranking GEMM to have at least this many rows before the base row joins it (GEMMs
# of >= 4 rows sum in the full GEMM's order, see _GROUP_MIN), so the rows' rankings are unchanged
_FOLD_MIN_ROWS = 4


def rankings_topk_base_folded(
    h: torch.Tensor, w_u: torch.Tensor, k: int, s: torch.Tensor, exact: Callable
) -> tuple[torch.Tensor, int]:
    """``(exact(h, w_u, k), k0)`` from ONE exact float32 pass over W_U (the float32 twin of the certified
    pass's base row): the row ``-s`` rides along with ``h``, so the pass also yields the ``k`` ids with the
    smallest float32 scores ``w_j . s``. Those candidates are re-scored with the reference's GEMV (as
    :func:`base_id_exact`), and the smallest is k0 when it is strictly below every non-candidate's lower bound:
    the GEMM's and the GEMV's scores of an id differ by at most E = 2 gamma_d ||s|| max_j ||w_j||, so every
    non-candidate scores >= max over candidates - 2E. Otherwise (near-ties, non-finite values, fewer than
    ``_FOLD_MIN_ROWS`` rows) k0 comes from the separate GEMV pass (counted in ``base_fallbacks``)."""
    r = h.shape[0]
    s32 = s.detach().to(torch.float32).reshape(-1)
    CERTIFY_STATS["base_calls"] += 1
    if r < _FOLD_MIN_ROWS or torch.get_float32_matmul_precision() != "highest":
        CERTIFY_STATS["base_fallbacks"] += 1
        return exact(h, w_u, k), base_id_exact(s32, w_u)
    ranks = exact(torch.cat([h.detach().to(torch.float32), -s32[None]]), w_u, k)
    cand = torch.sort(ranks[r]).values  # ascending ids: argmin's first minimum is the smallest id
    vals = w_u.index_select(0, cand).to(torch.float32) @ s32  # the reference's GEMV, on candidates
    d = w_u.shape[1]
    g32 = d * _U_F32 / (1 - d * _U_F32)
    ns = float(s32.to(torch.float64).norm())
    e = 2 * g32 * ns * _max_row_norm(w_u) + 2.0**-120 * (2 * d + d**0.5 * 2 * ns)
    j = int(torch.argmin(vals))
    best, worst = float(vals[j]), float(vals.max())
    lb = worst - 2 * e
    lb = lb - abs(lb) * 2.0**-40 - 2.0**-1000  # float64 evaluation error, rounded down
    if math.isfinite(best) and math.isfinite(lb) and bool(torch.isfinite(vals).all()) and best < lb:
        return ranks[:r], int(cand[j])
    CERTIFY_STATS["base_fallbacks"] += 1
    return ranks[:r], base_id_exact(s32, w_u)


def rankings_certified_f32(
    h: torch.Tensor, w_u: torch.Tensor, k: int, s: torch.Tensor, exact: Callable, candidates: Callable | None
) -> tuple[torch.Tensor, int]:
    """``(exact(h, w_u, k), k0)`` from one float32 candidate pass (docs/design.md §1.3, §5): ``candidates``
    (the native op ``rankings_candidates``: our own AVX2 dot products, no [R, V] buffer) scores every row of
    ``h`` and the base row ``-s`` over W_U in another summation order than the reference's GEMM; each row's
    best candidate_count(k) ids are re-scored with the reference's GEMM and certified with the float32 bound
    (:func:`rankings_scored_torch`), k0 as in :func:`rankings_topk_base_folded`. Rows it cannot certify run
    ``exact``. Without ``candidates`` (or for a small vocabulary): :func:`rankings_topk_base_folded`."""
    r, v = h.shape[0], w_u.shape[0]
    m = candidate_count(k, v)
    if candidates is None or r == 0 or v < _MIN_VOCAB_PER_CANDIDATE * (m + 1):
        return rankings_topk_base_folded(h, w_u, k, s, exact)
    keep = m + 1
    h32 = h.detach().to(torch.float32)
    s32 = s.detach().to(torch.float32).reshape(-1)
    vals, ids = candidates(torch.cat([h32, -s32[None]]), w_u, keep)
    ranks, ok = rankings_scored_torch(
        h32, w_u, k, torch.arange(r, device=h.device), vals[:r], ids[:r], torch.float32, "candidate"
    )
    rest = (~ok).nonzero().flatten()
    if rest.numel():
        ranks[rest] = _exact_rows(exact, h, w_u, k, rest)
    # k0: the base row's candidates are the ids with the smallest scores w_j . s (row -s, largest first)
    CERTIFY_STATS["base_calls"] += 1
    cand = torch.sort(ids[r, :m]).values  # ascending ids: argmin's first minimum is the smallest id
    fv = w_u.index_select(0, cand).to(torch.float32) @ s32  # the reference's GEMV, on candidates
    d = w_u.shape[1]
    g32 = d * _U_F32 / (1 - d * _U_F32)
    ns = float(s32.to(torch.float64).norm())
    e = 2 * g32 * ns * _max_row_norm(w_u) + 2.0**-120 * (2 * d + d**0.5 * 2 * ns)
    j = int(torch.argmin(fv))
    best = float(fv[j])
    lb = -float(vals[r, m]) - e  # every non-candidate's reference score is >= this
    lb = lb - abs(lb) * 2.0**-40 - 2.0**-1000
    finite = bool(torch.isfinite(fv).all()) and bool(torch.isfinite(vals[r]).all())
    if finite and math.isfinite(lb) and best < lb and torch.get_float32_matmul_precision() == "highest":
        return ranks, int(cand[j])
    CERTIFY_STATS["base_fallbacks"] += 1
    return ranks, base_id_exact(s32, w_u)


def rankings_base_torch(z: torch.Tensor, w_u: torch.Tensor, chunk: int = 16384) -> int:
    """The base id k0 of stage ``rankings`` (docs/design.md §1.3): ``argmin_k sum_i [W_U z_i]_k`` over the
    scale-1.0 visual states z [N, d], as ``reference.rankings.base_vocab_id`` computes it (the float32 sum of
    z, then one float32 GEMV, streamed over ``chunk`` rows of W_U). Ties go to the smaller id."""
    return base_id_exact(z.detach().to(torch.float32).sum(0), w_u, chunk)
