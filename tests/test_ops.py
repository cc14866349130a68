"""The fast path's dispatch and its vectorised torch backend against the reference (the oracle).

Realistic shapes (Qwen2-VL-2B): vocabulary 151,936, hidden 1536, canonical grids 17x23 (dynamic resolution)
and 24x24 (LLaVA), three scales, 20 prompt tokens, 50 answer tokens, top_k 50.

Accuracy follows the flash-attention rule: the fast path's error against a float64 reference is at most
twice the error of a plain PyTorch implementation in the inputs' precision, plus a small absolute floor.
Rankings must be equal, not close.
"""

from __future__ import annotations

import importlib
import itertools
import warnings

import pytest
import torch
from helpers import assert_flash_rule, refine_case, refine_reference, rel_err, structured_maps
from hypothesis import given, settings
from hypothesis import strategies as st

from mmx_fast import ops
from mmx_fast.ops import torch_impl

ref_ll = importlib.import_module("mmx_fast.reference.logit_lens")
ref_rbo = importlib.import_module("mmx_fast.reference.rbo")
ref_filters = importlib.import_module("mmx_fast.reference.filters")
ref_arc = importlib.import_module("mmx_fast.reference.arc")
ref_msea = importlib.import_module("mmx_fast.reference.msea")

V, D = 151_936, 1536
N_PROMPT, N_ANSWER, K = 20, 50, 50
N_TEXT = N_PROMPT + N_ANSWER
# Qwen2-VL visual grids of a 640x480 image at scales 0.5, 0.75, 1.0; LLaVA's fixed 24x24 grid.
DYN_GRIDS = ((9, 12), (13, 17), (17, 23))
FIXED_GRID = (24, 24)
FIXED_COVERAGES = ((0.5, 0.5), (0.75, 0.75), (1.0, 1.0))
DTYPES = (torch.float32, torch.bfloat16)


@pytest.fixture(autouse=True)
def _torch_backend_env(monkeypatch):
    """These tests are about the torch path: no ambient MMX_FAST_BACKEND may redirect ``auto``."""
    monkeypatch.delenv("MMX_FAST_BACKEND", raising=False)


@pytest.fixture(scope="module")
def vocab():
    """A realistic unembedding, float32 (930 MB) and bfloat16, made once for the module."""
    g = torch.Generator().manual_seed(1234)
    w32 = torch.randn(V, D, generator=g).mul_(0.02)
    out = {torch.float32: w32, torch.bfloat16: w32.to(torch.bfloat16)}
    yield out
    out.clear()


@pytest.fixture(scope="module")
def text_hidden():
    """Hidden states of the 70 text positions (20 prompt + 50 answer), as the final norm leaves them."""
    g = torch.Generator().manual_seed(99)
    return torch.randn(N_TEXT, D, generator=g)


@pytest.fixture(scope="module")
def ref_rankings(vocab, text_hidden):
    """The reference rankings (materialised logits + stable sort), once per dtype."""
    return {dt: ref_rbo.topk_ranking(text_hidden.to(dt), vocab[dt], K) for dt in DTYPES}


