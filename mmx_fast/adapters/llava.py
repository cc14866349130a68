"""LLaVA-1.5: fixed-size input (CLIP: resize the shortest edge, centre-crop), one visual token per patch.

Chat prompt: ``<s>USER: <image>*N\\nTEXT ASSISTANT:``; the N ``<image>`` tokens are the patch features with
CLS dropped (``vision_feature_select_strategy="default"``), row-major over a ``sqrt(N) x sqrt(N)`` grid.
MSEA scales paste the processed image, resized, top-left on a canvas of the input size filled with the
processor's mean colour (see ``Adapter._prepare_fixed``).
"""

from __future__ import annotations

import torch
from PIL import Image

from .base import Adapter, PromptInputs


class LlavaAdapter(Adapter):
    family = "llava"
    config_types = ("llava",)
    processor_classes = ("LlavaProcessor",)
    dynamic_resolution = False

    def prepare(self, image: Image.Image, prompt: str, scale: float = 1.0) -> PromptInputs:
        """The processed image (after the processor's resize / centre-crop) resized by ``scale`` on a
        mean-coloured canvas; coverage (scale, scale); scale 1.0 gives the processor's own pixel values."""
        return self._prepare_fixed(image, prompt, scale)

    def forward_hidden(self, prompt: PromptInputs, answer_ids: list[int]) -> torch.Tensor:
        """Last-layer normed hidden states [L + T, d] of prompt + answer from the base model's
        ``last_hidden_state``."""
        return self.forward_hidden_batch([prompt], [list(answer_ids)])[0]
