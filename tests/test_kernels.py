"""Triton kernels (stages A, B, C) against the pure-PyTorch reference.

Without CUDA the kernels run through Triton's CPU interpreter (TRITON_INTERPRET=1, set below before any kernel
module is imported). The interpreter costs ~1 ms per launch plus ~0.4 ms per program, so these tests use few
programs with big blocks. The ``cuda`` tests repeat the comparisons natively at realistic sizes
(Qwen2-VL-2B: d 1536, vocabulary 151,936) and are skipped where there is no GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mmx_fast.reference.arc import refine_one  # noqa: E402
from mmx_fast.reference.filters import rank_gaussian_filter  # noqa: E402
from mmx_fast.reference.logit_lens import logit_lens_maps  # noqa: E402
from mmx_fast.reference.rbo import rbo, topk_ranking  # noqa: E402


def _load_kernels():
    """``mmx_fast.kernels`` when the package is installed (kernels/ maps onto it); otherwise load kernels/
    from this checkout under that name."""
    try:
        return importlib.import_module("mmx_fast.kernels")
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "mmx_fast.kernels",
            ROOT / "kernels" / "__init__.py",
            submodule_search_locations=[str(ROOT / "kernels")],
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["mmx_fast.kernels"] = module
        spec.loader.exec_module(module)
        return module


K = _load_kernels()
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (native Triton at realistic sizes)")


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
    assert K.HAS_TRITON
    for name in ("gather_logit_lens", "topk_rankings", "rbo_pairs", "refine"):
        assert callable(getattr(K, name))
    assert K.INTERPRETED == (not CUDA)
    assert K.triton_usable("cuda" if CUDA else "cpu")
    with pytest.raises(AttributeError):
        K.no_such_kernel  # noqa: B018
    # importing a kernel module by name must not shadow the function of the same name
    importlib.import_module("mmx_fast.kernels.gather_logit_lens")
    importlib.import_module("mmx_fast.kernels.refine")
    assert callable(K.gather_logit_lens) and callable(K.refine)


# -------------------------------------------------------------------------------------------- stage A


@pytest.mark.parametrize("n, v, d, m", [(37, 1000, 48, 5), (130, 300, 200, 70)])
def test_gather_logit_lens_fp32(n, v, d, m):
    g = _gen(1000 + n)
    z = torch.randn(n, d, generator=g)
    w_u = torch.randn(v, d, generator=g)
    ids = torch.randint(0, v, (m,), generator=g)
    ids[-1] = ids[0]  # a repeated id
    out = K.gather_logit_lens(z, w_u, ids)
    assert out.shape == (m, n) and out.dtype == torch.float32
    ref64 = logit_lens_maps(z.double(), w_u.double(), ids, dtype=torch.float64)
    assert _rel_err(out, ref64) <= 1e-5
    assert _rel_err(out, logit_lens_maps(z, w_u, ids)) <= 1e-5
    # clipping at 0 is real, and the output is not a constant
    assert (out == 0).any() and (out > 0).any() and out.std() > 0
    assert torch.equal(out[-1], out[0])


def test_gather_logit_lens_bf16_and_strided():
    g = _gen(11)
    n, v, d, m = 70, 1000, 200, 9
    z = torch.randn(n, 2 * d, generator=g).to(torch.bfloat16)[:, ::2]  # non-contiguous view
    w_u = torch.randn(v, d, generator=g).to(torch.bfloat16)
    ids = torch.randint(0, v, (m,), generator=g)
    out = K.gather_logit_lens(z, w_u, ids)
    ref64 = logit_lens_maps(z.double(), w_u.double(), ids, dtype=torch.float64)
    same_precision = logit_lens_maps(z, w_u, ids, dtype=torch.bfloat16)  # plain torch in bfloat16
    err = _rel_err(out, ref64)
    assert err <= 2 * _rel_err(same_precision, ref64)
    assert err <= 1e-5  # float32 accumulation of exact bf16 products


def test_gather_logit_lens_validation():
    z = torch.randn(4, 8)
    w_u = torch.randn(10, 8)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        K.gather_logit_lens(z, w_u, torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="hidden sizes"):
        K.gather_logit_lens(torch.randn(4, 7), w_u, torch.tensor([1]))
    with pytest.raises(ValueError, match="integer"):
        K.gather_logit_lens(z, w_u, torch.tensor([1.0]))
    assert K.gather_logit_lens(z, w_u, torch.tensor([], dtype=torch.long)).shape == (0, 4)


# -------------------------------------------------------------------------------------------- stage B


@pytest.mark.parametrize(
    "r, v, d, k, dtype, splits",
    [
        (5, 1000, 48, 50, torch.float32, None),
        (20, 1000, 64, 3, torch.bfloat16, None),
        (37, 1000, 48, 50, torch.float32, 3),  # several vocabulary splits + the merge kernel
    ],
)
def test_topk_rankings_random(r, v, d, k, dtype, splits):
    g = _gen(2000 + r + k)
    h = torch.randn(r, d, generator=g).to(dtype)
    w_u = torch.randn(v, d, generator=g).to(dtype)
    out = K.topk_rankings(h, w_u, k, num_splits=splits)
    assert out.shape == (r, k) and out.dtype == torch.int64
    assert torch.equal(out, topk_ranking(h, w_u, k))
    assert len({tuple(row) for row in out.tolist()}) > 1  # rows differ: not a constant


@pytest.mark.parametrize("splits", [None, 2])
def test_topk_rankings_exact_ties(splits):
    g = _gen(21)
    # small integers: every logit is exact in float32 whatever the summation order, and many are equal
    h = torch.randint(-2, 3, (9, 40), generator=g).float()
    h[3] = 0  # every logit 0: the ranking is 0, 1, 2, ...
    w_u = torch.randint(-1, 2, (1000, 40), generator=g).float()
    w_u[600:] = w_u[:400]  # duplicate rows: exact ties across tiles
    w_u[7] = w_u[900]
    out = K.topk_rankings(h, w_u, 50, num_splits=splits)
    assert torch.equal(out, topk_ranking(h, w_u, 50))
    assert torch.equal(out[3], torch.arange(50))


def test_topk_rankings_negative_and_small_vocab():
    g = _gen(22)
    h = torch.randn(3, 16, generator=g)
    w_u = -torch.rand(20, 16, generator=g) * h[0].sign()  # row 0: every logit negative
    for k in (1, 20):
        assert torch.equal(K.topk_rankings(h, w_u, k), topk_ranking(h, w_u, k))
    with pytest.raises(ValueError, match="k=21"):
        K.topk_rankings(h, w_u, 21)
    with pytest.raises(ValueError, match="k=65"):
        K.topk_rankings(torch.randn(2, 8), torch.randn(100, 8), 65)


def _random_rankings(g: torch.Generator, rows: int, k: int, pool: int) -> torch.Tensor:
    return torch.stack([torch.randperm(pool, generator=g)[:k] for _ in range(rows)])


@pytest.mark.parametrize("k, p", [(50, 0.9), (3, 0.5)])
def test_rbo_pairs(k, p):
    g = _gen(3000 + k)
    a = _random_rankings(g, 5, k, int(1.6 * k) + 2)
    b = _random_rankings(g, 7, k, int(1.6 * k) + 2)
    b[0] = a[0]  # identical lists
    b[1] = a[1].flip(0)  # same ids, reversed
    b[2] = torch.arange(10_000, 10_000 + k)  # disjoint
    for variant in ("ext", "truncated", "min"):
        out = K.rbo_pairs(a, b, p, variant)
        ref = rbo(a[:, None, :], b[None, :, :], p, variant)
        assert out.shape == (5, 7) and out.dtype == torch.float32
        assert (out.double() - ref).abs().max().item() <= 1e-6
        assert out[:, 2].abs().max().item() == 0.0
    ext = K.rbo_pairs(a, b, p, "ext")
    assert abs(ext[0, 0].item() - 1.0) <= 1e-6
    assert ext.std() > 0


def test_rbo_pairs_validation():
    a = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="variant"):
        K.rbo_pairs(a, a, 0.9, "max")
    with pytest.raises(ValueError, match="rbo_p"):
        K.rbo_pairs(a, a, 1.0, "ext")
    with pytest.raises(ValueError, match="depths"):
        K.rbo_pairs(a, torch.zeros(2, 4, dtype=torch.long), 0.9, "ext")
    with pytest.raises(ValueError, match="k=65"):
        K.rbo_pairs(torch.zeros(1, 65, dtype=torch.long), torch.zeros(1, 65, dtype=torch.long), 0.9, "ext")
    assert K.rbo_pairs(a[:0], a, 0.9, "ext").shape == (0, 2)


# -------------------------------------------------------------------------------------------- stage C


def _refine_ref(a_t, ctx, weights, apply_filter, dtype=torch.float64):
    return torch.stack(
        [
            refine_one(a_t[t].to(dtype), ctx.to(dtype), weights[t].to(dtype), apply_filter)
            for t in range(a_t.shape[0])
        ]
    )


@pytest.mark.parametrize(
    "t, c, h, w, apply_filter",
    [(4, 7, 17, 23, True), (3, 5, 5, 7, True), (2, 3, 1, 5, True), (2, 3, 2, 2, True), (3, 4, 24, 24, False)],
)
def test_refine_fp32(t, c, h, w, apply_filter):
    g = _gen(4000 + h * w)
    a_t = torch.rand(t, h, w, generator=g) + 0.3 * torch.rand(t, 1, 1, generator=g)
    ctx = torch.rand(c, h, w, generator=g)
    weights = torch.rand(t, c, generator=g)
    out = K.refine(a_t, ctx, weights, apply_filter)
    assert out.shape == (t, h, w) and out.dtype == torch.float32
    ref = _refine_ref(a_t, ctx, weights, apply_filter)
    assert _rel_err(out, ref) <= 1e-5
    assert torch.isfinite(out).all() and out.std() > 0


def test_refine_bf16():
    g = _gen(41)
    t, c, h, w = 3, 6, 17, 23
    a_t = torch.rand(t, h, w, generator=g).to(torch.bfloat16)
    ctx = torch.rand(c, h, w, generator=g).to(torch.bfloat16)
    weights = torch.rand(t, c, generator=g)
    out = K.refine(a_t, ctx, weights, True)
    ref64 = _refine_ref(a_t, ctx, weights, True)
    same_precision = _refine_ref(a_t, ctx, weights.to(torch.bfloat16), True, dtype=torch.bfloat16)
    err = _rel_err(out, ref64)
    assert err <= 2 * _rel_err(same_precision, ref64)
    assert err <= 1e-5


def test_refine_chunked_map():
    """A map larger than one block (the kernels stream it in chunks)."""
    g = _gen(42)
    a_t = torch.rand(2, 70, 61, generator=g)
    ctx = torch.rand(3, 70, 61, generator=g)
    weights = torch.rand(2, 3, generator=g)
    assert _rel_err(K.refine(a_t, ctx, weights, True), _refine_ref(a_t, ctx, weights, True)) <= 1e-5


def test_refine_zero_maps_and_degenerate_weights():
    g = _gen(43)
    h, w = 5, 7
    ctx = torch.rand(3, h, w, generator=g)
    ctx[1] = torch.randint(1, 9, (h, w), generator=g) / 8  # dyadic: the fit below is exact in float32
    a_t = torch.rand(4, h, w, generator=g)
    a_t[0] = 0  # all-zero target: stays zero
    a_t[1] = 2 * ctx[1]  # fully explained by one context map: beta = 2 removes it
    weights = torch.rand(4, 3, generator=g)
    weights[1] = torch.tensor([0.0, 1.0, 0.0])
    weights[2] = 0  # weights sum to 0: ahat = 0, beta = 0
    for apply_filter in (True, False):
        out = K.refine(a_t, ctx, weights, apply_filter)
        assert torch.isfinite(out).all()
        assert out[0].abs().max().item() == 0.0
        assert out[1].abs().max().item() == 0.0
        assert _rel_err(out, _refine_ref(a_t, ctx, weights, apply_filter)) <= 1e-5
    # no context at all
    empty = K.refine(a_t, ctx[:0], weights[:, :0], True)
    assert _rel_err(empty, _refine_ref(a_t, ctx[:0], weights[:, :0], True)) <= 1e-5


def test_refine_constant_windows_give_the_median():
    g = _gen(44)
    h, w = 6, 9
    a_t = torch.full((2, h, w), 0.7)
    a_t[1, :, 5:] = torch.rand(h, 4, generator=g)  # constant on the left, varying on the right
    a_t[1, 0, 0] = 0.0  # a zero in a constant region
    out = K.refine(a_t, torch.zeros(0, h, w), torch.zeros(2, 0), True)
    assert torch.equal(out[0], torch.ones(h, w))  # every window constant: the median, then / max
    assert _rel_err(out, _refine_ref(a_t, torch.zeros(0, h, w), torch.zeros(2, 0), True)) <= 1e-5
    assert not torch.isnan(rank_gaussian_filter(a_t.double())).any()


def test_refine_sorting_network_exhaustive():
    """Every two-valued 3x3 window (the 0/1 principle for the in-register 9-input sorting network): the 512
    patterns side by side in one 3 x 1536 map, so that the centre cell of block j sees exactly pattern j."""
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9)))
    blocks = (1.0 + bits).reshape(512, 3, 3) * torch.linspace(1.0, 2.0, 512)[:, None, None]
    a_t = blocks.permute(1, 0, 2).reshape(1, 3, 512 * 3)
    out = K.refine(a_t, torch.zeros(0, 3, 1536), torch.zeros(1, 0), True)
    assert _rel_err(out, _refine_ref(a_t, torch.zeros(0, 3, 1536), torch.zeros(1, 0), True)) <= 1e-5


def test_refine_validation():
    a_t = torch.rand(2, 4, 5)
    with pytest.raises(ValueError, match="weights"):
        K.refine(a_t, torch.rand(3, 4, 5), torch.rand(2, 2), True)
    with pytest.raises(ValueError, match="grid"):
        K.refine(a_t, torch.rand(3, 5, 4), torch.rand(2, 3), True)
    with pytest.raises(ValueError, match="a_t"):
        K.refine(torch.rand(4, 5), torch.rand(3, 4, 5), torch.rand(2, 3), True)


# ----------------------------------------------------------------------------------- CUDA, realistic sizes

V_REAL, D_REAL = 151_936, 1536


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_gather_logit_lens_realistic(dtype):
    g = torch.Generator(device="cuda").manual_seed(5)
    z = torch.randn(712, D_REAL, device="cuda", generator=g).to(dtype)
    w_u = (torch.randn(V_REAL, D_REAL, device="cuda", generator=g) * 0.02).to(dtype)
    ids = torch.randint(0, V_REAL, (120,), device="cuda", generator=g)
    out = K.gather_logit_lens(z, w_u, ids)
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
    out = K.topk_rankings(h, w_u, k)
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
    assert torch.equal(K.topk_rankings(ties_h, ties_w, k), topk_ranking(ties_h, ties_w, k))


@needs_cuda
def test_cuda_rbo_pairs_realistic():
    g = _gen(7)
    a = _random_rankings(g, 40, 50, 80).cuda()
    b = _random_rankings(g, 90, 50, 80).cuda()
    for variant in ("ext", "truncated", "min"):
        out = K.rbo_pairs(a, b, 0.9, variant)
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
        out = K.refine(a_t, ctx, weights, apply_filter)
        assert _rel_err(out, _refine_ref(a_t, ctx, weights, apply_filter)) <= 1e-5


def test_cancellation_floor_matches_reference():
    from mmx_fast.kernels import refine as _refine_fn  # noqa: F401  (package import check)

    from mmx_fast.reference.arc import CANCELLATION_FLOOR

    mod = sys.modules["mmx_fast.kernels.refine"]
    assert mod.CANCELLATION_FLOOR == CANCELLATION_FLOOR
