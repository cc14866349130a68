"""Stage ``refine``: ARC refinement of every target map at once (paper Eq. 8-9, TAM's filter; docs/design.md
§1.3, §1.4, §2).

For targets t with maps ``a_t`` [T, H, W], context maps ``ctx`` [C, H, W] and weights ``w`` [T, C]::

    ahat_t = sum_c w[t, c] ctx[c] / sum_c w[t, c]          (0 where sum_c w[t, c] <= 0)
    beta_t = <a_t, ahat_t> / <ahat_t, ahat_t>              (0 where the denominator is 0)
    r_t    = relu(a_t - beta_t ahat_t)
    out_t  = G(r_t) / max G(r_t)                           (G: rank Gaussian filter, optional; 0 / 0 -> 0)

equal to ``mmx_fast.reference.refine.refine_one`` per target. G is TAM's 3x3 rank Gaussian filter as in
``mmx_fast.reference.refine.rank_gaussian_filter``: reflect padding (numpy ``mode='reflect'``, edge not
repeated, a size-1 dim repeats), the 9 window values sorted (a 25-comparator sorting network in registers),
mean and population std; mean <= 0 gives 0; sigma = std / mean, weights exp(-r^2 / (2 sigma^2)) over rank
offsets r = -4..4, normalised; where 2 sigma^2 is 0 (a constant window, or underflow) the window median.

Plain PyTorch version (the reference ``refine_one`` looped over targets; the vectorised ``torch`` backend is
``mmx_fast/ops/refine.py``): per target, a weighted sum over the C context maps, two dot products, the
residual, the filter (an unfold + sort of every 3x3 window) and the normalisation, each a separate pass over
[H, W] tensors in memory.

Two launches, one program per target in each (a target's map is small: a few hundred to a few thousand
cells, streamed in BLOCK_HW chunks):

* ``_residual_kernel``: pass 1 forms ahat chunk by chunk (a [BLOCK_C, BLOCK_HW] slab of ctx times the
  target's weights) and accumulates <a, ahat> and <ahat, ahat>; pass 2 recomputes ahat and writes r.
* ``_filter_normalize_kernel``: pass 1 filters r chunk by chunk (9 gathered neighbours per cell) and keeps
  the running max; pass 2 recomputes the filtered values and writes them divided by the max.

Recomputing instead of re-reading keeps every pass free of cross-thread dependencies inside a program.
Memory traffic per target: 2 * (C + 1) * H * W reads for the residual and 2 * 9 * H * W (cached) reads
of r for the filter, plus the H * W writes of r and of the output; everything is float32 inside.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_device, is_interpreted, next_pow2

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@triton.jit
def _ahat_chunk(ctx_ptr, w_row, C, offs, hw_mask, HW, wsum, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """sum_c w[c] ctx[c, offs] / wsum (0 when wsum <= 0) for one chunk of cells (ctx is contiguous [C, HW])."""
    acc = tl.zeros((BLOCK_HW,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_mask = offs_c < C
        wc = tl.load(w_row + offs_c, mask=c_mask, other=0.0).to(tl.float32)
        x = tl.load(
            ctx_ptr + offs_c[:, None].to(tl.int64) * HW + offs[None, :],
            mask=c_mask[:, None] & hw_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(wc[:, None] * x, axis=0)
    return tl.where(wsum > 0.0, acc / tl.where(wsum > 0.0, wsum, 1.0), 0.0)


@triton.jit
def _residual_kernel(
    a_ptr,
    ctx_ptr,
    w_ptr,
    r_ptr,
    C,
    HW,
    stride_wt,
    floor,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    w_row = w_ptr + t * stride_wt
    wsum = 0.0
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        wsum += tl.sum(tl.load(w_row + offs_c, mask=offs_c < C, other=0.0).to(tl.float32), axis=0)
    a_row = a_ptr + t * HW
    num = 0.0
    den = 0.0
    amax = 0.0
    for s0 in range(0, HW, BLOCK_HW):
        offs = s0 + tl.arange(0, BLOCK_HW)
        hw_mask = offs < HW
        ahat = _ahat_chunk(ctx_ptr, w_row, C, offs, hw_mask, HW, wsum, BLOCK_C, BLOCK_HW)
        a = tl.load(a_row + offs, mask=hw_mask, other=0.0).to(tl.float32)
        num += tl.sum(a * ahat, axis=0)
        den += tl.sum(ahat * ahat, axis=0)
        amax = tl.maximum(amax, tl.max(tl.where(hw_mask, a, 0.0), axis=0))
    beta = tl.where(den > 0.0, num / tl.where(den > 0.0, den, 1.0), 0.0)
    for s0 in range(0, HW, BLOCK_HW):
        offs = s0 + tl.arange(0, BLOCK_HW)
        hw_mask = offs < HW
        ahat = _ahat_chunk(ctx_ptr, w_row, C, offs, hw_mask, HW, wsum, BLOCK_C, BLOCK_HW)
        a = tl.load(a_row + offs, mask=hw_mask, other=0.0).to(tl.float32)
        r = tl.maximum(a - beta * ahat, 0.0)
        r = tl.where(
            r > floor * amax, r, 0.0
        )  # cancellation noise counts as zero (reference: reference/refine.py)
        tl.store(r_ptr + t * HW + offs, r, mask=hw_mask)


# how @triton.jit built the kernels: the CPU interpreter or the GPU compiler
INTERPRETED = is_interpreted(_residual_kernel)


def _check_device(device: torch.device) -> None:
    check_device(device, INTERPRETED)


@triton.jit
def _reflect(i, n):
    """numpy 'reflect' index for i in [-1, n]: -1 -> 1, n -> n - 2; a length-1 axis maps everything to 0."""
    i = tl.abs(i)
    i = tl.where(i > n - 1, 2 * (n - 1) - i, i)
    return tl.minimum(tl.maximum(i, 0), n - 1)  # only bites when n == 1 (then i is -1, 0 or 1)


@triton.jit
def _sort2(x, y):
    return tl.minimum(x, y), tl.maximum(x, y)


@triton.jit
def _rank_gaussian(row_ptr, offs, mask, H, W):
    """TAM's 3x3 rank Gaussian filter at the cells ``offs`` (flat indices into an H x W map at row_ptr)."""
    y = offs // W
    x = offs % W
    ym = _reflect(y - 1, H) * W
    y0 = y * W
    yp = _reflect(y + 1, H) * W
    xm = _reflect(x - 1, W)
    xp = _reflect(x + 1, W)
    v0 = tl.load(row_ptr + ym + xm, mask=mask, other=0.0)
    v1 = tl.load(row_ptr + ym + x, mask=mask, other=0.0)
    v2 = tl.load(row_ptr + ym + xp, mask=mask, other=0.0)
    v3 = tl.load(row_ptr + y0 + xm, mask=mask, other=0.0)
    v4 = tl.load(row_ptr + y0 + x, mask=mask, other=0.0)
    v5 = tl.load(row_ptr + y0 + xp, mask=mask, other=0.0)
    v6 = tl.load(row_ptr + yp + xm, mask=mask, other=0.0)
    v7 = tl.load(row_ptr + yp + x, mask=mask, other=0.0)
    v8 = tl.load(row_ptr + yp + xp, mask=mask, other=0.0)
    # 25-comparator sorting network for 9 inputs (checked exhaustively on 0/1 inputs in the tests)
    v0, v3 = _sort2(v0, v3)
    v1, v7 = _sort2(v1, v7)
    v2, v5 = _sort2(v2, v5)
    v4, v8 = _sort2(v4, v8)
    v0, v7 = _sort2(v0, v7)
    v2, v4 = _sort2(v2, v4)
    v3, v8 = _sort2(v3, v8)
    v5, v6 = _sort2(v5, v6)
    v0, v2 = _sort2(v0, v2)
    v1, v3 = _sort2(v1, v3)
    v4, v5 = _sort2(v4, v5)
    v7, v8 = _sort2(v7, v8)
    v1, v4 = _sort2(v1, v4)
    v3, v6 = _sort2(v3, v6)
    v5, v7 = _sort2(v5, v7)
    v0, v1 = _sort2(v0, v1)
    v2, v4 = _sort2(v2, v4)
    v3, v5 = _sort2(v3, v5)
    v6, v8 = _sort2(v6, v8)
    v2, v3 = _sort2(v2, v3)
    v4, v5 = _sort2(v4, v5)
    v6, v7 = _sort2(v6, v7)
    v1, v2 = _sort2(v1, v2)
    v3, v4 = _sort2(v3, v4)
    v5, v6 = _sort2(v5, v6)
    mean = (v0 + v1 + v2 + v3 + v4 + v5 + v6 + v7 + v8) / 9.0
    d0 = v0 - mean
    d1 = v1 - mean
    d2 = v2 - mean
    d3 = v3 - mean
    d4 = v4 - mean
    d5 = v5 - mean
    d6 = v6 - mean
    d7 = v7 - mean
    d8 = v8 - mean
    var = (d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3 + d4 * d4 + d5 * d5 + d6 * d6 + d7 * d7 + d8 * d8) / 9.0
    pos = mean > 0.0
    sigma = tl.sqrt(var) / tl.where(pos, mean, 1.0)
    denom = 2.0 * sigma * sigma
    smooth = denom > 0.0
    inv = 1.0 / tl.where(smooth, denom, 1.0)
    # weights exp(-r^2 / denom) for |r| = 1..4; r = 0 has weight 1
    e1 = tl.exp(-1.0 * inv)
    e2 = tl.exp(-4.0 * inv)
    e3 = tl.exp(-9.0 * inv)
    e4 = tl.exp(-16.0 * inv)
    total = 1.0 + 2.0 * (e1 + e2 + e3 + e4)
    value = (v4 + e1 * (v3 + v5) + e2 * (v2 + v6) + e3 * (v1 + v7) + e4 * (v0 + v8)) / total
    value = tl.where(smooth, value, v4)
    return tl.where(pos, value, 0.0)


