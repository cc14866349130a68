"""Stage ``msea`` (docs/design.md §1.2), the ``torch`` backend on every device: resize every scale's maps onto
the canonical grid and combine them, all ids at once. Arguments are checked once in :mod:`mmx_fast.ops`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def msea_torch(per_scale, coverages, grid, aggregate: str) -> torch.Tensor:
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
