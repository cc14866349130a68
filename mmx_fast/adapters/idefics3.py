"""Idefics3 (``Idefics3ForConditionalGeneration``): SmolVLM's geometry (image splitting into tiles + a global
image, pixel shuffle; ``geometry.SplitImage``); SmolVLM is Idefics3 with its own processor class. Chat prompt:
``<|begin_of_text|>User:<image>TEXT<end_of_utterance>\\nAssistant:`` (the processor expands ``<image>`` into the
tiles' ``<fake_token_around_image><row_r_col_c><image>*n`` blocks and the global image's).
"""

from __future__ import annotations

from .smolvlm import SmolVLMAdapter


class Idefics3Adapter(SmolVLMAdapter):
    family = "idefics3"
    model_types = {"idefics3": "Idefics3Processor"}
