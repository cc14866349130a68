"""Attention-free relevance correction, ARC (paper Eq. 6-9; DESIGN 1.3), one target at a time."""

from __future__ import annotations

import torch

from .filters import normalize_max, rank_gaussian_filter

# Residual cells at or below this fraction of max(A_t) count as zero. When A_t is (nearly) a multiple of
# Ahat, relu(A_t - beta Ahat) is pure cancellation noise (~1e-7 of A_t in float32), and max-normalisation
# would blow that noise up to a full-strength map that differs between float32 and float64.
CANCELLATION_FLOOR = 1e-5


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
