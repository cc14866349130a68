"""Multi-scale explanation aggregation, MSEA (paper Eq. 3 and 5; docs/design.md §1.2).

Each map (one per scale, or one per view of a scale for tiled models) lives on its own visual-token grid. Its
``placement`` says how that grid lines up with the canonical (scale 1.0) grid, in one of two forms:

- a coverage ``(cy, cx)`` (single-view families, one map per scale):

  - (1, 1): the scale-s grid shows the whole image (dynamic-resolution models): resize the whole map.
  - c < 1 (fixed-size model, image shrunk by alpha = c and pasted top-left): only the top-left
    round(c * h_s) x round(c * w_s) cells show the image; that part is resized onto the whole canonical grid.
  - c > 1 (image enlarged, top-left crop): the whole scale-s map shows the top-left 1/c of the image; it is
    resized onto the top-left round(Hc / c) x round(Wc / c) cells of the canonical grid, the rest is uncovered.

- a box ``(y0, x0, y1, x1)`` of whole canonical cells (half-open; tiled models, one map per view): the whole
  map is resized onto that box.

Maps are resized bilinearly (align_corners=False) and combined per cell over the maps covering it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import AGGREGATIONS


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(0), size=size, mode="bilinear", align_corners=False).squeeze(0)


def placement(hw: tuple[int, int], where, grid: tuple[int, int]) -> tuple[int, int, int, int, int, int]:
    """(source rows, source cols, y0, x0, y1, x1): the top-left source part of a map of size ``hw`` and the
    canonical box it is resized onto, for a coverage ``(cy, cx)`` or a box ``(y0, x0, y1, x1)``. The one
    placement rule: the fast path (``ops/msea.py``) uses it too, so ``tests/test_glue.py`` checks it against a
    brute-force search."""
    hc, wc = grid
    h, w = hw
    if len(where) == 4:
        y0, x0, y1, x1 = (int(v) for v in where)
        return h, w, y0, x0, y1, x1
    cy, cx = where
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


def to_canonical(maps: torch.Tensor, coverage, grid: tuple[int, int]):
    """Place one map stack [M, h, w] on the canonical grid; ``coverage`` is a coverage ``(cy, cx)`` or a box
    ``(y0, x0, y1, x1)``. Returns (maps [M, Hc, Wc], covered [Hc, Wc])."""
    hc, wc = grid
    src_h, src_w, y0, x0, y1, x1 = placement(tuple(maps.shape[1:]), coverage, grid)
    placed = _resize(maps[:, :src_h, :src_w], (y1 - y0, x1 - x0))
    out = maps.new_zeros((maps.shape[0], hc, wc))
    out[:, y0:y1, x0:x1] = placed
    covered = torch.zeros((hc, wc), dtype=torch.bool, device=maps.device)
    covered[y0:y1, x0:x1] = True
    return out, covered


def msea_aggregate(per_scale, coverages, grid: tuple[int, int], aggregate: str = "mean") -> torch.Tensor:
    """Combine maps ([M, h_s, w_s] each; one per scale, or one per (scale, view)) into [M, Hc, Wc] by ``mean``
    or ``max`` per cell over the maps covering that cell. ``coverages[i]``: see ``to_canonical``."""
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
