"""``ServeSettings``: everything ``mmx-fast serve`` is configured with (the CLI flags), and the defaults that are
derived from the machine (how many request bodies may be in memory at once, how many may be parsed at once)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .limits import Limits

ACCESS_LOG_MODES = ("json", "text", "off")


def machine_memory_bytes() -> int:
    """Physical memory of this machine (what the admission defaults are derived from)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux / macOS
        return 8 << 30


def default_max_inflight_bytes() -> int:
    """Request bytes held at once: 1/192 of physical memory, between 32 MiB and 128 MiB. A body costs about 3x
    its size while it is parsed and decoded (text, bytes, pixels) in one of the ``max_parsing`` slots, and a
    decoded image is copied again at each MSEA scale in its batch, so this keeps a flood of large bodies
    within a few hundred MB (docs/design.md §6; benches/bench_serve.py --scenario flood)."""
    return int(min(128 << 20, max(32 << 20, machine_memory_bytes() // 192)))


def default_max_parsing() -> int:
    """Requests in the parse/decode stage at once (also the size of the image-decoding worker pool)."""
    return max(2, min(8, os.cpu_count() or 2))


@dataclass
class ServeSettings:
    """Everything ``mmx-fast serve`` is configured with (the CLI flags)."""

    model: str = "tiny:qwen2_vl"
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    dtype: str = "auto"
    method: str = "msea-arc"
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    keep_max: int = 64  # kept results held by the "memory" store, oldest dropped first
    api_keys: tuple[str, ...] = ()
    allow_image_urls: bool = False
    limits: Limits = field(default_factory=Limits)
    warmup: bool = True
    # admission (docs/design.md §6): 0 = derived from the machine (see the functions above)
    max_inflight_bytes: int = 0
    max_parsing: int = 0
    # operations
    access_log: str = "json"  # json | text | off
    drain_grace_s: float = 5.0  # after SIGTERM: /readyz answers 503 this long while serving continues
    result_store: str = "memory"  # memory | dir:PATH | redis://host:port/db
    result_ttl_s: float = 3600.0
    result_store_max_bytes: int = 1 << 30  # directory store: total size cap (oldest evicted first)

    def __post_init__(self) -> None:
        if not self.max_inflight_bytes:
            self.max_inflight_bytes = max(default_max_inflight_bytes(), self.limits.max_body_bytes)
        if not self.max_parsing:
            self.max_parsing = default_max_parsing()
        if self.max_inflight_bytes < self.limits.max_body_bytes:
            raise ValueError(
                f"max_inflight_bytes={self.max_inflight_bytes} is smaller than max_body_bytes="
                f"{self.limits.max_body_bytes}: the largest allowed body could never be admitted; expected "
                "max_inflight_bytes >= max_body_bytes"
            )
        if self.max_parsing < 1:
            raise ValueError(f"max_parsing={self.max_parsing} is not allowed; expected an integer >= 1")
        if self.access_log not in ACCESS_LOG_MODES:
            raise ValueError(
                f"access_log={self.access_log!r} is not allowed; expected one of {ACCESS_LOG_MODES}"
            )
        for name in ("drain_grace_s", "result_ttl_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < 1e9):
                raise ValueError(f"{name}={v!r} is not allowed; expected a number of seconds >= 0")
        if self.result_store_max_bytes < 1:
            raise ValueError(
                f"result_store_max_bytes={self.result_store_max_bytes} is not allowed; expected >= 1"
            )