def _visual_hidden(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # a shared direction makes some logits positive and some negative, like real hidden states
    return torch.randn(n, D, generator=g) + 0.5 * torch.randn(1, D, generator=g)


# --------------------------------------------------------------------------------------------------
# Stage A: gather + GEMM
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gather_logit_lens_matches_reference(vocab, dtype):
    w = vocab[dtype]
    n = sum(h * w_ for h, w_ in DYN_GRIDS)  # all three scales' visual tokens in one call
    z = _visual_hidden(7, n).to(dtype)
    g = torch.Generator().manual_seed(3)
    ids = torch.cat(
        [torch.tensor([0, V - 1, 4095, 4096]), torch.randint(0, V, (N_TEXT + 1 - 4,), generator=g)]
    )
    fast = ops.gather_logit_lens(z, w, ids)
    assert fast.shape == (N_TEXT + 1, n) and fast.dtype == torch.float32
    ref64 = ref_ll.logit_lens_maps(z, w, ids, dtype=torch.float64)
    if dtype == torch.float32:
        plain = ref_ll.logit_lens_maps(z, w, ids, dtype=torch.float32)
    else:
        plain = (w[ids] @ z.T).clamp_min(0)  # plain bfloat16 torch
    assert_flash_rule(fast, plain, ref64, 1e-6, f"gather {dtype}")
    assert (fast == 0).any() and (fast > 0).float().mean() > 0.2  # the clamp acts, the maps are not constant
    # ids as a Python list and repeated ids give the same rows
    again = ops.gather_logit_lens(z, w, ids[:5].tolist() + [int(ids[0])])
    torch.testing.assert_close(again, torch.cat([fast[:5], fast[:1]]), rtol=1e-5, atol=1e-5)


def test_gather_logit_lens_checks_arguments(vocab):
    w = vocab[torch.float32][:100]
    z = torch.randn(3, D)
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        ops.gather_logit_lens(z, w, [0, 100])
    with pytest.raises(ValueError, match="share d"):
        ops.gather_logit_lens(torch.randn(3, 7), w, [0])
    with pytest.raises(TypeError, match="integer"):
        ops.gather_logit_lens(z, w, torch.tensor([0.0]))
    assert ops.gather_logit_lens(z, w, []).shape == (0, 3)


# --------------------------------------------------------------------------------------------------
# Stage B: rankings and RBO
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_topk_rankings_equal_reference(vocab, text_hidden, ref_rankings, dtype):
    fast = ops.topk_rankings(text_hidden.to(dtype), vocab[dtype], K)
    assert fast.shape == (N_TEXT, K) and fast.dtype == torch.long
    assert torch.equal(fast, ref_rankings[dtype])
    assert len(set(fast[:, 0].tolist())) > N_TEXT // 2  # different rows rank differently


def test_topk_ties_straddling_tile_boundaries():
    """Exact ties (integer-valued W_U and h, so every dot product is exact in float32) with duplicated
    W_U rows on both sides of the vocab tile boundaries, at the top of the ranking and at the depth-k cut:
    ties must go to the smaller id, as the stable sort does."""
    tile = torch_impl.VOCAB_TILE
    g = torch.Generator().manual_seed(5)
    w = torch.randint(-8, 9, (3 * tile + 777, 64), generator=g).float()
    h = torch.randint(-3, 4, (4, 64), generator=g).float()
    top_ids = [tile - 2, tile - 1, tile, 2 * tile + 5]
    cut_ids = [tile - 3, tile + 1, 2 * tile - 1, 2 * tile, 3 * tile, 3 * tile + 776]
    w[top_ids] = w[torch.argmax(h[0] @ w.T)].clone()
    # the cut group: copies of the row ranked K - 3, so the tied group starts at or above rank K - 3 and,
    # with >= 7 members, must be split by the depth-K cut
    order = torch.sort(h[0] @ w.T, descending=True, stable=True).indices
    w[cut_ids] = w[order[K - 3]].clone()
    cut_value = float(w[cut_ids[0]] @ h[0])
    ref = ref_rbo.topk_ranking(h, w, K)
    fast = ops.topk_rankings(h, w, K)
    assert torch.equal(fast, ref)
    row = fast[0].tolist()
    assert [i for i in row if i in top_ids] == sorted(top_ids)  # the tied group at the top, in id order
    logits0 = h[0] @ w.T
    tied = (logits0 == cut_value).nonzero().flatten().tolist()
    kept = [i for i in tied if i in row]
    assert 0 < len(kept) < len(tied) and kept == tied[: len(kept)]  # the cut splits the tie by id
    assert any(i // tile != j // tile for i in kept for j in tied if j not in kept)  # across tiles


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    v=st.integers(60, 700),
    k=st.integers(1, 60),
    tile=st.sampled_from([7, 50, 64, 333, 4096]),
    levels=st.integers(1, 6),
)
def test_topk_massive_ties_any_tile(seed, v, k, tile, levels):
    """Integer-valued logits (exact in float32) with few distinct values: ties everywhere, across every
    tile boundary and at the cut; every tile size must give the stable sort's answer."""
    k = min(k, v)
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-levels, levels + 1, (v, 8), generator=g).float()
    h = torch.randint(-1, 2, (5, 8), generator=g).float()
    ref = ref_rbo.topk_ranking(h, w, k)
    assert torch.equal(torch_impl.topk_rankings(h, w, k, tile=tile), ref)


