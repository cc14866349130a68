"""The reference equations against brute-force statements of their definitions."""

import math

import numpy as np
import pytest
import torch

from mmx_fast.reference import (
    arc_weights,
    interference_map,
    least_squares_beta,
    msea_aggregate,
    normalize_max,
    rank_gaussian_filter,
    rbo,
    refine_one,
    to_canonical,
    topk_ranking,
)
from mmx_fast.reference.tam import tam_rank_gaussian_filter


# --- RBO: Webber, Moffat & Zobel (2010), stated with Python sets --------------------------------------
def brute_rbo(s, t, p, variant):
    k = len(s)
    x = [len(set(s[:d]) & set(t[:d])) for d in range(1, k + 1)]
    trunc = (1 - p) * sum(p ** (d - 1) * x[d - 1] / d for d in range(1, k + 1))
    if variant == "truncated":
        return trunc
    if variant == "ext":  # Eq. 32, equal lengths
        return x[k - 1] / k * p**k + (1 - p) / p * sum(x[d - 1] / d * p**d for d in range(1, k + 1))
    xk = x[k - 1]  # Eq. 11
    return (1 - p) / p * (sum((x[d - 1] - xk) * p**d / d for d in range(1, k + 1)) - xk * math.log(1 - p))


def random_ranking(rng, k, vocab):
    return rng.choice(vocab, size=k, replace=False).tolist()


@pytest.mark.parametrize("variant", ["ext", "truncated", "min"])
@pytest.mark.parametrize("p", [0.5, 0.9, 0.98])
def test_rbo_matches_definition(variant, p):
    rng = np.random.default_rng(0)
    for k in (1, 3, 10, 50):
        for _ in range(20):
            a = random_ranking(rng, k, 80)
            # b shares a random part of a, in shuffled order, plus fresh ids
            b = list(a)
            rng.shuffle(b)
            keep = rng.integers(0, k + 1)
            fresh = [i for i in range(80, 200) if i not in a][: k - keep]
            b = b[:keep] + fresh
            rng.shuffle(b)
            got = float(rbo(torch.tensor(a), torch.tensor(b), p=p, variant=variant))
            assert got == pytest.approx(brute_rbo(a, b, p, variant), abs=1e-12)
            assert -1e-12 <= got <= 1 + 1e-12


def test_rbo_identical_and_disjoint():
    a = torch.arange(50)
    assert float(rbo(a, a, 0.9, "ext")) == pytest.approx(1.0, abs=1e-12)
    assert float(rbo(a, a, 0.9, "truncated")) == pytest.approx(1 - 0.9**50, abs=1e-12)
    for v in ("ext", "truncated", "min"):
        assert float(rbo(a, a + 100, 0.9, v)) == pytest.approx(0.0, abs=1e-12)


def test_rbo_batched_equals_one_by_one():
    g = torch.Generator().manual_seed(1)
    a = torch.stack([torch.randperm(60, generator=g)[:20] for _ in range(12)]).reshape(3, 4, 20)
    b = torch.stack([torch.randperm(60, generator=g)[:20] for _ in range(12)]).reshape(3, 4, 20)
    batched = rbo(a, b, 0.9)
    for i in range(3):
        for j in range(4):
            assert float(batched[i, j]) == pytest.approx(float(rbo(a[i, j], b[i, j], 0.9)), abs=1e-15)
    # broadcasting one target against many contexts
    many = rbo(a.reshape(12, 20), b[0, 0], 0.9)
    assert many.shape == (12,)
    assert float(many[5]) == pytest.approx(float(rbo(a.reshape(12, 20)[5], b[0, 0], 0.9)))


def test_rbo_bad_inputs():
    a = torch.arange(5)
    with pytest.raises(ValueError, match="rbo_p"):
        rbo(a, a, p=1.0)
    with pytest.raises(ValueError, match="rbo_p"):
        rbo(a, a, p=float("nan"))
    with pytest.raises(ValueError, match="variant"):
        rbo(a, a, variant="extended")
    with pytest.raises(ValueError, match="equal depth"):
        rbo(a, torch.arange(4))
    with pytest.raises(TypeError):
        rbo(a.float(), a.float())


def test_topk_ranking_stable_ties():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(300, 16, generator=g)
    w[200] = w[17]  # exact ties: ids 17 and 200 have equal logits everywhere
    w[250] = w[17]
    h = torch.randn(5, 16, generator=g)
    h[0] = w[17] * 10  # make the tied ids the top of row 0
    r = topk_ranking(h, w, 10)
    assert r[0, :3].tolist() == [17, 200, 250]
    logits = h @ w.T
    for row in range(5):
        vals = logits[row, r[row]]
        assert torch.all(vals[:-1] >= vals[1:])
        # nothing outside the list beats its last element
        mask = torch.ones(300, dtype=torch.bool)
        mask[r[row]] = False
        assert logits[row, mask].max() <= vals[-1]
    with pytest.raises(ValueError, match="top_k"):
        topk_ranking(h, w, 301)


