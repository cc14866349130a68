"""Stage ``rankings`` (docs/design.md §1.3): top-k rankings of ``h @ W_U.T`` and the RBO of every (target,
context) pair, on every backend, against the reference (the oracle).

- ``test_rankings*_every_backend``: parametrised over the backends (torch, native, triton-interpreter, and
  triton-cuda when a GPU is present; a backend that cannot run here is skipped), fresh random inputs of odd
  shapes, float32 and bfloat16, with flash-attention's rule as the assertion: the fast error against a
  float64 reference is at most twice the error of a plain same-precision torch implementation (integer
  rankings: identical).
- the dispatch layer (``mmx_fast.ops``) and its torch backend at realistic shapes, edge cases and argument
  checks; the Triton launchers directly (``test_triton_*``, tiny shapes under the interpreter); the C++
  ops directly (``test_native_*``).
"""

from __future__ import annotations

import importlib

import pytest
import torch
from helpers import (
    DTYPES,
    N_ANSWER,
    N_PROMPT,
    N_TEXT,
    STAGE_BACKENDS,
    TOP_K,
    V,
    assert_flash_rule,
    backend_or_skip,
    gen,
    kernels_or_none,
    overlapping_rankings,
    random_rankings,
    refine_case,
    scattered_rankings,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from mmx_fast import native, ops
from mmx_fast.reference.rankings import rbo, topk_ranking

ref_rbo = importlib.import_module("mmx_fast.reference.rankings")
torch_rankings = importlib.import_module("mmx_fast.ops.rankings")  # the torch backend of each stage

K = TOP_K
KERN = kernels_or_none()  # mmx_fast.kernels (the Triton launchers), None without triton


pytestmark = pytest.mark.usefixtures("stage_backend_env")


def _rbo(a, b, p=0.9, variant="ext"):
    """The Triton RBO launcher with the variant's weights passed in (validated by ``rbo_weights``)."""
    return KERN.rankings_rbo(a, b, ref_rbo.rbo_weights(a.shape[1] if a.dim() == 2 else 1, p, variant))


# --------------------------------------------------------------------------------------------------
# Every backend: the flash-attention rule
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", STAGE_BACKENDS)
def test_rankings_every_backend(backend, dtype):
    """Fresh random inputs of odd shapes. Rankings are integers: identical to the reference's. RBO: the
    flash-attention rule against the float64 reference (the plain implementation: the reference rounded to
    float32)."""
    be, dev = backend_or_skip(backend)
    g = gen(1301)
    r, d, v, k = 19, 37, 203, 13
    h = torch.randn(r, d, generator=g).to(dtype)
    w = torch.randn(v, d, generator=g).to(dtype)
    ranks = ops.rankings_topk(h.to(dev), w.to(dev), k, backend=be).cpu()
    assert ranks.dtype == torch.int64 and torch.equal(ranks, ref_rbo.topk_ranking(h, w, k))
    for variant in ref_rbo.RBO_VARIANTS:
        a, b = ranks[7:], ranks
        fast = ops.rankings_rbo(a.to(dev), b.to(dev), 0.85, variant, backend=be).cpu()
        ref64 = ref_rbo.rbo(a[:, None], b[None], 0.85, variant)
        assert fast.shape == (r - 7, r) and fast.dtype == torch.float32
        assert_flash_rule(fast, ref64.float(), ref64, 1e-6, f"rbo {backend} {dtype} {variant}")


# --------------------------------------------------------------------------------------------------
# Edge cases, argument checks, realistic shapes (dispatch, torch, Triton launchers, C++ ops)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_topk_rankings_equal_reference(vocab, text_hidden, ref_rankings, dtype):
    fast = ops.rankings_topk(text_hidden.to(dtype), vocab[dtype], K)
    assert fast.shape == (N_TEXT, K) and fast.dtype == torch.long
    assert torch.equal(fast, ref_rankings[dtype])
    assert len(set(fast[:, 0].tolist())) > N_TEXT // 2  # different rows rank differently


def test_topk_ties_straddling_tile_boundaries():
    """Exact ties (integer-valued W_U and h, so every dot product is exact in float32) with duplicated
    W_U rows on both sides of the vocab tile boundaries, at the top of the ranking and at the depth-k cut:
    ties must go to the smaller id, as the stable sort does."""
    tile = torch_rankings.VOCAB_TILE
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
    fast = ops.rankings_topk(h, w, K)
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
    assert torch.equal(torch_rankings.rankings_topk_torch(h, w, k, tile=tile), ref)


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
        keys = torch_rankings._tile_keys(logits.clone(), 100, k)
        ids = torch_rankings._key_to_id(torch.sort(keys, dim=1, descending=True).values)
        assert torch.equal(ids, ref[:, :k] + 100), k


def test_topk_rankings_checks_arguments():
    w = torch.randn(30, 8)
    for bad in (0, 31, 2.0, True):
        with pytest.raises(ValueError, match="top_k"):
            ops.rankings_topk(torch.randn(2, 8), w, bad)
    with pytest.raises(ValueError, match=r"\[R, d\]"):
        ops.rankings_topk(torch.randn(2, 9), w, 3)


@pytest.mark.parametrize("variant", ref_rbo.RBO_VARIANTS)
@pytest.mark.parametrize("p", [0.9, 0.5, 0.99])
def test_rbo_pairs_matches_reference(variant, p):
    a = overlapping_rankings(N_ANSWER, K, 90, 1)
    b = torch.cat(
        [overlapping_rankings(N_TEXT - 3, K, 90, 2), a[:2], torch.arange(V - K, V)[None]]
    )  # same, disjoint
    fast = ops.rankings_rbo(a, b, p, variant)
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
            torch.testing.assert_close(
                ops.rankings_rbo(aa, bb, 0.8, variant).double(), ref, rtol=0, atol=2e-6
            )


def test_rbo_pairs_real_rankings(ref_rankings):
    r = ref_rankings[torch.float32]
    fast = ops.rankings_rbo(r[N_PROMPT:], r, 0.9, "ext")
    ref = ref_rbo.rbo(r[N_PROMPT:, None], r[None], 0.9, "ext")
    torch.testing.assert_close(fast.double(), ref, rtol=0, atol=2e-6)


def test_rbo_pairs_checks_arguments():
    a = torch.randint(0, 9, (2, 4))
    with pytest.raises(ValueError, match="variant='bogus'"):
        ops.rankings_rbo(a, a, 0.9, "bogus")
    with pytest.raises(ValueError, match="rbo_p"):
        ops.rankings_rbo(a, a, 1.0, "ext")
    with pytest.raises(ValueError, match="equal depth"):
        ops.rankings_rbo(a, a[:, :3], 0.9, "ext")
    with pytest.raises(TypeError, match="integer"):
        ops.rankings_rbo(a.float(), a, 0.9, "ext")
    assert ops.rankings_rbo(a[:0], a, 0.9, "ext").shape == (0, 2)


@pytest.mark.parametrize(
    "r, v, d, k, dtype, splits",
    [
        (5, 1000, 48, 50, torch.float32, None),
        (20, 1000, 64, 3, torch.bfloat16, None),
        (37, 1000, 48, 50, torch.float32, 3),  # several vocabulary splits + the merge kernel
    ],
)
def test_triton_topk_rankings_random(r, v, d, k, dtype, splits):
    g = gen(2000 + r + k)
    h = torch.randn(r, d, generator=g).to(dtype)
    w_u = torch.randn(v, d, generator=g).to(dtype)
    out = KERN.rankings_topk(h, w_u, k, num_splits=splits)
    assert out.shape == (r, k) and out.dtype == torch.int64
    assert torch.equal(out, topk_ranking(h, w_u, k))
    assert len({tuple(row) for row in out.tolist()}) > 1  # rows differ: not a constant


@pytest.mark.parametrize("splits", [None, 2])
def test_triton_topk_rankings_exact_ties(splits):
    g = gen(21)
    # small integers: every logit is exact in float32 whatever the summation order, and many are equal
    h = torch.randint(-2, 3, (9, 40), generator=g).float()
    h[3] = 0  # every logit 0: the ranking is 0, 1, 2, ...
    w_u = torch.randint(-1, 2, (1000, 40), generator=g).float()
    w_u[600:] = w_u[:400]  # duplicate rows: exact ties across tiles
    w_u[7] = w_u[900]
    out = KERN.rankings_topk(h, w_u, 50, num_splits=splits)
    assert torch.equal(out, topk_ranking(h, w_u, 50))
    assert torch.equal(out[3], torch.arange(50))


def test_triton_topk_rankings_negative_and_small_vocab():
    g = gen(22)
    h = torch.randn(3, 16, generator=g)
    w_u = -torch.rand(20, 16, generator=g) * h[0].sign()  # row 0: every logit negative
    for k in (1, 20):
        assert torch.equal(KERN.rankings_topk(h, w_u, k), topk_ranking(h, w_u, k))
    with pytest.raises(ValueError, match="k=21"):
        KERN.rankings_topk(h, w_u, 21)
    with pytest.raises(ValueError, match="k=65"):
        KERN.rankings_topk(torch.randn(2, 8), torch.randn(100, 8), 65)


@pytest.mark.parametrize("k, p", [(50, 0.9), (3, 0.5)])
def test_triton_rbo_pairs(k, p):
    g = gen(3000 + k)
    a = random_rankings(g, 5, k, int(1.6 * k) + 2)
    b = random_rankings(g, 7, k, int(1.6 * k) + 2)
    b[0] = a[0]  # identical lists
    b[1] = a[1].flip(0)  # same ids, reversed
    b[2] = torch.arange(10_000, 10_000 + k)  # disjoint
    for variant in ("ext", "truncated", "min"):
        out = _rbo(a, b, p, variant)
        ref = rbo(a[:, None, :], b[None, :, :], p, variant)
        assert out.shape == (5, 7) and out.dtype == torch.float32
        assert (out.double() - ref).abs().max().item() <= 1e-6
        assert out[:, 2].abs().max().item() == 0.0
    ext = _rbo(a, b, p, "ext")
    assert abs(ext[0, 0].item() - 1.0) <= 1e-6
    assert ext.std() > 0


def test_triton_rbo_pairs_validation():
    a = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="variant"):
        _rbo(a, a, 0.9, "max")
    with pytest.raises(ValueError, match="rbo_p"):
        _rbo(a, a, 1.0, "ext")
    with pytest.raises(ValueError, match="depths"):
        _rbo(a, torch.zeros(2, 4, dtype=torch.long), 0.9, "ext")
    with pytest.raises(ValueError, match="k=65"):
        _rbo(torch.zeros(1, 65, dtype=torch.long), torch.zeros(1, 65, dtype=torch.long), 0.9, "ext")
    assert _rbo(a[:0], a, 0.9, "ext").shape == (0, 2)