def test_topk_tile_keys_signed_zeros_and_nan():
    """The stable sort treats -0.0 == +0.0 and ranks every NaN first; the tile keys must agree (a CPU
    matmul never yields -0.0, other backends can)."""
    logits = torch.tensor(
        [
            [0.0, -0.0, 1.0, -0.0, 0.0, -1.0, -0.0, 0.0],
            [-0.0, -0.0, -2.0, 0.0, float("nan"), 3.0, -float("nan"), 0.0],
            [-1.0, -1.0, -1.0, -0.5, -2.0, -1.0, -0.5, -3.0],
        ]
    )
    ref = torch.sort(logits, dim=1, descending=True, stable=True).indices
    for k in (1, 3, 5, 8):
        keys = torch_impl._tile_keys(logits.clone(), 100, k)
        ids = torch_impl._key_to_id(torch.sort(keys, dim=1, descending=True).values)
        assert torch.equal(ids, ref[:, :k] + 100), k


def test_topk_rankings_checks_arguments():
    w = torch.randn(30, 8)
    for bad in (0, 31, 2.0, True):
        with pytest.raises(ValueError, match="top_k"):
            ops.topk_rankings(torch.randn(2, 8), w, bad)
    with pytest.raises(ValueError, match=r"\[R, d\]"):
        ops.topk_rankings(torch.randn(2, 9), w, 3)


def _overlapping_rankings(n: int, k: int, pool: int, seed: int) -> torch.Tensor:
    """n rankings of depth k drawn from one small pool of ids, so prefixes overlap a lot."""
    ids = torch.randperm(V - K, generator=torch.Generator().manual_seed(0))[:pool]
    g = torch.Generator().manual_seed(seed)
    return torch.stack([ids[torch.randperm(pool, generator=g)[:k]] for _ in range(n)])


@pytest.mark.parametrize("variant", ref_rbo.RBO_VARIANTS)
@pytest.mark.parametrize("p", [0.9, 0.5, 0.99])
def test_rbo_pairs_matches_reference(variant, p):
    a = _overlapping_rankings(N_ANSWER, K, 90, 1)
    b = torch.cat(
        [_overlapping_rankings(N_TEXT - 3, K, 90, 2), a[:2], torch.arange(V - K, V)[None]]
    )  # same, disjoint
    fast = ops.rbo_pairs(a, b, p, variant)
    assert fast.shape == (N_ANSWER, N_TEXT) and fast.dtype == torch.float32
    ref = ref_rbo.rbo(a[:, None, :], b[None, :, :], p, variant)
    torch.testing.assert_close(fast.double(), ref, rtol=0, atol=2e-6)
    assert fast[:, :-3].std() > 0.01  # overlaps differ from pair to pair
    assert (fast[:, -1] == 0).all()  # disjoint lists
    if variant == "ext":
        assert torch.allclose(fast[[0, 1], [N_TEXT - 3, N_TEXT - 2]], torch.ones(2))


def test_rbo_pairs_lists_with_repeated_ids():
    """Not rankings (an id twice in a list): still every matching (i, j) pair counts, as the reference."""
    g = torch.Generator().manual_seed(12)
    a = torch.randint(0, 12, (6, 10), generator=g)
    b = torch.randint(0, 12, (9, 10), generator=g)
    for aa, bb in ((a, b), (a, torch.stack([torch.randperm(12, generator=g)[:10] for _ in range(9)]))):
        for variant in ref_rbo.RBO_VARIANTS:
            ref = ref_rbo.rbo(aa[:, None], bb[None], 0.8, variant)
            torch.testing.assert_close(ops.rbo_pairs(aa, bb, 0.8, variant).double(), ref, rtol=0, atol=2e-6)


def test_rbo_pairs_real_rankings(ref_rankings):
    r = ref_rankings[torch.float32]
    fast = ops.rbo_pairs(r[N_PROMPT:], r, 0.9, "ext")
    ref = ref_rbo.rbo(r[N_PROMPT:, None], r[None], 0.9, "ext")
    torch.testing.assert_close(fast.double(), ref, rtol=0, atol=2e-6)


