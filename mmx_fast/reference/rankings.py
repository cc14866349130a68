"""Stage ``rankings``: top-k rankings, rank-biased overlap (paper Eq. 6-7; Webber, Moffat & Zobel 2010) and
the base id k0 the context rankings are compared against (docs/design.md §1.3).

A ranking is the list of the ``k`` vocabulary ids with the highest next-token logits, best first. Softmax
is monotone, so the logits are ranked directly. Ties break toward the smaller vocabulary id (stable).
"""

from __future__ import annotations

import math

import torch

from ..constants import RBO_VARIANTS


def topk_ranking(
    h: torch.Tensor, w_u: torch.Tensor, k: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Top-``k`` vocabulary ids of ``h @ w_u.T`` per row, best first, ties to the smaller id.

    h: [R, d] hidden states (the positions that predict each text token); w_u: [V, d].
    Returns LongTensor [R, k]. Plain: materialises the [R, V] logits (the fast path never does).
    """
    if h.dim() != 2 or w_u.dim() != 2 or h.shape[1] != w_u.shape[1]:
        raise ValueError(
            f"topk_ranking needs h [R, d] and w_u [V, d]; got {tuple(h.shape)} and {tuple(w_u.shape)}"
        )
    if not 1 <= k <= w_u.shape[0]:
        raise ValueError(f"top_k={k} is not allowed; expected 1 <= top_k <= vocabulary size {w_u.shape[0]}")
    logits = h.to(dtype) @ w_u.to(dtype).T
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
    return order[:, :k]


def rbo_weights(k: int, p: float, variant: str = "ext", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Weights ``c_d`` (d = 1..k) such that ``RBO = sum_d c_d * X_d``, X_d the depth-d prefix overlap.

    - ``truncated`` (RBO@k, the sum of Eq. 7 cut at depth k): c_d = (1-p) p^(d-1) / d.
    - ``ext`` (Webber Eq. 32, equal-length lists): truncated + (X_k / k) p^k.
    - ``min`` (Webber Eq. 11, the lower bound): (1-p)/p * (sum_d (X_d - X_k) p^d / d - X_k ln(1-p)).
    """
    if variant not in RBO_VARIANTS:
        raise ValueError(f"rbo variant={variant!r} is not allowed; expected one of {', '.join(RBO_VARIANTS)}")
    if not (isinstance(p, (int, float)) and math.isfinite(p) and 0 < p < 1):
        raise ValueError(f"rbo_p={p!r} is not allowed; expected a number strictly between 0 and 1")
    d = torch.arange(1, k + 1, dtype=torch.float64)
    c = (1 - p) * p ** (d - 1) / d
    if variant == "ext":
        c[-1] += p**k / k
    elif variant == "min":
        # linear in X: X_d terms keep (1-p) p^(d-1)/d; X_k collects -(1-p)/p * (sum_d p^d/d + ln(1-p)).
        c[-1] += -(1 - p) / p * (float((p**d / d).sum()) + math.log(1 - p))
    return c.to(dtype)


def prefix_overlaps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """X_d for d = 1..k: the number of ids in both depth-d prefixes. a, b: [..., k] -> [..., k] (int64).

    An id at position i of ``a`` and j of ``b`` is in both prefixes from depth max(i, j) + 1 on, so a
    histogram of max(i, j) over matching pairs, cumulatively summed, gives every X_d.
    """
    k = a.shape[-1]
    eq = a.unsqueeze(-1) == b.unsqueeze(-2)  # [..., k, k]
    idx = torch.arange(k, device=a.device)
    depth = torch.maximum(idx[:, None], idx[None, :])  # [k, k]
    hist = torch.zeros(eq.shape[:-2] + (k,), dtype=torch.int64, device=a.device)
    hist.scatter_add_(
        -1,
        depth.expand(eq.shape).reshape(eq.shape[:-2] + (k * k,)),
        eq.reshape(eq.shape[:-2] + (k * k,)).long(),
    )
    return hist.cumsum(-1)


def rbo(a: torch.Tensor, b: torch.Tensor, p: float = 0.9, variant: str = "ext") -> torch.Tensor:
    """Rank-biased overlap of rankings ``a`` and ``b`` ([..., k] integer ids, best first; broadcast over
    leading dims). ``ext`` is 1 for identical lists and 0 for disjoint ones; all variants lie in [0, 1].

    Returns float64 [...]. Note: the PyPI package ``rbo`` defaults to p=1.0, which is not RBO.
    """
    a = torch.as_tensor(a)
    b = torch.as_tensor(b)
    if a.dtype.is_floating_point or b.dtype.is_floating_point:
        raise TypeError(f"rbo takes integer id lists; got dtypes {a.dtype} and {b.dtype}")
    if a.shape[-1] != b.shape[-1] or a.shape[-1] < 1:
        raise ValueError(f"rbo needs two non-empty lists of equal depth; got {a.shape[-1]} and {b.shape[-1]}")
    a, b = torch.broadcast_tensors(a, b)
    k = a.shape[-1]
    x = prefix_overlaps(a, b).to(torch.float64)
    return x @ rbo_weights(k, p, variant).to(x.device)


def base_vocab_id(z: torch.Tensor, w_u: torch.Tensor, dtype: torch.dtype = torch.float32) -> int:
    """The base id k0 ARC's context rankings are compared against (docs/design.md §1.3):
    ``argmin_k sum_i [W_U z_i]_k`` over the scale-1.0 visual tokens (unclipped sum), one GEMV
    ``W_U @ sum_i z_i``. Ties go to the smaller id."""
    s = z.to(dtype).sum(0)
    return int(torch.argmin(w_u.to(dtype) @ s))
