"""Stage ``msea`` (docs/design.md §1.2), the ``torch`` backend on every device: resize every scale's maps onto
the canonical grid and combine them, all ids at once. Arguments are checked once in :mod:`mmx_fast.ops`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..reference.msea import placement  # the one placement rule (tests/test_glue.py checks it by brute force)


def msea_torch(per_scale, coverages, grid, aggregate: str) -> torch.Tensor:
    """Combine maps ([M, h_s, w_s] each; one per scale, or one per (scale, view) for tiled models) into
    [M, Hc, Wc]: ``mean`` or ``max`` per cell over the maps covering it (bilinear resize, align_corners=False). One interpolate per scale for all M
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
        src_h, src_w, y0, x0, y1, x1 = placement((maps.shape[1], maps.shape[2]), cov, grid)
        dst_h, dst_w = y1 - y0, x1 - x0
        src = maps[:, :src_h, :src_w]
        if (src_h, src_w) != (dst_h, dst_w):
            src = F.interpolate(src.unsqueeze(0), size=(dst_h, dst_w), mode="bilinear", align_corners=False)[
                0
            ]
        region = total[:, y0:y1, x0:x1]
        if aggregate == "mean":
            region.add_(src)
        else:
            region.copy_(torch.maximum(region, src))
        count[y0:y1, x0:x1] += 1
    if aggregate == "mean":
        return total / count.clamp_min(1)
    return torch.where(count > 0, total, torch.zeros_like(total))
