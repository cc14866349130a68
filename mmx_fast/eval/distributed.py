"""``mmx-fast eval`` under torchrun: the process group, each rank's device, the final barrier. A run without
``WORLD_SIZE > 1`` is one rank and initialises nothing."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized: bool = False  # by us


def init_distributed(timeout_min: float = 360.0) -> DistInfo:
    """Initialise torch.distributed when ``WORLD_SIZE > 1`` (torchrun): nccl when CUDA is available, else gloo."""
    world = _env_int("WORLD_SIZE", 1, 1)
    if world == 1:
        return DistInfo()
    rank = _env_int("RANK", 0, 0)
    local = _env_int("LOCAL_RANK", rank, 0)
    if rank >= world:
        raise ValueError(f"RANK={rank} is out of range for WORLD_SIZE={world}; expected 0 .. {world - 1}")
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, False)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(
        backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=float(timeout_min))
    )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, True)


def _env_int(name: str, default: int, low: int) -> int:
    """An integer environment variable set by torchrun (``default`` when unset or empty), at least ``low``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        v = int(text)
    except ValueError:
        v = low - 1
    if v < low:
        raise ValueError(f"{name}={text!r} is not allowed; expected an integer >= {low} (torchrun sets it)")
    return v


def barrier(info: DistInfo) -> None:
    """All ranks meet here (nothing to wait for in a one-process run)."""
    if info.world_size <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def rank_device(device: str, local_rank: int = 0) -> str:
    """The device of this rank: ``auto`` / ``cuda`` -> ``cuda:LOCAL_RANK`` (modulo the GPUs), else as given."""
    import torch

    if device == "auto":
        return f"cuda:{local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch sees no CUDA GPU; use --device cpu or auto")
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return device