def test_rbo_pairs_checks_arguments():
    a = torch.randint(0, 9, (2, 4))
    with pytest.raises(ValueError, match="variant='bogus'"):
        ops.rbo_pairs(a, a, 0.9, "bogus")
    with pytest.raises(ValueError, match="rbo_p"):
        ops.rbo_pairs(a, a, 1.0, "ext")
    with pytest.raises(ValueError, match="equal depth"):
        ops.rbo_pairs(a, a[:, :3], 0.9, "ext")
    with pytest.raises(TypeError, match="integer"):
        ops.rbo_pairs(a.float(), a, 0.9, "ext")
    assert ops.rbo_pairs(a[:0], a, 0.9, "ext").shape == (0, 2)


# --------------------------------------------------------------------------------------------------
# Rank Gaussian filter
# --------------------------------------------------------------------------------------------------


def test_sort9_network_sorts_everything():
    """0-1 principle: a comparator network sorts all inputs iff it sorts all 2^9 zero-one inputs."""
    for bits in itertools.product((0, 1), repeat=9):
        v = list(bits)
        for i, j in torch_impl.SORT9_NETWORK:
            if v[i] > v[j]:
                v[i], v[j] = v[j], v[i]
        assert v == sorted(bits)


@pytest.mark.parametrize("grid", [DYN_GRIDS[-1], FIXED_GRID], ids=str)
@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,), ids=str)
def test_rank_gaussian_filter_matches_reference(grid, dtype):
    x = structured_maps(N_ANSWER, grid, 11) - 0.05  # negative cells too: mean <= 0 windows give 0
    x = x.to(dtype)
    fast = ops.rank_gaussian_filter(x)
    assert fast.shape == x.shape and fast.dtype == dtype
    ref64 = ref_filters.rank_gaussian_filter(x.double())
    plain = ref_filters.rank_gaussian_filter(x)  # the reference in the inputs' dtype (float64 inside)
    floor = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2}[dtype]
    assert_flash_rule(fast, plain, ref64, floor, f"filter {dtype}")
    if dtype != torch.bfloat16:
        assert rel_err(fast, ref64) < floor
    assert fast.double().std() > 0.01 and (fast == 0).any()


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (5, 1), (2, 2), (2, 3), (3, 3), (4, 7)])
def test_rank_gaussian_filter_small_grids(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand((3, 2) + shape, generator=g) - 0.2
    x[0, 0] = 0.5  # constant map: the median (0.5) everywhere
    fast = ops.rank_gaussian_filter(x)
    ref = ref_filters.rank_gaussian_filter(x.double())
    torch.testing.assert_close(fast.double(), ref, rtol=0, atol=2e-6)
    assert torch.equal(fast[0, 0], torch.full(shape, 0.5))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    scale=st.sampled_from([1e-30, 1.0, 1e20]),
)
def test_rank_gaussian_filter_random(seed, h, w, scale):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(2, h, w, generator=g) - 0.3) * scale
    x[torch.rand(2, h, w, generator=g) < 0.3] = 0.25 * scale  # repeated values: ties inside windows
    fast = ops.rank_gaussian_filter(x)
    ref = ref_filters.rank_gaussian_filter(x.double())
    assert torch.isfinite(fast).all()
    assert rel_err(fast, ref) < 4e-6 or float(ref.abs().max()) == 0


