"""Stage ``refine``: attention-free relevance correction, ARC (paper Eq. 6-9; docs/design.md §1.3), one target
at a time, then TAM's rank Gaussian filter and max normalisation (docs/design.md §1.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import CANCELLATION_FLOOR

# --------------------------------------------------------------------------------------------------
# ARC (Eq. 8-9)
# --------------------------------------------------------------------------------------------------


def arc_weights(r: torch.Tensor) -> torch.Tensor:
    """w_j = 1 - r_j: a context token whose ranking matches the target's (r = 1) is related and not
    subtracted; an unrelated one (r = 0) counts fully."""
    return 1 - r


def interference_map(ctx_maps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Ahat_t = sum_j w_j A_j / sum_j w_j (Eq. 8); 0 when the weights sum to 0. ctx_maps [C, H, W], weights [C]."""
    if ctx_maps.shape[0] == 0:
        return ctx_maps.new_zeros(ctx_maps.shape[1:])
    total = weights.sum()
    if total <= 0:
        return ctx_maps.new_zeros(ctx_maps.shape[1:])
    return (weights.to(ctx_maps.dtype)[:, None, None] * ctx_maps).sum(0) / total.to(ctx_maps.dtype)


def least_squares_beta(a: torch.Tensor, ahat: torch.Tensor) -> torch.Tensor:
    """argmin_beta ||A - beta Ahat||^2 = <A, Ahat> / <Ahat, Ahat> (0 when Ahat is all zero)."""
    num = (a * ahat).sum()
    den = (ahat * ahat).sum()
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


def refine_one(
    a_t: torch.Tensor, ctx_maps: torch.Tensor, weights: torch.Tensor, apply_filter: bool = True
) -> torch.Tensor:
    """Eq. 9 then TAM's filter then max-normalisation: normalize(G(relu(A_t - beta Ahat))), with residuals
    at or below ``CANCELLATION_FLOOR * max(A_t)`` set to zero."""
    ahat = interference_map(ctx_maps, weights)
    beta = least_squares_beta(a_t, ahat)
    r = (a_t - beta * ahat).clamp_min(0)
    r = torch.where(r > CANCELLATION_FLOOR * a_t.max(), r, torch.zeros_like(r))
    if apply_filter:
        r = rank_gaussian_filter(r)
    return normalize_max(r)


# --------------------------------------------------------------------------------------------------
# TAM's rank Gaussian filter and max normalisation (docs/design.md §1.4)
# --------------------------------------------------------------------------------------------------


def _reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """numpy ``mode='reflect'`` padding (edge not repeated) of the last two dims; a size-1 dim repeats,
    as numpy does."""
    h, w = x.shape[-2:]
    flat = x.reshape(-1, 1, h, w)
    if h > pad and w > pad:
        out = F.pad(flat, (pad, pad, pad, pad), mode="reflect")
    else:  # numpy reflects a length-1 axis onto itself; build it index by index

        def idx(n: int) -> torch.Tensor:
            i = torch.arange(-pad, n + pad)
            period = max(2 * (n - 1), 1)
            i = torch.remainder(i, period)
            return torch.where(i >= n, period - i, i) if n > 1 else torch.zeros_like(i)

        out = flat[:, :, idx(h)][:, :, :, idx(w)]
    return out.reshape(x.shape[:-2] + out.shape[-2:])


def sorted_windows(x: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """Every cell's k x k window (reflect padding), sorted ascending: [..., H, W, k*k]."""
    pad = kernel_size // 2
    h, w = x.shape[-2:]
    padded = _reflect_pad(x, pad)
    win = padded.unfold(-2, kernel_size, 1).unfold(-2, kernel_size, 1)  # [..., H, W, k, k]
    win = win.reshape(x.shape[:-2] + (h, w, kernel_size * kernel_size))
    return torch.sort(win, dim=-1).values


def rank_gaussian_filter(x: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """TAM's rank Gaussian filter over the last two dims of ``x`` ([..., H, W]).

    Per cell: sort the window ascending; mean and population std; if mean <= 0 the output is 0; else
    sigma = std / mean and the output is the sorted values weighted by exp(-r^2 / (2 sigma^2)) over rank
    offsets r = -(k*k)//2 .. (k*k)//2, normalised. sigma == 0 (a constant positive window; TAM yields NaN)
    returns the window median, the limit of the formula. Computed in float64, returned in x's dtype.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size={kernel_size} is not allowed; expected an odd integer >= 1")
    if x.dim() < 2 or x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"rank_gaussian_filter needs [..., H, W] with H, W >= 1; got {tuple(x.shape)}")
    v = sorted_windows(x.to(torch.float64), kernel_size)
    n = kernel_size * kernel_size
    mean = v.mean(-1)
    std = v.std(-1, correction=0)
    r = torch.arange(n, dtype=torch.float64, device=x.device) - n // 2
    sigma = std / torch.where(mean > 0, mean, torch.ones_like(mean))
    denom = 2 * sigma**2
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    kern = torch.exp(-(r**2) / safe.unsqueeze(-1))
    kern = kern / kern.sum(-1, keepdim=True)
    value = (v * kern).sum(-1)
    value = torch.where(denom > 0, value, v[..., n // 2])
    value = torch.where(mean > 0, value, torch.zeros_like(value))
    return value.to(x.dtype)


def normalize_max(x: torch.Tensor) -> torch.Tensor:
    """Scale each map ([..., H, W]) to [0, 1] by its max; an all-zero (or non-positive) map stays zero."""
    m = x.amax(dim=(-2, -1), keepdim=True)
    return torch.where(m > 0, x / torch.where(m > 0, m, torch.ones_like(m)), torch.zeros_like(x))
