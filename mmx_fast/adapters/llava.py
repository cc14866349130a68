"""LLaVA-1.5: fixed-size input (CLIP: resize the shortest edge, centre-crop), one visual token per patch.

Chat prompt: ``<s>USER: <image>*N\\nTEXT ASSISTANT:``; the N ``<image>`` tokens are the patch features with
CLS dropped (``vision_feature_select_strategy="default"``), row-major over a ``sqrt(N) x sqrt(N)`` grid.
MSEA scales paste the processed image (after the processor's resize / centre-crop), resized, top-left on a canvas
of the input size filled with the processor's mean colour (``geometry.FixedCanvas``); the view box is the centre
crop.
"""

from __future__ import annotations

from .base import Adapter
from .geometry import FixedCanvas


class LlavaAdapter(Adapter):
    family = "llava"
    model_types = {"llava": "LlavaProcessor"}
    geometry = FixedCanvas()
    tiny_builder = "llava"
