"""Stage ``rankings``: next-token rankings and rank-biased overlap (paper Eq. 6-7; docs/design.md §1.3 and §2).

Plain PyTorch version (the reference; the vectorised ``torch`` backend is ``mmx_fast/ops/rankings.py``)::

    logits = h.float() @ w_u.float().T                                   # [R, V]: R * V floats written
    ranks = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :k]
    rbo[t, c] = sum_d c_d * X_d(a[t], b[c])          # X_d: ids in both depth-d prefixes; [..., k, k] compares

It materialises the [R, V] logits (R * V * 4 bytes: 30 MB for R = 50, V = 151,936) and sorts them all.

``rankings_topk(h, w_u, k)``: the ``k`` vocabulary ids with the largest logits ``h @ W_U.T`` per row, best
first, ties toward the smaller vocabulary id -- exactly ``mmx_fast.reference.rankings.topk_ranking``. The [R, V]
logits never exist in memory:

* ``_topk_partial_kernel``: a program owns BLOCK_R rows and a contiguous range of vocabulary tiles. Per
  BLOCK_V tile it computes the logits with ``tl.dot`` (float32 accumulation), turns each logit into one int64
  whose order is the ranking order -- an order-preserving int32 key of the float32 value in the high 32 bits,
  ``2**31 - 1 - id`` in the low 32 bits, so that equal logits rank the smaller id first -- takes the tile's
  top K (K = next power of two >= k) with a bitonic network, and merges it into a running top K (bitonic merge
  of the sorted running list with the reversed tile list). With one vocabulary split (always under the
  interpreter) it writes the final ids directly.
* ``_topk_merge_kernel``: on CUDA the vocabulary is split over several programs per row block so that the
  whole GPU streams W_U; this kernel merges the [R, splits, K] packed candidates into the final ids.

The bitonic network here uses min/max reductions over size-2 axes of a hypercube view of the tile. It is the
textbook algorithm (sort runs of K with alternating direction, then repeatedly keep the elementwise max of a
rising and a falling run and re-merge). ``tl.topk``/``tl.sort`` implement the same network with an xor
reduction that Triton's interpreter executes element by element in Python (seconds per tile); min/max run
as vectorised numpy there and compile to the same shuffles on a GPU.

Memory traffic: W_U is read once per row block (cdiv(R, BLOCK_R) times; concurrent row blocks of one split
share it through L2), h once per vocabulary tile (L1/L2 resident), plus R * splits * K int64 candidates.

``rankings_rbo(a, b, weights)``: RBO of every pair (a[t], b[c]). For lists of depth k, an id at position i of
one list and j of the other enters both prefixes from depth max(i, j) + 1 on, so with X_d the depth-d overlap
and c_d the variant's weights (``mmx_fast.reference.rankings.rbo_weights``, passed in)::

    RBO = sum_d c_d X_d = sum_{(i, j): a_i == b_j} S[max(i, j)],   S[m] = sum_{d > m} c_d

i.e. the histogram of max(i, j) over matching pairs, its cumulative sum and the dot with c_d, folded into
one weighted count with the suffix sums S computed on the host in float64. A program owns one row of ``a``
and BLOCK_C rows of ``b``; it loops over the k positions j of ``b``, comparing b[:, j] against the whole
of a[t] in registers. Traffic: T * k + C * k ids per column block, and the T x C float32 output.
"""

from __future__ import annotations

import numbers

import torch
import triton
import triton.language as tl

from ._common import check_device, check_states_and_unembedding, is_interpreted, next_pow2

_MAX_K = 64


# ----------------------------------------------------------------------------------------------------------
# bitonic top-k on a [ROWS, 2**LOG_N] tile, along the last dim, viewed as a [ROWS, 2, 2, ..., 2] hypercube
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _indicator(ND: tl.constexpr, J: tl.constexpr):
    """0/1 along hypercube axis J (counted from the innermost) of an ND-dim tensor; size 1 elsewhere."""
    return tl.reshape(tl.arange(0, 2), [1] * (ND - J - 1) + [2] + [1] * J)


