"""``mmx-fast eval``'s options: everything a run needs, checked before anything loads (the CLI fills them from
its arguments, ``mmx_fast.eval.cli``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .metrics import MERGES, PLACEMENTS

MAX_DIST_TIMEOUT_MIN = 7 * 24 * 60.0


@dataclass
class EvalOptions:
    """Everything a run needs (the CLI fills it from its arguments)."""

    model: str
    data: str
    out: str
    methods: tuple[str, ...] = ("msea-arc", "tam", "logit-lens")
    limit: int | None = None
    layout: str = "auto"
    prompt: str | None = None
    max_new_tokens: int = 256
    placement: str = "stretch"
    word_typer: Any = "auto"
    merge: str = "tam"
    include_stop_token: bool = False
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"
    save_maps: bool = False
    progress: bool = True
    dist_timeout_min: float = 360.0

    def check(self) -> None:
        from ..config import METHODS

        if not self.methods:
            raise ValueError("no methods given; expected one or more of " + ", ".join(METHODS))
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; expected some of {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods {list(self.methods)} repeat a method")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit={self.limit} is not allowed; expected a positive integer")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} is not allowed; expected >= 1")
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"placement={self.placement!r} is not allowed; expected one of {', '.join(PLACEMENTS)}"
            )
        if self.merge not in MERGES:
            raise ValueError(f"merge={self.merge!r} is not allowed; expected one of {', '.join(MERGES)}")
        self._check_runtime()

    def _check_runtime(self) -> None:
        """--device, --dtype, --backend, --prompt, --dist-timeout-min: checked before anything loads."""
        from ..config import BACKENDS
        from ..loading import resolve_device as _device
        from ..loading import resolve_dtype

        if not isinstance(self.device, str):
            raise ValueError(f"device={self.device!r} is not allowed; expected auto, cpu, cuda or cuda:N")
        dev = _device(self.device)
        if dev.startswith("cuda:"):
            import torch

            n = torch.cuda.device_count()
            if int(dev.split(":")[1]) >= n:
                raise ValueError(f"device={self.device!r} is not allowed; this machine has {n} CUDA GPU(s)")
        if self.dtype != "auto":
            resolve_dtype(self.dtype, "cpu")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"backend={self.backend!r} is not allowed; expected one of {', '.join(BACKENDS)}"
            )
        if self.prompt is not None:
            try:
                self.prompt.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"prompt {self.prompt!r} holds bytes that are not valid UTF-8; expected text"
                ) from None
        t = self.dist_timeout_min
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= MAX_DIST_TIMEOUT_MIN:
            raise ValueError(
                f"dist_timeout_min={t!r} is not allowed; expected minutes, > 0 and <= {MAX_DIST_TIMEOUT_MIN:g}"
            )
