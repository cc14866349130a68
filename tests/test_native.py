"""The native C++ kernels (``csrc/``, ``torch.ops.mmx_fast.*``, wrappers in :mod:`mmx_fast.native`) against
the reference (the oracle), plus thread-count independence, ``torch.compile``, the fake / CUDA registrations
and the forced-off / failed-build fallbacks.

The extension is compiled on first use (about 15 s on 2 cores). Where it cannot be built, these tests skip
with the compiler's reason, except in CI (``CI=true``), where they must run and a failed build fails.
``MMX_FAST_NATIVE=0`` in the environment skips them (deliberately disabled).

Accuracy follows the flash-attention rule (DESIGN 4): the native error against a float64 reference is at
most twice the error of the plain reference run in the inputs' precision, plus a small absolute floor.
Rankings must be equal, not close.
"""

from __future__ import annotations

import importlib
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import assert_flash_rule, refine_case, refine_reference, rel_err, structured_maps

from mmx_fast import native
from mmx_fast.ops import torch_impl

ref_rbo = importlib.import_module("mmx_fast.reference.rbo")
ref_filters = importlib.import_module("mmx_fast.reference.filters")
ref_arc = importlib.import_module("mmx_fast.reference.arc")

ROOT = Path(__file__).resolve().parents[1]
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
K = 50
DTYPES = (torch.float32, torch.bfloat16)


# Tests of the switches and fallbacks run in subprocesses and need no build here.
_NO_BUILD_NEEDED = {
    "test_forced_off_is_unavailable_and_callers_fall_back",
    "test_failed_build_warns_once_and_forced_on_raises",
    "test_sources_are_found",
}


@pytest.fixture(scope="module")
def _build_error():
    """Build / load the extension once for the module: None when loaded, else why it is not."""
    if os.environ.get(native.ENV_VAR, "auto").strip().lower() in ("0", "off", "false", "no"):
        return f"native kernels disabled by {native.ENV_VAR}=0"
    try:
        native.load()
    except RuntimeError as err:
        if CI:
            pytest.fail(f"CI=true but the native kernels could not be built: {err}")
        return f"native C++ kernels cannot be built here (a C++ compiler is needed): {err}"
    return None


@pytest.fixture(autouse=True)
def _needs_native(request, _build_error):
    if _build_error is not None and request.node.originalname not in _NO_BUILD_NEEDED:
        pytest.skip(_build_error)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full, capture_output=True, text=True
    )


# --------------------------------------------------------------------------------------------------
# Stage B1: top-k rankings
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "h_dtype,w_dtype",
    [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)],
    ids=["f32", "bf16", "f32-h-bf16-w"],
)
@pytest.mark.parametrize("tile", [0, 100, 1024])
def test_topk_rankings_equal_reference(h_dtype, w_dtype, tile):
    g = torch.Generator().manual_seed(7)
    h = torch.randn(13, 97, generator=g).to(h_dtype)
    w = (torch.randn(3001, 97, generator=g) * 0.05).to(w_dtype)  # not a multiple of any tile
    ref = ref_rbo.topk_ranking(h, w, K)
    got = native.topk_rankings(h, w, K, tile=tile)
    assert got.shape == (13, K) and got.dtype == torch.int64
    assert torch.equal(got, ref)
    assert len(set(got[:, 0].tolist())) > 6  # rows rank differently


def test_topk_rankings_realistic_size_equal_reference():
    """Qwen2-VL-2B sizes (V = 151,936, d = 1536, 70 text rows, k = 50): equal to the materialised sort."""
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(151_936, 1536, generator=g, dtype=torch.bfloat16)
    h = torch.randn(70, 1536, generator=g)
    assert torch.equal(native.topk_rankings(h, w, K), ref_rbo.topk_ranking(h, w, K))


@pytest.mark.parametrize("tile", [0, 7, 64, 333])
@pytest.mark.parametrize("k", [1, 13, 50, 64])
def test_topk_exact_ties_nan_and_zeros(tile, k):
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
        got = native.topk_rankings(h, ww, k, tile=tile)
        assert torch.equal(got, ref), (wd, tile, k)
    assert torch.equal(
        got[2], torch.tensor([10, 333] + [i for i in range(k) if i not in (10, 333)][: k - 2])[:k]
    )


