"""Multi-scale explanation aggregation, MSEA (paper Eq. 3 and 5; docs/design.md §1.2).

Each scale's map lives on that scale's visual-token grid. ``coverage`` (from the adapter) says how that
grid lines up with the canonical (scale 1.0) grid:

- (1, 1): the scale-s grid shows the whole image (dynamic-resolution models): resize the whole map.
- c < 1 (fixed-size model, image shrunk by alpha = c and pasted top-left): only the top-left
  round(c * h_s) x round(c * w_s) cells show the image; that part is resized onto the whole canonical grid.
- c > 1 (image enlarged, top-left crop): the whole scale-s map shows the top-left 1/c of the image; it is
  resized onto the top-left round(Hc / c) x round(Wc / c) cells of the canonical grid, the rest is uncovered.

Maps are resized bilinearly (align_corners=False) and combined per cell over the scales covering it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import AGGREGATIONS


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(0), size=size, mode="bilinear", align_corners=False).squeeze(0)


def to_canonical(maps: torch.Tensor, coverage: tuple[float, float], grid: tuple[int, int]):
    """Place one scale's maps [M, h, w] on the canonical grid. Returns (maps [M, Hc, Wc], covered [Hc, Wc])."""
    hc, wc = grid
    _, h, w = maps.shape
    cy, cx = coverage
    src = maps
    dst_h, dst_w = hc, wc
    if cy < 1:
        src = src[:, : max(1, min(h, round(cy * h))), :]
    else:
        dst_h = max(1, min(hc, round(hc / cy)))
    if cx < 1:
        src = src[:, :, : max(1, min(w, round(cx * w)))]
    else:
        dst_w = max(1, min(wc, round(wc / cx)))
    placed = _resize(src, (dst_h, dst_w))
    out = maps.new_zeros((maps.shape[0], hc, wc))
    out[:, :dst_h, :dst_w] = placed
    covered = torch.zeros((hc, wc), dtype=torch.bool, device=maps.device)
    covered[:dst_h, :dst_w] = True
    return out, covered


def msea_aggregate(per_scale, coverages, grid: tuple[int, int], aggregate: str = "mean") -> torch.Tensor:
    """Combine per-scale maps ([M, h_s, w_s] each) into [M, Hc, Wc] by ``mean`` or ``max`` per cell over
    the scales covering that cell."""
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate={aggregate!r} is not allowed; expected one of {', '.join(AGGREGATIONS)}")
    total = None
    count = None
    for maps, cov in zip(per_scale, coverages):
        placed, covered = to_canonical(maps, cov, grid)
        if total is None:
            total = (
                placed.clone()
                if aggregate == "mean"
                else torch.where(covered, placed, torch.full_like(placed, -torch.inf))
            )
            count = covered.to(placed.dtype)
            continue
        if aggregate == "mean":
            total = total + placed
        else:
            total = torch.where(covered, torch.maximum(total, placed), total)
        count = count + covered.to(placed.dtype)
    if aggregate == "mean":
        return total / count.clamp_min(1)
    return torch.where(count > 0, total, torch.zeros_like(total))
