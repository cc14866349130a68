"""Stage ``refine`` (docs/design.md §1.3-1.4), the ``torch`` backend: ARC for every target at once, TAM's rank
Gaussian filter and max normalisation, vectorised. Arguments are checked once in :mod:`mmx_fast.ops`.

Numerics: float32 throughout (the reference filter uses float64); the error is a few float32 ulps of the
map's maximum.
"""

from __future__ import annotations

import torch

from ..constants import CANCELLATION_FLOOR

# A 9-input sorting network (25 comparators, checked exhaustively by the 0-1 principle in the tests):
# sort the rows of the 3x3 window, then the columns, then merge along the diagonals.
SORT9_NETWORK = (
    (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7),
    (0, 3), (3, 6), (0, 3), (1, 4), (4, 7), (1, 4), (2, 5), (5, 8), (2, 5),
    (1, 3), (5, 7), (2, 6), (4, 6), (2, 4), (2, 3), (5, 6),
)  # fmt: skip


def _reflect_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Source indices of numpy ``mode='reflect'`` padding (edge not repeated; a length-1 axis repeats)."""
    i = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def _filter_unscaled(x: torch.Tensor) -> torch.Tensor:
    """The rank Gaussian filter (kernel 3) of ``x`` [..., H, W] in x's (floating) dtype."""
    h, w = x.shape[-2:]
    padded = x.index_select(-2, _reflect_index(h, 1, x.device)).index_select(
        -1, _reflect_index(w, 1, x.device)
    )
    v = [padded[..., dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]
    for i, j in SORT9_NETWORK:
        v[i], v[j] = torch.minimum(v[i], v[j]), torch.maximum(v[i], v[j])
    v = torch.stack(v)  # [9, ..., H, W], sorted along dim 0
    mean = v.sum(0) / 9
    var = (v - mean).square_().sum(0) / 9
    pos = mean > 0
    sigma = var.sqrt_() / torch.where(pos, mean, torch.ones_like(mean))
    denom = 2 * sigma.square_()
    # exp(-r^2 / denom) = exp(q r^2); denom == 0 (constant window) -> q = -inf -> only the median remains.
    q = torch.where(denom > 0, -1 / torch.where(denom > 0, denom, torch.ones_like(denom)), -torch.inf)
    r2 = torch.tensor([1.0, 4.0, 9.0, 16.0], dtype=x.dtype, device=x.device).reshape((4,) + (1,) * q.dim())
    e = torch.exp(q.unsqueeze(0) * r2)  # [4, ...]: weights of rank offsets +-1..+-4
    pairs = v[:4].flip(0) + v[5:]  # [4, ...]: v[4-r] + v[4+r], r = 1..4
    num = v[4] + (e * pairs).sum(0)
    den = 1 + 2 * e.sum(0)
    return torch.where(pos, num / den, torch.zeros_like(num))


def refine_filter_torch(x: torch.Tensor) -> torch.Tensor:
    """TAM's rank Gaussian filter (kernel 3, docs/design.md §1.4) over the last two dims, vectorised: the nine
    shifted views of the reflect-padded maps go through a 9-input sorting network instead of a sort.

    Computed in float32 (float64 if ``x`` is float64), returned in x's dtype. The filter is positively
    homogeneous (G(c x) = c G(x), c > 0), so each map is divided by its max |value| first and multiplied
    back after: no underflow or overflow of the variance whatever the maps' scale.
    """
    cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(cdtype)
    scale = xf.abs().amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (_filter_unscaled(xf / scale) * scale).to(x.dtype)


def refine_normalize_torch(x: torch.Tensor) -> torch.Tensor:
    """Divide each map ([..., H, W]) by its max; a map whose max is <= 0 becomes all zero (never NaN)."""
    m = x.amax(dim=(-2, -1), keepdim=True)
    pos = m > 0
    return torch.where(pos, x / torch.where(pos, m, torch.ones_like(m)), torch.zeros_like(x))


def refine_torch(
    a_t: torch.Tensor,
    ctx: torch.Tensor,
    weights: torch.Tensor,
    apply_filter: bool = True,
    cancellation_floor: float = CANCELLATION_FLOOR,
) -> torch.Tensor:
    """ARC for every target at once (Eq. 8-9), then TAM's filter, then max-normalisation: [T, H, W] float32.

    ``ahat = weights @ ctx / rowsum`` (0 where the row sum is <= 0, as the reference), ``beta`` the
    closed-form least-squares coefficient (0 where <ahat, ahat> == 0), ``relu(a_t - beta ahat)``.
    """
    t, h, w = a_t.shape
    a = a_t.to(torch.float32).reshape(t, h * w)
    if ctx.shape[0] == 0:
        ahat = torch.zeros_like(a)
    else:
        wts = weights.to(torch.float32)
        total = wts.sum(1, keepdim=True)
        ok = total > 0
        ahat = (wts @ ctx.to(torch.float32).reshape(ctx.shape[0], h * w)) / torch.where(
            ok, total, torch.ones_like(total)
        )
        ahat = torch.where(ok, ahat, torch.zeros_like(ahat))
    num = (a * ahat).sum(1, keepdim=True)
    den = (ahat * ahat).sum(1, keepdim=True)
    beta = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
    r = (a - beta * ahat).clamp_min_(0)
    floor = cancellation_floor * a.amax(1, keepdim=True)
    r = torch.where(r > floor, r, torch.zeros_like(r)).reshape(t, h, w)
    if apply_filter:
        # normalize(G(r)) == normalize(G(r / max r)): pre-scaling keeps the filter's statistics in range.
        r = _filter_unscaled(refine_normalize_torch(r))
    return refine_normalize_torch(r)
