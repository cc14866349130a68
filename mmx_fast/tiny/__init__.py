"""Tiny real-architecture multimodal models (``tiny:<family>``, tests, examples, benchmarks); nothing downloads.

``tiny_model(family)`` builds a REAL transformers model class (``LlavaForConditionalGeneration``, ...) from a
small config with seeded random weights, and the family's REAL processor class around a small byte-level BPE
tokenizer carrying the family's special tokens and a chat template that mimics the real model's.

- ``families.py``: one declaration (``TinyModel``) per family, the one place to add a tiny model;
- ``declare.py``:  the declaration format and its placeholders (``Call``, ``TEXT``, ``Token``, ``Size``);
- ``build.py``:    tokenizer, processor and model from a declaration.

Shapes: text hidden 64, 2 layers, 4 heads / 2 KV heads; vision 2 layers, width 32, patch 14. Whether greedy
generation stops early at the end-of-turn token depends on the seed; tests that need several answer tokens
should force the answer.
"""

from .build import TINY_MODELS, declaration, set_greedy_generation, tiny_model, tiny_processor, tiny_tokenizer
from .declare import TinyModel, Tokens

__all__ = [
    "TINY_MODELS",
    "TinyModel",
    "Tokens",
    "declaration",
    "set_greedy_generation",
    "tiny_model",
    "tiny_processor",
    "tiny_tokenizer",
]
