"""Fuzzing every fast stage against the reference with hypothesis: random shapes, dtypes and value regimes
(ties, all-zero and constant maps, huge and tiny magnitudes). 1,000 examples per stage on the vectorised
torch path and on the native C++ kernels; a few dozen through the Triton interpreter (slow)."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmx_fast import ops
from mmx_fast.reference import (
    logit_lens_maps,
    msea_aggregate,
    normalize_max,
    rank_gaussian_filter,
    rbo,
    refine_one,
    topk_ranking,
)

N_TORCH = int(os.environ.get("MMX_FUZZ_EXAMPLES", "1000"))
N_TRITON = int(os.environ.get("MMX_FUZZ_TRITON_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=N_TORCH, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
FUZZ_TRITON = settings(
    max_examples=N_TRITON, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
REGIMES = ["normal", "ties", "zeros", "constant", "huge", "tiny", "sparse"]


def values(shape, regime, gen, dtype=torch.float32):
    if regime == "normal":
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
    elif regime == "ties":
        x = torch.randint(-2, 3, shape, generator=gen).to(torch.float64)
    elif regime == "zeros":
        x = torch.zeros(shape, dtype=torch.float64)
    elif regime == "constant":
        x = torch.full(shape, 0.7, dtype=torch.float64)
    elif regime == "huge":
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 1e15
    elif regime == "tiny":
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 1e-15
    else:
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * (torch.rand(shape, generator=gen) < 0.2)
    return x.to(dtype)


def rel_err(got, want):
    scale = want.abs().max().clamp_min(1e-30)
    return float((got.double() - want.double()).abs().max() / scale) if want.numel() else 0.0


def triton_ok():
    try:
        return ops.resolve_backend("triton", "cpu") == "triton"
    except (ValueError, ImportError):
        return False


def native_ok():
    from mmx_fast import native

    return native.available()


NATIVE = pytest.param("native", marks=pytest.mark.skipif(not native_ok(), reason="native kernels not built"))
BACKENDS = [
    "torch",
    NATIVE,
    pytest.param("triton", marks=pytest.mark.skipif(not triton_ok(), reason="triton unusable")),
]


def _settings(backend):
    return FUZZ_TRITON if backend == "triton" else FUZZ


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzz_gather_logit_lens(backend):
    @_settings(backend)
    @given(
        n=st.integers(1, 40),
        m=st.integers(1, 9),
        d=st.integers(1, 48),
        v=st.integers(1, 300),
        regime=st.sampled_from(REGIMES),
        bf16=st.booleans(),
        seed=st.integers(0, 2**31 - 1),
    )
    def run(n, m, d, v, regime, bf16, seed):
        g = torch.Generator().manual_seed(seed)
        dtype = torch.bfloat16 if bf16 else torch.float32
        z = values((n, d), regime, g, dtype)
        w = values((v, d), "normal" if regime in ("zeros", "constant") else regime, g, dtype)
        ids = torch.randint(0, v, (m,), generator=g)
        got = ops.logit_lens(z, w, ids, backend=backend)
        want = logit_lens_maps(z.double(), w.double(), ids, dtype=torch.float64)
        assert got.shape == (m, n) and got.dtype == torch.float32
        assert not torch.isnan(got).any() and (got >= 0).all()
        # 1e-5, or the flash-attention rule where float32 itself cannot do better (cancellation in a dot
        # product of huge values: the plain float32 GEMM's own error exceeds 1e-5 there)
        plain = logit_lens_maps(z, w, ids, dtype=torch.float32)
        assert rel_err(got, want) <= max(1e-5, 2 * rel_err(plain, want))

    run()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzz_topk_rankings(backend):
    @_settings(backend)
    @given(
        r=st.integers(1, 6),
        d=st.integers(1, 24),
        v=st.integers(1, 400),
        k=st.integers(1, 64),
        regime=st.sampled_from(["normal", "ties", "zeros", "huge", "tiny", "sparse"]),
        seed=st.integers(0, 2**31 - 1),
    )
    def run(r, d, v, k, regime, seed):
        k = min(k, v)
        g = torch.Generator().manual_seed(seed)
        # integer-valued inputs keep every logit exact, so ties are real ties for both paths
        h = values((r, d), "ties" if regime == "ties" else "normal", g)
        w = values((v, d), regime, g)
        if regime not in ("ties", "zeros"):  # float logits: compare with the reference in float32
            got = ops.rankings_topk(h, w, k, backend=backend)
            want = topk_ranking(h, w, k)
            logits = h @ w.T
            # equal where no float32 near-tie makes the order ambiguous
            gv = torch.gather(logits, 1, got)
            wv = torch.gather(logits, 1, want)
            assert torch.allclose(gv, wv, rtol=1e-5, atol=1e-30 + 1e-6 * float(logits.abs().max()))
        else:
            got = ops.rankings_topk(h, w, k, backend=backend)
            assert torch.equal(got, topk_ranking(h, w, k))
        assert got.shape == (r, k) and got.dtype == torch.long
        assert all(len(set(row)) == k for row in got.tolist())

    run()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzz_rbo_pairs(backend):
    @_settings(backend)
    @given(
        t=st.integers(1, 8),
        c=st.integers(1, 8),
        k=st.integers(1, 64),
        pool=st.integers(0, 80),
        p=st.floats(0.05, 0.99),
        variant=st.sampled_from(["ext", "truncated", "min"]),
        seed=st.integers(0, 2**31 - 1),
    )
    def run(t, c, k, pool, p, variant, seed):
        g = torch.Generator().manual_seed(seed)
        n = k + pool  # a small pool makes the lists overlap a lot
        a = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(t)])
        b = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(c)])
        got = ops.rankings_rbo(a, b, p, variant, backend=backend)
        want = rbo(a[:, None, :], b[None, :, :], p=p, variant=variant)
        assert got.shape == (t, c)
        assert float((got.double() - want).abs().max()) <= 1e-5
        assert (got >= -1e-6).all() and (got <= 1 + 1e-6).all()

    run()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzz_refine(backend):
    @_settings(backend)
    @given(
        t=st.integers(1, 5),
        c=st.integers(0, 6),
        h=st.integers(1, 12),
        w=st.integers(1, 12),
        regime=st.sampled_from(REGIMES),
        weights=st.sampled_from(["random", "zeros", "ones"]),
        filt=st.booleans(),
        seed=st.integers(0, 2**31 - 1),
    )
    def run(t, c, h, w, regime, weights, filt, seed):
        g = torch.Generator().manual_seed(seed)
        a = values((t, h, w), regime, g).abs()
        ctx = values((c, h, w), regime, g).abs()
        if weights == "random":
            wt = torch.rand(t, c, generator=g)
        else:
            wt = torch.zeros(t, c) if weights == "zeros" else torch.ones(t, c)
        got = ops.refine(a, ctx, wt, apply_filter=filt, backend=backend)
        want = torch.stack([refine_one(a[i].double(), ctx.double(), wt[i].double(), filt) for i in range(t)])
        assert got.shape == (t, h, w) and not torch.isnan(got).any()
        assert float((got.double() - want).abs().max()) <= 1e-4
        assert (got >= 0).all() and (got <= 1 + 1e-6).all()

    run()


@pytest.mark.parametrize("backend", ["torch", NATIVE])
def test_fuzz_rank_gaussian_filter(backend):
    @FUZZ
    @given(
        b=st.integers(1, 3),
        h=st.integers(1, 14),
        w=st.integers(1, 14),
        regime=st.sampled_from(REGIMES),
        seed=st.integers(0, 2**31 - 1),
    )
    def run(b, h, w, regime, seed):
        g = torch.Generator().manual_seed(seed)
        x = values((b, h, w), regime, g).abs()
        got = ops.refine_filter(x, backend=backend)
        want = rank_gaussian_filter(x.double())
        assert not torch.isnan(got).any()
        assert rel_err(got, want) <= 1e-5

    run()


def test_fuzz_msea_aggregate():
    @FUZZ
    @given(
        m=st.integers(1, 4),
        hc=st.integers(1, 10),
        wc=st.integers(1, 10),
        scales=st.lists(st.sampled_from([0.5, 0.75, 1.5, 2.0]), max_size=3, unique=True),
        fixed=st.booleans(),
        aggregate=st.sampled_from(["mean", "max"]),
        regime=st.sampled_from(REGIMES),
        seed=st.integers(0, 2**31 - 1),
    )
    def run(m, hc, wc, scales, fixed, aggregate, regime, seed):
        g = torch.Generator().manual_seed(seed)
        per_scale, coverages = [values((m, hc, wc), regime, g).abs()], [(1.0, 1.0)]
        for s in scales:
            hs = hc if fixed else max(1, round(hc * s))
            ws = wc if fixed else max(1, round(wc * s))
            per_scale.append(values((m, hs, ws), regime, g).abs())
            coverages.append((s, s) if fixed else (1.0, 1.0))
        got = ops.msea(per_scale, coverages, (hc, wc), aggregate, backend="torch")
        want = msea_aggregate([p.double() for p in per_scale], coverages, (hc, wc), aggregate)
        assert got.shape == (m, hc, wc) and not torch.isnan(got).any()
        assert rel_err(got, want) <= 1e-5

    run()


def test_normalize_max_fuzz():
    @FUZZ
    @given(
        h=st.integers(1, 9),
        w=st.integers(1, 9),
        regime=st.sampled_from(REGIMES),
        seed=st.integers(0, 2**31 - 1),
    )
    def run(h, w, regime, seed):
        x = values((2, h, w), regime, torch.Generator().manual_seed(seed)).abs()
        got = ops.refine_normalize(x)
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got.double(), normalize_max(x.double()), atol=1e-6, rtol=1e-6)

    run()
