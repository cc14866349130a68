"""LLaVA-1.5: fixed-size input (CLIP: resize the shortest edge, centre-crop), one visual token per patch.

Chat prompt: ``<s>USER: <image>*N\\nTEXT ASSISTANT:``; the N ``<image>`` tokens are the patch features with
CLS dropped (``vision_feature_select_strategy="default"``), row-major over a ``sqrt(N) x sqrt(N)`` grid.
MSEA scales paste the processed image (after the processor's resize / centre-crop), resized, top-left on a canvas
of the input size filled with the processor's mean colour (``geometry.FixedCanvas``); the view box is the centre
crop.
"""

from __future__ import annotations

from . import geometry as geo
from .base import Adapter
from .geometry import FixedCanvas


class LlavaAdapter(Adapter):
    family = "llava"
    model_types = {"llava": "LlavaProcessor"}
    geometry = FixedCanvas()

    def expected_visual_tokens(self, inputs):
        """One token per patch of the CLIP input (plus CLS with the ``full`` feature strategy)."""
        cfg = self.model.config
        side = geo.side(cfg.vision_config.image_size) // geo.side(cfg.vision_config.patch_size)
        cls = 1 if getattr(cfg, "vision_feature_select_strategy", "default") == "full" else 0
        return side * side + cls


class VipLlavaAdapter(LlavaAdapter):
    """ViP-LLaVA (``VipLlavaForConditionalGeneration``): LLaVA-1.5's input and layout (its projector reads several
    vision layers, which does not touch the grid); LLaVA's processor class."""

    family = "vipllava"
    model_types = {"vipllava": "LlavaProcessor"}
