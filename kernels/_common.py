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


MATMUL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_states_and_unembedding(name: str, x, w_u, interpreted: bool) -> None:
    """``x`` [rows, d] hidden states and ``w_u`` [V, d]: 2-D, same d, float32/16/bf16, one device that
    the kernels can run on. Raises ValueError naming the bad value."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [rows, d]; got {getattr(x, 'shape', type(x))}")
    if not isinstance(w_u, torch.Tensor) or w_u.dim() != 2:
        raise ValueError(f"w_u must be a 2-D tensor [V, d]; got {getattr(w_u, 'shape', type(w_u))}")
    if x.shape[1] != w_u.shape[1]:
        raise ValueError(
            f"hidden sizes differ: {name} is {tuple(x.shape)} and w_u is {tuple(w_u.shape)}; expected equal d"
        )
    for n, t in ((name, x), ("w_u", w_u)):
        if t.dtype not in MATMUL_DTYPES:
            raise ValueError(
                f"{n}.dtype={t.dtype} is not allowed; expected one of float32, float16, bfloat16"
            )
    if x.device != w_u.device:
        raise ValueError(f"{name} is on {x.device} and w_u on {w_u.device}; expected one device")
    check_device(x.device, interpreted)
