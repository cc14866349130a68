"""The one registry of model families: ``config.model_type`` -> adapter class, with the per-model-type facts the
CLI needs (processor class). Adding a family is one adapter file, one entry in ``ADAPTERS`` and, for its tiny
test model (``tiny:<family>``), one declaration in ``mmx_fast/tiny/families.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tiny.families import DECLARATIONS
from . import base
from .aya_vision import AyaVisionAdapter
from .base import Adapter
from .gemma3 import Gemma3Adapter
from .glm4v import Glm4vAdapter
from .idefics3 import Idefics3Adapter
from .internvl import InternVLAdapter
from .llava import LlavaAdapter, VipLlavaAdapter
from .llava_next import LlavaNextAdapter, LlavaNextVideoAdapter, LlavaOnevisionAdapter
from .paligemma import PaliGemmaAdapter
from .qwen2_vl import PaddleOCRVLAdapter, Qwen2VLAdapter, QwenStyleAdapter
from .qwen3_vl import Qwen3VLAdapter, Qwen35Adapter
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
    Idefics3Adapter,  # after SmolVLM: a SmolVLM processor must not be taken for an Idefics3 one
    LlavaNextVideoAdapter,
    Glm4vAdapter,
    AyaVisionAdapter,
    QwenStyleAdapter,
    VipLlavaAdapter,
    PaddleOCRVLAdapter,
    Qwen35Adapter,
)

# Model types that cannot be explained by the logit lens, with the reason (refused by name, never "unsupported").
REFUSED: dict[str, str] = {
    "mllama": (
        "Mllama (Llama 3.2 Vision) feeds the image to the decoder only through cross-attention layers: no visual "
        "token enters the decoder's sequence, so there are no visual-token hidden states for the logit lens "
        "to read (docs/design.md §1.1)"
    ),
    "idefics": (
        "IDEFICS (v1) feeds the image to the decoder through gated cross-attention layers: no visual token enters "
        "the decoder's sequence, so there are no visual-token hidden states for the logit lens to read"
    ),
    "idefics2": (
        "Idefics2's perceiver resampler turns the image into 64 learned latent queries: its visual tokens are not "
        "a spatial grid of the image, so a token map has no place on it"
    ),
    "blip-2": (
        "BLIP-2's Q-Former turns the image into 32 learned query tokens: its visual tokens are not a spatial grid "
        "of the image, so a token map has no place on it"
    ),
    "instructblip": (
        "InstructBLIP's Q-Former turns the image into 32 learned query tokens: its visual tokens are not a "
        "spatial grid of the image, so a token map has no place on it"
    ),
    "kosmos-2": (
        "Kosmos-2 turns the image into 64 learned latent queries (its image-to-text projection): its visual "
        "tokens are not a spatial grid of the image, so a token map has no place on it"
    ),
    "florence2": (
        "Florence-2 is an encoder-decoder: the image is encoded on the encoder side and the decoder that writes "
        "the answer only cross-attends to it, so no visual token enters the answer's sequence"
    ),
    "t5gemma2": (
        "T5Gemma 2 is an encoder-decoder: the image is encoded on the encoder side and the decoder that writes "
        "the answer only cross-attends to it, so no visual token enters the answer's sequence"
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
    names = {c.__name__ for c in type(processor).__mro__}
    # the model type's own processor class first (ViP-LLaVA shares LLaVA's, Qwen3.5 Qwen3-VL's)
    found = cls if names.intersection(cls.processor_classes) else _processor_family(processor)
    if found is not cls:
        got = type(processor).__name__
        what = f"a {found.family} processor" if found is not None else "not a recognised multimodal processor"
        raise ValueError(
            f"processor {got} ({what}) does not match model type {model_type!r} ({type(model).__name__}); "
            f"expected one of: {', '.join(cls.processor_classes)}"
        )
    return cls(model, processor)
