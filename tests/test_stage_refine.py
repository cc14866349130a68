"""Stage ``refine`` (docs/design.md §1.3-1.4): ARC, TAM's rank Gaussian filter and max normalisation, on
every backend, against the reference (the oracle).

- ``test_refine*_every_backend``: parametrised over the backends (torch, native, triton-interpreter, and
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
import itertools

import pytest
import torch
from helpers import (
    DTYPES,
    DYN_GRIDS,
    FIXED_GRID,
    N_ANSWER,
    N_PROMPT,
    STAGE_BACKENDS,
    assert_flash_rule,
    backend_or_skip,
    gen,
    kernels_or_none,
    refine_case,
    refine_reference,
    refine_reference_in,
    rel_err,
    rel_err_or_abs,
    structured_maps,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from mmx_fast import native, ops
from mmx_fast.constants import CANCELLATION_FLOOR
from mmx_fast.ops.refine import refine_torch
from mmx_fast.reference.refine import rank_gaussian_filter

ref_filters = importlib.import_module("mmx_fast.reference.refine")
torch_refine = importlib.import_module("mmx_fast.ops.refine")

KERN = kernels_or_none()  # mmx_fast.kernels (the Triton launchers), None without triton


pytestmark = pytest.mark.usefixtures("stage_backend_env")


def _refine(a_t, ctx, weights, apply_filter=True):
    """The Triton refine launcher with the shared cancellation floor passed in."""
    return KERN.refine(a_t, ctx, weights, apply_filter, CANCELLATION_FLOOR)


# --------------------------------------------------------------------------------------------------
# Every backend: the flash-attention rule
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("apply_filter", [True, False], ids=["filter", "nofilter"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", STAGE_BACKENDS)
def test_refine_every_backend(backend, dtype, apply_filter):
    """Fresh structured maps on an odd grid with the edge cases of ``refine_case``; the flash-attention
    rule against the float64 reference (plain: the reference in the inputs' dtype)."""
    be, dev = backend_or_skip(backend)
    a_t, ctx, weights = (x.to(dtype) for x in refine_case((7, 11), 1401, t=9, c_prompt=3))
    fast = ops.refine(a_t.to(dev), ctx.to(dev), weights.to(dev), apply_filter, backend=be).cpu()
    ref64 = refine_reference(a_t.double(), ctx.double(), weights.double(), apply_filter)
    plain = refine_reference(a_t, ctx, weights, apply_filter)
    assert fast.shape == a_t.shape and fast.dtype == torch.float32
    assert_flash_rule(fast, plain, ref64, 1e-5, f"refine {backend} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", STAGE_BACKENDS)
def test_refine_filter_every_backend(backend, dtype):
    """The rank Gaussian filter alone (triton has no filter kernel: it runs the torch filter)."""
    be, dev = backend_or_skip(backend)
    x = (structured_maps(5, (7, 11), 1402) - 0.05).to(dtype)
    fast = ops.refine_filter(x.to(dev), backend=be).cpu()
    ref64 = ref_filters.rank_gaussian_filter(x.double())
    plain = ref_filters.rank_gaussian_filter(x)
    assert fast.shape == x.shape and fast.dtype == dtype
    floor = {torch.float32: 2e-6, torch.bfloat16: 1e-2}[dtype]
    assert_flash_rule(fast, plain, ref64, floor, f"refine_filter {backend} {dtype}")


# --------------------------------------------------------------------------------------------------
# Edge cases, argument checks, realistic shapes (dispatch, torch, Triton launchers, C++ ops)
# --------------------------------------------------------------------------------------------------


def test_sort9_network_sorts_everything():
    """0-1 principle: a comparator network sorts all inputs iff it sorts all 2^9 zero-one inputs."""
    for bits in itertools.product((0, 1), repeat=9):
        v = list(bits)
        for i, j in torch_refine.SORT9_NETWORK:
            if v[i] > v[j]:
                v[i], v[j] = v[j], v[i]
        assert v == sorted(bits)


@pytest.mark.parametrize("grid", [DYN_GRIDS[-1], FIXED_GRID], ids=str)
@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,), ids=str)
def test_rank_gaussian_filter_matches_reference(grid, dtype):
    x = structured_maps(N_ANSWER, grid, 11) - 0.05  # negative cells too: mean <= 0 windows give 0
    x = x.to(dtype)
    fast = ops.refine_filter(x)
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
    fast = ops.refine_filter(x)
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
    fast = ops.refine_filter(x)
    ref = ref_filters.rank_gaussian_filter(x.double())
    assert torch.isfinite(fast).all()
    assert rel_err(fast, ref) < 4e-6 or float(ref.abs().max()) == 0


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


