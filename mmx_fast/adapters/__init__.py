"""Model-family adapters, chosen from ``model.config.model_type``.

Layout: ``base`` (the ``PromptInputs`` contract and the ``Adapter`` base class that runs it), ``prompt`` (chat
template, visual positions, prompt span), ``geometry`` (MSEA scales, canvases, view box), ``generation`` (batched
rows, greedy generation, captured states), one file per family holding only its data, and ``registry`` (the one
list of families). Adding a family means one file with an ``Adapter`` subclass and one entry in
``registry.ADAPTERS``.
"""

from __future__ import annotations

from .base import Adapter, PromptInputs
from .gemma3 import Gemma3Adapter
from .glm4v import Glm4vAdapter
from .idefics3 import Idefics3Adapter
from .internvl import InternVLAdapter
from .llava import LlavaAdapter
from .paligemma import PaliGemmaAdapter
from .qwen2_vl import Qwen2VLAdapter
from .qwen3_vl import Qwen3VLAdapter
from .registry import (
    ADAPTERS,
    MODEL_TYPES,
    REFUSED,
    ModelType,
    adapter_class,
    get_adapter,
    model_type_info,
    supported_model_types,
    tiny_model_types,
)

__all__ = [
    "Glm4vAdapter",
    "Idefics3Adapter",
    "ADAPTERS",
    "MODEL_TYPES",
    "REFUSED",
    "Adapter",
    "Gemma3Adapter",
    "InternVLAdapter",
    "LlavaAdapter",
    "ModelType",
    "PaliGemmaAdapter",
    "PromptInputs",
    "Qwen2VLAdapter",
    "Qwen3VLAdapter",
    "adapter_class",
    "get_adapter",
    "model_type_info",
    "supported_model_types",
    "tiny_model_types",
]
