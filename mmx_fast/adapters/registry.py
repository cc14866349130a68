"""The one registry of model families: ``config.model_type`` -> adapter class, with the per-model-type facts the
CLI needs (processor class). Adding a family is one adapter file, one entry in ``ADAPTERS`` and, for its tiny
test model (``tiny:<family>``), one declaration in ``mmx_fast/tiny/families.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tiny.families import DECLARATIONS
from . import base
from .base import Adapter
from .gemma3 import Gemma3Adapter
from .internvl import InternVLAdapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter, LlavaOnevisionAdapter
from .paligemma import PaliGemmaAdapter
from .qwen2_vl import Qwen2VLAdapter
from .qwen3_vl import Qwen3VLAdapter
from .smolvlm import SmolVLMAdapter

ADAPTERS: tuple[type[Adapter], ...] = (
    Qwen2VLAdapter,
    LlavaAdapter,
    InternVLAdapter,
    Qwen3VLAdapter,
    Gemma3Adapter,
    PaliGemmaAdapter,
    LlavaNextAdapter,
    LlavaOnevisionAdapter,
    SmolVLMAdapter,
)

# Model types that cannot be explained by the logit lens, with the reason (refused by name, never "unsupported").
REFUSED: dict[str, str] = {
    "mllama": (
        "Mllama (Llama 3.2 Vision) feeds the image to the decoder only through cross-attention layers: no visual "
        "token enters the decoder's sequence, so there are no visual-token hidden states for the logit lens "
        "to read (docs/design.md §1.1)"
    ),
}


@dataclass(frozen=True)
class ModelType:
    """One supported ``config.model_type``.

    name:            the model type (``"qwen2_5_vl"``).
    adapter:         its adapter class.
    processor_class: the transformers processor class its checkpoints use (``"Qwen2_5_VLProcessor"``).
    """

    name: str
    adapter: type[Adapter]
    processor_class: str


MODEL_TYPES: dict[str, ModelType] = {
    name: ModelType(name, cls, processor) for cls in ADAPTERS for name, processor in cls.model_types.items()
}


def video_model_types() -> list[str]:
    """The model types whose adapter explains video (``Adapter.prepare_video``)."""
    return [name for name, m in MODEL_TYPES.items() if m.adapter.prepare_video is not Adapter.prepare_video]


base.VIDEO_MODEL_TYPES[:] = video_model_types()


def supported_model_types() -> list[str]:
    return list(MODEL_TYPES)


def tiny_model_types() -> tuple[str, ...]:
    """The model types that have a tiny model (``tiny:<type>``; declared in ``mmx_fast/tiny/families.py``)."""
    declared = {d.name for d in DECLARATIONS}
    return tuple(name for name in MODEL_TYPES if name in declared)


def model_type_info(model_type: str) -> ModelType:
    info = MODEL_TYPES.get(model_type)
    if info is None and model_type in REFUSED:
        raise ValueError(f"model type {model_type!r} cannot be explained: {REFUSED[model_type]}")
    if info is None:
        raise ValueError(
            f"model type {model_type!r} is not supported; supported model types: {', '.join(supported_model_types())}"
        )
    return info


def adapter_class(model_type: str) -> type[Adapter]:
    return model_type_info(model_type).adapter


def _processor_family(processor: Any) -> type[Adapter] | None:
    names = {c.__name__ for c in type(processor).__mro__}
    for cls in ADAPTERS:
        if names.intersection(cls.processor_classes):
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
