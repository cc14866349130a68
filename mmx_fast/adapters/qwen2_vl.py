"""Qwen2-VL / Qwen2.5-VL: dynamic resolution (the processor's smart-resize decides the visual-token grid).

Chat prompt: ``<|im_start|>user\\n<|vision_start|><|image_pad|>*N<|vision_end|>TEXT<|im_end|>\\n<|im_start|>assistant\\n``.
The N ``<|image_pad|>`` tokens are the merged 2x2 patch groups, row-major over the grid
``(grid_h / merge, grid_w / merge)`` of ``image_grid_thw``. The forward needs ``image_grid_thw`` and
``mm_token_type_ids`` (0 text, 1 image; answer tokens and padding are text); M-RoPE positions are computed by the
model from the attention mask, so right-padded (teacher-forced) and left-padded (generation) batches match the
unbatched rows.
"""

from __future__ import annotations

import torch
from PIL import Image

from .base import Adapter, PromptInputs


class Qwen2VLAdapter(Adapter):
    family = "qwen2_vl"
    config_types = ("qwen2_vl", "qwen2_5_vl")
    processor_classes = ("Qwen2VLProcessor", "Qwen2_5_VLProcessor")
    dynamic_resolution = True

    def prepare(self, image: Image.Image, prompt: str, scale: float = 1.0) -> PromptInputs:
        """Resize the image by ``scale`` (PIL bilinear, >= 1 px per side), then the processor (its smart-resize
        rounding and min / max pixel clamps apply); the grid covers the whole image: coverage (1, 1)."""
        return self._prepare_dynamic(image, prompt, scale)

    def forward_hidden(self, prompt: PromptInputs, answer_ids: list[int]) -> torch.Tensor:
        """Last-layer normed hidden states [L + T, d] of prompt + answer from the base model's
        ``last_hidden_state`` (answer tokens are text in ``mm_token_type_ids``)."""
        return self.forward_hidden_batch([prompt], [list(answer_ids)])[0]