def test_topk_rankings_signed_zeros():
    """-0.0 and +0.0 are equal logits (ties to the smaller id); constructed so the float32 GEMM yields -0.0."""
    h = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    w = torch.tensor([[0.0, 0.0], [-0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    ref = ref_rbo.topk_ranking(h, w, 5)
    assert torch.equal(native.topk_rankings(h, w, 5), ref)


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(40, 777, generator=g).T[::2]  # [389, 40], strided rows
    h = torch.randn(40, 5, generator=g).T  # [5, 40], column-major
    for wd in (torch.float32, torch.bfloat16):
        assert torch.equal(
            native.topk_rankings(h, w.to(wd)[::1], 9, tile=64), ref_rbo.topk_ranking(h, w.to(wd), 9)
        )
    a, b = _rankings(8, 12, 30, 1), _rankings(6, 12, 30, 2)
    torch.testing.assert_close(
        native.rbo_pairs(a.T.contiguous().T, b[:, :], 0.9, "ext").double(),
        ref_rbo.rbo(a[:, None], b[None], 0.9, "ext"),
        rtol=0,
        atol=2e-6,
    )
    a_t, ctx, weights = refine_case((9, 11), 3)
    got = native.refine(a_t.transpose(1, 2).contiguous().transpose(1, 2), ctx, weights.T.contiguous().T)
    torch.testing.assert_close(got, native.refine(a_t, ctx, weights), rtol=0, atol=0)


def test_topk_rankings_k_equals_vocab_and_empty_rows():
    g = torch.Generator().manual_seed(3)
    h, w = torch.randn(4, 9, generator=g), torch.randn(37, 9, generator=g)
    assert torch.equal(native.topk_rankings(h, w, 37, tile=8), ref_rbo.topk_ranking(h, w, 37))
    assert native.topk_rankings(h[:0], w, 5).shape == (0, 5)
    with pytest.raises(RuntimeError, match="top_k=38"):
        native.topk_rankings(h, w, 38)


# --------------------------------------------------------------------------------------------------
# Stage B2: RBO of every pair
# --------------------------------------------------------------------------------------------------


def _rankings(n: int, k: int, pool: int, seed: int) -> torch.Tensor:
    """n rankings of depth k (distinct ids) from one small pool, so prefixes overlap."""
    ids = torch.randperm(150_000, generator=torch.Generator().manual_seed(0))[:pool] * 7 + 3  # scattered ids
    g = torch.Generator().manual_seed(seed)
    return torch.stack([ids[torch.randperm(pool, generator=g)[:k]] for _ in range(n)])


@pytest.mark.parametrize("variant", ref_rbo.RBO_VARIANTS)
@pytest.mark.parametrize("p", [0.9, 0.5, 0.99])
def test_rbo_pairs_match_reference(variant, p):
    a = _rankings(23, K, 80, 1)
    b = torch.cat([_rankings(31, K, 80, 2), a[:2], torch.arange(10**7, 10**7 + K)[None]])
    got = native.rbo_pairs(a, b, p, variant)
    assert got.shape == (23, 34) and got.dtype == torch.float32
    ref = ref_rbo.rbo(a[:, None], b[None], p, variant)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=2e-6)
    assert got[:, :-3].std() > 0.01
    assert (got[:, -1] == 0).all()  # disjoint
    if variant == "ext":
        assert torch.allclose(got[[0, 1], [31, 32]], torch.ones(2))  # identical lists


@pytest.mark.parametrize("k", [1, 2, 17, 64, 100])
def test_rbo_pairs_depths_and_int_dtypes(k):
    a = _rankings(5, k, k + 9, 10 + k).to(torch.int32)
    b = _rankings(7, k, k + 9, 20 + k)
    for variant in ref_rbo.RBO_VARIANTS:
        ref = ref_rbo.rbo(a.long()[:, None], b[None], 0.8, variant)
        torch.testing.assert_close(native.rbo_pairs(a, b, 0.8, variant).double(), ref, rtol=0, atol=2e-6)


def test_rbo_pairs_lists_with_repeated_ids():
    """Not rankings (ids repeated in a list): every matching (i, j) pair counts, as in the reference."""
    g = torch.Generator().manual_seed(12)
    a = torch.randint(0, 12, (6, 10), generator=g)
    b = torch.randint(0, 12, (9, 10), generator=g)
    uniq = torch.stack([torch.randperm(12, generator=g)[:10] for _ in range(9)])
    for aa, bb in ((a, b), (a, uniq), (uniq[:4], b)):
        for variant in ref_rbo.RBO_VARIANTS:
            ref = ref_rbo.rbo(aa[:, None], bb[None], 0.8, variant)
            torch.testing.assert_close(
                native.rbo_pairs(aa, bb, 0.8, variant).double(), ref, rtol=0, atol=2e-6
            )


def test_rbo_pairs_arguments():
    a = torch.randint(0, 9, (2, 4))
    assert native.rbo_pairs(a[:0], a, 0.9, "ext").shape == (0, 2)
    with pytest.raises(RuntimeError, match="variant='bogus'"):
        native.rbo_pairs(a, a, 0.9, "bogus")
    with pytest.raises(RuntimeError, match="rbo_p"):
        native.rbo_pairs(a, a, 1.0, "ext")


# --------------------------------------------------------------------------------------------------
# Rank Gaussian filter and stage C (refine)
# --------------------------------------------------------------------------------------------------


def test_filter_sorting_network_on_two_valued_windows():
    """0-1 principle through the filter: every 3x3 pattern of two values at the centre cell (the window of
    a 3x3 map's centre is the whole map) filters to the reference's value."""
    pats = torch.tensor(list(itertools.product((0.0, 1.0), repeat=9))).reshape(512, 3, 3)
    for lo, hi in ((1.0, 2.0), (0.5, 3.0), (-1.0, 2.0)):
        x = lo + (hi - lo) * pats
        got = native.rank_gaussian_filter(x.double())[:, 1, 1]
        ref = ref_filters.rank_gaussian_filter(x.double())[:, 1, 1]
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("grid", [(17, 23), (24, 24), (1, 1), (1, 6), (5, 1), (2, 3)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,), ids=str)
def test_rank_gaussian_filter_matches_reference(grid, dtype):
    x = (structured_maps(9, grid, 11) - 0.05).to(dtype)  # negative cells: mean <= 0 windows give 0
    x[1] = 0.5  # a constant map: the median everywhere
    got = native.rank_gaussian_filter(x)
    assert got.shape == x.shape and got.dtype == dtype
    ref64 = ref_filters.rank_gaussian_filter(x.double())
    plain = ref_filters.rank_gaussian_filter(x)
    floor = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2}[dtype]
    assert_flash_rule(got, plain, ref64, floor, f"filter {dtype}")
    assert torch.equal(got[1], torch.full(grid, 0.5, dtype=dtype))
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e20])
def test_rank_gaussian_filter_extreme_scales(scale):
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(3, 7, 8, generator=g) - 0.3) * scale
    x[torch.rand(3, 7, 8, generator=g) < 0.3] = 0.25 * scale  # ties inside windows
    got = native.rank_gaussian_filter(x)
    ref = ref_filters.rank_gaussian_filter(x.double())
    assert torch.isfinite(got).all() and rel_err(got, ref) < 4e-6


