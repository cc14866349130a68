"""Error measures shared by the tests that compare a fast stage with the reference."""

import torch


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
