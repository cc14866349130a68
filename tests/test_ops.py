"""The fast path's dispatch and its vectorised torch backend against the reference (the oracle).

Realistic shapes (Qwen2-VL-2B): vocabulary 151,936, hidden 1536, canonical grids 17x23 (dynamic resolution)
and 24x24 (LLaVA), three scales, 20 prompt tokens, 50 answer tokens, top_k 50.

Accuracy follows the flash-attention rule: the fast path's error against a float64 reference is at most
twice the error of a plain PyTorch implementation in the inputs' precision, plus a small absolute floor.
Rankings must be equal, not close.
"""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
from helpers import (
    DYN_GRIDS,
    N_ANSWER,
    N_PROMPT,
    N_TEXT,
    TOP_K,
    V,
    overlapping_rankings,
    refine_reference,
    visual_hidden,
)

from mmx_fast import kernels_loader, ops

ref_ll = importlib.import_module("mmx_fast.reference.logit_lens")
torch_rankings = importlib.import_module("mmx_fast.ops.rankings")  # the torch backend of each stage
torch_refine = importlib.import_module("mmx_fast.ops.refine")
ref_rbo = importlib.import_module("mmx_fast.reference.rankings")
ref_filters = importlib.import_module("mmx_fast.reference.refine")
ref_arc = importlib.import_module("mmx_fast.reference.refine")
ref_msea = importlib.import_module("mmx_fast.reference.msea")

K = TOP_K


@pytest.fixture(autouse=True)
def _torch_backend_env(monkeypatch):
    """These tests are about the torch path: no ambient MMX_FAST_BACKEND may redirect ``auto``."""
    monkeypatch.delenv("MMX_FAST_BACKEND", raising=False)


# --------------------------------------------------------------------------------------------------
# Stage A: gather + GEMM
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Stage B: rankings and RBO
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Rank Gaussian filter
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Stage C: refine
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# MSEA
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# All stages chained, as the pipeline runs them
# --------------------------------------------------------------------------------------------------


def test_stages_chained_match_reference(vocab, text_hidden, ref_rankings):
    w = vocab[torch.float32]
    ids = torch.cat(
        [ref_rankings[torch.float32][:, 0], torch.tensor([int(torch.randint(0, V, ()))])]
    )  # + "k0"
    zs = [visual_hidden(30 + s, h * w_) for s, (h, w_) in enumerate(DYN_GRIDS)]
    cov = ((1.0, 1.0),) * 3

    def chain(gather, msea, rank, rbo_fn, refine_fn):
        per_scale = [gather(z, ids).reshape(-1, *grid) for z, grid in zip(zs, DYN_GRIDS)]
        maps = msea(per_scale, cov, DYN_GRIDS[-1])
        r = rbo_fn(rank[N_PROMPT:], rank)
        weights = torch.cat([(1 - r), torch.ones(N_ANSWER, 1)], 1)
        allowed = torch.arange(N_TEXT + 1)[None, :] < (N_PROMPT + torch.arange(N_ANSWER))[:, None]
        allowed[:, -1] = True
        return refine_fn(maps[N_PROMPT:N_TEXT], maps, (weights * allowed).float())

    fast_rank = ops.rankings_topk(text_hidden, w, K)
    fast = chain(
        lambda z, i: ops.logit_lens(z, w, i),
        lambda ps, c, g: ops.msea(ps, c, g),
        fast_rank,
        lambda a, b: ops.rankings_rbo(a, b, 0.9, "ext"),
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
        rk = ops.rankings_topk(h, w, 20)
        return {
            "gather": ops.logit_lens(z, w, [1, 2, 3]),
            "topk": rk,
            "rbo": ops.rankings_rbo(
                rk, torch.cat([rk[:3], overlapping_rankings(4, 20, 30, seed)]), 0.9, "ext"
            ),
            "refine": ops.refine(maps[:3], maps[3:], torch.rand(3, 3, generator=g)),
            "filter": ops.refine_filter(maps),
            "msea": ops.msea([maps, maps[:, :3, :4]], [(1, 1), (1, 1)], (5, 7)),
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
        ops.logit_lens(torch.randn(2, 4), torch.randn(5, 4), [1], backend="bogus")
    for call in (
        lambda: ops.rankings_topk(torch.randn(2, 4), torch.randn(5, 4), 2, backend="bogus"),
        lambda: ops.rankings_rbo(
            torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long), backend="bogus"
        ),
        lambda: ops.refine(torch.rand(1, 2, 2), torch.rand(1, 2, 2), torch.ones(1, 1), backend="bogus"),
        lambda: ops.refine_filter(torch.rand(2, 2), backend="bogus"),
        lambda: ops.msea([torch.rand(1, 2, 2)], [(1, 1)], (2, 2), backend="bogus"),
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
        assert torch.equal(ops.refine_filter(x, backend="native"), torch_refine.refine_filter_torch(x))


def _kernels_or_skip():
    if not kernels_loader.triton_installed():
        pytest.skip("triton is not installed")
    try:
        kernels = kernels_loader.triton_kernels()
        for name in ("logit_lens", "rankings_topk", "rankings_rbo", "refine"):
            getattr(kernels, name)
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
        ops.logit_lens(z, w, [3, 299, 0], backend="triton"),
        ops.logit_lens(z, w, [3, 299, 0], backend="torch"),
    )
    rk = ops.rankings_topk(h, w, 8, backend="triton")
    assert torch.equal(rk, ref_rbo.topk_ranking(h, w, 8))
    torch.testing.assert_close(
        ops.rankings_rbo(rk, rk, 0.9, "ext", backend="triton"),
        ops.rankings_rbo(rk, rk, 0.9, "ext", backend="torch"),
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
