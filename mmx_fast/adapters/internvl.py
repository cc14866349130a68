"""InternVL (HF ``InternVLForConditionalGeneration``), single tile: the image is resized to the tile size
(``crop_to_patches=False``: no dynamic tiling, so the visual grid is fixed and MSEA canvases apply).

Chat prompt: ``<|im_start|>user\\n<img><IMG_CONTEXT>*N</img>\\nTEXT<|im_end|>\\n<|im_start|>assistant\\n``; the N
``<IMG_CONTEXT>`` tokens are the pixel-shuffled (downsample 0.5) patch features, row-major over a
``sqrt(N) x sqrt(N)`` grid. The forward takes ``pixel_values`` [tiles, 3, H, W] and ``input_ids``; nothing else.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from .base import Adapter, PromptInputs


class InternVLAdapter(Adapter):
    family = "internvl"
    config_types = ("internvl",)
    processor_classes = ("InternVLProcessor",)
    dynamic_resolution = False
    processor_kwargs: dict[str, Any] = {"crop_to_patches": False}

    def prepare(self, image: Image.Image, prompt: str, scale: float = 1.0) -> PromptInputs:
        """One tile: the processed image (resized to the tile size) resized by ``scale`` on a mean-coloured
        canvas; coverage (scale, scale); scale 1.0 gives the processor's own pixel values."""
        return self._prepare_fixed(image, prompt, scale)

    def forward_hidden(self, prompt: PromptInputs, answer_ids: list[int]) -> torch.Tensor:
        """Last-layer normed hidden states [L + T, d] of prompt + answer from the base model's
        ``last_hidden_state``."""
        return self.forward_hidden_batch([prompt], [list(answer_ids)])[0]