@pytest.mark.parametrize("apply_filter", [True, False], ids=["filter", "nofilter"])
@pytest.mark.parametrize("grid", [(17, 23), (24, 24), (9, 1), (2, 2)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_refine_matches_reference(grid, dtype, apply_filter):
    a_t, ctx, weights = (x.to(dtype) for x in refine_case(grid, 21))
    got = native.refine(a_t, ctx, weights, apply_filter)
    assert got.shape == a_t.shape and got.dtype == torch.float32
    ref64 = refine_reference(a_t.double(), ctx.double(), weights.double(), apply_filter)
    plain = refine_reference(a_t, ctx, weights, apply_filter)
    assert_flash_rule(got, plain, ref64, 1e-5, f"refine {dtype}")
    assert float((got.double() - ref64).abs().max()) < 2e-5
    z = torch.zeros(grid)
    assert torch.equal(got[5], z) and torch.equal(got[8], z)  # zero target; complete cancellation
    assert torch.equal(got[6], torch.ones(grid))  # constant target, no context: normalised to 1
    assert torch.isfinite(got).all() and got.min() >= 0 and got.max() <= 1
    peaks = got.amax(dim=(1, 2))
    assert ((peaks == 1) | (peaks == 0)).all()
    if grid[0] * grid[1] > 4:
        assert got.std() > 0.05


def test_refine_degenerate_inputs():
    a_t = torch.rand(3, 4, 5)
    ctx = torch.rand(2, 4, 5)
    expected = ref_filters.normalize_max(ref_filters.rank_gaussian_filter(a_t.double())).float()
    torch.testing.assert_close(native.refine(a_t, ctx[:0], torch.zeros(3, 0)), expected, rtol=0, atol=2e-6)
    torch.testing.assert_close(native.refine(a_t, ctx, -torch.ones(3, 2)), expected, rtol=0, atol=2e-6)
    assert native.refine(a_t[:0], ctx, torch.zeros(0, 2)).shape == (0, 4, 5)
    neg = native.refine(-a_t, ctx[:0], torch.zeros(3, 0))  # all-negative targets, no context: zero, never NaN
    assert torch.equal(neg, torch.zeros_like(neg))
    neg = native.refine(-a_t, ctx, torch.ones(3, 2))  # negative beta: a positive residual survives
    ref = refine_reference(-a_t.double(), ctx.double(), torch.ones(3, 2, dtype=torch.float64), True)
    torch.testing.assert_close(neg.double(), ref, rtol=0, atol=2e-6)
    assert neg.amax() == 1
    with pytest.raises(RuntimeError, match=r"weights \[T, C\] = \[3, 2\]"):
        native.refine(a_t, ctx, torch.ones(2, 3))


def test_native_agrees_with_vectorised_path():
    """The two CPU backends side by side at the realistic refine / RBO sizes (a sanity check of both)."""
    a_t, ctx, weights = refine_case((17, 23), 5, t=50, c_prompt=20)
    for flt in (True, False):
        torch.testing.assert_close(
            native.refine(a_t, ctx, weights, flt),
            torch_impl.refine(a_t, ctx, weights, flt),
            rtol=0,
            atol=2e-5,
        )
    a, b = _rankings(50, K, 120, 3), _rankings(70, K, 120, 4)
    torch.testing.assert_close(native.rbo_pairs(a, b, 0.9, "ext"), torch_impl.rbo_pairs(a, b, 0.9, "ext"))


# --------------------------------------------------------------------------------------------------
# Threads, registration, torch.compile
# --------------------------------------------------------------------------------------------------


def test_results_identical_for_one_and_two_threads():
    g = torch.Generator().manual_seed(8)
    h, w = torch.randn(9, 64, generator=g), torch.randn(5000, 64, generator=g).bfloat16()
    a, b = _rankings(17, K, 90, 5), _rankings(23, K, 90, 6)
    a_t, ctx, weights = refine_case((17, 23), 9)
    x = structured_maps(7, (24, 24), 2)

    def run():
        return (
            native.topk_rankings(h, w, K, tile=512),
            native.rbo_pairs(a, b, 0.9, "ext"),
            native.refine(a_t, ctx, weights, True),
            native.refine(a_t, ctx, weights, False),
            native.rank_gaussian_filter(x),
        )

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(before)
    for x1, x2 in zip(one, two):
        assert torch.equal(x1, x2)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")
def test_ops_registered_with_schemas_fake_and_cuda_kernels():
    for name in ("topk_rankings", "rbo_pairs", "refine", "rank_gaussian_filter"):
        op = getattr(torch.ops.mmx_fast, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA"), name
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(3, 8, generator=g), torch.randn(40, 8, generator=g)
    ranks = native.topk_rankings(h, w, 5)
    a_t, ctx, weights = torch.rand(2, 5, 6), torch.rand(3, 5, 6), torch.rand(2, 3)
    checks = [
        (torch.ops.mmx_fast.topk_rankings.default, (h, w, 5, 0)),
        (torch.ops.mmx_fast.rbo_pairs.default, (ranks[:2], ranks, 0.9, "ext")),
        (torch.ops.mmx_fast.refine.default, (a_t, ctx, weights, True)),
        (torch.ops.mmx_fast.rank_gaussian_filter.default, (a_t,)),
    ]
    for op, args in checks:
        torch.library.opcheck(op, args)
    meta = torch.ops.mmx_fast.topk_rankings(h.to("meta"), w.to("meta"), 5)
    assert meta.shape == (3, 5) and meta.dtype == torch.int64 and meta.device.type == "meta"


def _pipeline(h, w, a_t, ctx):
    ranks = native.topk_rankings(h, w, 16)
    r = native.rbo_pairs(ranks[-a_t.shape[0] :], ranks, 0.9, "ext")
    return ranks, native.refine(a_t, ctx, 1 - r, True) * 2


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")
@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_torch_compile_traces_the_ops(backend):
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(6, 32, generator=g), torch.randn(300, 32, generator=g)
    a_t, ctx = torch.rand(4, 5, 7, generator=g), torch.rand(6, 5, 7, generator=g)
    torch._dynamo.reset()
    compiled = torch.compile(_pipeline, backend=backend, fullgraph=True)
    ranks, maps = compiled(h, w, a_t, ctx)
    eager_ranks, eager_maps = _pipeline(h, w, a_t, ctx)
    assert torch.equal(ranks, eager_ranks)
    torch.testing.assert_close(maps, eager_maps, rtol=0, atol=1e-6)
    assert float(maps.max()) == 2.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CUDA impls call Triton)")
def test_cuda_impls_match_cpu():
    g = torch.Generator().manual_seed(2)
    h, w = torch.randn(7, 64, generator=g), torch.randn(3000, 64, generator=g)
    a, b = _rankings(5, K, 70, 1), _rankings(9, K, 70, 2)
    a_t, ctx, weights = refine_case((17, 23), 3)
    cpu = (native.topk_rankings(h, w, K), native.rbo_pairs(a, b), native.refine(a_t, ctx, weights))
    cuda = (
        native.topk_rankings(h.cuda(), w.cuda(), K),
        native.rbo_pairs(a.cuda(), b.cuda()),
        native.refine(a_t.cuda(), ctx.cuda(), weights.cuda()),
    )
    assert torch.equal(cuda[0].cpu(), cpu[0])
    torch.testing.assert_close(cuda[1].cpu(), cpu[1], rtol=0, atol=2e-6)
    torch.testing.assert_close(cuda[2].cpu(), cpu[2], rtol=0, atol=2e-5)


# --------------------------------------------------------------------------------------------------
# Switches and fallbacks (subprocesses: the state is per process)
# --------------------------------------------------------------------------------------------------


def test_forced_off_is_unavailable_and_callers_fall_back():
    proc = _run(
        """
        import torch, pytest
        from mmx_fast import native, ops
        from mmx_fast.ops import torch_impl
        assert native.available() is False
        for call in (native.load, lambda: native.refine(torch.rand(1, 3, 3), torch.rand(1, 3, 3), torch.ones(1, 1))):
            with pytest.raises(RuntimeError, match="MMX_FAST_NATIVE=0"):
                call()
        assert not hasattr(torch.ops.mmx_fast, "refine")  # nothing was loaded
        a, c, w = torch.rand(2, 4, 5), torch.rand(3, 4, 5), torch.rand(2, 3)
        with __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            out = ops.refine(a, c, w, True, backend="native")
        assert torch.equal(out, torch_impl.refine(a, c, w, True))
        print("OK")
        """,
        MMX_FAST_NATIVE="0",
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_failed_build_warns_once_and_forced_on_raises(tmp_path):
    """A broken compiler (CXX=false) and an empty cache: ``auto`` gives ONE warning and False; ``1`` raises."""
    proc = _run(
        """
        import os, warnings, pytest
        from mmx_fast import native
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert native.available() is False
            assert native.available() is False
        msgs = [str(w.message) for w in caught if "native C++ kernels" in str(w.message)]
        assert len(msgs) == 1 and "vectorised torch path" in msgs[0], msgs
        assert native.build_error() is not None
        os.environ["MMX_FAST_NATIVE"] = "1"
        with pytest.raises(RuntimeError, match="MMX_FAST_NATIVE=1"):
            native.available()
        os.environ["MMX_FAST_NATIVE"] = "bogus"
        with pytest.raises(ValueError, match="MMX_FAST_NATIVE='bogus'"):
            native.available()
        print("OK")
        """,
        MMX_FAST_NATIVE="auto",
        CXX="false",
        TORCH_EXTENSIONS_DIR=str(tmp_path),
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_sources_are_found():
    files = native.source_files()
    assert files and all(f.is_file() and f.suffix == ".cpp" for f in files)