# --- rank Gaussian filter: a direct per-cell loop (numpy reflect, population std) ---------------------
def loop_filter(x):
    h, w = x.shape
    pad = np.pad(x, 1, mode="reflect")
    out = np.zeros_like(x)
    r = np.arange(9) - 4
    for i in range(h):
        for j in range(w):
            v = np.sort(pad[i : i + 3, j : j + 3].ravel())
            mean = v.mean()
            if mean <= 0:
                continue
            sigma = v.std() / mean
            if sigma == 0:
                out[i, j] = v[4]
                continue
            k = np.exp(-(r**2) / (2 * sigma**2))
            out[i, j] = (v * (k / k.sum())).sum()
    return out


@pytest.mark.parametrize("shape", [(17, 23), (5, 7), (2, 2), (3, 1), (1, 6)])
def test_rank_gaussian_filter_matches_loop(shape):
    rng = np.random.default_rng(3)
    x = rng.random(shape) * 3
    x[rng.random(shape) < 0.3] = 0  # sparse maps like real ones after ReLU
    got = rank_gaussian_filter(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, loop_filter(x), rtol=1e-12, atol=1e-12)


def test_rank_gaussian_filter_zeros_constants_batch():
    z = torch.zeros(4, 5, 6)
    assert torch.equal(rank_gaussian_filter(z), z)
    c = torch.full((6, 7), 0.25, dtype=torch.float64)
    out = rank_gaussian_filter(c)
    assert not torch.isnan(out).any()
    assert torch.allclose(out, c)  # constant positive windows give their median
    x = torch.rand(3, 9, 11, dtype=torch.float64)
    batched = rank_gaussian_filter(x)
    for i in range(3):
        assert torch.equal(batched[i], rank_gaussian_filter(x[i]))
    assert not torch.equal(batched, x)


def test_tam_numpy_filter_bitwise_equals_tam_loop():
    """The vectorised numpy filter used by the ``tam`` preset keeps TAM's dtypes bit for bit."""
    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float64):
        x = rng.random((13, 19)).astype(dtype)
        x[x < 0.2] = 0
        pad = np.pad(x, 1, mode="reflect")
        ref = np.zeros_like(x)
        ax = np.arange(9) - 4
        for i in range(13):
            for j in range(19):
                v = np.sort(pad[i : i + 3, j : j + 3].flatten())
                mean = v.mean()
                if mean > 0:
                    sigma = v.std() / mean
                    k = np.exp(-(ax**2) / (2 * sigma**2))
                    k = k / np.sum(k)
                    ref[i, j] = (v * k).sum()
        got = tam_rank_gaussian_filter(x)
        assert got.dtype == x.dtype
        assert np.array_equal(got, ref)


# --- beta and ARC --------------------------------------------------------------------------------------
def test_beta_is_the_least_squares_minimiser():
    g = torch.Generator().manual_seed(5)
    for _ in range(10):
        a = torch.rand(7, 9, generator=g, dtype=torch.float64)
        ahat = torch.rand(7, 9, generator=g, dtype=torch.float64)
        beta = float(least_squares_beta(a, ahat))
        grid = torch.linspace(beta - 1, beta + 1, 20001, dtype=torch.float64)
        loss = ((a[None] - grid[:, None, None] * ahat[None]) ** 2).sum((1, 2))
        assert abs(float(grid[loss.argmin()]) - beta) <= 1e-4
    zero = torch.zeros(7, 9, dtype=torch.float64)
    assert float(least_squares_beta(a, zero)) == 0.0


def test_interference_map_weights():
    maps = torch.stack([torch.full((3, 4), 1.0), torch.full((3, 4), 3.0)])
    assert torch.allclose(interference_map(maps, torch.tensor([1.0, 1.0])), torch.full((3, 4), 2.0))
    assert torch.allclose(interference_map(maps, torch.tensor([0.0, 2.0])), torch.full((3, 4), 3.0))
    assert torch.equal(interference_map(maps, torch.zeros(2)), torch.zeros(3, 4))


def test_arc_identical_ranking_gets_weight_zero_and_unrelated_weight_one():
    a = torch.arange(50)
    assert float(arc_weights(rbo(a, a, 0.9))) == pytest.approx(0.0, abs=1e-12)
    assert float(arc_weights(rbo(a, a + 1000, 0.9))) == pytest.approx(1.0, abs=1e-12)


