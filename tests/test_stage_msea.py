"""Stage ``msea`` (docs/design.md §1.2): multi-scale aggregation of the per-scale maps onto the canonical
grid, on every backend, against the reference (the oracle).

- ``test_msea*_every_backend``: parametrised over the backends (torch, native, triton-interpreter, and
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
    DYN_GRIDS,
    FIXED_COVERAGES,
    FIXED_GRID,
    N_TEXT,
    STAGE_BACKENDS,
    assert_flash_rule,
    backend_or_skip,
    gen,
    kernels_or_none,
)

from mmx_fast import ops

ref_msea = importlib.import_module("mmx_fast.reference.msea")

KERN = kernels_or_none()  # mmx_fast.kernels (the Triton launchers), None without triton


pytestmark = pytest.mark.usefixtures("stage_backend_env")


# --------------------------------------------------------------------------------------------------
# Every backend: the flash-attention rule
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aggregate", ["mean", "max"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", STAGE_BACKENDS)
def test_msea_every_backend(backend, dtype, aggregate):
    """Fresh random maps on odd grids (shrunk and zoomed scales); the flash-attention rule against the
    float64 reference. Every backend runs the torch implementation (there is no kernel for MSEA)."""
    be, dev = backend_or_skip(backend)
    g = gen(1201)
    grids, coverages, canonical = (
        ((5, 7), (9, 11), (13, 17), (13, 17)),
        ((0.5, 0.5), (0.75, 0.7), (1.0, 1.0), (1.5, 1.5)),
        (13, 17),
    )
    per_scale = [torch.rand(5, h, w, generator=g) for h, w in grids]
    fast = ops.msea(
        [m.to(dtype).to(dev) for m in per_scale], coverages, canonical, aggregate, backend=be
    ).cpu()
    ref64 = ref_msea.msea_aggregate(
        [m.to(dtype).double() for m in per_scale], coverages, canonical, aggregate
    )
    plain = ref_msea.msea_aggregate([m.to(dtype) for m in per_scale], coverages, canonical, aggregate)
    assert fast.shape == (5, *canonical) and fast.dtype == dtype
    assert_flash_rule(fast, plain, ref64, 1e-6, f"msea {backend} {dtype} {aggregate}")


# --------------------------------------------------------------------------------------------------
# Edge cases, argument checks, realistic shapes (dispatch, torch, Triton launchers, C++ ops)
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
    fast = ops.msea(per_scale, coverages, canonical, aggregate)
    ref = ref_msea.msea_aggregate(per_scale, coverages, canonical, aggregate)
    assert fast.shape == (N_TEXT + 1,) + tuple(canonical)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-6)
    assert fast.std() > 0.01


def test_msea_aggregate_checks_arguments():
    m = [torch.rand(2, 3, 3)]
    with pytest.raises(ValueError, match="aggregate='median'"):
        ops.msea(m, [(1, 1)], (3, 3), "median")
    with pytest.raises(ValueError, match="one coverage per scale"):
        ops.msea(m, [(1, 1), (1, 1)], (3, 3))
    with pytest.raises(ValueError, match="same M"):
        ops.msea(m + [torch.rand(3, 3, 3)], [(1, 1), (1, 1)], (3, 3))


# --------------------------------------------------------------------------------------------------
# Tiled inputs: (map, box) placements (docs/design.md §1.2, tiled models)
# --------------------------------------------------------------------------------------------------

# one scale of a 2x2-tile input + thumbnail on a 6x8 canonical grid, a smaller scale's single tile, and a
# stitched view covering everything; odd sizes so every view is resized
TILED_VIEWS = (
    ((3, 4), (0, 0, 3, 4)),
    ((3, 4), (0, 4, 3, 8)),
    ((3, 4), (3, 0, 6, 4)),
    ((3, 4), (3, 4, 6, 8)),
    ((2, 2), (0, 0, 6, 8)),
    ((5, 3), (1, 2, 6, 7)),
)


@pytest.mark.parametrize("aggregate", ["mean", "max"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", STAGE_BACKENDS)
def test_msea_boxes_every_backend(backend, dtype, aggregate):
    """Views placed on boxes of canonical cells, mixed with a coverage placement: the flash-attention rule
    against the float64 reference."""
    be, dev = backend_or_skip(backend)
    g = gen(77)
    maps = [torch.rand(4, h, w, generator=g) for (h, w), _ in TILED_VIEWS] + [
        torch.rand(4, 6, 8, generator=g)
    ]
    places = [box for _, box in TILED_VIEWS] + [(1.0, 1.0)]
    fast = ops.msea([m.to(dtype).to(dev) for m in maps], places, (6, 8), aggregate, backend=be).cpu()
    ref64 = ref_msea.msea_aggregate([m.to(dtype).double() for m in maps], places, (6, 8), aggregate)
    plain = ref_msea.msea_aggregate([m.to(dtype) for m in maps], places, (6, 8), aggregate)
    assert fast.shape == (4, 6, 8)
    assert_flash_rule(fast, plain, ref64, 1e-6, f"msea boxes {backend} {dtype} {aggregate}")


def test_msea_box_places_each_view_on_its_cells_only():
    """A constant view on a box: inside the box the mean over the covering views, outside untouched; a cell no
    view covers is 0 (never NaN)."""
    ones = torch.ones(1, 2, 2)
    out = ref_msea.msea_aggregate([ones * 4, ones * 2], [(0, 0, 2, 2), (1, 1, 3, 4)], (4, 4), "mean")
    want = torch.zeros(1, 4, 4)
    want[0, :2, :2] = 4
    want[0, 1:3, 1:4] = 2
    want[0, 1, 1] = 3  # covered by both
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(ops.msea([ones * 4, ones * 2], [(0, 0, 2, 2), (1, 1, 3, 4)], (4, 4)), want)


def test_msea_coverage_equals_its_box():
    """A coverage (cy, cx) >= 1 is the box of its covered cells: the generalisation keeps single-view families
    bit-identical."""
    m = [torch.rand(3, 5, 7, generator=gen(3))]
    a = ops.msea(m, [(1.5, 1.5)], (9, 12))
    b = ops.msea(m, [(0, 0, 6, 8)], (9, 12))
    assert torch.equal(a, b)


def test_msea_box_checks():
    m = [torch.rand(2, 3, 3)]
    with pytest.raises(ValueError, match=r"coverages\[0\]=.*box"):
        ops.msea(m, [(0, 0, 4, 3)], (3, 3))
    with pytest.raises(ValueError, match=r"coverages\[0\]=.*box"):
        ops.msea(m, [(1, 0, 1, 3)], (3, 3))
    with pytest.raises(ValueError, match=r"coverages\[0\]=.*box"):
        ops.msea(m, [(0, 0, 1.5, 3)], (3, 3))