# --------------------------------------------------------------------------------------------------
# Stage C: refine
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("apply_filter", [True, False], ids=["filter", "nofilter"])
@pytest.mark.parametrize("grid", [DYN_GRIDS[-1], FIXED_GRID], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_refine_matches_reference(grid, dtype, apply_filter):
    a_t, ctx, weights = (x.to(dtype) for x in refine_case(grid, 21, t=N_ANSWER, c_prompt=N_PROMPT))
    fast = ops.refine(a_t, ctx, weights, apply_filter)
    assert fast.shape == a_t.shape and fast.dtype == torch.float32
    ref64 = refine_reference(a_t.double(), ctx.double(), weights.double(), apply_filter)
    plain = refine_reference(a_t, ctx, weights, apply_filter)
    assert_flash_rule(fast, plain, ref64, 1e-5, f"refine {dtype}")
    assert float((fast.double() - ref64).abs().max()) < (2e-5 if dtype == torch.float32 else 1e-2)
    # edge cases are exact
    assert torch.equal(fast[5], torch.zeros(grid)) and torch.equal(fast[8], torch.zeros(grid))
    assert torch.equal(fast[6], torch.ones(grid))
    torch.testing.assert_close(fast[3], ref64[3].float(), rtol=0, atol=2e-6)
    assert torch.isfinite(fast).all() and fast.min() >= 0 and fast.max() <= 1
    peaks = fast.amax(dim=(1, 2))
    assert ((peaks == 1) | (peaks == 0)).all() and fast.std() > 0.05


def test_refine_degenerate_inputs():
    a_t = torch.rand(3, 4, 5)
    ctx = torch.rand(2, 4, 5)
    # no context at all, and negative weight sums: ahat = 0, so the result is normalize(G(a_t))
    expected = ref_filters.normalize_max(ref_filters.rank_gaussian_filter(a_t.double())).float()
    torch.testing.assert_close(ops.refine(a_t, ctx[:0], torch.zeros(3, 0)), expected, rtol=0, atol=2e-6)
    torch.testing.assert_close(ops.refine(a_t, ctx, -torch.ones(3, 2)), expected, rtol=0, atol=2e-6)
    assert ops.refine(a_t[:0], ctx, torch.zeros(0, 2)).shape == (0, 4, 5)
    with pytest.raises(ValueError, match=r"weights \[T, C\] = \[3, 2\]"):
        ops.refine(a_t, ctx, torch.ones(2, 3))
    with pytest.raises(ValueError, match="grid"):
        ops.refine(a_t, torch.rand(2, 5, 4), torch.ones(3, 2))


# --------------------------------------------------------------------------------------------------
# MSEA
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aggregate", ["mean", "max"])
@pytest.mark.parametrize(
    "layout",
    [
        (DYN_GRIDS, ((1.0, 1.0),) * 3, DYN_GRIDS[-1]),
        ((FIXED_GRID,) * 3, FIXED_COVERAGES, FIXED_GRID),
        ((FIXED_GRID,) * 4, FIXED_COVERAGES + ((1.5, 1.5),), FIXED_GRID),
    ],
    ids=["dynamic", "fixed", "fixed-zoom"],
)
def test_msea_aggregate_matches_reference(layout, aggregate):
    grids, coverages, canonical = layout
    g = torch.Generator().manual_seed(4)
    per_scale = [torch.rand(N_TEXT + 1, h, w, generator=g) for h, w in grids]
    fast = ops.msea_aggregate(per_scale, coverages, canonical, aggregate)
    ref = ref_msea.msea_aggregate(per_scale, coverages, canonical, aggregate)
    assert fast.shape == (N_TEXT + 1,) + tuple(canonical)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-6)
    assert fast.std() > 0.01


def test_msea_aggregate_checks_arguments():
    m = [torch.rand(2, 3, 3)]
    with pytest.raises(ValueError, match="aggregate='median'"):
        ops.msea_aggregate(m, [(1, 1)], (3, 3), "median")
    with pytest.raises(ValueError, match="one coverage per scale"):
        ops.msea_aggregate(m, [(1, 1), (1, 1)], (3, 3))
    with pytest.raises(ValueError, match="same M"):
        ops.msea_aggregate(m + [torch.rand(3, 3, 3)], [(1, 1), (1, 1)], (3, 3))


# --------------------------------------------------------------------------------------------------
# All stages chained, as the pipeline runs them
# --------------------------------------------------------------------------------------------------