@pytest.mark.parametrize(
    "h_dtype,w_dtype",
    [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)],
    ids=["f32", "bf16", "f32-h-bf16-w"],
)
@pytest.mark.parametrize("tile", [0, 100, 1024])
def test_native_topk_rankings_equal_reference(h_dtype, w_dtype, tile):
    g = torch.Generator().manual_seed(7)
    h = torch.randn(13, 97, generator=g).to(h_dtype)
    w = (torch.randn(3001, 97, generator=g) * 0.05).to(w_dtype)  # not a multiple of any tile
    ref = ref_rbo.topk_ranking(h, w, K)
    got = native.rankings_topk(h, w, K, tile=tile)
    assert got.shape == (13, K) and got.dtype == torch.int64
    assert torch.equal(got, ref)
    assert len(set(got[:, 0].tolist())) > 6  # rows rank differently


@pytest.mark.parametrize("tile", [0, 7, 64, 333])
@pytest.mark.parametrize("k", [1, 13, 50, 64])
def test_native_topk_exact_ties_nan_and_zeros(tile, k):
    """Integer-valued h and W_U (every logit exact in float32 whatever the summation order) with few levels:
    ties everywhere, duplicated W_U rows across tile boundaries, a row of zeros in h (every logit 0: ids
    0..k-1), NaN logits (ranked first, like torch.sort), a vocabulary that is not a multiple of the tile."""
    g = torch.Generator().manual_seed(k * 1000 + tile)
    v = 701
    w = torch.randint(-3, 4, (v, 16), generator=g).float()
    h = torch.randint(-1, 2, (6, 16), generator=g).float()
    h[2] = 0
    w[[5, 6, 69, 70, 400, 700]] = w[3].clone()  # duplicate rows straddling tiles
    w[[10, 333]] = float("nan")
    for wd in (torch.float32, torch.bfloat16):  # small integers are exact in bfloat16 too
        ww = w.to(wd)
        ref = ref_rbo.topk_ranking(h, ww, k)
        got = native.rankings_topk(h, ww, k, tile=tile)
        assert torch.equal(got, ref), (wd, tile, k)
    assert torch.equal(
        got[2], torch.tensor([10, 333] + [i for i in range(k) if i not in (10, 333)][: k - 2])[:k]
    )


