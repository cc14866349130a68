"""Stage ``msea`` (docs/design.md §1.2), the ``torch`` backend on every device: resize every scale's maps onto
the canonical grid and combine them, all ids at once. Arguments are checked once in :mod:`mmx_fast.ops`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _placement(h: int, w: int, coverage, grid) -> tuple[int, int, int, int, int, int]:
    """(source rows, source cols, y0, x0, y1, x1) of one map on the canonical grid, for a coverage ``(cy, cx)``
    or a box ``(y0, x0, y1, x1)``; the same rule as :func:`mmx_fast.reference.msea.placement`."""
    if len(coverage) == 4:
        y0, x0, y1, x1 = (int(v) for v in coverage)
        return h, w, y0, x0, y1, x1
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
    return src_h, src_w, 0, 0, dst_h, dst_w


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
        src_h, src_w, y0, x0, y1, x1 = _placement(maps.shape[1], maps.shape[2], cov, grid)
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