def test_stages_chained_match_reference(vocab, text_hidden, ref_rankings):
    w = vocab[torch.float32]
    ids = torch.cat(
        [ref_rankings[torch.float32][:, 0], torch.tensor([int(torch.randint(0, V, ()))])]
    )  # + "k0"
    zs = [_visual_hidden(30 + s, h * w_) for s, (h, w_) in enumerate(DYN_GRIDS)]
    cov = ((1.0, 1.0),) * 3

    def chain(gather, msea, rank, rbo_fn, refine_fn):
        per_scale = [gather(z, ids).reshape(-1, *grid) for z, grid in zip(zs, DYN_GRIDS)]
        maps = msea(per_scale, cov, DYN_GRIDS[-1])
        r = rbo_fn(rank[N_PROMPT:], rank)
        weights = torch.cat([(1 - r), torch.ones(N_ANSWER, 1)], 1)
        allowed = torch.arange(N_TEXT + 1)[None, :] < (N_PROMPT + torch.arange(N_ANSWER))[:, None]
        allowed[:, -1] = True
        return refine_fn(maps[N_PROMPT:N_TEXT], maps, (weights * allowed).float())

    fast_rank = ops.topk_rankings(text_hidden, w, K)
    fast = chain(
        lambda z, i: ops.gather_logit_lens(z, w, i),
        lambda ps, c, g: ops.msea_aggregate(ps, c, g),
        fast_rank,
        lambda a, b: ops.rbo_pairs(a, b, 0.9, "ext"),
        ops.refine,
    )
    ref = chain(
        lambda z, i: ref_ll.logit_lens_maps(z, w, i),
        lambda ps, c, g: ref_msea.msea_aggregate(ps, c, g),
        ref_rankings[torch.float32],
        lambda a, b: ref_rbo.rbo(a[:, None], b[None], 0.9, "ext"),
        lambda a, c, wt: refine_reference(a, c, wt, True),
    )
    assert torch.equal(fast_rank, ref_rankings[torch.float32])
    torch.testing.assert_close(fast, ref, rtol=0, atol=2e-5)


# --------------------------------------------------------------------------------------------------
# No stage is a constant
# --------------------------------------------------------------------------------------------------


def test_no_stage_returns_a_constant():
    """Each stage on two different inputs: outputs must differ from each other and vary within."""
    g = torch.Generator().manual_seed(8)
    w = torch.randn(3000, 32, generator=g)

    def runs(seed):
        g = torch.Generator().manual_seed(seed)
        z, h = torch.randn(40, 32, generator=g), torch.randn(6, 32, generator=g)
        maps = torch.rand(6, 5, 7, generator=g)
        rk = ops.topk_rankings(h, w, 20)
        return {
            "gather": ops.gather_logit_lens(z, w, [1, 2, 3]),
            "topk": rk,
            "rbo": ops.rbo_pairs(rk, torch.cat([rk[:3], _overlapping_rankings(4, 20, 30, seed)]), 0.9, "ext"),
            "refine": ops.refine(maps[:3], maps[3:], torch.rand(3, 3, generator=g)),
            "filter": ops.rank_gaussian_filter(maps),
            "msea": ops.msea_aggregate([maps, maps[:, :3, :4]], [(1, 1), (1, 1)], (5, 7)),
        }

    one, two = runs(1), runs(2)
    for name in one:
        assert not torch.equal(one[name], two[name]), name
        assert one[name].double().std() > 0, name


# --------------------------------------------------------------------------------------------------
# Backend resolution
# --------------------------------------------------------------------------------------------------


def _cpu_auto() -> str:
    """What ``auto`` means on CPU: the native kernels when they build (MMX_FAST_NATIVE != 0), else torch."""
    from mmx_fast import native

    return "native" if native.available() else "torch"


def test_resolve_backend_names(monkeypatch):
    monkeypatch.delenv("MMX_FAST_BACKEND", raising=False)
    assert ops.resolve_backend("auto", "cpu") == _cpu_auto()
    assert ops.resolve_backend("torch", torch.device("cpu")) == "torch"
    assert ops.resolve_backend("TORCH", None) == "torch"
    with pytest.raises(ValueError, match="backend='cuda-fast'.*auto, triton, torch, native"):
        ops.resolve_backend("cuda-fast", "cpu")
    with pytest.raises(ValueError, match="backend='bogus'"):
        ops.gather_logit_lens(torch.randn(2, 4), torch.randn(5, 4), [1], backend="bogus")
    for call in (
        lambda: ops.topk_rankings(torch.randn(2, 4), torch.randn(5, 4), 2, backend="bogus"),
        lambda: ops.rbo_pairs(
            torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long), backend="bogus"
        ),
        lambda: ops.refine(torch.rand(1, 2, 2), torch.rand(1, 2, 2), torch.ones(1, 1), backend="bogus"),
        lambda: ops.rank_gaussian_filter(torch.rand(2, 2), backend="bogus"),
        lambda: ops.msea_aggregate([torch.rand(1, 2, 2)], [(1, 1)], (2, 2), backend="bogus"),
    ):
        with pytest.raises(ValueError, match="bogus"):
            call()


