"""Raw logit-lens maps (paper Eq. 2 and 4; docs/design.md §1.1). The base id k0 is stage rankings'
(``reference.rankings.base_vocab_id``)."""

from __future__ import annotations

import torch


def logit_lens_maps(
    z: torch.Tensor, w_u: torch.Tensor, ids, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``a_i(k) = max(0, [W_U z_i]_k)`` for each vocab id k in ``ids``.

    z: [N, d] last-layer normed hidden states of the visual tokens; w_u: [V, d]; ids: [M].
    Returns [M, N] in ``dtype``: one flat map per id. Only the rows of W_U for ``ids`` are used.
    """
    ids = torch.as_tensor(ids, dtype=torch.long, device=w_u.device).reshape(-1)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= w_u.shape[0]):
        raise ValueError(
            f"vocab ids must lie in [0, {w_u.shape[0]}); got min {int(ids.min())}, max {int(ids.max())}"
        )
    rows = w_u.index_select(0, ids).to(dtype)
    return (rows @ z.to(dtype).T).clamp_min(0)