@pytest.mark.parametrize(
    "t, c, h, w, apply_filter",
    [(4, 7, 17, 23, True), (3, 5, 5, 7, True), (2, 3, 1, 5, True), (2, 3, 2, 2, True), (3, 4, 24, 24, False)],
)
def test_triton_refine_fp32(t, c, h, w, apply_filter):
    g = gen(4000 + h * w)
    a_t = torch.rand(t, h, w, generator=g) + 0.3 * torch.rand(t, 1, 1, generator=g)
    ctx = torch.rand(c, h, w, generator=g)
    weights = torch.rand(t, c, generator=g)
    out = _refine(a_t, ctx, weights, apply_filter)
    assert out.shape == (t, h, w) and out.dtype == torch.float32
    ref = refine_reference_in(a_t, ctx, weights, apply_filter)
    assert rel_err_or_abs(out, ref) <= 1e-5
    assert torch.isfinite(out).all() and out.std() > 0


def test_triton_refine_bf16():
    g = gen(41)
    t, c, h, w = 3, 6, 17, 23
    a_t = torch.rand(t, h, w, generator=g).to(torch.bfloat16)
    ctx = torch.rand(c, h, w, generator=g).to(torch.bfloat16)
    weights = torch.rand(t, c, generator=g)
    out = _refine(a_t, ctx, weights, True)
    ref64 = refine_reference_in(a_t, ctx, weights, True)
    same_precision = refine_reference_in(a_t, ctx, weights.to(torch.bfloat16), True, dtype=torch.bfloat16)
    err = rel_err_or_abs(out, ref64)
    assert err <= 2 * rel_err_or_abs(same_precision, ref64)
    assert err <= 1e-5


def test_triton_refine_chunked_map():
    """A map larger than one block (the kernels stream it in chunks)."""
    g = gen(42)
    a_t = torch.rand(2, 70, 61, generator=g)
    ctx = torch.rand(3, 70, 61, generator=g)
    weights = torch.rand(2, 3, generator=g)
    assert (
        rel_err_or_abs(_refine(a_t, ctx, weights, True), refine_reference_in(a_t, ctx, weights, True)) <= 1e-5
    )


def test_triton_refine_zero_maps_and_degenerate_weights():
    g = gen(43)
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
        out = _refine(a_t, ctx, weights, apply_filter)
        assert torch.isfinite(out).all()
        assert out[0].abs().max().item() == 0.0
        assert out[1].abs().max().item() == 0.0
        assert rel_err_or_abs(out, refine_reference_in(a_t, ctx, weights, apply_filter)) <= 1e-5
    # no context at all
    empty = _refine(a_t, ctx[:0], weights[:, :0], True)
    assert rel_err_or_abs(empty, refine_reference_in(a_t, ctx[:0], weights[:, :0], True)) <= 1e-5


def test_triton_refine_constant_windows_give_the_median():
    g = gen(44)
    h, w = 6, 9
    a_t = torch.full((2, h, w), 0.7)
    a_t[1, :, 5:] = torch.rand(h, 4, generator=g)  # constant on the left, varying on the right
    a_t[1, 0, 0] = 0.0  # a zero in a constant region
    out = _refine(a_t, torch.zeros(0, h, w), torch.zeros(2, 0), True)
    assert torch.equal(out[0], torch.ones(h, w))  # every window constant: the median, then / max
    assert (
        rel_err_or_abs(out, refine_reference_in(a_t, torch.zeros(0, h, w), torch.zeros(2, 0), True)) <= 1e-5
    )
    assert not torch.isnan(rank_gaussian_filter(a_t.double())).any()


