"""What a serving process holds: the model and its Explainers, the batcher, the metrics, the admission
bounds and the result store (``ServeState``), and where the app finds them (``StateHolder``)."""

from __future__ import annotations

import collections
import copy
import ctypes
from typing import Any

import numpy as np

from ..config import ExplainConfig
from .admission import Admission
from .batcher import Batcher
from .metrics import Metrics
from .settings import ServeSettings
from .store import open_store


class ServeState:
    """The model, one Explainer per config seen, the batcher, the metrics and the kept results."""

    def __init__(self, model, processor, settings: ServeSettings, *, model_info: dict | None = None) -> None:
        from ..fast import Explainer

        self.settings = settings
        self.model_info = model_info or {"id": settings.model}
        self.default_config = ExplainConfig(
            method=settings.method, max_new_tokens=min(32, settings.limits.max_new_tokens)
        )
        first = Explainer(model, processor, self.default_config)
        self.model, self.processor, self.adapter = model, processor, first.adapter
        self._explainers: collections.OrderedDict[ExplainConfig, Any] = collections.OrderedDict(
            [(self.default_config, first)]
        )
        # the event loop counts tokens with its own copy: a fast tokenizer shared with the worker thread can
        # fail with "Already borrowed" when the processor changes its padding / truncation settings
        self.tokenizer = copy.deepcopy(first.adapter.tokenizer)
        self.vocab_size = int(first.adapter.lm_head_weight().shape[0])
        self.metrics = Metrics(settings.max_batch)
        self.metrics.build.info(_build_info(self.model_info, model))
        self.store = open_store(
            settings.result_store,
            ttl_s=settings.result_ttl_s,
            max_bytes=settings.result_store_max_bytes,
            keep_max=settings.keep_max,
        )
        self.admission = Admission(settings.max_inflight_bytes, settings.max_parsing)
        self.metrics.inflight_bytes.set_function(lambda: self.admission.bytes)
        self.metrics.parsing.set_function(lambda: self.admission.parsing)
        self.native = _native_status()
        if settings.warmup:
            self._warmup()
        self.batcher = Batcher(
            self._run_batch,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            metrics=self.metrics,
            on_idle=_return_free_memory,
        )
        self.ready = True

    def explainer(self, cfg: ExplainConfig):
        from ..fast import Explainer

        ex = self._explainers.get(cfg)
        if ex is None:
            ex = self._explainers[cfg] = Explainer(self.model, self.processor, cfg)
            while len(self._explainers) > 16:
                self._explainers.popitem(last=False)
        else:
            self._explainers.move_to_end(cfg)
        return ex

    def _run_batch(self, cfg, images, prompts, answers):  # worker thread only
        return self.explainer(cfg).explain_batch(images, prompts, answers)

    def _warmup(self) -> None:
        """One explanation on a small synthetic image: builds the native ops, fills caches."""
        from PIL import Image

        img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8))
        self.explainer(self.default_config).explain(img, "What is in the image?", "a picture")

    def close(self) -> None:
        self.ready = False
        self.batcher.stop()
        self.admission.close()


def _return_free_memory() -> None:
    """Give freed heap pages back to the OS when the queue runs empty (glibc keeps them otherwise: after a
    burst of large images the process would stay at its peak RSS). A no-op where there is no glibc."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _build_info(info: dict, model) -> dict[str, str]:
    from .. import __version__

    cfg = getattr(model, "config", None)
    try:
        p = next(model.parameters())
        dtype, device = str(p.dtype).removeprefix("torch."), str(p.device)
    except (AttributeError, StopIteration, TypeError):
        dtype, device = str(info.get("dtype", "")), str(info.get("device", ""))
    return {
        "version": __version__,
        "model": str(info.get("id", "")),
        "model_type": str(getattr(cfg, "model_type", info.get("family", ""))),
        "dtype": dtype,
        "device": device,
    }


def _native_status() -> dict[str, Any]:
    import torch

    from .. import native

    try:
        on_cpu = not torch.cuda.is_available()
        built = native.available() if on_cpu else None
    except Exception as e:  # MMX_FAST_NATIVE=1 and a failed build
        return {"built": False, "error": str(e)}
    return {"built": built, "error": native.build_error()}


class StateHolder:
    """Where the app finds its ServeState (set once the model is loaded) and whether the process is draining
    (SIGTERM received: /readyz answers 503 while requests are still served; set by ``serve.run``)."""

    def __init__(self, state: ServeState | None = None) -> None:
        self.state = state
        self.draining = False
