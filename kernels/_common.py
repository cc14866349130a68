"""Small helpers shared by the kernel launchers."""

from __future__ import annotations

import torch


def next_pow2(x: int) -> int:
    """The smallest power of two >= x (1 for x <= 1): Triton blocks must be powers of two."""
    return 1 << max(0, int(x) - 1).bit_length()


def is_interpreted(kernel) -> bool:
    """True when ``@triton.jit`` built ``kernel`` for Triton's CPU interpreter (TRITON_INTERPRET=1 when the
    kernel module was imported), False when it was built for the GPU compiler."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_device(device: torch.device, interpreted: bool) -> None:
    if not interpreted and device.type != "cuda":
        raise ValueError(
            f"tensors on {device} are not allowed: the Triton kernels were compiled for CUDA; for CPU tensors set "
            "TRITON_INTERPRET=1 before mmx_fast.kernels is first imported"
        )