def test_native_topk_rankings_signed_zeros():
    """-0.0 and +0.0 are equal logits (ties to the smaller id); constructed so the float32 GEMM yields -0.0."""
    h = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    w = torch.tensor([[0.0, 0.0], [-0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    ref = ref_rbo.topk_ranking(h, w, 5)
    assert torch.equal(native.rankings_topk(h, w, 5), ref)


def test_native_non_contiguous_inputs():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(40, 777, generator=g).T[::2]  # [389, 40], strided rows
    h = torch.randn(40, 5, generator=g).T  # [5, 40], column-major
    for wd in (torch.float32, torch.bfloat16):
        assert torch.equal(
            native.rankings_topk(h, w.to(wd)[::1], 9, tile=64), ref_rbo.topk_ranking(h, w.to(wd), 9)
        )
    a, b = scattered_rankings(8, 12, 30, 1), scattered_rankings(6, 12, 30, 2)
    torch.testing.assert_close(
        native.rankings_rbo(a.T.contiguous().T, b[:, :], 0.9, "ext").double(),
        ref_rbo.rbo(a[:, None], b[None], 0.9, "ext"),
        rtol=0,
        atol=2e-6,
    )
    a_t, ctx, weights = refine_case((9, 11), 3)
    got = native.refine(a_t.transpose(1, 2).contiguous().transpose(1, 2), ctx, weights.T.contiguous().T)
    torch.testing.assert_close(got, native.refine(a_t, ctx, weights), rtol=0, atol=0)


def test_native_topk_rankings_k_equals_vocab_and_empty_rows():
    g = torch.Generator().manual_seed(3)
    h, w = torch.randn(4, 9, generator=g), torch.randn(37, 9, generator=g)
    assert torch.equal(native.rankings_topk(h, w, 37, tile=8), ref_rbo.topk_ranking(h, w, 37))
    assert native.rankings_topk(h[:0], w, 5).shape == (0, 5)
    with pytest.raises(RuntimeError, match="top_k=38"):
        native.rankings_topk(h, w, 38)


@pytest.mark.parametrize("variant", ref_rbo.RBO_VARIANTS)
@pytest.mark.parametrize("p", [0.9, 0.5, 0.99])
def test_native_rbo_pairs_match_reference(variant, p):
    a = scattered_rankings(23, K, 80, 1)
    b = torch.cat([scattered_rankings(31, K, 80, 2), a[:2], torch.arange(10**7, 10**7 + K)[None]])
    got = native.rankings_rbo(a, b, p, variant)
    assert got.shape == (23, 34) and got.dtype == torch.float32
    ref = ref_rbo.rbo(a[:, None], b[None], p, variant)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=2e-6)
    assert got[:, :-3].std() > 0.01
    assert (got[:, -1] == 0).all()  # disjoint
    if variant == "ext":
        assert torch.allclose(got[[0, 1], [31, 32]], torch.ones(2))  # identical lists


@pytest.mark.parametrize("k", [1, 2, 17, 64, 100])
def test_native_rbo_pairs_depths_and_int_dtypes(k):
    a = scattered_rankings(5, k, k + 9, 10 + k).to(torch.int32)
    b = scattered_rankings(7, k, k + 9, 20 + k)
    for variant in ref_rbo.RBO_VARIANTS:
        ref = ref_rbo.rbo(a.long()[:, None], b[None], 0.8, variant)
        torch.testing.assert_close(native.rankings_rbo(a, b, 0.8, variant).double(), ref, rtol=0, atol=2e-6)


def test_native_rbo_pairs_lists_with_repeated_ids():
    """Not rankings (ids repeated in a list): every matching (i, j) pair counts, as in the reference."""
    g = torch.Generator().manual_seed(12)
    a = torch.randint(0, 12, (6, 10), generator=g)
    b = torch.randint(0, 12, (9, 10), generator=g)
    uniq = torch.stack([torch.randperm(12, generator=g)[:10] for _ in range(9)])
    for aa, bb in ((a, b), (a, uniq), (uniq[:4], b)):
        for variant in ref_rbo.RBO_VARIANTS:
            ref = ref_rbo.rbo(aa[:, None], bb[None], 0.8, variant)
            torch.testing.assert_close(
                native.rankings_rbo(aa, bb, 0.8, variant).double(), ref, rtol=0, atol=2e-6
            )


def test_native_rbo_pairs_arguments():
    a = torch.randint(0, 9, (2, 4))
    assert native.rankings_rbo(a[:0], a, 0.9, "ext").shape == (0, 2)
    with pytest.raises(RuntimeError, match="variant='bogus'"):
        native.rankings_rbo(a, a, 0.9, "bogus")
    with pytest.raises(RuntimeError, match="rbo_p"):
        native.rankings_rbo(a, a, 1.0, "ext")


# --------------------------------------------------------------------------------------------------
# Certified mixed precision (rankings_precision="certified-bf16"; docs/design.md §1.3, §5)
# --------------------------------------------------------------------------------------------------


class _Spy:
    """The exact fallback pass, counting its calls and rows: a certified call that never reaches it
    produced its rankings from the bfloat16 pass."""

    def __init__(self):
        self.calls, self.rows = 0, 0

    def __call__(self, h, w_u, k):
        self.calls += 1
        self.rows += h.shape[0]
        return torch_rankings.rankings_topk_torch(h, w_u, k)


def _certified(h, w, k, z=None, spy=None):
    s = None if z is None else z.to(torch.float32).sum(0)
    return torch_rankings.rankings_certified_torch(h, w, k, s, spy or _Spy())


def _assert_certified_equal(h, w, k, z=None, expect_fallback=None, expect_base_fallback=None):
    """Certified rankings (and k0) equal the float32 reference's; optionally assert whether the exact
    fallback ran (rows) and whether the base id fell back."""
    spy = _Spy()
    before = dict(torch_rankings.CERTIFY_STATS)
    ranks, k0 = _certified(h, w, k, z, spy)
    stats = {key: torch_rankings.CERTIFY_STATS[key] - before[key] for key in before}
    assert torch.equal(ranks, topk_ranking(h, w, k))
    if z is not None:
        from mmx_fast.reference.rankings import base_vocab_id

        assert k0 == base_vocab_id(z, w)
    assert stats["exact_rows"] == 0  # the bf16 pass ran (the vocabulary is large enough)
    assert stats["fallback_rows"] == spy.rows or (spy.rows >= stats["fallback_rows"] > 0)
    if expect_fallback is not None:
        assert (stats["fallback_rows"] > 0) == expect_fallback, stats
    if expect_base_fallback is not None:
        assert (stats["base_fallbacks"] > 0) == expect_base_fallback, stats
    return stats


@settings(max_examples=12, deadline=None)
@given(
    r=st.integers(1, 90),
    d=st.sampled_from([7, 37, 64, 129]),
    v=st.integers(600, 3000),
    k=st.sampled_from([1, 5, 13, 50]),
    wdt=st.sampled_from([torch.float32, torch.bfloat16]),
    hdt=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_certified_equals_float32_fuzzed(r, d, v, k, wdt, hdt, seed):
    """Fuzzed shapes (one row, row groups above 64 rows, odd d), float32 and bfloat16 W_U and h: the same
    rankings and k0 as the float32 reference, from the bfloat16 pass (typical data never falls back)."""
    g = gen(seed)
    w = (torch.randn(v, d, generator=g) * 0.02).to(wdt)
    h = torch.randn(r, d, generator=g).to(hdt)
    z = torch.randn(9, d, generator=g).to(hdt)
    _assert_certified_equal(h, w, k, z, expect_fallback=False, expect_base_fallback=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_certified_realistic_shape_no_fallback(vocab, text_hidden, ref_rankings, dtype):
    """Qwen2-VL-2B's W_U shape: identical to the float32 rankings, no row falls back, and the public entry
    point (``precision="certified-bf16"``) gives the same."""
    before = dict(torch_rankings.CERTIFY_STATS)
    fast = ops.rankings_topk(text_hidden.to(dtype), vocab[dtype], K, precision="certified-bf16")
    assert torch.equal(fast, ref_rankings[dtype])
    assert torch_rankings.CERTIFY_STATS["calls"] == before["calls"] + 1
    assert torch_rankings.CERTIFY_STATS["fallback_rows"] == before["fallback_rows"]
    assert torch_rankings.CERTIFY_STATS["exact_rows"] == before["exact_rows"]


def test_certified_near_ties_and_duplicated_rows():
    """Near-ties below bfloat16's resolution (rows one float32 ulp apart), exact ties (duplicated W_U rows,
    at the top and straddling the depth-k cut): the float32 order, ties to the smaller id."""
    g = gen(21)
    v, d, k = 2500, 64, 13
    w = torch.randn(v, d, generator=g) * 0.02
    h = torch.randn(5, d, generator=g)
    order = torch.sort(h[0] @ w.T, descending=True, stable=True).indices
    top, cut = order[0], order[k - 2]
    w[[7, 900, 2499]] = w[top].clone()  # exact ties at the top
    w[[3, 1200, 1201, 2000]] = w[cut].clone()  # exact ties straddling the cut
    for i, j in enumerate((11, 600, 1500, 2498)):  # near-ties: one ulp up or down in one coordinate
        w[j] = w[top].clone()
        w[j, i] = torch.nextafter(w[j, i], torch.tensor(float("inf") if i % 2 else float("-inf")))
    _assert_certified_equal(h, w, k, torch.randn(4, d, generator=g))
    # integer-valued data: every float32 score exact, many exact ties
    w = torch.randint(-4, 5, (v, d), generator=g).float()
    h = torch.randint(-2, 3, (6, d), generator=g).float()
    _assert_certified_equal(h, w, k, torch.randint(-1, 2, (3, d), generator=g).float())


@pytest.mark.parametrize("crowd_size, falls_back", [(200, False), (800, True)])
def test_certified_adversarial_rows_fall_back(crowd_size, falls_back):
    """A row whose top scores are ``crowd_size`` W_U rows equal up to perturbations far below bfloat16's
    resolution: the bfloat16 pass cannot tell them apart, so the k-th float32 score cannot clear the bound
    with the first 2k + 32 candidates; the second tier (4x as many) certifies a crowd of 200, a crowd of 800
    runs the exact pass (counted). The other rows stay certified; the rankings equal the reference's."""
    g = gen(22)
    v, d, k = 3000, 64, 50
    w = torch.randn(v, d, generator=g) * 0.02
    base = torch.randn(d, generator=g) * 0.2
    crowd = torch.randperm(v, generator=g)[:crowd_size]
    w[crowd] = base + torch.randn(crowd_size, d, generator=g) * 1e-6
    h = torch.randn(6, d, generator=g)
    h -= (h @ base / (base @ base))[:, None] * base + base  # the crowd at the bottom of every row...
    h[2] = base * 10  # ...but row 2, which ranks it first
    stats = _assert_certified_equal(h, w, k, expect_fallback=falls_back)
    assert stats["tier2_rows"] == 1 and stats["fallback_rows"] == int(falls_back)
    # the base id: the crowd at the bottom (argmin) of W_U @ sum z
    z = -torch.stack([base, base]) * 5
    _assert_certified_equal(h[:1], w, k, z, expect_base_fallback=True)


@pytest.mark.parametrize("scale", [1e-22, 1e-12, 1e12, 1e19], ids=str)
def test_certified_huge_and_tiny_magnitudes(scale):
    """Scores near the float32 underflow / overflow thresholds (products of 1e19 overflow to inf, of
    1e-22 are subnormal): the same rankings as the float32 reference, certified or fallen back."""
    g = gen(23)
    w = torch.randn(1500, 32, generator=g) * scale
    h = torch.randn(4, 32, generator=g) * scale
    _assert_certified_equal(h, w, 9, torch.randn(3, 32, generator=g) * scale)


def test_certified_non_finite_rows_fall_back():
    g = gen(24)
    w = torch.randn(1500, 32, generator=g)
    h = torch.randn(4, 32, generator=g)
    h[1, 3] = float("nan")
    h[2, 0] = float("inf")
    stats = _assert_certified_equal(h, w, 7, expect_fallback=True)
    assert stats["fallback_rows"] == 2
    w[100, 5] = float("nan")  # a NaN in W_U: nothing can be certified
    stats = _assert_certified_equal(h, w, 7, expect_fallback=True)
    assert stats["fallback_rows"] == 4


def test_certified_cache_follows_in_place_changes():
    """The bfloat16 copy of W_U is cached per tensor and rebuilt when the tensor is modified in place."""
    g = gen(25)
    w = torch.randn(2000, 48, generator=g)
    h = torch.randn(3, 48, generator=g)
    _assert_certified_equal(h, w, 10)
    w[torch.sort(h[0] @ w.T).indices[:20]] *= -5  # the former bottom rows become the top
    _assert_certified_equal(h, w, 10, expect_fallback=False)


def test_certified_small_vocabulary_runs_exact():
    """Fewer than 4 vocabulary rows per candidate: the exact pass runs (counted as exact rows)."""
    g = gen(26)
    w = torch.randn(250, 16, generator=g)  # 72 candidates for k = 20: 250 < 4 * 73
    h = torch.randn(3, 16, generator=g)
    before = torch_rankings.CERTIFY_STATS["exact_rows"]
    ranks, _ = _certified(h, w, 20)
    assert torch.equal(ranks, topk_ranking(h, w, 20))
    assert torch_rankings.CERTIFY_STATS["exact_rows"] == before + 3


def test_rankings_topk_base_every_precision():
    from mmx_fast.reference.rankings import base_vocab_id

    g = gen(27)
    w = torch.randn(4000, 40, generator=g) * 0.02
    h = torch.randn(8, 40, generator=g)
    z = torch.randn(5, 40, generator=g)
    for precision in ("auto", "certified-bf16", "float32"):
        ranks, k0 = ops.rankings_topk_base(h, w, 11, z, backend="torch", precision=precision)
        assert torch.equal(ranks, topk_ranking(h, w, 11)) and k0 == base_vocab_id(z, w)
        ranks, k0 = ops.rankings_topk_base(h[:0], w, 1, z, backend="torch", precision=precision)
        assert ranks.shape == (0, 1) and k0 == base_vocab_id(z, w)


def test_rankings_precision_is_validated():
    from mmx_fast import ExplainConfig

    with pytest.raises(ValueError, match=r"rankings_precision='bf16'.*certified-bf16"):
        ExplainConfig(rankings_precision="bf16")
    with pytest.raises(ValueError, match=r"rankings_precision='fp64'.*float32"):
        ops.resolve_rankings_precision("fp64")
    with pytest.raises(ValueError, match=r"rankings_precision='x'"):
        ops.rankings_topk(torch.randn(2, 4), torch.randn(9, 4), 3, precision="x")
    assert ops.resolve_rankings_precision("auto", "cuda") == "float32"
    with pytest.warns(RuntimeWarning, match="CPU tensors only"):
        ops._warned.discard("certified-gpu")
        assert ops.resolve_rankings_precision("certified-bf16", "cuda") == "float32"
    assert ops.resolve_rankings_precision("float32", "cpu") == "float32"
    assert ops.resolve_rankings_precision("auto", "cpu", 32064, 50) == "float32"  # too few rows per candidate
    if ops._cpu_has_bf16_matmul():
        assert ops.resolve_rankings_precision("auto", "cpu", 151936, 50) == "certified-bf16"


def test_explain_certified_equals_float32_and_uses_bf16_pass():
    """End to end on a tiny Qwen2-VL: certified and float32 stage B give the same maps, and the certified
    run went through the bfloat16 pass (rows counted, none exact, none fallen back)."""
    import numpy as np
    from PIL import Image

    from mmx_fast import ExplainConfig, explain_fast
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model("qwen2_vl", seed=0)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8))
    out = {}
    for precision in ("certified-bf16", "float32"):
        before = dict(torch_rankings.CERTIFY_STATS)
        cfg = ExplainConfig(method="msea-arc", rankings_precision=precision)
        out[precision] = explain_fast(model, processor, img, "What is here?", answer="A red car.", config=cfg)
        delta = {key: torch_rankings.CERTIFY_STATS[key] - before[key] for key in before}
        if precision == "certified-bf16":
            assert delta["calls"] == 1 and delta["rows"] > 0 and delta["base_calls"] == 1
            assert delta["exact_rows"] == 0 and delta["fallback_rows"] == 0
        else:
            assert delta["calls"] == 0
    assert torch.equal(out["certified-bf16"].maps, out["float32"].maps)


def test_certified_accumulation_probe(monkeypatch):
    """The guard on the bound's assumption: this CPU's bfloat16 GEMM accumulates in float32; a GEMM that
    does not (simulated) makes the certified path run the exact pass, with a warning."""
    assert torch_rankings._accumulates_in_float32(1536, torch.device("cpu"))
    g = gen(28)
    w = torch.randn(2000, 24, generator=g)
    h = torch.randn(3, 24, generator=g)
    monkeypatch.setitem(torch_rankings._ACCUMULATION_PROBE, (24, "cpu"), False)
    monkeypatch.setattr(torch_rankings, "_WARNED", set())
    before = torch_rankings.CERTIFY_STATS["exact_rows"]
    with pytest.warns(RuntimeWarning, match="does not accumulate in float32"):
        ranks, _ = _certified(h, w, 5)
    assert torch.equal(ranks, topk_ranking(h, w, 5))
    assert torch_rankings.CERTIFY_STATS["exact_rows"] == before + 3


def test_certified_cache_is_freed_with_w_u():
    import gc

    w = torch.randn(2000, 16)
    _certified(torch.randn(2, 16), w, 5)
    assert any(hit[0]() is w for hit in torch_rankings._UNEMBEDDING_CACHE.values())
    del w
    gc.collect()
    assert not torch_rankings._UNEMBEDDING_CACHE
