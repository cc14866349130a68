"""What tests, examples and benchmarks use to get a model offline: the tiny models of ``mmx_fast.tiny``.

    from mmx_fast.testing import tiny_model
    model, processor = tiny_model("llava")  # random weights, nothing downloads

``FAMILIES`` lists every tiny model: the registry's model types (in the registry's order), then the variants
of a model type (``internvl_tiled``: InternVL with tiling on). The declarations live in
``mmx_fast/tiny/families.py``. Nothing in the package imports this module (``tests/test_structure.py``).
"""

from __future__ import annotations

from .adapters.registry import tiny_model_types
from .tiny import TINY_MODELS, set_greedy_generation, tiny_model, tiny_processor, tiny_tokenizer

FAMILIES: tuple[str, ...] = tiny_model_types() + tuple(
    name for name, decl in TINY_MODELS.items() if name != decl.model_type
)

__all__ = ["FAMILIES", "set_greedy_generation", "tiny_model", "tiny_processor", "tiny_tokenizer"]