@triton.jit
def _filtered_chunk(row, offs, mask, H, W, APPLY_FILTER: tl.constexpr):
    """One chunk of a residual map, rank-Gaussian filtered or as stored. The second (normalising) pass
    recomputes it rather than re-reading a buffer the first pass wrote, so no program ever reads its own
    unsynchronised writes."""
    if APPLY_FILTER:
        return _rank_gaussian(row, offs, mask, H, W)
    return tl.load(row + offs, mask=mask, other=0.0)


@triton.jit
def _filter_normalize_kernel(
    r_ptr,
    out_ptr,
    H,
    W,
    APPLY_FILTER: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    HW = H * W
    row = r_ptr + t * HW
    vmax = 0.0
    for s0 in range(0, HW, BLOCK_HW):
        offs = s0 + tl.arange(0, BLOCK_HW)
        mask = offs < HW
        val = _filtered_chunk(row, offs, mask, H, W, APPLY_FILTER)
        vmax = tl.maximum(vmax, tl.max(tl.where(mask, val, 0.0), axis=0))
    inv = tl.where(vmax > 0.0, 1.0 / tl.where(vmax > 0.0, vmax, 1.0), 0.0)
    for s0 in range(0, HW, BLOCK_HW):
        offs = s0 + tl.arange(0, BLOCK_HW)
        mask = offs < HW
        val = _filtered_chunk(row, offs, mask, H, W, APPLY_FILTER)
        tl.store(out_ptr + t * HW + offs, val * inv, mask=mask)


def _block_sizes(c: int, hw: int, on_cuda: bool) -> tuple[int, int, int]:
    """One config: (BLOCK_C, BLOCK_HW, num_warps). No dots here, so blocks need only be powers of two."""
    if on_cuda:
        return min(8, next_pow2(max(c, 1))), min(1024, next_pow2(hw)), 4
    return min(32, next_pow2(max(c, 1))), min(4096, next_pow2(hw)), 1


def refine(
    a_t: torch.Tensor,
    ctx: torch.Tensor,
    weights: torch.Tensor,
    apply_filter: bool,
    cancellation_floor: float,
) -> torch.Tensor:
    """ARC-refined, optionally rank-Gaussian-filtered, max-normalised maps for all targets: float32 [T, H, W].

    a_t: [T, H, W] target maps; ctx: [C, H, W] context maps (C may be 0); weights: [T, C] context weights
    (``1 - rbo``). Floating dtypes; computed in float32. Residual cells at or below ``cancellation_floor *
    max(a_t[t])`` count as zero (``mmx_fast.constants.CANCELLATION_FLOOR``). Per target equal to
    ``mmx_fast.reference.refine.refine_one(a_t[t], ctx, weights[t], apply_filter)``.
    """
    for name, x, nd in (("a_t", a_t, 3), ("ctx", ctx, 3), ("weights", weights, 2)):
        if not isinstance(x, torch.Tensor) or x.dim() != nd:
            raise ValueError(f"{name} must be a {nd}-D tensor; got {getattr(x, 'shape', type(x))}")
        if x.dtype not in _FLOATS:
            raise ValueError(
                f"{name}.dtype={x.dtype} is not allowed; expected a floating dtype (float32, float16, bfloat16)"
            )
        if x.device != a_t.device:
            raise ValueError(f"{name} is on {x.device} and a_t on {a_t.device}; expected one device")
    _check_device(a_t.device)
    t_rows, h, w = a_t.shape
    if h < 1 or w < 1:
        raise ValueError(f"maps must have H, W >= 1; got a_t of shape {tuple(a_t.shape)}")
    if tuple(ctx.shape[1:]) != (h, w):
        raise ValueError(
            f"ctx maps are {tuple(ctx.shape[1:])} but target maps are {(h, w)}; expected the same grid"
        )
    c_rows = ctx.shape[0]
    if tuple(weights.shape) != (t_rows, c_rows):
        raise ValueError(f"weights has shape {tuple(weights.shape)}; expected [T, C] = {(t_rows, c_rows)}")
    if isinstance(apply_filter, torch.Tensor) or apply_filter not in (True, False):
        raise ValueError(f"apply_filter={apply_filter!r} is not allowed; expected True or False")
    apply_filter = bool(apply_filter)
    out = torch.empty((t_rows, h, w), dtype=torch.float32, device=a_t.device)
    if t_rows == 0:
        return out
    hw = h * w
    # float64 inputs are read as float32 (the kernels compute in float32); others are read in their own dtype
    a_c = (a_t.float() if a_t.dtype == torch.float64 else a_t).contiguous()
    ctx_c = (ctx.float() if ctx.dtype == torch.float64 else ctx).contiguous()
    w_c = weights.float() if weights.dtype == torch.float64 else weights
    if c_rows == 0:  # nothing to point at; a one-row dummy keeps the pointers valid (never read)
        ctx_c = a_c.new_zeros((1, h, w))
        w_c = a_c.new_zeros((t_rows, 1))
    w_c = w_c.contiguous()
    residual = torch.empty((t_rows, h, w), dtype=torch.float32, device=a_t.device)
    on_cuda = a_t.device.type == "cuda" and not INTERPRETED
    block_c, block_hw, num_warps = _block_sizes(c_rows, hw, on_cuda)
    _residual_kernel[(t_rows,)](
        a_c,
        ctx_c,
        w_c,
        residual,
        c_rows,
        hw,
        w_c.stride(0),
        float(cancellation_floor),
        BLOCK_C=block_c,
        BLOCK_HW=block_hw,
        num_warps=num_warps,
    )
    _filter_normalize_kernel[(t_rows,)](
        residual,
        out,
        h,
        w,
        APPLY_FILTER=apply_filter,
        BLOCK_HW=block_hw,
        num_warps=num_warps,
    )
    return out
