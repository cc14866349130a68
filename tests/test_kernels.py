"""Triton kernels (stages logit_lens, rankings, refine): the package and the full-size CUDA checks against the
pure-PyTorch reference. The small per-stage checks (under the interpreter) are in ``tests/test_stage_<stage>.py``
(``test_triton_*`` and the every-backend tests).

Without CUDA the kernels run through Triton's CPU interpreter (TRITON_INTERPRET=1, set below before any kernel
module is imported). The interpreter costs ~1 ms per launch plus ~0.4 ms per program, so these tests use few
programs with big blocks. The ``cuda`` tests repeat the comparisons natively at realistic sizes
(Qwen2-VL-2B: d 1536, vocabulary 151,936) and are skipped where there is no GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import random_rankings, refine_reference_in

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mmx_fast.constants import CANCELLATION_FLOOR  # noqa: E402
from mmx_fast.kernels_loader import triton_kernels  # noqa: E402
from mmx_fast.reference.logit_lens import logit_lens_maps  # noqa: E402
from mmx_fast.reference.rankings import rbo, rbo_weights, topk_ranking  # noqa: E402

K = triton_kernels()
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (native Triton at realistic sizes)")


def _rbo(a, b, p=0.9, variant="ext"):
    """The Triton RBO launcher with the variant's weights passed in (validated by ``rbo_weights``)."""
    return K.rankings_rbo(a, b, rbo_weights(a.shape[1] if a.dim() == 2 else 1, p, variant))


def _refine(a_t, ctx, weights, apply_filter=True):
    """The Triton refine launcher with the shared cancellation floor passed in."""
    return K.refine(a_t, ctx, weights, apply_filter, CANCELLATION_FLOOR)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref| in float64 (absolute when ref is all zero)."""
    x = x.double().cpu()
    ref = ref.double().cpu()
    scale = ref.abs().max().item() if ref.numel() else 0.0
    err = (x - ref).abs().max().item() if ref.numel() else 0.0
    return err / scale if scale > 0 else err


# --------------------------------------------------------------------------------------------------- package


def test_package_exports():
    assert K.available, K.import_error
    for name in ("logit_lens", "rankings_topk", "rankings_rbo", "refine"):
        assert callable(getattr(K, name))
    assert K.interpreted == (not CUDA)
    assert K.usable("cuda" if CUDA else "cpu")
    assert not K.usable("cuda" if not CUDA else "cpu")
    with pytest.raises(AttributeError):
        K.no_such_kernel  # noqa: B018
    # the launchers are the functions of the stage modules mmx_fast.kernels.<stage>
    assert K.logit_lens is importlib.import_module("mmx_fast.kernels.logit_lens").logit_lens
    assert K.refine is importlib.import_module("mmx_fast.kernels.refine").refine


# -------------------------------------------------------------------------------------------- stage A


# -------------------------------------------------------------------------------------------- stage B


# -------------------------------------------------------------------------------------------- stage C


# ----------------------------------------------------------------------------------- CUDA, realistic sizes

V_REAL, D_REAL = 151_936, 1536


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_gather_logit_lens_realistic(dtype):
    g = torch.Generator(device="cuda").manual_seed(5)
    z = torch.randn(712, D_REAL, device="cuda", generator=g).to(dtype)
    w_u = (torch.randn(V_REAL, D_REAL, device="cuda", generator=g) * 0.02).to(dtype)
    ids = torch.randint(0, V_REAL, (120,), device="cuda", generator=g)
    out = K.logit_lens(z, w_u, ids)
    ref64 = logit_lens_maps(z.double(), w_u.double(), ids, dtype=torch.float64)
    err = _rel_err(out, ref64)
    assert err <= 1e-5
    if dtype == torch.bfloat16:
        assert err <= 2 * _rel_err(logit_lens_maps(z, w_u, ids, dtype=torch.bfloat16), ref64)


@needs_cuda
@pytest.mark.parametrize("dtype, k", [(torch.float32, 50), (torch.bfloat16, 50), (torch.float32, 3)])
def test_cuda_topk_rankings_realistic(dtype, k):
    g = torch.Generator(device="cuda").manual_seed(6)
    h = torch.randn(100, D_REAL, device="cuda", generator=g).to(dtype)
    w_u = (torch.randn(V_REAL, D_REAL, device="cuda", generator=g) * 0.02).to(dtype)
    out = K.rankings_topk(h, w_u, k)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref = topk_ranking(h, w_u, k)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    # different summation orders may swap two logits closer than float32 rounding; require near-exactness
    assert (out == ref).float().mean().item() >= 0.999
    ties_h = torch.randint(-2, 3, (40, 64), device="cuda", generator=g).float()
    ties_w = torch.randint(-1, 2, (V_REAL, 64), device="cuda", generator=g).float()
    ties_w[V_REAL // 2 :] = ties_w[: V_REAL - V_REAL // 2]
    assert torch.equal(K.rankings_topk(ties_h, ties_w, k), topk_ranking(ties_h, ties_w, k))


@needs_cuda
def test_cuda_rbo_pairs_realistic():
    g = _gen(7)
    a = random_rankings(g, 40, 50, 80).cuda()
    b = random_rankings(g, 90, 50, 80).cuda()
    for variant in ("ext", "truncated", "min"):
        out = _rbo(a, b, 0.9, variant)
        ref = rbo(a[:, None, :], b[None, :, :], 0.9, variant)
        assert (out.double() - ref).abs().max().item() <= 1e-6


@needs_cuda
@pytest.mark.parametrize("h, w", [(17, 23), (37, 37), (64, 80)])
def test_cuda_refine_realistic(h, w):
    g = _gen(8)
    t, c = 30, 80
    a_t = torch.rand(t, h, w, generator=g).cuda()
    ctx = torch.rand(c, h, w, generator=g).cuda()
    weights = torch.rand(t, c, generator=g).cuda()
    for apply_filter in (True, False):
        out = _refine(a_t, ctx, weights, apply_filter)
        assert _rel_err(out, refine_reference_in(a_t, ctx, weights, apply_filter)) <= 1e-5