def test_refine_one_subtracts_unrelated_context():
    g = torch.Generator().manual_seed(6)
    obj = torch.zeros(8, 8, dtype=torch.float64)
    obj[2:5, 2:5] = 1.0
    background = torch.rand(8, 8, generator=g, dtype=torch.float64) * (obj == 0)  # disjoint support
    a_t = obj + background
    out = refine_one(a_t, background[None], torch.ones(1), apply_filter=False)
    assert torch.allclose(out, normalize_max(obj), atol=1e-9)
    # a related context (weight 0) leaves the map alone (up to normalisation)
    same = refine_one(a_t, background[None], torch.zeros(1), apply_filter=False)
    assert torch.allclose(same, normalize_max(a_t))


def test_normalize_max():
    x = torch.tensor([[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = normalize_max(x)
    assert torch.allclose(out[0], x[0] / 4)
    assert torch.equal(out[1], torch.zeros(2, 2))


# --- MSEA ----------------------------------------------------------------------------------------------
def test_msea_dynamic_resizes_whole_map():
    m = torch.arange(12, dtype=torch.float64).reshape(1, 3, 4)
    placed, covered = to_canonical(m, (1.0, 1.0), (6, 8))
    assert placed.shape == (1, 6, 8) and covered.all()
    assert torch.allclose(placed, torch.nn.functional.interpolate(m[None], size=(6, 8), mode="bilinear")[0])


def test_msea_fixed_size_shrunk_uses_top_left_part_only():
    m = torch.zeros(1, 8, 8, dtype=torch.float64)
    m[0, :4, :4] = torch.arange(16, dtype=torch.float64).reshape(4, 4)  # the pasted image
    m[0, 4:, :] = 99  # canvas: must be ignored
    m[0, :, 4:] = 99
    placed, covered = to_canonical(m, (0.5, 0.5), (8, 8))
    assert covered.all()
    assert placed.max() < 99
    assert torch.allclose(
        placed, torch.nn.functional.interpolate(m[:, :4, :4][None], size=(8, 8), mode="bilinear")[0]
    )


def test_msea_fixed_size_enlarged_covers_top_left_of_canonical():
    m = torch.ones(1, 8, 8, dtype=torch.float64) * 5
    placed, covered = to_canonical(m, (2.0, 2.0), (8, 8))
    assert covered[:4, :4].all() and not covered[4:, :].any() and not covered[:, 4:].any()
    assert torch.allclose(placed[0, :4, :4], torch.full((4, 4), 5.0, dtype=torch.float64))


def test_msea_mean_and_max():
    s1 = torch.full((1, 4, 4), 1.0, dtype=torch.float64)
    s2 = torch.full((1, 4, 4), 3.0, dtype=torch.float64)
    mean = msea_aggregate([s1, s2], [(1.0, 1.0), (2.0, 2.0)], (4, 4), "mean")
    # top-left 2x2 covered by both scales, the rest by scale 1 only
    assert torch.allclose(mean[0, :2, :2], torch.full((2, 2), 2.0, dtype=torch.float64))
    assert torch.allclose(mean[0, 2:, :], torch.full((2, 4), 1.0, dtype=torch.float64))
    mx = msea_aggregate([s1, s2], [(1.0, 1.0), (2.0, 2.0)], (4, 4), "max")
    assert torch.allclose(mx[0, :2, :2], torch.full((2, 2), 3.0, dtype=torch.float64))
    assert torch.allclose(mx[0, 2:, :], torch.full((2, 4), 1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="aggregate"):
        msea_aggregate([s1], [(1.0, 1.0)], (4, 4), "median")


def test_base_map_makes_the_first_target_well_defined():
    """With no prompt context, target 0's interference map is A_0 (w_0 = 1); without A_0 there is nothing
    to subtract and the map is just A_t, filtered and normalised."""
    from mmx_fast.config import ExplainConfig
    from mmx_fast.reference.oracle import arc_reference

    g = torch.Generator().manual_seed(7)
    a_t = torch.rand(2, 6, 5, generator=g)
    base = torch.rand(6, 5, generator=g)
    ranks = torch.stack([torch.randperm(100, generator=g)[:50] for _ in range(2)])
    empty_maps, empty_ranks = torch.zeros(0, 6, 5), torch.zeros(0, 50, dtype=torch.long)
    cfg = ExplainConfig()
    with_base = arc_reference(a_t, empty_maps, base, empty_ranks, ranks, cfg)
    assert torch.allclose(with_base[0], refine_one(a_t[0], base[None], torch.ones(1)))
    without = arc_reference(a_t, empty_maps, None, empty_ranks, ranks, cfg.with_(base="none"))
    assert torch.allclose(without[0], normalize_max(rank_gaussian_filter(a_t[0])))
    assert not torch.allclose(with_base[0], without[0])
    assert not torch.isnan(with_base).any() and not torch.isnan(without).any()
