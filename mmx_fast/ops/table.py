"""The one dispatch table: operation -> its implementations by backend (docs/design.md §2).

Every operation of the fast path is a row of :data:`OPS`, named by its stage word (``logit_lens``, ``msea``,
``rankings_*``, ``refine*``, ``tam_*``). Every implementation of a row takes the same arguments (those of
the C++ op where there is one), already checked by the public function in :mod:`mmx_fast.ops`:

- ``torch``:  the vectorised PyTorch implementation in the stage's module; any device; the fallback.
- ``native``: the name of the C++ CPU op (``torch.ops.mmx_fast.<name>``, built by :mod:`mmx_fast.native`).
- ``triton``: the Triton launcher in ``mmx_fast.kernels`` (imported on first call).
- ``fake``:   the C++ op's output shape (``torch.compile`` traces through it).

:func:`mmx_fast.native.load` registers, for every row with a C++ op, ``fake`` and, as the op's CUDA
implementation, ``triton`` (``torch`` where there is no Triton kernel). :func:`mmx_fast.ops._run` picks the
implementation of the resolved backend, ``torch`` where the row has none. This module imports neither
:mod:`mmx_fast.native` nor the kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import kernels_loader
from ..reference.rankings import rbo_weights
from .logit_lens import logit_lens_torch
from .msea import msea_torch
from .rankings import (
    rankings_base_torch,
    rankings_certified_torch,
    rankings_rbo_torch,
    rankings_topk_torch,
)
from .refine import refine_filter_torch, refine_normalize_torch, refine_torch
from .tam import tam_argmax, tam_mitigation_fast


@dataclass(frozen=True)
class Op:
    """One operation: its implementations by backend (see the module docstring)."""

    torch: Callable
    native: str | None = None
    triton: Callable | None = None
    fake: Callable | None = None


def _triton(stage: str, name: str, weights_from_p: bool = False) -> Callable:
    """The Triton launcher ``mmx_fast.kernels.<stage>.<name>``, imported on first call. ``weights_from_p``:
    the launcher takes RBO's depth weights where the row's arguments are ``(p, variant)``."""

    def run(*args):
        launcher = getattr(kernels_loader.kernel_module(stage), name)
        if weights_from_p:
            a, b, p, variant = args
            return launcher(a, b, rbo_weights(a.shape[1], p, variant))
        return launcher(*args)

    run.__qualname__ = f"kernels.{stage}.{name}"
    return run


def _rankings_topk_triton(h, w_u, k, tile=0):
    """The Triton top-k (it picks its own vocabulary split; the C++ op's ``tile`` is ignored)."""
    return kernels_loader.kernel_module("rankings").rankings_topk(h, w_u, k)


def _rankings_rbo_torch(a, b, p, variant):
    return rankings_rbo_torch(a, b, rbo_weights(a.shape[1], p, variant, dtype=torch.float64))


# Every row's implementations take the arguments listed after its name.
OPS: dict[str, Op] = {
    # (z [N, d], w_u [V, d], ids [M]) -> float32 [M, N]
    "logit_lens": Op(torch=logit_lens_torch, triton=_triton("logit_lens", "logit_lens")),
    # (per_scale, coverages, grid, aggregate) -> [M, Hc, Wc]
    "msea": Op(torch=msea_torch),
    # (h [R, d], w_u [V, d], k) -> int64 [R, k], the exact float32 pass
    "rankings_topk": Op(
        torch=rankings_topk_torch,
        native="rankings_topk",
        triton=_rankings_topk_triton,
        fake=lambda h, w_u, k, tile=0: h.new_empty((h.shape[0], k), dtype=torch.int64),
    ),
    # (h, w_u, k, s or None, exact top-k) -> (ranks, k0 or None): certified mixed precision (docs/design.md
    # §1.3, §5), a bfloat16 GEMM and a float32 re-scoring GEMM; no C++ or Triton variant
    "rankings_certified": Op(torch=rankings_certified_torch),
    # (h [R, d], w_u [V, d], keep) -> (float32 [R, keep], int64 [R, keep]): the float32 candidate pass's best
    # scores per row in the C++ op's own summation order, certified by ops.rankings.rankings_certified_f32
    # (docs/design.md §5.2); torch / CUDA: the materialised GEMM's top-keep
    "rankings_candidates": Op(
        torch=lambda h, w_u, keep: torch.topk(h.float() @ w_u.float().T, int(keep), dim=1),
        native="rankings_candidates",
        fake=lambda h, w_u, keep: (
            h.new_empty((h.shape[0], keep), dtype=torch.float32),
            h.new_empty((h.shape[0], keep), dtype=torch.int64),
        ),
    ),
    # (z [N, d], w_u) -> k0, the exact float32 base id (streamed GEMV)
    "rankings_base": Op(torch=rankings_base_torch),
    # (a [T, k], b [C, k], p, variant) -> float32 [T, C]
    "rankings_rbo": Op(
        torch=_rankings_rbo_torch,
        native="rankings_rbo",
        triton=_triton("rankings", "rankings_rbo", weights_from_p=True),
        fake=lambda a, b, p=0.9, variant="ext": a.new_empty((a.shape[0], b.shape[0]), dtype=torch.float32),
    ),
    # (a_t [T, H, W], ctx [C, H, W], weights [T, C], apply_filter, cancellation_floor) -> float32 [T, H, W]
    "refine": Op(
        torch=refine_torch,
        native="refine",
        triton=_triton("refine", "refine"),
        fake=lambda a_t, ctx, weights, apply_filter, cancellation_floor: a_t.new_empty(
            a_t.shape, dtype=torch.float32
        ),
    ),
    # (x [..., H, W]) -> x's dtype; no Triton kernel (CUDA tensors run the torch filter)
    "refine_filter": Op(
        torch=refine_filter_torch, native="refine_filter", fake=lambda x: torch.empty_like(x)
    ),
    # (x [..., H, W]) -> each map over its max
    "refine_normalize": Op(torch=refine_normalize_torch),
    # (h1, w_u, pos, groups) -> TAM's argmax at pos, certified (mmx_fast.ops.tam)
    "tam_argmax": Op(torch=tam_argmax),
    # (tokenizer, text, h1, w_u, groups, argmax_s, visual_positions, grid, apply_filter, fit, image_maps,
    # frames) -> float32 [T, H, W], TAM's mitigation on the class columns only
    "tam_mitigation": Op(torch=tam_mitigation_fast),
}


def impl(op: str, backend: str, native_module=None) -> Callable:
    """The implementation of ``op`` for a resolved ``backend`` (``torch`` where the row has none);
    ``native_module``: :mod:`mmx_fast.native`, passed in by the caller when ``backend`` is ``native``."""
    row = OPS[op]
    if backend == "native" and row.native is not None and native_module is not None:
        return getattr(native_module, row.native)
    if backend == "triton" and row.triton is not None:
        return row.triton
    return row.torch