def test_resolve_backend_env_var(monkeypatch):
    monkeypatch.setenv("MMX_FAST_BACKEND", "torch")
    assert ops.resolve_backend("auto", "cpu") == "torch"
    monkeypatch.setenv("MMX_FAST_BACKEND", "warp-speed")
    with pytest.raises(ValueError, match="MMX_FAST_BACKEND='warp-speed'"):
        ops.resolve_backend("auto", "cpu")
    assert ops.resolve_backend("torch", "cpu") == "torch"  # an explicit backend overrides the variable
    monkeypatch.setenv("MMX_FAST_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="MMX_FAST_BACKEND='triton'.*TRITON_INTERPRET"):
        ops.resolve_backend("auto", "cpu")
    assert ops.resolve_backend("torch", "cpu") == "torch"
    monkeypatch.setenv("MMX_FAST_BACKEND", "auto")
    assert ops.resolve_backend("auto", "cpu") == _cpu_auto()


def test_auto_without_native_is_torch(monkeypatch):
    monkeypatch.delenv("MMX_FAST_BACKEND", raising=False)
    monkeypatch.setattr(ops, "_native_module", lambda: None)
    assert ops.resolve_backend("auto", "cpu") == "torch"


def test_resolve_backend_triton_on_cpu(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton'.*TRITON_INTERPRET=1"):
        ops.resolve_backend("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ops.resolve_backend("triton", "cpu") == "triton"


def test_native_backend_falls_back_to_torch(monkeypatch):
    monkeypatch.setattr(ops, "_native_module", lambda: None)
    monkeypatch.setattr(ops, "_warned", set())
    with pytest.warns(RuntimeWarning, match="native"):
        assert ops.resolve_backend("native", "cpu") == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        assert ops.resolve_backend("native", "cpu") == "torch"
        x = torch.rand(2, 5, 6)
        assert torch.equal(ops.rank_gaussian_filter(x, backend="native"), torch_impl.rank_gaussian_filter(x))


def _kernels_or_skip():
    if not ops._triton_installed():
        pytest.skip("triton is not installed")
    try:
        pkg = ops._load_kernels_package()
        for name in ("gather_logit_lens", "topk_rankings", "rbo_pairs", "refine"):
            getattr(pkg, name)
    except Exception as err:  # the kernels are someone else's work in progress
        pytest.skip(f"mmx_fast.kernels is not usable: {err!r}")


def test_triton_backend_dispatches_on_tiny_shapes(monkeypatch):
    """Through the dispatch with backend='triton' (the interpreter on CPU): tiny shapes only."""
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    _kernels_or_skip()
    g = torch.Generator().manual_seed(0)
    w, z, h = (
        torch.randn(300, 32, generator=g),
        torch.randn(20, 32, generator=g),
        torch.randn(3, 32, generator=g),
    )
    torch.testing.assert_close(
        ops.gather_logit_lens(z, w, [3, 299, 0], backend="triton"),
        ops.gather_logit_lens(z, w, [3, 299, 0], backend="torch"),
    )
    rk = ops.topk_rankings(h, w, 8, backend="triton")
    assert torch.equal(rk, ref_rbo.topk_ranking(h, w, 8))
    torch.testing.assert_close(
        ops.rbo_pairs(rk, rk, 0.9, "ext", backend="triton"),
        ops.rbo_pairs(rk, rk, 0.9, "ext", backend="torch"),
        atol=1e-6,
        rtol=0,
    )
    a_t, ctx = torch.rand(2, 5, 7, generator=g), torch.rand(3, 5, 7, generator=g)
    wts = torch.rand(2, 3, generator=g)
    torch.testing.assert_close(
        ops.refine(a_t, ctx, wts, backend="triton"),
        ops.refine(a_t, ctx, wts, backend="torch"),
        atol=2e-6,
        rtol=0,
    )