@triton.jit
def _compare_swap(h, flip, ND: tl.constexpr, J: tl.constexpr):
    """Compare-exchange the pairs along axis J: the left element gets the min and the right one the max,
    or the reverse where ``flip`` is 1."""
    lo = tl.min(h, axis=ND - 1 - J, keep_dims=True)
    hi = tl.max(h, axis=ND - 1 - J, keep_dims=True)
    return tl.where((_indicator(ND, J) ^ flip) != 0, hi, lo)


@triton.jit
def _bitonic_merge(h, STAGE: tl.constexpr, ORDER: tl.constexpr, ND: tl.constexpr):
    """Sort every bitonic run of 2**STAGE elements: ascending (ORDER 0), descending (1), or alternating
    from run to run (2)."""
    if ORDER == 2:
        flip = _indicator(ND, STAGE)
    else:
        flip = ORDER
    for s in tl.static_range(STAGE):
        h = _compare_swap(h, flip, ND, STAGE - 1 - s)
    return h


@triton.jit
def _topk_rows(x, ROWS: tl.constexpr, LOG_N: tl.constexpr, LOG_K: tl.constexpr, DESCENDING: tl.constexpr):
    """The 2**LOG_K largest values of each row of x [ROWS, 2**LOG_N], sorted (descending or ascending)."""
    h = tl.reshape(x, [ROWS] + [2] * LOG_N)
    for i in tl.static_range(1, LOG_K + 1):
        h = _bitonic_merge(h, i, 2 if i < LOG_N else DESCENDING, LOG_N + 1)
    for i in tl.static_range(LOG_K + 1, LOG_N + 1):
        # runs of 2**LOG_K alternate rising/falling: the elementwise max of a pair is the top of both, bitonic
        h = tl.max(h, axis=LOG_N - (i - LOG_K - 1) - LOG_K)
        h = _bitonic_merge(h, LOG_K, 2 if i < LOG_N else DESCENDING, LOG_N + 1 - (i - LOG_K))
    return tl.reshape(h, [ROWS, 2**LOG_K])


@triton.jit
def _merge_topk(best, cand, ROWS: tl.constexpr, LOG_K: tl.constexpr):
    """Top 2**LOG_K of the union of ``best`` (sorted descending) and ``cand`` (sorted ascending), descending."""
    h = tl.reshape(tl.maximum(best, cand), [ROWS] + [2] * LOG_K)
    h = _bitonic_merge(h, LOG_K, 1, LOG_K + 1)
    return tl.reshape(h, [ROWS, 2**LOG_K])


@triton.jit
def _store_ids(best, out_ptr, offs_r, r_mask, k, stride_or, stride_ok, K: tl.constexpr):
    """Unpack the vocabulary ids from the low 32 bits of the packed values and store the first k per row."""
    offs_k = tl.arange(0, K)
    # the low 32 bits hold 2**31 - 1 - id, which is < 2**31: truncation to int32 recovers it
    ids = (2147483647 - best.to(tl.int32)).to(tl.int64)
    ptrs = out_ptr + offs_r[:, None].to(tl.int64) * stride_or + offs_k[None, :] * stride_ok
    tl.store(ptrs, ids, mask=r_mask[:, None] & (offs_k[None, :] < k))


