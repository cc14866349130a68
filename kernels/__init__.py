"""Triton kernels for the fused stages of the attribution engine (docs/design.md §2), shipped as ``mmx_fast.kernels``.

- :func:`logit_lens` (stage ``logit_lens``): ``clamp(W_U[ids] @ z.T, 0)`` with the W_U rows gathered inside the kernel.
- :func:`rankings_topk` (stage ``rankings``): top-k vocabulary ids of ``h @ W_U.T`` per row, streamed over vocabulary tiles.
- :func:`rankings_rbo` (stage ``rankings``): rank-biased overlap of every pair of rankings in one launch.
- :func:`refine` (stage ``refine``): interference map, least-squares beta, ReLU, rank Gaussian filter and max
  normalisation for all targets at once.

Importing this package never fails. ``HAS_TRITON`` says whether triton and the kernel modules could be
imported (``TRITON_IMPORT_ERROR`` holds the reason when not); the kernel functions then raise ImportError.

Triton chooses between compiling for the GPU and its CPU interpreter when ``@triton.jit`` runs, i.e. when this
package is imported: without a GPU, set ``TRITON_INTERPRET=1`` in ``os.environ`` before importing it.
``INTERPRETED`` records which one happened; :func:`triton_usable` tells a dispatcher whether the kernels can
run on tensors on a given device.
"""

from __future__ import annotations

_NAMES = ("logit_lens", "rankings_topk", "rankings_rbo", "refine")

try:  # triton is optional; a missing or broken install must not break `import mmx_fast`
    from .logit_lens import INTERPRETED, logit_lens
    from .rankings import rankings_rbo, rankings_topk
    from .refine import refine

    HAS_TRITON = True
    TRITON_IMPORT_ERROR: str | None = None
except Exception as exc:  # pragma: no cover - depends on the environment
    HAS_TRITON = False
    INTERPRETED = False
    TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = [
    "HAS_TRITON",
    "INTERPRETED",
    "TRITON_IMPORT_ERROR",
    "triton_usable",
    "logit_lens",
    "rankings_topk",
    "rankings_rbo",
    "refine",
]


def triton_usable(device) -> bool:
    """Whether the kernels can run on tensors on ``device``: compiled kernels need CUDA tensors; under the
    interpreter they run on CPU tensors."""
    if not HAS_TRITON:
        return False
    import torch

    device = torch.device(device)
    if INTERPRETED:
        return device.type == "cpu"
    return device.type == "cuda" and torch.cuda.is_available()


def __getattr__(name: str):
    if name in _NAMES:  # only reached when the imports above failed
        raise ImportError(
            f"mmx_fast.kernels.{name} is unavailable: triton could not be imported ({TRITON_IMPORT_ERROR})"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
