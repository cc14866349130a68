"""Stage ``logit_lens`` (docs/design.md §1.1), the ``torch`` backend: the raw logit-lens maps
``clamp(W_U[ids] @ z.T, 0)`` with float32 accumulation whatever the input dtype (bfloat16 inputs are upcast,
exactly as the reference does by default). Arguments are checked once in :mod:`mmx_fast.ops`."""

from __future__ import annotations

import torch


def logit_lens_torch(z: torch.Tensor, w_u: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``clamp(W_U[ids] @ z.T, 0)`` in float32: [M, N]. Only the M gathered rows of W_U are copied."""
    rows = w_u.index_select(0, ids).to(torch.float32)
    out = rows @ z.to(torch.float32).T
    return out.clamp_min_(0)
