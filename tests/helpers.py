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
    """The reference refine, one target at a time (``mmx_fast.reference.arc.refine_one``)."""
    from mmx_fast.reference.arc import refine_one

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
