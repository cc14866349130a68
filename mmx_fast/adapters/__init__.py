"""Model-family adapters, chosen from ``model.config.model_type``.

Adding a family means one file with an ``Adapter`` subclass (``config_types``, ``processor_classes``,
``prepare``) and one line in ``ADAPTERS``.
"""

from __future__ import annotations

from typing import Any

from .base import Adapter, PromptInputs
from .internvl import InternVLAdapter
from .llava import LlavaAdapter
from .qwen2_vl import Qwen2VLAdapter

ADAPTERS: tuple[type[Adapter], ...] = (Qwen2VLAdapter, LlavaAdapter, InternVLAdapter)


def supported_model_types() -> list[str]:
    return [t for cls in ADAPTERS for t in cls.config_types]


def adapter_class(model_type: str) -> type[Adapter]:
    for cls in ADAPTERS:
        if model_type in cls.config_types:
            return cls
    raise ValueError(
        f"model type {model_type!r} is not supported; supported model types: {', '.join(supported_model_types())}"
    )


def _processor_family(processor: Any) -> type[Adapter] | None:
    names = {c.__name__ for c in type(processor).__mro__}
    for cls in ADAPTERS:
        if names.intersection(getattr(cls, "processor_classes", ())):
            return cls
    return None


def get_adapter(model: Any, processor: Any) -> Adapter:
    """The adapter for ``model`` (by ``model.config.model_type``), checked against ``processor``."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise ValueError(
            f"{type(model).__name__} has no config.model_type; expected a transformers model of one of the "
            f"supported types: {', '.join(supported_model_types())}"
        )
    cls = adapter_class(model_type)
    found = _processor_family(processor)
    if found is not cls:
        got = type(processor).__name__
        what = f"a {found.family} processor" if found is not None else "not a recognised multimodal processor"
        raise ValueError(
            f"processor {got} ({what}) does not match model type {model_type!r} ({type(model).__name__}); "
            f"expected one of: {', '.join(cls.processor_classes)}"
        )
    return cls(model, processor)


__all__ = [
    "ADAPTERS",
    "Adapter",
    "InternVLAdapter",
    "LlavaAdapter",
    "PromptInputs",
    "Qwen2VLAdapter",
    "adapter_class",
    "get_adapter",
    "supported_model_types",
]