@triton.jit
def _topk_partial_kernel(
    h_ptr,
    w_ptr,
    cand_ptr,
    ids_ptr,
    R,
    V,
    D,
    k,
    tiles_per_split,
    stride_hr,
    stride_hd,
    stride_wv,
    stride_wd,
    stride_cr,
    stride_cs,
    stride_or,
    stride_ok,
    BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    K: tl.constexpr,
    LOG_V: tl.constexpr,
    LOG_K: tl.constexpr,
    LOWP_DOT: tl.constexpr,
    WRITE_IDS: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < R
    h_rows = h_ptr + offs_r.to(tl.int64) * stride_hr
    best = tl.full((BLOCK_R, K), -9223372036854775807 - 1, tl.int64)
    v_start = pid_s * tiles_per_split * BLOCK_V
    for t in range(tiles_per_split):
        offs_v = v_start + t * BLOCK_V + tl.arange(0, BLOCK_V)
        v_mask = offs_v < V
        w_rows = w_ptr + offs_v.to(tl.int64) * stride_wv
        acc = tl.zeros((BLOCK_R, BLOCK_V), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            d_mask = offs_d < D
            hh = tl.load(
                h_rows[:, None] + offs_d[None, :] * stride_hd,
                mask=r_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            ww = tl.load(
                w_rows[:, None] + offs_d[None, :] * stride_wd,
                mask=v_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            if LOWP_DOT:
                acc = tl.dot(hh, tl.trans(ww), acc)
            else:
                acc = tl.dot(hh.to(tl.float32), tl.trans(ww.to(tl.float32)), acc, input_precision="ieee")
        # -0.0 and +0.0 are equal logits: give them one key so the tie goes to the smaller id
        logits = tl.where(acc == 0.0, 0.0, acc)
        bits = logits.to(tl.int32, bitcast=True)
        key = bits ^ ((bits >> 31) & 2147483647)  # signed order of key == float order of the logit
        packed = (key.to(tl.int64) << 32) | (2147483647 - offs_v).to(tl.int64)
        packed = tl.where(v_mask[None, :], packed, -9223372036854775807 - 1)
        best = _merge_topk(best, _topk_rows(packed, BLOCK_R, LOG_V, LOG_K, 0), BLOCK_R, LOG_K)
    if WRITE_IDS:
        _store_ids(best, ids_ptr, offs_r, r_mask, k, stride_or, stride_ok, K)
    else:
        offs_k = tl.arange(0, K)
        ptrs = cand_ptr + offs_r[:, None].to(tl.int64) * stride_cr + pid_s * stride_cs + offs_k[None, :]
        tl.store(ptrs, best, mask=r_mask[:, None])


@triton.jit
def _topk_merge_kernel(
    cand_ptr,
    ids_ptr,
    R,
    S,
    k,
    stride_cr,
    stride_cs,
    stride_or,
    stride_ok,
    BLOCK_R: tl.constexpr,
    CHUNK_S: tl.constexpr,
    K: tl.constexpr,
    LOG_CK: tl.constexpr,
    LOG_K: tl.constexpr,
):
    pid_r = tl.program_id(0)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < R
    offs_j = tl.arange(0, CHUNK_S * K)  # (split, position) flattened
    best = tl.full((BLOCK_R, K), -9223372036854775807 - 1, tl.int64)
    for s0 in range(0, S, CHUNK_S):
        s = s0 + offs_j // K
        ptrs = (
            cand_ptr
            + offs_r[:, None].to(tl.int64) * stride_cr
            + s[None, :] * stride_cs
            + (offs_j % K)[None, :]
        )
        x = tl.load(ptrs, mask=r_mask[:, None] & (s < S)[None, :], other=-9223372036854775807 - 1)
        best = _merge_topk(best, _topk_rows(x, BLOCK_R, LOG_CK, LOG_K, 0), BLOCK_R, LOG_K)
    _store_ids(best, ids_ptr, offs_r, r_mask, k, stride_or, stride_ok, K)


# how @triton.jit built the kernels: the CPU interpreter or the GPU compiler
INTERPRETED = is_interpreted(_topk_partial_kernel)


def _check_device(device: torch.device) -> None:
    check_device(device, INTERPRETED)


def _log2(x: int) -> int:
    return int(x).bit_length() - 1


def _topk_config(r: int, v: int, d: int, kp: int, on_cuda: bool) -> dict:
    """One config (no autotune). BLOCK_V >= K so a tile's top K exists; every block a power of two >= 16."""
    if on_cuda:  # checked with ptxas for sm_90: BLOCK_R 64 spills registers, 32 does not
        block_r = min(32, max(16, next_pow2(r)))
        return dict(BLOCK_R=block_r, BLOCK_V=max(128, kp), BLOCK_D=64, num_warps=8)
    # interpreter: ~0.4 ms per program plus per-op numpy cost; few big tiles
    block_r = min(32, max(16, next_pow2(r)))
    return dict(BLOCK_R=block_r, BLOCK_V=max(256, kp), BLOCK_D=min(128, max(16, next_pow2(d))), num_warps=4)


def _num_splits(n_row_blocks: int, n_tiles: int, device: torch.device) -> int:
    """Vocabulary splits per row block on CUDA: enough programs to fill the GPU about twice."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_tiles, (2 * sms + n_row_blocks - 1) // n_row_blocks))


def rankings_topk(
    h: torch.Tensor, w_u: torch.Tensor, k: int, *, num_splits: int | None = None
) -> torch.Tensor:
    """Top-``k`` vocabulary ids of ``h @ w_u.T`` per row, best first, ties to the smaller id: LongTensor [R, k].

    h: [R, d]; w_u: [V, d] (float32/float16/bfloat16; logits accumulate in float32); 1 <= k <= min(64, V).
    ``num_splits``: how many programs share each row block's vocabulary (default: 1 under the interpreter,
    enough to fill the GPU on CUDA); with more than one, a second launch merges their candidates.
    NaN logits are not supported (their rank is unspecified).
    """
    check_states_and_unembedding("h", h, w_u, INTERPRETED)
    r, d = h.shape
    v = w_u.shape[0]
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= min(_MAX_K, v):
        raise ValueError(
            f"k={k!r} is not allowed; expected an integer with 1 <= k <= min({_MAX_K}, vocabulary size {v})"
        )
    if v >= 2**31:
        raise ValueError(f"vocabulary size {v} is not allowed; expected < 2**31")
    out = torch.empty((r, k), dtype=torch.int64, device=h.device)
    k = int(k)
    if r == 0:
        return out
    if d == 0:  # every logit is 0: ids 0..k-1
        return out.copy_(torch.arange(k, device=h.device).expand(r, k))
    on_cuda = h.device.type == "cuda" and not INTERPRETED
    kp = max(16, next_pow2(k))
    cfg = _topk_config(r, v, d, kp, on_cuda)
    block_r, block_v = cfg["BLOCK_R"], cfg["BLOCK_V"]
    n_rb = triton.cdiv(r, block_r)
    n_tiles = triton.cdiv(v, block_v)
    if num_splits is None:
        num_splits = _num_splits(n_rb, n_tiles, h.device) if on_cuda else 1
    if isinstance(num_splits, bool) or not isinstance(num_splits, numbers.Integral) or num_splits < 1:
        raise ValueError(f"num_splits={num_splits!r} is not allowed; expected a positive integer")
    tiles_per_split = triton.cdiv(n_tiles, min(int(num_splits), n_tiles))
    splits = triton.cdiv(n_tiles, tiles_per_split)
    lowp = on_cuda and h.dtype == w_u.dtype and h.dtype in (torch.float16, torch.bfloat16)
    cand = torch.empty((r, splits, kp), dtype=torch.int64, device=h.device) if splits > 1 else out
    _topk_partial_kernel[(n_rb, splits)](
        h,
        w_u,
        cand,
        out,
        r,
        v,
        d,
        k,
        tiles_per_split,
        h.stride(0),
        h.stride(1),
        w_u.stride(0),
        w_u.stride(1),
        cand.stride(0) if splits > 1 else 0,
        cand.stride(1) if splits > 1 else 0,
        out.stride(0),
        out.stride(1),
        BLOCK_R=block_r,
        BLOCK_V=block_v,
        BLOCK_D=cfg["BLOCK_D"],
        K=kp,
        LOG_V=_log2(block_v),
        LOG_K=_log2(kp),
        LOWP_DOT=lowp,
        WRITE_IDS=splits == 1,
        num_warps=cfg["num_warps"],
    )
    if splits > 1:
        # register budget: MERGE_R x CHUNK_S*K packed candidates per program
        merge_r = 16
        chunk_s = min(next_pow2(splits), max(1, (512 if on_cuda else 4096) // kp))
        _topk_merge_kernel[(triton.cdiv(r, merge_r),)](
            cand,
            out,
            r,
            splits,
            k,
            cand.stride(0),
            cand.stride(1),
            out.stride(0),
            out.stride(1),
            BLOCK_R=merge_r,
            CHUNK_S=chunk_s,
            K=kp,
            LOG_CK=_log2(chunk_s * kp),
            LOG_K=_log2(kp),
            num_warps=cfg["num_warps"],
        )
    return out


# ----------------------------------------------------------------------------------------------------------
# RBO of every pair of rankings
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _rankings_rbo_kernel(
    a_ptr,
    b_ptr,
    s_ptr,
    out_ptr,
    C,
    k,
    stride_at,
    stride_ak,
    stride_bc,
    stride_bk,
    stride_ot,
    stride_oc,
    BLOCK_C: tl.constexpr,
    KP: tl.constexpr,
):
    t = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_i = tl.arange(0, KP)
    i_mask = offs_i < k
    a_t = tl.load(a_ptr + t.to(tl.int64) * stride_at + offs_i * stride_ak, mask=i_mask, other=0)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    b_rows = b_ptr + offs_c.to(tl.int64) * stride_bc
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for j in range(k):
        b_j = tl.load(b_rows + j * stride_bk, mask=c_mask, other=0)
        # weight of a match between a[t, i] and b[c, j]: S[max(i, j)]
        s = tl.load(s_ptr + tl.maximum(offs_i, j), mask=i_mask, other=0.0)
        hit = (a_t[None, :] == b_j[:, None]) & i_mask[None, :]
        acc += tl.sum(tl.where(hit, s[None, :], 0.0), axis=1)
    tl.store(out_ptr + t.to(tl.int64) * stride_ot + offs_c * stride_oc, acc, mask=c_mask)


def rankings_rbo(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """RBO of every pair (a[t], b[c]) of rankings: float32 [T, C], in one launch.

    a: [T, k], b: [C, k] integer id lists, best first, 1 <= k <= 64; weights: the variant's c_d, [k]
    (``mmx_fast.reference.rankings.rbo_weights(k, p, variant)``). Equals
    ``reference.rankings.rbo(a[:, None], b[None], p, variant)``.
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(
                f"{name} must be a 2-D integer tensor [rows, k]; got {getattr(t, 'shape', type(t))}"
            )
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"{name}.dtype={t.dtype} is not allowed; expected integer vocabulary ids")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"rankings have different depths: a is {tuple(a.shape)} and b is {tuple(b.shape)}; expected equal k"
        )
    k = a.shape[1]
    if not 1 <= k <= _MAX_K:
        raise ValueError(f"ranking depth k={k} is not allowed; expected 1 <= k <= {_MAX_K}")
    if tuple(weights.shape) != (k,):
        raise ValueError(f"weights has shape {tuple(weights.shape)}; expected [k] = [{k}]")
    if a.device != b.device:
        raise ValueError(f"a is on {a.device} and b on {b.device}; expected one device")
    _check_device(a.device)
    weights = weights.to(torch.float64)
    suffix = torch.flip(torch.cumsum(torch.flip(weights, (0,)), 0), (0,)).to(torch.float32).to(a.device)
    a = a.to(torch.int64)
    b = b.to(torch.int64)
    t_rows, c_rows = a.shape[0], b.shape[0]
    out = torch.empty((t_rows, c_rows), dtype=torch.float32, device=a.device)
    if t_rows == 0 or c_rows == 0:
        return out
    on_cuda = a.device.type == "cuda" and not INTERPRETED
    kp = next_pow2(k)
    block_c = min(32 if on_cuda else 64, next_pow2(c_rows))
    grid = (t_rows, triton.cdiv(c_rows, block_c))
    _rankings_rbo_kernel[grid](
        a,
        b,
        suffix,
        out,
        c_rows,
        k,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        out.stride(0),
        out.stride(1),
        BLOCK_C=block_c,
        KP=kp,
        num_warps=4 if on_cuda else 1,
    )
    return out
