"""Qwen2-VL / Qwen2.5-VL: dynamic resolution (the processor's smart-resize decides the visual-token grid).

Chat prompt: ``<|im_start|>user\\n<|vision_start|><|image_pad|>*N<|vision_end|>TEXT<|im_end|>\\n<|im_start|>assistant\\n``.
The N ``<|image_pad|>`` tokens are the merged 2x2 patch groups, row-major over the grid
``(grid_h / merge, grid_w / merge)`` of ``image_grid_thw``. The forward needs ``image_grid_thw`` and
``mm_token_type_ids`` (0 text, 1 image; answer tokens and padding are text); M-RoPE positions are computed by the
model from the attention mask, so right-padded (teacher-forced) and left-padded (generation) batches match the
unbatched rows.
"""

from __future__ import annotations

from .base import Adapter
from .geometry import DynamicResolution


class Qwen2VLAdapter(Adapter):
    family = "qwen2_vl"
    model_types = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}
    geometry = DynamicResolution()
    tiny_builder = "qwen2_vl"
