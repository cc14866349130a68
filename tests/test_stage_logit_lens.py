"""Stage ``logit_lens`` (docs/design.md §1.1): the raw logit-lens maps ``clamp(W_U[ids] @ z.T, 0)``, on
every backend, against the reference (the oracle).

- ``test_logit_lens*_every_backend``: parametrised over the backends (torch, native, triton-interpreter, and
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
    N_TEXT,
    STAGE_BACKENDS,
    D,
    V,
    assert_flash_rule,
    backend_or_skip,
    gen,
    kernels_or_none,
    rel_err_or_abs,
    visual_hidden,
)

from mmx_fast import ops
from mmx_fast.reference.logit_lens import logit_lens_maps

ref_ll = importlib.import_module("mmx_fast.reference.logit_lens")

KERN = kernels_or_none()  # mmx_fast.kernels (the Triton launchers), None without triton


pytestmark = pytest.mark.usefixtures("stage_backend_env")


# --------------------------------------------------------------------------------------------------
# Every backend: the flash-attention rule
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", STAGE_BACKENDS)
def test_logit_lens_every_backend(backend, dtype):
    """Fresh random inputs of odd shapes; the flash-attention rule against the float64 reference."""
    be, dev = backend_or_skip(backend)
    g = gen(1101)
    n, d, v = 37, 53, 211
    z = (torch.randn(n, d, generator=g) + 0.5 * torch.randn(1, d, generator=g)).to(dtype)
    w = torch.randn(v, d, generator=g).to(dtype)
    ids = torch.cat([torch.tensor([0, v - 1, 7]), torch.randint(0, v, (10,), generator=g)])
    fast = ops.logit_lens(z.to(dev), w.to(dev), ids.to(dev), backend=be).cpu()
    ref64 = ref_ll.logit_lens_maps(z, w, ids, dtype=torch.float64)
    plain = (
        ref_ll.logit_lens_maps(z, w, ids, dtype=torch.float32)
        if dtype == torch.float32
        else (w[ids] @ z.T).clamp_min(0)
    )
    assert fast.shape == (13, n) and fast.dtype == torch.float32
    assert_flash_rule(fast, plain, ref64, 1e-6, f"logit_lens {backend} {dtype}")


# --------------------------------------------------------------------------------------------------
# Edge cases, argument checks, realistic shapes (dispatch, torch, Triton launchers, C++ ops)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gather_logit_lens_matches_reference(vocab, dtype):
    w = vocab[dtype]
    n = sum(h * w_ for h, w_ in DYN_GRIDS)  # all three scales' visual tokens in one call
    z = visual_hidden(7, n).to(dtype)
    g = torch.Generator().manual_seed(3)
    ids = torch.cat(
        [torch.tensor([0, V - 1, 4095, 4096]), torch.randint(0, V, (N_TEXT + 1 - 4,), generator=g)]
    )
    fast = ops.logit_lens(z, w, ids)
    assert fast.shape == (N_TEXT + 1, n) and fast.dtype == torch.float32
    ref64 = ref_ll.logit_lens_maps(z, w, ids, dtype=torch.float64)
    if dtype == torch.float32:
        plain = ref_ll.logit_lens_maps(z, w, ids, dtype=torch.float32)
    else:
        plain = (w[ids] @ z.T).clamp_min(0)  # plain bfloat16 torch
    assert_flash_rule(fast, plain, ref64, 1e-6, f"gather {dtype}")
    assert (fast == 0).any() and (fast > 0).float().mean() > 0.2  # the clamp acts, the maps are not constant
    # ids as a Python list and repeated ids give the same rows
    again = ops.logit_lens(z, w, ids[:5].tolist() + [int(ids[0])])
    torch.testing.assert_close(again, torch.cat([fast[:5], fast[:1]]), rtol=1e-5, atol=1e-5)


def test_gather_logit_lens_checks_arguments(vocab):
    w = vocab[torch.float32][:100]
    z = torch.randn(3, D)
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        ops.logit_lens(z, w, [0, 100])
    with pytest.raises(ValueError, match="share d"):
        ops.logit_lens(torch.randn(3, 7), w, [0])
    with pytest.raises(TypeError, match="integer"):
        ops.logit_lens(z, w, torch.tensor([0.0]))
    assert ops.logit_lens(z, w, []).shape == (0, 3)


@pytest.mark.parametrize("n, v, d, m", [(37, 1000, 48, 5), (130, 300, 200, 70)])
def test_triton_gather_logit_lens_fp32(n, v, d, m):
    g = gen(1000 + n)
    z = torch.randn(n, d, generator=g)
    w_u = torch.randn(v, d, generator=g)
    ids = torch.randint(0, v, (m,), generator=g)
    ids[-1] = ids[0]  # a repeated id
    out = KERN.logit_lens(z, w_u, ids)
    assert out.shape == (m, n) and out.dtype == torch.float32
    ref64 = logit_lens_maps(z.double(), w_u.double(), ids, dtype=torch.float64)
    assert rel_err_or_abs(out, ref64) <= 1e-5
    assert rel_err_or_abs(out, logit_lens_maps(z, w_u, ids)) <= 1e-5
    # clipping at 0 is real, and the output is not a constant
    assert (out == 0).any() and (out > 0).any() and out.std() > 0
    assert torch.equal(out[-1], out[0])


def test_triton_gather_logit_lens_bf16_and_strided():
    g = gen(11)
    n, v, d, m = 70, 1000, 200, 9
    z = torch.randn(n, 2 * d, generator=g).to(torch.bfloat16)[:, ::2]  # non-contiguous view
    w_u = torch.randn(v, d, generator=g).to(torch.bfloat16)
    ids = torch.randint(0, v, (m,), generator=g)
    out = KERN.logit_lens(z, w_u, ids)
    ref64 = logit_lens_maps(z.double(), w_u.double(), ids, dtype=torch.float64)
    same_precision = logit_lens_maps(z, w_u, ids, dtype=torch.bfloat16)  # plain torch in bfloat16
    err = rel_err_or_abs(out, ref64)
    assert err <= 2 * rel_err_or_abs(same_precision, ref64)
    assert err <= 1e-5  # float32 accumulation of exact bf16 products


def test_triton_gather_logit_lens_validation():
    z = torch.randn(4, 8)
    w_u = torch.randn(10, 8)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):  # the range is checked once, in mmx_fast.ops
        ops.logit_lens(z, w_u, torch.tensor([3, 10]), backend="triton")
    with pytest.raises(ValueError, match="hidden sizes"):
        KERN.logit_lens(torch.randn(4, 7), w_u, torch.tensor([1]))
    with pytest.raises(ValueError, match="integer"):
        KERN.logit_lens(z, w_u, torch.tensor([1.0]))
    assert KERN.logit_lens(z, w_u, torch.tensor([], dtype=torch.long)).shape == (0, 4)
