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


@pytest.fixture(autouse=True)
def _backend_env(monkeypatch, request):
    """No ambient MMX_FAST_BACKEND may redirect ``auto``; the launcher tests (``test_triton_*``) need triton,
    the C++ op tests (``test_native_*``) the native build."""
    monkeypatch.delenv("MMX_FAST_BACKEND", raising=False)
    name = request.node.originalname
    if name.startswith("test_triton_") and KERN is None:
        pytest.skip("triton is not installed (or mmx_fast.kernels does not import)")
    if name.startswith("test_native_"):
        backend_or_skip("native")


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