def test_triton_refine_sorting_network_exhaustive():
    """Every two-valued 3x3 window (the 0/1 principle for the in-register 9-input sorting network): the 512
    patterns side by side in one 3 x 1536 map, so that the centre cell of block j sees exactly pattern j."""
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9)))
    blocks = (1.0 + bits).reshape(512, 3, 3) * torch.linspace(1.0, 2.0, 512)[:, None, None]
    a_t = blocks.permute(1, 0, 2).reshape(1, 3, 512 * 3)
    out = _refine(a_t, torch.zeros(0, 3, 1536), torch.zeros(1, 0), True)
    assert (
        rel_err_or_abs(out, refine_reference_in(a_t, torch.zeros(0, 3, 1536), torch.zeros(1, 0), True))
        <= 1e-5
    )


def test_triton_refine_validation():
    a_t = torch.rand(2, 4, 5)
    with pytest.raises(ValueError, match="weights"):
        _refine(a_t, torch.rand(3, 4, 5), torch.rand(2, 2), True)
    with pytest.raises(ValueError, match="grid"):
        _refine(a_t, torch.rand(3, 5, 4), torch.rand(2, 3), True)
    with pytest.raises(ValueError, match="a_t"):
        _refine(torch.rand(4, 5), torch.rand(3, 4, 5), torch.rand(2, 3), True)


def test_triton_cancellation_floor_is_passed_in():
    """The floor is defined once (mmx_fast.constants) and passed to the launcher: the kernel module holds no
    copy, and a larger floor zeroes the same cells as the torch implementation with that floor."""
    mod = importlib.import_module("mmx_fast.kernels.refine")
    assert not hasattr(mod, "CANCELLATION_FLOOR")
    g = gen(31)
    a_t = torch.rand(3, 5, 7, generator=g)
    ctx = torch.rand(4, 5, 7, generator=g)
    weights = torch.rand(3, 4, generator=g)
    for floor in (CANCELLATION_FLOOR, 0.3):
        out = KERN.refine(a_t, ctx, weights, False, floor)
        want = refine_torch(a_t, ctx, weights, False, floor)
        assert rel_err_or_abs(out, want) <= 1e-5
    assert bool(
        (
            (KERN.refine(a_t, ctx, weights, False, 0.3) > 0)
            == (refine_torch(a_t, ctx, weights, False, 0.3) > 0)
        ).all()
    )


def test_native_filter_sorting_network_on_two_valued_windows():
    """0-1 principle through the filter: every 3x3 pattern of two values at the centre cell (the window of
    a 3x3 map's centre is the whole map) filters to the reference's value."""
    pats = torch.tensor(list(itertools.product((0.0, 1.0), repeat=9))).reshape(512, 3, 3)
    for lo, hi in ((1.0, 2.0), (0.5, 3.0), (-1.0, 2.0)):
        x = lo + (hi - lo) * pats
        got = native.refine_filter(x.double())[:, 1, 1]
        ref = ref_filters.rank_gaussian_filter(x.double())[:, 1, 1]
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("grid", [(17, 23), (24, 24), (1, 1), (1, 6), (5, 1), (2, 3)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,), ids=str)
def test_native_rank_gaussian_filter_matches_reference(grid, dtype):
    x = (structured_maps(9, grid, 11) - 0.05).to(dtype)  # negative cells: mean <= 0 windows give 0
    x[1] = 0.5  # a constant map: the median everywhere
    got = native.refine_filter(x)
    assert got.shape == x.shape and got.dtype == dtype
    ref64 = ref_filters.rank_gaussian_filter(x.double())
    plain = ref_filters.rank_gaussian_filter(x)
    floor = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2}[dtype]
    assert_flash_rule(got, plain, ref64, floor, f"filter {dtype}")
    assert torch.equal(got[1], torch.full(grid, 0.5, dtype=dtype))
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e20])
def test_native_rank_gaussian_filter_extreme_scales(scale):
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(3, 7, 8, generator=g) - 0.3) * scale
    x[torch.rand(3, 7, 8, generator=g) < 0.3] = 0.25 * scale  # ties inside windows
    got = native.refine_filter(x)
    ref = ref_filters.rank_gaussian_filter(x.double())
    assert torch.isfinite(got).all() and rel_err(got, ref) < 4e-6


@pytest.mark.parametrize("apply_filter", [True, False], ids=["filter", "nofilter"])
@pytest.mark.parametrize("grid", [(17, 23), (24, 24), (9, 1), (2, 2)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_native_refine_matches_reference(grid, dtype, apply_filter):
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


def test_native_refine_degenerate_inputs():
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
