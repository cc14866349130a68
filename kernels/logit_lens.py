"""Stage ``logit_lens``: gathered logit-lens maps (paper Eq. 2 and 4; docs/design.md §1.1 and §2).

Computes, for visual-token hidden states ``z`` [N, d], the unembedding ``W_U`` [V, d] and vocabulary ids
``ids`` [M]::

    out[m, i] = max(0, sum_j W_U[ids[m], j] * z[i, j])          -> float32 [M, N]

i.e. ``clamp(W_U[ids] @ z.T, min=0)``, the reference ``mmx_fast.reference.logit_lens.logit_lens_maps``.

Plain PyTorch version (the vectorised ``torch`` backend, ``mmx_fast/ops/logit_lens.py``)::

    rows = w_u.index_select(0, ids).float()                              # copies M * d of W_U
    out = (rows @ z.float().T).clamp_min_(0)

Each program owns a BLOCK_M x BLOCK_N tile of the output. It loads its BLOCK_M ids once and then streams the
hidden dimension in BLOCK_D slices: the W_U rows are gathered by index straight from W_U (``W_U[ids]`` is never
copied on the host), ``z`` is read as a strided tile, and ``tl.dot`` accumulates in float32.

Precision: float32 inputs use an IEEE float32 dot (no TF32). bfloat16/float16 tiles are upcast to float32
before the dot (Triton's interpreter returns garbage for a bfloat16 ``tl.dot``); on CUDA, when both operands
are bfloat16 (or both float16) the dot runs natively with float32 accumulation, which is exact per product and
therefore the same precision class.

Memory traffic: M * d elements of W_U (only the gathered rows) per column block of z, plus N * d of z per
row block of ids, plus the M * N float32 output. With M <= BLOCK_M (the common case: a few hundred ids at
most) W_U's rows are read cdiv(N, BLOCK_N) times, z exactly once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_states_and_unembedding, is_interpreted, next_pow2


@triton.jit
def _logit_lens_kernel(
    z_ptr,
    w_ptr,
    ids_ptr,
    out_ptr,
    N,
    M,
    D,
    stride_zn,
    stride_zd,
    stride_wv,
    stride_wd,
    stride_om,
    stride_on,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    LOWP_DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    # the gather: one vocabulary id per output row; masked rows point at row 0 and are never stored
    ids = tl.load(ids_ptr + offs_m, mask=m_mask, other=0).to(tl.int64)
    w_rows = w_ptr + ids * stride_wv
    z_rows = z_ptr + offs_n.to(tl.int64) * stride_zn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        w = tl.load(
            w_rows[:, None] + offs_d[None, :] * stride_wd, mask=m_mask[:, None] & d_mask[None, :], other=0.0
        )
        z = tl.load(
            z_rows[:, None] + offs_d[None, :] * stride_zd, mask=n_mask[:, None] & d_mask[None, :], other=0.0
        )
        if LOWP_DOT:
            acc = tl.dot(w, tl.trans(z), acc)
        else:
            acc = tl.dot(w.to(tl.float32), tl.trans(z.to(tl.float32)), acc, input_precision="ieee")
    acc = tl.maximum(acc, 0.0)
    out = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :] * stride_on
    tl.store(out, acc, mask=m_mask[:, None] & n_mask[None, :])


# how @triton.jit built the kernels: the CPU interpreter or the GPU compiler
INTERPRETED = is_interpreted(_logit_lens_kernel)


def _block_sizes(m: int, n: int, d: int, on_cuda: bool, lowp: bool) -> tuple[int, int, int, int]:
    """One config (no autotune): (BLOCK_M, BLOCK_N, BLOCK_D, num_warps). Powers of two, >= 16 (dot operands).

    Under the interpreter every program costs ~0.4 ms, so blocks are as large as the problem allows."""
    if on_cuda:  # checked with ptxas for sm_90: no register spills at 8 warps
        return min(64, max(16, next_pow2(m))), 64, 64 if lowp else 32, 8
    return (
        min(64, max(16, next_pow2(m))),
        min(256, max(16, next_pow2(n))),
        min(128, max(16, next_pow2(d))),
        4,
    )


def logit_lens(z: torch.Tensor, w_u: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``clamp(W_U[ids] @ z.T, min=0)`` as float32 [M, N], with the W_U rows gathered inside the kernel.

    z: [N, d] float32/float16/bfloat16 hidden states; w_u: [V, d] of the same kinds; ids: [M] integer vocab ids
    in [0, V), checked by ``mmx_fast.ops.logit_lens`` (the check reads the ids back: a device sync, so it is
    done once there and not here). All on one device (CUDA, or CPU under ``TRITON_INTERPRET=1``).
    Accumulates in float32.
    """
    check_states_and_unembedding("z", z, w_u, INTERPRETED)
    ids = torch.as_tensor(ids, device=w_u.device)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"ids must be integer vocabulary ids; got dtype {ids.dtype}")
    ids = ids.reshape(-1).to(torch.int64).contiguous()
    n, d = z.shape
    m = ids.numel()
    out = torch.empty((m, n), dtype=torch.float32, device=z.device)
    if m == 0 or n == 0:
        return out
    if d == 0:
        return out.zero_()
    on_cuda = z.device.type == "cuda" and not INTERPRETED
    lowp = on_cuda and z.dtype == w_u.dtype and z.dtype in (torch.float16, torch.bfloat16)
    block_m, block_n, block_d, num_warps = _block_sizes(m, n, d, on_cuda, lowp)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _logit_lens_kernel[grid](
        z,
        w_u,
        ids,
        out,
        n,
        m,
        d,
        z.stride(0),
        z.stride(1),
        w_u.stride(0),
        w_u.stride(1),
        out.stride(0),
        out.stride(1),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        LOWP_DOT=lowp,
        num_warps=num_warps,
    )
    return out
