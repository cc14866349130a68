"""Error measures shared by the tests that compare a fast stage with the reference."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref|, in float64 (0 for empty tensors)."""
    if ref.numel() == 0:
        return 0.0
    ref = ref.double()
    return float((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def assert_flash_rule(fast, plain, ref64, floor: float, what: str) -> None:
    """flash-attention's rule: the fast kernel's error against a float64 reference is at most twice the
    error of a plain same-precision torch implementation (plus a small floor)."""
    e_fast, e_plain = rel_err(fast, ref64), rel_err(plain, ref64)
    assert e_fast <= 2 * e_plain + floor, (
        f"{what}: fast error {e_fast:.3g} > 2 x plain error {e_plain:.3g} + {floor:g}"
    )


def structured_maps(t: int, grid, seed: int) -> torch.Tensor:
    """Smooth non-negative maps with exact zeros, constant patches (constant filter windows) and some
    all-zero maps: what refine and the filter see in practice, plus their edge cases."""
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    x = torch.randn(t, 1, h, w, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)[:, 0]
    x = (x + 0.1).clamp_min(0)
    x[:, : h // 3, : w // 3] = 0.7  # constant windows
    x[::7] = 0  # some all-zero maps
    return x


def refine_case(grid, seed: int, t: int = 11, c_prompt: int = 6):
    """t targets, c_prompt + t + 1 context maps (prompt, answer, base map), weights 1 - r masked to each
    target's context, with the edge cases: target 3 has all-zero weights (ahat = 0, beta = 0), target 5 is
    an all-zero map, target 6 a constant map without context (normalised to 1), target 8 equals 2x its
    interference map (everything cancels)."""
    c = c_prompt + t + 1
    a_t = structured_maps(t, grid, seed)
    ctx = torch.cat(
        [structured_maps(c_prompt, grid, seed + 1), a_t, structured_maps(1, grid, seed + 2) + 0.05]
    )
    g = torch.Generator().manual_seed(seed + 3)
    weights = torch.rand(t, c, generator=g)
    allowed = torch.arange(c)[None, :] < (c_prompt + torch.arange(t))[:, None]
    allowed[:, -1] = True  # base map
    weights = weights * allowed
    weights[3] = 0
    a_t[5] = 0
    a_t[6] = 1.25
    weights[6] = 0
    weights[8] = 0
    weights[8, 0] = 0.4
    a_t[8] = 2 * ctx[0]
    return a_t, ctx, weights


def refine_reference(a_t, ctx, weights, apply_filter):
    """The reference refine, one target at a time (``mmx_fast.reference.refine.refine_one``)."""
    from mmx_fast.reference.refine import refine_one

    return torch.stack([refine_one(a_t[i], ctx, weights[i], apply_filter) for i in range(a_t.shape[0])])


def write_jpeg(path: Path, h: int, w: int, seed: int) -> None:
    """A real JPEG of random pixels (for data-set tests)."""
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path, format="JPEG")


def write_png_mask(path: Path, h: int, w: int, labels=(3, 5)) -> None:
    """A real PNG category mask: two rectangles labelled ``labels``, 0 elsewhere."""
    m = np.zeros((h, w), np.uint8)
    m[h // 6 : h // 2, w // 4 : (3 * w) // 4] = labels[0]
    m[(2 * h) // 3 :, : w // 2] = labels[1]
    Image.fromarray(m, mode="L").save(path)


# Backends every stage test runs on (tests/test_stage_*.py): ids for pytest.mark.parametrize.
STAGE_BACKENDS = ("torch", "native", "triton-interpreter", "triton-cuda")


def backend_or_skip(name: str) -> tuple[str, str]:
    """(``backend=`` argument of ``mmx_fast.ops``, device) for a backend id of ``STAGE_BACKENDS``, or
    ``pytest.skip`` when it cannot run in this process: ``native`` needs the C++ build; ``triton-interpreter``
    needs triton and kernels built for the interpreter (TRITON_INTERPRET=1, set by conftest.py without a
    GPU); ``triton-cuda`` needs a CUDA GPU and compiled kernels."""
    import warnings

    import pytest

    from mmx_fast import kernels_loader, native

    if name == "torch":
        return "torch", "cpu"
    if name == "native":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if not native.available():
                pytest.skip(f"the native C++ kernels are not built here: {native.build_error()}")
        return "native", "cpu"
    if not kernels_loader.triton_installed():
        pytest.skip("triton is not installed")
    kernels = kernels_loader.triton_kernels()
    if not kernels.available:
        pytest.skip(f"mmx_fast.kernels is unavailable: {kernels.import_error}")
    if name == "triton-interpreter":
        if not kernels.interpreted:
            pytest.skip("the Triton kernels were compiled for CUDA in this process (not the interpreter)")
        return "triton", "cpu"
    if name == "triton-cuda":
        if kernels.interpreted or not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU and compiled Triton kernels")
        return "triton", "cuda"
    raise ValueError(f"backend id {name!r} is not allowed; expected one of {', '.join(STAGE_BACKENDS)}")


# Realistic shapes (Qwen2-VL-2B): vocabulary 151,936, hidden 1536, canonical grids 17x23 (dynamic resolution)
# and 24x24 (LLaVA), three scales, 20 prompt tokens, 50 answer tokens, top_k 50.
V, D = 151_936, 1536
N_PROMPT, N_ANSWER, TOP_K = 20, 50, 50
N_TEXT = N_PROMPT + N_ANSWER
# Qwen2-VL visual grids of a 640x480 image at scales 0.5, 0.75, 1.0; LLaVA's fixed 24x24 grid.
DYN_GRIDS = ((9, 12), (13, 17), (17, 23))
FIXED_GRID = (24, 24)
FIXED_COVERAGES = ((0.5, 0.5), (0.75, 0.75), (1.0, 1.0))
DTYPES = (torch.float32, torch.bfloat16)


def visual_hidden(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # a shared direction makes some logits positive and some negative, like real hidden states
    return torch.randn(n, D, generator=g) + 0.5 * torch.randn(1, D, generator=g)


def overlapping_rankings(n: int, k: int, pool: int, seed: int) -> torch.Tensor:
    """n rankings of depth k drawn from one small pool of ids, so prefixes overlap a lot."""
    ids = torch.randperm(V - TOP_K, generator=torch.Generator().manual_seed(0))[:pool]
    g = torch.Generator().manual_seed(seed)
    return torch.stack([ids[torch.randperm(pool, generator=g)[:k]] for _ in range(n)])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel_err_or_abs(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref| in float64 (absolute when ref is all zero)."""
    x = x.double().cpu()
    ref = ref.double().cpu()
    scale = ref.abs().max().item() if ref.numel() else 0.0
    err = (x - ref).abs().max().item() if ref.numel() else 0.0
    return err / scale if scale > 0 else err


def kernels_or_none():
    """The Triton launchers (``kernels_loader.triton_kernels()``) when triton imports (under the interpreter
    without a GPU), else None."""
    from mmx_fast import kernels_loader

    if not kernels_loader.triton_installed():
        return None
    kernels = kernels_loader.triton_kernels()
    return kernels if kernels.available else None


def random_rankings(g: torch.Generator, rows: int, k: int, pool: int) -> torch.Tensor:
    """``rows`` rankings of k distinct ids drawn from range(pool)."""
    return torch.stack([torch.randperm(pool, generator=g)[:k] for _ in range(rows)])


def scattered_rankings(n: int, k: int, pool: int, seed: int) -> torch.Tensor:
    """n rankings of depth k (distinct ids) from one small pool, so prefixes overlap."""
    ids = torch.randperm(150_000, generator=torch.Generator().manual_seed(0))[:pool] * 7 + 3  # scattered ids
    g = torch.Generator().manual_seed(seed)
    return torch.stack([ids[torch.randperm(pool, generator=g)[:k]] for _ in range(n)])


def refine_reference_in(a_t, ctx, weights, apply_filter, dtype=torch.float64):
    """The reference refine per target, computed in ``dtype``."""
    from mmx_fast.reference.refine import refine_one

    return torch.stack(
        [
            refine_one(a_t[t].to(dtype), ctx.to(dtype), weights[t].to(dtype), apply_filter)
            for t in range(a_t.shape[0])
        ]
    )
